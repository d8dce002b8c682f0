//! Blocking code that owns a tokio runtime of its own, as the sync `postgres::Client` and
//! `reqwest::blocking::Client` do: wherever the crate lets go of it (a server's handler
//! at shutdown, a cancelled `ensure_async` closure, a finished task's closure and its
//! unused callback), it is dropped cleanly, not on a runtime thread where tokio panics
//! ("Cannot drop a runtime in a context where blocking is not allowed").
mod support;

use std::sync::mpsc;
use std::time::Duration;

use futures_util::FutureExt;
use support::{get, within, TestServer, STEP};
use syncbridge::{ensure_async_on, BlockingPool, Request, Server, TaskSet, TaskStatus};

/// Stands for a sync client: owns a runtime, and says when it is dropped whether that
/// went cleanly (tokio did not panic on it).
struct OwnsRuntime {
    _runtime: tokio::runtime::Runtime,
    _report: DropReport,
}

struct DropReport(mpsc::Sender<bool>);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send(!std::thread::panicking());
    }
}

fn sync_client() -> (OwnsRuntime, mpsc::Receiver<bool>) {
    let (tx, rx) = mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let client = OwnsRuntime {
        _runtime: runtime,
        _report: DropReport(tx),
    };
    (client, rx)
}

/// Waits off the test's runtime for the drop report.
async fn dropped_cleanly(report: mpsc::Receiver<bool>) -> bool {
    within(tokio::task::spawn_blocking(move || {
        report.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .expect("the value was never dropped")
}

#[tokio::test]
async fn a_handler_that_owns_a_runtime_is_dropped_cleanly_when_the_server_stops() {
    let (client, report) = sync_client();
    let server = TestServer::start(move |_req: Request| {
        let _uses = &client;
        "ok"
    });
    assert_eq!(get(server.addr, "/").await.status, 200);
    // `stop` fails if `serve` panicked.
    server.stop().await;
    assert!(dropped_cleanly(report).await);
}

#[tokio::test]
async fn serve_async_lets_go_of_a_handler_that_owns_a_runtime_cleanly() {
    let (client, report) = sync_client();
    let server = Server::bind("127.0.0.1:0").handle_signals(false);
    let addr = server.local_addr();
    let handle = server.shutdown_handle();
    let serving = tokio::spawn(server.serve_async(move |_req: Request| {
        let _uses = &client;
        "ok"
    }));
    assert_eq!(get(addr, "/").await.status, 200);
    handle.shutdown();
    within(serving)
        .await
        .expect("serve_async panicked")
        .expect("serve_async failed");
    assert!(dropped_cleanly(report).await);
}

#[tokio::test]
async fn an_ensure_async_closure_that_never_ran_is_dropped_cleanly() {
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(4)
        .queue_timeout(Duration::from_millis(50))
        .build();
    let (busy, release_tx) = support::occupy_one_thread(&pool).await;

    // Past the queue timeout: an error, and the closure dropped unrun.
    let (client, timed_out_report) = sync_client();
    let err = within(ensure_async_on(&pool, move || drop(client)))
        .await
        .expect_err("queued past its timeout");
    assert!(err.is_timeout(), "{err}");
    assert!(dropped_cleanly(timed_out_report).await);

    // Given up by its caller while queued: dropped unrun too.
    let (client, cancelled_report) = sync_client();
    // Polled once (that queues it behind the busy thread), then dropped.
    let mut queued = Box::pin(ensure_async_on(&pool, move || drop(client)));
    assert!((&mut queued).now_or_never().is_none());
    drop(queued);
    assert!(dropped_cleanly(cancelled_report).await);

    release_tx.send(()).unwrap();
    within(busy).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_ensure_async_closure_refused_or_never_polled_is_dropped_cleanly() {
    // Refused by a full pool (its one thread busy, its one place in the queue taken): the
    // documented error, not tokio's panic as the closure is dropped.
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(1)
        .build();
    let (busy, release_tx) = support::occupy_one_thread(&pool).await;
    let mut queued = Box::pin(ensure_async_on(&pool, || ()));
    assert!((&mut queued).now_or_never().is_none());
    let (client, full_report) = sync_client();
    let err = within(ensure_async_on(&pool, move || drop(client)))
        .await
        .expect_err("a full pool refuses");
    assert!(err.is_overloaded(), "{err}");
    assert!(dropped_cleanly(full_report).await);

    // Dropped before its first poll (a `select!` branch not taken).
    let (client, unpolled_report) = sync_client();
    drop(ensure_async_on(&pool, move || drop(client)));
    assert!(dropped_cleanly(unpolled_report).await);

    release_tx.send(()).unwrap();
    within(busy).await.unwrap().unwrap();
    within(queued).await.expect("the queued closure ran");
}

#[tokio::test]
async fn a_task_whose_closure_and_unused_callback_own_runtimes_succeeds_and_calls_back() {
    let tasks = TaskSet::new();
    let (closure_client, closure_report) = sync_client();
    let (callback_client, callback_report) = sync_client();
    let (done_tx, done_rx) = mpsc::channel();
    let handle = tasks
        .task()
        .on_error(move |_info| drop(callback_client))
        .on_done(move |info| done_tx.send(info.status()).unwrap())
        .spawn_blocking(move |_ctx| {
            let _uses = &closure_client;
            Ok::<_, std::io::Error>(42)
        })
        .expect("spawned");
    let value = within(handle.join()).await.expect("the task succeeded");
    assert_eq!(*value, 42);
    let status = within(tokio::task::spawn_blocking(move || {
        done_rx.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .expect("on_done ran");
    assert_eq!(status, TaskStatus::Succeeded);
    assert!(dropped_cleanly(closure_report).await);
    assert!(dropped_cleanly(callback_report).await);
}
