//! Background tasks at the edges of their runtime's life and of the set's pools: a
//! runtime that shuts down under a task, or has no timers, a callback that joins
//! another task, a closure still running when the drain ends. Each must end in a
//! recorded status and a log line naming the task, never a hang or a silent loss.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{logs, STEP};
use syncbridge::{TaskSet, TaskStatus};

/// Polls until the set's task pool has neither queued nor running jobs (a short poll with
/// a deadline, not a sleep).
fn wait_for_empty_pool(set: &TaskSet) {
    let deadline = Instant::now() + STEP;
    loop {
        let stats = set.pool().stats();
        if stats.queued == 0 && stats.busy == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task pool stayed busy: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_task_spawned_on_a_runtime_that_has_shut_down_is_failed_logged_and_never_run() {
    logs::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = TaskSet::builder().runtime(runtime.handle().clone()).build();
    drop(runtime);

    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let handle = set
        .spawn_blocking(move |_| {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let id = handle.id();

    let err = handle.join_blocking().unwrap_err();
    assert!(err.is_shutdown(), "{err}");
    assert_eq!(set.status(id), TaskStatus::Failed);
    assert_eq!(set.live(), 0, "a lost task stayed live");
    assert!(logs::contains(&[
        "ERROR",
        &id.to_string(),
        "background task lost"
    ]));
    // Its first attempt was already queued on the pool: it must not run unsupervised.
    wait_for_empty_pool(&set);
    assert!(!ran.load(Ordering::SeqCst), "the lost task's closure ran");
}

#[test]
fn an_async_task_whose_runtime_shuts_down_under_it_is_failed_and_logged() {
    logs::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = TaskSet::builder().runtime(runtime.handle().clone()).build();
    let handle = set
        .spawn(|_| async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let id = handle.id();
    // A current-thread runtime runs its tasks only inside `block_on`: run until the
    // task has started.
    runtime.block_on(async {
        support::within(async {
            while set.status(id) != TaskStatus::Running {
                tokio::task::yield_now().await;
            }
        })
        .await
    });

    drop(runtime);
    assert_eq!(set.status(id), TaskStatus::Failed);
    assert_eq!(set.live(), 0, "a lost task stayed live");
    assert!(logs::contains(&[
        "ERROR",
        &id.to_string(),
        "background task lost"
    ]));
    assert!(handle.join_blocking().unwrap_err().is_shutdown());
}
