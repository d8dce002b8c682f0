//! A streamed response's head goes out as its handler returns, before the producer has
//! its first bytes: clients that wait for the head before they do anything more (an
//! event stream's, a full-duplex echo's) and a host's timeout around the service must
//! not wait on the producer. (Holding the head until the first bytes, as WSGI servers
//! do, broke all three; see `ResponseBody`'s docs.)
mod support;

use std::future::IntoFuture;
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use support::{channel_body, h1, h2, within, TestServer};
use syncbridge::{Request, Response, ResponseBody, SyncService};
use tower_http::timeout::TimeoutLayer;

/// A gate the test opens once it has the head; the producer waits for it first.
type Gate = Arc<Mutex<mpsc::Receiver<()>>>;

fn gate() -> (mpsc::Sender<()>, Gate) {
    let (open, gate) = mpsc::channel();
    (open, Arc::new(Mutex::new(gate)))
}

/// `/events`: an event stream from an iterator whose one event comes once the gate
/// opens. `/echo-thread`: an echo whose request body is read on a thread of its own and
/// forwarded to an iterator.
fn handler(gate: Gate) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    move |mut req: Request| match req.uri().path() {
        "/events" => {
            let gate = gate.clone();
            let event = std::iter::from_fn(move || {
                let opened = gate.lock().unwrap().recv_timeout(support::STEP);
                Some(
                    opened
                        .map(|()| Bytes::from_static(b"event"))
                        .map_err(io::Error::other),
                )
            });
            Response::new(ResponseBody::from_chunks(event.take(1)))
        }
        _ => {
            let mut body = std::mem::take(req.body_mut());
            let (tx, rx) = mpsc::sync_channel::<io::Result<Bytes>>(4);
            std::thread::spawn(move || {
                while let Some(chunk) = body.chunk().transpose() {
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
            });
            Response::new(ResponseBody::from_chunks(rx))
        }
    }
}

#[tokio::test]
async fn an_event_streams_client_has_its_head_before_the_first_event() {
    let (open, gate) = gate();
    let server = TestServer::start(handler(gate));
    for http2 in [false, true] {
        let response = support::get_over(server.addr, http2, "/events")
            .await
            .expect("the head, while the producer waits for its event");
        assert_eq!(response.status(), 200);
        open.send(()).unwrap();
        let body = within(response.into_body().collect()).await.unwrap();
        assert_eq!(&body.to_bytes()[..], b"event", "over HTTP/2 {http2}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_full_duplex_echo_whose_body_is_read_on_another_thread_sends_its_head_first() {
    let (_open, gate) = gate();
    let server = TestServer::start(handler(gate));
    let mut send = h2(server.addr).await;
    let (parts, body) = channel_body(1);
    let req = http::Request::post("http://localhost/echo-thread")
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

#[tokio::test]
async fn a_hosts_timeout_layer_does_not_time_a_streams_producer() {
    let (open, gate) = gate();
    let router = axum::Router::new()
        .nest_service("/legacy", SyncService::new(handler(gate)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ));
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(axum::serve(listener, router).into_future());
    let mut send = h1::<Empty<Bytes>>(addr).await;
    let req = http::Request::get("/legacy/events")
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap();
    let response = within(send.send_request(req)).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the layer's timeout covers the handler only"
    );
    // Past the layer's 200 ms, the producer still waiting: the stream is the client's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    open.send(()).unwrap();
    let body = within(response.into_body().collect()).await.unwrap();
    assert_eq!(&body.to_bytes()[..], b"event");
    served.abort();
}
