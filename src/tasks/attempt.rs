//! One attempt of a task, however it runs: a blocking closure on the task pool, or a
//! future inside the supervisor's own task. The supervisor (`supervise.rs`) decides
//! whether there is another.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::info::TaskId;
use super::joins;
use super::set::TaskSet;
use super::spawn::TaskContext;
use crate::context;
use crate::error::panic_message;
use crate::long_poll::{PollTimed, Runs};
use crate::offload::DropsOffRuntime;
use crate::pool::{BlockingPool, Job, Withdrawable};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub(super) type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// How one attempt ended.
pub(super) enum Attempt<T> {
    Ok(T),
    Err(SharedError),
    Panicked(String),
    /// Cancelled before it started, or (async) while it ran.
    Cancelled,
}

/// One attempt of a task, however it runs.
pub(super) trait Work<T>: Send + 'static {
    fn attempt(&mut self, ctx: TaskContext) -> BoxFuture<'_, Attempt<T>>;
}

/// A blocking closure. It travels to the pool thread for each attempt and comes back
/// with the outcome, so `FnMut` suffices for retries (no `Sync`, no `Clone`).
pub(super) struct BlockingWork<F: Send + 'static, T: Send + 'static> {
    pub(super) f: Option<F>,
    pub(super) first: Option<Submitted<F, T>>,
    pub(super) set: TaskSet,
    pub(super) runtime: Handle,
    pub(super) span: tracing::Span,
}

impl<F: Send + 'static, T: Send + 'static> Drop for BlockingWork<F, T> {
    fn drop(&mut self) {
        // The supervisor lets go of the closure on a runtime thread (after a failure, or a
        // cancellation before it started); it may own a runtime of its own.
        if let Some(f) = self.f.take() {
            crate::offload::drop_off_runtime(f);
        }
    }
}

/// An attempt handed to the pool: its outcome comes back on `rx`.
pub(super) struct Submitted<F: Send + 'static, T: Send + 'static> {
    id: TaskId,
    rx: oneshot::Receiver<(Option<F>, Attempt<T>)>,
    /// To take it back, queue place and all, when it is given up before a thread took it.
    job: Withdrawable,
    pool: BlockingPool,
}

/// An attempt given up on while it waits in the queue (its task's timeout drops the
/// attempt's future; a runtime that shuts down drops the supervisor) leaves the queue at
/// once, closure and all, rather than hold a place there until a thread frees and finds
/// it cancelled. One that a thread took runs on; it sees its token. One that has just
/// sent its outcome back, unread, has its closure (and value) dropped off the runtime
/// too: this may be a runtime thread.
impl<F: Send + 'static, T: Send + 'static> Drop for Submitted<F, T> {
    fn drop(&mut self) {
        if !self.job.take_back(&self.pool) {
            if let Ok(returned) = self.rx.try_recv() {
                // Sent in the instant its task's timeout gave up on it: the pool thread's
                // send succeeded, so only here is it known to go unread.
                tracing::warn!(
                    task_id = %self.id,
                    "background task returned after its supervisor stopped waiting (its \
                     timeout, or the runtime's shutdown); its outcome is discarded"
                );
                crate::offload::drop_off_runtime(returned);
            }
        }
    }
}

/// Holds a task's first blocking attempt, submitted before its supervisor exists (so a
/// full pool is the caller's error), until the supervisor has been handed to the
/// runtime. A runtime that has shut down drops it there at once, cancelling the task's
/// token, and the attempt must see that rather than run unsupervised. Opens when
/// dropped, so a panic in between cannot strand a pool thread.
pub(super) struct LaunchGate(Arc<(Mutex<bool>, Condvar)>);

/// The attempt's side of a [`LaunchGate`].
pub(super) struct GateWaiter(Arc<(Mutex<bool>, Condvar)>);

impl LaunchGate {
    pub(super) fn new() -> Self {
        LaunchGate(Arc::new((Mutex::new(false), Condvar::new())))
    }

    pub(super) fn waiter(&self) -> GateWaiter {
        GateWaiter(self.0.clone())
    }
}

impl Drop for LaunchGate {
    fn drop(&mut self) {
        let (open, opened) = &*self.0;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        opened.notify_all();
    }
}

impl GateWaiter {
    /// Waits for the launch to end: the time it takes `spawn_blocking` to return.
    fn wait(self) {
        let (open, opened) = &*self.0;
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<F, T, E> BlockingWork<F, T>
where
    F: FnMut(TaskContext) -> std::result::Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    /// Hands one attempt of `f` to the task pool; gives `f` back when the pool refuses
    /// it, so that a later retry still has it (and the caller decides where it is
    /// dropped: it may own a runtime).
    pub(super) fn submit(
        &self,
        f: F,
        ctx: TaskContext,
        gate: Option<GateWaiter>,
    ) -> std::result::Result<Submitted<F, T>, F> {
        let (tx, rx) = oneshot::channel();
        let ctx_id = ctx.id;
        let set = self.set.clone();
        let runtime = self.runtime.clone();
        let span = self.span.clone();
        // The closure waits in a slot of its own rather than inside the job: a refused
        // job is handed back type-erased, and `f` must come out of it again.
        let slot = Arc::new(Mutex::new(Some(f)));
        let in_job = slot.clone();
        let (job, withdrawable) = Job::withdrawable(move || {
            let _entered = span.enter();
            if let Some(gate) = gate {
                gate.wait();
            }
            let taken = in_job.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(in_job);
            // Only the refusal path below takes it first, and then this never runs.
            let Some(mut f) = taken else { return };
            let id = ctx.id;
            if ctx.is_cancelled() {
                // Cancellation before the start is guaranteed: the closure never runs.
                let _ = tx.send((Some(f), Attempt::Cancelled));
                return;
            }
            set.shared.backend.started(id, ctx.attempt);
            let context = set.context(runtime);
            set.shared.running().insert(id);
            let running = joins::RunningTask::enter(&set.shared);
            let outcome =
                context::enter(Some(&context), || catch_unwind(AssertUnwindSafe(|| f(ctx))));
            drop(running);
            set.shared.running().remove(&id);
            let attempt = match outcome {
                Ok(Ok(value)) => Attempt::Ok(value),
                Ok(Err(err)) => Attempt::Err(Arc::from(err.into())),
                Err(payload) => Attempt::Panicked(panic_message(payload)),
            };
            // Only a failure may need the closure again. Done with, it is dropped here on
            // the pool thread: it may own a runtime, which a runtime thread cannot drop.
            let f = match attempt {
                Attempt::Ok(_) => {
                    drop(f);
                    None
                }
                _ => Some(f),
            };
            if tx.send((f, attempt)).is_err() {
                tracing::warn!(
                    task_id = %id,
                    "background task returned after its supervisor stopped waiting (its \
                     timeout, or the runtime's shutdown); its outcome is discarded"
                );
            }
        });
        match self.set.shared.pool.try_submit(job) {
            Ok(_) => Ok(Submitted {
                id: ctx_id,
                rx,
                job: withdrawable,
                pool: self.set.shared.pool.clone(),
            }),
            Err(refused) => {
                drop(refused);
                let f = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                Err(f.expect("a refused job never ran, so its closure is still in its slot"))
            }
        }
    }
}

impl<F, T, E> Work<T> for BlockingWork<F, T>
where
    F: FnMut(TaskContext) -> std::result::Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    fn attempt(&mut self, ctx: TaskContext) -> BoxFuture<'_, Attempt<T>> {
        Box::pin(async move {
            let token = ctx.token.clone();
            let mut submitted = match self.first.take() {
                Some(submitted) => submitted,
                None => {
                    let Some(f) = self.f.take() else {
                        return Attempt::Err(Arc::from(BoxError::from(
                            "the task's closure was lost in an earlier attempt",
                        )));
                    };
                    match self.submit(f, ctx, None) {
                        Ok(submitted) => submitted,
                        Err(f) => {
                            // Kept for the next retry, if any.
                            self.f = Some(f);
                            let refused = self.set.shared.pool.refusal();
                            return Attempt::Err(Arc::from(BoxError::from(
                                refused.message("the background task pool"),
                            )));
                        }
                    }
                }
            };
            let returned = tokio::select! {
                biased;
                returned = &mut submitted.rx => returned,
                _ = token.cancelled() => {
                    // Not taken up yet: give it up now, queue place and all, rather than
                    // when a thread frees. Taken up: it sees the token; wait for it.
                    if submitted.job.take_back(&submitted.pool) {
                        return Attempt::Cancelled;
                    }
                    (&mut submitted.rx).await
                }
            };
            match returned {
                Ok((f, attempt)) => {
                    self.f = f;
                    attempt
                }
                // The pool dropped the job without running it: it never does while alive.
                Err(_) => Attempt::Err(Arc::from(BoxError::from(
                    "the task pool dropped the task without running it",
                ))),
            }
        })
    }
}

/// A future factory; each attempt's future runs inside the supervisor's own task.
pub(super) struct AsyncWork<F> {
    /// Let go of on a runtime thread, when the task ends: it may own a runtime of its
    /// own (a blocking client a future calls through `spawn_blocking`).
    pub(super) make: DropsOffRuntime<F>,
    pub(super) set: TaskSet,
}

impl<F, Fut, T, E> Work<T> for AsyncWork<F>
where
    F: FnMut(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    fn attempt(&mut self, ctx: TaskContext) -> BoxFuture<'_, Attempt<T>> {
        Box::pin(async move {
            let token = ctx.token.clone();
            if token.is_cancelled() {
                return Attempt::Cancelled;
            }
            self.set.shared.backend.started(ctx.id, ctx.attempt);
            let make = self.make.get_mut();
            let future = match catch_unwind(AssertUnwindSafe(|| make(ctx))) {
                Ok(future) => future,
                Err(payload) => return Attempt::Panicked(panic_message(payload)),
            };
            tokio::select! {
                biased;
                _ = token.cancelled() => Attempt::Cancelled,
                // Only the user's future is timed: the supervisor's own work (its locks,
                // its lines) and the future's drop at a cancellation are not its code.
                outcome = PollTimed::new(
                    AssertUnwindSafe(future).catch_unwind(),
                    Runs::AsyncTask,
                ) => match outcome {
                    Ok(Ok(value)) => Attempt::Ok(value),
                    Ok(Err(err)) => Attempt::Err(Arc::from(err.into())),
                    Err(payload) => Attempt::Panicked(panic_message(payload)),
                },
            }
        })
    }
}
