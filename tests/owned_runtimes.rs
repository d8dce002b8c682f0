//! Blocking code that owns a tokio runtime of its own, as the sync `postgres::Client` and
//! `reqwest::blocking::Client` do: wherever the crate lets go of it (a server's handler
//! at shutdown, a cancelled `ensure_async` closure, a finished task's closure and its
//! unused callback), it is dropped cleanly, not on a runtime thread where tokio panics
//! ("Cannot drop a runtime in a context where blocking is not allowed").
mod support;

use std::sync::mpsc;
use std::time::Duration;

use futures_util::FutureExt;
use support::{get, logs, within, TestServer, STEP};
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

/// An async task's closure that owns a runtime: let go of when the task ends, on the
/// runtime thread its supervisor runs on, it is dropped off that thread, and the task's
/// success stands (its value joined, its callback run).
#[tokio::test]
async fn an_async_task_whose_closure_owns_a_runtime_succeeds_and_calls_back() {
    let tasks = TaskSet::new();
    let (client, report) = sync_client();
    let (done_tx, done_rx) = mpsc::channel();
    let handle = tasks
        .task()
        .on_done(move |info| done_tx.send(info.status()).unwrap())
        .spawn(move |_ctx| {
            let _uses = &client;
            async { Ok::<_, std::io::Error>(7) }
        })
        .expect("spawned");
    let value = within(handle.join()).await.expect("the task succeeded");
    assert_eq!(*value, 7);
    let status = support::received(done_rx, "on_done never ran").await;
    assert_eq!(status, TaskStatus::Succeeded);
    assert!(dropped_cleanly(report).await);
}

/// A task that outlives its set's shutdown finds the callback pool shut: its callback,
/// which owns a runtime, is dropped unrun off the runtime, and the task's own outcome
/// still reaches its handle.
#[tokio::test]
async fn a_callback_a_shutdown_left_unrun_is_dropped_cleanly() {
    logs::install();
    let tasks = TaskSet::new();
    let (client, report) = sync_client();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let handle = tasks
        .task()
        .on_done(move |_info| drop(client))
        .spawn_blocking(move |_ctx| {
            started_tx.send(()).unwrap();
            // Deaf to its token: it ends when the test says, after the shutdown.
            let _ = release_rx.recv_timeout(STEP);
            Ok::<_, std::io::Error>(1)
        })
        .expect("spawned");
    let id = handle.id();
    support::received(started_rx, "the task never started").await;
    assert_eq!(within(tasks.shutdown(Duration::ZERO)).await, vec![id]);
    release_tx.send(()).unwrap();
    assert_eq!(*within(handle.join()).await.expect("its outcome"), 1);
    assert!(dropped_cleanly(report).await);
    let task_id = format!("task_id={id}");
    assert!(
        logs::eventually_contains(&["callbacks not run", "callback pool has shut down", &task_id])
            .await
    );
}

/// A failed task's error, where its handle was let go of: the registry keeps only its
/// text, so the supervisor's reply is its last holder. It is dropped off the runtime (it
/// may own one), and not under the set's lock: its `Drop` may use the set.
#[tokio::test]
async fn an_error_nobody_joins_is_dropped_off_the_runtime_outside_the_sets_lock() {
    #[derive(Debug)]
    struct Failure(mpsc::Sender<bool>, TaskSet);
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("failed on purpose")
        }
    }
    impl std::error::Error for Failure {}
    impl Drop for Failure {
        fn drop(&mut self) {
            let off_runtime = tokio::runtime::Handle::try_current().is_err();
            // Hangs if the set's lock is held on this thread.
            let _ = self.1.live();
            let _ = self.0.send(off_runtime);
        }
    }
    // The set on a runtime of its own, never dropped: a `Drop` that deadlocks holds that
    // runtime's thread, not the test's, whose timeout then says so.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
    let tasks = TaskSet::builder().runtime(runtime.handle().clone()).build();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let set = tasks.clone();
    let handle = tasks
        .spawn(move |_ctx| {
            let failure = Failure(dropped_tx.clone(), set.clone());
            async move { Err::<(), _>(failure) }
        })
        .expect("spawned");
    drop(handle);
    let off_runtime = support::received(dropped_rx, "the error was never dropped").await;
    assert!(off_runtime, "dropped on a runtime thread");
}
