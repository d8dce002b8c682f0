//! `ensure_sync`: from a blocking thread, run a future on the server's persistent runtime
//! and wait for its output.
//!
//! The future is spawned onto the runtime and the calling thread parks until the task
//! ends. The runtime's own threads drive it, so this works for a current-thread host
//! runtime too (its thread is busy awaiting the request that runs this handler, which
//! drives spawned tasks as well). `Handle::block_on` would not: from another thread it
//! cannot drive a current-thread runtime's IO and timers.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::Thread;

use tokio::runtime::Handle;
use tokio::task::JoinError;

use crate::context;
use crate::error::{panic_message, Error, Kind, Result};
use crate::long_poll::{PollTimed, Runs};

/// Runs `future` to completion on the server's persistent runtime and returns its output,
/// blocking the calling thread until then.
///
/// This is how a legacy handler fans out concurrent async calls and waits for the
/// longest instead of the sum, without a runtime of its own per request (the Flask
/// `asyncio.run` trap) and without tokio's "Cannot start a runtime from within a runtime"
/// panic.
///
/// # Where it may be called from
///
/// - **A handler thread** (inside a [`Handler`](crate::Handler) served by
///   [`Server`](crate::Server) or [`SyncService`](crate::SyncService), inside a
///   [`PerThread`](crate::PerThread) or [`SingleThread`](crate::SingleThread) handler, or
///   inside an [`ensure_async`](crate::ensure_async) closure): the future runs on the
///   runtime that serves the request, whatever its flavour.
/// - **A plain thread** with no syncbridge context: returns an error for which
///   [`Error::is_no_context`] is true. Use [`ensure_sync_with_handle`] and name the
///   runtime.
/// - **Async code** (a tokio task, `block_on`, or tokio's `spawn_blocking` threads, which
///   tokio marks as inside the runtime): returns an error for which
///   [`Error::is_async_context`] is true, at once, without blocking, panicking or
///   spawning anything. There, `.await` the future; in `spawn_blocking` use
///   `Handle::block_on`, or run the blocking code with
///   [`ensure_async`](crate::ensure_async) instead, whose threads count as handler threads.
///   The same goes inside `tokio::task::block_in_place` and on any thread under a
///   `Handle::enter()` guard: tokio reports a runtime there and cannot tell whether
///   blocking is allowed, so the crate refuses; `Handle::block_on` works in both.
///
/// The future must be `Send + 'static` because it runs on the runtime's threads, not on
/// the caller's. It runs in the caller's [`tracing::Span`]: on a handler thread, the
/// request's span, if the host made one (see [`SyncService`](crate::SyncService)).
///
/// # Build the future inside `async move`
///
/// The future is *built* on the calling thread, which has no tokio runtime entered, and
/// some tokio futures need one the moment they are built: `tokio::time::sleep(d)` and
/// `tokio::time::timeout(d, f)` panic there with "there is no reactor running". Wrap such
/// calls in a block, which builds them only when it first runs, on the runtime:
/// `ensure_sync(async move { tokio::time::timeout(d, call()).await })`. `async fn`
/// calls are always fine: their body does not run until polled. [`sync_fn`] builds the
/// future on the runtime for you.
///
/// # Bounds
///
/// The call waits as long as the future runs: bound it inside, for instance with
/// `tokio::time::timeout`. It ends early with [`Error::is_shutdown`] if the runtime shuts
/// down under it.
///
/// The future runs on the runtime's threads, so blocking code in it (`std::thread::sleep`,
/// a sync client) holds one of them, and every connection it drives, for as long. A poll
/// that takes 100 ms or more is logged at `warn` in the caller's span (`a future run by
/// ensure_sync held its runtime thread that long in one poll`, with `took_ms`). Blocking
/// code belongs in the handler itself, or in [`ensure_async`](crate::ensure_async).
///
/// # Errors
///
/// - [`Error::is_async_context`], [`Error::is_no_context`]: called from the wrong place.
/// - [`Error::is_panic`]: the future panicked (the panic is logged and its message is in
///   the error's `Display`).
/// - [`Error::is_shutdown`]: the runtime shut down before the future finished.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use syncbridge::{ensure_sync, Request, Server};
///
/// fn handler(_req: Request) -> syncbridge::Result<String> {
///     let call = |name: &'static str| async move {
///         tokio::time::sleep(Duration::from_millis(100)).await; // an async HTTP call
///         name
///     };
///     // Three calls at once: about 100 ms, not 300.
///     let (a, b, c) = ensure_sync(async move { tokio::join!(call("a"), call("b"), call("c")) })?;
///     Ok(format!("{a}{b}{c}"))
/// }
///
/// fn main() -> syncbridge::Result<()> {
///     Server::bind("127.0.0.1:8000").serve(handler)
/// }
/// ```
pub fn ensure_sync<F>(future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    refuse_async_context("ensure_sync")?;
    let ctx = context::current().ok_or_else(|| {
        Error::new(Kind::NoContext).with_message(
            "ensure_sync runs on a handler thread; on other threads use ensure_sync_with_handle",
        )
    })?;
    // The handler's task set goes with its future, for `TaskSet::current` there.
    match &ctx.tasks {
        Some(set) => spawn_and_wait(
            &ctx.runtime,
            crate::tasks::with_current(set.clone(), future),
        ),
        None => spawn_and_wait(&ctx.runtime, future),
    }
}

/// Like [`ensure_sync`], on the runtime `handle` names rather than the current handler's.
///
/// # Where it may be called from
///
/// Any thread that is not running async code: a handler thread, a thread you spawned, the
/// main thread while the runtime runs elsewhere. From async code it returns
/// [`Error::is_async_context`] at once, as [`ensure_sync`] does, and so it does inside
/// `tokio::task::block_in_place` and under a `Handle::enter()` guard, where tokio reports
/// a runtime (drop the guard first, or use `Handle::block_on` there).
///
/// The runtime must be driven while the call waits: a multi-thread runtime always is; a
/// current-thread runtime only while its thread is inside `block_on`. Waiting on a
/// current-thread runtime whose thread is itself blocked waits until that thread moves,
/// and for ever if that thread is the caller's own (outside its `block_on`), or if the
/// runtime is kept but never driven again: only its shutdown ends the wait then
/// ([`Error::is_shutdown`]). The same holds for [`ensure_sync`] from an
/// [`ensure_async`](crate::ensure_async) closure whose caller, on such a runtime, gave up
/// on it and left `block_on`.
///
/// # Errors
///
/// As [`ensure_sync`], less [`Error::is_no_context`].
///
/// # Examples
///
/// ```
/// let runtime = tokio::runtime::Runtime::new().unwrap();
/// let handle = runtime.handle().clone();
/// let answer = std::thread::spawn(move || {
///     syncbridge::ensure_sync_with_handle(&handle, async { 6 * 7 })
/// })
/// .join()
/// .unwrap()
/// .unwrap();
/// assert_eq!(answer, 42);
/// ```
pub fn ensure_sync_with_handle<F>(handle: &Handle, future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    refuse_async_context("ensure_sync_with_handle")?;
    spawn_and_wait(handle, future)
}

/// Turns an async function into a blocking one that calls [`ensure_sync`]: Flask's
/// `ensure_sync` / asgiref's `async_to_sync` as a value.
///
/// The returned function takes one argument (use a tuple for several) and returns
/// `Result<output>`. It calls `f` on the runtime, so `f` may build tokio futures eagerly
/// (see [`ensure_sync`] on why that matters).
///
/// # Where it may be called from
///
/// The returned function may be called wherever [`ensure_sync`] may, with the same
/// errors from the wrong place. Building it is allowed anywhere.
///
/// # Examples
///
/// ```no_run
/// use syncbridge::{sync_fn, Request};
///
/// async fn fetch_user(id: u64) -> String {
///     format!("user {id}") // an async database call
/// }
///
/// let fetch_user_blocking = sync_fn(fetch_user);
/// // A clone is cheap (it shares `f`), so several handlers can use one.
/// let profile = {
///     let fetch_user_blocking = fetch_user_blocking.clone();
///     move |_req: Request| fetch_user_blocking(7)
/// };
/// let settings = move |_req: Request| fetch_user_blocking(8);
/// # let _ = (profile, settings);
/// ```
pub fn sync_fn<F, A, Fut>(f: F) -> impl Fn(A) -> Result<Fut::Output> + Clone + Send + Sync + 'static
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let f = Arc::new(f);
    move |args| {
        let f = f.clone();
        // `f` is called inside the block, on the runtime, not on this thread.
        ensure_sync(async move { f(args).await })
    }
}

/// Refuses to block a thread that runs async code: parking it would stall the runtime, and
/// on a current-thread runtime deadlock it, since the future could only run there.
pub(crate) fn refuse_async_context(what: &str) -> Result<()> {
    if Handle::try_current().is_ok() {
        return Err(Error::new(Kind::AsyncContext).with_message(format!(
            "{what} blocks its thread and was called inside a tokio runtime; `.await` the future there instead \
             (inside `block_in_place` or under `Handle::enter`, use `Handle::block_on`)"
        )));
    }
    Ok(())
}

fn spawn_and_wait<F>(handle: &Handle, future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // A task of its own, not `Handle::block_on`: see the module docs. It runs in the
    // caller's span (on a handler thread, the request's), as `ensure_async`'s closure does.
    let task = handle.spawn(tracing::Instrument::instrument(
        PollTimed::new(future, Runs::EnsureSync),
        tracing::Span::current(),
    ));
    park_on(task).map_err(|err| join_error(err, "ensure_sync"))
}

pub(crate) fn join_error(err: JoinError, what: &str) -> Error {
    if err.is_panic() {
        let message = panic_message(err.into_panic());
        tracing::error!(panic = %message, "future run by {what} panicked");
        Error::new(Kind::Panicked).with_message(message)
    } else {
        tracing::debug!("future run by {what} was cancelled: the runtime shut down");
        Error::new(Kind::Shutdown).with_message(format!(
            "the runtime shut down before the future run by {what} finished"
        ))
    }
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` on this thread, parking between wake-ups. Only for futures that are
/// driven elsewhere (a `JoinHandle`): it runs no IO or timers itself.
pub(super) fn park_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            // A spurious unpark only costs one more poll.
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_thread_without_context_is_no_context() {
        let err = ensure_sync(async { 1 }).unwrap_err();
        assert!(err.is_no_context(), "{err:?}");
    }

    #[test]
    fn with_handle_from_plain_thread_runs_on_that_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let out = ensure_sync_with_handle(runtime.handle(), async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            7
        })
        .unwrap();
        assert_eq!(out, 7);
    }

    #[test]
    fn panic_in_future_is_a_panic_error() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let err = ensure_sync_with_handle(runtime.handle(), async { panic!("boom") }).unwrap_err();
        assert!(err.is_panic(), "{err:?}");
        assert!(err.to_string().contains("boom"));
    }

    #[test]
    fn runtime_shut_down_is_a_shutdown_error() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        runtime.shutdown_background();
        let err = ensure_sync_with_handle(&handle, std::future::pending::<()>()).unwrap_err();
        assert!(err.is_shutdown(), "{err:?}");
    }

    #[test]
    fn inside_a_runtime_is_async_context() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = runtime
            .block_on(async { ensure_sync_with_handle(&Handle::current(), async { 1 }) })
            .unwrap_err();
        assert!(err.is_async_context(), "{err:?}");
    }
}
