//! An embedded `SyncService` and the runtimes that call it: one without timers, none at
//! all, and one service called from several runtimes in turn, as a start-up check on a
//! runtime of its own or one `#[tokio::test]` after another do.
mod support;

use std::future::IntoFuture;
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use http_body_util::Empty;
use support::{get, within};
use tower::{Service, ServiceExt};

/// A `SyncService` on a one-thread pool (queue of 4) whose `/block` holds the thread
/// until released.
struct OneThread<H> {
    service: syncbridge::SyncService<H>,
    pool: syncbridge::BlockingPool,
    started_rx: std::sync::mpsc::Receiver<()>,
    release_tx: std::sync::mpsc::Sender<()>,
}

fn one_thread_service() -> OneThread<impl syncbridge::Handler> {
    support::logs::install();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let pool = syncbridge::BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(4)
        .build();
    let service = syncbridge::SyncService::builder(move |req: syncbridge::Request| {
        if req.uri().path() == "/block" {
            started_tx.send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv_timeout(support::STEP);
        }
        "done"
    })
    .pool(pool.clone())
    .build();
    OneThread {
        service,
        pool,
        started_rx,
        release_tx,
    }
}

fn request(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path).body(Empty::new()).unwrap()
}

/// `one_thread_service`, with its one thread taken by `/block` (called inside `runtime`).
fn occupied(
    runtime: &tokio::runtime::Runtime,
) -> (
    OneThread<impl syncbridge::Handler>,
    syncbridge::SyncServiceFuture<Empty<Bytes>>,
) {
    let mut one = one_thread_service();
    let busy = {
        let _inside = runtime.enter();
        tower::Service::call(&mut one.service, request("/block"))
    };
    one.started_rx
        .recv_timeout(support::STEP)
        .expect("the handler started");
    (one, busy)
}

/// Releases `/block` and checks that it and the request queued behind it both get `200`,
/// awaited on `runtime` (on a thread of its own, so a hang fails at the step timeout).
fn both_answer_200(
    one: OneThread<impl syncbridge::Handler>,
    runtime: tokio::runtime::Runtime,
    busy: syncbridge::SyncServiceFuture<Empty<Bytes>>,
    queued: syncbridge::SyncServiceFuture<Empty<Bytes>>,
) {
    one.release_tx.send(()).unwrap();
    let (done_tx, done_rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let statuses = runtime
            .block_on(async { (busy.await.unwrap().status(), queued.await.unwrap().status()) });
        done_tx.send(statuses)
    });
    let statuses = done_rx
        .recv_timeout(support::STEP)
        .expect("both requests ended");
    assert_eq!(statuses, (http::StatusCode::OK, http::StatusCode::OK));
}

#[test]
fn a_request_queued_outside_any_runtime_gets_503_and_later_ones_still_wait() {
    // `call` outside a runtime has no timer to bound the wait with: refused. That must
    // not be taken as "this service's runtime has no timers" for the calls that follow.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut one, busy) = occupied(&runtime);
    // Called here, outside the runtime; only the answer is awaited inside it.
    let outside = one.service.call(request("/outside"));
    let refused = runtime.block_on(outside);
    assert_eq!(refused.unwrap().status(), 503);

    let queued = {
        let _inside = runtime.enter();
        one.service.call(request("/queued"))
    };
    assert_eq!(one.pool.stats().queued, 1, "queued, not refused");
    both_answer_200(one, runtime, busy, queued);
}

/// A host runtime built without timers: the queue wait cannot be bounded there, so a
/// request that finds every handler thread busy gets `503` at once instead of a panic
/// inside tokio.
#[test]
fn in_a_runtime_without_timers_a_request_that_would_queue_gets_503() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let (mut one, busy) = occupied(&runtime);
    let guard = runtime.enter();
    // Ready at once (no timer here to wrap it in): the answer is decided in `call`.
    let refused = runtime
        .block_on(one.service.call(request("/queued")))
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(one.pool.stats().queued, 0);
    drop(guard);

    one.release_tx.send(()).unwrap();
    let (done_tx, done_rx) = std_mpsc::channel();
    std::thread::spawn(move || done_tx.send(runtime.block_on(busy).unwrap().status()));
    let status = done_rx
        .recv_timeout(support::STEP)
        .expect("the first request ended");
    assert_eq!(status, 200);
}

/// `service` served by axum on a runtime of its own (returned, to drive the client).
fn served_by_axum<H: syncbridge::Handler>(
    service: syncbridge::SyncService<H>,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = main.block_on(async {
        let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await
            .unwrap();
        let router = axum::Router::new().fallback_service(service);
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router).into_future());
        addr
    });
    (main, addr)
}

/// A handler that reaches the runtime of its call through `ensure_sync` on `/sync`.
fn reaches_its_runtime(req: syncbridge::Request) -> syncbridge::Result<String> {
    if req.uri().path() == "/sync" {
        let n = syncbridge::ensure_sync(async {
            tokio::task::yield_now().await;
            7
        })?;
        return Ok(format!("ensure_sync gave {n}"));
    }
    Ok("plain".to_owned())
}

/// A service first called on a runtime that is then left idle (a start-up check run with
/// `block_on`), later served by another: the later handlers reach the runtime that
/// called them, not the first one, where `ensure_sync` would wait for ever, and still do
/// once the first one is gone.
#[test]
fn a_service_called_from_a_second_runtime_reaches_that_one() {
    support::logs::install();
    let service = syncbridge::SyncService::new(reaches_its_runtime);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let checked = first.block_on(service.clone().oneshot(request("/plain")));
    assert_eq!(checked.unwrap().status(), 200);

    let (main, addr) = served_by_axum(service.clone());
    let reply = main.block_on(get(addr, "/sync"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ensure_sync gave 7");

    drop(first);
    let reply = main.block_on(get(addr, "/sync"));
    assert_eq!(
        reply.status,
        200,
        "not the 503 of a runtime gone: {}",
        reply.text()
    );
    assert_eq!(service.pool().stats().busy, 0);
}

/// Whether a runtime has timers is known per runtime: a request that would queue on a
/// runtime without them gets `503`, even after one queued on a runtime with them (where
/// a service-wide answer made tokio panic on the second).
#[test]
fn a_runtime_without_timers_after_one_with_them_gets_503_not_a_panic() {
    let with = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut one, busy) = occupied(&with);
    let queued = {
        let _inside = with.enter();
        one.service.call(request("/queued"))
    };
    assert_eq!(one.pool.stats().queued, 1);

    let without = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let refused = {
        let _inside = without.enter();
        without.block_on(one.service.call(request("/other")))
    };
    assert_eq!(refused.unwrap().status(), 503);

    both_answer_200(one, with, busy, queued);
}

/// Spawns a blocking task and an async one on the service's set and joins both.
fn spawns_and_joins(_req: syncbridge::Request) -> syncbridge::Result<String> {
    let tasks = syncbridge::TaskSet::current()?;
    let blocking = tasks.spawn_blocking(|_ctx| Ok::<_, std::io::Error>("blocking"))?;
    let timed = tasks.spawn(|_ctx| async {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        Ok::<_, std::io::Error>("async")
    })?;
    Ok(format!(
        "{} {}",
        blocking.join_blocking()?,
        timed.join_blocking()?
    ))
}

/// A set used first from a runtime that is then left idle, then from another: the later
/// tasks run on the runtime of the request that spawns them. Kept on the first, they
/// never started (nobody drives it) and the handler's join waited for ever; once that
/// runtime was dropped, they were lost at once.
#[test]
fn a_task_set_runs_each_task_on_the_runtime_of_its_request() {
    support::logs::install();
    let tasks = syncbridge::TaskSet::builder().build();
    let service = syncbridge::SyncService::builder(spawns_and_joins)
        .tasks(tasks)
        .build();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let checked = first.block_on(async { within(service.clone().oneshot(request("/"))).await });
    assert_eq!(checked.unwrap().status(), 200);

    let (main, addr) = served_by_axum(service.clone());
    let reply = main.block_on(get(addr, "/"));
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "blocking async".to_owned())
    );

    drop(first);
    let reply = main.block_on(get(addr, "/"));
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "blocking async".to_owned())
    );
}
