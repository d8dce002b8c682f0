//! What goes on the wire around the handler's answer: no body for `HEAD` and the bodiless
//! statuses on either protocol, a full body's true length, `400` for a request body the
//! client broke, and an access log that says whether the client got the whole body.
mod support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::Empty;
use support::{collect, h1, h2, logs, read_raw_response, within, TestServer};
use syncbridge::{IntoResponse, Request, Response, ResponseBody};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Routes for every test here. `produced` is set once any streamed producer runs.
fn handler(produced: Arc<AtomicBool>) -> impl Fn(Request) -> Response + Send + Sync {
    move |mut req: Request| {
        let produced = produced.clone();
        let stream = move |n: usize| {
            let produced = produced.clone();
            ResponseBody::from_chunks((0..n).map(move |_| {
                produced.store(true, Ordering::SeqCst);
                Ok(Bytes::from_static(b"chunk"))
            }))
        };
        match req.uri().path() {
            "/no-content" => (StatusCode::NO_CONTENT, "not for the wire").into_response(),
            "/not-modified" => (StatusCode::NOT_MODIFIED, "not for the wire").into_response(),
            "/wrong-length" => {
                let mut response = "0123456789".into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, 5.into());
                response
            }
            "/two-lengths" | "/signed-length" => {
                let mut response = "0123456789".into_response();
                let headers = response.headers_mut();
                if req.uri().path() == "/two-lengths" {
                    headers.insert(header::CONTENT_LENGTH, 10.into());
                    headers.append(header::CONTENT_LENGTH, 5.into());
                } else {
                    headers.insert(header::CONTENT_LENGTH, "+10".parse().unwrap());
                }
                response
            }
            // Lengths hyper cannot send, on answers without a body.
            "/head-itself-two-lengths" | "/not-modified-two-lengths" => {
                let mut response = if req.uri().path() == "/head-itself-two-lengths" {
                    Response::new(ResponseBody::empty())
                } else {
                    StatusCode::NOT_MODIFIED.into_response()
                };
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_LENGTH, 5.into());
                headers.append(header::CONTENT_LENGTH, 6.into());
                response
            }
            "/stream-no-length" => {
                let mut response = Response::new(stream(2));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, "abc".parse().unwrap());
                response
            }
            "/short-stream" => {
                let mut response = Response::new(stream(2));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, 1000.into());
                response
            }
            "/read" => {
                let mut body = Vec::new();
                match req.body_mut().read_to_end(&mut body) {
                    Ok(n) => format!("read {n}").into_response(),
                    Err(err) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
                    }
                }
            }
            p if p.starts_with("/stream") => Response::new(stream(4)),
            _ => "hello".into_response(),
        }
    }
}

fn request(method: &str, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn head_gets_the_get_headers_and_no_body_and_no_producer_runs_on_either_protocol() {
    logs::install();
    let produced = Arc::new(AtomicBool::new(false));
    let server = TestServer::start(handler(produced.clone()));

    let mut http1 = h1::<Empty<Bytes>>(server.addr).await;
    let mut http2 = h2::<Empty<Bytes>>(server.addr).await;
    for protocol in ["http1", "http2"] {
        for path in ["/full", "/stream"] {
            let path = format!("{path}-{protocol}");
            let head = request("HEAD", &path);
            let response = match protocol {
                "http1" => within(http1.send_request(head)).await,
                _ => within(http2.send_request(head)).await,
            };
            let reply = collect(response.expect("a HEAD response")).await;
            assert_eq!(reply.status, 200, "{path}");
            assert!(reply.body.is_empty(), "{path}");
            if path.starts_with("/full") {
                assert_eq!(reply.headers[header::CONTENT_LENGTH], "5", "{path}");
            }
        }
    }
    assert!(
        !produced.load(Ordering::SeqCst),
        "a HEAD response's producer ran"
    );
    // Both connections still serve.
    let reply = collect(
        within(http2.send_request(request("GET", "/full")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.text(), "hello");
    server.stop().await;
    assert!(logs::contains(&["path=/full-http2", "complete=true"]));
    assert!(logs::contains(&["path=/stream-http1", "complete=true"]));
}

#[tokio::test]
async fn a_204_or_304_that_the_handler_gave_a_body_goes_out_without_one_over_http2() {
    logs::install();
    let server = TestServer::start(handler(Arc::default()));
    let mut http2 = h2::<Empty<Bytes>>(server.addr).await;
    for (path, status) in [("/no-content", 204), ("/not-modified", 304)] {
        let sent = http2.send_request(request("GET", path));
        let reply = collect(within(sent).await.expect("a response")).await;
        assert_eq!(reply.status, status);
        assert!(reply.body.is_empty());
    }
    let reply = collect(
        within(http2.send_request(request("GET", "/no-content")))
            .await
            .unwrap(),
    )
    .await;
    assert!(!reply.headers.contains_key(header::CONTENT_LENGTH));
    // The handler's mistake is named where its author will look.
    assert!(logs::contains(&[
        "WARN",
        "path=/no-content",
        "status=204",
        "the handler's was dropped"
    ]));
    server.stop().await;
}

#[tokio::test]
async fn a_full_body_under_a_wrong_content_length_goes_out_whole_and_the_connection_lives() {
    // Wrong, given twice, or with a sign hyper does not accept: each is replaced.
    logs::install();
    let server = TestServer::start(handler(Arc::default()));
    let mut http1 = h1::<Empty<Bytes>>(server.addr).await;
    for path in ["/wrong-length", "/two-lengths", "/signed-length"] {
        let sent = http1.send_request(request("GET", path));
        let reply = collect(within(sent).await.expect("a response")).await;
        let lengths: Vec<_> = reply
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .collect();
        assert_eq!(lengths, ["10"], "{path}");
        assert_eq!(reply.text(), "0123456789", "{path}");
    }
    // Had 5 been sent, the other 5 bytes would now be read as the next response.
    let reply = collect(
        within(http1.send_request(request("GET", "/full")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.text(), "hello");
    server.stop().await;
    assert!(logs::contains(&["WARN", "Content-Length does not match"]));
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_answered_400_not_500() {
    logs::install();
    let server = TestServer::start(handler(Arc::default()));
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = "POST /read HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    within(stream.write_all(head.as_bytes())).await.unwrap();
    within(stream.write_all(b"3\r\nabc\r\nzz\r\nnot a chunk\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 400, "{}", reply.head);
    server.stop().await;
    assert!(logs::contains(&[
        "INFO",
        "broken or cut short by the client"
    ]));
}

#[tokio::test]
async fn the_access_log_calls_a_body_cut_short_of_its_content_length_incomplete() {
    logs::install();
    let server = TestServer::start(handler(Arc::default()));
    let mut http1 = h1::<Empty<Bytes>>(server.addr).await;
    // hyper aborts the response when the producer ends 990 bytes short.
    let sent = http1.send_request(request("GET", "/short-stream"));
    if let Ok(response) = within(sent).await {
        let _ = within(http_body_util::BodyExt::collect(response.into_body())).await;
    }
    server.stop().await;
    assert!(logs::contains(&[
        "path=/short-stream",
        "bytes=10",
        "complete=false"
    ]));
}

/// Sends a request head that expects `100 Continue` for a body of `len` bytes.
async fn expecting_continue(server: &TestServer, path: &str, len: usize) -> TcpStream {
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: {len}\r\n\r\n"
    );
    within(stream.write_all(head.as_bytes())).await.unwrap();
    stream
}

#[tokio::test]
async fn an_echo_of_a_body_sent_after_100_continue_gets_the_100_before_its_head() {
    // hyper sends `100 Continue` only before a response head: a body read only by the
    // response's producer (an echo) must still have been asked for before that.
    use tokio::io::AsyncReadExt;
    logs::install();
    let server = TestServer::start(|req: Request| Response::new(req.into_body().into()));
    let mut stream = expecting_continue(&server, "/echo", 10).await;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within(stream.read_exact(&mut byte))
            .await
            .expect("a 100 Continue");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    within(stream.write_all(b"0123456789")).await.unwrap();
    let mut rest = Vec::new();
    let mut chunk = [0u8; 1024];
    while !rest.ends_with(b"0\r\n\r\n") {
        let n = within(stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("0123456789"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_handler_that_answers_without_reading_the_body_sends_no_100_continue() {
    // A client that asked first need not send a body nobody wants: it gets the answer,
    // with no `100 Continue` before it, and the connection is closed, not left waiting
    // for a body that may or may not come.
    use tokio::io::AsyncReadExt;
    logs::install();
    let server = TestServer::start(|_req: Request| {
        // Its credentials check, a blocking call (the time in which the body used to be
        // asked for, and the 100 sent, although nobody would read it).
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut response = "sign in first".into_response();
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
    });
    let mut stream = expecting_continue(&server, "/upload", 10 << 20).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = within(stream.read(&mut chunk)).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("sign in first"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_503_the_server_makes_itself_goes_out_without_a_body_for_head_over_http2() {
    logs::install();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let server = TestServer::start_with(
        syncbridge::Server::bind("127.0.0.1:0")
            .max_threads(1)
            .queue_capacity(0),
        move |req: Request| {
            if req.uri().path() == "/hold" {
                started_tx.send(()).unwrap();
                let _ = release_rx.lock().unwrap().recv_timeout(support::STEP);
            }
            "done".into_response()
        },
    );
    let mut http2 = h2::<Empty<Bytes>>(server.addr).await;
    let held = tokio::spawn(http2.send_request(request("GET", "/hold")));
    within(tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("the only thread is taken");
    let response = within(http2.send_request(request("HEAD", "/full"))).await;
    let reply = collect(response.expect("a HEAD response, not a reset stream")).await;
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    assert!(reply.body.is_empty());
    release_tx.send(()).unwrap();
    let held = collect(within(held).await.unwrap().unwrap()).await;
    assert_eq!(held.text(), "done");
    server.stop().await;
}

#[tokio::test]
async fn a_request_given_up_while_its_handler_reads_the_body_is_not_logged_as_a_server_error() {
    // What hyper does when an HTTP/2 client resets its stream or closes its connection
    // while the handler is behind on its upload: it drops the request's future.
    logs::install();
    let (reading_tx, reading_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (reading_tx, done_tx) = (Mutex::new(Some(reading_tx)), Mutex::new(Some(done_tx)));
    let service =
        syncbridge::SyncService::new(move |mut req: Request| -> std::io::Result<String> {
            // The README's way to read an upload: `?` on the read.
            let mut first = [0u8; 1024];
            let n = req.body_mut().read(&mut first)?;
            let _ = reading_tx.lock().unwrap().take().unwrap().send(());
            let rest = std::io::copy(req.body_mut(), &mut std::io::sink());
            let _ = done_tx.lock().unwrap().take().unwrap().send(());
            Ok(format!("{} bytes", n as u64 + rest?))
        });
    let (body_tx, body) = support::channel_body(4);
    let req = http::Request::put("/given-up-upload").body(body).unwrap();
    let mut response = Box::pin(tower::ServiceExt::oneshot(service, req));
    body_tx.send(Bytes::from(vec![b'x'; 4096])).await.unwrap();
    tokio::select! {
        _ = &mut response => panic!("answered before the body ended"),
        read = within(reading_rx) => read.unwrap(),
    }
    // Given up with the body still open and the handler waiting for more of it.
    drop(response);
    within(done_rx).await.unwrap();
    assert!(
        logs::eventually_contains(&["path=/given-up-upload", "answer goes nowhere"]).await,
        "no line for the answer to a request given up"
    );
    assert!(
        !logs::contains(&["ERROR", "path=/given-up-upload"]),
        "a request given up was logged as a server error"
    );
    drop(body_tx);
}

#[tokio::test]
async fn a_bodiless_answer_under_a_length_hyper_cannot_send_goes_out_without_it() {
    logs::install();
    let server = TestServer::start(handler(Arc::default()));
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    for (method, path) in [
        ("HEAD", "/head-itself-two-lengths"),
        ("HEAD", "/stream-no-length"),
        ("HEAD", "/not-modified-two-lengths"),
        ("GET", "/not-modified-two-lengths"),
    ] {
        let head = format!("{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        within(stream.write_all(head.as_bytes())).await.unwrap();
        // hyper dropped the connection unanswered when a handler's line reached it.
        let reply = read_raw_response(&mut stream).await;
        let reply = reply.unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert!(
            !reply.head.to_ascii_lowercase().contains("content-length"),
            "{method} {path}: {}",
            reply.head
        );
    }
    // Still in step: the same connection answers the next request.
    within(stream.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream)
        .await
        .expect("the next answer");
    assert_eq!(reply.body, b"hello");
    server.stop().await;
    assert!(logs::contains(&[
        "WARN",
        "Content-Length is not one length; removed",
        "path=/head-itself-two-lengths"
    ]));
}
