//! A request body the handler does not read to its end, over HTTP/1: the rest is drained
//! and the connection kept when it is small, and when it is not, the response says
//! `Connection: close` before the server closes, so a pooled client does not send its
//! next request into a closing connection.
mod support;

use std::io::Read;

use support::{closed_by_server, read_raw_response, within, TestServer};
use syncbridge::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Reads ten bytes of the body and drops the rest with the request.
fn reads_ten(mut req: Request) -> String {
    if req.uri().path() == "/next" {
        return "next".into();
    }
    let mut ten = [0u8; 10];
    req.body_mut().read_exact(&mut ten).expect("ten bytes");
    "took 10".into()
}

/// Sends a request with `body` bytes (under `Content-Length`, or chunked as one chunk)
/// from a task of its own, as a client writes its upload while it waits for the
/// answer. The task gives the write half back once the request is out.
async fn post(
    addr: std::net::SocketAddr,
    body: usize,
    chunked: bool,
) -> (OwnedReadHalf, JoinHandle<std::io::Result<OwnedWriteHalf>>) {
    let stream = within(TcpStream::connect(addr)).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut request = if chunked {
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body:x}\r\n"
        )
    } else {
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {body}\r\n\r\n")
    }
    .into_bytes();
    request.resize(request.len() + body, b'x');
    if chunked {
        request.extend_from_slice(b"\r\n0\r\n\r\n");
    }
    let writer = tokio::spawn(async move {
        write.write_all(&request).await?;
        Ok(write)
    });
    (read, writer)
}

#[tokio::test]
async fn a_body_left_half_read_is_drained_and_the_connection_kept_when_the_rest_is_small() {
    let server = TestServer::start(reads_ten);
    for (body, chunked) in [(2_000, false), (200_000, false), (2_000, true)] {
        let (mut read, writer) = post(server.addr, body, chunked).await;
        let reply = read_raw_response(&mut read).await.expect("a response");
        assert_eq!(reply.body, b"took 10");
        let closes = reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close");
        if chunked && closes {
            // A chunked body's rest is unknown until its last chunk has come, and whether
            // hyper has decoded it when the handler answers is a race between two tasks
            // (documented): when it has not, the connection closes, and says so first.
            assert!(closed_by_server(&mut read).await);
            continue;
        }
        assert!(
            !closes,
            "{body} bytes, chunked {chunked}: connection not kept: {}",
            reply.head
        );
        // The same connection serves the next request.
        let mut write = within(writer).await.unwrap().expect("the upload went out");
        within(write.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .unwrap();
        let next = read_raw_response(&mut read).await;
        assert!(
            next.is_some_and(|next| next.body == b"next"),
            "{body} bytes, chunked {chunked}: closed after the response"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_body_left_half_read_with_much_more_to_come_gets_connection_close() {
    let server = TestServer::start(reads_ten);
    for chunked in [false, true] {
        // The server closes before it has all of it: the writer's error is the point.
        let (mut read, _writer) = post(server.addr, 4 << 20, chunked).await;
        let reply = read_raw_response(&mut read).await.expect("a response");
        assert_eq!(reply.body, b"took 10");
        assert!(
            reply
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "chunked {chunked}: the client was not told the connection closes: {}",
            reply.head
        );
        assert!(closed_by_server(&mut read).await);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_trickling_a_body_nobody_reads_is_cut_off_at_the_header_read_timeout() {
    let server = TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0")
            .header_read_timeout(std::time::Duration::from_millis(300)),
        |_req: Request| "not read",
    );
    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    within(write.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.body, b"not read");
    // A byte every 100 ms would keep the drain going for hours: the connection must be
    // closed while it trickles, within ten header read timeouts.
    let start = std::time::Instant::now();
    loop {
        if write.write_all(b"x").await.is_err() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "the drain kept the connection open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_writes_its_whole_body_before_reading_gets_the_early_answer() {
    // As nginx and most proxies send to an upstream: the whole body, then the response.
    // Before: the server closed with the body's rest unread, the kernel answered it with
    // a reset, the client's write failed, and nginx answered `502` in place of the `413`.
    let server = TestServer::start(reads_ten);
    let (mut read, writer) = post(server.addr, 8 << 20, false).await;
    within(writer)
        .await
        .unwrap()
        .expect("the whole upload went out");
    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.body, b"took 10");
    assert!(closed_by_server(&mut read).await);

    // Over the limit (64 MiB by default): answered `413` from the head alone.
    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n".to_vec();
    request.resize(request.len() + (8 << 20), b'x');
    within(write.write_all(&request))
        .await
        .expect("8 MiB of the upload went out");
    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert!(closed_by_server(&mut read).await);
    // Closing ends the server's drain at once, rather than after its 2 s.
    drop((read, write));
    server.stop().await;
}
