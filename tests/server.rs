//! The bundled server: failures, overload, limits, timeouts, protocols.
mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use support::{closed_by_server, get, h2, read_raw_response, within, TestServer, STEP};
use syncbridge::{Request, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A handler whose `/block` requests wait for the test to release them, announcing when
/// they start; everything else answers at once.
struct Gate {
    started: Mutex<mpsc::SyncSender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

fn gate() -> (Arc<Gate>, mpsc::Receiver<()>, mpsc::SyncSender<()>) {
    let (started_tx, started_rx) = mpsc::sync_channel(16);
    let (release_tx, release_rx) = mpsc::sync_channel(16);
    let gate = Arc::new(Gate {
        started: Mutex::new(started_tx),
        release: Mutex::new(release_rx),
    });
    (gate, started_rx, release_tx)
}

fn gated(gate: Arc<Gate>) -> impl Fn(Request) -> &'static str + Send + Sync {
    move |req: Request| {
        if req.uri().path() == "/block" {
            gate.started.lock().unwrap().send(()).unwrap();
            let _ = gate
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(30));
        }
        "done"
    }
}

async fn recv_blocking(rx: mpsc::Receiver<()>) -> mpsc::Receiver<()> {
    within(tokio::task::spawn_blocking(move || {
        rx.recv_timeout(support::STEP).expect("signal");
        rx
    }))
    .await
    .unwrap()
}

/// `bad` answers a bare 500, and the handler answers "fine" on the next requests.
async fn answers_500_then_serves_on(server: &TestServer, bad: &str) {
    let reply = get(server.addr, bad).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.text(), "Internal Server Error");
    for _ in 0..3 {
        let reply = get(server.addr, "/ok").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "fine");
    }
}

#[tokio::test]
async fn handler_panic_returns_500_and_the_next_request_200() {
    let server = TestServer::start(|req: Request| {
        if req.uri().path() == "/panic" {
            support::panic_quietly("legacy code blew up");
        }
        "fine"
    });
    answers_500_then_serves_on(&server, "/panic").await;
    server.stop().await;
}

/// An error whose `Drop` panics: it unwinds the job after the handler's own guard.
#[derive(Debug)]
struct PanicsOnDrop;

impl std::fmt::Display for PanicsOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an error that panics when dropped")
    }
}

impl std::error::Error for PanicsOnDrop {}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        support::panic_quietly("dropping the handler's error");
    }
}

#[tokio::test]
async fn a_panic_past_the_handler_still_answers_500_and_the_thread_serves_on() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_threads(1),
        |req: Request| -> Result<&'static str, PanicsOnDrop> {
            if req.uri().path() == "/bad" {
                return Err(PanicsOnDrop);
            }
            Ok("fine")
        },
    );
    // With one pool thread, the next requests show it survived and counts itself free.
    answers_500_then_serves_on(&server, "/bad").await;
    server.stop().await;
}

#[tokio::test]
async fn handler_error_returns_500_without_leaking_details() {
    let server = TestServer::start(|_req: Request| -> Result<&'static str, std::io::Error> {
        Err(std::io::Error::other("database password is hunter2"))
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 500);
    assert!(!reply.text().contains("hunter2"));
    server.stop().await;
}

#[tokio::test]
async fn a_handler_errors_cause_is_in_its_log_line() {
    let server = TestServer::start(|_req: Request| -> Result<&'static str, _> {
        Err(support::cart_error())
    });
    let reply = get(server.addr, "/cart").await;
    assert_eq!(reply.status, 500);
    server.stop().await;
    assert!(support::logs::contains(&[
        "ERROR",
        "handler returned an error; answered 500",
        "path=/cart",
        "could not load the cart: connection refused",
    ]));
}

#[tokio::test]
async fn a_handler_that_fails_after_its_client_left_is_not_logged_as_answered_500() {
    let (gate, mut started, release) = gate();
    let server = TestServer::start(move |req: Request| -> Result<&'static str, _> {
        gate.started.lock().unwrap().send(()).unwrap();
        let _ = gate.release.lock().unwrap().recv_timeout(STEP);
        match req.uri().path() {
            "/left-panics" => support::panic_quietly("ledger locked"),
            _ => Err(std::io::Error::other("ledger unavailable")),
        }
    });
    for path in ["/left-panics", "/left-fails"] {
        let mut gone = within(TcpStream::connect(server.addr)).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        within(gone.write_all(head.as_bytes())).await.unwrap();
        started = recv_blocking(started).await;
        // The client leaves while its handler runs: its access line says so.
        drop(gone);
        let tag = format!("path={path} ");
        assert!(support::logs::eventually_contains(&[&tag, "status=499"]).await);
        release.send(()).unwrap();
    }
    // The failure is still logged at error, but not as a 500 nobody got.
    for (path, what) in [
        (
            "/left-panics",
            "handler panicked after its request was given up",
        ),
        (
            "/left-fails",
            "handler returned an error after its request was given up",
        ),
    ] {
        let tag = format!("path={path} ");
        assert!(
            support::logs::eventually_contains(&["ERROR", &tag, what]).await,
            "{path}"
        );
        assert!(!support::logs::contains(&[&tag, "answered 500"]), "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn overload_answers_503_with_retry_after_at_once() {
    let (gate, started, release) = gate();
    // A queue timeout far past the test step: a request that was queued, not refused,
    // would wait for `/block`'s release, which comes only after the 503, or for this.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_threads(1)
            .queue_capacity(0)
            .queue_timeout(STEP * 6)
            .retry_after(Duration::from_secs(3)),
        gated(gate),
    );
    let addr = server.addr;
    let busy = tokio::spawn(async move { get(addr, "/block").await });
    let _started = recv_blocking(started).await;

    // At once, then: any bound under the step tells the two apart; half of it says so
    // before the client's own step timeout would.
    let reply = tokio::time::timeout(STEP / 2, get(server.addr, "/hello"))
        .await
        .expect("the request waited, as a queued one does, instead of a 503 at once");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "3");

    release.send(()).unwrap();
    assert_eq!(within(busy).await.unwrap().status, 200);
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn queued_request_times_out_with_503_and_never_runs() {
    let (gate, started, release) = gate();
    let ran_late = Arc::new(AtomicUsize::new(0));
    let ran = ran_late.clone();
    let inner = gated(gate);
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_threads(1)
            .queue_capacity(4)
            .queue_timeout(Duration::from_millis(200)),
        move |req: Request| {
            if req.uri().path() == "/late" {
                ran.fetch_add(1, Ordering::SeqCst);
            }
            inner(req)
        },
    );
    let addr = server.addr;
    let busy = tokio::spawn(async move { get(addr, "/block").await });
    let _started = recv_blocking(started).await;

    let reply = get(server.addr, "/late").await;
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains_key("retry-after"));

    release.send(()).unwrap();
    assert_eq!(within(busy).await.unwrap().status, 200);
    // The pool is free again and has worked off its queue: the timed-out request was
    // withdrawn, not run late.
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    assert_eq!(ran_late.load(Ordering::SeqCst), 0);
    server.stop().await;
}

/// Waits (at most a test step) until `done` holds; for state only the server can see.
async fn until(done: impl Fn() -> bool) {
    within(async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A server on a pool of one thread and one queue place, whose thread a `/block` request
/// holds until `release` is used; `busy` is that request's answer.
async fn one_thread_held(
    queue_timeout: Duration,
) -> (
    TestServer,
    syncbridge::BlockingPool,
    tokio::task::JoinHandle<support::Reply>,
    mpsc::SyncSender<()>,
) {
    let (gate, started, release) = gate();
    let pool = syncbridge::BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(1)
        .queue_timeout(queue_timeout)
        .build();
    let server =
        TestServer::start_with(Server::bind("127.0.0.1:0").pool(pool.clone()), gated(gate));
    let addr = server.addr;
    let busy = tokio::spawn(async move { get(addr, "/block").await });
    let _started = recv_blocking(started).await;
    (server, pool, busy, release)
}

#[tokio::test]
async fn a_request_timed_out_in_the_queue_frees_its_place_in_it() {
    let (server, pool, busy, release) = one_thread_held(Duration::from_millis(200)).await;
    // Timed out in the queue: answered 503, and out of the queue.
    assert_eq!(get(server.addr, "/late").await.status, 503);
    assert_eq!(pool.stats().queued, 0);
    release.send(()).unwrap();
    assert_eq!(within(busy).await.unwrap().status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_request_whose_client_left_while_queued_frees_its_place_in_it() {
    // A queue timeout far past any step of the test: only the request's withdrawal can
    // take it out of the queue in time.
    let (server, pool, busy, release) = one_thread_held(Duration::from_secs(600)).await;
    let addr = server.addr;

    // The client leaves while its request waits: out of the queue.
    let mut gone = within(TcpStream::connect(server.addr)).await.unwrap();
    within(gone.write_all(b"GET /gone HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    until(|| pool.stats().queued == 1).await;
    drop(gone);
    until(|| pool.stats().queued == 0).await;

    // So the one place in the queue is free for the next request.
    let next = tokio::spawn(async move { get(addr, "/next").await });
    until(|| pool.stats().queued == 1).await;
    release.send(()).unwrap();
    assert_eq!(within(busy).await.unwrap().status, 200);
    assert_eq!(within(next).await.unwrap().status, 200);
    server.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let server = TestServer::start(|_req: Request| "ok");
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let head = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The server may answer before it has read everything we send.
    let _ = within(stream.write_all(head.as_bytes())).await;
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 431);

    let normal = get(server.addr, "/").await;
    assert_eq!(normal.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let server = TestServer::start(|req: Request| format!("you asked {}", req.uri().path()));
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    for i in 0..3 {
        let head = format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        within(stream.write_all(head.as_bytes())).await.unwrap();
        let reply = read_raw_response(&mut stream)
            .await
            .expect("response on the same connection");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("you asked /{i}").as_bytes());
    }
    server.stop().await;
}

#[tokio::test]
async fn h2c_request_is_served() {
    let server = TestServer::start(|req: Request| format!("{:?}", req.version()));
    let mut send = h2::<Empty<Bytes>>(server.addr).await;
    for _ in 0..2 {
        let req = http::Request::get(server.url("/"))
            .body(Empty::new())
            .unwrap();
        let response = within(send.send_request(req)).await.expect("h2 response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        let reply = support::collect(response).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "HTTP/2.0");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_response_past_the_idle_and_header_timeouts() {
    const SIZE: usize = 8 << 20;
    // The response is handed to hyper at once, so no request is in flight while hyper
    // still waits for the client to make room for it: that wait is not idleness.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(150))
            .keep_alive_timeout(Some(Duration::from_millis(150))),
        |_req: Request| vec![b'x'; SIZE],
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = within(socket.connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    // Several times both limits with the socket full, then read it all.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), SIZE);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_outlives_the_http1_header_read_timeout() {
    // The header read timeout is HTTP/1's; h2 has only the keep-alive timeout, off here.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(150))
            .keep_alive_timeout(None),
        |req: Request| format!("{:?}", req.version()),
    );
    let mut send = h2::<Empty<Bytes>>(server.addr).await;
    for round in 0..2 {
        if round == 1 {
            // Idle for several header read timeouts between the two requests.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let req = http::Request::get(server.url("/"))
            .body(Empty::new())
            .unwrap();
        let response = within(send.send_request(req))
            .await
            .expect("the same h2 connection still serves");
        assert_eq!(support::collect(response).await.text(), "HTTP/2.0");
    }
    server.stop().await;
}

#[tokio::test]
async fn slow_request_head_is_answered_408_at_the_header_read_timeout() {
    // Its log line: tests/operator_logs.rs (the line is throttled, and other tests here
    // answer 408s in the same second).
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").header_read_timeout(Duration::from_millis(300)),
        |_req: Request| "ok",
    );
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream)
        .await
        .expect("an answer before the close");
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert!(reply.head.contains("connection: close"), "{}", reply.head);
    assert!(reply.head.contains("date: "), "{}", reply.head);
    assert!(closed_by_server(&mut stream).await);
    server.stop().await;
}

/// What the server sends on `stream` within `wait`, and whether it closed it then.
async fn said_within<S>(stream: &mut S, wait: Duration) -> (Vec<u8>, bool)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (all, false),
            Ok(Ok(0) | Err(_)) => return (all, true),
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Everything the server sends on `stream` until it closes it, which it must within
/// [`STEP`].
async fn bytes_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let (said, closed) = said_within(stream, STEP).await;
    assert!(closed, "still open after {STEP:?}");
    said
}

#[tokio::test]
async fn a_keep_alive_connection_idle_after_a_body_drained_past_its_response_gets_no_408() {
    // A handler that answers without reading (a 401, a 404), a client that sends the body
    // in a second write (http.client, Node): the body is drained after the response, and
    // the connection then waits in the client's pool. Its reads were the body's, not a
    // head's (a 408 here would answer the pool's next request).
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(300))
            .keep_alive_timeout(Some(Duration::from_secs(3))),
        |_req: Request| "not read",
    );
    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    within(write.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.status, 200);
    within(write.write_all(&[b'x'; 1000])).await.unwrap();
    // Several header timeouts, well within the keep-alive timeout.
    let (said, closed) = said_within(&mut read, Duration::from_millis(1200)).await;
    assert_eq!(String::from_utf8_lossy(&said), "");
    assert!(!closed, "closed before the keep-alive timeout");
    // And it still serves.
    within(write.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    assert_eq!(read_raw_response(&mut read).await.unwrap().status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_head_begun_within_a_millisecond_of_the_connect_is_answered_408_too() {
    // A client next to the server (a proxy on the same host) gets its response and sends
    // its next head within the connection's first millisecond: that head's timer is not
    // the first request's.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").header_read_timeout(Duration::from_millis(150)),
        |_req: Request| "",
    );
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .unwrap();
        assert_eq!(read_raw_response(&mut stream).await.unwrap().status, 200);
        within(stream.write_all(b"GET / HTTP/1.1\r\n"))
            .await
            .unwrap();
        streams.push(stream);
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let said = bytes_until_close(stream).await;
        assert!(
            said.starts_with(b"HTTP/1.1 408"),
            "connection {i}: {:?}",
            String::from_utf8_lossy(&said)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_answered_408_that_stays_silent_frees_its_slot_within_half_a_second() {
    // A Slowloris client keeps its socket open after its 408: the close in stages that
    // lets a client read the answer must not hold its connection slot for long.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(300))
            .max_connections(1),
        |_req: Request| "ok",
    );
    let mut slow = within(TcpStream::connect(server.addr)).await.unwrap();
    let slow_peer = format!("peer={}", slow.local_addr().unwrap());
    within(slow.write_all(b"GET / HTTP/1.1\r\n")).await.unwrap();
    assert_eq!(read_raw_response(&mut slow).await.unwrap().status, 408);
    let t0 = Instant::now();
    let mut next = within(TcpStream::connect(server.addr)).await.unwrap();
    within(next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    assert_eq!(read_raw_response(&mut next).await.unwrap().status, 200);
    // The close's own line says which linger held the slot: the 408's 500 ms, which the
    // silent client waited out, not the 2 s of other closes. Logged as the drain ends,
    // before the slot is freed: the second client was served after it.
    assert!(support::logs::contains(&[
        "drained a closing connection's unread request bytes",
        "client_closed=false",
        "linger_ms=500 ",
        &slow_peer,
    ]));
    // And by the clock, loosely: 500 ms of linger, and a loaded machine's lag, but not
    // the 2 s of other closes.
    assert!(
        t0.elapsed() < Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );
    drop(slow);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout_without_a_word() {
    // A browser's unused preconnect: no request began, so none is answered.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").header_read_timeout(Duration::from_millis(300)),
        |_req: Request| "ok",
    );
    // Before the connect: the timeout counts from the accept, which a connect that
    // returns late may follow by any time. (250 ms: the server's clock is read in whole
    // milliseconds.)
    let t0 = Instant::now();
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    assert_eq!(bytes_until_close(&mut stream).await, b"");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_with_no_request_gets_no_http1_answer_at_the_header_read_timeout() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").header_read_timeout(Duration::from_millis(300)),
        |_req: Request| "ok",
    );
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    // HTTP/2's preface and an empty SETTINGS frame, then nothing.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    within(stream.write_all(&hello)).await.unwrap();
    let said = bytes_until_close(&mut stream).await;
    // The server's own SETTINGS (frame type 4) came first; no HTTP/1 text at all.
    assert_eq!(said.get(3), Some(&4), "{said:?}");
    assert!(!said.windows(5).any(|w| w == b"HTTP/"), "{said:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_outlives_the_idle_and_header_timeouts() {
    let (gate, started, release) = gate();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(150))
            .keep_alive_timeout(Some(Duration::from_millis(150))),
        gated(gate),
    );
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let _started = recv_blocking(started).await;
    // Several times both limits: the watchdog fires meanwhile and must see the request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    release.send(()).unwrap();
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 200);
    // Idle again: now the header read timeout closes it.
    assert!(closed_by_server(&mut stream).await);
    server.stop().await;
}

/// A keep-alive connection that has had one `GET /` answered `200`: idle from now.
async fn served_once(addr: std::net::SocketAddr) -> TcpStream {
    served_once_after(addr, Duration::ZERO).await
}

/// [`served_once`], its request sent `pause` after the connect (a real client's gap).
async fn served_once_after(addr: std::net::SocketAddr, pause: Duration) -> TcpStream {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    assert_eq!(read_raw_response(&mut stream).await.unwrap().status, 200);
    stream
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .keep_alive_timeout(Some(Duration::from_millis(300)))
            .header_read_timeout(Duration::from_secs(60)),
        |_req: Request| "ok",
    );
    // A request sent with the connect, and one a little after it: the connection's first
    // look then finds it waiting for its first request, a header timeout away (before,
    // nothing looked again until then, 30 s on with the default body timeout).
    for pause in [Duration::ZERO, Duration::from_millis(50)] {
        let mut stream = served_once_after(server.addr, pause).await;
        let t0 = Instant::now();
        assert!(closed_by_server(&mut stream).await, "open after {pause:?}");
        // Well before the 60 s header timer: the idle timeout closed it.
        assert!(t0.elapsed() < Duration::from_secs(5), "after {pause:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_http1_connection_waits_out_the_keep_alive_timeout_not_the_header_read_timeout() {
    // Behind a proxy that pools connections for 60 s, an operator raises the keep-alive
    // timeout over it without giving slow request heads more time.
    // A keep-alive timeout of 3 s: the idle wait below is far within it, however late
    // its sleep ends, and it is fifteen header read timeouts.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(200))
            .keep_alive_timeout(Some(Duration::from_secs(3))),
        |_req: Request| "ok",
    );
    let mut stream = served_once(server.addr).await;
    // Idle for three header read timeouts, well within the keep-alive timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Before the request: the keep-alive timeout counts from its end, after this.
    let t0 = Instant::now();
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream)
        .await
        .expect("the same connection still serves");
    assert_eq!(reply.status, 200);
    assert!(closed_by_server(&mut stream).await);
    // Closed by the keep-alive timeout (3 s), not the header read timeout (200 ms):
    // a little under 3 s for the server's whole milliseconds.
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "closed after {:?}, before the keep-alive timeout",
        t0.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_head_begun_after_an_idle_wait_has_the_header_read_timeout_from_its_first_byte() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(300))
            .keep_alive_timeout(Some(Duration::from_secs(60))),
        |_req: Request| "ok",
    );
    let mut stream = served_once(server.addr).await;
    // Idle past the header read timeout, then half a head, a byte at a time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\n".iter().take(6) {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = read_raw_response(&mut stream).await.expect("an answer");
    assert_eq!(reply.status, 408);
    assert!(closed_by_server(&mut stream).await);
    // Long before the 60 s keep-alive timeout: the head's own timer closed it.
    assert!(t0.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test]
async fn without_a_keep_alive_timeout_an_idle_http1_connection_closes_at_the_header_read_timeout() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::from_millis(300))
            .keep_alive_timeout(None),
        |_req: Request| "ok",
    );
    let mut stream = served_once(server.addr).await;
    assert!(closed_by_server(&mut stream).await);
    server.stop().await;
}

/// A server at `max_connections(1)` whose one connection (the first returned) runs a
/// request until `release` gets a message, and a second connection that has sent its
/// request and gone unanswered for 300 ms: it waits for a slot. The instant is from just
/// before the second connection was made: the server asks for room from its accept on,
/// once a second.
async fn one_busy_one_waiting() -> (
    TestServer,
    TcpStream,
    TcpStream,
    mpsc::SyncSender<()>,
    Instant,
) {
    let (gate, started, release) = gate();
    let server =
        TestServer::start_with(Server::bind("127.0.0.1:0").max_connections(1), gated(gate));
    let mut first = within(TcpStream::connect(server.addr)).await.unwrap();
    within(first.write_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let _started = recv_blocking(started).await;
    let connecting = Instant::now();
    let mut second = within(TcpStream::connect(server.addr)).await.unwrap();
    within(second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let early =
        tokio::time::timeout(Duration::from_millis(300), read_raw_response(&mut second)).await;
    assert!(early.is_err(), "second connection served past the limit");
    (server, first, second, release, connecting)
}

#[tokio::test]
async fn connections_past_the_limit_wait_while_every_connection_is_busy() {
    // The first connection's request is in flight: the second waits, unserved.
    let (server, mut first, mut second, release, connecting) = one_busy_one_waiting().await;

    // The first finishes its request and is idle: it makes room for the second at once,
    // not when the server next asks for room (once a second from the second's accept).
    // Released 1.1 s after the second's connect, just after the server's second ask
    // (when the accept came within 100 ms of the connect, as it does but on a stalled
    // machine): the next ask is 900 ms on or more, past the 800 ms allowed here, which
    // leaves a loaded machine ample time to serve the second once the first is idle.
    tokio::time::sleep_until((connecting + Duration::from_millis(1100)).into()).await;
    let released = Instant::now();
    release.send(()).unwrap();
    assert_eq!(read_raw_response(&mut first).await.unwrap().status, 200);
    let left = Duration::from_millis(800).saturating_sub(released.elapsed());
    let reply = tokio::time::timeout(left, read_raw_response(&mut second))
        .await
        .expect("not served as soon as the first was idle")
        .expect("served once the first was idle");
    assert_eq!(reply.status, 200);
    assert!(closed_by_server(&mut first).await);
    server.stop().await;
    // The one sign of a full connection table an operator gets (throttled: this test's
    // line, or another's at the same limit).
    assert!(support::logs::contains(&[
        "WARN",
        "connection limit reached",
        "max_connections=1"
    ]));
}

#[tokio::test]
async fn a_connection_waiting_for_a_slot_when_the_shutdown_begins_is_closed_and_named() {
    let (server, mut first, mut waiting, release, _) = one_busy_one_waiting().await;
    let peer = format!("peer={}", waiting.local_addr().unwrap());

    // The shutdown closes the waiting connection at once; the busy one drains.
    let stopping = tokio::spawn(server.stop());
    assert!(closed_by_server(&mut waiting).await);
    release.send(()).unwrap();
    assert_eq!(read_raw_response(&mut first).await.unwrap().status, 200);
    within(stopping).await.unwrap();
    assert!(support::logs::contains(&[
        "INFO",
        "connection waiting for a slot closed by the shutdown",
        &peer
    ]));
}

#[tokio::test]
async fn at_the_connection_limit_an_idle_keep_alive_connection_makes_room_for_a_new_one() {
    // One client holding every slot with idle keep-alive connections must not lock others
    // out until the keep-alive timeout (nginx reuses idle connections the same way).
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(2)
            .keep_alive_timeout(Some(Duration::from_secs(60)))
            .header_read_timeout(Duration::from_secs(60)),
        |req: Request| req.uri().path().to_owned(),
    );
    let mut idle = vec![
        served_once(server.addr).await,
        served_once(server.addr).await,
    ];
    let mut newcomer = within(TcpStream::connect(server.addr)).await.unwrap();
    within(newcomer.write_all(b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut newcomer)
        .await
        .expect("served within the test's step, long before the 60 s timeouts");
    assert_eq!(reply.body, b"/new");
    // One of the idle connections was closed for it; the other still serves.
    let mut closed = 0;
    for stream in &mut idle {
        let probe = stream
            .write_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        match probe {
            Ok(()) => match read_raw_response(stream).await {
                Some(reply) if reply.status == 200 => {}
                _ => closed += 1,
            },
            Err(_) => closed += 1,
        }
    }
    assert_eq!(closed, 1, "exactly one idle connection made room");
    server.stop().await;
}

#[tokio::test]
async fn a_slot_freed_by_a_connection_that_ends_closes_no_idle_connection_for_no_one() {
    // At the limit the server asks an idle connection to make room for the one waiting.
    // When a busy connection ends by itself instead, the waiting one takes its slot, and
    // the request for room must go with it: left standing, the next connection to go
    // idle would be closed for no one.
    let (started_tx, started) = mpsc::sync_channel(4);
    let (release_a, a) = mpsc::sync_channel::<()>(1);
    let (release_b, b) = mpsc::sync_channel::<()>(1);
    let (started_tx, a, b) = (Mutex::new(started_tx), Mutex::new(a), Mutex::new(b));
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(2)
            .keep_alive_timeout(Some(Duration::from_secs(60)))
            .header_read_timeout(Duration::from_secs(60)),
        move |req: Request| {
            let gate = match req.uri().path() {
                "/a" => Some(&a),
                "/b" => Some(&b),
                _ => None,
            };
            if let Some(gate) = gate {
                started_tx.lock().unwrap().send(()).unwrap();
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(30));
            }
            "done"
        },
    );
    let sent = |request: &'static [u8]| async move {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        within(stream.write_all(request)).await.unwrap();
        stream
    };
    // Both slots busy: one connection closes after its response, the other is kept.
    let mut closing = sent(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let started = recv_blocking(started).await;
    let mut kept = sent(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let _started = recv_blocking(started).await;
    // A third waits for a slot; the server asks for room, and no connection is idle.
    let mut waiting = sent(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let early =
        tokio::time::timeout(Duration::from_millis(300), read_raw_response(&mut waiting)).await;
    assert!(early.is_err(), "served past the limit");

    // The closing connection's end frees its slot, and the waiting one is served.
    release_a.send(()).unwrap();
    assert_eq!(read_raw_response(&mut closing).await.unwrap().status, 200);
    assert!(closed_by_server(&mut closing).await);
    assert_eq!(read_raw_response(&mut waiting).await.unwrap().status, 200);
    // The kept one's request ends too: two idle connections, no one waiting, both kept.
    release_b.send(()).unwrap();
    assert_eq!(read_raw_response(&mut kept).await.unwrap().status, 200);
    for stream in [&mut waiting, &mut kept] {
        let _ = within(stream.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        let reply = read_raw_response(stream).await;
        assert_eq!(
            reply.map(|r| r.status),
            Some(200),
            "an idle connection closed for no one"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn queued_request_body_is_not_read_until_a_handler_takes_it() {
    use std::io::Read;
    use tokio::io::AsyncReadExt;
    let (gate, started, release) = gate();
    let blocking = gated(gate);
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_threads(1).queue_capacity(4),
        move |mut req: Request| {
            if req.uri().path() == "/upload" {
                let mut body = String::new();
                req.body_mut().read_to_string(&mut body).unwrap();
                return format!("got {body}");
            }
            blocking(req).to_owned()
        },
    );
    let addr = server.addr;
    let busy = tokio::spawn(async move { get(addr, "/block").await });
    let _started = recv_blocking(started).await;

    // The only thread is busy: this request queues. Its body is left to TCP, so a
    // client that asked to be told when to send it hears nothing yet.
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    ))
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(early.is_err(), "the queued request's body was asked for");

    release.send(()).unwrap();
    assert_eq!(within(busy).await.unwrap().status, 200);
    let n = within(stream.read(&mut buf)).await.unwrap();
    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(got.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{got:?}");
    within(stream.write_all(b"hello")).await.unwrap();
    let mut all = got.into_bytes();
    while !all.ends_with(b"got hello") {
        let n = within(stream.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&all).contains("HTTP/1.1 200 OK"));
    server.stop().await;
}

#[tokio::test]
async fn limits_at_their_largest_values_mean_no_limit() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(usize::MAX)
            .thread_keep_alive(Duration::MAX)
            .queue_timeout(Duration::MAX)
            .retry_after(Duration::MAX)
            .header_read_timeout(Duration::MAX)
            .keep_alive_timeout(Some(Duration::MAX))
            .body_timeout(Duration::MAX),
        |req: Request| format!("{} ok", req.uri().path()),
    );
    // The second request goes to the thread the first one left parked.
    assert_eq!(get(server.addr, "/first").await.text(), "/first ok");
    assert_eq!(get(server.addr, "/second").await.text(), "/second ok");
    let reply = support::request(server.addr, "POST", "/third", "body").await;
    assert_eq!(reply.text(), "/third ok");
    server.stop().await;
}

#[tokio::test]
async fn zero_client_timeouts_are_accepted_and_warned_of_at_start() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .header_read_timeout(Duration::ZERO)
            .body_timeout(Duration::ZERO),
        |_: Request| "ok",
    );
    // The warnings come before the server accepts anything: stopping it is the sign.
    server.stop().await;
    assert!(support::logs::contains(&[
        "WARN",
        "header_read_timeout is zero"
    ]));
    assert!(support::logs::contains(&["WARN", "body_timeout is zero"]));
}

/// Paused after its first response: `h2` itself, not hyper's client, which drives the
/// connection from a task of its own and so answers pings whatever the test does. The
/// returned task holds the connection open, unread, until aborted.
async fn h2_client_paused_after_one_request(
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let tcp = within(TcpStream::connect(addr)).await.unwrap();
    let (client, conn) = within(h2::client::handshake(tcp)).await.unwrap();
    let (pause, paused) = tokio::sync::oneshot::channel::<()>();
    let driven = tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = &mut conn => {}
            _ = paused => std::future::pending::<()>().await,
        }
    });
    let mut client = within(client.ready()).await.unwrap();
    let req = http::Request::get(format!("http://{addr}/"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let mut body = within(response).await.unwrap().into_body();
    while let Some(chunk) = within(body.data()).await {
        chunk.unwrap();
    }
    // From here nothing reads the connection: a GOAWAY and its PING go unanswered.
    pause.send(()).unwrap();
    driven
}

#[tokio::test]
async fn an_idle_http2_client_that_stops_answering_is_still_closed_at_the_keep_alive_timeout() {
    // One connection at a time: a second client is served only once the first is closed,
    // a body timeout after its keep-alive close.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(1)
            .keep_alive_timeout(Some(Duration::from_millis(200)))
            .body_timeout(Duration::from_millis(500)),
        |_req: Request| "ok",
    );
    let paused = h2_client_paused_after_one_request(server.addr).await;
    assert_eq!(get(server.addr, "/").await.text(), "ok");
    paused.abort();
    server.stop().await;
}

/// An idle HTTP/2 connection whose client does not answer the shutdown's GOAWAY PING (as
/// httpx's does not) is closed a short grace later, not at the shutdown's deadline: the
/// server stops long before its 30 s.
#[tokio::test]
async fn an_idle_http2_client_that_stops_answering_does_not_hold_the_shutdown_to_its_deadline() {
    // The grace is the body timeout where that is shorter than 5 s.
    let mut server = TestServer::start_with(
        Server::bind("127.0.0.1:0").body_timeout(Duration::from_millis(500)),
        |_req: Request| "ok",
    );
    let paused = h2_client_paused_after_one_request(server.addr).await;
    server.stop_by_its_deadline().await;
    paused.abort();
}

#[test]
fn serve_async_on_a_runtime_without_io_or_timers_or_none_is_a_clear_error() {
    // tokio would panic from inside: at once without a runtime or IO, and in every
    // connection task (the client sees a reset, nothing is logged) without timers.
    let without_io = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let without_timers = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    for runtime in [without_timers, without_io] {
        // On a thread of its own: a server that starts anyway serves for ever.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let server = Server::bind("127.0.0.1:0");
            let _ = tx.send(runtime.block_on(server.serve_async(|_req: Request| "never")));
        });
        let err = rx.recv_timeout(STEP).expect("served").unwrap_err();
        assert!(err.is_no_context(), "{err:?}");
        assert!(err.to_string().contains("enable_all"), "{err}");
    }
    // Polled with no runtime at all: answered at the first poll.
    let mut serving =
        std::pin::pin!(Server::bind("127.0.0.1:0").serve_async(|_req: Request| "never"));
    let waker = futures_util::task::noop_waker();
    let polled = serving
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    match polled {
        std::task::Poll::Ready(Err(err)) => assert!(err.is_no_context(), "{err:?}"),
        other => panic!("expected an error at once, got {other:?}"),
    }
}

#[tokio::test]
async fn one_http2_connection_holds_at_most_its_concurrent_streams_in_the_pool() {
    let (gate, started, release) = gate();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").http2_max_concurrent_streams(2),
        gated(gate),
    );
    let mut send = h2::<Empty<Bytes>>(server.addr).await;
    // One request first, so that the client has the server's settings: one that opens
    // more streams before it knows the limit gets the extra ones refused (and may retry).
    let first = http::Request::get("/").body(Empty::new()).unwrap();
    assert_eq!(
        within(send.send_request(first)).await.unwrap().status(),
        200
    );
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let req = http::Request::get("/block").body(Empty::new()).unwrap();
                within(send.send_request(req)).await.map(|r| r.status())
            })
        })
        .collect();
    let started = recv_blocking(recv_blocking(started).await).await;
    // Two handlers run; the client holds the third request back until one ends (a bound
    // on absence: half a second is plenty for a request on loopback).
    let third = tokio::task::spawn_blocking(move || {
        let third = started.recv_timeout(Duration::from_millis(500));
        (third, started)
    });
    let (third, started) = within(third).await.unwrap();
    assert!(third.is_err(), "a third stream ran beside the two allowed");
    release.send(()).unwrap();
    let _started = recv_blocking(started).await;
    release.send(()).unwrap();
    release.send(()).unwrap();
    for request in requests {
        assert_eq!(within(request).await.unwrap().unwrap(), 200);
    }
    server.stop().await;
}

#[test]
fn binding_a_port_in_use_panics_with_the_os_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let panic = std::panic::catch_unwind(|| Server::bind(addr)).expect_err("the port is taken");
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("in use"), "{message}");
}

#[tokio::test]
async fn a_handler_sees_the_clients_address() {
    let named = |req: Request| match req.extensions().get() {
        Some(syncbridge::RemoteAddr(addr)) => addr.to_string(),
        None => "none".to_owned(),
    };
    // Not asked for: not paid for.
    let server = TestServer::start(named);
    assert_eq!(get(server.addr, "/").await.text(), "none");
    server.stop().await;

    let server = TestServer::start_with(Server::bind("127.0.0.1:0").remote_addr(true), named);
    // Two connections from two ports: each request names its own.
    for _ in 0..2 {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        let client = stream.local_addr().unwrap();
        within(stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"))
            .await
            .unwrap();
        let reply = read_raw_response(&mut stream).await.expect("a response");
        assert_eq!(String::from_utf8(reply.body).unwrap(), client.to_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn with_half_close_on_a_client_that_closes_its_sending_side_is_answered() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").http1_half_close(true),
        |mut req: Request| -> std::io::Result<String> {
            let mut body = String::new();
            std::io::Read::read_to_string(req.body_mut(), &mut body)?;
            Ok(format!("stored {body}"))
        },
    );
    // A webhook sender or `nc -N`: the whole request, then the end of its stream. By
    // default hyper takes that end for the client gone and drops the request.
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let request = "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    within(stream.write_all(request.as_bytes())).await.unwrap();
    within(stream.shutdown()).await.unwrap();
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.body, b"stored hello");
    server.stop().await;
}

/// `serve_async`'s future may be spawned (`Send`) and shared between threads (`Sync`):
/// a check at compile time, which a future that stopped being either would fail.
#[test]
fn serve_asyncs_future_is_send_and_sync() {
    fn send_and_sync<T: Send + Sync>(_: &T) {}
    let future = Server::bind("127.0.0.1:0").serve_async(|_req: Request| "hello");
    send_and_sync(&future);
}

/// A handler's `Err` inside a `(StatusCode, Result)` is a `500` on the wire, as its log
/// line says, not the tuple's status.
#[tokio::test]
async fn an_error_inside_a_status_tuple_is_answered_500() {
    let server = TestServer::start(|_req: Request| {
        let stored: std::io::Result<String> = Err(std::io::Error::other("the insert failed"));
        (http::StatusCode::CREATED, stored)
    });
    assert_eq!(get(server.addr, "/").await.status, 500);
    server.stop().await;
}
