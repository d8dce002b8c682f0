//! When a streamed response's head goes out: with its first bytes, as a WSGI server sends
//! it, so that a producer that fails before them is answered `500`; or earlier, at a
//! writer's `flush` and when the producer first waits for the request body, so that an
//! event stream's client and a full-duplex client are not kept waiting for it.
mod support;

use std::io::{self, Read};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use support::{channel_body, h2, logs, within, TestServer};
use syncbridge::{Request, Response, ResponseBody};

/// A reader whose first read fails, as a file on a failing disk would.
struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("disk read failed at the first block"))
    }
}

/// `/reader-fails` streams a reader whose first read fails; `/chunks-panic` an iterator
/// that panics at its first chunk; `/flush-then-wait` a writer that flushes before it
/// has written anything, then waits for the test's word before it writes `event`;
/// `/echo` the request body, read back as it comes.
fn handler(gate: mpsc::Receiver<()>) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    let gate = Arc::new(Mutex::new(gate));
    move |mut req: Request| match req.uri().path() {
        "/reader-fails" => Response::new(ResponseBody::from_reader(FailingReader)),
        "/chunks-panic" => Response::new(ResponseBody::from_chunks(std::iter::from_fn(|| {
            support::panic_quietly("the first row could not be decoded")
        }))),
        "/flush-then-wait" => {
            let gate = gate.clone();
            Response::new(ResponseBody::from_writer(move |w| {
                w.flush()?;
                gate.lock()
                    .unwrap()
                    .recv_timeout(support::STEP)
                    .map_err(io::Error::other)?;
                w.write_all(b"event")?;
                w.flush()
            }))
        }
        _ => Response::new(ResponseBody::from_reader(std::mem::take(req.body_mut()))),
    }
}

#[tokio::test]
async fn a_producer_that_fails_before_its_first_bytes_is_answered_500_on_either_protocol() {
    logs::install();
    let (_gate, gate_rx) = mpsc::channel();
    let server = TestServer::start(handler(gate_rx));
    for http2 in [false, true] {
        for path in ["/reader-fails", "/chunks-panic"] {
            let response = support::get_over(server.addr, http2, path)
                .await
                .unwrap_or_else(|e| panic!("{path} over HTTP/2 {http2}: no response: {e}"));
            assert_eq!(response.status(), 500, "{path} over HTTP/2 {http2}");
            let body = within(response.into_body().collect()).await;
            assert!(body.is_ok(), "{path} over HTTP/2 {http2}: the 500 is whole");
        }
    }
    assert!(
        logs::eventually_contains(&[
            "ERROR",
            "path=/reader-fails",
            "disk read failed at the first block",
            "response body producer failed before its first bytes; answered 500"
        ])
        .await
    );
    assert!(
        logs::eventually_contains(&[
            "ERROR",
            "path=/chunks-panic",
            "the first row could not be decoded",
            "response body producer panicked before its first bytes; answered 500"
        ])
        .await
    );
    assert!(
        logs::eventually_contains(&["path=/reader-fails ", "status=500"]).await,
        "the access line has the status the client got"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_writer_that_flushes_before_its_first_bytes_sends_its_head_at_once() {
    let (gate, gate_rx) = mpsc::channel();
    let server = TestServer::start(handler(gate_rx));
    for http2 in [false, true] {
        // The producer waits for the gate: the head can only have come with the flush.
        let response = support::get_over(server.addr, http2, "/flush-then-wait")
            .await
            .expect("the head, before the first bytes");
        assert_eq!(response.status(), 200);
        gate.send(()).unwrap();
        let body = within(response.into_body().collect()).await.unwrap();
        assert_eq!(&body.to_bytes()[..], b"event", "over HTTP/2 {http2}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_echo_sends_its_head_before_it_waits_for_the_body_a_full_duplex_client_sends_after_it() {
    let (_gate, gate_rx) = mpsc::channel();
    let server = TestServer::start(handler(gate_rx));
    let mut send = h2(server.addr).await;
    let (parts, body) = channel_body(1);
    let req = http::Request::post("http://localhost/echo")
        .body(body)
        .unwrap();
    // Nothing of the body is sent before the head comes back.
    let response = within(send.send_request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut echoed = response.into_body();
    within(parts.send(Bytes::from_static(b"ping")))
        .await
        .unwrap();
    let frame = within(echoed.frame()).await.unwrap().unwrap();
    assert_eq!(&frame.into_data().unwrap()[..], b"ping");
    drop(parts);
    let rest = within(echoed.collect()).await.unwrap().to_bytes();
    assert!(rest.is_empty());
    server.stop().await;
}
