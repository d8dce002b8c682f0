//! Spawning one task and supervising it: attempts, retries, timeout, cancellation,
//! recording the outcome, callbacks, logging.
//!
//! ```text
//! spawn_blocking / spawn (any thread) -> registry entry (pending) -> live token
//!   supervisor future on the runtime, tracked for the drain, in the task's span:
//!     loop { attempt: pool thread (blocking) | this future (async)
//!            ok -> succeeded | err/panic -> retry after backoff, or failed }
//!     under the timeout -> timed out (token cancelled)
//!   -> registry entry final -> log -> callbacks (blocking thread) -> handle
//! ```

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backend::Outcome;
use super::info::{ErasedValue, TaskId, TaskInfo, TaskStatus};
use super::set::{register_live, unregister_live, TaskSet, CURRENT_SET};
use crate::context;
use crate::error::{panic_message, Error, Kind, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;
type Callback = Box<dyn FnOnce(&TaskInfo) + Send + 'static>;

/// The longest wait between two attempts, however many retries came before.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What a running task knows of itself: its id, which attempt this is, and the token
/// through which it is asked to stop.
///
/// A blocking task should check [`is_cancelled`](TaskContext::is_cancelled) between
/// steps; an async task may await `cancellation_token().cancelled()`.
#[derive(Clone, Debug)]
pub struct TaskContext {
    id: TaskId,
    attempt: u32,
    token: CancellationToken,
}

impl TaskContext {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the task was asked to stop: [`TaskSet::cancel`], [`TaskHandle::cancel`],
    /// its timeout, or the drain deadline at shutdown.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The task's cancellation token.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Options for one task, from [`TaskSet::task`]: name, timeout, retries, callbacks.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use syncbridge::{TaskSet, TaskStatus};
///
/// # fn f() -> syncbridge::Result<()> {
/// let tasks = TaskSet::current()?;
/// let handle = tasks
///     .task()
///     .name("send-invoice")
///     .timeout(Duration::from_secs(60))
///     .retries(3, Duration::from_millis(500)) // 0.5 s, 1 s, 2 s between attempts
///     .on_done(|info| println!("{} ended {}", info.id(), info.status()))
///     .on_error(|info| eprintln!("{} failed: {:?}", info.id(), info.error()))
///     .spawn_blocking(|ctx| {
///         if ctx.is_cancelled() {
///             return Err("cancelled".into());
///         }
///         Ok::<_, Box<dyn std::error::Error + Send + Sync>>("sent")
///     })?;
/// # let _ = handle; Ok(()) }
/// ```
#[must_use = "a task builder does nothing until `spawn` or `spawn_blocking` is called"]
pub struct TaskBuilder<'a> {
    set: &'a TaskSet,
    name: Option<Arc<str>>,
    timeout: Option<Duration>,
    retries: u32,
    backoff: Duration,
    on_done: Option<Callback>,
    on_error: Option<Callback>,
}

impl<'a> TaskBuilder<'a> {
    pub(super) fn new(set: &'a TaskSet) -> Self {
        TaskBuilder {
            set,
            name: None,
            timeout: None,
            retries: 0,
            backoff: Duration::ZERO,
            on_done: None,
            on_error: None,
        }
    }

    /// A name for logs, spans and [`TaskInfo::name`]. Default is none.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(Arc::from(name.into()));
        self
    }

    /// The longest the task may take, all attempts and backoffs together, counted from
    /// the spawn (so time waiting in the queue counts). Past it, the task's token is
    /// cancelled, its status becomes [`TaskStatus::TimedOut`] and any later result is
    /// discarded (and logged). A blocking closure cannot be preempted: it keeps its thread
    /// until it returns, so it should check its token. Default is no timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries an attempt that returned an error or panicked, at most `max` times,
    /// waiting `first_backoff` before the first retry and doubling the wait each time
    /// (capped at 10 minutes). Cancellation and timeouts are never retried. Default is no
    /// retry.
    pub fn retries(mut self, max: u32, first_backoff: Duration) -> Self {
        self.retries = max;
        self.backoff = first_backoff;
        self
    }

    /// Runs `callback` once the task has ended, whatever the outcome, with the final
    /// registry entry. It runs on a blocking thread (never a runtime worker) inside the
    /// server's context, before [`TaskHandle::join`] returns; it may block. A panic in it
    /// is caught and logged with the task id.
    pub fn on_done(mut self, callback: impl FnOnce(&TaskInfo) + Send + 'static) -> Self {
        self.on_done = Some(Box::new(callback));
        self
    }

    /// Runs `callback` when the task failed, panicked, timed out or was cancelled, before
    /// the [`on_done`](Self::on_done) callback and like it.
    pub fn on_error(mut self, callback: impl FnOnce(&TaskInfo) + Send + 'static) -> Self {
        self.on_error = Some(Box::new(callback));
        self
    }

    /// Runs the blocking closure `f` on the set's task pool (not the request pool), inside
    /// the server's context, so it may itself call [`TaskSet::current`]. `f` is called
    /// once per attempt.
    ///
    /// Callable from any thread: a handler thread, async code, a plain thread. It never
    /// blocks beyond a short lock; from async code it is safe to call directly.
    ///
    /// # Errors
    ///
    /// - [`Error::is_overloaded`]: the task pool's threads and queue are full, or the
    ///   registry is full of live tasks. Nothing was started.
    /// - [`Error::is_shutdown`]: the set is draining.
    /// - [`Error::is_no_context`]: the set has no runtime yet and this thread has none
    ///   (see [`TaskSetBuilder::runtime`](crate::TaskSetBuilder::runtime)).
    pub fn spawn_blocking<F, T, E>(self, f: F) -> Result<TaskHandle<T>>
    where
        F: FnMut(TaskContext) -> std::result::Result<T, E> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let prepared = self.prepare()?;
        let mut work = BlockingWork {
            f: None,
            first: None,
            set: self.set.clone(),
            runtime: prepared.runtime.clone(),
            span: prepared.span.clone(),
        };
        // The first attempt is submitted now, so that a full pool is an error for the
        // caller (who can answer 503) rather than a failed task later.
        let ctx = prepared.context(1);
        match work.submit(f, ctx) {
            Ok(rx) => work.first = Some(rx),
            Err(()) => {
                prepared.abort(self.set);
                return Err(Error::new(Kind::Overloaded)
                    .with_message("the background task pool and its queue are full"));
            }
        }
        Ok(self.launch(prepared, work))
    }

    /// Runs the future that `make(ctx)` returns on the runtime; `make` is called once per
    /// attempt. Cancellation drops the future at its next await.
    ///
    /// Callable from any thread, like [`spawn_blocking`](Self::spawn_blocking), with the
    /// same errors except that the task pool is not involved. Inside the future,
    /// [`TaskSet::current`] returns this set.
    pub fn spawn<F, Fut, T, E>(self, make: F) -> Result<TaskHandle<T>>
    where
        F: FnMut(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let prepared = self.prepare()?;
        let work = AsyncWork {
            make,
            set: self.set.clone(),
        };
        Ok(self.launch(prepared, work))
    }

    fn prepare(&self) -> Result<Prepared> {
        self.set.check_open()?;
        let runtime = self.set.runtime()?;
        let id = TaskId::generate();
        self.set.shared.backend.insert(id, self.name.clone())?;
        let token = self.set.shared.root.child_token();
        register_live(self.set, id, token.clone());
        // A root span of its own that *follows from* the caller's: the task outlives the
        // request, so it must not be the request span's child.
        let span = tracing::info_span!(
            parent: None,
            "task",
            task_id = %id,
            name = self.name.as_deref().unwrap_or(""),
        );
        span.follows_from(tracing::Span::current());
        Ok(Prepared {
            runtime,
            id,
            token,
            span,
        })
    }

    fn launch<T, W>(self, prepared: Prepared, work: W) -> TaskHandle<T>
    where
        T: Send + Sync + 'static,
        W: Work<T>,
    {
        let (reply, rx) = oneshot::channel();
        let Prepared {
            runtime,
            id,
            token,
            span,
        } = prepared;
        let supervisor = Supervisor {
            set: self.set.clone(),
            id,
            token: token.clone(),
            span: span.clone(),
            runtime: runtime.clone(),
            timeout: self.timeout,
            retries: self.retries,
            backoff: self.backoff,
            reply,
        };
        // Kept out of the supervisor: boxed `FnOnce`s are not `Sync`, and `&Supervisor`
        // is held across awaits, which must stay `Send`.
        let callbacks = (self.on_error, self.on_done);
        tracing::debug!(parent: &span, task_id = %id, "background task spawned");
        let future = CURRENT_SET.scope(self.set.clone(), supervisor.run(work, callbacks));
        self.set
            .shared
            .tracker
            .spawn_on(future.instrument(span), &runtime);
        TaskHandle { id, token, rx }
    }
}

impl fmt::Debug for TaskBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

struct Prepared {
    runtime: Handle,
    id: TaskId,
    token: CancellationToken,
    span: tracing::Span,
}

impl Prepared {
    fn context(&self, attempt: u32) -> TaskContext {
        TaskContext {
            id: self.id,
            attempt,
            token: self.token.clone(),
        }
    }

    /// Undoes `prepare` when the task could not be started after all.
    fn abort(self, set: &TaskSet) {
        unregister_live(set, self.id);
        set.shared.backend.remove(self.id);
    }
}

/// A spawned task, typed: its id, cancellation, and its value once it ends.
///
/// Dropping the handle detaches the task: it still runs, is recorded, logged and drained.
#[must_use = "dropping a TaskHandle detaches the task; keep its id() to look it up later"]
pub struct TaskHandle<T> {
    id: TaskId,
    token: CancellationToken,
    rx: oneshot::Receiver<Result<Arc<T>>>,
}

impl<T> TaskHandle<T> {
    /// The task's id, for [`TaskSet::status`] and [`TaskSet::info`] in a later request.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Asks the task to stop, as [`TaskSet::cancel`]. Callable from anywhere.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Waits for the task to end (callbacks included) and returns its value. The value is
    /// shared with the registry entry, hence the `Arc`.
    ///
    /// Call it from async code.
    ///
    /// # Errors
    ///
    /// [`Error::is_task_failed`] (the task's error is the `source`), [`Error::is_panic`],
    /// [`Error::is_timeout`], [`Error::is_cancelled`], [`Error::is_overloaded`] (a retry
    /// found no thread), or [`Error::is_shutdown`] when the runtime went away first.
    pub async fn join(self) -> Result<Arc<T>> {
        self.rx.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// [`join`](Self::join) for blocking code: a handler thread, a blocking task, a plain
    /// thread.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join); and [`Error::is_async_context`] when called from async
    /// code, where blocking would stall the runtime.
    pub fn join_blocking(self) -> Result<Arc<T>> {
        if Handle::try_current().is_ok() {
            return Err(Error::new(Kind::AsyncContext)
                .with_message("TaskHandle::join_blocking called from async code; use join"));
        }
        self.rx.blocking_recv().unwrap_or_else(|_| Err(dropped()))
    }
}

fn dropped() -> Error {
    Error::new(Kind::Shutdown).with_message("the task was dropped with its runtime")
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).finish()
    }
}

/// How one attempt ended.
enum Attempt<T> {
    Ok(T),
    Err(SharedError),
    Panicked(String),
    /// Cancelled before it started, or (async) while it ran.
    Cancelled,
}

/// Why a task did not succeed.
#[derive(Clone)]
enum Failure {
    Error(SharedError),
    Panic(String),
}

impl Failure {
    fn message(&self) -> Arc<str> {
        match self {
            Failure::Error(e) => Arc::from(e.to_string()),
            Failure::Panic(msg) => Arc::from(format!("panicked: {msg}")),
        }
    }
}

/// One attempt of a task, however it runs.
trait Work<T>: Send + 'static {
    fn attempt(&mut self, ctx: TaskContext) -> BoxFuture<'_, Attempt<T>>;
}

/// A blocking closure. It travels to the pool thread for each attempt and comes back
/// with the outcome, so `FnMut` suffices for retries (no `Sync`, no `Clone`).
struct BlockingWork<F, T> {
    f: Option<F>,
    first: Option<oneshot::Receiver<(F, Attempt<T>)>>,
    set: TaskSet,
    runtime: Handle,
    span: tracing::Span,
}

impl<F, T, E> BlockingWork<F, T>
where
    F: FnMut(TaskContext) -> std::result::Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    fn submit(
        &self,
        mut f: F,
        ctx: TaskContext,
    ) -> std::result::Result<oneshot::Receiver<(F, Attempt<T>)>, ()> {
        let (tx, rx) = oneshot::channel();
        let set = self.set.clone();
        let runtime = self.runtime.clone();
        let span = self.span.clone();
        let job = Box::new(move || {
            let _entered = span.enter();
            let id = ctx.id;
            if ctx.is_cancelled() {
                // Cancellation before the start is guaranteed: the closure never runs.
                let _ = tx.send((f, Attempt::Cancelled));
                return;
            }
            set.shared.backend.started(id, ctx.attempt);
            let context = set.context(runtime);
            let outcome =
                context::enter(Some(&context), || catch_unwind(AssertUnwindSafe(|| f(ctx))));
            let attempt = match outcome {
                Ok(Ok(value)) => Attempt::Ok(value),
                Ok(Err(err)) => Attempt::Err(Arc::from(err.into())),
                Err(payload) => Attempt::Panicked(panic_message(&*payload)),
            };
            if tx.send((f, attempt)).is_err() {
                tracing::warn!(
                    task_id = %id,
                    "background task returned after its timeout; its outcome is discarded"
                );
            }
        });
        self.set
            .shared
            .pool
            .try_submit(job)
            .map(|_| rx)
            .map_err(|_| ())
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
            let rx = match self.first.take() {
                Some(rx) => rx,
                None => {
                    let Some(f) = self.f.take() else {
                        return Attempt::Err(Arc::from(BoxError::from(
                            "the task's closure was lost in an earlier attempt",
                        )));
                    };
                    match self.submit(f, ctx) {
                        Ok(rx) => rx,
                        Err(()) => {
                            return Attempt::Err(Arc::from(BoxError::from(
                                "the background task pool and its queue are full",
                            )))
                        }
                    }
                }
            };
            match rx.await {
                Ok((f, attempt)) => {
                    self.f = Some(f);
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
struct AsyncWork<F> {
    make: F,
    set: TaskSet,
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
            let future = match catch_unwind(AssertUnwindSafe(|| (self.make)(ctx))) {
                Ok(future) => future,
                Err(payload) => return Attempt::Panicked(panic_message(&*payload)),
            };
            tokio::select! {
                biased;
                _ = token.cancelled() => Attempt::Cancelled,
                outcome = AssertUnwindSafe(future).catch_unwind() => match outcome {
                    Ok(Ok(value)) => Attempt::Ok(value),
                    Ok(Err(err)) => Attempt::Err(Arc::from(err.into())),
                    Err(payload) => Attempt::Panicked(panic_message(&*payload)),
                },
            }
        })
    }
}

/// How the task ended, before it is recorded.
enum Ended<T> {
    Succeeded(T),
    Failed(Failure),
    Cancelled(Option<Failure>),
    TimedOut(Duration),
}

struct Supervisor<T> {
    set: TaskSet,
    id: TaskId,
    token: CancellationToken,
    span: tracing::Span,
    runtime: Handle,
    timeout: Option<Duration>,
    retries: u32,
    backoff: Duration,
    reply: oneshot::Sender<Result<Arc<T>>>,
}

impl<T: Send + Sync + 'static> Supervisor<T> {
    async fn run<W: Work<T>>(self, mut work: W, callbacks: (Option<Callback>, Option<Callback>)) {
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
            if attempt > self.retries {
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
        self,
        ended: Ended<T>,
        start: Instant,
        (on_error, on_done): (Option<Callback>, Option<Callback>),
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
        let info = self.set.shared.backend.finished(id, outcome);
        let mut callbacks = Vec::new();
        if status != TaskStatus::Succeeded {
            callbacks.extend(on_error.map(|cb| ("on_error", cb)));
        }
        callbacks.extend(on_done.map(|cb| ("on_done", cb)));
        self.run_callbacks(info, callbacks).await;
        unregister_live(&self.set, id);
        // Nobody may be waiting: the outcome is recorded and logged above either way.
        let _ = self.reply.send(reply);
    }

    async fn run_callbacks(
        &self,
        info: Option<TaskInfo>,
        callbacks: Vec<(&'static str, Callback)>,
    ) {
        if callbacks.is_empty() {
            return;
        }
        let Some(info) = info else {
            tracing::error!(task_id = %self.id, "background task entry vanished before its callbacks; not run");
            return;
        };
        let id = self.id;
        let span = self.span.clone();
        let context = self.set.context(self.runtime.clone());
        // Callbacks may block (the example POSTs to a callback URL), so they get a
        // blocking thread, never a runtime worker.
        let ran = self
            .runtime
            .spawn_blocking(move || {
                let _entered = span.enter();
                context::enter(Some(&context), || {
                    for (which, callback) in callbacks {
                        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(&info))) {
                            tracing::error!(
                                task_id = %id,
                                callback = which,
                                panic = %panic_message(&*payload),
                                "background task callback panicked"
                            );
                        }
                    }
                })
            })
            .await;
        if let Err(err) = ran {
            tracing::error!(task_id = %id, error = %err, "background task callbacks did not run to the end");
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
        let source: SharedError = Arc::from(BoxError::from("boom"));
        let err = Error::new(Kind::TaskFailed)
            .with_message("boom")
            .with_source(ArcError(source));
        assert!(err.is_task_failed());
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "boom");
    }
}
