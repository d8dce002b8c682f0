//! Clients that stop sending their body or stop reading their response: each is cut off
//! at the body timeout, and the handler thread it held serves the next request.
mod support;

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use support::{closed_by_server, get, read_raw_response, within, TestServer, STEP};
use syncbridge::{Request, Response, ResponseBody, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY_TIMEOUT: Duration = Duration::from_millis(300);

/// One handler thread: a second request waits in the queue until the first one's thread
/// is free again (for longer than a test step, if it never is).
fn one_thread() -> Server {
    Server::bind("127.0.0.1:0")
        .max_threads(1)
        .body_timeout(BODY_TIMEOUT)
}

/// Waits, off the test's runtime, for what a handler thread reports.
async fn report<T: Send + 'static>(rx: mpsc::Receiver<T>) -> T {
    within(tokio::task::spawn_blocking(move || {
        rx.recv_timeout(STEP).expect("no report from the handler")
    }))
    .await
    .expect("report task")
}

/// A handler that reads the body whole and reports how the read went (`/hello` aside).
fn reports_its_read(
    tx: mpsc::Sender<Result<usize, std::io::ErrorKind>>,
) -> impl Fn(Request) -> std::io::Result<String> + Send + Sync {
    move |mut req: Request| {
        if req.uri().path() == "/hello" {
            return Ok("hello".to_owned());
        }
        let mut body = Vec::new();
        let read = req.body_mut().read_to_end(&mut body);
        tx.send(read.as_ref().map_err(|e| e.kind()).copied())
            .unwrap();
        read.map(|n| n.to_string())
    }
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_answered_408_and_frees_the_thread() {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start_with(one_thread(), reports_its_read(tx));

    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n";
    within(stream.write_all(head.as_bytes())).await.unwrap();
    within(stream.write_all(&[b'x'; 10])).await.unwrap();
    // ... and nothing more.

    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert!(reply
        .head
        .to_ascii_lowercase()
        .contains("connection: close"));
    assert_eq!(report(rx).await, Err(std::io::ErrorKind::TimedOut));
    assert!(closed_by_server(&mut stream).await);

    assert_eq!(get(server.addr, "/hello").await.text(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn an_echo_that_swallows_its_stalled_request_body_is_not_passed_off_as_whole() {
    use std::io::BufRead;
    // A line echo written the way clippy suggests (`map_while(Result::ok)`): the read that
    // fails for the stall ends its lines, and the producer ends cleanly.
    let server = TestServer::start_with(one_thread(), |req: Request| {
        let lines = std::io::BufReader::new(req.into_body())
            .lines()
            .map_while(Result::ok);
        Response::new(ResponseBody::from_chunks(
            lines.map(|line| Ok(Bytes::from(line + "\n"))),
        ))
    });
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nline1\n";
    within(stream.write_all(head.as_bytes())).await.unwrap();
    // ... and nothing more: the echo's next read fails at the body timeout.
    // Read until the body's last chunk, or the connection's end (a close or a reset).
    let mut got = Vec::new();
    within(async {
        while !got.ends_with(b"0\r\n\r\n") {
            match stream.read_buf(&mut got).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("line1"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a body cut short by its request's stall ended as whole: {text}"
    );
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_request_body_sent_at_a_trickle_is_answered_408_and_frees_the_thread() {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start_with(one_thread(), reports_its_read(tx));

    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n";
    within(write.write_all(head.as_bytes())).await.unwrap();
    // A byte every 20 ms, never a pause as long as the body timeout: the slow client
    // this simulates, until the server answers (or stops reading).
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if write.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert_eq!(report(rx).await, Err(std::io::ErrorKind::TimedOut));
    trickle.abort();
    assert_eq!(get(server.addr, "/hello").await.text(), "hello");
    server.stop().await;
}

/// An endless streamed body that reports when its producer is dropped.
struct Endless(mpsc::Sender<()>);

impl Iterator for Endless {
    type Item = std::io::Result<Bytes>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(Ok(Bytes::from_static(&[b'y'; 64 * 1024])))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn a_streamed_response_nobody_reads_is_aborted_and_its_producer_stops() {
    let (tx, rx) = mpsc::channel();
    // One connection too: the second client is served only once the server has closed
    // the first by itself (the stalled client reads nothing until then).
    let server = TestServer::start_with(one_thread().max_connections(1), move |req: Request| {
        if req.uri().path() == "/hello" {
            return Response::new("hello".into());
        }
        Response::new(ResponseBody::from_chunks(Endless(tx.clone())))
    });

    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    // Reads nothing: the socket buffers fill, then the producer blocks on its channel.

    report(rx).await;
    assert_eq!(get(server.addr, "/hello").await.text(), "hello");
    assert!(closed_by_server(&mut stream).await);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_whose_client_reads_none_of_a_full_response_is_closed() {
    // More than the socket buffers hold.
    const SIZE: usize = 32 * 1024 * 1024;
    // One connection at a time: the second client is served only once the server has
    // closed the first, so its answer is the sign (no sleep to guess the timing).
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(1)
            .body_timeout(BODY_TIMEOUT),
        |req: Request| {
            if req.uri().path() == "/big" {
                Bytes::from(vec![b'z'; SIZE])
            } else {
                Bytes::from_static(b"small")
            }
        },
    );

    let mut stalled = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stalled.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    // Reads nothing until the next client got its answer.
    assert_eq!(get(server.addr, "/small").await.text(), "small");

    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match within(stalled.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(
        received < SIZE,
        "the whole response arrived: the connection was not cut off"
    );
    server.stop().await;
}

/// Sends `GET path` on `send` and returns the response, its body unread.
async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    path: &str,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::get(path)
        .body(http_body_util::Empty::new())
        .unwrap();
    within(send.send_request(req)).await.expect("h2 response")
}

/// A server with one connection slot: a second client is served only once the server has
/// closed the first by itself.
fn one_connection(keep_alive: Option<Duration>) -> Server {
    Server::bind("127.0.0.1:0")
        .max_connections(1)
        .keep_alive_timeout(keep_alive)
        .body_timeout(BODY_TIMEOUT)
}

/// A handler that answers `path` with `size` bytes, and any other path with `small`.
fn sized_at(path: &'static str, size: usize) -> impl Fn(Request) -> Bytes + Send + Sync {
    move |req: Request| {
        if req.uri().path() == path {
            Bytes::from(vec![b'z'; size])
        } else {
            Bytes::from_static(b"small")
        }
    }
}

/// Asserts the stalled HTTP/2 client's connection was closed, after the next client was
/// served: its response body ends in an error, and its connection task has ended.
async fn assert_cut_off(
    held: http::Response<hyper::body::Incoming>,
    conn: tokio::task::JoinHandle<()>,
) {
    use http_body_util::BodyExt;
    let body = within(held.into_body().collect()).await;
    assert!(body.is_err(), "the held response arrived whole");
    within(conn).await.unwrap();
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_for_a_full_response_is_closed() {
    let server = TestServer::start_with(one_connection(None), sized_at("/big", 1024 * 1024));
    let (mut send, conn, _) = support::h2_with_window(server.addr, 16 * 1024).await;
    // A connection in use for a while: one whole response, a pause longer than the
    // server's idle re-check (a second, for a body timeout that short), in which it
    // looks at the idle connection, then one held back.
    let first = h2_get(&mut send, "/small").await;
    assert_eq!(support::collect(first).await.text(), "small");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = h2_get(&mut send, "/big").await;
    assert_eq!(held.status(), 200);

    assert_eq!(get(server.addr, "/small").await.text(), "small");
    assert_cut_off(held, conn).await;
    server.stop().await;
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_for_a_streamed_response_is_closed() {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start_with(one_connection(None), move |req: Request| {
        if req.uri().path() == "/small" {
            return Response::new("small".into());
        }
        Response::new(ResponseBody::from_chunks(Endless(tx.clone())))
    });
    let (mut send, conn, _) = support::h2_with_window(server.addr, 16 * 1024).await;
    let held = h2_get(&mut send, "/endless").await;

    report(rx).await; // the producer stopped at the body timeout
    assert_eq!(get(server.addr, "/small").await.text(), "small");
    assert_cut_off(held, conn).await;
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_closed_for_idleness_is_closed_when_its_client_takes_no_more() {
    // A response small enough for hyper to take whole: the request is done for the
    // bridge while the client still holds back most of it. The keep-alive timeout then
    // closes the connection gracefully, which waits for that stream.
    let server = TestServer::start_with(
        // Long enough for the request to come first on a loaded machine.
        one_connection(Some(Duration::from_millis(500))),
        sized_at("/held", 60 * 1024),
    );
    let (mut send, conn, _) = support::h2_with_window(server.addr, 16 * 1024).await;
    let held = h2_get(&mut send, "/held").await;

    assert_eq!(get(server.addr, "/small").await.text(), "small");
    assert_cut_off(held, conn).await;
    server.stop().await;
}

#[tokio::test]
async fn an_http2_response_whose_producer_pauses_is_not_cut_off() {
    // Waiting on its own producer is not waiting on the client, however long. The pause
    // outlasts the server's first look at the connection (a second after it came) and
    // two body timeouts after that.
    let server = TestServer::start_with(one_connection(None), |_req: Request| {
        let mut parts = vec![Bytes::from_static(b"b"), Bytes::from_static(b"a")];
        Response::new(ResponseBody::from_chunks(std::iter::from_fn(move || {
            if parts.len() == 1 {
                std::thread::sleep(Duration::from_millis(1000) + 4 * BODY_TIMEOUT);
            }
            parts.pop().map(Ok)
        })))
    });
    let mut send = support::h2::<http_body_util::Empty<Bytes>>(server.addr).await;
    let response = h2_get(&mut send, "/pausing").await;
    assert_eq!(support::collect(response).await.text(), "ab");
    server.stop().await;
}

#[tokio::test]
async fn an_http2_client_that_reads_a_large_chunk_steadily_is_not_cut_off() {
    use http_body_util::BodyExt;
    // A chunk far larger than the client's window, and one more after it (hyper takes a
    // body's next chunk as soon as it has handed the last one to h2, then waits for room
    // for it): the client takes a frame every few milliseconds, so the large chunk takes
    // several body timeouts to go out.
    // A body timeout of its own, 1 s, a hundred times the client's pace: the client runs
    // on the test's one runtime thread, which a loaded machine can hold up for longer
    // than the 300 ms the other tests use. 6 MiB at 16 KiB per 10 ms or more: 3.9 s at
    // the least, past the close a stall would get (the first look a second after the
    // connection came, plus a body timeout or two).
    const TIMEOUT: Duration = Duration::from_secs(1);
    const LARGE: usize = 6 * 1024 * 1024;
    const SIZE: usize = LARGE + 1;
    let server = one_connection(None).body_timeout(TIMEOUT);
    let server = TestServer::start_with(server, |_req: Request| {
        let chunks = [Bytes::from(vec![b'c'; LARGE]), Bytes::from_static(b"!")];
        Response::new(ResponseBody::from_chunks(chunks.into_iter().map(Ok)))
    });
    let (mut send, _conn, _) = support::h2_with_window(server.addr, 16 * 1024).await;
    let mut body = h2_get(&mut send, "/large").await.into_body();
    let mut received = 0;
    while let Some(frame) = within(body.frame()).await {
        let frame = frame.unwrap_or_else(|e| panic!("the response was cut off: {e:?}"));
        received += frame.data_ref().map_or(0, |data| data.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received, SIZE);
    server.stop().await;
}

#[tokio::test]
async fn an_http2_request_body_that_stops_arriving_is_answered_408_and_frees_the_thread() {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start_with(one_thread(), reports_its_read(tx));
    // One part of the body, then nothing: the sender is kept, so the stream never ends.
    let (body_tx, body) = support::channel_body(1);
    let mut send = support::h2(server.addr).await;
    let req = http::Request::post(server.url("/upload"))
        .body(body)
        .unwrap();
    let response = tokio::spawn(send.send_request(req));
    within(body_tx.send(Bytes::from_static(b"part")))
        .await
        .unwrap();

    let response = within(response).await.unwrap().expect("h2 response");
    assert_eq!(response.status(), 408);
    assert_eq!(report(rx).await, Err(std::io::ErrorKind::TimedOut));
    // The one handler thread serves the next request.
    assert_eq!(get(server.addr, "/hello").await.text(), "hello");
    drop(body_tx);
    server.stop().await;
}

/// Waits for the server's line saying it closed a connection whose client held back a
/// response after the GOAWAY (a poll of the log with a deadline).
async fn wait_for_held_close(client: std::net::SocketAddr) {
    let peer = format!("peer={client}");
    let line = [
        "HTTP/2 client held back a response",
        "connection closed",
        &peer,
    ];
    let deadline = std::time::Instant::now() + STEP;
    while !support::logs::contains(&line) {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_http2_response_held_back_is_cut_off_though_other_streams_move() {
    use http_body_util::BodyExt;
    support::logs::install();
    let server = TestServer::start_with(one_connection(None), sized_at("/big", 1024 * 1024));
    let (mut send, conn, client) = support::h2_with_window(server.addr, 16 * 1024).await;
    let held = h2_get(&mut send, "/big").await;
    // Meanwhile the client takes small responses whole, four every body timeout: the
    // connection moves, the held response does not. It is cut off after a body timeout
    // or two; a test step is the test's patience (a loaded machine stretches both).
    let mut taken = 0;
    let closed = tokio::time::timeout(support::STEP, async {
        loop {
            let req = http::Request::get("/small")
                .body(http_body_util::Empty::new())
                .unwrap();
            let Ok(small) = send.send_request(req).await else {
                return; // the connection is closed
            };
            let Ok(body) = small.into_body().collect().await else {
                return;
            };
            assert_eq!(&body.to_bytes()[..], b"small");
            taken += 1;
            tokio::time::sleep(BODY_TIMEOUT / 4).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the held response was never cut off ({taken} small ones taken meanwhile)"
    );
    // The GOAWAY came first: the held response is cut off a body timeout later, with
    // the connection, if the client still takes none of it (hyper's client task ends at
    // the GOAWAY, so only the server's line says when).
    drop(conn);
    wait_for_held_close(client).await;
    let body = within(held.into_body().collect()).await;
    assert!(body.is_err(), "the held response arrived whole");
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_closed_for_a_held_response_lets_its_other_requests_finish() {
    use http_body_util::BodyExt;
    support::logs::install();
    let (release, gate) = mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let big = sized_at("/big", 1024 * 1024);
    // A longer body timeout than the others': the gated request must end within one of
    // them after the GOAWAY, on a loaded machine too.
    let timeout = Duration::from_secs(1);
    let server = Server::bind("127.0.0.1:0")
        .max_connections(1)
        .body_timeout(timeout);
    let server = TestServer::start_with(server, move |req: Request| {
        if req.uri().path() == "/gate" {
            let _ = gate.lock().unwrap().recv_timeout(STEP);
            return Bytes::from_static(b"gated");
        }
        big(req)
    });
    let (mut send, conn, client) = support::h2_with_window(server.addr, 16 * 1024).await;
    let held = h2_get(&mut send, "/big").await;
    let mut gated_send = send.clone();
    let gated = tokio::spawn(async move { h2_get(&mut gated_send, "/gate").await });
    // New requests are refused once the GOAWAY has come (before: the connection was
    // closed there, and the gated request with it).
    let goaway = tokio::time::timeout(STEP, async {
        loop {
            let req = http::Request::get("/small")
                .body(http_body_util::Empty::new())
                .unwrap();
            if send.send_request(req).await.is_err() {
                return;
            }
            tokio::time::sleep(BODY_TIMEOUT / 4).await;
        }
    })
    .await;
    assert!(goaway.is_ok(), "no GOAWAY for the held response");
    release.send(()).unwrap();
    let gated = within(gated).await.unwrap();
    assert_eq!(gated.status(), 200);
    let body = within(gated.into_body().collect())
        .await
        .expect("gated body");
    assert_eq!(&body.to_bytes()[..], b"gated");
    // The held response is cut off with the connection, a body timeout after the GOAWAY.
    drop(conn);
    wait_for_held_close(client).await;
    let body = within(held.into_body().collect()).await;
    assert!(body.is_err(), "the held response arrived whole");
    server.stop().await;
    assert!(support::logs::contains(&[
        "WARN",
        "request cut off before its response was complete",
        "path=/big",
        &format!("peer={client}"),
    ]));
}

/// A server that answers every request with 32 MiB streamed in 64 KiB chunks, more than
/// any socket buffers hold, with `timeout` as its body timeout.
fn streaming_32_mib(timeout: Duration) -> TestServer {
    TestServer::start_with(
        Server::bind("127.0.0.1:0").body_timeout(timeout),
        |_: Request| {
            let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
            Response::new(ResponseBody::from_chunks(
                (0..512).map(move |_| Ok(chunk.clone())),
            ))
        },
    )
}

/// Reads up to `piece` bytes at a time, `pause` apart, for `lasting`, failing if the
/// response ends first; returns how much it read. The pace is what the callers test:
/// the pauses are the slow reading, not a wait for something to happen.
async fn read_at_pace(
    stream: &mut TcpStream,
    piece: usize,
    pause: Duration,
    lasting: Duration,
) -> usize {
    let mut buf = vec![0u8; piece];
    let mut taken = 0;
    let until = std::time::Instant::now() + lasting;
    while std::time::Instant::now() < until {
        let n = within(stream.read(&mut buf)).await.unwrap_or(0);
        assert!(n > 0, "cut off after {taken} bytes");
        taken += n;
        tokio::time::sleep(pause).await;
    }
    taken
}

#[tokio::test]
async fn a_client_reading_a_large_download_slowly_but_steadily_is_not_cut_off() {
    // Before: the kernel reports a full socket writable again only once about a third
    // of its send buffer (autotuned to MiBs) has drained, so a client reading at a few
    // hundred KiB/s looked, for a body timeout, as if it read nothing, and was cut off.
    const PIECE: usize = 16 * 1024;
    // Long enough for the client's window to open on loopback, where it opens a 64 KiB
    // segment at a time.
    const TIMEOUT: Duration = Duration::from_secs(1);
    let server = streaming_32_mib(TIMEOUT);
    support::logs::install();
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let client = format!("peer={}", stream.local_addr().unwrap());
    within(stream.write_all(b"GET /download HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    // About 320 KiB/s, for six body timeouts.
    let taken = read_at_pace(&mut stream, PIECE, Duration::from_millis(50), TIMEOUT * 6).await;
    drop(stream);
    server.stop().await;
    // The connection's own line: the kernel may still hold MiBs the client has not read
    // when the server closes it.
    assert!(
        !support::logs::contains(&["client took too little of its response", &client]),
        "cut off as a client that read nothing, after {taken} bytes"
    );
}

#[tokio::test]
async fn a_client_taking_far_less_than_the_socket_holds_per_body_timeout_is_not_cut_off() {
    // 32 KiB/s, a timeout of 1 s: four times the 8 KiB a client must take per timeout,
    // and a fourth of the 128 KiB or more Linux wants drained from a full socket before
    // it lets the server write again. Before, the server saw only those writes, and the
    // producer's channel saw only hyper's takes: this client was cut off within a few
    // timeouts, as one that read nothing.
    // 4 KiB every 125 ms, not 16 KiB every 500 ms: the same rate, but a read held up on a
    // loaded machine must be late by most of a timeout, not half of one, to leave a
    // timeout without progress.
    const PIECE: usize = 4 * 1024;
    const BUFFER: u32 = 16 * 1024;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let server = streaming_32_mib(TIMEOUT);
    support::logs::install();
    // A small receive buffer: the client's kernel then reopens its window in small steps
    // as it reads. With a large one, Linux reopens it only once a good part of the buffer
    // is free (about 128 KiB with default buffers, on loopback), and a client reading
    // this slowly from a fast link shows progress only that often.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(BUFFER).unwrap();
    let mut stream = within(socket.connect(server.addr)).await.unwrap();
    let client = format!("peer={}", stream.local_addr().unwrap());
    // A request a little after the connect, as from any real client: the connection's
    // checks then fall out of step with the socket filling. (A first check that counted
    // the client's progress from the fill, but its bytes from the check, cut this client
    // off at one timeout.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    within(stream.write_all(b"GET /download HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let taken = read_at_pace(&mut stream, PIECE, Duration::from_millis(125), TIMEOUT * 5).await;
    drop(stream);
    server.stop().await;
    assert!(
        !support::logs::contains(&["client took too little of its response", &client]),
        "cut off after {taken} bytes"
    );
}

#[tokio::test]
async fn a_client_taking_less_than_8_kib_per_body_timeout_is_cut_off_and_its_request_named() {
    // 1 KiB per timeout: what the socket shows of it must not pass for progress.
    const TIMEOUT: Duration = Duration::from_millis(500);
    let server = streaming_32_mib(TIMEOUT);
    support::logs::install();
    // The smallest receive buffer, so that the client's window opens as it reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stream = within(socket.connect(server.addr)).await.unwrap();
    let client = format!("peer={}", stream.local_addr().unwrap());
    within(stream.write_all(b"GET /trickle HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let mut taken = 0;
    loop {
        match within(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => taken += n,
        }
        assert!(
            started.elapsed() < TIMEOUT * 20,
            "still served after {taken} bytes"
        );
        // The pace is what is tested: the reads are slow on purpose.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.stop().await;
    assert!(support::logs::contains(&[
        "WARN",
        "client took too little of its response",
        &client
    ]));
    // The producer left its stall to the connection: the request is named there.
    assert!(support::logs::contains(&[
        "WARN",
        "request cut off before its response was complete",
        "path=/trickle",
    ]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_held_response_goaway_is_closed_with_nothing_in_flight() {
    // A held response (/big) earns the connection a GOAWAY; a second, one-frame response
    // (/mid) went to h2 whole, but its client takes none of it. Then the client resets
    // /big: nothing is in flight. Before, no deadline applied any more (the keep-alive
    // one is off once a GOAWAY is out) and the connection stayed open for good.
    support::logs::install();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(1)
            .keep_alive_timeout(Some(Duration::from_millis(500)))
            .body_timeout(BODY_TIMEOUT),
        |req: Request| {
            let size = if req.uri().path() == "/big" {
                1 << 20
            } else {
                60 * 1024
            };
            Bytes::from(vec![b'z'; size])
        },
    );
    let tcp = within(TcpStream::connect(server.addr)).await.unwrap();
    let peer = format!("peer={}", tcp.local_addr().unwrap());
    let (client, conn) = within(
        h2::client::Builder::new()
            .initial_window_size(16 * 1024)
            .handshake::<_, Bytes>(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = within(client.ready()).await.unwrap();
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", server.addr))
            .body(())
            .unwrap()
    };
    let (big, _) = client.send_request(get("/big"), true).unwrap();
    let (mid, _) = client.send_request(get("/mid"), true).unwrap();
    let big = within(big).await.unwrap();
    let mid = within(mid).await.unwrap();
    let deadline = std::time::Instant::now() + STEP;
    while !support::logs::contains(&["closing the connection (GOAWAY)", &peer]) {
        assert!(std::time::Instant::now() < deadline, "no GOAWAY");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(big); // RST_STREAM
    let closed = tokio::time::timeout(STEP, conn).await;
    drop(mid);
    assert!(closed.is_ok(), "the server never closed the connection");
    server.stop().await;
}

/// A client can hold back many HTTP/2 responses on each of its connections: the close is
/// said once, and so, at `warn`, is one of the requests cut off with it; the others at
/// `debug` (their access lines say `complete=false`).
#[tokio::test]
async fn a_connection_cut_off_for_held_responses_says_one_of_its_requests_at_warn() {
    support::logs::install();
    let server = TestServer::start_with(one_connection(None), sized_at("/big", 1 << 20));
    let (mut send, _conn, client) = support::h2_with_window(server.addr, 16 * 1024).await;
    let first = h2_get(&mut send, "/big").await;
    let second = h2_get(&mut send, "/big").await;
    wait_for_held_close(client).await;
    let peer = format!("peer={client}");
    let others = ["DEBUG", "with others on its connection", "path=/big", &peer];
    assert!(support::logs::eventually_contains(&others).await);
    let said = [
        "WARN",
        "request cut off before its response was complete",
        "path=/big",
        &peer,
    ];
    assert_eq!(support::logs::count(&said), 1);
    assert_eq!(support::logs::count(&others), 1);
    drop((first, second));
    server.stop().await;
}
