//! The task set: where tasks are spawned, looked up, cancelled and drained.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backend::Backend;
use super::handle::TaskHandle;
use super::info::{TaskId, TaskInfo, TaskStatus};
use super::registry::{Registry, DEFAULT_MAX_ENTRIES, DEFAULT_TTL};
use super::spawn::{TaskBuilder, TaskContext};
use crate::context::{self, Context};
use crate::error::{Error, Kind, Result};
use crate::pool::BlockingPool;
use crate::timer::TimersKnown;

/// How long, after the drain deadline cancelled the remaining tasks, the drain waits for
/// them to notice before it gives up on them.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// The set an async task was spawned from, so `TaskSet::current()` works inside it.
    pub(super) static CURRENT_SET: TaskSet;
}

/// Background tasks that outlive the request that started them: spawn, look up,
/// cancel, drain.
///
/// Blocking closures run on a [`BlockingPool`] of the set's own, apart from request
/// handlers, with its own limits, so background work can never take a request's thread
/// or queue place; and at a lower priority than handlers (nice +19 against their +10, on
/// Linux), so CPU-bound background work yields the CPU to requests too
/// ([`TaskSetBuilder::nice`]).
/// Futures run on the tokio runtime. Every task gets a [`TaskId`] and an entry in a
/// bounded registry that later requests query with [`status`](TaskSet::status) and
/// [`info`](TaskSet::info).
///
/// Cloning is cheap and shares the set.
///
/// # Getting one
///
/// - On a handler thread of the bundled [`Server`](crate::Server), or inside a task the
///   set runs: [`TaskSet::current`], with no handle threaded through legacy code.
/// - Anywhere else: build one with [`TaskSet::builder`] and keep it (hand it to the server
///   with [`Server::tasks`](crate::Server::tasks) to share it with handlers).
///
/// # Shutdown
///
/// The bundled server drains its set after the connections, up to
/// [`Server::task_drain_timeout`](crate::Server::task_drain_timeout). A set used on its
/// own (say in an axum app) is drained with [`shutdown`](TaskSet::shutdown).
///
/// # Examples
///
/// ```
/// use syncbridge::{Request, TaskSet};
///
/// fn create_report(_req: Request) -> syncbridge::Result<String> {
///     let tasks = TaskSet::current()?; // is_no_context() outside a handler
///     let handle = tasks.spawn_blocking(|_ctx| {
///         // slow, blocking work, after the response has gone
///         Ok::<_, std::io::Error>(42)
///     })?;
///     Ok(format!("accepted: {}", handle.id()))
/// }
/// # let _ = create_report;
/// ```
#[derive(Clone)]
pub struct TaskSet {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) backend: Box<dyn Backend>,
    pub(super) pool: BlockingPool,
    /// Where `on_done`/`on_error` run: as bounded as `pool` but apart from it, so that a
    /// task blocked joining another never waits for a thread to run that one's callbacks.
    pub(super) callbacks: BlockingPool,
    /// One permit per callback job in `callbacks` (queued or running), as many as its
    /// queue holds: a supervisor that has one always finds room there, and those without
    /// one wait in FIFO order, with no timer. (It caps callbacks at the queue's size, at
    /// least one, even where that is smaller than the thread limit.)
    pub(super) callback_room: Arc<Semaphore>,
    /// The builder's runtime: every task runs there.
    pinned: Option<Handle>,
    /// The runtime of a spawn from a plain thread: the server's, or the first caller's.
    runtime: OnceLock<Handle>,
    /// Whether a task's runtime has timers, which its timeout and retries need: kept for
    /// the first runtime asked about, asked afresh for any other.
    pub(super) timers: TimersKnown,
    pub(super) tracker: TaskTracker,
    /// The parent of every task's token: cancelled at the drain deadline.
    pub(super) root: CancellationToken,
    /// Tasks spawned and not yet ended, with their tokens: for `cancel` by id and for
    /// naming every abandoned task at shutdown. A task stays here until its callbacks
    /// have run, after its registry entry is final (and may be evicted).
    live: Mutex<HashMap<TaskId, Live>>,
    /// The most tasks `live` holds: the registry's `max_entries`. The registry cannot
    /// bound tasks whose entries are final but whose callbacks wait for room.
    max_live: usize,
    /// Tasks whose blocking closure runs on a thread now, at most one per task thread:
    /// one whose supervisor gave up on it (a timeout) is no longer live, and is named
    /// from here if it still runs when the drain ends.
    running: Mutex<HashSet<TaskId>>,
    /// The tasks that threads of `pool`, each running a task of this set, wait for in
    /// `join_blocking`, blocking tasks of the set (see `joins.rs`); one entry per thread,
    /// so at most `pool`'s `max_threads`.
    pub(super) joining: Mutex<Vec<TaskId>>,
    closed: AtomicBool,
    /// Whether the drain gave up on tasks that did not stop after cancellation, and
    /// named them: their supervisors are then dropped with the runtime, which is no news.
    pub(super) left_running: AtomicBool,
    /// Whether the sweeper holds the set, for its finished entries (`sweep.rs`).
    pub(super) sweeping: AtomicBool,
}

impl TaskSet {
    /// A set with the default limits (see [`TaskSetBuilder`]). Callable from anywhere.
    pub fn new() -> TaskSet {
        TaskSet::builder().build()
    }

    /// A builder for a set with other limits. Callable from anywhere.
    pub fn builder() -> TaskSetBuilder {
        TaskSetBuilder::default()
    }

    /// The task set of the server whose handler (or background task) runs on this thread.
    ///
    /// Callable from a handler thread of the bundled [`Server`](crate::Server), from a
    /// blocking task or callback a set runs, from inside an async task a set runs, and
    /// from a future a handler runs with [`ensure_sync`](crate::ensure_sync) (and an
    /// [`ensure_async`](crate::ensure_async) closure either awaits). Only in the
    /// future itself: a `tokio::spawn` inside it starts a task that does not inherit the
    /// set, so take the set before spawning and move it in.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_context`] anywhere else: a plain thread, async code outside a
    /// task, or a [`SyncService`](crate::SyncService) built without
    /// [`tasks`](crate::SyncServiceBuilder::tasks) and served by another server. Give
    /// the service a set, or keep an explicit [`TaskSet`] there instead.
    pub fn current() -> Result<TaskSet> {
        if let Some(ctx) = context::current() {
            if let Some(tasks) = &ctx.tasks {
                return Ok(tasks.clone());
            }
            return Err(Error::new(Kind::NoContext).with_message(
                "this thread has no task set: a SyncService built without \
                 SyncServiceBuilder::tasks, or an ensure_async closure awaited outside a \
                 handler's ensure_sync and outside a task; spawn through an explicit TaskSet",
            ));
        }
        if let Ok(set) = CURRENT_SET.try_with(TaskSet::clone) {
            return Ok(set);
        }
        Err(Error::new(Kind::NoContext).with_message(
            "TaskSet::current() called outside a handler thread or background task; \
             spawn through an explicit TaskSet",
        ))
    }

    /// Options for one task: name, timeout, retries, callbacks. See [`TaskBuilder`].
    /// Callable from anywhere; its `spawn` methods say where they may be.
    pub fn task(&self) -> TaskBuilder<'_> {
        TaskBuilder::new(self)
    }

    /// Runs the blocking closure `f` on the set's task pool, after the response if
    /// called from a handler. Shorthand for `self.task().spawn_blocking(f)`; see
    /// [`TaskBuilder::spawn_blocking`] for where it may be called from.
    ///
    /// # Errors
    ///
    /// [`Error::is_overloaded`] (pool or registry full), [`Error::is_shutdown`] (draining),
    /// [`Error::is_no_context`] (no runtime to run on): see
    /// [`TaskBuilder::spawn_blocking`].
    pub fn spawn_blocking<F, T, E>(&self, f: F) -> Result<TaskHandle<T>>
    where
        F: FnMut(TaskContext) -> std::result::Result<T, E> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.task().spawn_blocking(f)
    }

    /// Runs the future `make(ctx)` returns on the runtime. Shorthand for
    /// `self.task().spawn(make)`; see [`TaskBuilder::spawn`].
    ///
    /// # Errors
    ///
    /// As [`spawn_blocking`](Self::spawn_blocking)'s, but for the task pool, which a
    /// future does not use.
    pub fn spawn<F, Fut, T, E>(&self, make: F) -> Result<TaskHandle<T>>
    where
        F: FnMut(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.task().spawn(make)
    }

    /// The task's status; [`TaskStatus::NotFound`] for an id never issued by this set,
    /// or whose entry expired or was evicted. Callable from anywhere; never blocks beyond
    /// a short lock.
    pub fn status(&self, id: TaskId) -> TaskStatus {
        self.info(id)
            .map_or(TaskStatus::NotFound, |info| info.status())
    }

    /// A snapshot of the task's entry: status, times, value or error. `None` when not
    /// found. Callable from anywhere.
    pub fn info(&self, id: TaskId) -> Option<TaskInfo> {
        self.shared.backend.get(id)
    }

    /// Asks the task to stop through its token. A task that has not started yet never
    /// runs; a running blocking closure must check its token; a future is dropped at its
    /// next await. Returns false when the task is not live (unknown, or ended with its
    /// callbacks run); a task that has ended but whose callbacks still run counts as
    /// live, and cancelling it changes nothing. Callable from anywhere.
    pub fn cancel(&self, id: TaskId) -> bool {
        // Cloned out so that cancelling (which wakes other tasks) runs outside the lock.
        let token = self.shared.live().get(&id).map(|live| live.token.clone());
        match token {
            Some(token) => {
                tracing::info!(task_id = %id, "background task cancellation requested");
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// How many tasks are live (pending, running or in their callbacks). Callable from
    /// anywhere (a lock held for a moment; no runtime needed).
    pub fn live(&self) -> usize {
        self.shared.live().len()
    }

    /// The task pool's load. Callable from anywhere.
    pub fn pool(&self) -> &BlockingPool {
        &self.shared.pool
    }

    /// Stops taking tasks, waits for the live ones up to `deadline`, then cancels the rest
    /// through their tokens and logs each abandoned id at `warn`. Returns the ids of the
    /// tasks still live at the deadline (empty when everything finished in time): those
    /// cancelled, and those whose work had ended while their callbacks still ran or
    /// waited for a thread, which are not cancelled (their lines say so).
    ///
    /// After it starts, spawning fails with [`Error::is_shutdown`]. Tasks cancelled at the
    /// deadline get up to one more second to notice; a blocking closure that ignores its
    /// token is left running on its thread, and logged at `error`.
    ///
    /// Call it from async code (any tokio runtime). The bundled server calls it for its
    /// own set; call it yourself for a set you use without the server.
    pub async fn shutdown(&self, deadline: Duration) -> Vec<TaskId> {
        self.drain(deadline, std::future::pending::<()>()).await
    }

    /// [`shutdown`](Self::shutdown), cut short when `abort` completes (a second signal).
    pub(crate) async fn drain(
        &self,
        deadline: Duration,
        abort: impl Future<Output = ()>,
    ) -> Vec<TaskId> {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        shared.tracker.close();
        let live = self.live();
        if live > 0 {
            let stats = shared.pool.stats();
            tracing::info!(
                live,
                running_blocking = stats.busy,
                queued_blocking = stats.queued,
                deadline_secs = deadline.as_secs_f64(),
                "draining background tasks"
            );
        }
        let drained = tokio::select! {
            _ = shared.tracker.wait() => true,
            _ = crate::timer::sleep_anywhere(deadline) => false,
            _ = abort => false,
        };
        let mut abandoned = Vec::new();
        if !drained {
            let left: Vec<(TaskId, bool)> = shared
                .live()
                .iter()
                .map(|(id, live)| (*id, live.ended))
                .collect();
            abandoned = left.iter().map(|(id, _)| *id).collect();
            abandoned.sort();
            for (id, ended) in left {
                let info = self.info(id);
                let name = info.as_ref().and_then(TaskInfo::name);
                let status = info.as_ref().map_or(TaskStatus::NotFound, TaskInfo::status);
                // Not the registry's status: its entry may be evicted, or expired, while
                // its callbacks run.
                if ended {
                    // Its work ended and is recorded; its callbacks hold it live, and a
                    // token does not stop them.
                    tracing::warn!(
                        task_id = %id, name, %status,
                        "background task's callbacks still running or queued at the drain \
                         deadline; not cancelled (a token does not stop them)"
                    );
                } else {
                    tracing::warn!(
                        task_id = %id, name, %status,
                        "background task abandoned at the drain deadline; cancelling it"
                    );
                }
            }
            shared.root.cancel();
            let stopped = tokio::select! {
                _ = shared.tracker.wait() => true,
                _ = crate::timer::sleep_anywhere(CANCEL_GRACE) => false,
            };
            if !stopped {
                shared.left_running.store(true, Ordering::Relaxed);
                let left: Vec<(TaskId, bool)> = shared
                    .live()
                    .iter()
                    .map(|(id, live)| (*id, live.ended))
                    .collect();
                for (id, ended) in left {
                    if ended {
                        tracing::error!(
                            task_id = %id,
                            "background task's callbacks did not end within the drain: one \
                             still waiting for room will not run, one running or queued is cut \
                             off if the process exits"
                        );
                    } else {
                        tracing::error!(
                            task_id = %id,
                            "background task did not stop after cancellation; left running"
                        );
                    }
                }
            }
        }
        // Closures given up on at their timeout keep their threads until they return;
        // whatever still runs now ends with the process, unrecorded.
        let running: Vec<TaskId> = shared.running().iter().copied().collect();
        let given_up: Vec<TaskId> = {
            let live = shared.live();
            running
                .into_iter()
                .filter(|id| !live.contains_key(id))
                .collect()
        };
        for id in given_up {
            tracing::warn!(
                task_id = %id,
                "background task's closure still running after its task ended (timed out, or \
                 lost with its runtime) at the end of the drain; it is cut off if the process \
                 exits"
            );
        }
        shared.pool.shutdown();
        shared.callbacks.shutdown();
        shared.callback_room.close();
        abandoned
    }

    /// Binds the runtime that tasks spawned from outside any runtime run on, if none is
    /// bound yet (the server binds its own).
    pub(crate) fn bind_runtime(&self, handle: Handle) {
        let _ = self.shared.runtime.set(handle);
    }

    /// The runtime a task spawned now runs on: the builder's, else the caller's (the
    /// current one in async code, on a handler thread or in a blocking task the runtime
    /// its request or task came from), else, from a plain thread, the first one bound.
    ///
    /// Per caller, as `SyncService` picks its runtime per request: keeping the first
    /// runtime for good sent every later task of a set shared by several runtimes (a
    /// start-up check's, one `#[tokio::test]` after another) to a runtime that may no
    /// longer run, where a task is lost or, on a current-thread runtime nobody drives,
    /// never starts and its join waits for ever.
    pub(super) fn runtime(&self) -> Result<Handle> {
        if let Some(pinned) = &self.shared.pinned {
            return Ok(pinned.clone());
        }
        // A handler thread has no runtime entered, but its context names the runtime it
        // serves: a set the handler captured (an embedded `SyncService`'s) runs there.
        let caller = Handle::try_current()
            .ok()
            .or_else(|| context::current().map(|ctx| ctx.runtime.clone()));
        if let Some(handle) = caller {
            // Kept for spawns from plain threads later, which have no runtime of their own.
            self.shared.runtime.get_or_init(|| handle.clone());
            return Ok(handle);
        }
        match self.shared.runtime.get() {
            Some(handle) => Ok(handle.clone()),
            None => Err(Error::new(Kind::NoContext).with_message(
                "this TaskSet has no runtime yet: spawn from async code, from a handler of a \
                 running server or a SyncService, or give one with TaskSetBuilder::runtime",
            )),
        }
    }

    /// Refuses a task that needs timers (a timeout, retries) on a runtime built without
    /// them, where tokio would panic inside its supervisor.
    pub(super) fn require_timers(&self, runtime: &Handle) -> Result<()> {
        if self.shared.timers.has_timers(runtime) {
            return Ok(());
        }
        Err(Error::new(Kind::NoContext).with_message(
            "a task timeout or retries need timers, and the runtime this task would run on \
             has none: build it with `enable_time` or `enable_all`",
        ))
    }

    /// The context blocking tasks and callbacks run in, so they can spawn in turn.
    pub(super) fn context(&self, runtime: Handle) -> Arc<Context> {
        // Built per job, not stored: a stored one would hold the set it belongs to.
        Arc::new(Context {
            runtime,
            tasks: Some(self.clone()),
        })
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::new(Kind::Shutdown)
                .with_message("the task set is shutting down and takes no new tasks"));
        }
        Ok(())
    }
}

/// The set [`TaskSet::current`] finds in async code: the one whose task this is, or the
/// one [`with_current`] gave a handler's `ensure_sync` future.
pub(crate) fn current_in_async() -> Option<TaskSet> {
    CURRENT_SET.try_with(TaskSet::clone).ok()
}

/// `future`, in which [`TaskSet::current`] finds `set`.
pub(crate) fn with_current<F: Future>(set: TaskSet, future: F) -> impl Future<Output = F::Output> {
    CURRENT_SET.scope(set, future)
}

impl Shared {
    pub(super) fn live(&self) -> MutexGuard<'_, HashMap<TaskId, Live>> {
        // Only map operations run under the lock.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn running(&self) -> MutexGuard<'_, HashSet<TaskId>> {
        // Only set operations run under the lock.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for TaskSet {
    fn default() -> Self {
        TaskSet::new()
    }
}

impl fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSet")
            .field("live", &self.live())
            .field("pool", &self.shared.pool)
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

/// Configures a [`TaskSet`]. Every bound has a default; none is unbounded.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use syncbridge::TaskSet;
///
/// let tasks = TaskSet::builder()
///     .max_threads(4)
///     .queue_capacity(100)
///     .max_entries(1_000)
///     .ttl(Duration::from_secs(600))
///     .build();
/// assert_eq!(tasks.pool().max_threads(), 4);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct TaskSetBuilder {
    max_threads: usize,
    queue_capacity: usize,
    max_entries: usize,
    ttl: Duration,
    stack_size: Option<usize>,
    nice: i32,
    runtime: Option<Handle>,
}

/// Task threads' default nice increment: the lowest priority, below handler threads'
/// (`BlockingPoolBuilder::nice`, 10), so that background work takes the CPU requests
/// leave.
const TASK_NICE: i32 = 19;

impl Default for TaskSetBuilder {
    fn default() -> Self {
        TaskSetBuilder {
            max_threads: 16,
            queue_capacity: 1024,
            max_entries: DEFAULT_MAX_ENTRIES,
            ttl: DEFAULT_TTL,
            stack_size: None,
            nice: TASK_NICE,
            runtime: None,
        }
    }
}

impl TaskSetBuilder {
    /// The most blocking tasks running at once, each on a thread of the set's own pool.
    /// Default is 16. Values below 1 are raised to 1.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = n.max(1);
        self
    }

    /// How many blocking tasks may wait for a thread; past that, spawning fails with
    /// [`Error::is_overloaded`]. Queued tasks wait without a timeout (they can be
    /// cancelled). Default is 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// The most registry entries, live and finished. When full, the oldest finished entry
    /// is evicted; when all are live, spawning fails with [`Error::is_overloaded`].
    /// It bounds live tasks too, counting a finished one until its callbacks have run
    /// (they may wait for room in the callback pool): past it, spawning fails the same
    /// way. Default is 10,000.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// How long a finished task's entry (status, value, error) is kept; after that its id
    /// is [`TaskStatus::NotFound`], and the entry's copy of the value is dropped, whether
    /// or not anything uses the set after (by the process's `syncbridge-sweep` thread,
    /// within 50 ms of the TTL; a [`TaskHandle`] or [`TaskInfo`] still held keeps its own
    /// copy). Default is one hour.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The stack size of the threads blocking tasks and their callbacks run on. Default
    /// is the standard library's, 2 MiB, reserved as address space per thread.
    pub fn thread_stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// How much lower than the rest of the process the threads of blocking tasks and
    /// their callbacks are scheduled, as a Linux nice increment (0 to 19). Default is 19,
    /// the lowest: below request handlers (10, [`BlockingPoolBuilder::nice`]), so that
    /// CPU-bound tasks take the CPU requests leave rather than a share per thread. On a
    /// core that requests keep busy, a task then gets about a seventh of what a handler
    /// thread gets; on an idle core, all of it. 10 shares the CPU with handlers thread
    /// for thread. Has no effect off Linux.
    ///
    /// [`BlockingPoolBuilder::nice`]: crate::BlockingPoolBuilder::nice
    pub fn nice(mut self, increment: i32) -> Self {
        self.nice = increment.clamp(0, 19);
        self
    }

    /// The runtime every task's futures and timers run on. Default is the caller's, per
    /// spawn: in async code the current runtime, on a handler thread the runtime its
    /// server or `SyncService` request came from, in a blocking task its task's. A spawn
    /// from a plain thread, which has none, runs on the server's runtime for the server's
    /// set, else on the first runtime the set was used from.
    ///
    /// Give one that outlives the set and keeps running. A task spawned after that runtime
    /// has shut down is recorded `failed` at once and logged (`background task lost`), and
    /// its closure never runs. On a current-thread runtime, tasks make progress only while
    /// something drives it (`block_on`): a `join_blocking` from a plain thread while
    /// nothing does waits until something does.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Builds the set. No thread starts until the first blocking task. Callable from
    /// anywhere.
    pub fn build(self) -> TaskSet {
        let pool = |name: &str, queue_capacity: usize| {
            let pool = BlockingPool::builder()
                .max_threads(self.max_threads)
                .queue_capacity(queue_capacity)
                .thread_name(name)
                .nice(self.nice);
            match self.stack_size {
                Some(bytes) => pool.thread_stack_size(bytes),
                None => pool,
            }
            .build()
        };
        TaskSet {
            shared: Arc::new(Shared {
                backend: Box::new(Registry::new(self.max_entries, self.ttl)),
                pool: pool("syncbridge-task", self.queue_capacity),
                // tokio's semaphore holds at most `MAX_PERMITS` (about 2^61): "no
                // limit" (`usize::MAX`) is that.
                callback_room: Arc::new(Semaphore::new(
                    self.queue_capacity.clamp(1, Semaphore::MAX_PERMITS),
                )),
                // At least the one place `callback_room` allows, so a callback with a
                // permit is refused only if a thread fails to start.
                callbacks: pool("syncbridge-callback", self.queue_capacity.max(1)),
                pinned: self.runtime,
                runtime: OnceLock::new(),
                timers: TimersKnown::default(),
                tracker: TaskTracker::new(),
                root: CancellationToken::new(),
                live: Mutex::new(HashMap::new()),
                max_live: self.max_entries,
                running: Mutex::new(HashSet::new()),
                joining: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                left_running: AtomicBool::new(false),
                sweeping: AtomicBool::new(false),
            }),
        }
    }
}

/// Counts a task live from its spawn until its callbacks have run; refused when
/// `max_live` are, as the registry refuses one when all its entries are live.
pub(super) fn register_live(set: &TaskSet, id: TaskId, token: CancellationToken) -> Result<()> {
    let mut live = set.shared.live();
    if live.len() >= set.shared.max_live {
        return Err(Error::new(Kind::Overloaded).with_message(format!(
            "the task set has {} tasks live (queued, running, or waiting for room to run \
             their callbacks), its limit",
            live.len()
        )));
    }
    live.insert(
        id,
        Live {
            token,
            ended: false,
        },
    );
    Ok(())
}

/// Marks a live task's work as ended and recorded: only its callbacks hold it live now.
pub(super) fn mark_ended(set: &TaskSet, id: TaskId) {
    if let Some(live) = set.shared.live().get_mut(&id) {
        live.ended = true;
    }
}

pub(super) fn unregister_live(set: &TaskSet, id: TaskId) {
    set.shared.live().remove(&id);
}

/// A live task: its token, for `cancel` and the drain, and whether its work has ended
/// (the drain does not cancel what is left of such a task, its callbacks).
#[derive(Debug)]
pub(super) struct Live {
    token: CancellationToken,
    ended: bool,
}
