//! Supervising one task: attempts, retries, timeout, cancellation,
//! recording the outcome, callbacks, logging.
//!
//! ```text
//! spawn_blocking / spawn (any thread) -> live token (bounded) -> [blocking: first attempt
//!   admitted by the pool] -> registry entry (pending)
//!   supervisor future on the runtime, tracked for the drain, in the task's span:
//!     loop { attempt: pool thread (blocking) | this future (async)
//!            ok -> succeeded | err/panic -> retry after backoff, or failed }
//!     under the timeout -> timed out (token cancelled)
//!   -> registry entry final -> log -> callbacks (blocking thread) -> handle
//! ```

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, TryAcquireError};
use tokio_util::sync::CancellationToken;

use super::attempt::{Attempt, SharedError, Work};
use super::backend::Outcome;
use super::info::{ErasedValue, TaskId, TaskInfo, TaskStatus};
use super::set::{unregister_live, TaskSet};
use super::spawn::{Callback, TaskContext};
use crate::context;
use crate::error::{panic_message, Chain, Error, Kind, Result};
use crate::offload::{drop_off_runtime, DropsOffRuntime};
use crate::pool::Job;

/// The longest wait between two attempts, however many retries came before.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

thread_local! {
    /// Whether this thread is running task callbacks: there, joining a task that has
    /// callbacks of its own could wait for ever for the thread it holds.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is running task callbacks.
pub(super) fn in_callback() -> bool {
    IN_CALLBACK.get()
}

/// Marks the thread as running callbacks until dropped, even by a panic that escapes.
struct InCallback;

impl InCallback {
    fn enter() -> Self {
        IN_CALLBACK.set(true);
        InCallback
    }
}

impl Drop for InCallback {
    fn drop(&mut self) {
        IN_CALLBACK.set(false);
    }
}

/// How long callbacks whose pool could not start a thread wait before they try again.
const CALLBACK_RETRY: Duration = Duration::from_millis(10);

/// Why a task did not succeed.
#[derive(Clone)]
enum Failure {
    Error(SharedError),
    Panic(String),
}

impl Failure {
    fn message(&self) -> Arc<str> {
        match self {
            Failure::Error(e) => Arc::from(Chain(&**e).to_string()),
            Failure::Panic(msg) => Arc::from(format!("panicked: {msg}")),
        }
    }
}

/// How the task ended, before it is recorded.
enum Ended<T> {
    Succeeded(T),
    Failed(Failure),
    Cancelled(Option<Failure>),
    TimedOut(Duration),
}

pub(super) struct Supervisor<T> {
    pub(super) set: TaskSet,
    pub(super) id: TaskId,
    pub(super) token: CancellationToken,
    pub(super) span: tracing::Span,
    pub(super) runtime: Handle,
    pub(super) timeout: Option<Duration>,
    pub(super) retries: u32,
    pub(super) backoff: Duration,
    /// Declared before `reply`, so that a dropped supervisor records its task before
    /// whoever joins it hears of it.
    pub(super) unfinished: Unfinished,
    pub(super) reply: oneshot::Sender<Result<Arc<T>>>,
}

/// Records a task whose supervisor future is dropped before the task has ended: its
/// runtime shut down (tokio drops every task's future then, and at once one spawned on
/// a runtime that has already shut down), or the supervisor panicked. Without it the
/// entry would stay `pending` or `running`, and the task live, for ever, with no log
/// line; `join` answers [`Error::is_shutdown`] (the reply is dropped with it).
pub(super) struct Unfinished {
    set: TaskSet,
    id: TaskId,
    token: CancellationToken,
    stage: Stage,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not ended yet: nothing is recorded.
    Running,
    /// Ended and recorded; its callbacks are not handed to their pool yet.
    Recorded,
    /// Its callbacks are on their pool, which runs them with or without the supervisor.
    CallbacksHanded,
    /// Callbacks done (or none): only the live entry is left to remove.
    Done,
}

impl Unfinished {
    pub(super) fn new(set: TaskSet, id: TaskId, token: CancellationToken) -> Self {
        Unfinished {
            set,
            id,
            token,
            stage: Stage::Running,
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let id = self.id;
        match self.stage {
            Stage::Running => {
                // A blocking attempt still queued must not start with nobody to record
                // it; one that runs sees its token.
                self.token.cancel();
                let message = "its supervisor was dropped before it ended: the runtime it \
                               runs on shut down, or the supervisor panicked";
                if self.set.shared.left_running.load(Ordering::Relaxed) {
                    // The drain named it at `error` already ("left running"); this is
                    // only its runtime ending after it, no second error.
                    tracing::warn!(
                        task_id = %id,
                        "background task lost with its runtime after the drain left it running"
                    );
                } else {
                    tracing::error!(task_id = %id, "background task lost: {message}");
                }
                crate::metrics::task_finished("lost");
                let lost = outcome(TaskStatus::Failed, None, Some(Arc::from(message)));
                self.set.shared.backend.finished(id, lost);
                // Its entry expires with the TTL like any other's.
                super::sweep::sweep_later(&self.set);
            }
            Stage::Recorded => tracing::error!(
                task_id = %id,
                "background task callbacks not run: its supervisor was dropped (the runtime \
                 shut down)"
            ),
            Stage::CallbacksHanded => tracing::warn!(
                task_id = %id,
                "background task's supervisor dropped (the runtime shut down) while its \
                 callbacks run or wait for a callback thread; they run on until the process \
                 exits, and the task is no longer counted live"
            ),
            // `finish` took it out of the live map itself, with the reply.
            Stage::Done => return,
        }
        unregister_live(&self.set, id);
    }
}

/// A task's info and the callbacks to run with it, by name (`on_error`, `on_done`).
type PendingCallbacks = (Option<TaskInfo>, Vec<(&'static str, Callback)>);

impl<T: Send + Sync + 'static> Supervisor<T> {
    pub(super) async fn run<W: Work<T>>(
        self,
        mut work: W,
        callbacks: DropsOffRuntime<(Option<Callback>, Option<Callback>)>,
    ) {
        let start = Instant::now();
        let attempts = self.attempts(&mut work);
        let ended = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, attempts).await {
                Ok(ended) => ended,
                Err(_) => {
                    self.token.cancel();
                    Ended::TimedOut(limit)
                }
            },
            None => attempts.await,
        };
        drop(work);
        self.finish(ended, start, callbacks).await;
    }

    async fn attempts<W: Work<T>>(&self, work: &mut W) -> Ended<T> {
        let mut attempt = 1;
        loop {
            let ctx = TaskContext {
                id: self.id,
                attempt,
                token: self.token.clone(),
            };
            let failure = match work.attempt(ctx).await {
                Attempt::Ok(value) => return Ended::Succeeded(value),
                Attempt::Cancelled => return Ended::Cancelled(None),
                Attempt::Err(err) => Failure::Error(err),
                Attempt::Panicked(msg) => Failure::Panic(msg),
            };
            if self.token.is_cancelled() {
                return Ended::Cancelled(Some(failure));
            }
            // `u32::MAX` retries end at `u32::MAX` attempts rather than overflow.
            if attempt > self.retries || attempt == u32::MAX {
                return Ended::Failed(failure);
            }
            let delay = backoff(self.backoff, attempt);
            let message = failure.message();
            tracing::warn!(
                task_id = %self.id,
                attempt,
                error = %message,
                retry_in_ms = delay.as_millis() as u64,
                "background task attempt failed; retrying"
            );
            self.set.shared.backend.retrying(self.id, message);
            tokio::select! {
                _ = self.token.cancelled() => return Ended::Cancelled(Some(failure)),
                _ = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    async fn finish(
        mut self,
        ended: Ended<T>,
        start: Instant,
        callbacks: DropsOffRuntime<(Option<Callback>, Option<Callback>)>,
    ) {
        let id = self.id;
        let elapsed_ms = start.elapsed().as_millis() as u64;
        let (outcome, reply) = match ended {
            Ended::Succeeded(value) => {
                tracing::debug!(task_id = %id, elapsed_ms, "background task succeeded");
                let value = Arc::new(value);
                let erased: ErasedValue = value.clone();
                (
                    outcome(TaskStatus::Succeeded, Some(erased), None),
                    Ok(value),
                )
            }
            Ended::Failed(failure) => {
                let message = failure.message();
                let err = match &failure {
                    Failure::Error(source) => {
                        tracing::error!(task_id = %id, elapsed_ms, error = %message, "background task failed");
                        Error::new(Kind::TaskFailed)
                            .with_message(message.to_string())
                            .with_source(ArcError(source.clone()))
                    }
                    Failure::Panic(msg) => {
                        tracing::error!(task_id = %id, elapsed_ms, panic = %msg, "background task panicked");
                        Error::new(Kind::Panicked).with_message(msg.clone())
                    }
                };
                (outcome(TaskStatus::Failed, None, Some(message)), Err(err))
            }
            Ended::Cancelled(failure) => {
                let message = failure.as_ref().map(Failure::message);
                tracing::warn!(task_id = %id, elapsed_ms, error = message.as_deref(), "background task cancelled");
                let mut err = Error::new(Kind::Cancelled);
                if let Some(message) = &message {
                    err = err.with_message(message.to_string());
                }
                (outcome(TaskStatus::Cancelled, None, message), Err(err))
            }
            Ended::TimedOut(limit) => {
                let message = format!("ran past its timeout of {limit:?}");
                tracing::error!(
                    task_id = %id,
                    timeout_ms = limit.as_millis() as u64,
                    "background task timed out; cancelled through its token"
                );
                (
                    outcome(
                        TaskStatus::TimedOut,
                        None,
                        Some(Arc::from(message.as_str())),
                    ),
                    Err(Error::new(Kind::TimedOut).with_message(message)),
                )
            }
        };
        let status = outcome.status;
        crate::metrics::task_finished(status.as_str());
        let info = self.set.shared.backend.finished(id, outcome);
        self.unfinished.stage = Stage::Recorded;
        super::set::mark_ended(&self.set, id);
        super::sweep::sweep_later(&self.set);
        let (on_error, on_done) = callbacks.into_inner();
        let mut callbacks = Vec::new();
        if status != TaskStatus::Succeeded {
            callbacks.extend(on_error.map(|cb| ("on_error", cb)));
        } else if let Some(unused) = on_error {
            // A callback may own a runtime (a blocking HTTP client): not dropped here.
            drop_off_runtime(unused);
        }
        callbacks.extend(on_done.map(|cb| ("on_done", cb)));
        self.run_callbacks(DropsOffRuntime::new((info, callbacks)))
            .await;
        self.unfinished.stage = Stage::Done;
        // Out of the live map and replied to under the one lock: whoever joins sees the
        // task gone, and whoever sees it gone (`live`, `cancel`) finds the reply there.
        let mut live = self.set.shared.live();
        live.remove(&id);
        // Nobody may be waiting: the outcome is recorded and logged above either way.
        let unsent = self.reply.send(reply).err();
        drop(live);
        // With no handle left, this may be the value's (or the error's) last holder: it
        // may own a runtime, and its `Drop` may use the set, whose lock is let go above.
        if let Some(unsent) = unsent {
            drop_off_runtime(unsent);
        }
    }

    /// Runs the callbacks with the task's info on the callback pool. Whatever of them is
    /// let go of here, unrun (or the info alone: it holds the task's value), goes off the
    /// runtime, as does the supervisor dropped meanwhile with its runtime: they may own a
    /// runtime of their own.
    async fn run_callbacks(&mut self, mut pending: DropsOffRuntime<PendingCallbacks>) {
        let (info, callbacks) = pending.get_mut();
        if callbacks.is_empty() {
            return;
        }
        if info.is_none() {
            tracing::error!(task_id = %self.id, "background task entry vanished before its callbacks; not run");
            return;
        }
        let id = self.id;
        let span = self.span.clone();
        let context = self.set.context(self.runtime.clone());
        const NOT_RUN: &str = "background task callbacks not run: the callback pool has shut down";
        // Room first (FIFO, no timer): waiting here rather than taking more threads than
        // the set may have.
        let room = &self.set.shared.callback_room;
        let permit = match room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return tracing::error!(task_id = %id, "{NOT_RUN}"),
            Err(TryAcquireError::NoPermits) => {
                tracing::debug!(task_id = %id, "background task callbacks wait for room in the callback pool");
                match room.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return tracing::error!(task_id = %id, "{NOT_RUN}"),
                }
            }
        };
        let (ran_tx, ran_rx) = oneshot::channel::<()>();
        let (info, callbacks) = pending.into_inner();
        let info = info.expect("looked at above");
        // Callbacks may block (the example POSTs to a callback URL), so they run on a
        // thread of the set's callback pool, never a runtime worker: bounded like the
        // tasks, apart from them (a task joining this one must not hold the thread these
        // callbacks wait for), and a plain thread where `ensure_sync` works.
        let job = Job::boxed(move || {
            let _entered = span.enter();
            let _in_callback = InCallback::enter();
            context::enter(Some(&context), || {
                for (which, callback) in callbacks {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(&info))) {
                        let panic = panic_message(payload);
                        tracing::error!(
                            task_id = %id,
                            callback = which,
                            %panic,
                            "background task callback panicked"
                        );
                    }
                }
            });
            drop(permit);
            let _ = ran_tx.send(());
        });
        let mut job = DropsOffRuntime::new(job);
        let pool = &self.set.shared.callbacks;
        loop {
            match pool.try_submit(job.into_inner()) {
                Ok(_) => break,
                Err(back) if pool.is_shutdown() => {
                    drop_off_runtime(back);
                    return tracing::error!(task_id = %id, "{NOT_RUN}");
                }
                // The permit leaves room in the queue (which has at least one place):
                // refused, a thread failed to start (logged by the pool). Wait before
                // the next try rather than spin on it.
                Err(back) => {
                    job = DropsOffRuntime::new(back);
                    match crate::timer::sleep(CALLBACK_RETRY, Some(&self.set.shared.timers)) {
                        Some(wait) => wait.await,
                        // No timers (logged once): take a turn instead.
                        None => tokio::task::yield_now().await,
                    }
                }
            }
        }
        self.unfinished.stage = Stage::CallbacksHanded;
        if ran_rx.await.is_err() {
            tracing::error!(task_id = %id, "background task callbacks did not run to the end");
        }
    }
}

fn outcome(status: TaskStatus, result: Option<ErasedValue>, error: Option<Arc<str>>) -> Outcome {
    Outcome {
        status,
        result,
        error,
    }
}

/// The wait before retry number `attempt` (from 1): `first * 2^(attempt - 1)`, capped.
fn backoff(first: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    first.saturating_mul(factor).min(MAX_BACKOFF)
}

/// A task's error, shared between the registry's text and the handle's `source`.
struct ArcError(SharedError);

impl fmt::Debug for ArcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ArcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_and_is_capped() {
        let first = Duration::from_millis(100);
        assert_eq!(backoff(first, 1), Duration::from_millis(100));
        assert_eq!(backoff(first, 2), Duration::from_millis(200));
        assert_eq!(backoff(first, 4), Duration::from_millis(800));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
    }

    #[test]
    fn a_failed_task_error_keeps_the_task_error_as_source() {
        let source: SharedError = Arc::from(super::super::attempt::BoxError::from("boom"));
        let err = Error::new(Kind::TaskFailed)
            .with_message("boom")
            .with_source(ArcError(source));
        assert!(err.is_task_failed());
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "boom");
    }
}
