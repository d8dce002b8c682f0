//! Graceful shutdown: in-flight requests finish, new connections are refused, and the
//! deadline cuts off what does not finish.
mod support;

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use support::{get, within, TestServer};
use syncbridge::{Request, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn graceful_shutdown_completes_an_inflight_request_and_refuses_new_connections() {
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(1);
    let (release_tx, release_rx) = mpsc::sync_channel::<()>(1);
    let started_tx = Mutex::new(started_tx);
    let release_rx = Mutex::new(release_rx);
    let mut server = TestServer::start(move |_req: Request| {
        started_tx.lock().unwrap().send(()).unwrap();
        release_rx
            .lock()
            .unwrap()
            .recv_timeout(support::STEP)
            .unwrap();
        "finished"
    });
    let addr = server.addr;
    let inflight = tokio::spawn(async move { get(addr, "/slow").await });
    within(tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(support::STEP).unwrap()
    }))
    .await
    .unwrap();

    server.handle.shutdown();
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + support::STEP;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    release_tx.send(()).unwrap();
    let reply = within(inflight).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "finished");
    within(server.join()).await.expect("serve returned Ok");
}

/// A server with a 200 ms shutdown deadline whose handler says it started, then stays
/// stuck until released (or the test ends): only the deadline can end its connection.
/// Returns the server, the start signal and the release.
fn stuck_server() -> (TestServer, mpsc::Receiver<()>, mpsc::SyncSender<()>) {
    let (release_tx, release_rx) = mpsc::sync_channel::<()>(1);
    let release_rx = Mutex::new(release_rx);
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(1);
    let started_tx = Mutex::new(started_tx);
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").shutdown_timeout(Duration::from_millis(200)),
        move |_req: Request| {
            started_tx.lock().unwrap().send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv_timeout(support::STEP);
            "too late"
        },
    );
    (server, started_rx, release_tx)
}

async fn has_started(started: mpsc::Receiver<()>) {
    within(tokio::task::spawn_blocking(move || {
        started.recv_timeout(support::STEP).unwrap()
    }))
    .await
    .unwrap();
}

#[tokio::test]
async fn shutdown_deadline_cuts_off_a_request_that_does_not_finish() {
    let (mut server, started_rx, release_tx) = stuck_server();
    let addr = server.addr;
    let stuck = tokio::spawn(async move {
        let mut send = support::h1::<http_body_util::Empty<bytes::Bytes>>(addr).await;
        let req = http::Request::get("/stuck")
            .header("host", "x")
            .body(http_body_util::Empty::new())
            .unwrap();
        within(send.send_request(req)).await
    });
    has_started(started_rx).await;

    server.stop_by_its_deadline().await;
    // The client sees its connection closed without a response.
    assert!(within(stuck).await.unwrap().is_err());
    release_tx.send(()).unwrap();
    // The log names the request the server gave up on, and does not blame the client.
    assert!(support::logs::contains(&[
        "WARN",
        "request cut off by the shutdown before its response was complete",
        "path=/stuck",
    ]));
    assert!(support::logs::contains(&[
        "path=/stuck",
        "status=503",
        "complete=false"
    ]));
    assert!(!support::logs::contains(&["abandoned", "path=/stuck"]));
}

#[tokio::test]
async fn an_http2_request_cut_off_by_the_deadline_is_logged_before_the_server_says_it_stopped() {
    let (mut server, started_rx, release_tx) = stuck_server();
    let addr = server.addr;
    // On HTTP/2 hyper serves each request in a task of its own, beside the connection's.
    let mut send = support::h2::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    let stuck = tokio::spawn(async move {
        let req = http::Request::get("/stuck-on-h2")
            .body(http_body_util::Empty::new())
            .unwrap();
        within(send.send_request(req)).await
    });
    has_started(started_rx).await;

    server.handle.shutdown();
    within(server.join()).await.expect("serve returned Ok");
    assert!(within(stuck).await.unwrap().is_err());
    release_tx.send(()).unwrap();
    // "stopped" is the last word: an operator reading the log must not find the request
    // the shutdown gave up on after it, or miss it because the process exited first.
    let cut_off = support::logs::position(&[
        "request cut off by the shutdown before its response was complete",
        "path=/stuck-on-h2",
    ])
    .expect("the cut-off request is logged");
    let stopped = support::logs::position(&["syncbridge stopped", &format!("addr={addr}")])
        .expect("the server says it stopped");
    assert!(
        cut_off < stopped,
        "cut-off line {cut_off} after the stopped line {stopped}"
    );
}

#[tokio::test]
async fn shutdown_deadline_names_a_streamed_response_it_cuts_off_mid_body() {
    use http_body_util::BodyExt;

    let (release_tx, release_rx) = mpsc::sync_channel::<()>(1);
    let release_rx = std::sync::Arc::new(Mutex::new(release_rx));
    let mut server = TestServer::start_with(
        Server::bind("127.0.0.1:0").shutdown_timeout(Duration::from_millis(200)),
        move |_req: Request| {
            let release_rx = release_rx.clone();
            syncbridge::ResponseBody::from_chunks((0..2).map(move |i| {
                if i == 1 {
                    // Stuck until the test ends: only the deadline can end the body.
                    let _ = release_rx.lock().unwrap().recv_timeout(support::STEP);
                }
                Ok(bytes::Bytes::from_static(b"first chunk "))
            }))
        },
    );
    let mut send = support::h1::<http_body_util::Empty<bytes::Bytes>>(server.addr).await;
    let req = http::Request::get("/midway")
        .header("host", "x")
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut response = within(send.send_request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    let first = within(response.body_mut().frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first chunk ");

    server.handle.shutdown();
    within(server.join()).await.expect("serve returned Ok");
    release_tx.send(()).unwrap();
    assert!(support::logs::contains(&[
        "WARN",
        "request cut off by the shutdown before its response was complete",
        "path=/midway",
        "bytes=12",
    ]));
    assert!(support::logs::contains(&[
        "path=/midway",
        "status=200",
        "complete=false"
    ]));
}

#[test]
fn serve_from_async_code_is_a_clear_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(async { Server::bind("127.0.0.1:0").serve(|_req: Request| "x") })
        .unwrap_err();
    assert!(err.is_async_context(), "{err}");
}

#[tokio::test]
async fn a_serve_async_future_dropped_while_serving_closes_its_connections_and_says_so() {
    use tokio::io::AsyncWriteExt;
    support::logs::install();
    let server = Server::bind("127.0.0.1:0").handle_signals(false);
    let addr = server.local_addr();
    let serving = tokio::spawn(server.serve_async(|_req: Request| "hi"));
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    within(stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let reply = support::read_raw_response(&mut stream)
        .await
        .expect("a response");
    assert!(reply.head.starts_with("HTTP/1.1 200"), "{}", reply.head);

    // An app's `select!` that let another branch win: the future is dropped.
    serving.abort();
    assert!(within(serving).await.unwrap_err().is_cancelled());
    assert!(
        support::closed_by_server(&mut stream).await,
        "the kept-alive connection outlived its server"
    );
    assert!(support::logs::contains(&[
        "WARN",
        "serve_async dropped while serving"
    ]));
}

#[tokio::test]
async fn a_response_tail_still_unsent_at_the_deadline_is_said_when_cut_off() {
    // `/big/N` answers N KiB. hyper takes a body whole (its access line is written) while
    // its client reads none of it, as long as the rest fits in the socket and hyper's
    // buffer (up to two 64 KiB frames). How much the socket holds depends on the machine,
    // so sizes are tried upwards, each on a connection of its own, until one is no longer
    // taken whole: the largest taken leaves its tail in hyper's buffer.
    let mut server = TestServer::start_with(
        Server::bind("127.0.0.1:0").shutdown_timeout(Duration::from_millis(300)),
        |req: Request| {
            let kib: usize = req.uri().path()[5..].parse().unwrap();
            bytes::Bytes::from(vec![b'x'; kib << 10])
        },
    );
    let mut taken_whole = Vec::new();
    for kib in (64..=1024).step_by(32) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = within(socket.connect(server.addr)).await.unwrap();
        let request = format!("GET /big/{kib} HTTP/1.1\r\nhost: x\r\n\r\n");
        within(client.write_all(request.as_bytes())).await.unwrap();
        let path = format!("path=/big/{kib} ");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !support::logs::contains(&[&path, "complete=true"]) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !support::logs::contains(&[&path, "complete=true"]) {
            break;
        }
        taken_whole.push((kib, client));
    }
    assert!(taken_whole.len() > 1, "no body was taken whole");

    server.stop_by_its_deadline().await;
    // No request was in flight any more, yet part of a response was lost: said, with the
    // client's address, and the client cannot take what it got for the whole body.
    let (kib, mut client) = taken_whole.pop().unwrap();
    let port = client.local_addr().unwrap().port();
    assert!(
        support::logs::contains(&[
            "WARN",
            "connection cut off by the shutdown",
            &format!("peer=127.0.0.1:{port}"),
            "unsent_response=true",
        ]),
        "the cut-off tail of /big/{kib} is not said"
    );
    let mut got = Vec::new();
    let _ = within(client.read_to_end(&mut got)).await;
    assert!(got.len() < kib << 10, "{} bytes of {kib} KiB", got.len());
}
