//! Background tasks: spawning from handlers and from anywhere, status lookups, callbacks,
//! failures and panics in the log, cancellation, timeouts, retries, bounds, spans and the
//! drain at shutdown.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use support::{get, logs, within, TestServer, STEP};
use syncbridge::{Request, Server, TaskId, TaskSet, TaskStatus};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Polls `set` until `id` reaches `status` (a short poll with a deadline, not a sleep).
async fn wait_for_status(set: &TaskSet, id: TaskId, status: TaskStatus) {
    let deadline = Instant::now() + STEP;
    loop {
        let now = set.status(id);
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} stayed {now}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until no task thread is busy (a short poll with a deadline, not a sleep).
async fn wait_for_idle_task_pool(set: &TaskSet) {
    let deadline = Instant::now() + STEP;
    while set.live() > 0 || set.pool().stats().busy > 0 {
        assert!(Instant::now() < deadline, "task pool stayed busy");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A blocking task body that waits until its token is cancelled (or STEP passes).
fn until_cancelled(ctx: &syncbridge::TaskContext) -> Result<(), BoxError> {
    let deadline = Instant::now() + STEP;
    while !ctx.is_cancelled() {
        if Instant::now() > deadline {
            return Ok(());
        }
        std::thread::park_timeout(Duration::from_millis(2));
    }
    Err("stopped: cancelled".into())
}

#[tokio::test]
async fn handler_spawns_a_task_that_finishes_after_the_response() {
    logs::install();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let server = TestServer::start(move |req: Request| -> Result<String, BoxError> {
        let path = req.uri().path();
        if path == "/spawn" {
            let rx = release_rx.lock().unwrap().take().expect("spawned once");
            let handle = TaskSet::current()?.spawn_blocking(move |_ctx| {
                rx.recv_timeout(STEP)?;
                Ok::<_, BoxError>(String::from("report ready"))
            })?;
            return Ok(handle.id().to_string());
        }
        let id = path.trim_start_matches("/status/");
        let tasks = TaskSet::current()?;
        let status = TaskId::parse(id).map_or(TaskStatus::NotFound, |id| tasks.status(id));
        let result = TaskId::parse(id)
            .and_then(|id| tasks.info(id))
            .and_then(|info| info.result::<String>().cloned())
            .unwrap_or_default();
        Ok(format!("{status} {result}"))
    });

    // The response comes back while the task is still blocked on `release`.
    let id = get(server.addr, "/spawn").await.text();
    assert!(TaskId::parse(&id).is_some(), "{id}");
    let running = get(server.addr, &format!("/status/{id}")).await.text();
    assert!(running == "running " || running == "pending ", "{running}");

    release_tx.send(()).unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        let status = get(server.addr, &format!("/status/{id}")).await.text();
        if status == "succeeded report ready" {
            break;
        }
        assert!(Instant::now() < deadline, "last status: {status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let unknown = TaskId::parse(&"0".repeat(32)).unwrap();
    assert_eq!(
        get(server.addr, &format!("/status/{unknown}")).await.text(),
        "not_found "
    );
    assert_eq!(
        get(server.addr, "/status/garbage").await.text(),
        "not_found "
    );
    server.stop().await;
}

#[tokio::test]
async fn current_outside_a_handler_is_a_no_context_error() {
    logs::install();
    let err = TaskSet::current().unwrap_err();
    assert!(err.is_no_context(), "{err:?}");
    let err = std::thread::spawn(|| TaskSet::current().unwrap_err())
        .join()
        .unwrap();
    assert!(err.is_no_context(), "{err:?}");
}

#[test]
fn spawning_on_a_set_without_a_runtime_from_a_plain_thread_is_a_no_context_error() {
    logs::install();
    let set = TaskSet::new();
    let err = set.spawn_blocking(|_| Ok::<_, BoxError>(())).unwrap_err();
    assert!(err.is_no_context(), "{err:?}");
    assert_eq!(set.live(), 0);
}

#[test]
fn an_explicit_set_spawns_from_a_plain_thread_once_bound_to_a_runtime() {
    logs::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = TaskSet::builder().runtime(runtime.handle().clone()).build();
    // Spawned from this plain thread; the supervisor waits on the runtime below.
    let handle = set
        .spawn_blocking(|ctx| Ok::<_, BoxError>(ctx.attempt() * 10))
        .unwrap();
    let value = runtime.block_on(async { within(handle.join()).await.unwrap() });
    assert_eq!(*value, 10);
}

#[tokio::test]
async fn a_failing_task_is_failed_logged_with_its_id_and_both_callbacks_run() {
    logs::install();
    let set = TaskSet::new();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let handle = set
        .task()
        .name("doomed")
        .on_error(move |info| tx.send(format!("error {}", info.status())).unwrap())
        .on_done(move |info| tx2.send(format!("done {:?}", info.error())).unwrap())
        .spawn_blocking(|_| Err::<(), _>("disk on fire"))
        .unwrap();
    let id = handle.id();
    let err = within(handle.join()).await.unwrap_err();
    assert!(err.is_task_failed(), "{err:?}");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "disk on fire"
    );
    assert_eq!(rx.try_recv().unwrap(), "error failed");
    assert_eq!(rx.try_recv().unwrap(), "done Some(\"disk on fire\")");
    let info = set.info(id).unwrap();
    assert_eq!(info.status(), TaskStatus::Failed);
    assert!(info.finished_at().unwrap() >= info.started_at().unwrap());
    assert!(logs::contains(&[
        "ERROR",
        &format!("task_id={id}"),
        "background task failed",
        "disk on fire"
    ]));
}

#[tokio::test]
async fn a_task_errors_cause_is_recorded_and_logged() {
    logs::install();
    let set = TaskSet::new();
    let id = set
        .spawn_blocking(|_| Err::<(), _>(support::cart_error()))
        .unwrap()
        .id();
    wait_for_status(&set, id, TaskStatus::Failed).await;
    let expected = "could not load the cart: connection refused";
    assert_eq!(set.info(id).unwrap().error(), Some(expected));
    assert!(logs::contains(&[
        "ERROR",
        &format!("task_id={id}"),
        "background task failed",
        expected
    ]));
}

#[tokio::test]
async fn a_panic_nobody_awaits_is_logged_with_the_task_id_and_recorded_as_failed() {
    logs::install();
    let set = TaskSet::new();
    let id = set
        .spawn_blocking(|_| -> Result<(), BoxError> { support::panic_quietly("unexpected null") })
        .unwrap()
        .id(); // handle dropped: nobody awaits this task
    wait_for_status(&set, id, TaskStatus::Failed).await;
    assert_eq!(
        set.info(id).unwrap().error(),
        Some("panicked: unexpected null")
    );
    assert!(logs::contains(&[
        "ERROR",
        &format!("task_id={id}"),
        "background task panicked",
        "unexpected null"
    ]));
}

#[tokio::test]
async fn a_panicking_callback_is_caught_and_logged_and_the_next_still_runs() {
    logs::install();
    let set = TaskSet::new();
    let (tx, rx) = mpsc::channel();
    let handle = set
        .task()
        .on_error(|_| support::panic_quietly("callback bug"))
        .on_done(move |info| tx.send(info.status()).unwrap())
        .spawn(|_| async { Err::<(), _>("nope") })
        .unwrap();
    let id = handle.id();
    assert!(within(handle.join()).await.unwrap_err().is_task_failed());
    assert_eq!(rx.try_recv().unwrap(), TaskStatus::Failed);
    assert!(logs::contains(&[
        &format!("task_id={id}"),
        "callback=\"on_error\"",
        "callback bug",
        "callback panicked"
    ]));
}

#[tokio::test]
async fn a_task_cancelled_before_it_starts_never_runs() {
    logs::install();
    let set = TaskSet::builder().max_threads(1).build();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // FnMut (called once per attempt), so a sender usable by reference.
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let first = set
        .spawn_blocking(move |_| {
            let _ = started_tx.send(());
            release_rx.recv_timeout(STEP)
        })
        .unwrap();
    within(started_rx.recv()).await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let ran2 = ran.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let queued = set
        .task()
        .on_done(move |info| done_tx.send(info.status()).unwrap())
        .spawn_blocking(move |_| {
            ran2.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .unwrap();
    assert_eq!(set.status(queued.id()), TaskStatus::Pending);
    assert!(set.cancel(queued.id()));
    release_tx.send(()).unwrap();
    within(first.join()).await.unwrap();
    let err = within(queued.join()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(!ran.load(Ordering::SeqCst), "a cancelled queued task ran");
    assert_eq!(done_rx.try_recv().unwrap(), TaskStatus::Cancelled);
}

#[tokio::test]
async fn cancelling_a_running_async_task_drops_it_at_its_next_await() {
    logs::install();
    let set = TaskSet::new();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let handle = set
        .spawn(move |_| {
            let tx = started_tx.take();
            async move {
                let _ = tx.unwrap().send(());
                std::future::pending::<()>().await;
                Ok::<_, BoxError>(())
            }
        })
        .unwrap();
    within(started_rx).await.unwrap();
    assert_eq!(set.status(handle.id()), TaskStatus::Running);
    handle.cancel();
    let id = handle.id();
    assert!(within(handle.join()).await.unwrap_err().is_cancelled());
    assert_eq!(set.status(id), TaskStatus::Cancelled);
    assert!(!set.cancel(id), "a finished task is not live");
}

#[tokio::test]
async fn a_task_past_its_timeout_is_timed_out_and_its_token_cancelled() {
    logs::install();
    let set = TaskSet::new();
    let (saw_tx, saw_rx) = tokio::sync::oneshot::channel();
    let mut saw_tx = Some(saw_tx);
    let handle = set
        .task()
        .timeout(Duration::from_millis(50))
        .spawn_blocking(move |ctx| {
            let outcome = until_cancelled(&ctx);
            let _ = saw_tx.take().unwrap().send(ctx.is_cancelled());
            outcome
        })
        .unwrap();
    let id = handle.id();
    let err = within(handle.join()).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(set.status(id), TaskStatus::TimedOut);
    assert!(
        within(saw_rx).await.unwrap(),
        "the closure saw its token cancelled"
    );
    assert!(logs::contains(&[&format!("task_id={id}"), "timed out"]));
}

#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_until_one_succeeds() {
    logs::install();
    let set = TaskSet::new();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let start = Instant::now();
    let handle = set
        .task()
        .retries(5, Duration::from_millis(10))
        .spawn_blocking(move |ctx| {
            counter.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt() < 3 {
                return Err(format!("flaky {}", ctx.attempt()));
            }
            Ok(ctx.attempt())
        })
        .unwrap();
    let id = handle.id();
    assert_eq!(*within(handle.join()).await.unwrap(), 3);
    // Waits of 10 ms then 20 ms: exponential, so at least 30 ms.
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let info = set.info(id).unwrap();
    assert_eq!(info.attempts(), 3);
    assert_eq!(info.status(), TaskStatus::Succeeded);
    assert!(logs::contains(&[
        &format!("task_id={id}"),
        "retrying",
        "flaky 1"
    ]));
}

#[tokio::test]
async fn retries_stop_at_the_maximum_and_the_task_fails() {
    logs::install();
    let set = TaskSet::new();
    let handle = set
        .task()
        .retries(2, Duration::from_millis(1))
        .spawn(|ctx| async move { Err::<(), _>(format!("attempt {} failed", ctx.attempt())) })
        .unwrap();
    let id = handle.id();
    let err = within(handle.join()).await.unwrap_err();
    assert!(err.is_task_failed());
    let info = set.info(id).unwrap();
    assert_eq!(info.attempts(), 3);
    assert_eq!(info.error(), Some("attempt 3 failed"));
}

#[tokio::test]
async fn a_full_task_pool_refuses_with_overloaded_while_requests_are_still_served() {
    /// An application's own error type, with the crate's error as its source.
    #[derive(Debug)]
    struct AppError(syncbridge::Error);
    impl std::fmt::Display for AppError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("could not queue the report")
        }
    }
    impl std::error::Error for AppError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    logs::install();
    let set = TaskSet::builder().max_threads(1).queue_capacity(0).build();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").tasks(set.clone()),
        |req: Request| -> Result<String, BoxError> {
            let spawned = TaskSet::current()?.spawn_blocking(|_| Ok::<_, BoxError>(()));
            match req.uri().path() {
                // Left to the bridge: `?` on the crate's overload error answers 503,
                "/propagate" => {
                    let _detached = spawned?;
                    return Ok("spawned".into());
                }
                // and so does one the application wrapped in an error of its own,
                "/wrapped" => {
                    let _detached = spawned.map_err(AppError)?;
                    return Ok("spawned".into());
                }
                // or in an `io::Error`.
                "/io" => {
                    let _detached = spawned.map_err(std::io::Error::other)?;
                    return Ok("spawned".into());
                }
                _ => {}
            }
            match spawned {
                Ok(_) => Ok("spawned".into()),
                Err(err) if err.is_overloaded() => Ok("overloaded".into()),
                Err(err) => Err(err.into()),
            }
        },
    );
    // The first request also binds the set to the server's runtime: a set runs its tasks
    // on the first runtime it is used from, and this test's runtime blocks in `stop`.
    assert_eq!(get(server.addr, "/").await.text(), "spawned");
    wait_for_idle_task_pool(&set).await;
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let blocker = set
        .spawn_blocking(move |_| {
            let _ = started_tx.send(());
            release_rx.recv_timeout(STEP)
        })
        .unwrap();
    within(started_rx.recv()).await.unwrap();
    // The only task thread is busy and there is no queue: refused, yet answered at once.
    assert_eq!(get(server.addr, "/").await.text(), "overloaded");
    let propagated = get(server.addr, "/propagate").await;
    assert_eq!(propagated.status, 503, "{}", propagated.text());
    assert_eq!(propagated.headers["retry-after"], "1");
    // Once a second at most (throttled): this request's line, or an earlier one's.
    assert!(logs::contains(&[
        "WARN",
        "overload or shutdown error; answered 503"
    ]));
    for path in ["/wrapped", "/io"] {
        let wrapped = get(server.addr, path).await;
        assert_eq!(wrapped.status, 503, "{path}: {}", wrapped.text());
    }
    assert_eq!(set.live(), 1, "the refused task left no entry behind");
    release_tx.send(()).unwrap();
    within(blocker.join()).await.unwrap();
    // A task has ended a moment before its thread is free again.
    wait_for_idle_task_pool(&set).await;
    assert_eq!(get(server.addr, "/").await.text(), "spawned");
    server.stop().await;
}

#[tokio::test]
async fn a_registry_full_of_live_tasks_refuses_with_overloaded() {
    logs::install();
    let set = TaskSet::builder().max_entries(1).build();
    let live = set
        .spawn(|ctx| async move {
            ctx.cancelled().await;
            Ok::<_, BoxError>(())
        })
        .unwrap();
    let err = set.spawn(|_| async { Ok::<_, BoxError>(()) }).unwrap_err();
    assert!(err.is_overloaded(), "{err:?}");
    live.cancel();
    let id = live.id();
    let _ = within(live.join()).await;
    // Now the one entry is finished, so it is evicted for the next task.
    let next = set.spawn(|_| async { Ok::<_, BoxError>(1) }).unwrap();
    assert_eq!(*within(next.join()).await.unwrap(), 1);
    assert_eq!(set.status(id), TaskStatus::NotFound);
}

#[tokio::test]
async fn tasks_reach_their_set_and_spawn_children_from_blocking_and_async_code() {
    logs::install();
    let set = TaskSet::new();
    let parent = set
        .spawn_blocking(|_| -> Result<TaskId, syncbridge::Error> {
            let child = TaskSet::current()?.spawn(|_| async {
                let grandchild = TaskSet::current()?.spawn_blocking(|_| Ok::<_, BoxError>(7))?;
                Ok::<_, syncbridge::Error>(grandchild.id())
            })?;
            Ok(child.id())
        })
        .unwrap();
    let child = *within(parent.join()).await.unwrap();
    wait_for_status(&set, child, TaskStatus::Succeeded).await;
    let grandchild = *set.info(child).unwrap().result::<TaskId>().unwrap();
    wait_for_status(&set, grandchild, TaskStatus::Succeeded).await;
    assert_eq!(set.info(grandchild).unwrap().result::<i32>(), Some(&7));
}

#[tokio::test]
async fn join_blocking_from_async_code_is_an_async_context_error() {
    logs::install();
    let set = TaskSet::new();
    let handle = set.spawn(|_| async { Ok::<_, BoxError>(()) }).unwrap();
    let err = handle.join_blocking().unwrap_err();
    assert!(err.is_async_context(), "{err:?}");
}

#[tokio::test]
async fn a_task_span_follows_from_the_request_span_that_spawned_it() {
    logs::install();
    let server = TestServer::start(|req: Request| -> Result<String, BoxError> {
        let span = tracing::info_span!("request", path = req.uri().path());
        let _entered = span.enter();
        let set = TaskSet::current()?;
        let named = set
            .task()
            .name("follower")
            .spawn_blocking(|_| Ok::<_, BoxError>(()))?;
        let unnamed = set.spawn_blocking(|_| Ok::<_, BoxError>(()))?;
        Ok(format!("{} {}", named.id(), unnamed.id()))
    });
    let ids = get(server.addr, "/traced").await.text();
    let (id, unnamed) = ids.split_once(' ').unwrap();
    assert!(
        logs::contains(&[
            "FOLLOWS task",
            &format!("task_id={id}"),
            "name=\"follower\"",
            "<- request path=\"/traced\""
        ]),
        "no follows-from edge from the request span to task {id}"
    );
    // The spawn itself is said in the request's span: what ties the request to its task.
    assert!(
        logs::contains(&[
            "DEBUG",
            "in {request path=\"/traced\" }",
            &format!("task_id={id}"),
            "name=\"follower\"",
            "background task spawned",
        ]),
        "the spawn of task {id} not said in its request's span"
    );
    let unnamed_line = ["FOLLOWS task", &format!("task_id={unnamed}")];
    assert!(logs::contains(&unnamed_line), "no span for task {unnamed}");
    assert!(
        !logs::contains(&[&unnamed_line[..], &["name="]].concat()),
        "the span of unnamed task {unnamed} has a name field"
    );
    server.stop().await;
}

/// An async task that calls blocking code holds a runtime thread, and every connection on
/// it, for as long: said with the task's id.
#[tokio::test]
async fn an_async_task_that_blocks_its_runtime_thread_is_said_with_its_id() {
    logs::install();
    let set = TaskSet::builder().build();
    let handle = set
        .spawn(|_ctx| async {
            std::thread::sleep(Duration::from_millis(150)); // a sync call, by mistake
            Ok::<_, BoxError>(())
        })
        .unwrap();
    let id = handle.id();
    within(handle.join()).await.expect("the task succeeded");
    assert!(logs::contains(&[
        "WARN",
        &format!("task_id={id}"),
        "an async background task held its runtime thread that long in one poll",
    ]));
}

/// A task whose work is done but whose callback still runs at the drain deadline is not
/// "cancelled": the lines say its callbacks are what is left, and that they are cut off
/// if the process exits.
#[tokio::test]
async fn a_task_held_by_its_callback_at_the_drain_deadline_is_said_to_be_so() {
    logs::install();
    let set = TaskSet::builder().build();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    let handle = set
        .task()
        .name("notify-client")
        .on_done(move |_info| {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(STEP);
            let _ = finished_tx.send(());
        })
        .spawn(|_ctx| async { Ok::<_, BoxError>(()) })
        .unwrap();
    let id = handle.id();
    support::received(started_rx, "the callback started").await;

    let abandoned = within(set.shutdown(Duration::from_millis(20))).await;
    assert_eq!(abandoned, [id]);
    assert_eq!(set.status(id), TaskStatus::Succeeded);
    let task = format!("task_id={id}");
    assert!(logs::contains(&[
        "WARN",
        &task,
        "callbacks still running or queued at the drain deadline; not cancelled",
        "status=succeeded",
        "name=\"notify-client\"",
    ]));
    assert!(logs::contains(&[
        "ERROR",
        &task,
        "callbacks did not end within the drain"
    ]));
    assert!(!logs::contains(&[&task, "cancelling it"]));
    assert!(!logs::contains(&[&task, "did not stop after cancellation"]));
    release_tx.send(()).unwrap();
    support::received(finished_rx, "the callback ran to its end").await;
}

#[tokio::test]
async fn shutdown_cancels_tasks_past_the_drain_deadline_and_reports_each_id() {
    logs::install();
    let set = TaskSet::builder().max_threads(1).build();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let running = set
        .task()
        .name("nightly-report")
        .spawn_blocking(move |ctx| {
            let _ = started_tx.take().unwrap().send(());
            until_cancelled(&ctx)
        })
        .unwrap();
    within(started_rx).await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let ran2 = ran.clone();
    let queued = set
        .spawn_blocking(move |_| {
            ran2.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .unwrap();
    let (running, queued) = (running.id(), queued.id());

    let mut abandoned = within(set.shutdown(Duration::from_millis(50))).await;
    abandoned.sort();
    let mut expected = vec![running, queued];
    expected.sort();
    assert_eq!(abandoned, expected);
    for id in [running, queued] {
        assert_eq!(set.status(id), TaskStatus::Cancelled);
        assert!(logs::contains(&[
            "WARN",
            &format!("task_id={id}"),
            "abandoned at the drain deadline"
        ]));
    }
    // The line names the task as its owner knows it, not by id alone.
    assert!(logs::contains(&[
        &format!("task_id={running}"),
        "abandoned at the drain deadline",
        "name=\"nightly-report\""
    ]));
    assert!(
        !ran.load(Ordering::SeqCst),
        "a queued task ran after cancellation"
    );
    let err = set.spawn(|_| async { Ok::<_, BoxError>(()) }).unwrap_err();
    assert!(err.is_shutdown(), "{err:?}");
}

#[tokio::test]
async fn server_shutdown_waits_for_a_running_task_before_serve_returns() {
    logs::install();
    let set = TaskSet::new();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let started_tx = Arc::new(Mutex::new(started_tx));
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .tasks(set.clone())
            .task_drain_timeout(STEP),
        move |_req: Request| -> Result<String, BoxError> {
            let rx = release_rx.lock().unwrap().take().expect("one request");
            let flag = flag.clone();
            let started = started_tx.lock().unwrap().clone();
            let handle = TaskSet::current()?
                .task()
                .on_done(move |_| flag.store(true, Ordering::SeqCst))
                .spawn_blocking(move |ctx| {
                    started.send(())?;
                    rx.recv_timeout(STEP)?;
                    // A drain that cancelled instead of waiting would show here.
                    if ctx.is_cancelled() {
                        return Err::<(), BoxError>("cancelled during the drain".into());
                    }
                    Ok(())
                })?;
            Ok(handle.id().to_string())
        },
    );
    let addr = server.addr;
    let id = TaskId::parse(&get(addr, "/").await.text()).unwrap();
    // Running, not merely accepted: a task pool thread may take a moment to start.
    within(tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .expect("the task started");
    server.handle.shutdown();
    // Once the listener is gone the connections have drained: the server is now in the
    // task drain, which must wait for this task.
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(set.status(id), TaskStatus::Running);
    release_tx.send(()).unwrap();
    let stopped = tokio::spawn(server.stop());
    within(stopped).await.unwrap();
    assert!(
        finished.load(Ordering::SeqCst),
        "serve returned before the task and its callback ended"
    );
    assert_eq!(set.status(id), TaskStatus::Succeeded);
}

#[tokio::test]
async fn server_shutdown_abandons_a_task_past_the_task_drain_timeout_and_logs_its_id() {
    logs::install();
    let set = TaskSet::new();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .tasks(set.clone())
            .task_drain_timeout(Duration::from_millis(50)),
        |_req: Request| -> Result<String, BoxError> {
            let handle = TaskSet::current()?.spawn_blocking(|ctx| until_cancelled(&ctx))?;
            Ok(handle.id().to_string())
        },
    );
    let id = TaskId::parse(&get(server.addr, "/").await.text()).unwrap();
    wait_for_status(&set, id, TaskStatus::Running).await;
    let stopped = tokio::spawn(server.stop());
    within(stopped).await.unwrap();
    assert_eq!(set.status(id), TaskStatus::Cancelled);
    assert!(logs::contains(&[
        "WARN",
        &format!("task_id={id}"),
        "abandoned at the drain deadline"
    ]));
}

#[tokio::test]
async fn tasks_get_their_own_drain_even_when_requests_are_cut_off_at_the_request_deadline() {
    logs::install();
    let set = TaskSet::new();
    let (task_tx, task_rx) = mpsc::channel::<()>();
    let (handler_tx, handler_rx) = mpsc::channel::<()>();
    let receivers = Arc::new(Mutex::new(Some((task_rx, handler_rx))));
    let (id_tx, mut id_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .tasks(set.clone())
            .shutdown_timeout(Duration::from_millis(50))
            .task_drain_timeout(STEP),
        move |_req: Request| -> Result<String, BoxError> {
            let (task_rx, handler_rx) = receivers.lock().unwrap().take().expect("one request");
            let handle = TaskSet::current()?.spawn_blocking(move |ctx| {
                task_rx.recv_timeout(STEP)?;
                if ctx.is_cancelled() {
                    return Err::<(), BoxError>("cancelled during the drain".into());
                }
                Ok(())
            })?;
            id_tx.send(handle.id()).unwrap();
            // A request still in flight at the request deadline: cut off.
            let _ = handler_rx.recv_timeout(STEP);
            Ok(String::new())
        },
    );
    let addr = server.addr;
    // A raw request whose connection will be cut off: read until the server closes it.
    let hanging = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let id = within(id_rx.recv()).await.unwrap();
    server.handle.shutdown();
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Give the request deadline time to pass: the connection is cut off, the task is not.
    within(hanging).await.unwrap();
    assert_eq!(set.status(id), TaskStatus::Running);
    task_tx.send(()).unwrap();
    let stopped = tokio::spawn(server.stop());
    within(stopped).await.unwrap();
    assert_eq!(set.status(id), TaskStatus::Succeeded, "{:?}", set.info(id));
    let _ = handler_tx.send(());
}

#[tokio::test]
async fn callbacks_run_on_threads_of_the_sets_own_within_its_limit() {
    let set = TaskSet::builder().max_threads(1).build();
    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (running, most, tx) = (running.clone(), most.clone(), tx.clone());
        let handle = set
            .task()
            .on_done(move |_| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                let thread = std::thread::current().name().map(str::to_owned);
                // A callback may do what a handler thread does: await async code.
                let awaited = syncbridge::ensure_sync(async { 7 }).map_err(|e| e.to_string());
                tx.send((thread, awaited)).unwrap();
            })
            .spawn(|_| async { Ok::<_, std::io::Error>(()) })
            .unwrap();
        handles.push(handle);
    }
    for handle in handles {
        within(handle.join()).await.unwrap();
    }
    for _ in 0..4 {
        let (thread, awaited) = rx.try_recv().expect("every callback ran");
        assert_eq!(thread.as_deref(), Some("syncbridge-callback"));
        assert_eq!(awaited, Ok(7));
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "callbacks ran beside each other"
    );
}

#[tokio::test]
async fn cancelling_a_task_that_waits_for_a_thread_ends_it_at_once() {
    let set = TaskSet::builder().max_threads(1).queue_capacity(1).build();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = set
        .spawn_blocking(move |_| {
            started_tx.send(()).unwrap();
            release_rx.recv_timeout(STEP).map_err(|e| e.to_string())
        })
        .unwrap();
    within(tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .expect("the first task holds the only thread");

    let (ran, closure) = support::flags_when_run();
    let queued = set.spawn_blocking(closure).unwrap();
    let id = queued.id();
    assert!(set.cancel(id));
    // The only thread is still taken: the task ends without it.
    let err = within(queued.join()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(set.info(id).unwrap().status(), TaskStatus::Cancelled);
    // Its place in the one-place queue is free again for the next task.
    assert_eq!(set.pool().stats().queued, 0);
    let later = set.spawn_blocking(|_| Ok::<_, std::io::Error>(())).unwrap();

    release_tx.send(()).unwrap();
    within(holder.join()).await.unwrap();
    within(later.join()).await.unwrap();
    assert!(
        !ran.load(Ordering::SeqCst),
        "a cancelled task's closure ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_joining_an_async_child_with_a_callback_does_not_deadlock_a_full_pool() {
    // The set's one thread runs the parent, which waits for the child: the child's
    // callback must not need that thread (the pattern `join_blocking`'s docs suggest).
    let set = TaskSet::builder().max_threads(1).build();
    let child_set = set.clone();
    let parent = set
        .spawn_blocking(move |_| {
            let (tx, rx) = mpsc::channel();
            let child = child_set
                .task()
                .on_done(move |_| tx.send("callback ran").unwrap())
                .spawn(|_| async { Ok::<_, std::io::Error>(21) })
                .map_err(|e| e.to_string())?;
            let value = child.join_blocking().map_err(|e| e.to_string())?;
            let said = rx.recv_timeout(STEP).map_err(|e| e.to_string())?;
            Ok::<_, String>((*value * 2, said))
        })
        .unwrap();
    let out = within(parent.join()).await.unwrap();
    assert_eq!(*out, (42, "callback ran"));
}

/// This thread's own nice value (Linux keeps one per thread).
#[cfg(target_os = "linux")]
fn own_nice() -> i32 {
    // SAFETY: integer arguments; `who = 0` with PRIO_PROCESS names the calling thread.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_run_at_a_lower_priority_than_handlers() {
    // CPU-bound background work must yield the CPU to requests, not take a share per
    // thread: sixteen busy task threads against four handler threads would otherwise
    // take four fifths of a core.
    // SAFETY: integer arguments; the main thread's value (tid = pid) is the process's.
    let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, std::process::id()) };
    if base + 10 >= 19 {
        eprintln!("skipped: the test process runs at nice {base}");
        return;
    }
    let server = TestServer::start(|_: Request| -> syncbridge::Result<String> {
        let in_task = TaskSet::current()?
            .spawn_blocking(|_| Ok::<_, BoxError>(own_nice()))?
            .join_blocking()?;
        Ok(format!("{} {in_task}", own_nice()))
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        format!("{} {}", base + 10, (base + 19).min(19))
    );
    server.stop().await;

    // A set built with `nice(10)` shares the CPU with handlers thread for thread.
    let shared = TaskSet::builder().nice(10).build();
    let in_task = within(
        shared
            .spawn_blocking(|_| Ok::<_, BoxError>(own_nice()))
            .unwrap()
            .join(),
    )
    .await
    .unwrap();
    assert_eq!(*in_task, base + 10);
}
