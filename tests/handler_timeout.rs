//! A handler that does not answer within the handler timeout gets its request answered
//! `504`, with a warning; its thread runs on, and the handler's late answer is dropped
//! and logged. A streamed body, once its handler has answered, is not timed. (The
//! warnings are throttled per process: the other cases are in `handler_timeout_queue`.)
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use support::stuck::{get, start, start_with_timeout, started, TIMEOUT};
use support::{h1, h2, logs, within};
use syncbridge::Server;

#[tokio::test]
async fn a_handler_that_does_not_answer_in_time_is_answered_504_and_its_late_answer_logged() {
    let mut setup = start(Server::bind("127.0.0.1:0"));
    let addr = setup.server.addr;

    // HTTP/1: the 504 comes no sooner than the timeout, and the connection stays usable
    // while the stuck handler holds its thread.
    let mut send = h1::<Empty<Bytes>>(addr).await;
    let asked = Instant::now();
    let response = within(send.send_request(get("/stuck", addr)))
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(
        asked.elapsed() >= TIMEOUT,
        "answered after {:?}",
        asked.elapsed()
    );
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "Gateway Timeout: the handler did not answer in time");
    assert_eq!(started(&mut setup.started).await, "stuck");
    let response = within(send.send_request(get("/fast", addr))).await.unwrap();
    assert_eq!(response.status(), 200);
    support::collect(response).await;
    assert_eq!(started(&mut setup.started).await, "other");

    // HTTP/2 alike.
    let mut send2 = h2::<Empty<Bytes>>(addr).await;
    let response = within(send2.send_request(get(&format!("http://{addr}/stuck"), addr)))
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    support::collect(response).await;
    assert_eq!(started(&mut setup.started).await, "stuck");

    assert!(logs::contains(&[
        "WARN",
        "path=/stuck",
        "handler did not answer within the handler timeout; answered 504"
    ]));
    // Each stuck handler returns once released: its answer goes nowhere, and says so.
    setup.release.send(()).unwrap();
    setup.release.send(()).unwrap();
    assert!(
        logs::eventually_contains(&[
            "WARN",
            "path=/stuck",
            "handler returned after the handler timeout, its request answered 504 already"
        ])
        .await
    );
    setup.server.stop().await;
    assert_eq!(logs::count(&["path=/stuck", "status=504"]), 2);
}

#[tokio::test]
async fn a_streamed_body_whose_head_waits_past_the_timeout_is_not_cut_off() {
    // The head is held for the first bytes (a long grace), which come after the handler
    // timeout: the handler answered in time, and its body is not timed. A handler
    // timeout of 1 s, not 300 ms: the handler must be reached and answer within it,
    // which a loaded machine may delay.
    let timeout = Duration::from_secs(1);
    let setup = start_with_timeout(
        Server::bind("127.0.0.1:0").head_grace(support::STEP),
        timeout,
    );
    let addr = setup.server.addr;
    let release = setup.release.clone();
    let response = tokio::spawn(async move { support::get(addr, "/stream").await });
    tokio::time::sleep(timeout * 2).await;
    release.send(()).unwrap();
    let response = within(response).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "streamed");
    setup.server.stop().await;
    assert!(!logs::contains(&["path=/stream", "handler timeout"]));
}
