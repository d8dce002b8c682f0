//! `Server::request_span`: each request's own span, made on the handler thread, carries
//! the handler's lines and the server's lines about the request; what its function puts
//! in the extensions reaches the handler.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use support::{collect, logs, within, TestServer};
use syncbridge::{Request, Server};

/// The request's id, as the span function found or made it.
#[derive(Clone)]
struct RequestId(String);

/// A server whose requests get a `request{id=…}` span: the `X-Request-Id` they bring,
/// else `made-N`. A request with `x-boom` makes the function panic.
fn with_request_ids() -> Server {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Server::bind("127.0.0.1:0").request_span(|req: &mut Request| {
        if req.headers().contains_key("x-boom") {
            support::panic_quietly("request_span boom");
        }
        let id = match req.headers().get("x-request-id") {
            Some(id) => id.to_str().unwrap_or("?").to_owned(),
            None => format!("made-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        };
        let span = tracing::info_span!(target: "app", "request", id = %id);
        req.extensions_mut().insert(RequestId(id));
        span
    })
}

/// Logs a line and answers with the request's id.
fn traced(req: Request) -> String {
    tracing::info!(target: "app", path = req.uri().path(), "span test handler runs");
    if req.uri().path() == "/panic" {
        support::panic_quietly("handler boom");
    }
    match req.extensions().get::<RequestId>() {
        Some(RequestId(id)) => id.clone(),
        None => "no id".to_owned(),
    }
}

/// `GET path` with `headers` over HTTP/1.1 or HTTP/2: status and body.
async fn get(
    addr: std::net::SocketAddr,
    http2: bool,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let raw: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let reply = support::get_with(addr, http2, path, &raw).await;
    (reply.status.as_u16(), reply.text())
}

#[tokio::test]
async fn the_handlers_lines_are_in_its_requests_span_and_its_extensions_reach_it() {
    logs::install();
    let server = TestServer::start_with(with_request_ids(), traced);
    for (http2, id) in [(false, "rid-h1"), (true, "rid-h2")] {
        let reply = get(server.addr, http2, "/traced", &[("x-request-id", id)]).await;
        assert_eq!(reply, (200, id.to_owned()));
        let line = [
            "span test handler runs",
            "in {conn peer=127.0.0.1:",
            &format!("in {{request id={id} }}") as &str,
        ];
        assert!(
            logs::contains(&line),
            "{id}: the handler's line in both spans"
        );
    }
    // Without the header, the function makes one.
    let (status, made) = get(server.addr, false, "/traced", &[]).await;
    assert_eq!(status, 200);
    assert!(made.starts_with("made-"), "{made}");
    server.stop().await;

    // A server without the setting: no span of the request's own, no id.
    let server = TestServer::start(traced);
    let reply = get(
        server.addr,
        false,
        "/plain",
        &[("x-request-id", "rid-plain")],
    )
    .await;
    assert_eq!(reply, (200, "no id".to_owned()));
    server.stop().await;
    let plain = ["span test handler runs", "path=\"/plain\""];
    assert!(logs::contains(&plain));
    assert!(!logs::contains(&[plain[0], plain[1], "in {request"]));
}

#[tokio::test]
async fn a_handlers_panic_is_logged_in_its_requests_span() {
    logs::install();
    let server = TestServer::start_with(with_request_ids(), traced);
    let reply = get(
        server.addr,
        false,
        "/panic",
        &[("x-request-id", "rid-panic")],
    )
    .await;
    assert_eq!(reply.0, 500);
    server.stop().await;
    let line = [
        "handler panicked; answered 500",
        "in {request id=rid-panic }",
    ];
    assert!(
        logs::eventually_contains(&line).await,
        "the panic's line names the request"
    );
}

#[tokio::test]
async fn a_span_function_that_panics_is_logged_and_its_request_served_without_a_span() {
    logs::install();
    let server = TestServer::start_with(with_request_ids(), traced);
    let reply = get(server.addr, false, "/boom", &[("x-boom", "1")]).await;
    assert_eq!(reply, (200, "no id".to_owned()));
    server.stop().await;
    let line = [
        "the server's request_span function panicked",
        "path=/boom",
        "request_span boom",
    ];
    assert!(logs::contains(&line), "the panic is logged");
}

#[tokio::test]
async fn the_span_function_may_read_the_body_and_do_what_a_handler_may() {
    // It reads a body signature's input before the handler, and calls async code as a
    // handler may.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").request_span(|req: &mut Request| {
            let mut body = String::new();
            std::io::Read::read_to_string(req.body_mut(), &mut body).expect("the body");
            let doubled = syncbridge::ensure_sync(async { 21 * 2 }).expect("ensure_sync");
            req.extensions_mut()
                .insert(RequestId(format!("{body} {doubled}")));
            tracing::info_span!(target: "app", "request")
        }),
        |req: Request| match req.extensions().get::<RequestId>() {
            Some(RequestId(seen)) => seen.clone(),
            None => "nothing".to_owned(),
        },
    );
    for http2 in [false, true] {
        let req = http::Request::post("http://localhost/sign")
            .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let response = if http2 {
            within(support::h2(server.addr).await.send_request(req)).await
        } else {
            within(support::h1(server.addr).await.send_request(req)).await
        };
        let reply = collect(response.expect("a response")).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "hello 42".to_owned()),
            "http2: {http2}"
        );
    }
    server.stop().await;
}

/// A future run by `ensure_sync` that blocks its runtime thread stalls every connection on
/// that thread without failing: the server says so, in the request's span, with how long.
#[tokio::test]
async fn a_future_that_blocks_its_runtime_thread_is_said_in_its_requests_span() {
    logs::install();
    let server = TestServer::start_with(with_request_ids(), |_req: Request| {
        syncbridge::ensure_sync(async {
            std::thread::sleep(std::time::Duration::from_millis(150)); // a sync call, by mistake
            "slept"
        })
    });
    let reply = get(server.addr, false, "/", &[("x-request-id", "rid-blocks")]).await;
    assert_eq!(reply, (200, "slept".to_owned()));
    server.stop().await;
    assert!(logs::contains(&[
        "WARN",
        "in {request id=rid-blocks }",
        "a future run by ensure_sync held its runtime thread that long in one poll",
        "took_ms=",
    ]));
}
