//! The fanout example over real HTTP: three concurrent calls through `ensure_sync` take
//! about one call's time, not three.
mod support;

#[path = "../examples/fanout.rs"]
mod fanout;

use std::time::{Duration, Instant};

use support::{get, TestServer};

const N: Duration = Duration::from_millis(200);

#[tokio::test]
async fn fanout_takes_about_one_call_not_three() {
    let server = TestServer::start(fanout::handler);
    let start = Instant::now();
    let reply = get(server.addr, &format!("/fanout?ms={}", N.as_millis())).await;
    let took = start.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().starts_with("users,orders,stock in "),
        "{}",
        reply.text()
    );
    assert!(
        took >= N,
        "answered in {took:?}, before the calls could finish"
    );
    // The handler's own figure: the client's includes connecting and the server's first
    // request, which a loaded machine stretches. Under 3N: the three calls one after the
    // other take 3N at the least (the test below), and a loaded machine has 2N to spare.
    let handler_ms = handler_ms(&reply.text());
    assert!(
        handler_ms < 3 * N.as_millis(),
        "took {handler_ms} ms: the calls did not run concurrently"
    );
    server.stop().await;
}

/// The milliseconds the handler says its calls took (`... in N ms`).
fn handler_ms(text: &str) -> u128 {
    text.trim_end()
        .strip_suffix(" ms")
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {text:?}"))
}

#[tokio::test]
async fn sequential_takes_the_sum_which_the_latency_check_would_catch() {
    // The contrast that shows the timing above measures something: the same three calls
    // awaited one by one take at least 3N.
    let server = TestServer::start(fanout::handler);
    let start = Instant::now();
    let reply = get(server.addr, &format!("/sequential?ms={}", N.as_millis())).await;
    assert_eq!(reply.status, 200);
    assert!(start.elapsed() >= 3 * N, "took {:?}", start.elapsed());
    // And the handler's own figure, which the check above relies on, says so too.
    assert!(
        handler_ms(&reply.text()) >= 3 * N.as_millis(),
        "{}",
        reply.text()
    );
    server.stop().await;
}

#[tokio::test]
async fn fanout_rejects_a_missing_or_too_large_wait() {
    let server = TestServer::start(fanout::handler);
    assert_eq!(get(server.addr, "/fanout").await.status, 400);
    assert_eq!(get(server.addr, "/fanout?ms=999999").await.status, 400);
    server.stop().await;
}
