//! Background tasks at the edges of their runtime's life and of the set's pools: a
//! runtime that shuts down under a task, or has no timers, a callback that joins
//! another task, a closure still running when the drain ends. Each must end in a
//! recorded status and a log line naming the task, never a hang or a silent loss.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use support::{logs, STEP};
use syncbridge::{TaskId, TaskSet, TaskStatus};

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

/// A current-thread runtime with timers; it runs its tasks only inside `block_on`.
fn runtime_with_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a user sees of a task lost with its runtime: failed, not live, logged by id.
fn assert_lost(set: &TaskSet, id: TaskId) {
    assert_eq!(set.status(id), TaskStatus::Failed);
    assert_eq!(set.live(), 0, "a lost task stayed live");
    assert!(logs::contains(&[
        "ERROR",
        &id.to_string(),
        "background task lost"
    ]));
}

#[test]
fn a_task_spawned_on_a_runtime_that_has_shut_down_is_failed_logged_and_never_run() {
    logs::install();
    let runtime = runtime_with_timers();
    let set = TaskSet::builder().runtime(runtime.handle().clone()).build();
    drop(runtime);

    let (ran, closure) = support::flags_when_run();
    let handle = set.spawn_blocking(closure).unwrap();
    let id = handle.id();

    let err = handle.join_blocking().unwrap_err();
    assert!(err.is_shutdown(), "{err}");
    assert_lost(&set, id);
    // Its first attempt was already queued on the pool: it must not run unsupervised.
    wait_for_empty_pool(&set);
    assert!(!ran.load(Ordering::SeqCst), "the lost task's closure ran");
}

#[test]
fn an_async_task_whose_runtime_shuts_down_under_it_is_failed_and_logged() {
    logs::install();
    let runtime = runtime_with_timers();
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
    assert_lost(&set, id);
    assert!(handle.join_blocking().unwrap_err().is_shutdown());
}

/// A current-thread runtime built without timers (no `enable_time`).
fn runtime_without_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn a_runtime_without_timers_refuses_timed_tasks_and_still_drains() {
    logs::install();
    let runtime = runtime_without_timers();
    let set = TaskSet::builder().runtime(runtime.handle().clone()).build();

    let timed = set
        .task()
        .timeout(STEP)
        .spawn_blocking(|_| Ok::<_, std::io::Error>(()))
        .unwrap_err();
    assert!(timed.is_no_context(), "{timed}");
    assert!(timed.to_string().contains("enable_time"), "{timed}");
    let retried = set
        .task()
        .retries(2, Duration::from_millis(1))
        .spawn(|_| async { Ok::<_, std::io::Error>(()) })
        .unwrap_err();
    assert!(retried.is_no_context(), "{retried}");
    assert_eq!(set.live(), 0);

    // A task without either runs; the drain's deadline still ends the wait for one
    // that does not finish by itself.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let stuck = set
        .spawn_blocking(move |ctx| {
            started_tx.send(()).unwrap();
            let deadline = Instant::now() + STEP;
            while !ctx.is_cancelled() && Instant::now() < deadline {
                std::thread::park_timeout(Duration::from_millis(2));
            }
            Err::<(), _>(std::io::Error::other("stopped: cancelled"))
        })
        .unwrap();
    let id = stuck.id();
    started_rx.recv_timeout(STEP).unwrap();
    let began = Instant::now();
    let abandoned = runtime.block_on(set.shutdown(Duration::from_millis(50)));
    assert_eq!(abandoned, vec![id]);
    assert!(began.elapsed() < STEP, "the drain outlived its deadline");
    assert_eq!(set.status(id), TaskStatus::Cancelled);
}

/// Awaits `fut` in a runtime without timers, failing the test if it takes longer than
/// [`STEP`] (a plain thread keeps the time).
async fn within_untimed<F: std::future::Future>(fut: F) -> F::Output {
    let (expired_tx, expired) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(STEP);
        let _ = expired_tx.send(());
    });
    tokio::select! {
        out = fut => out,
        _ = expired => panic!("test step timed out after {STEP:?}"),
    }
}

/// Yields to the runtime until `done` holds (bounded by [`STEP`]).
async fn until_untimed(mut done: impl FnMut() -> bool) {
    within_untimed(async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[test]
fn callbacks_that_find_the_callback_pool_full_wait_and_run_in_order_without_timers() {
    logs::install();
    let runtime = runtime_without_timers();
    // One callback thread and one place: the first callback holds the thread, and the
    // next three must wait for room.
    let set = TaskSet::builder()
        .runtime(runtime.handle().clone())
        .max_threads(1)
        .queue_capacity(1)
        .build();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();

    let first = {
        let order = order.clone();
        set.task()
            .on_done(move |_| {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(STEP);
                order.lock().unwrap().push(0);
            })
            .spawn(|_| async { Ok::<_, std::io::Error>(()) })
            .unwrap()
    };
    runtime.block_on(async {
        until_untimed(|| started_rx.try_recv().is_ok()).await;
        let rest: Vec<_> = (1..4)
            .map(|i| {
                let order = order.clone();
                set.task()
                    .on_done(move |_| order.lock().unwrap().push(i))
                    .spawn(|_| async { Ok::<_, std::io::Error>(()) })
                    .unwrap()
            })
            .collect();
        // A task's status is final in the same poll in which its supervisor starts to
        // wait for room for its callbacks.
        let ids: Vec<_> = rest.iter().map(|h| h.id()).collect();
        until_untimed(|| {
            ids.iter()
                .all(|id| set.status(*id) == TaskStatus::Succeeded)
        })
        .await;

        release_tx.send(()).unwrap();
        within_untimed(first.join()).await.unwrap();
        for handle in rest {
            within_untimed(handle.join()).await.unwrap();
        }
    });
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_joining_a_task_with_callbacks_is_refused_rather_than_deadlocked() {
    logs::install();
    // One callback thread: a callback that waited for another task's callbacks would
    // hold the only thread they can run on.
    let set = TaskSet::builder().max_threads(1).build();
    let (said_tx, said_rx) = mpsc::channel();
    let inner = set.clone();
    // One that has ended, callbacks and all, is no hazard: it is joined.
    let ended = set
        .task()
        .on_done(|_| {})
        .spawn(|_| async { Ok::<_, std::io::Error>(3) })
        .unwrap();
    let ended_id = ended.id();
    support::within(async {
        while set.live() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let parent = set
        .task()
        .on_done(move |_| {
            let with_callback = inner
                .task()
                .on_done(|_| {})
                .spawn(|_| async { Ok::<_, std::io::Error>(1) })
                .unwrap();
            let without = inner
                .spawn(|_| async { Ok::<_, std::io::Error>(2) })
                .unwrap();
            let refused = with_callback.join_blocking().map(|v| *v);
            let joined = without.join_blocking().map(|v| *v);
            let ended = ended.join_blocking().map(|v| *v);
            said_tx.send((refused, joined, ended)).unwrap();
        })
        .spawn(|_| async { Ok::<_, std::io::Error>(()) })
        .unwrap();
    support::within(parent.join()).await.unwrap();

    let (refused, joined, ended) = said_rx.recv_timeout(STEP).expect("the callback hung");
    let err = refused.unwrap_err();
    assert!(err.is_would_deadlock(), "{err}");
    assert_eq!(joined.unwrap(), 2);
    assert_eq!(ended.unwrap(), 3, "task {ended_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_closure_still_running_when_the_drain_ends_is_named() {
    logs::install();
    let set = TaskSet::new();
    // A pool thread already started, so that the timeout below need not cover a thread
    // start on a loaded machine.
    let warm = set.spawn_blocking(|_| Ok::<_, std::io::Error>(())).unwrap();
    support::within(warm.join()).await.unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // Ignores its token: it keeps its thread past the timeout until released. The timeout
    // leaves the pool thread ample time to take the closure up first: 2 s, which a
    // loaded machine's queue does not use up (at 500 ms the task could time out queued,
    // its closure never run).
    let task = set
        .task()
        .timeout(Duration::from_secs(2))
        .spawn_blocking(move |_| {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(STEP);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let id = task.id();
    started_rx.recv_timeout(STEP).unwrap();
    assert!(support::within(task.join()).await.unwrap_err().is_timeout());
    assert_eq!(set.live(), 0);

    let abandoned = support::within(set.shutdown(Duration::from_millis(50))).await;
    assert!(abandoned.is_empty(), "{abandoned:?}");
    assert!(logs::contains(&[
        "WARN",
        &id.to_string(),
        "still running after its task ended"
    ]));
    release_tx.send(()).unwrap();
}

#[tokio::test]
async fn a_full_registry_forgets_the_oldest_finished_task_first() {
    // Two entries: the third task's entry takes the place of the first, finished one.
    let set = TaskSet::builder().max_entries(2).build();
    let mut ids = Vec::new();
    for i in 0..3 {
        let handle = set
            .spawn(move |_| async move { Ok::<_, std::io::Error>(i) })
            .unwrap();
        ids.push(handle.id());
        assert_eq!(*support::within(handle.join()).await.unwrap(), i);
    }
    assert_eq!(set.status(ids[0]), TaskStatus::NotFound);
    assert_eq!(set.status(ids[1]), TaskStatus::Succeeded);
    assert_eq!(set.status(ids[2]), TaskStatus::Succeeded);
    assert_eq!(
        *set.info(ids[2]).unwrap().result::<i32>().unwrap(),
        2,
        "the newest entry keeps its value"
    );
}

/// What a join gave: the value, or whether it was `is_would_deadlock` and its message.
type Joined = Result<i32, (bool, String)>;

/// A blocking task that spawns a blocking task of its own set and joins it: the inner
/// id, and what the join gave.
fn spawn_and_join_inner(before_join: impl FnOnce()) -> Result<(TaskId, Joined), syncbridge::Error> {
    let inner = TaskSet::current()?.spawn_blocking(|_| Ok::<_, std::io::Error>(5))?;
    let id = inner.id();
    before_join();
    let joined = inner
        .join_blocking()
        .map(|v| *v)
        .map_err(|e| (e.is_would_deadlock(), e.to_string()));
    Ok((id, joined))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_task_joining_one_it_spawned_on_a_pool_of_one_is_refused_not_stuck() {
    // Before: the only task thread waited in the join for a task queued behind it, until
    // the drain cancelled it (or for ever without one).
    logs::install();
    let set = TaskSet::builder().max_threads(1).build();
    let outer = set.spawn_blocking(|_| spawn_and_join_inner(|| {})).unwrap();
    let (inner, joined) = (*support::within(outer.join()).await.unwrap()).clone();
    let (deadlock, message) = joined.unwrap_err();
    assert!(deadlock, "{message}");
    assert!(message.contains(&inner.to_string()), "{message}");
    // Its thread free again, the inner task runs.
    let deadline = Instant::now() + STEP;
    while set.status(inner) != TaskStatus::Succeeded {
        assert!(
            Instant::now() < deadline,
            "inner task stayed {}",
            set.status(inner)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_task_threads_joining_queued_tasks_only_the_last_to_join_is_refused() {
    logs::install();
    let set = TaskSet::builder().max_threads(2).build();
    // Both outer tasks hold a thread before either spawns its inner task, so both inner
    // tasks queue. (Without the first barrier, the first outer task could spawn its inner
    // one before the second was submitted, and a second thread run it: both joins then
    // ended well, on a loaded machine in CI.)
    let both_started = Arc::new(std::sync::Barrier::new(2));
    let both_running = Arc::new(std::sync::Barrier::new(2));
    let outers: Vec<_> = (0..2)
        .map(|_| {
            let both_started = both_started.clone();
            let both_running = both_running.clone();
            set.spawn_blocking(move |_| {
                both_started.wait();
                spawn_and_join_inner(|| {
                    both_running.wait();
                })
            })
            .unwrap()
        })
        .collect();
    let mut refused = 0;
    for outer in outers {
        let (_, joined) = (*support::within(outer.join()).await.unwrap()).clone();
        match joined {
            Ok(value) => assert_eq!(value, 5),
            Err((deadlock, message)) => {
                assert!(deadlock, "{message}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1, "one join must give way, and only one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_not_refused_while_another_thread_joins_a_task_that_has_ended() {
    // Before: only the last join's own target was looked at. With both task threads in
    // a join, one on a task that had ended (its callback still running), the other was
    // refused, though the first thread was about to come free and run its task.
    logs::install();
    let set = TaskSet::builder().max_threads(2).build();
    let (release, gate) = mpsc::channel::<()>();
    let ended = set
        .task()
        .on_done(move |_| {
            let _ = gate.recv_timeout(STEP);
        })
        .spawn_blocking(|_| Ok::<_, std::io::Error>(3))
        .unwrap();
    let ended_id = ended.id();
    let deadline = Instant::now() + STEP;
    while !set.status(ended_id).is_finished() {
        assert!(Instant::now() < deadline, "task {ended_id} never ended");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (first_tx, first_rx) = mpsc::channel();
    let ended = Mutex::new(Some(ended));
    let first = set
        .spawn_blocking(move |_| {
            first_tx.send(()).unwrap();
            let ended = ended.lock().unwrap().take().expect("one attempt");
            ended.join_blocking().map(|v| *v)
        })
        .unwrap();
    first_rx
        .recv_timeout(STEP)
        .expect("the first join never started");
    let (second_tx, second_rx) = mpsc::channel();
    let second = set
        .spawn_blocking(move |_| spawn_and_join_inner(|| second_tx.send(()).unwrap()))
        .unwrap();
    second_rx
        .recv_timeout(STEP)
        .expect("the second join never started");
    release.send(()).unwrap();
    assert_eq!(*support::within(first.join()).await.unwrap(), 3);
    let (_, joined) = (*support::within(second.join()).await.unwrap()).clone();
    assert_eq!(
        joined,
        Ok(5),
        "a join refused though the pool would free a thread"
    );
}

#[test]
fn a_task_the_drain_left_running_is_one_error_not_two_when_its_runtime_ends() {
    // The drain names a task that ignored its cancellation at `error`; its supervisor,
    // dropped with the runtime afterwards, must not add a second error that reads like a
    // panic of the crate's.
    logs::install();
    let runtime = runtime_with_timers();
    let set = TaskSet::builder().runtime(runtime.handle().clone()).build();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let handle = set
        .spawn_blocking(move |_ctx| {
            started_tx.send(()).unwrap();
            // Ignores its token, as legacy code does.
            let _ = release_rx.recv_timeout(STEP);
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    let id = handle.id().to_string();
    started_rx.recv_timeout(STEP).unwrap();
    runtime.block_on(set.shutdown(Duration::from_millis(20)));
    drop(runtime);
    release_tx.send(()).unwrap();

    assert!(logs::contains(&["ERROR", &id, "left running"]));
    assert!(logs::contains(&[
        "WARN",
        &id,
        "lost with its runtime after the drain left it running"
    ]));
    assert!(
        !logs::contains(&["ERROR", &id, "background task lost"]),
        "a second error for task {id}"
    );
}

/// A task's value that says when it is dropped: when the set forgets its entry.
struct Tell(Option<mpsc::Sender<Instant>>);

impl Drop for Tell {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Instant::now());
        }
    }
}

/// Spawns a task whose value is a [`Tell`] and joins it, dropping the copy the join
/// gives: the set's entry then holds the only one, and the receiver says when it goes.
/// Needs no timers.
async fn finished_telling(set: &TaskSet) -> mpsc::Receiver<Instant> {
    let (tx, dropped) = mpsc::channel();
    let tx = Mutex::new(Some(tx));
    let handle = set
        .spawn(move |_| {
            let tx = tx.lock().unwrap().take();
            async move { Ok::<_, std::io::Error>(Tell(tx)) }
        })
        .unwrap();
    drop(handle.join().await.expect("the task succeeded"));
    dropped
}

/// When the set dropped the value `dropped` tells of; fails the test if it still holds it
/// a step after its TTL.
fn dropped_within_a_step(dropped: mpsc::Receiver<Instant>) -> Instant {
    dropped
        .recv_timeout(STEP)
        .expect("the value was still held a step after its TTL")
}

#[tokio::test]
async fn a_finished_task_s_value_is_dropped_at_its_ttl_while_nobody_uses_the_set() {
    let ttl = Duration::from_millis(300);
    let set = TaskSet::builder().ttl(ttl).build();
    let spawned = Instant::now();
    let dropped = finished_telling(&set).await;
    // From here on nothing spawns or looks anything up: only the sweeper can drop it.
    let dropped_at = dropped_within_a_step(dropped);
    let after = dropped_at.duration_since(spawned);
    assert!(
        after >= ttl,
        "dropped {after:?} after the spawn, before its TTL"
    );

    // The next task to finish has its set held again: the sweeper let go of it with
    // nothing left to sweep.
    let dropped = finished_telling(&set).await;
    dropped_within_a_step(dropped);
}

#[tokio::test]
async fn a_set_due_sooner_than_the_sweeper_sleeps_for_is_swept_on_time() {
    // The sweep thread, shared by every set, asleep for an hour's TTL...
    let patient = TaskSet::builder().ttl(Duration::from_secs(3600)).build();
    let _not_yet = finished_telling(&patient).await;
    // ...is woken for a set due in 300 ms.
    let hasty = TaskSet::builder().ttl(Duration::from_millis(300)).build();
    let dropped = finished_telling(&hasty).await;
    dropped_within_a_step(dropped);
}

#[tokio::test]
async fn a_dropped_set_s_values_go_with_it_not_at_their_ttl() {
    let set = TaskSet::builder().ttl(Duration::from_secs(3600)).build();
    let dropped = finished_telling(&set).await;
    // The sweeper holds the set weakly: dropping it drops its entries, now.
    drop(set);
    dropped_within_a_step(dropped);
}

#[test]
fn a_value_is_dropped_at_its_ttl_though_its_runtime_has_no_timers_and_is_not_driven() {
    logs::install();
    // The task runs inside `block_on`; after it, nobody drives the runtime, which is
    // kept. The sweep needs neither timers nor the runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let set = TaskSet::builder()
        .runtime(runtime.handle().clone())
        .ttl(Duration::from_millis(300))
        .build();
    let dropped = runtime.block_on(finished_telling(&set));
    dropped_within_a_step(dropped);
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_of_a_burst_is_dropped_though_tasks_finish_while_the_sweeper_lets_go() {
    // A TTL of a millisecond: the sweeper often finds nothing left and lets go of the set
    // just as another task finishes, the race its second look is for.
    let set = TaskSet::builder()
        .ttl(Duration::from_millis(1))
        .max_entries(100_000)
        .build();
    let (tx, dropped) = mpsc::channel();
    let mut handles = Vec::new();
    for _ in 0..2000 {
        let tx = Mutex::new(Some(tx.clone()));
        let handle = set
            .spawn(move |_| {
                let tx = tx.lock().unwrap().take();
                async move { Ok::<_, std::io::Error>(Tell(tx)) }
            })
            .unwrap();
        handles.push(handle);
        if handles.len() == 100 {
            for handle in handles.drain(..) {
                drop(handle.join().await.expect("the task succeeded"));
            }
        }
    }
    drop(tx);
    for n in 0..2000 {
        if dropped.recv_timeout(STEP).is_err() {
            panic!("{n} of 2000 values dropped; the rest still held a step after their TTL");
        }
    }
}

/// A task value whose `Drop` panics: a bug of the user's, which must not take the sweep
/// thread (shared by every set) down with it.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        support::panic_quietly("a task value's Drop panicked");
    }
}

/// Spawns a task whose value is a [`PanicsOnDrop`] and joins it, dropping the join's
/// copy: the set's entry holds the last.
async fn finished_panicking(set: &TaskSet) {
    let handle = set
        .spawn(|_| async { Ok::<_, std::io::Error>(PanicsOnDrop) })
        .unwrap();
    drop(handle.join().await.expect("the task succeeded"));
}

/// Waits (a short poll with a deadline) until `n` panicking drops have been logged.
async fn panics_logged(n: usize) {
    let panicked = [
        "ERROR",
        "a task's result panicked",
        "a task value's Drop panicked",
    ];
    let deadline = Instant::now() + STEP;
    while logs::count(&panicked) < n {
        assert!(Instant::now() < deadline, "{n} panicking drops not logged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_value_that_panics_when_dropped_is_logged_and_the_sweep_goes_on() {
    logs::install();
    // Two, dropped together with their set: a second panic while the first unwinds
    // would abort the process, were they dropped as one.
    let set = TaskSet::builder().ttl(Duration::from_secs(3600)).build();
    finished_panicking(&set).await;
    finished_panicking(&set).await;
    drop(set);
    panics_logged(2).await;

    // One more at its TTL, by the sweep thread, which goes on: the next value is
    // dropped at its TTL too.
    let set = TaskSet::builder().ttl(Duration::from_millis(100)).build();
    finished_panicking(&set).await;
    panics_logged(3).await;
    let dropped = finished_telling(&set).await;
    dropped_within_a_step(dropped);
}
