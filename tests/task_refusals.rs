//! Background tasks when something refuses them: a full task pool (at the spawn, or at a
//! retry), a full set of live tasks, a queued task's timeout. A refusal costs nobody else
//! anything, and the task keeps what it needs to run later.
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use support::{within, STEP};
use syncbridge::{TaskHandle, TaskSet, TaskStatus};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Takes the set's only task thread until the returned sender fires (or is dropped).
async fn occupy(set: &TaskSet) -> (TaskHandle<()>, mpsc::Sender<()>) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let mut started_tx = Some(started_tx);
    let handle = set
        .spawn_blocking(move |_| {
            if let Some(started) = started_tx.take() {
                let _ = started.send(());
            }
            let _ = release_rx.recv_timeout(STEP);
            Ok::<_, BoxError>(())
        })
        .expect("the pool has room");
    within(started_rx).await.unwrap();
    (handle, release_tx)
}

/// Waits, polling, until `done` (for what only a status read shows).
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_finds_the_pool_full_still_has_its_closure_for_the_next_one() {
    support::logs::install();
    let set = TaskSet::builder().max_threads(1).queue_capacity(0).build();
    let calls = Arc::new(AtomicU32::new(0));
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let counted = calls.clone();
    // The first retry waits 1.5 s (the second twice that): the thread must be taken
    // before then (below), which on a loaded machine may take a good part of a second.
    let task = set
        .task()
        .retries(3, Duration::from_millis(1500))
        .spawn_blocking(move |ctx| {
            counted.fetch_add(1, Ordering::SeqCst);
            if ctx.attempt() == 1 {
                let _ = failed_tx.send(());
                return Err::<&str, BoxError>("transient".into());
            }
            Ok("done")
        })
        .unwrap();
    let id = task.id();
    within(failed_rx.recv()).await.unwrap();
    // The first attempt's thread is free again; take it before the second attempt, a
    // backoff from now.
    assert_eq!(within(set.pool().wait_idle(STEP)).await.busy, 0);
    let (holder, release) = occupy(&set).await;
    assert_eq!(
        set.info(id).unwrap().attempts(),
        1,
        "the thread was taken only after the second attempt had started"
    );
    let refused = format!("task_id={id}");
    assert!(
        support::logs::eventually_contains(&[
            "background task attempt failed; retrying",
            &refused,
            "attempt=2",
            "queue are full",
        ])
        .await
    );
    release.send(()).unwrap();
    within(holder.join()).await.unwrap();

    // Before: every later attempt failed with "the task's closure was lost".
    assert_eq!(*within(task.join()).await.unwrap(), "done");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "attempts 1 and 3 ran");
    assert_eq!(set.info(id).unwrap().attempts(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_the_pool_refuses_evicts_no_finished_result() {
    let set = TaskSet::builder()
        .max_threads(1)
        .queue_capacity(0)
        .max_entries(2)
        .build();
    let first = set.spawn_blocking(|_| Ok::<_, BoxError>(1u32)).unwrap();
    let first_id = first.id();
    within(first.join()).await.unwrap();
    // Its thread counts as busy until just after the join hears of it.
    assert_eq!(within(set.pool().wait_idle(STEP)).await.busy, 0);
    let (holder, release) = occupy(&set).await;
    // The registry is full (one finished, one live): recording a third would evict the
    // finished one. Refused by the pool, it must not.
    let err = set
        .spawn_blocking(|_| Ok::<_, BoxError>(()))
        .expect_err("the pool is full");
    assert!(err.is_overloaded(), "{err}");
    assert_eq!(set.status(first_id), TaskStatus::Succeeded);
    release.send(()).unwrap();
    within(holder.join()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_closure_that_owns_a_runtime_is_not_dropped_in_async_code() {
    let set = TaskSet::builder().max_threads(1).queue_capacity(0).build();
    let (holder, release) = occupy(&set).await;
    // tokio panics when a runtime is dropped where blocking is not allowed, as here, in
    // an async test: neither the closure nor the callback may be dropped here.
    let callback_client = client();
    let err = set
        .task()
        .on_done(move |_| {
            let _client = &callback_client;
        })
        .spawn_blocking(owning(client(), |_| Ok::<_, BoxError>(())))
        .expect_err("the pool is full");
    assert!(err.is_overloaded(), "{err}");
    release.send(()).unwrap();
    within(holder.join()).await.unwrap();

    // Refused before the pool is asked: the set's live tasks are at their bound.
    let set = TaskSet::builder().max_entries(1).build();
    let (holder, release) = occupy(&set).await;
    let callback_client = client();
    let err = set
        .task()
        .on_error(move |_| {
            let _client = &callback_client;
        })
        .spawn(|_| async { Ok::<_, BoxError>(()) })
        .expect_err("one task is live, the bound");
    assert!(err.is_overloaded(), "{err}");
    let err = set
        .spawn_blocking(owning(client(), |_| Ok::<_, BoxError>(())))
        .expect_err("one task is live, the bound");
    assert!(err.is_overloaded(), "{err}");
    release.send(()).unwrap();
    within(holder.join()).await.unwrap();
}

/// What a blocking HTTP client owns.
fn client() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// `f`, owning `client` (as a task or callback that keeps its client would).
fn owning<A, R>(
    client: tokio::runtime::Runtime,
    mut f: impl FnMut(A) -> R + Send + 'static,
) -> impl FnMut(A) -> R + Send + 'static {
    move |arg| {
        let _client = &client;
        f(arg)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_that_times_out_gives_its_queue_place_back() {
    let set = TaskSet::builder().max_threads(1).queue_capacity(1).build();
    let (holder, release) = occupy(&set).await;
    let ran = Arc::new(AtomicU32::new(0));
    let counted = ran.clone();
    let queued = set
        .task()
        .timeout(Duration::from_millis(50))
        .spawn_blocking(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .unwrap();
    let err = within(queued.join()).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Before: the dead job kept the only queue place until the thread freed, and every
    // spawn meanwhile was refused.
    assert_eq!(set.pool().stats().queued, 0);
    let next = set.spawn_blocking(|_| Ok::<_, BoxError>(7u8));
    release.send(()).unwrap();
    within(holder.join()).await.unwrap();
    assert_eq!(
        *within(next.expect("the queue has room").join())
            .await
            .unwrap(),
        7
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a timed-out task never runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_waiting_to_run_their_callbacks_count_against_max_entries() {
    // One callback thread and one place: the first task's callback holds it, the
    // others' wait for room, their entries final (and evictable) meanwhile.
    let set = TaskSet::builder()
        .max_threads(1)
        .queue_capacity(1)
        .max_entries(4)
        .build();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let release_rx = release_rx.clone();
        let task = set
            .task()
            .on_done(move |_| {
                let _ = release_rx.lock().unwrap().recv_timeout(STEP);
            })
            .spawn(|_| async { Ok::<_, BoxError>(()) })
            .unwrap();
        tasks.push(task);
    }
    eventually("all four tasks ended", || {
        tasks.iter().all(|t| set.status(t.id()).is_finished())
    })
    .await;
    assert_eq!(set.live(), 4);
    // Before: accepted (the registry evicts a final entry), so such tasks grew without
    // bound while callbacks were slow.
    let err = set
        .spawn(|_| async { Ok::<_, BoxError>(()) })
        .expect_err("four tasks are live");
    assert!(err.is_overloaded(), "{err}");
    assert!(err.to_string().contains("callbacks"), "{err}");

    for _ in 0..4 {
        release_tx.send(()).unwrap();
    }
    for task in tasks {
        within(task.join()).await.unwrap();
    }
    assert_eq!(set.live(), 0);
    let after = set.spawn(|_| async { Ok::<_, BoxError>(()) }).unwrap();
    within(after.join()).await.unwrap();
}
