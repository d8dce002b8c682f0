//! Spawning one task: its options ([`TaskBuilder`]) and what it knows of itself
//! ([`TaskContext`]). One attempt of it is `attempt.rs`; supervising the attempts is
//! `supervise.rs`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use super::attempt::{AsyncWork, BlockingWork, LaunchGate, Work};
use super::handle::TaskHandle;
use super::info::{TaskId, TaskInfo};
use super::set::{register_live, unregister_live, TaskSet, CURRENT_SET};
use super::supervise::{Supervisor, Unfinished};
use crate::error::{Error, Result};
use crate::offload::DropsOffRuntime;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub(super) type Callback = Box<dyn FnOnce(&TaskInfo) + Send + 'static>;

/// What a running task knows of itself: its id, which attempt this is, and the token
/// through which it is asked to stop.
///
/// A blocking task should check [`is_cancelled`](TaskContext::is_cancelled) between
/// steps; an async task may await [`cancelled`](TaskContext::cancelled). Its methods but
/// `cancelled` (async code) are plain reads, callable from anywhere.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub(super) id: TaskId,
    pub(super) attempt: u32,
    pub(super) token: CancellationToken,
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

    /// Resolves once the task is asked to stop (see
    /// [`is_cancelled`](TaskContext::is_cancelled)): `select!` on it in an async task.
    ///
    /// A future: await it in async code. A blocking task checks `is_cancelled` instead.
    pub fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.token.cancelled()
    }

    /// The task's cancellation token, to hand to code that takes one (child tokens,
    /// `run_until_cancelled`). It is tokio-util 0.7's type: name it in your own code
    /// through a `tokio-util = "0.7"` dependency of yours.
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
    /// cancelled, its status becomes [`TaskStatus::TimedOut`](crate::TaskStatus::TimedOut) and any later result is
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
    /// registry entry. It runs inside the server's context, before [`TaskHandle::join`]
    /// returns, on a thread of the set's callback pool: never a runtime worker, at most
    /// [`max_threads`](crate::TaskSetBuilder::max_threads) at once, and at most
    /// [`queue_capacity`](crate::TaskSetBuilder::queue_capacity) (at least one) tasks'
    /// callbacks running or waiting for a thread, apart from the
    /// tasks' own threads (so a task that joins another never holds the thread that
    /// one's callbacks need). It may block, and may call what a handler thread may
    /// ([`ensure_sync`](crate::ensure_sync), [`TaskSet::current`](crate::TaskSet::current)).
    /// When that pool and its queue are full it waits for room. A panic in it is caught
    /// and logged with the task id.
    ///
    /// The one outcome it does not see: a task lost with its runtime (the runtime shut
    /// down under it, or the server's drain gave up on it) has nobody left to run it; the
    /// task is recorded `failed` and logged as lost by id instead.
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
    ///   registry is full of live tasks, or no task pool thread is alive and the OS
    ///   refused to start one. Nothing was started.
    /// - [`Error::is_shutdown`]: the set is draining.
    /// - [`Error::is_no_context`]: the set has no runtime yet and this thread has none, as
    ///   a plain thread has not (a handler thread has its server's or `SyncService`'s; see
    ///   [`TaskSetBuilder::runtime`](crate::TaskSetBuilder::runtime)), or the task
    ///   has a timeout or retries and the runtime it would run on was built without timers.
    pub fn spawn_blocking<F, T, E>(self, f: F) -> Result<TaskHandle<T>>
    where
        F: FnMut(TaskContext) -> std::result::Result<T, E> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let prepared = match self.prepare() {
            Ok(prepared) => prepared,
            Err(err) => return Err(self.refused(err, f)),
        };
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
        let gate = LaunchGate::new();
        match work.submit(f, ctx, Some(gate.waiter())) {
            Ok(submitted) => work.first = Some(submitted),
            Err(f) => {
                prepared.abort(self.set);
                let refused = self.set.pool().refusal().error("the background task pool");
                return Err(self.refused(refused, f));
            }
        }
        // Recorded only once the pool has taken it: recording may evict the oldest
        // finished entry, which a refused spawn must not cost another client.
        if let Err(err) = self.record(&prepared) {
            // The attempt never runs: taken back out of the queue when `work` drops, or,
            // if a thread has it already, stopped at the gate by the cancelled token.
            prepared.token.cancel();
            drop(work);
            drop(gate);
            prepared.abort(self.set);
            return Err(self.refused(err, ()));
        }
        let set = Arc::downgrade(&self.set.shared);
        let mut handle = self.launch(prepared, work);
        handle.blocking_in = Some(set);
        drop(gate);
        Ok(handle)
    }

    /// Runs the future that `make(ctx)` returns on the runtime; `make` is called once per
    /// attempt. Cancellation drops the future at its next await.
    ///
    /// Callable from any thread, like [`spawn_blocking`](Self::spawn_blocking). Inside the
    /// future, [`TaskSet::current`] returns this set.
    ///
    /// # Errors
    ///
    /// As [`spawn_blocking`](Self::spawn_blocking)'s, but for the task pool, which a
    /// future does not use.
    pub fn spawn<F, Fut, T, E>(self, make: F) -> Result<TaskHandle<T>>
    where
        F: FnMut(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let prepared = match self.prepare() {
            Ok(prepared) => prepared,
            Err(err) => return Err(self.refused(err, make)),
        };
        if let Err(err) = self.record(&prepared) {
            prepared.abort(self.set);
            return Err(self.refused(err, make));
        }
        let work = AsyncWork {
            make: DropsOffRuntime::new(make),
            set: self.set.clone(),
        };
        Ok(self.launch(prepared, work))
    }

    fn prepare(&self) -> Result<Prepared> {
        // Counted by the drain before the check, so that a drain that starts in between
        // waits for this task instead of finishing without it.
        let tracked = self.set.shared.tracker.token();
        self.set.check_open()?;
        let runtime = self.set.runtime()?;
        if self.timeout.is_some() || self.retries > 0 {
            self.set.require_timers(&runtime)?;
        }
        let id = TaskId::generate();
        let token = self.set.shared.root.child_token();
        register_live(self.set, id, token.clone())?;
        // A root span of its own that *follows from* the caller's: the task outlives the
        // request, so it must not be the request span's child.
        // An unnamed task's span has no `name` field rather than an empty one.
        let span = match self.name.as_deref() {
            Some(name) => tracing::info_span!(parent: None, "task", task_id = %id, name),
            None => tracing::info_span!(parent: None, "task", task_id = %id),
        };
        span.follows_from(tracing::Span::current());
        Ok(Prepared {
            runtime,
            id,
            token,
            span,
            tracked,
        })
    }

    /// Passes on why a task was refused, after letting go of what it was given (its
    /// closure, its callbacks) off the runtime: the caller may be async code, and any of
    /// them may own a runtime (a blocking HTTP client does), which tokio refuses to drop
    /// there.
    #[cold]
    fn refused<W: Send + 'static>(self, err: Error, work: W) -> Error {
        crate::offload::drop_off_runtime((work, self.on_done, self.on_error));
        err
    }

    /// Gives the prepared task its registry entry (`pending`).
    fn record(&self, prepared: &Prepared) -> Result<()> {
        self.set
            .shared
            .backend
            .insert(prepared.id, self.name.clone())
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
            tracked,
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
            unfinished: Unfinished::new(self.set.clone(), id, token.clone()),
        };
        // Kept out of the supervisor: boxed `FnOnce`s are not `Sync`, and `&Supervisor`
        // is held across awaits, which must stay `Send`.
        let has_callbacks = self.on_error.is_some() || self.on_done.is_some();
        // Unrun, they are dropped off the runtime (they may own one): a supervisor
        // dropped with its runtime drops them on one of its threads.
        let callbacks = DropsOffRuntime::new((self.on_error, self.on_done));
        // In the caller's span (a request's): what ties the request to the tasks it spawned,
        // the task's own span only following from it.
        tracing::debug!(task_id = %id, name = self.name.as_deref(), "background task spawned");
        let future = CURRENT_SET.scope(self.set.clone(), supervisor.run(work, callbacks));
        self.set
            .shared
            .tracker
            .spawn_on(future.instrument(span), &runtime);
        drop(tracked); // the supervisor is tracked from here on
        TaskHandle {
            id,
            token,
            rx,
            has_callbacks,
            blocking_in: None,
        }
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
    /// Holds the drain off until the supervisor is spawned (and tracked) or given up.
    tracked: TaskTrackerToken,
}

impl Prepared {
    fn context(&self, attempt: u32) -> TaskContext {
        TaskContext {
            id: self.id,
            attempt,
            token: self.token.clone(),
        }
    }

    /// Undoes `prepare` when the task could not be started after all. It has no
    /// registry entry: that is made last, when nothing can refuse the task any more.
    fn abort(self, set: &TaskSet) {
        unregister_live(set, self.id);
    }
}
