//! What an operator reads in the log: every line on a connection's behalf, the access
//! line and the handler's own included, names the client (the `conn` span's `peer`), and
//! a request hyper's parser refuses, which never reaches the service, is logged too.
mod support;

use support::{logs, read_raw_response, within, TestServer};
use syncbridge::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn traced(req: Request) -> &'static str {
    tracing::info!(target: "app", path = req.uri().path(), "handler sees its request");
    "traced"
}

#[tokio::test]
async fn the_access_line_and_the_handlers_own_lines_name_the_client() {
    logs::install();
    let server = TestServer::start(traced);
    let reply = support::get(server.addr, "/traced/h1").await;
    assert_eq!(reply.status, 200);

    let response = support::get_over(server.addr, true, "/traced/h2")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    support::collect(response).await;
    server.stop().await;

    for path in ["/traced/h1", "/traced/h2"] {
        let handler_line = ["handler sees its request", path, "in {conn peer=127.0.0.1:"];
        assert!(logs::contains(&handler_line), "{path}: handler's line");
        let access_line = [
            &format!("path={path} ") as &str,
            "status=200",
            "in {conn peer=127.0.0.1:",
        ];
        assert!(logs::contains(&access_line), "{path}: access line");
    }
}

#[tokio::test]
async fn a_request_hypers_parser_refuses_is_logged_with_its_client() {
    logs::install();
    let server = TestServer::start(traced);
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let local = stream.local_addr().unwrap();
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream)
        .await
        .expect("hyper's answer");
    assert_eq!(reply.status, 400, "{}", reply.head);
    server.stop().await;
    assert!(logs::contains(&[
        "INFO",
        "malformed request refused by hyper's parser",
        &format!("peer={local}"),
    ]));
}

#[tokio::test]
async fn an_http2_connection_ended_for_a_protocol_error_is_logged_with_its_client() {
    logs::install();
    let server = TestServer::start(traced);
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let local = stream.local_addr().unwrap();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, then a WINDOW_UPDATE for the connection of zero: a
    // connection error (RFC 9113 section 6.9).
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    within(stream.write_all(&frames)).await.unwrap();
    let mut received = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(
        &mut stream,
        &mut received,
    ))
    .await
    .unwrap();
    server.stop().await;
    assert!(
        logs::contains(&[
            "WARN",
            "HTTP/2 client broke the protocol or flooded the connection",
            "reason=PROTOCOL_ERROR",
            &format!("peer={local}"),
        ]),
        "no line for the GOAWAY ({} bytes received)",
        received.len()
    );
}

#[tokio::test]
async fn a_request_head_still_arriving_at_the_header_read_timeout_is_logged_with_its_client() {
    logs::install();
    let server = TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0")
            .header_read_timeout(std::time::Duration::from_millis(300)),
        traced,
    );
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let client = stream.local_addr().unwrap().to_string();
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream).await.expect("an answer");
    assert_eq!(reply.status, 408);
    assert!(
        logs::eventually_contains(&[
            "INFO",
            "request head not complete within the header read timeout; answered 408 and closed",
            &client,
        ])
        .await
    );
    server.stop().await;
}
