//! `Server::max_connections_per_client`: a client past its cap gets `503` with
//! `Retry-After` on its new connection, over HTTP/1.1 and HTTP/2, while its open
//! connections are served; a connection that ends gives its place back; trusted proxies
//! are not counted; an IPv6 client (over `::1`) is counted too; a client cannot hold
//! more slots through refused connections (at most four are answered at once, and one
//! awaiting its request gives its slot up to a connection waiting for one); a request
//! body sent before the answer is read does not turn it into a reset; and a client that
//! takes no answer is closed at the body timeout, or at the shutdown's deadline.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{closed_by_server, logs, read_raw_response, within, TestServer};
use syncbridge::{Request, Server, TrustedProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn hello(_req: Request) -> &'static str {
    "hello\n"
}

/// `GET /` on `send`'s connection: the status.
async fn status_on(send: &mut http1::SendRequest<Empty<Bytes>>) -> u16 {
    let req = http::Request::get("http://localhost/")
        .body(Empty::new())
        .unwrap();
    let response = within(send.send_request(req)).await.expect("a response");
    let reply = support::collect(response).await;
    reply.status.as_u16()
}

/// An HTTP/1.1 connection that has been answered `200` once, kept open.
async fn held(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let mut send = support::h1(addr).await;
    assert_eq!(status_on(&mut send).await, 200);
    send
}

/// `server` with a cap of one connection per client, serving `hello`, and the one
/// connection the test client may have, held.
async fn at_its_cap(server: Server) -> (TestServer, http1::SendRequest<Empty<Bytes>>) {
    let server = TestServer::start_with(server.max_connections_per_client(1), hello);
    let first = held(server.addr).await;
    (server, first)
}

/// A connection that has sent `bytes` and waits.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    within(stream.write_all(bytes)).await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_past_its_cap_is_answered_503_and_its_open_connections_are_served() {
    logs::install();
    // The server answers a refused connection's requests itself: the handler sees only
    // the served ones.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        move |req: Request| {
            calls.fetch_add(1, Ordering::SeqCst);
            hello(req)
        }
    };
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections_per_client(2)
            .retry_after(Duration::from_secs(3)),
        counted,
    );
    let mut first = held(server.addr).await;
    let _second = held(server.addr).await;

    // HTTP/1.1: the answer, and the connection closed after it.
    let mut third = within(TcpStream::connect(server.addr)).await.unwrap();
    let port = third.local_addr().unwrap().port();
    within(third.write_all(b"GET /third HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut third).await.expect("an answer");
    assert_eq!(reply.status, 503, "{}", reply.head);
    let head = reply.head.to_ascii_lowercase();
    assert!(head.contains("retry-after: 3\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(closed_by_server(&mut third).await);
    // Its access line, as any request's the server answers itself, names its client.
    assert!(
        logs::eventually_contains(&[
            "INFO",
            "path=/third",
            "status=503",
            &format!("peer=127.0.0.1:{port}"),
        ])
        .await
    );
    // Said, throttled to a line a second for the whole binary: refused again until this
    // test's line is through.
    within(async {
        let said = [
            "WARN",
            "a client holds the most connections it may; its new one is answered 503 and closed",
            "client=127.0.0.1",
            "open=2",
            "cap=2",
        ];
        while !logs::contains(&said) {
            assert_eq!(support::get(server.addr, "/").await.status, 503);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // HTTP/1.0 asking to keep the connection: told it closes, and closed.
    let mut old = sent(
        server.addr,
        b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    let reply = read_raw_response(&mut old).await.expect("an answer");
    assert_eq!(reply.status, 503, "{}", reply.head);
    let head = reply.head.to_ascii_lowercase();
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(closed_by_server(&mut old).await);

    // HTTP/2: the answer, then a GOAWAY that ends the connection.
    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let port = stream.local_addr().unwrap().port();
    let (mut send, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)))
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://localhost/over-h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = support::collect(within(send.send_request(req)).await.unwrap()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "3");
    // The GOAWAY ends it while the client would still send.
    within(conn).await.unwrap().expect("a clean end");
    drop(send);
    assert!(
        logs::eventually_contains(&[
            "INFO",
            "path=/over-h2",
            "status=503",
            &format!("peer=127.0.0.1:{port}"),
        ])
        .await
    );

    // The client's open connections are served as before.
    assert_eq!(status_on(&mut first).await, 200);

    // Once one of them ends, a new one takes its place (as soon as the server has seen
    // the end: a few tries may come first).
    drop(first);
    within(async {
        loop {
            let reply = support::get(server.addr, "/").await;
            if reply.status == 200 {
                break;
            }
            assert_eq!(reply.status, 503);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The two held connections' first requests, the first's second, and the new one's.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    server.stop().await;
}

#[tokio::test]
async fn an_ipv6_client_is_counted_as_one_too() {
    // Over IPv6 loopback (`::1`), where the machine has it: a client's key is its
    // address's /64, which a unit test covers; this is the path over real sockets.
    let Ok(bound) = Server::try_bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let server = TestServer::start_with(bound.max_connections_per_client(1), hello);
    assert!(server.addr.is_ipv6());
    let mut first = held(server.addr).await;
    assert_eq!(support::get(server.addr, "/").await.status, 503);
    assert_eq!(status_on(&mut first).await, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_connections_are_not_counted() {
    let proxies: Vec<TrustedProxy> = vec!["127.0.0.1".parse().unwrap()];
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections_per_client(1)
            .trusted_proxies(proxies),
        hello,
    );
    let _first = held(server.addr).await;
    let _second = held(server.addr).await;
    let _third = held(server.addr).await;
    server.stop().await;
}

/// A connection from `ip` (another address of the loopback network on Linux: another
/// client as far as the server can tell).
#[cfg(target_os = "linux")]
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    within(socket.connect(addr)).await.expect("connect")
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn another_client_is_served_and_a_shutdown_closes_a_refused_connection() {
    let (server, _first) = at_its_cap(Server::bind("127.0.0.1:0")).await;
    // Refused, and waiting for its request.
    let mut refused = sent(server.addr, b"GET / HTTP/1.1\r\n").await;
    // Accepted after it, so the refused one is past the accept loop too.
    let other = connect_from([127, 0, 0, 2], server.addr).await;
    let mut other = support::h1_on(other).await;
    assert_eq!(status_on(&mut other).await, 200);
    drop(other);

    let stopped = tokio::spawn(server.stop());
    assert!(closed_by_server(&mut refused).await);
    within(stopped).await.unwrap();
}

#[tokio::test]
async fn past_four_refused_connections_a_clients_next_is_closed_at_once() {
    let (server, _served) = at_its_cap(Server::bind("127.0.0.1:0")).await;
    // Four refused, each awaiting the rest of its request (for the header read timeout,
    // 30 s).
    let mut refused = Vec::new();
    for _ in 0..4 {
        refused.push(sent(server.addr, b"GET / HTTP/1.1\r\n").await);
    }
    // The fifth is not kept for an answer: closed unanswered.
    let mut fifth = sent(server.addr, b"GET / HTTP/1.1\r\n").await;
    assert!(read_raw_response(&mut fifth).await.is_none());
    // The four still get theirs.
    for mut stream in refused {
        within(stream.write_all(b"host: x\r\n\r\n")).await.unwrap();
        let reply = read_raw_response(&mut stream).await.expect("an answer");
        assert_eq!(reply.status, 503);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_refused_connection_whose_bytes_are_not_http_is_closed_and_said() {
    let (server, _served) = at_its_cap(Server::bind("127.0.0.1:0")).await;
    let mut garbage = sent(server.addr, b"\x16\x03\x01 not http\r\n\r\n").await;
    let port = garbage.local_addr().unwrap().port();
    // hyper answers 400 on its own, and ends the connection with its error.
    let reply = read_raw_response(&mut garbage).await.expect("an answer");
    assert_eq!(reply.status, 400);
    assert!(closed_by_server(&mut garbage).await);
    assert!(
        logs::eventually_contains(&[
            "DEBUG",
            "connection refused for its client's cap ended with an error",
            &format!("peer=127.0.0.1:{port}"),
        ])
        .await
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_body_sent_before_the_answer_is_read_does_not_lose_it() {
    let (server, _served) = at_its_cap(Server::bind("127.0.0.1:0")).await;
    // A client that writes its whole upload before it reads (as proxies and many SDKs
    // do): more than the sockets' buffers can hold unread, so the server must read it.
    // The client's send buffer is kept small, and the server's receive buffer grows past
    // `tcp_rmem`'s default (its second figure) only as the server reads. 16 MiB is far
    // past both, and little enough for the server's 2 s linger to take on a loaded
    // two-core machine (64 MiB, twice `tcp_rmem`'s maximum, sometimes was not).
    let rmem_default: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(128 << 10);
    let body = (16 << 20).max(8 * rmem_default);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 << 10).unwrap();
    let mut over = within(socket.connect(server.addr)).await.unwrap();
    let head = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {body}\r\n\r\n");
    within(over.write_all(head.as_bytes())).await.unwrap();
    within(over.write_all(&vec![b'x'; body]))
        .await
        .expect("the whole body written");
    let reply = read_raw_response(&mut over).await.expect("an answer");
    assert_eq!(reply.status, 503);
    server.stop().await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_refused_connection_awaiting_its_request_gives_its_slot_to_a_waiting_one() {
    use std::sync::{mpsc, Mutex};
    // `/block` holds its connection busy until released: no idle connection to close.
    let (started_tx, started) = mpsc::sync_channel::<()>(1);
    let (release, release_rx) = mpsc::sync_channel::<()>(1);
    let gate = Mutex::new((started_tx, release_rx));
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(2)
            .max_connections_per_client(1),
        move |req: Request| {
            if req.uri().path() == "/block" {
                let gate = gate.lock().unwrap();
                gate.0.send(()).unwrap();
                gate.1.recv().unwrap();
            }
            "hello\n"
        },
    );
    let mut busy = sent(server.addr, b"GET /block HTTP/1.1\r\nhost: x\r\n\r\n").await;
    within(tokio::task::spawn_blocking(move || started.recv()))
        .await
        .unwrap()
        .unwrap();
    // The second slot: a refused connection awaiting its request (for 30 s).
    let mut refused = sent(server.addr, b"GET / HTTP/1.1\r\n").await;
    // Another client at the limit: the refused connection makes room for it.
    let other = connect_from([127, 0, 0, 2], server.addr).await;
    let mut other = support::h1_on(other).await;
    assert_eq!(status_on(&mut other).await, 200);
    assert!(read_raw_response(&mut refused).await.is_none());
    release.send(()).unwrap();
    assert_eq!(read_raw_response(&mut busy).await.unwrap().status, 200);
    drop(other);
    server.stop().await;
}

#[tokio::test]
async fn a_header_read_timeout_of_duration_max_still_answers_a_refused_connection() {
    // `Duration::MAX` means no limit: the first request's deadline must not overflow.
    let with_no_limit = Server::bind("127.0.0.1:0").header_read_timeout(Duration::MAX);
    let (server, _served) = at_its_cap(with_no_limit).await;
    let mut over = sent(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let reply = read_raw_response(&mut over).await.expect("an answer");
    assert_eq!(reply.status, 503);
    server.stop().await;
}

/// Sends `GET path` on `send`, and asserts the refusal's head came.
async fn refused_head(
    send: &mut http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap();
    let held = within(send.send_request(req)).await.expect("a head");
    assert_eq!(held.status(), 503);
    held
}

/// Asserts the held answer never arrived whole, and its connection was closed. (Reading
/// it opens the window: only once the server has closed the connection.)
async fn assert_cut_off(
    held: http::Response<hyper::body::Incoming>,
    conn: tokio::task::JoinHandle<()>,
) {
    use http_body_util::BodyExt;
    let body = within(held.into_body().collect()).await;
    assert!(body.is_err(), "the held answer arrived whole");
    within(conn).await.unwrap();
}

#[tokio::test]
async fn a_refused_client_that_takes_no_answer_is_closed_at_the_body_timeout() {
    logs::install();
    let (server, _served) =
        at_its_cap(Server::bind("127.0.0.1:0").body_timeout(Duration::from_millis(300))).await;
    // The refusal's answer (73 bytes) waits on a client that never reads.
    let (mut send, conn, client) = support::h2_with_window(server.addr, 8).await;
    let port = client.port();
    let held = refused_head(&mut send, "/refused-and-stalled").await;
    // Said as a stall on any connection is, naming its client.
    assert!(
        logs::eventually_contains(&[
            "WARN",
            "connection refused for its client's cap still open the body timeout after its \
             503 (its client took too little of it, or does not answer the closing PING); \
             connection closed",
            "timeout_ms=300",
            &format!("peer=127.0.0.1:{port}"),
        ])
        .await
    );
    assert_cut_off(held, conn).await;
    // Its request was answered: hyper took the whole answer, the client did not.
    assert!(logs::contains(&[
        "INFO",
        "path=/refused-and-stalled",
        "status=503",
        &format!("peer=127.0.0.1:{port}"),
    ]));
    server.stop().await;
}

#[tokio::test]
async fn a_refused_client_that_takes_no_answer_does_not_hold_the_shutdown_past_its_deadline() {
    logs::install();
    // The body timeout (30 s) is not reached: only the deadline ends it.
    let (mut server, _served) =
        at_its_cap(Server::bind("127.0.0.1:0").shutdown_timeout(Duration::from_millis(200))).await;
    let (mut send, conn, _) = support::h2_with_window(server.addr, 8).await;
    let held = refused_head(&mut send, "/refused-at-shutdown").await;
    server.stop_by_its_deadline().await;
    assert_cut_off(held, conn).await;
    // Counted in the server's line (the idle connection closed at the drain).
    assert!(logs::contains(&[
        "WARN",
        "shutdown deadline reached; cutting off the remaining connections",
        "connections=1",
    ]));
}
