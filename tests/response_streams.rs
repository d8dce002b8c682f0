//! A streamed response's producer against its contract: it hears at once that the client
//! left, and a body that breaks the `Content-Length` its handler set is cut off on either
//! protocol (or answered 500, if it broke it before its first bytes) and logged, never
//! passed off as complete.
mod support;

use std::io::Write;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Empty};
use support::{h1, h2, logs, within, TestServer};
use syncbridge::{Request, Response, ResponseBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a producer's last write returned: `Ok` if it never failed.
type Outcome = Result<(), std::io::ErrorKind>;

/// A producer's body, written into the response's writer.
type WriteBody = fn(&mut dyn Write) -> std::io::Result<()>;

/// `/events` writes a short line every millisecond without flushing, for at most 5 s;
/// `/over` declares 5 bytes and writes 10; `/short` declares 10 and writes 5. Each
/// producer reports how it ended.
fn handler(
    outcomes: mpsc::Sender<(String, Outcome)>,
) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    let outcomes = Mutex::new(outcomes);
    move |req: Request| {
        let path = req.uri().path().to_owned();
        let outcomes = outcomes.lock().unwrap().clone();
        let (declared, write): (Option<u64>, WriteBody) = match path.as_str() {
            "/events" => (None, |w| {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(5) {
                    writeln!(w, "event")?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }),
            "/over" => (Some(5), |w| w.write_all(b"helloworld")),
            "/over-after-flush" => (Some(5), |w| {
                w.write_all(b"hello")?;
                w.flush()?;
                // Long enough for hyper's HTTP/1 to have the declared length and drop
                // the body, as if the client had left.
                std::thread::sleep(Duration::from_millis(200));
                w.write_all(b"world")
            }),
            "/fails-after-all" => (Some(5), |w| {
                w.write_all(b"hello")?;
                w.flush()?;
                // As above: HTTP/1 hyper has the declared length and drops the body.
                std::thread::sleep(Duration::from_millis(200));
                Err(std::io::Error::other("the audit log failed after the body"))
            }),
            _ => (Some(10), |w| w.write_all(b"hello")),
        };
        let mut response = Response::new(ResponseBody::from_writer(move |w| {
            let outcome = write(w);
            outcomes
                .send((path, outcome.as_ref().map(|_| ()).map_err(|e| e.kind())))
                .unwrap();
            outcome
        }));
        if let Some(declared) = declared {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, declared.into());
        }
        response
    }
}

fn outcome_of(outcomes: &mpsc::Receiver<(String, Outcome)>, path: &str) -> Outcome {
    let (seen, outcome) = outcomes
        .recv_timeout(support::STEP)
        .expect("the producer ended");
    assert_eq!(seen, path);
    outcome
}

/// Sends `request` on a fresh connection and reads until the server closes it: what came,
/// and how the read ended (an error for a reset).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (Vec<u8>, std::io::Result<usize>) {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    within(stream.write_all(request)).await.unwrap();
    let mut received = Vec::new();
    let end = within(stream.read_to_end(&mut received)).await;
    (received, end)
}

fn get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn a_writer_that_gathers_small_writes_hears_at_its_next_write_that_the_client_left() {
    logs::install();
    let (tx, outcomes) = mpsc::channel();
    let server = TestServer::start(handler(tx));
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    // The head goes out at the end of the head grace (100 ms), while the producer runs;
    // nothing of the body is flushed yet.
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = within(stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    // Unflushed, its lines would have run on until 64 KiB had gathered (about seven
    // seconds of them here), so the writer's own 5 s would have ended it first.
    let outcome = within(tokio::task::spawn_blocking(move || {
        outcome_of(&outcomes, "/events")
    }))
    .await
    .unwrap();
    assert_eq!(outcome, Err(std::io::ErrorKind::BrokenPipe));
    server.stop().await;
}

#[tokio::test]
async fn a_streamed_body_past_or_short_of_its_content_length_is_cut_off_and_logged() {
    logs::install();
    let (tx, outcomes) = mpsc::channel();
    let server = TestServer::start(handler(tx));
    for http2 in [false, true] {
        for path in ["/over", "/short"] {
            let response = if http2 {
                within(h2(server.addr).await.send_request(get(path))).await
            } else {
                within(h1(server.addr).await.send_request(get(path))).await
            };
            if path == "/over" {
                // Its first write goes past the length: nothing went out, and the head
                // held for the first bytes is answered 500 instead.
                let response = response.expect("a 500 in the head's place");
                assert_eq!(response.status(), 500, "over HTTP/2 {http2}");
                let body = within(response.into_body().collect()).await.unwrap();
                assert_eq!(&body.to_bytes()[..], b"Internal Server Error");
            } else {
                let whole = match response {
                    Ok(response) => within(response.into_body().collect()).await.ok(),
                    Err(_) => None,
                };
                assert!(
                    whole.is_none(),
                    "{path} over HTTP/2 {http2}: the client took a body that broke its \
                     length for whole"
                );
            }
            let expected = if path == "/over" {
                Err(std::io::ErrorKind::InvalidInput)
            } else {
                Ok(())
            };
            assert_eq!(outcome_of(&outcomes, path), expected, "{path}");
        }
    }
    for path in ["path=/over", "path=/short"] {
        assert!(
            logs::eventually_contains(&["ERROR", path, "Content-Length declares"]).await,
            "{path}: not logged as the handler's error"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_write_past_the_content_length_after_it_all_went_out_is_still_the_handlers_error() {
    logs::install();
    let (tx, outcomes) = mpsc::channel();
    let server = TestServer::start(handler(tx));
    let response = within(h1(server.addr).await.send_request(get("/over-after-flush")))
        .await
        .expect("a response head");
    // The client has all it was told to expect: for it the response is whole.
    let body = within(response.into_body().collect()).await.unwrap();
    assert_eq!(&body.to_bytes()[..], b"hello");
    assert_eq!(
        outcome_of(&outcomes, "/over-after-flush"),
        Err(std::io::ErrorKind::InvalidInput),
        "taken for the client leaving"
    );
    // Logged once the producer has returned, after it reported.
    assert!(
        logs::eventually_contains(&["ERROR", "path=/over-after-flush", "Content-Length declares"])
            .await
    );
    server.stop().await;
}

/// A producer that fails once its whole declared length went out: its own error, not
/// the client leaving (HTTP/1 hyper let go of the body because it had it all), and over
/// HTTP/2, where the error resets the stream, not a complete response.
#[tokio::test]
async fn an_error_after_the_whole_declared_body_is_the_handlers_and_not_complete_over_http2() {
    logs::install();
    let (tx, outcomes) = mpsc::channel();
    let server = TestServer::start(handler(tx));
    let response = within(h1(server.addr).await.send_request(get("/fails-after-all")))
        .await
        .expect("a response head");
    let body = within(response.into_body().collect()).await.unwrap();
    assert_eq!(&body.to_bytes()[..], b"hello");
    assert_eq!(
        outcome_of(&outcomes, "/fails-after-all"),
        Err(std::io::ErrorKind::Other)
    );
    assert!(
        logs::eventually_contains(&["ERROR", "path=/fails-after-all", "audit log failed"]).await,
        "taken for the client leaving"
    );
    // Over HTTP/1 the client has all it was told to expect: whole.
    assert!(logs::eventually_contains(&["path=/fails-after-all", "complete=true"]).await);

    let response = within(h2(server.addr).await.send_request(get("/fails-after-all")))
        .await
        .expect("a response head");
    let body = within(response.into_body().collect()).await;
    assert!(body.is_err(), "the stream was not reset");
    let _ = outcome_of(&outcomes, "/fails-after-all");
    assert!(
        logs::eventually_contains(&["path=/fails-after-all", "complete=false"]).await,
        "the reset response counted complete"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_early_in_a_large_full_body_gets_complete_false() {
    // Before: an HTTP/1 full body went to hyper in one piece, so the access line said
    // `complete=true`, with every byte counted, as soon as hyper had taken it.
    logs::install();
    const SIZE: usize = 64 << 20;
    let server = TestServer::start(|_: Request| Bytes::from(vec![b'f'; SIZE]));
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET /full-left-early HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut taken = 0;
    while taken < 1 << 20 {
        let n = within(stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed after {taken} bytes");
        taken += n;
    }
    drop(stream);
    // The access line is written when hyper drops the body (a poll with a deadline).
    let line = ["path=/full-left-early", "status=200"];
    let deadline = Instant::now() + support::STEP;
    while !logs::contains(&line) {
        assert!(Instant::now() < deadline, "no access line");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(logs::contains(&["path=/full-left-early", "complete=false"]));
    server.stop().await;
}

#[tokio::test]
async fn an_aborted_close_delimited_response_ends_in_a_reset_not_a_clean_close() {
    // HTTP/1.0 (nginx's default towards its upstreams) has no chunked framing: a streamed
    // body ends where the connection does. Before, one the producer broke off ended in a
    // clean close, the very shape of a complete body, which a proxy passes on (and
    // caches) as whole.
    let server = TestServer::start(|_: Request| {
        let chunks = (0..4).map(|i| match i {
            3 => Err(std::io::Error::other("upstream went away")),
            _ => Ok(Bytes::from_static(b"chunk")),
        });
        Response::new(ResponseBody::from_chunks(chunks))
    });
    let (received, end) = exchange(server.addr, b"GET /broken HTTP/1.0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        end.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "ended with {end:?} after {text:?}"
    );
    server.stop().await;
}

/// `/endless…` streams `x` for ever; `/late` returns a stream only after the stream
/// timeout has passed, and `/unwraps` too, whose producer panics on its failed write;
/// `/swallows` writes past it and takes no notice of its failed writes; anything else is
/// a short full body.
fn endless_or_late(req: Request) -> Response {
    match req.uri().path() {
        p if p.starts_with("/endless") => {
            Response::new(ResponseBody::from_reader(std::io::repeat(b'x')))
        }
        "/late" => {
            // The handler's own slow work (a query), past the 300 ms.
            std::thread::sleep(Duration::from_millis(400));
            Response::new(ResponseBody::from_reader(std::io::repeat(b'y')))
        }
        "/unwraps" => {
            std::thread::sleep(Duration::from_millis(400));
            Response::new(ResponseBody::from_writer(|w| {
                if let Err(err) = w.write_all(b"late").and_then(|()| w.flush()) {
                    // As `.unwrap()` would, without the panic hook's noise.
                    std::panic::resume_unwind(Box::new(format!("write failed: {err}")));
                }
                Ok(())
            }))
        }
        "/swallows" => Response::new(ResponseBody::from_writer(|w| {
            // A producer that ignores its failed writes, and ends as if all went well.
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(800) {
                let _ = w.write_all(b"z\n");
                let _ = w.flush();
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })),
        _ => Response::new(ResponseBody::from("after")),
    }
}

/// `endless_or_late` on one pool thread, with a stream timeout of 300 ms.
fn one_thread_with_a_stream_timeout() -> TestServer {
    let pool = syncbridge::BlockingPool::builder().max_threads(1).build();
    TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0")
            .pool(pool)
            .stream_timeout(Duration::from_millis(300)),
        endless_or_late,
    )
}

#[tokio::test]
async fn a_stream_past_the_stream_timeout_frees_its_thread_and_is_cut_off() {
    logs::install();
    // One thread: what holds it holds the whole pool.
    let server = one_thread_with_a_stream_timeout();
    // A client that asks for an endless download and reads no more than its head: the
    // producer fills what the channel and the socket hold, and waits. The body timeout
    // (30 s) would let it wait that long, and a reader this slow but steady for ever.
    // Its receive buffer is small: what it can still read once the response is aborted
    // is then what its own kernel holds, if the server drops what it holds.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stalled = within(socket.connect(server.addr)).await.unwrap();
    within(stalled.write_all(b"GET /endless-over-h1 HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = within(stalled.read(&mut head)).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);

    // At the stream timeout the producer's wait fails, and its thread is free.
    let after = support::get(server.addr, "/after").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "after");
    // Said (throttled to a line a second for the whole binary, so maybe by another
    // test's stream).
    assert!(
        logs::eventually_contains(&["WARN", "streamed response went on past the stream timeout"])
            .await
    );

    // The download was cut off, not ended: no last chunk, and the access line says so.
    // At once: what the server held of it (a 256 KiB channel, hyper's buffer, its
    // socket's) was dropped, not handed to a client this slow over minutes. (The access
    // line is written as the connection closes.)
    assert!(
        logs::eventually_contains(&["path=/endless-over-h1", "status=200", "complete=false"]).await
    );
    let mut rest = Vec::new();
    let end = within(stalled.read_to_end(&mut rest)).await;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "ended as a whole body ({end:?})"
    );
    assert!(
        rest.len() < 128 * 1024,
        "{} bytes read after the abort ({end:?})",
        rest.len()
    );

    // A producer that had sent nothing when the time was up: its head never went out.
    let late = support::get(server.addr, "/late").await;
    assert_eq!(late.status, 504);
    // So is one whose producer panics on that failed write (its panic logged too).
    let unwraps = support::get(server.addr, "/unwraps").await;
    assert_eq!(unwraps.status, 504);
    // Logged on the handler thread once the producer has ended, after the answer went.
    assert!(
        logs::eventually_contains(&[
            "ERROR",
            "panicked on its write the stream timeout failed",
            "path=/unwraps"
        ])
        .await
    );

    // A producer that swallows the failure and returns `Ok`: still not a whole body.
    let request = b"GET /swallows HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let (received, end) = exchange(server.addr, request).await;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        !received.ends_with(b"0\r\n\r\n"),
        "ended as a whole body ({end:?})"
    );
    server.stop().await;
}

/// Producers that send nothing but ask whether to go on (an empty chunk, an empty write,
/// a flush with nothing gathered: the heartbeats of WSGI ports), and one whose small
/// writes are only gathered; each reports on `ended` how long it ran. Each stops by
/// itself after `HEARTBEATS_CAP`: past what the test allows, within its step.
fn heartbeats(
    ended: mpsc::Sender<(String, Duration)>,
) -> impl Fn(Request) -> Response + Send + Sync {
    let ended = Mutex::new(ended);
    move |req: Request| {
        let path = req.uri().path().to_owned();
        let ended = ended.lock().unwrap().clone();
        let start = Instant::now();
        Response::new(ResponseBody::from_writer(move |w| {
            let result = (|| {
                while start.elapsed() < HEARTBEATS_CAP {
                    match path.as_str() {
                        // An empty write writes nothing, whatever it returns.
                        "/empty-write" => {
                            let _: usize = w.write(b"")?;
                        }
                        "/empty-flush" => w.flush()?,
                        _ => w.write_all(b"x")?,
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })();
            let _ = ended.send((path, start.elapsed()));
            result
        }))
    }
}

/// How long a `heartbeats` producer runs if nothing stops it.
const HEARTBEATS_CAP: Duration = Duration::from_secs(7);

#[tokio::test]
async fn producers_that_only_ask_whether_to_go_on_stop_at_the_stream_timeout() {
    logs::install();
    let (ended_tx, ended) = mpsc::channel();
    // No head held for the first bytes (these send none): a grace that ran late on a
    // loaded machine would answer 504 in place of the cut-off body this test reads.
    let server = TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0")
            .stream_timeout(Duration::from_millis(200))
            .head_grace(Duration::ZERO),
        heartbeats(ended_tx),
    );
    let ended = std::sync::Arc::new(Mutex::new(ended));
    for path in ["/empty-write", "/empty-flush", "/small-writes"] {
        // The client stays and reads what comes.
        let mut send = h1::<Empty<Bytes>>(server.addr).await;
        let response = within(send.send_request(get(path))).await.unwrap();
        let ended = ended.clone();
        let (which, ran) = within(tokio::task::spawn_blocking(move || {
            ended.lock().unwrap().recv_timeout(support::STEP)
        }))
        .await
        .unwrap()
        .expect("the producer ended");
        assert_eq!(which, path);
        // Well under the producer's own 7 s cap, and far past the 200 ms limit for a
        // loaded machine's lag: a producer the timeout does not stop runs to its cap.
        assert!(
            ran < Duration::from_secs(5),
            "{path} ran {ran:?} past a 200 ms limit"
        );
        // Its body is cut off, not ended.
        let body = within(response.into_body().collect()).await;
        assert!(body.is_err(), "{path}: a whole body");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_left_before_the_stream_timeout_is_a_disconnect_not_a_timeout() {
    logs::install();
    // The stream timeout, 1 s, leaves the first chunk ample time to come before it; the
    // producer's next write, 2.5 s after that chunk, is well past it. The client's reset
    // has until that write to reach the server (a send is a disconnect once the client
    // is gone, whatever the time): 2.5 s, not the stream timeout's 1 s.
    let server = TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0").stream_timeout(Duration::from_secs(1)),
        |_: Request| {
            // A chunk now, the next only after the limit: no write in between to hear
            // that the client left.
            let mut n = 0;
            Response::new(ResponseBody::from_chunks(std::iter::from_fn(move || {
                n += 1;
                match n {
                    1 => Some(Ok(Bytes::from_static(b"a"))),
                    2 => {
                        std::thread::sleep(Duration::from_millis(2500));
                        Some(Ok(Bytes::from_static(b"b")))
                    }
                    _ => None,
                }
            })))
        },
    );
    // HTTP/2: dropping the response resets its stream at once.
    let response = support::get_over(server.addr, true, "/left-early")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    assert!(logs::eventually_contains(&["client went away", "path=/left-early"]).await);
    assert!(!logs::contains(&["stream timeout", "path=/left-early"]));
    server.stop().await;
}

#[tokio::test]
async fn over_http2_a_stream_past_the_stream_timeout_is_reset_after_what_hyper_holds() {
    // One thread: `/after` is served only once the stream's producer has ended.
    let server = one_thread_with_a_stream_timeout();
    // A client that reads nothing of the download yet: 16 KiB go out, and the producer
    // fills the 256 KiB channel and waits.
    let (mut send, _conn, _) = support::h2_with_window(server.addr, 16 * 1024).await;
    let req = http::Request::get("http://localhost/endless-over-h2")
        .body(Empty::new())
        .unwrap();
    let response = within(send.send_request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    // The stream timeout has failed the producer, its thread is free.
    assert_eq!(support::get(server.addr, "/after").await.text(), "after");

    // Read on: what hyper had taken comes, then the reset; not what the channel held.
    let mut body = response.into_body();
    let mut read = 0;
    let end = loop {
        match within(body.frame()).await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(err)) => break Err(err),
            None => break Ok(()),
        }
    };
    assert!(end.is_err(), "a whole body after {read} bytes");
    assert!(read < 192 * 1024, "{read} bytes read ({end:?})");
    server.stop().await;
}

#[tokio::test]
async fn an_endless_stream_past_the_stream_timeout_ends_in_an_error_on_both_protocols() {
    let server = TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0").stream_timeout(Duration::from_millis(300)),
        |_: Request| Response::new(ResponseBody::from_reader(std::io::repeat(b'x'))),
    );
    for http2 in [true, false] {
        // A client that reads as fast as it can: the limit is the stream's length, not
        // its client's speed.
        let response = support::get_over(server.addr, http2, "/endless")
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let end = within(response.into_body().collect()).await;
        // HTTP/2: the stream reset; HTTP/1: the connection reset before the last chunk.
        assert!(end.is_err(), "http2={http2}: a whole body");
    }
    server.stop().await;
}
