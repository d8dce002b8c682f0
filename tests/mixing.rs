//! ensure_sync / ensure_async and the thread-sensitive handlers, over real HTTP where a
//! server is involved. Wrong-place calls run on threads of their own with a deadline, so
//! a hang fails the test instead of stalling the suite.
mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use support::{get, within, TestServer, STEP};
use syncbridge::{
    ensure_async, ensure_async_on, ensure_sync, ensure_sync_with_handle, sync_fn, BlockingPool,
    PerThread, Request, Server, SingleThread, TaskSet,
};

/// Runs `f` on a thread of its own and fails the test if it does not return within
/// [`STEP`]: a deadlock shows up as a failure, not a stuck suite.
fn on_thread_within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(STEP).expect("call hung or panicked")
}

// ---------- ensure_sync ----------

#[tokio::test]
async fn ensure_sync_in_handler_returns_the_future_output() {
    let server = start(|_req: Request| {
        ensure_sync(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            "from the runtime"
        })
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "from the runtime");
    server.stop().await;
}

#[tokio::test]
async fn a_streamed_response_producer_reaches_the_runtime_and_the_task_set_as_its_handler_does() {
    // The producer runs on the handler's thread after the handler returned: it must keep
    // the handler's context, or `ensure_sync` fails there with "runs on a handler thread".
    let server = start(|_req: Request| {
        let lines = (0..2).map(|i| {
            let awaited = ensure_sync(async move {
                tokio::task::yield_now().await;
                i
            })
            .map_err(std::io::Error::other)?;
            let tasks = syncbridge::TaskSet::current().is_ok();
            Ok(bytes::Bytes::from(format!("{awaited} {tasks}\n")))
        });
        syncbridge::ResponseBody::from_chunks(lines)
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "0 true\n1 true\n");
    server.stop().await;
}

#[tokio::test]
async fn sync_fn_turns_an_async_fn_into_a_blocking_one() {
    async fn double(n: u64) -> u64 {
        tokio::task::yield_now().await;
        n * 2
    }
    let double = sync_fn(double);
    let server = start(move |_req: Request| double(21).map(|n| n.to_string()));
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.text(), "42");
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_future_in_ensure_sync_is_an_error_and_the_runtime_serves_on() {
    let server = start(|req: Request| {
        if req.uri().path() == "/ok" {
            return format!("{:?}", ensure_sync(async { 6 * 7 }));
        }
        match ensure_sync(async { support::panic_quietly("async side exploded") }) {
            Err(err) if err.is_panic() => format!("caught: {err}"),
            other => format!("unexpected: {other:?}"),
        }
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.text(), "caught: panicked: async side exploded");
    // The panic took neither the runtime nor the handler thread with it.
    assert_eq!(get(server.addr, "/ok").await.text(), "Ok(42)");
    server.stop().await;
}

#[test]
fn ensure_sync_inside_current_thread_runtime_is_async_context() {
    let err = on_thread_within(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ensure_sync(async { 1 }) })
    })
    .unwrap_err();
    assert!(err.is_async_context(), "{err:?}");
}

#[test]
fn ensure_sync_inside_multi_thread_task_is_async_context() {
    let err = on_thread_within(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        rt.block_on(async move {
            tokio::spawn(async move { ensure_sync_with_handle(&handle, async { 1 }) })
                .await
                .unwrap()
        })
    })
    .unwrap_err();
    assert!(err.is_async_context(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_sync_in_spawn_blocking_is_async_context() {
    // tokio marks its blocking threads as inside the runtime; documented alternative:
    // ensure_async, whose threads are handler threads.
    let err = within(tokio::task::spawn_blocking(|| ensure_sync(async { 1 })))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_async_context(), "{err:?}");
}

#[test]
fn ensure_sync_on_plain_thread_is_no_context() {
    let err = on_thread_within(|| ensure_sync(async { 1 })).unwrap_err();
    assert!(err.is_no_context(), "{err:?}");
}

// ---------- ensure_async ----------

#[tokio::test]
async fn ensure_async_runs_on_a_pool_thread_not_the_runtime() {
    let test_thread = std::thread::current().id();
    let (thread, name) = within(ensure_async(|| {
        let t = std::thread::current();
        (t.id(), t.name().map(str::to_owned))
    }))
    .await
    .unwrap();
    assert_ne!(thread, test_thread);
    assert_eq!(name.as_deref(), Some("syncbridge-async"));
}

#[tokio::test]
async fn ensure_async_panic_is_a_panic_error() {
    let err = within(ensure_async(|| -> u32 {
        support::panic_quietly("legacy code blew up")
    }))
    .await
    .unwrap_err();
    assert!(err.is_panic());
    assert!(err.to_string().contains("legacy code blew up"), "{err}");
}

#[tokio::test]
async fn ensure_async_on_full_pool_is_overloaded_at_once() {
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(0)
        .build();
    let (first, release_tx) = support::occupy_one_thread(&pool).await;
    let err = within(ensure_async_on(&pool, || ())).await.unwrap_err();
    assert!(err.is_overloaded(), "{err:?}");
    release_tx.send(()).unwrap();
    within(first).await.unwrap().unwrap();
}

#[tokio::test]
async fn ensure_async_queue_timeout_is_a_timeout_and_the_closure_never_runs() {
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(4)
        .queue_timeout(Duration::from_millis(50))
        .build();
    let (first, release_tx) = support::occupy_one_thread(&pool).await;
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let err = within(ensure_async_on(&pool, move || {
        flag.store(true, Ordering::SeqCst)
    }))
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    release_tx.send(()).unwrap();
    within(first).await.unwrap().unwrap();
    // One thread, FIFO: once this runs, the abandoned closure has had its turn.
    within(ensure_async_on(&pool, || ())).await.unwrap();
    assert!(!ran.load(Ordering::SeqCst), "an abandoned closure ran");
}

#[tokio::test]
async fn ensure_async_work_given_up_in_the_queue_gives_its_place_back() {
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(1)
        .queue_timeout(Duration::from_millis(50))
        .build();
    let (first, release_tx) = support::occupy_one_thread(&pool).await;

    // Timed out in the queue: its place is free at once, not when a thread reaches it.
    let err = within(ensure_async_on(&pool, || 0)).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(pool.stats().queued, 0);

    // Dropped while queued (its caller went away): the same.
    let mut dropped = Box::pin(ensure_async_on(&pool, || 0));
    assert!(futures_util::poll!(&mut dropped).is_pending());
    assert_eq!(pool.stats().queued, 1);
    drop(dropped);
    assert_eq!(pool.stats().queued, 0);

    // So the one place takes the next caller instead of refusing it as overloaded.
    let mut next = Box::pin(ensure_async_on(&pool, || 7));
    assert!(futures_util::poll!(&mut next).is_pending());
    assert_eq!(pool.stats().queued, 1);
    drop(next);
    release_tx.send(()).unwrap();
    within(first).await.unwrap().unwrap();
}

#[tokio::test]
async fn ensure_async_carries_the_callers_span() {
    init_spans();
    let span = tracing::info_span!("caller_span", request_id = 7);
    let seen = {
        let _entered = span.enter();
        ensure_async(|| tracing::Span::current().metadata().map(|m| m.name()))
    };
    // Awaited outside the span: the closure still runs inside it.
    assert_eq!(within(seen).await.unwrap(), Some("caller_span"));
}

#[tokio::test]
async fn ensure_sync_nested_in_ensure_async_on_current_thread_runtime() {
    // The test's own current-thread runtime is the only one: the inner future can only
    // progress because this thread keeps driving it while it awaits the outer one.
    let out = within(ensure_async(|| {
        ensure_sync(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            5
        })
    }))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out, 5);
}

/// Starts a test server after [`init_spans`], so that this binary's subscriber is the one
/// installed whichever test runs first.
fn start<H: syncbridge::Handler>(handler: H) -> TestServer {
    init_spans();
    TestServer::start(handler)
}

fn start_with<H: syncbridge::Handler>(server: Server, handler: H) -> TestServer {
    init_spans();
    TestServer::start_with(server, handler)
}

/// Spans are only real with a subscriber that enables them: this binary's subscriber
/// enables this crate's spans (the shared helper only enables syncbridge's logs). Every
/// test that starts a server goes through [`start`], which calls this first.
fn init_spans() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "syncbridge=warn,mixing=info",
        ))
        .with_test_writer()
        .try_init();
    assert!(
        tracing::info_span!("probe").metadata().is_some(),
        "another subscriber was installed first"
    );
}

#[tokio::test]
async fn a_handlers_ensure_sync_future_and_the_ensure_async_closures_in_it_find_its_task_set() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    // Post 004's `asyncio.create_task` from async code, ported: a task that outlives the
    // view, spawned from the future a handler runs, with the crate's drain and logs.
    let server = start(|_req: Request| -> syncbridge::Result<String> {
        ensure_sync(async {
            let from_future = TaskSet::current()?
                .spawn(|_| async { Ok::<_, BoxError>(2u8) })?
                .join()
                .await?;
            let from_closure = ensure_async(|| {
                TaskSet::current()?
                    .spawn_blocking(|_| Ok::<_, BoxError>(3u8))?
                    .join_blocking()
            })
            .await??;
            Ok(format!("{from_future} {from_closure}"))
        })?
    });
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "2 3");
    server.stop().await;
}

// ---------- PerThread ----------

#[tokio::test]
async fn per_thread_builds_one_instance_per_pool_thread() {
    let builds = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(2));
    let factory_builds = builds.clone();
    let handler = PerThread::new(move || {
        factory_builds.fetch_add(1, Ordering::SeqCst);
        let barrier = barrier.clone();
        // `Rc<Cell<_>>`: neither Send nor Sync, fine in a per-thread instance.
        let served = Rc::new(Cell::new(0u32));
        move |req: Request| {
            if req.uri().path() == "/together" {
                barrier.wait();
            }
            served.set(served.get() + 1);
            served.get().to_string()
        }
    });
    let server = start_with(
        Server::bind("127.0.0.1:0")
            .max_threads(2)
            .thread_keep_alive(Duration::from_secs(30)),
        handler,
    );
    // Two requests that meet at a barrier must run on two threads at once.
    let a = tokio::spawn(get(server.addr, "/together"));
    let b = tokio::spawn(get(server.addr, "/together"));
    assert_eq!(within(a).await.unwrap().text(), "1");
    assert_eq!(within(b).await.unwrap().text(), "1");
    assert_eq!(builds.load(Ordering::SeqCst), 2);
    let mut total = 0;
    for _ in 0..6 {
        total += get(server.addr, "/").await.text().parse::<u32>().unwrap();
    }
    // Still two instances, and each later request counted on one of them.
    assert_eq!(builds.load(Ordering::SeqCst), 2);
    assert!(
        total > 6,
        "instances were rebuilt: counts summed to {total}"
    );
    server.stop().await;
}

/// A legacy client whose `Drop` panics. It says when it is dropped, then panics.
struct PanicsOnDrop(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
        support::panic_quietly("legacy client panicked in its Drop");
    }
}

#[tokio::test]
async fn a_per_thread_instance_that_panics_when_dropped_does_not_abort_the_process() {
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel();
    let handler = PerThread::new(move || {
        let client = PanicsOnDrop(dropped_tx.clone());
        move |_: Request| {
            let _ = &client;
            "ok"
        }
    });
    let server = start_with(
        Server::bind("127.0.0.1:0")
            .max_threads(1)
            .thread_keep_alive(Duration::from_millis(20)),
        handler,
    );
    assert_eq!(get(server.addr, "/").await.status, 200);
    // The pool thread's keep-alive runs out and it exits, dropping its instance. Before,
    // the panic escaped the thread-local's destructor and Rust aborted the process (this
    // test binary with it).
    within(dropped.recv()).await.unwrap();
    assert_eq!(get(server.addr, "/").await.status, 200);
    server.stop().await;
}

// ---------- SingleThread ----------

#[tokio::test]
async fn single_thread_runs_every_request_on_one_thread_in_order() {
    let handler = SingleThread::spawn(|| {
        let counter = Rc::new(Cell::new(0u32));
        move |_req: Request| {
            counter.set(counter.get() + 1);
            let t = std::thread::current();
            format!("{} {:?}", counter.get(), t.id())
        }
    })
    .unwrap();
    let server = start(handler);
    let mut threads = std::collections::HashSet::new();
    for expected in 1..=3 {
        let text = get(server.addr, "/").await.text();
        let (n, thread) = text.split_once(' ').unwrap();
        assert_eq!(n, expected.to_string());
        threads.insert(thread.to_owned());
    }
    let concurrent: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get(server.addr, "/")))
        .collect();
    let mut counts = Vec::new();
    for c in concurrent {
        let text = within(c).await.unwrap().text();
        let (n, thread) = text.split_once(' ').unwrap();
        counts.push(n.parse::<u32>().unwrap());
        threads.insert(thread.to_owned());
    }
    counts.sort();
    assert_eq!(counts, vec![4, 5, 6, 7]);
    assert_eq!(threads.len(), 1, "ran on {threads:?}");
    server.stop().await;
}

/// A single-thread handler whose `/block` request reports that it started and then
/// waits for a release; every other path answers at once.
fn blocking_single_thread(
    builder: syncbridge::SingleThreadBuilder,
) -> (SingleThread, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let handler = builder
        .spawn(move || {
            move |req: Request| {
                if req.uri().path() == "/block" {
                    started_tx.send(()).unwrap();
                    release_rx.recv_timeout(STEP).unwrap();
                }
                "done"
            }
        })
        .unwrap();
    (handler, started_rx, release_tx)
}

#[tokio::test]
async fn single_thread_full_queue_answers_503_with_retry_after() {
    let (handler, started, release) =
        blocking_single_thread(SingleThread::builder().queue_capacity(0));
    let server = start(handler);
    let blocked = tokio::spawn(get(server.addr, "/block"));
    within(tokio::task::spawn_blocking(move || {
        started.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .unwrap();
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    release.send(()).unwrap();
    assert_eq!(within(blocked).await.unwrap().text(), "done");
    // The thread is free again.
    assert_eq!(get(server.addr, "/").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn single_thread_queue_timeout_answers_503() {
    let (handler, started, release) = blocking_single_thread(
        SingleThread::builder()
            .queue_capacity(4)
            .queue_timeout(Duration::from_millis(50)),
    );
    let server = start(handler);
    let blocked = tokio::spawn(get(server.addr, "/block"));
    within(tokio::task::spawn_blocking(move || {
        started.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .unwrap();
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 503);
    release.send(()).unwrap();
    assert_eq!(within(blocked).await.unwrap().status, 200);
    server.stop().await;
}

#[tokio::test]
async fn single_thread_panic_answers_500_and_keeps_the_thread() {
    let handler = SingleThread::spawn(|| {
        let counter = Rc::new(Cell::new(0u32));
        move |req: Request| {
            counter.set(counter.get() + 1);
            if req.uri().path() == "/panic" {
                support::panic_quietly("single-thread handler panicked on purpose");
            }
            counter.get().to_string()
        }
    })
    .unwrap();
    let server = start(handler);
    assert_eq!(get(server.addr, "/").await.text(), "1");
    assert_eq!(get(server.addr, "/panic").await.status, 500);
    // Same instance, same thread: the count goes on.
    assert_eq!(get(server.addr, "/").await.text(), "3");
    server.stop().await;
}

/// What a handler panics with (`panic_any`) and whose `Drop` panics in turn.
struct PayloadPanicsOnDrop;

impl Drop for PayloadPanicsOnDrop {
    fn drop(&mut self) {
        support::panic_quietly("the panic payload's drop panicked on purpose");
    }
}

#[tokio::test]
async fn single_thread_keeps_its_thread_past_a_panic_payload_whose_drop_panics() {
    let handler = SingleThread::spawn(|| {
        let counter = Rc::new(Cell::new(0u32));
        move |req: Request| {
            counter.set(counter.get() + 1);
            if req.uri().path() == "/panic" {
                std::panic::resume_unwind(Box::new(PayloadPanicsOnDrop));
            }
            counter.get().to_string()
        }
    })
    .unwrap();
    let server = start(handler);
    assert_eq!(get(server.addr, "/panic").await.status, 500);
    assert_eq!(get(server.addr, "/").await.text(), "2");
    server.stop().await;
}

#[tokio::test]
async fn single_thread_handler_can_use_ensure_sync() {
    let handler = SingleThread::spawn(|| {
        |_req: Request| {
            ensure_sync(async {
                tokio::task::yield_now().await;
                "awaited"
            })
        }
    })
    .unwrap();
    let server = start(handler);
    assert_eq!(get(server.addr, "/").await.text(), "awaited");
    server.stop().await;
}

#[tokio::test]
async fn a_single_thread_handler_that_calls_itself_is_served_at_once_on_its_thread() {
    // Queued, the inner call would wait for the thread its caller holds: a 503 after the
    // queue timeout. asgiref runs such a call in place; so does this.
    let me: Arc<std::sync::OnceLock<SingleThread>> = Arc::default();
    let factory_me = me.clone();
    let handler = SingleThread::builder()
        .queue_timeout(Duration::from_secs(3))
        .spawn(move || {
            let depth = Rc::new(Cell::new(0u32)); // not Send: this thread's own
            move |req: Request| {
                depth.set(depth.get() + 1);
                let answer = if req.uri().path() == "/outer" {
                    let inner = http::Request::get("/inner").body(syncbridge::Body::empty());
                    let me = factory_me.get().expect("set before serving");
                    let response = syncbridge::Handler::call(me, inner.unwrap());
                    format!("outer got {} from inner", response.status())
                } else {
                    format!("depth {}", depth.get())
                };
                depth.set(depth.get() - 1);
                answer
            }
        })
        .unwrap();
    me.set(handler.clone()).unwrap();
    let server = start(handler);
    let started = std::time::Instant::now();
    let reply = get(server.addr, "/outer").await;
    assert_eq!(reply.text(), "outer got 200 OK from inner");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_single_thread_handler_called_from_async_code_answers_500_at_once() {
    // Waiting for its thread here would block a runtime worker: refused, not served.
    let handler = SingleThread::spawn(|| |_req: Request| "served").unwrap();
    let request = http::Request::new(syncbridge::Body::empty());
    let response = syncbridge::Handler::call(&handler, request);
    assert_eq!(response.status(), 500);
}

#[test]
fn single_thread_factory_panic_is_an_error() {
    let err = on_thread_within(|| {
        SingleThread::spawn(|| -> fn(Request) -> &'static str {
            support::panic_quietly("no connection")
        })
        .map(|_| ())
    })
    .unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert!(err.to_string().contains("no connection"));
}

#[test]
fn single_thread_thread_exits_when_the_handler_is_dropped() {
    let (dropped_tx, dropped_rx) = mpsc::channel::<()>();
    struct Notify(Mutex<mpsc::Sender<()>>);
    impl Drop for Notify {
        fn drop(&mut self) {
            let _ = self.0.lock().unwrap().send(());
        }
    }
    let handler = SingleThread::spawn(move || {
        let notify = Notify(Mutex::new(dropped_tx));
        move |_req: Request| {
            let _ = &notify;
            "x"
        }
    })
    .unwrap();
    drop(handler);
    dropped_rx
        .recv_timeout(STEP)
        .expect("the instance was dropped with the handler");
}

#[tokio::test]
async fn ensure_sync_with_timeout_built_inside_async_block() {
    // `tokio::time::timeout` needs a runtime when built; inside `async move` it is built
    // on the runtime. The timeout fires, proving the bound works from a handler.
    let server = start(|_req: Request| {
        let outcome = ensure_sync(async move {
            tokio::time::timeout(Duration::from_millis(20), std::future::pending::<()>()).await
        });
        match outcome {
            Ok(Err(_elapsed)) => "timed out as asked",
            _ => "unexpected",
        }
    });
    assert_eq!(get(server.addr, "/").await.text(), "timed out as asked");
    server.stop().await;
}

#[tokio::test]
async fn sync_fn_builds_eager_tokio_futures_on_the_runtime() {
    // A plain (non-async) fn that builds `sleep` at once: called on the handler thread
    // it would panic; `sync_fn` calls it on the runtime.
    fn eager_sleep(ms: u64) -> tokio::time::Sleep {
        tokio::time::sleep(Duration::from_millis(ms))
    }
    let sleep = sync_fn(eager_sleep);
    let server = start(move |_req: Request| sleep(5).map(|()| "slept"));
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "slept");
    server.stop().await;
}

#[tokio::test]
async fn handler_awaiting_ensure_async_on_its_own_full_pool_gets_an_error_not_a_deadlock() {
    // asgiref's classic deadlock: sync code waits for async code that waits for a thread
    // the sync code itself holds. Here the one thread is the handler's, the queue is
    // empty by construction, so the inner call is refused and the handler answers.
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(0)
        .build();
    let inner_pool = pool.clone();
    let server = start_with(
        Server::bind("127.0.0.1:0").pool(pool),
        move |_req: Request| match ensure_sync(ensure_async_on(&inner_pool, || "ran")) {
            Ok(Ok(text)) => text.to_owned(),
            Ok(Err(err)) if err.is_overloaded() => "refused: overloaded".to_owned(),
            other => format!("unexpected: {other:?}"),
        },
    );
    assert_eq!(get(server.addr, "/").await.text(), "refused: overloaded");
    server.stop().await;
}

#[test]
fn ensure_async_queued_in_a_runtime_without_timers_is_a_clear_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(4)
        .build();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder_pool = pool.clone();
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(ensure_async_on(&holder_pool, move || {
            started_tx.send(()).unwrap();
            release_rx.recv_timeout(STEP).unwrap();
        }))
    });
    started_rx
        .recv_timeout(STEP)
        .expect("the pool's one thread is taken");

    // Ready at once (no timer here to wrap it in): refused before it would wait.
    let err = runtime
        .block_on(ensure_async_on(&pool, || "never"))
        .unwrap_err();
    assert!(err.is_no_context(), "{err:?}");
    assert!(err.to_string().contains("no timer"), "{err}");

    release_tx.send(()).unwrap();
    holder.join().unwrap().unwrap();
}
