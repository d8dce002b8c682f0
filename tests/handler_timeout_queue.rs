//! The handler timeout for a request still queued (answered `503`, its handler never
//! runs) and for a handler reading its body (its reads fail). Apart from
//! `handler_timeout`, whose warnings these would take the throttle of.
mod support;

use bytes::Bytes;
use support::stuck::{start, started};
use support::{channel_body, h1, logs, within};
use syncbridge::Server;

#[tokio::test]
async fn a_request_still_queued_at_its_handler_timeout_is_answered_503() {
    let mut setup = start(
        Server::bind("127.0.0.1:0")
            .max_threads(1)
            .queue_timeout(support::STEP),
    );
    let addr = setup.server.addr;
    let stuck = tokio::spawn(async move { support::get(addr, "/stuck").await });
    assert_eq!(started(&mut setup.started).await, "stuck");

    // Queued behind it: the handler timeout, not the longer queue timeout, ends its wait.
    let queued = within(support::get(addr, "/queued")).await;
    assert_eq!(queued.status, 503);
    assert!(logs::contains(&[
        "WARN",
        "path=/queued",
        "request reached the handler timeout waiting for a handler thread; answered 503"
    ]));
    assert_eq!(within(stuck).await.unwrap().status, 504);
    setup.release.send(()).unwrap();
    // The queued request's handler never ran: the one thread is free for the next.
    let next = within(support::get(addr, "/fast")).await;
    assert_eq!(next.status, 200);
    assert_eq!(started(&mut setup.started).await, "other");
    assert!(
        setup.started.try_recv().is_err(),
        "a handler ran for the request answered 503"
    );
    setup.server.stop().await;
}

#[tokio::test]
async fn a_handler_reading_its_body_at_the_timeout_is_answered_504_and_its_reads_fail() {
    let mut setup = start(Server::bind("127.0.0.1:0"));
    let addr = setup.server.addr;
    let mut send = h1(addr).await;
    // A chunked body that sends a part and then nothing more.
    let (parts, body) = channel_body(1);
    parts.send(Bytes::from_static(b"first part")).await.unwrap();
    let request = http::Request::post("/read")
        .header("host", addr.to_string())
        .body(body)
        .unwrap();
    let response = within(send.send_request(request)).await.unwrap();
    assert_eq!(response.status(), 504);
    // The rest of a chunked body cannot be drained: the connection closes after this.
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(started(&mut setup.started).await, "read");
    let error = within(setup.read_error.recv())
        .await
        .expect("the handler's read ended");
    assert!(
        error.contains("given up before its body ended"),
        "the handler's read failed with: {error}"
    );
    drop(parts);
    setup.server.stop().await;
}
