//! The handler timeout for a request still queued (answered `503`, its handler never
//! runs), for a handler reading its body (its reads fail), and for a handler that fails
//! after its `504` (logged as such, not as a `500`). Apart from `handler_timeout`,
//! whose warnings these would take the throttle of.
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
        error.contains("given up before its body was read to the end"),
        "the handler's read failed with: {error}"
    );
    drop(parts);
    setup.server.stop().await;
}

#[tokio::test]
async fn a_handler_that_fails_after_its_504_is_logged_as_failing_late_not_as_answered_500() {
    let mut setup = start(Server::bind("127.0.0.1:0"));
    let addr = setup.server.addr;
    for path in ["/stuck-panics", "/stuck-fails"] {
        let reply = within(support::get(addr, path)).await;
        assert_eq!(reply.status, 504, "{path}");
        assert_eq!(started(&mut setup.started).await, "stuck");
        setup.release.send(()).unwrap();
    }
    assert!(
        logs::eventually_contains(&[
            "ERROR",
            "path=/stuck-panics",
            "database connection lost",
            "handler panicked after its request was answered 504 for the handler timeout"
        ])
        .await
    );
    assert!(
        logs::eventually_contains(&[
            "ERROR",
            "path=/stuck-fails",
            "database timed out",
            "handler returned an error after its request was answered 504 for the handler \
             timeout"
        ])
        .await
    );
    setup.server.stop().await;
    for path in ["path=/stuck-panics", "path=/stuck-fails"] {
        assert!(!logs::contains(&[path, "answered 500"]), "{path}");
        assert_eq!(logs::count(&[path, "status=504"]), 1, "{path}");
    }
}

#[test]
fn a_service_with_a_handler_timeout_called_outside_any_runtime_says_none_applies() {
    logs::install();
    let mut service = syncbridge::SyncService::builder(|_req: syncbridge::Request| "answered")
        .handler_timeout(std::time::Duration::from_millis(50))
        .build();
    // Against the service's docs: answered, without a deadline, and said once, not for
    // every request.
    for _ in 0..3 {
        let response = support::block_on_without_runtime(tower::Service::call(
            &mut service,
            http::Request::get("/outside")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        ));
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(
        logs::count(&[
            "ERROR",
            "called outside any tokio runtime; no handler timeout applies"
        ]),
        1
    );
    assert!(!logs::contains(&["refused at once"]));
}
