//! The bounded blocking pool: admission control for handlers and other blocking work.
//!
//! At most `max_threads` jobs run at once, each on its own OS thread; up to
//! `queue_capacity` more wait in a FIFO queue. A job that finds both full is refused at
//! once (the bridge answers `503` + `Retry-After`), so neither memory nor latency grows
//! without bound under overload. Threads are started on demand and exit after
//! `keep_alive` without work, so an idle server holds no threads here; the last one to
//! leave may hand the allocator's free memory back to the OS (`worker`). The thread
//! parked last is woken first: after a burst, a lighter load keeps the same few threads
//! (and their warm stacks and caches) busy while the others reach their keep-alive and
//! exit. Woken in turn, as from one shared condvar, every thread of the burst would be
//! used now and then and none would ever leave.
//!
//! Its parts: `job` is what is submitted (and how a submitter takes it back), `worker`
//! is a pool thread's life, `builder` holds the limits. This module holds the state they
//! share and the admission rule they all keep.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Kind};
use crate::throttle::Throttle;

mod builder;
mod job;
#[cfg(test)]
mod tests;
mod worker;

pub(crate) use builder::thread_name;
pub use builder::BlockingPoolBuilder;
use builder::PoolConfig;
pub(crate) use job::{Admission, Job, JobId, SharedJob, Withdrawable};
pub(crate) use worker::job_finishing;
use worker::Parker;

/// A bounded pool of threads for blocking work, with a bounded wait queue.
///
/// One pool runs a server's request handlers; background tasks get a pool of their own so
/// that they can never take a request's thread or queue place (and run at a lower
/// priority, `TaskSetBuilder::nice`). Cloning is cheap and shares the pool.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use syncbridge::BlockingPool;
///
/// let pool = BlockingPool::builder()
///     .max_threads(64)
///     .queue_capacity(256)
///     .queue_timeout(Duration::from_secs(5))
///     .build();
/// assert_eq!(pool.max_threads(), 64);
/// ```
#[derive(Clone)]
pub struct BlockingPool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Tells [`BlockingPool::wait_idle`] callers that the last job ended. Notified only
    /// while one waits (`State::idle_waiters`), so a job's end costs nothing otherwise.
    went_idle: Notify,
    config: PoolConfig,
    /// How many of the next thread starts fail, as when the OS refuses one (`EAGAIN`).
    #[cfg(test)]
    fail_spawns: std::sync::atomic::AtomicUsize,
}

struct State {
    queue: VecDeque<Job>,
    /// Threads alive. Always `running + parked.len() + searching`.
    threads: usize,
    /// Threads running a job.
    running: usize,
    /// Threads parked and not claimed by a submitter, the one parked last on top: a
    /// submitter wakes the top one (`claim`). At most `max_threads` entries.
    parked: Vec<Arc<Parker>>,
    /// Threads that will look at the queue before they park: woken or new threads on
    /// their way, and threads whose job is finishing. While one exists, a submit only
    /// pushes: no wake-up, no new thread. This is what keeps a burst of fast requests on
    /// one or two threads instead of waking (or spawning) a thread per request.
    searching: usize,
    shutdown: bool,
    /// Peak of `threads`, for stats and tests.
    peak_threads: usize,
    /// Callers of `wait_idle` waiting now.
    idle_waiters: usize,
}

impl State {
    fn stats(&self) -> PoolStats {
        PoolStats {
            threads: self.threads,
            busy: self.running,
            queued: self.queue.len(),
            peak_threads: self.peak_threads,
        }
    }

    /// Whether a count just lowered left nothing to run while someone waits for that:
    /// the caller notifies `went_idle` once the lock is released.
    fn wakes_idle_waiters(&self) -> bool {
        self.idle_waiters > 0 && self.running == 0 && self.queue.is_empty()
    }
}

/// What a caller must do after releasing the lock.
enum Wake {
    Nothing,
    /// Wake this parked thread, already claimed (taken off `parked`, counted searching).
    Notify(Arc<Parker>),
    Spawn(Option<Job>),
}

impl BlockingPool {
    /// A pool with the default limits (see [`BlockingPoolBuilder`]). Callable from
    /// anywhere; no thread starts until the first job.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a pool with other limits. Callable from anywhere.
    pub fn builder() -> BlockingPoolBuilder {
        BlockingPoolBuilder::default()
    }

    /// The most jobs that run at once. Callable from anywhere.
    pub fn max_threads(&self) -> usize {
        self.inner.config.max_threads
    }

    /// How long a queued request may wait for a thread before it is answered `503`.
    /// Callable from anywhere.
    pub fn queue_timeout(&self) -> Duration {
        self.inner.config.queue_timeout
    }

    /// A snapshot of the pool's load. Callable from any thread.
    pub fn stats(&self) -> PoolStats {
        self.inner.lock().stats()
    }

    /// Waits until no job runs or waits in the queue, or until `timeout` has passed, and
    /// returns the load left then: `busy` and `queued` are both zero when the pool went
    /// idle in time. What is still running at the deadline is logged at `warn` with its
    /// counts, since a thread cannot be interrupted and its work ends with the process.
    ///
    /// For a host that serves a [`SyncService`](crate::SyncService) itself: once its
    /// server has stopped (`axum::serve` returned), handlers its own layers gave up on
    /// (a `TimeoutLayer`'s `408`) may still be running; this gives them time to finish
    /// before `main` returns. It does not stop the pool: jobs submitted meanwhile are
    /// waited for too.
    ///
    /// Await it from async code, on any tokio runtime (one without timers keeps the
    /// deadline on a thread of its own) or on another executor. Awaited from one of this
    /// pool's own jobs (a handler's `ensure_sync`), it waits for that job too, so it
    /// always runs to `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> PoolStats {
        let idle = async {
            loop {
                let notified = self.inner.went_idle.notified();
                let mut notified = std::pin::pin!(notified);
                // Registered before the check, so an end between the two is not missed.
                notified.as_mut().enable();
                {
                    let mut state = self.inner.lock();
                    if state.running == 0 && state.queue.is_empty() {
                        // Read now: a job submitted from here on is not one waited for.
                        return state.stats();
                    }
                    state.idle_waiters += 1;
                }
                let _waiting = IdleWaiter(&self.inner);
                notified.await;
            }
        };
        let stats = tokio::select! {
            stats = idle => return stats,
            () = crate::timer::sleep_anywhere(timeout) => self.stats(),
        };
        if stats.busy > 0 || stats.queued > 0 {
            tracing::warn!(
                pool = %self.inner.config.name,
                running = stats.busy,
                queued = stats.queued,
                timeout_secs = timeout.as_secs_f64(),
                "blocking jobs still running after waiting for the pool to go idle; their \
                 work ends with the process"
            );
        }
        stats
    }

    /// Hands `job` to a thread, queues it, or gives it back when the pool is full or shut
    /// down, or when no thread could start and none is running. Never waits for the
    /// pool, but may start an OS thread on the calling thread (tens of microseconds) when
    /// the pool grows.
    ///
    /// `Started` means a thread will take it without waiting for a running job to end;
    /// `Queued` means every thread is busy, so the caller should enforce the queue
    /// timeout.
    pub(crate) fn try_submit(&self, job: Job) -> Result<Admission, Job> {
        let config = &self.inner.config;
        let mut state = self.inner.lock();
        let free = config.max_threads - state.running;
        // Saturating: `usize::MAX` for either limit means "no limit", not a wrap-around.
        if state.shutdown || state.queue.len() >= free.saturating_add(config.queue_capacity) {
            return Err(job);
        }
        let admission = if state.queue.len() < free {
            Admission::Started
        } else {
            Admission::Queued
        };
        let wake = if state.searching == 0
            && state.parked.is_empty()
            && state.threads < config.max_threads
            && state.queue.is_empty()
        {
            // Nobody could take it soon: a new thread starts with it in hand. Not past
            // jobs already queued: a queue with room below `max_threads` and nobody
            // looking at it is one whose thread failed to start, and a new one starts
            // for the queue's head instead (the `claim` below).
            state.threads += 1;
            state.running += 1;
            state.peak_threads = state.peak_threads.max(state.threads);
            Wake::Spawn(Some(job))
        } else {
            state.queue.push_back(job);
            if state.searching == 0 {
                self.inner.claim(&mut state)
            } else {
                Wake::Nothing
            }
        };
        drop(state);
        match self.inner.act(wake) {
            Ok(()) => Ok(admission),
            Err(Some(job)) => Err(job),
            // The job is queued but the thread meant for it did not start (logged): a
            // thread that frees up will take it, and the caller must bound the wait.
            Err(None) => Ok(Admission::Queued),
        }
    }

    /// Takes a shared job that no thread has started out of the queue, so that work
    /// given up while it waited (a request that timed out or whose client left, a
    /// cancelled task) stops counting against the queue's capacity. Returns whether it
    /// was there. Callable from any thread; costs a scan of the queue, under its lock.
    pub(crate) fn withdraw(&self, id: JobId) -> bool {
        let mut state = self.inner.lock();
        let Some(at) = state.queue.iter().position(|job| job.id() == Some(id)) else {
            return false;
        };
        let job = state.queue.remove(at);
        self.inner.unlock(state);
        drop(job); // outside the lock: it may hold the last reference to a request
        true
    }

    /// Whether [`shutdown`](Self::shutdown) was called: no job will be taken again.
    pub(crate) fn is_shutdown(&self) -> bool {
        self.inner.lock().shutdown
    }

    /// Why a submit was refused, read back after the refusal for the caller's log line
    /// and error. A change in between can mislabel one message, nothing more.
    pub(crate) fn refusal(&self) -> Refusal {
        let state = self.inner.lock();
        if state.shutdown {
            Refusal::ShutDown
        } else if state.threads == 0 {
            Refusal::NoThread
        } else {
            Refusal::Full
        }
    }

    /// Stops taking work and lets idle threads exit. Running jobs finish on their own;
    /// queued jobs still run. Callable from any thread.
    pub(crate) fn shutdown(&self) {
        let mut state = self.inner.lock();
        state.shutdown = true;
        // Each sees `shutdown` once it has the lock, and leaves `parked` itself.
        for parked in &state.parked {
            parked.condvar.notify_one();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so it is never poisoned by user code.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the lock after a count was lowered, waking `wait_idle` callers if that
    /// left the pool idle.
    fn unlock(&self, state: MutexGuard<'_, State>) {
        let went_idle = state.wakes_idle_waiters();
        drop(state);
        if went_idle {
            self.went_idle.notify_waiters();
        }
    }

    /// Gets one more thread looking at the queue: a parked one if any, else a new one
    /// (below the limit). Called with the lock held; the caller acts on the result.
    fn claim(&self, state: &mut State) -> Wake {
        if let Some(parked) = state.parked.pop() {
            parked.claimed.store(true, Relaxed);
            state.searching += 1;
            Wake::Notify(parked)
        } else if state.threads < self.config.max_threads {
            state.threads += 1;
            state.searching += 1;
            state.peak_threads = state.peak_threads.max(state.threads);
            Wake::Spawn(None)
        } else {
            Wake::Nothing
        }
    }

    /// Carries out a [`Wake`] outside the lock. A failed spawn is undone and logged; the
    /// job it carried, if any, is handed back.
    fn act(self: &Arc<Self>, wake: Wake) -> Result<(), Option<Job>> {
        match wake {
            Wake::Nothing => Ok(()),
            Wake::Notify(parked) => {
                parked.condvar.notify_one();
                Ok(())
            }
            Wake::Spawn(first) => {
                let with_job = first.is_some();
                self.spawn_thread(first).map_err(|(job, err)| {
                    let mut state = self.lock();
                    state.threads -= 1;
                    if with_job {
                        state.running -= 1;
                    } else {
                        state.searching -= 1;
                    }
                    // The pool is short of threads, not of room: a job in hand waits in
                    // the queue for a thread already there, within the queue's bound
                    // (the caller times the wait), as it would had the pool been full.
                    // With no thread at all, nobody would take it: refused.
                    let threads = state.threads;
                    let free = self.config.max_threads - state.running;
                    let mut then = Wake::Nothing;
                    let job = match job {
                        Some(job)
                            if threads > 0
                                && !state.shutdown
                                && state.queue.len()
                                    < free.saturating_add(self.config.queue_capacity) =>
                        {
                            state.queue.push_back(job);
                            None
                        }
                        other => other,
                    };
                    // As a submit that queues: one thread looking at the queue is enough,
                    // and only a parked one is called on, a start having just failed. One
                    // may have parked since the start was asked for, and jobs submitted
                    // meanwhile were queued for the thread that did not start (admitted
                    // `Started`, so with no queue timeout): without this they would wait
                    // for its keep-alive, or for a running job to end.
                    if !state.queue.is_empty() && state.searching == 0 && !state.parked.is_empty() {
                        then = self.claim(&mut state);
                    }
                    self.unlock(state);
                    // A notify at most: cannot fail.
                    let _ = self.act(then);
                    // Throttled: when the OS refuses threads (a pids limit), every submit
                    // tries again and fails the same way.
                    static SPAWN_FAILED: Throttle = Throttle::new();
                    if let Some(left_out) = SPAWN_FAILED.admit() {
                        tracing::error!(
                            pool = %self.config.name, error = %err, threads, left_out,
                            "failed to start a pool thread; work waits in the queue for \
                             the threads running, or is refused while there are none"
                        );
                    }
                    job
                })
            }
        }
    }
}

/// Why the pool refused a job. The three call for different fixes (a bigger pool or
/// queue, the OS's thread limits, nothing: a shutdown in progress), so a refused caller
/// says which rather than "full" for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every thread is busy and the queue holds all it may.
    Full,
    /// No thread is alive and the OS refused to start one (logged by the pool).
    NoThread,
    /// [`BlockingPool::shutdown`] was called.
    ShutDown,
}

impl Refusal {
    /// The refusal as a sentence about `pool`: "the blocking pool and its queue are
    /// full".
    pub(crate) fn message(self, pool: &str) -> String {
        let reason = match self {
            Refusal::Full => "and its queue are full",
            Refusal::NoThread => "could not start a thread",
            Refusal::ShutDown => "is shut down",
        };
        format!("{pool} {reason}")
    }

    /// The error a refused caller returns: [`Error::is_overloaded`] (worth trying again
    /// later), or [`Error::is_shutdown`].
    pub(crate) fn error(self, pool: &str) -> Error {
        let kind = match self {
            Refusal::Full | Refusal::NoThread => Kind::Overloaded,
            Refusal::ShutDown => Kind::Shutdown,
        };
        Error::new(kind).with_message(self.message(pool))
    }
}

/// A `wait_idle` caller's place among the waiters, given up when its wait ends, however
/// it ends (idle, deadline, or the future dropped).
struct IdleWaiter<'a>(&'a Inner);

impl Drop for IdleWaiter<'_> {
    fn drop(&mut self) {
        self.0.lock().idle_waiters -= 1;
    }
}

impl Default for BlockingPool {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPool")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A snapshot of a [`BlockingPool`]'s load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Threads alive.
    pub threads: usize,
    /// Threads running a job.
    pub busy: usize,
    /// Jobs waiting for a thread.
    pub queued: usize,
    /// The most threads alive at once since the pool was built.
    pub peak_threads: usize,
}
