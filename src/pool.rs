//! The bounded blocking pool: admission control for handlers and other blocking work.
//!
//! At most `max_threads` jobs run at once, each on its own OS thread; up to
//! `queue_capacity` more wait in a FIFO queue. A job that finds both full is refused at
//! once (the bridge answers `503` + `Retry-After`), so neither memory nor latency grows
//! without bound under overload. Threads are started on demand and exit after
//! `keep_alive` without work, so an idle server holds no threads here.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default nice increment of pool threads; see [`BlockingPoolBuilder::nice`].
const DEFAULT_NICE: i32 = 10;

/// A unit of blocking work. It must not unwind: callers wrap user code in `catch_unwind`.
pub(crate) enum Job {
    /// A closure in a box of its own.
    Boxed(Box<dyn FnOnce() + Send + 'static>),
    /// Work that lives in an allocation its submitter shares anyway (a request and the
    /// cell its reply comes back in): one allocation per request instead of two, made
    /// and freed on the runtime's thread, which keeps malloc's per-thread caches warm.
    Shared(Arc<dyn SharedJob>),
}

/// Work behind an `Arc` that runs once, on a pool thread.
pub(crate) trait SharedJob: Send + Sync + 'static {
    fn run(self: Arc<Self>);
}

impl Job {
    pub(crate) fn boxed(f: impl FnOnce() + Send + 'static) -> Self {
        Job::Boxed(Box::new(f))
    }

    fn run(self) {
        match self {
            Job::Boxed(f) => f(),
            Job::Shared(job) => job.run(),
        }
    }

    /// `f` as a job its submitter can take back out of the queue through the returned
    /// handle (see [`BlockingPool::withdraw`]); one allocation more than [`Job::boxed`].
    pub(crate) fn withdrawable(f: impl FnOnce() + Send + 'static) -> (Self, Withdrawable) {
        let job = Arc::new(OnceJob(Mutex::new(Some(Box::new(f)))));
        (Job::Shared(job.clone()), Withdrawable(job))
    }

    fn id(&self) -> Option<JobId> {
        match self {
            Job::Boxed(_) => None,
            Job::Shared(job) => Some(JobId::of(job)),
        }
    }
}

/// Names a shared job to its submitter: the address of the allocation it lives in, which
/// stays its own while the submitter holds a reference (or the pool holds the job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobId(usize);

impl JobId {
    pub(crate) fn of<T: ?Sized>(job: &Arc<T>) -> Self {
        JobId(Arc::as_ptr(job) as *const () as usize)
    }
}

/// What the submitter of a [`Job::withdrawable`] keeps: a reference to the job, so that
/// its [`JobId`] cannot name another job until the submitter lets go.
pub(crate) struct Withdrawable(Arc<OnceJob>);

impl Withdrawable {
    /// Takes the job back unless a thread has taken its closure up: the closure is
    /// dropped unrun and the job leaves `pool`'s queue. Returns whether it was taken
    /// back; `false` means the closure runs (or ran). Callable from any thread.
    pub(crate) fn take_back(&self, pool: &BlockingPool) -> bool {
        let f = self.0.take();
        if f.is_none() {
            return false;
        }
        drop(f); // outside the job's lock: it may hold what a `Drop` needs
        pool.withdraw(JobId::of(&self.0));
        true
    }
}

/// A closure behind an `Arc`, so that it has a [`JobId`]. Whoever takes the closure out
/// first, a pool thread to run it or the submitter to take it back, owns it: the
/// `Option` is the claim.
struct OnceJob(Mutex<Option<Box<dyn FnOnce() + Send + 'static>>>);

impl OnceJob {
    fn take(&self) -> Option<Box<dyn FnOnce() + Send + 'static>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl SharedJob for OnceJob {
    fn run(self: Arc<Self>) {
        if let Some(f) = self.take() {
            f();
        }
    }
}

/// How a job was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A thread took it (or will take it) right away.
    Started,
    /// It waits in the queue for a thread; the caller enforces the queue timeout.
    Queued,
}

/// A bounded pool of threads for blocking work, with a bounded wait queue.
///
/// One pool runs a server's request handlers; background tasks get a pool of their own so
/// that they can never starve request handling. Cloning is cheap and shares the pool.
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
    condvar: Condvar,
    config: PoolConfig,
}

#[derive(Clone, Debug)]
struct PoolConfig {
    name: String,
    max_threads: usize,
    queue_capacity: usize,
    queue_timeout: Duration,
    keep_alive: Duration,
    stack_size: Option<usize>,
    nice: i32,
    batch: bool,
}

struct State {
    queue: VecDeque<Job>,
    /// Threads alive. Always `running + idle + searching`.
    threads: usize,
    /// Threads running a job.
    running: usize,
    /// Threads parked on the condvar and not claimed by a submitter.
    idle: usize,
    /// Threads that will look at the queue before they park: woken or new threads on
    /// their way, and threads whose job is finishing. While one exists, a submit only
    /// pushes: no wake-up, no new thread. This is what keeps a burst of fast requests on
    /// one or two threads instead of waking (or spawning) a thread per request.
    searching: usize,
    /// Wake-ups sent to parked threads and not yet consumed: tells a claimed thread from
    /// a spurious or timed-out wake-up.
    wakeups: usize,
    shutdown: bool,
    /// Peak of `threads`, for stats and tests.
    peak_threads: usize,
}

/// What a caller must do after releasing the lock.
enum Wake {
    Nothing,
    Notify,
    Spawn(Option<Job>),
}

thread_local! {
    /// The pool this thread works for, and whether its current job has already
    /// announced that it is finishing (see [`job_finishing`]).
    static WORKER: RefCell<Option<Arc<Inner>>> = const { RefCell::new(None) };
    static FINISHING: Cell<bool> = const { Cell::new(false) };
}

/// Called by a job on a pool thread right before it hands its result back: the thread
/// counts as searching from now on, so the next submit (which the result may trigger at
/// once, e.g. the next request on a keep-alive connection) finds it instead of waking
/// or spawning another thread. Does nothing off a pool thread.
pub(crate) fn job_finishing() {
    WORKER.with(|worker| {
        if let Some(inner) = &*worker.borrow() {
            if !FINISHING.get() {
                FINISHING.set(true);
                let mut state = inner.lock();
                state.running -= 1;
                state.searching += 1;
            }
        }
    });
}

impl BlockingPool {
    /// A pool with the default limits (see [`BlockingPoolBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a pool with other limits.
    pub fn builder() -> BlockingPoolBuilder {
        BlockingPoolBuilder::default()
    }

    /// The most jobs that run at once.
    pub fn max_threads(&self) -> usize {
        self.inner.config.max_threads
    }

    /// How long a queued request may wait for a thread before it is answered `503`.
    pub fn queue_timeout(&self) -> Duration {
        self.inner.config.queue_timeout
    }

    /// A snapshot of the pool's load. Callable from any thread.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            threads: state.threads,
            busy: state.running,
            queued: state.queue.len(),
            peak_threads: state.peak_threads,
        }
    }

    /// Hands `job` to a thread, queues it, or gives it back when the pool is full or shut
    /// down. Never waits for the pool, but may start an OS thread on the calling thread
    /// (tens of microseconds) when the pool grows.
    ///
    /// `Started` means a thread will take it without waiting for a running job to end;
    /// `Queued` means every thread is busy, so the caller should enforce the queue
    /// timeout.
    pub(crate) fn try_submit(&self, job: Job) -> Result<Admission, Job> {
        let config = &self.inner.config;
        let mut state = self.inner.lock();
        let free = config.max_threads - state.running;
        if state.shutdown || state.queue.len() >= free + config.queue_capacity {
            return Err(job);
        }
        let admission = if state.queue.len() < free {
            Admission::Started
        } else {
            Admission::Queued
        };
        let wake = if state.searching == 0 && state.idle == 0 && state.threads < config.max_threads
        {
            // Nobody could take it soon: a new thread starts with it in hand.
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
        drop(state);
        drop(job); // outside the lock: it may hold the last reference to a request
        true
    }

    /// Whether [`shutdown`](Self::shutdown) was called: no job will be taken again.
    pub(crate) fn is_shutdown(&self) -> bool {
        self.inner.lock().shutdown
    }

    /// Stops taking work and lets idle threads exit. Running jobs finish on their own;
    /// queued jobs still run. Callable from any thread.
    pub(crate) fn shutdown(&self) {
        self.inner.lock().shutdown = true;
        self.inner.condvar.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so it is never poisoned by user code.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gets one more thread looking at the queue: a parked one if any, else a new one
    /// (below the limit). Called with the lock held; the caller acts on the result.
    fn claim(&self, state: &mut State) -> Wake {
        if state.idle > 0 {
            state.idle -= 1;
            state.searching += 1;
            state.wakeups += 1;
            Wake::Notify
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
            Wake::Notify => {
                self.condvar.notify_one();
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
                    drop(state);
                    tracing::error!(pool = %self.config.name, error = %err, "failed to start a pool thread");
                    job
                })
            }
        }
    }

    fn spawn_thread(
        self: &Arc<Self>,
        first: Option<Job>,
    ) -> Result<(), (Option<Job>, std::io::Error)> {
        let inner = self.clone();
        let mut builder = std::thread::Builder::new().name(inner.config.name.clone());
        if let Some(size) = inner.config.stack_size {
            builder = builder.stack_size(size);
        }
        // The job travels inside a slot so that it can be handed back if the spawn fails.
        let slot = Arc::new(Mutex::new(first));
        let thread_slot = slot.clone();
        match builder.spawn(move || {
            let first = thread_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(thread_slot);
            inner.work(first)
        }) {
            Ok(_) => Ok(()),
            Err(err) => Err((slot.lock().unwrap_or_else(|e| e.into_inner()).take(), err)),
        }
    }

    /// A pool thread's life: run jobs while there are any, then park up to `keep_alive`.
    /// It starts either with a job in hand (counted as running) or as a searcher.
    fn work(self: Arc<Self>, first: Option<Job>) {
        // Always, even for 0: the thread may have inherited a pool thread's value.
        crate::sys::set_thread_nice(self.config.nice);
        crate::sys::set_thread_batch(self.config.batch);
        WORKER.with(|worker| *worker.borrow_mut() = Some(self.clone()));
        let mut next = first;
        let mut state = self.lock();
        loop {
            let (job, wake) = match next.take() {
                Some(job) => (job, Wake::Nothing),
                None => match state.queue.pop_front() {
                    Some(job) => {
                        state.searching -= 1;
                        state.running += 1;
                        // More work waiting and nobody else looking: get another thread
                        // on its way, so a handler that blocks long does not hold up
                        // the queue behind it.
                        let wake = if !state.queue.is_empty() && state.searching == 0 {
                            self.claim(&mut state)
                        } else {
                            Wake::Nothing
                        };
                        (job, wake)
                    }
                    None => {
                        let (guard, again) = self.park(state);
                        state = guard;
                        if !again {
                            break;
                        }
                        continue;
                    }
                },
            };
            drop(state);
            let _ = self.act(wake);
            FINISHING.set(false);
            // Jobs guard user code themselves; this catches what slips past (a panicking
            // `Drop` or `Display` of a user type), so the counters stay right and the
            // thread lives on.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job.run())) {
                tracing::error!(
                    pool = %self.config.name,
                    panic = %crate::error::panic_message(&*payload),
                    "a pool job panicked outside its own guard; the thread goes on"
                );
            }
            state = self.lock();
            if !FINISHING.get() {
                state.running -= 1;
                state.searching += 1;
            }
        }
        state.threads -= 1;
        drop(state);
        WORKER.with(|worker| worker.borrow_mut().take());
    }

    /// Parks a searching thread that found the queue empty. Returns true when it should
    /// look at the queue again (claimed, or timed out with work waiting), false when the
    /// thread should exit (kept alive long enough, or shut down).
    fn park<'a>(&'a self, mut state: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
        state.searching -= 1;
        if state.shutdown {
            return (state, false);
        }
        state.idle += 1;
        // A keep-alive too large for the clock (`Duration::MAX`) means for ever.
        let deadline = Instant::now().checked_add(self.config.keep_alive);
        loop {
            state = match deadline {
                None => self.condvar.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.idle -= 1;
                        if state.queue.is_empty() {
                            return (state, false);
                        }
                        state.searching += 1;
                        return (state, true);
                    }
                    self.condvar
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            if state.wakeups > 0 {
                // A submitter claimed this thread: it already moved it to `searching`.
                state.wakeups -= 1;
                return (state, true);
            }
            if state.shutdown {
                state.idle -= 1;
                return (state, false);
            }
        }
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

/// Configures a [`BlockingPool`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BlockingPoolBuilder {
    config: PoolConfig,
}

impl Default for BlockingPoolBuilder {
    fn default() -> Self {
        BlockingPoolBuilder {
            config: PoolConfig {
                name: "syncbridge-worker".to_owned(),
                max_threads: 512,
                queue_capacity: 1024,
                queue_timeout: Duration::from_secs(30),
                keep_alive: Duration::from_secs(10),
                stack_size: None,
                nice: DEFAULT_NICE,
                batch: true,
            },
        }
    }
}

impl BlockingPoolBuilder {
    /// The most jobs running at once, each on its own thread. Default is 512, as tokio's
    /// blocking pool. Values below 1 are raised to 1.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.config.max_threads = n.max(1);
        self
    }

    /// How many jobs may wait for a thread when all are busy; past that, work is refused
    /// (`503` + `Retry-After` for requests). Default is 1024. Zero means no queue.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self
    }

    /// How long a request may wait in the queue before it is answered `503` instead.
    /// Default is 30 seconds, gunicorn's worker timeout.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.config.queue_timeout = timeout;
        self
    }

    /// How long a thread waits for work before it exits. Default is 10 seconds, as tokio's
    /// blocking pool. `Duration::MAX` keeps threads for ever.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.keep_alive = keep_alive;
        self
    }

    /// The name given to the pool's threads. Default is `syncbridge-worker`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The stack size of the pool's threads. Default is the standard library's (2 MiB).
    pub fn thread_stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// How much lower than the rest of the process the pool's threads are scheduled, as a
    /// Linux nice increment (0 to 19; 0 keeps the same priority). Default is 10.
    ///
    /// Why: a handler thread woken on a busy core otherwise preempts the runtime thread
    /// that drives the connections, in the middle of reading a batch of requests. At the
    /// default, one pinned core serves a 64-connection hello benchmark with 0.22 context
    /// switches per request instead of 0.75, and 256 concurrent 50 ms blocking handlers
    /// see a p99 of 53 ms instead of 59 ms (see docs/benchmarks.md). Handlers still get
    /// all the CPU nobody else wants; they yield first to the process's connection
    /// handling and to nice-0 processes on the machine. Has no effect off Linux.
    pub fn nice(mut self, increment: i32) -> Self {
        self.config.nice = increment.clamp(0, 19);
        self
    }

    /// Whether the pool's threads run under Linux's `SCHED_BATCH` policy. Default is
    /// `true`.
    ///
    /// Why: a lower nice value does not stop a thread woken on a busy core from
    /// preempting the runtime thread at once. A response producer woken to refill its
    /// channel did, on every refill: two context switches per two 64 KiB chunks. Under
    /// `SCHED_BATCH` a woken pool thread waits until the runtime thread blocks or its time
    /// slice ends, and then runs with the nice value above. Streaming 16 MiB downloads on
    /// one core, this halved the context switches and cut the CPU per download by 10 to
    /// 20 % (see docs/benchmarks.md). A cost: a pool thread woken on a core that a busy
    /// nice-0 thread holds may wait up to a time slice (a few milliseconds) before it
    /// runs; on an idle core it runs at once. The other side of the same rule: a runtime
    /// thread woken on a pool thread's core (a reply has come) preempts it at once, which
    /// puts the response on the wire sooner but costs two switches when the runtime has
    /// almost nothing to do per reply. `false` keeps the normal policy.
    ///
    /// Threads a handler spawns inherit the policy, as they inherit the nice value. A
    /// process running under a real-time policy or `SCHED_IDLE` keeps it in its pool
    /// threads either way. Has no effect off Linux.
    pub fn batch_scheduling(mut self, enabled: bool) -> Self {
        self.config.batch = enabled;
        self
    }

    /// Builds the pool. No thread starts until the first job.
    pub fn build(self) -> BlockingPool {
        BlockingPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    running: 0,
                    idle: 0,
                    searching: 0,
                    wakeups: 0,
                    shutdown: false,
                    peak_threads: 0,
                }),
                condvar: Condvar::new(),
                config: self.config,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn refuses_work_when_threads_and_queue_are_full() {
        let pool = BlockingPool::builder()
            .max_threads(1)
            .queue_capacity(1)
            .build();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let first = Job::boxed(move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        assert_eq!(pool.try_submit(first).ok(), Some(Admission::Started));
        started_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let second = Job::boxed(move || done_tx.send(()).unwrap());
        assert_eq!(pool.try_submit(second).ok(), Some(Admission::Queued));
        assert!(pool.try_submit(Job::boxed(|| {})).is_err());
        release_tx.send(()).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("queued job ran");
    }

    #[test]
    fn a_keep_alive_too_large_for_the_clock_keeps_threads_for_ever() {
        let pool = BlockingPool::builder().keep_alive(Duration::MAX).build();
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel();
            pool.try_submit(Job::boxed(move || tx.send(()).unwrap()))
                .ok()
                .unwrap();
            // Before: the first idle thread panicked computing its deadline, and the
            // next job went to that dead thread and never ran.
            rx.recv_timeout(Duration::from_secs(5)).expect("job ran");
        }
    }

    #[test]
    fn idle_threads_exit_after_keep_alive() {
        let pool = BlockingPool::builder()
            .keep_alive(Duration::from_millis(20))
            .build();
        let (tx, rx) = mpsc::channel();
        pool.try_submit(Job::boxed(move || tx.send(()).unwrap()))
            .ok()
            .unwrap();
        rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().threads != 0 {
            assert!(Instant::now() < deadline, "thread did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn reuses_an_idle_thread() {
        let pool = BlockingPool::new();
        for _ in 0..20 {
            let (tx, rx) = mpsc::channel();
            pool.try_submit(Job::boxed(move || tx.send(()).unwrap()))
                .ok()
                .unwrap();
            rx.recv().unwrap();
            // Wait for the thread to park before the next job, so it can be reused.
            let deadline = Instant::now() + Duration::from_secs(5);
            while pool.stats().busy != 0 {
                assert!(Instant::now() < deadline);
                std::thread::yield_now();
            }
        }
        assert_eq!(pool.stats().peak_threads, 1);
    }

    #[test]
    fn a_burst_of_blocking_jobs_gets_a_thread_each() {
        let pool = BlockingPool::builder().max_threads(64).build();
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        for _ in 0..50 {
            let started = started.clone();
            let release_rx = release_rx.clone();
            let job = Job::boxed(move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            });
            assert!(pool.try_submit(job).is_ok());
        }
        // All 50 must be running at once: each one that starts gets the next thread going.
        let deadline = Instant::now() + Duration::from_secs(10);
        while started.load(std::sync::atomic::Ordering::SeqCst) < 50 {
            assert!(
                Instant::now() < deadline,
                "only {} started",
                started.load(std::sync::atomic::Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(pool.stats().busy, 50);
        for _ in 0..50 {
            release_tx.send(()).unwrap();
        }
    }

    #[test]
    fn a_burst_of_fast_jobs_stays_on_few_threads() {
        let pool = BlockingPool::new();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        for _ in 0..1000 {
            let done_tx = done_tx.clone();
            assert!(pool
                .try_submit(Job::boxed(move || done_tx.send(()).unwrap()))
                .is_ok());
        }
        for _ in 0..1000 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // tokio's scheme wakes or spawns a thread per submit it cannot hand over (the
        // bridge micro-benchmark saw 95 to 187 threads for 64 requests in flight); here
        // only one thread at a time is on its way. A loaded machine preempts workers
        // mid-burst, which lets the chain grow (16 to 21 seen under a parallel test run).
        assert!(pool.stats().peak_threads <= 64, "{:?}", pool.stats());
    }

    /// The nice value and scheduling policy of the thread that runs a job on `pool`
    /// (fields 19 and 41 of `/proc/thread-self/stat`).
    #[cfg(target_os = "linux")]
    fn nice_and_policy_of_job(pool: BlockingPool) -> (i32, i32) {
        let (tx, rx) = mpsc::channel();
        pool.try_submit(Job::boxed(move || {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Fields after the `(comm)` are space separated, starting at field 3.
            let after_comm: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            let nice: i32 = after_comm[16].parse().unwrap();
            let policy: i32 = after_comm[38].parse().unwrap();
            tx.send((nice, policy)).unwrap();
        }))
        .ok()
        .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pool_threads_run_at_the_configured_nice_value() {
        let nice_of_job = |pool| nice_and_policy_of_job(pool).0;
        let base = nice_of_job(BlockingPool::builder().nice(0).build());
        assert_eq!(
            nice_of_job(BlockingPool::new()),
            (base + DEFAULT_NICE).min(19)
        );
        // A pool thread started from another pool thread (the usual case when a burst
        // fans out) inherits that thread's value; it must still end up at base + 10.
        let (tx, rx) = mpsc::channel();
        BlockingPool::new()
            .try_submit(Job::boxed(move || {
                tx.send(nice_of_job(BlockingPool::new())).unwrap();
            }))
            .ok()
            .unwrap();
        let nested = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(nested, (base + DEFAULT_NICE).min(19));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pool_threads_run_under_the_configured_policy_and_keep_their_nice_value() {
        // SAFETY: an integer argument.
        #[allow(unsafe_code)]
        let process = unsafe { libc::sched_getscheduler(std::process::id() as libc::pid_t) };
        if process != libc::SCHED_OTHER {
            eprintln!("skipped: the test process runs under policy {process}");
            return;
        }
        let (nice, policy) = nice_and_policy_of_job(BlockingPool::new());
        assert_eq!(policy, libc::SCHED_BATCH);
        let (nice_normal, _) =
            nice_and_policy_of_job(BlockingPool::builder().batch_scheduling(false).build());
        assert_eq!(nice, nice_normal, "SCHED_BATCH must keep the nice value");
        // Started from a SCHED_BATCH pool thread, a thread of a pool that asks for the
        // normal policy must not keep the one it inherited.
        let (tx, rx) = mpsc::channel();
        BlockingPool::new()
            .try_submit(Job::boxed(move || {
                let normal = BlockingPool::builder().batch_scheduling(false).build();
                tx.send(nice_and_policy_of_job(normal).1).unwrap();
            }))
            .ok()
            .unwrap();
        let nested = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(nested, libc::SCHED_OTHER);
    }
}
