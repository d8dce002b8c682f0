//! A streamed response's head waits for the producer's first bytes for a short grace
//! (`head_grace`), so that a producer failing before them is answered `500`; and no
//! longer: clients that wait for the head before they do anything more (an event
//! stream's, a full-duplex echo's) and a host's timeout around the service must not wait
//! on the producer. (Holding the head until the first bytes, as WSGI servers do, broke
//! all three; see `ResponseBody`'s docs.)
mod support;

use std::future::IntoFuture;
use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use support::{channel_body, h1, h2, logs, within, TestServer};
use syncbridge::{Request, Response, ResponseBody, Server, SyncService};
use tower_http::timeout::TimeoutLayer;

/// A gate the test opens once it has the head; the producer waits for it first.
type Gate = Arc<Mutex<mpsc::Receiver<()>>>;

fn gate() -> (mpsc::Sender<()>, Gate) {
    let (open, gate) = mpsc::channel();
    (open, Arc::new(Mutex::new(gate)))
}

/// A reader whose first read fails, as opening a missing file in it would.
struct MissingFile;

impl io::Read for MissingFile {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "report.csv: not found",
        ))
    }
}

/// `/events`: an event stream from an iterator whose one event comes once the gate
/// opens. `/late-failure`: the same, but an error comes instead of the event.
/// `/echo-thread`: an echo whose request body is read on a thread of its own and
/// forwarded to an iterator. `/fail-iter`, `/fail-reader` and `/panic-writer`: producers
/// that fail at once. `/ok`: a full body.
fn handler(gate: Gate) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    move |mut req: Request| match req.uri().path() {
        "/fail-iter" => Response::new(ResponseBody::from_chunks(std::iter::once(Err(
            io::Error::other("catalogue query refused"),
        )))),
        "/fail-reader" => Response::new(ResponseBody::from_reader(MissingFile)),
        "/panic-writer" => Response::new(ResponseBody::from_writer(|_| {
            support::panic_quietly("report writer panicked")
        })),
        "/ok" => Response::new(ResponseBody::from("fine")),
        "/late-failure" => {
            let gate = gate.clone();
            let failure = std::iter::from_fn(move || {
                let _ = gate.lock().unwrap().recv_timeout(support::STEP);
                Some(Err(io::Error::other("upstream went away")))
            });
            Response::new(ResponseBody::from_chunks(failure.take(1)))
        }
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
        // 2 s: twenty times the 100 ms head grace the service future waits out, so a slow
        // machine's scheduling cannot reach it; the producer is held past it below.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(2),
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
    // Past the layer's 2 s, the producer still waiting: the stream is the client's. (A
    // service future that waited for the producer would have been answered 408 by now.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    open.send(()).unwrap();
    let body = within(response.into_body().collect()).await.unwrap();
    assert_eq!(&body.to_bytes()[..], b"event");
    served.abort();
}

const FAILING: [&str; 3] = ["/fail-iter", "/fail-reader", "/panic-writer"];

#[tokio::test]
async fn a_producer_that_fails_before_its_first_bytes_is_answered_500() {
    logs::install();
    let (_open, gate) = gate();
    let server = TestServer::start(handler(gate));
    // Over HTTP/1, one connection for all: a 500 in the head's place leaves it usable,
    // where an aborted response closes it.
    let mut send = h1::<Empty<Bytes>>(server.addr).await;
    for path in FAILING.into_iter().chain(["/ok"]) {
        let req = http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let response = within(send.send_request(req)).await.unwrap();
        let reply = support::collect(response).await;
        if path == "/ok" {
            assert_eq!((reply.status.as_u16(), &reply.text()[..]), (200, "fine"));
        } else {
            assert_eq!(reply.status, 500, "{path} over HTTP/1");
            assert_eq!(reply.text(), "Internal Server Error");
        }
    }
    for path in FAILING {
        let response = support::get_over(server.addr, true, path).await.unwrap();
        let reply = support::collect(response).await;
        assert_eq!(reply.status, 500, "{path} over HTTP/2");
    }
    for (path, what) in [
        ("/fail-iter", "catalogue query refused"),
        ("/fail-reader", "report.csv: not found"),
        ("/panic-writer", "report writer panicked"),
    ] {
        assert!(
            logs::eventually_contains(&[
                "ERROR",
                &format!("path={path}"),
                what,
                "before its first bytes, its head held"
            ])
            .await,
            "{path}: not logged as answered 500"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_producer_that_fails_after_the_grace_aborts_the_response_it_began() {
    logs::install();
    let (open, gate) = gate();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").head_grace(Duration::from_millis(20)),
        handler(gate),
    );
    for http2 in [false, true] {
        let response = support::get_over(server.addr, http2, "/late-failure")
            .await
            .expect("the head, once the grace is over");
        assert_eq!(response.status(), 200);
        open.send(()).unwrap();
        let body = within(response.into_body().collect()).await;
        assert!(
            body.is_err(),
            "over HTTP/2 {http2}: a cut-off body taken whole"
        );
    }
    assert!(
        logs::eventually_contains(&[
            "ERROR",
            "path=/late-failure",
            "upstream went away",
            "producer failed; response aborted"
        ])
        .await
    );
    server.stop().await;
}

#[tokio::test]
async fn with_no_grace_a_producer_that_fails_at_once_is_not_answered_500() {
    let (_open, gate) = gate();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").head_grace(Duration::ZERO),
        handler(gate),
    );
    for http2 in [false, true] {
        // The head goes as the handler returns, and the failure cuts it off: over
        // HTTP/1 hyper drops it unsent, over HTTP/2 the stream is reset after it.
        let whole = match support::get_over(server.addr, http2, "/fail-iter").await {
            Ok(response) => within(response.into_body().collect()).await.ok(),
            Err(_) => None,
        };
        assert!(whole.is_none(), "over HTTP/2 {http2}: answered in full");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_embedded_service_answers_500_for_a_producer_that_fails_at_once() {
    let (_open, gate) = gate();
    let router = axum::Router::new().nest_service("/legacy", SyncService::new(handler(gate)));
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(axum::serve(listener, router).into_future());
    let response = support::get_over(addr, false, "/legacy/fail-reader")
        .await
        .unwrap();
    assert_eq!(support::collect(response).await.status, 500);
    served.abort();
}

/// A writer that reads the whole request body before it writes; it says on `started`
/// when it starts, which is after its handler has returned. A read error goes on as it
/// is, or under a path ending in `-wrapped` in an error of the producer's own, or under
/// one ending in `-expect` as a panic.
fn digest(started: mpsc::Sender<()>) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    let started = Mutex::new(started);
    move |mut req: Request| {
        let mut body = std::mem::take(req.body_mut());
        let started = started.lock().unwrap().clone();
        let path = req.uri().path().to_owned();
        Response::new(ResponseBody::from_writer(move |w| {
            started.send(()).unwrap();
            let mut all = Vec::new();
            let read = io::Read::read_to_end(&mut body, &mut all);
            if path.ends_with("-wrapped") {
                read.map_err(|e| io::Error::other(format!("reading the upload: {e}")))?;
            } else if path.ends_with("-expect") {
                // As `expect` would, without the default hook's backtrace.
                if read.is_err() {
                    support::panic_quietly("the upload");
                }
            } else {
                read?;
            }
            write!(w, "{} bytes", all.len())
        }))
    }
}

/// Waits (under the step timeout) for `digest`'s producer to start.
async fn producer_started(started: &Arc<Mutex<mpsc::Receiver<()>>>) {
    let started = started.clone();
    within(tokio::task::spawn_blocking(move || {
        started.lock().unwrap().recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("the producer started");
}

#[tokio::test]
async fn a_request_body_past_the_limit_while_the_head_is_held_is_answered_413_and_not_logged_as_an_abort(
) {
    logs::install();
    let (started_tx, started) = mpsc::channel();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_body_size(1000)
            .head_grace(Duration::from_secs(5)),
        digest(started_tx),
    );
    let mut send = h1(server.addr).await;
    let (parts, body) = channel_body(1);
    let req = http::Request::post("/digest")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let response = tokio::spawn(send.send_request(req));
    within(parts.send(Bytes::from(vec![b'y'; 600])))
        .await
        .unwrap();
    producer_started(&Arc::new(Mutex::new(started))).await;
    // The part that takes the body past the limit, with the head held.
    let _ = within(parts.send(Bytes::from(vec![b'y'; 600]))).await;
    let response = within(response).await.unwrap().unwrap();
    assert_eq!(response.status(), 413);
    // The producer's own line comes once its read has failed; it must not say the
    // response was aborted: none went out.
    assert!(
        logs::eventually_contains(&[
            "path=/digest",
            "request body failed before the response's head went out"
        ])
        .await
    );
    assert!(!logs::contains(&["path=/digest", "response aborted"]));
    server.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stalls_while_the_head_is_held_is_answered_408() {
    logs::install();
    let (started_tx, started) = mpsc::channel();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .body_timeout(Duration::from_millis(300))
            .head_grace(Duration::from_secs(5)),
        digest(started_tx),
    );
    let started = Arc::new(Mutex::new(started));
    // However the producer passes its failed read on, the client is the cause.
    for path in ["/stalled", "/stalled-wrapped", "/stalled-expect"] {
        let mut send = h1(server.addr).await;
        let (parts, body) = channel_body(1);
        let req = http::Request::post(path)
            .header("host", "localhost")
            .header("content-length", "100")
            .body(body)
            .unwrap();
        let response = tokio::spawn(send.send_request(req));
        within(parts.send(Bytes::from_static(b"first ten!")))
            .await
            .unwrap();
        producer_started(&started).await;
        // Then nothing: the producer's read gives up at the body timeout, long before
        // the grace is over. A handler's read would be answered 408; so is this one.
        let response = within(response).await.unwrap().unwrap();
        assert_eq!(response.status(), 408, "{path}");
        let tag = format!("path={path} ");
        assert!(
            logs::eventually_contains(&[
                "WARN",
                &tag,
                "client sent too little request body data for the body timeout; answered 408"
            ])
            .await,
            "{path}"
        );
        drop(parts);
    }
    for path in ["/stalled", "/stalled-wrapped", "/stalled-expect"] {
        let tag = format!("path={path} ");
        assert!(!logs::contains(&[&tag, "response aborted"]), "{path}");
        assert!(!logs::contains(&[&tag, "answered 500"]), "{path}");
    }
    // The panic is still the producer's bug, and logged as one: by its thread, once it
    // has marked the head failed, which may be after the client has its 408.
    assert!(logs::eventually_contains(&["ERROR", "path=/stalled-expect ", "panicked"]).await);
    server.stop().await;
}

#[test]
fn a_streamed_response_polled_outside_any_runtime_goes_out_without_an_error_line() {
    logs::install();
    let mut service = SyncService::new(|_req: Request| {
        ResponseBody::from_chunks(std::iter::once(Ok(Bytes::from_static(b"row"))))
    });
    // Against the future's docs, but a streamed head has nothing to be refused for: it
    // goes without its grace. Before, each logged that a timer wait was refused.
    for _ in 0..3 {
        let response = support::block_on_without_runtime(tower::Service::call(
            &mut service,
            http::Request::get("/streamed-outside")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        ));
        assert_eq!(response.unwrap().status(), 200);
    }
    assert!(!logs::contains(&["outside any tokio runtime"]));
}
