//! `ensure_async`: from async code, run a blocking closure on a bounded [`BlockingPool`]
//! and await its result.
//!
//! ```text
//! ensure_async(f) ──► pool.try_submit(job)          full: is_overloaded(), at once
//!                        job (pool thread): claim ─► span.in_scope(context::enter(f))
//!                                                     catch_unwind ─► oneshot
//!   future: await the oneshot; if queued, give up after the queue timeout (is_timeout)
//! ```

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};

use tokio::runtime::Handle;

use crate::context::{self, Context};
use crate::error::{panic_message, Error, Kind, Result};
use crate::pool::{Admission, BlockingPool, Job, Withdrawable};
use crate::throttle::Throttle;

/// Runs the blocking closure `f` on a bounded pool of threads and resolves to its result:
/// Quart's `run_sync`, asgiref's `sync_to_async`.
///
/// Unlike `tokio::task::spawn_blocking`, the work goes through admission control (a full
/// pool is an error now, not an unbounded queue), a panic comes back as an error, and the
/// caller's [`tracing::Span`] is entered around `f`. Inside `f`,
/// [`ensure_sync`](crate::ensure_sync) works and reaches the caller's runtime.
///
/// The pool is a process-wide [`BlockingPool`] built on first use with the default limits
/// (512 threads, 1024 queued, 30 s queue timeout, threads named `syncbridge-async`). To
/// share the server's limits or set others, use [`ensure_async_on`].
///
/// # Where it may be called from
///
/// The returned future must be polled inside a tokio runtime (any flavour): an axum
/// handler, a tokio task, `block_on`. Polled anywhere else it resolves to an error for
/// which [`Error::is_no_context`] is true and `f` does not run. The same error comes when
/// every pool thread is busy and the runtime has no timer to bound the wait with (built
/// without `enable_time` or `enable_all`). Building the future does
/// nothing until it is polled. On a plain thread, just call `f`.
///
/// # Cancellation
///
/// Dropping the future before `f` starts means `f` never runs. Once `f` runs it cannot be
/// stopped: it finishes on its thread and its result is dropped, as with `spawn_blocking`.
/// An `f` that never runs (refused, timed out, or its future dropped) is dropped off the
/// runtime's threads, so it may own a runtime of its own (a sync database client).
///
/// # Errors
///
/// - [`Error::is_overloaded`]: every thread is busy and the queue is full, or no thread
///   is alive and the OS refused to start one.
/// - [`Error::is_shutdown`]: the pool is shut down (the server has stopped).
/// - [`Error::is_timeout`]: `f` waited in the queue longer than the pool's
///   [`queue_timeout`](BlockingPool::queue_timeout); it will not run.
/// - [`Error::is_panic`]: `f` panicked; the panic is logged and its message is in
///   `Display`.
/// - [`Error::is_no_context`]: polled outside a tokio runtime, or queued in one without
///   timers.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncbridge::Result<()> {
/// use syncbridge::ensure_async;
///
/// // An axum handler or any async code:
/// let n = ensure_async(|| {
///     std::thread::sleep(std::time::Duration::from_millis(10)); // a legacy sync call
///     42
/// })
/// .await?;
/// assert_eq!(n, 42);
/// # Ok(())
/// # }
/// ```
pub fn ensure_async<F, T>(f: F) -> EnsureAsyncFuture<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    ensure_async_on(default_pool(), f)
}

/// Like [`ensure_async`], on the pool you name: pass a server's pool
/// ([`SyncService::pool`](crate::SyncService::pool)) so that async routes and sync
/// handlers share one limit, or a pool of their own so that they cannot starve each other.
///
/// Not from a future that one of `pool`'s own handlers waits for in
/// [`ensure_sync`](crate::ensure_sync): that handler holds a thread of `pool` while it
/// waits, and with every thread so held the closure waits in the queue for a thread that
/// waits for it, until the queue timeout fails it. Nested calls belong on another pool
/// (`ensure_async`'s own is one).
///
/// # Where it may be called from
///
/// As [`ensure_async`]: the future must be polled inside a tokio runtime.
///
/// # Errors
///
/// As [`ensure_async`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncbridge::Result<()> {
/// use syncbridge::{ensure_async_on, BlockingPool};
///
/// let pool = BlockingPool::builder().max_threads(4).queue_capacity(16).build();
/// let text = ensure_async_on(&pool, || std::fs::read_to_string("Cargo.toml")).await?;
/// assert!(text.is_ok());
/// # Ok(())
/// # }
/// ```
pub fn ensure_async_on<F, T>(pool: &BlockingPool, f: F) -> EnsureAsyncFuture<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // Taken now, where the caller's span is current, not on the pool thread.
    let span = tracing::Span::current();
    let pool = pool.clone();
    EnsureAsyncFuture {
        inner: Box::pin(run(pool, span, Unrun(Some(f)))),
    }
}

/// The future returned by [`ensure_async`] and [`ensure_async_on`].
#[must_use = "futures do nothing unless polled; `f` does not run until then"]
pub struct EnsureAsyncFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T>> + Send>>,
}

impl<T> Future for EnsureAsyncFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for EnsureAsyncFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnsureAsyncFuture").finish_non_exhaustive()
    }
}

fn default_pool() -> &'static BlockingPool {
    static POOL: OnceLock<BlockingPool> = OnceLock::new();
    POOL.get_or_init(|| {
        BlockingPool::builder()
            .thread_name("syncbridge-async")
            .build()
    })
}

/// The caller's closure until a pool thread takes it up. Dropped unrun, it goes off the
/// runtime, whichever way that happens: the future dropped before its first poll (a
/// `select!` branch not taken), the pool refusing the job, the job taken back from the
/// queue. A closure may own a runtime of its own (a sync database or HTTP client), and
/// tokio panics when one is dropped on a runtime thread. Its drop may run anywhere (the
/// caller's task, a pool thread, the drop thread): `drop_off_runtime` looks where.
struct Unrun<F: Send + 'static>(Option<F>);

impl<F: Send + 'static> Drop for Unrun<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            crate::offload::drop_off_runtime(f);
        }
    }
}

/// Takes the closure back if the future goes away before a thread has taken it up, which
/// also takes it out of the pool's queue: work nobody waits for any more neither runs
/// later, unseen, nor holds a place there (new calls would be refused meanwhile).
struct AbandonOnDrop {
    pool: BlockingPool,
    job: Withdrawable,
}

impl AbandonOnDrop {
    fn abandon(&self) -> bool {
        self.job.take_back(&self.pool)
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.abandon() {
            tracing::debug!(
                "ensure_async future dropped before a thread took the closure; it will not run"
            );
        }
    }
}

async fn run<F, T>(pool: BlockingPool, span: tracing::Span, mut f: Unrun<F>) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let runtime = Handle::try_current().map_err(|_| {
        Error::new(Kind::NoContext).with_message(
            "ensure_async must be awaited inside a tokio runtime; on a plain thread call the closure directly",
        )
    })?;
    // The closure's thread gets a context for this runtime, so `ensure_sync` works there,
    // and the task set of the async code awaiting it, if any, for `TaskSet::current`.
    let ctx = Arc::new(Context {
        runtime,
        tasks: crate::tasks::current_in_async(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<std::result::Result<T, String>>();

    let (job, withdrawable) = Job::withdrawable(move || {
        // Always there: the job runs once, and only it takes `f` out.
        let Some(f) = f.0.take() else { return };
        let outcome =
            span.in_scope(|| context::enter(Some(&ctx), || catch_unwind(AssertUnwindSafe(f))));
        let outcome = outcome.map_err(|payload| {
            let message = panic_message(payload);
            // Logged here, inside the caller's span, even if nobody awaits the result.
            span.in_scope(|| tracing::error!(panic = %message, "ensure_async closure panicked"));
            message
        });
        // The receiver is gone if the future was dropped while `f` ran: nothing to do.
        let _ = tx.send(outcome);
    });

    let admission = pool.try_submit(job).map_err(|_job| {
        let err = pool.refusal().error("the blocking pool");
        static REFUSED: Throttle = Throttle::new();
        if let Some(left_out) = REFUSED.admit() {
            tracing::warn!(left_out, "ensure_async refused: {err}");
        }
        err
    })?;
    let timeout = pool.queue_timeout();
    let guard = AbandonOnDrop {
        pool,
        job: withdrawable,
    };

    let mut rx = rx;
    if admission == Admission::Queued {
        let Some(deadline) = crate::timer::sleep(timeout, None) else {
            if guard.abandon() {
                return Err(Error::new(Kind::NoContext).with_message(
                    "every pool thread is busy and the runtime has no timer to bound the wait \
                     (build it with `enable_time` or `enable_all`)",
                ));
            }
            // A thread took it meanwhile: nothing left to bound.
            return finish(rx.await);
        };
        tokio::select! {
            result = &mut rx => return finish(result),
            () = deadline => {
                if guard.abandon() {
                    static TIMED_OUT: Throttle = Throttle::new();
                    if let Some(left_out) = TIMED_OUT.admit() {
                        tracing::warn!(
                            timeout_ms = timeout.as_millis() as u64, left_out,
                            "ensure_async closure waited too long in the queue; it will not run"
                        );
                    }
                    return Err(Error::new(Kind::TimedOut)
                        .with_message("waited in the blocking pool's queue past its timeout"));
                }
                // A thread took it just in time: wait for it like any running closure.
            }
        }
    }
    finish(rx.await)
}

fn finish<T>(
    result: std::result::Result<
        std::result::Result<T, String>,
        tokio::sync::oneshot::error::RecvError,
    >,
) -> Result<T> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(Error::new(Kind::Panicked).with_message(message)),
        // The job was dropped unrun: only if the pool dropped its queue.
        Err(_) => {
            Err(Error::new(Kind::Cancelled).with_message("the blocking pool dropped the work"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    #[test]
    fn polled_outside_a_runtime_is_no_context_and_does_not_run() {
        let ran = Arc::new(AtomicU8::new(0));
        let flag = ran.clone();
        let fut = ensure_async(move || flag.store(1, Ordering::SeqCst));
        let err = super::super::ensure_sync::park_on(fut).unwrap_err();
        assert!(err.is_no_context(), "{err:?}");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_shut_down_pool_refuses_with_is_shutdown_not_overloaded() {
        let pool = BlockingPool::builder().max_threads(1).build();
        pool.shutdown();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(ensure_async_on(&pool, || ())).unwrap_err();
        assert!(err.is_shutdown(), "{err:?}");
        assert!(err.to_string().contains("is shut down"), "{err}");
    }
}
