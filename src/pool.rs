//! The bounded blocking pool: admission control for handlers and other blocking work.
//!
//! At most `max_threads` jobs run at once, each on its own OS thread; up to
//! `queue_capacity` more wait in a FIFO queue. A job that finds both full is refused at
//! once (the bridge answers `503` + `Retry-After`), so neither memory nor latency grows
//! without bound under overload. Threads are started on demand and exit after
//! `keep_alive` without work, so an idle server holds no threads here.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A unit of blocking work. It must not unwind: callers wrap user code in `catch_unwind`.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

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
}

struct State {
    queue: VecDeque<Job>,
    /// Threads alive, busy or idle.
    threads: usize,
    /// Threads waiting on the condvar that no submitter has claimed yet.
    idle: usize,
    /// Wake-ups sent to idle threads and not yet consumed: tells a woken thread from a
    /// spurious or timed-out wake-up (the scheme of tokio's blocking pool).
    notified: usize,
    shutdown: bool,
    /// Peak of `threads`, for stats and tests.
    peak_threads: usize,
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
            busy: state.threads - state.idle,
            queued: state.queue.len(),
            peak_threads: state.peak_threads,
        }
    }

    /// Hands `job` to a thread, queues it, or gives it back when the pool is full or shut
    /// down. Never blocks beyond a short lock.
    pub(crate) fn try_submit(&self, job: Job) -> Result<Admission, Job> {
        let mut state = self.inner.lock();
        if state.shutdown {
            return Err(job);
        }
        if state.idle > 0 {
            state.idle -= 1;
            state.notified += 1;
            state.queue.push_back(job);
            drop(state);
            self.inner.condvar.notify_one();
            return Ok(Admission::Started);
        }
        if state.threads < self.inner.config.max_threads {
            state.threads += 1;
            state.peak_threads = state.peak_threads.max(state.threads);
            drop(state);
            return match self.spawn_thread(job) {
                Ok(()) => Ok(Admission::Started),
                Err((job, err)) => {
                    self.inner.lock().threads -= 1;
                    tracing::error!(pool = %self.inner.config.name, error = %err, "failed to start a pool thread");
                    Err(job)
                }
            };
        }
        if state.queue.len() < self.inner.config.queue_capacity {
            state.queue.push_back(job);
            return Ok(Admission::Queued);
        }
        Err(job)
    }

    fn spawn_thread(&self, first: Job) -> Result<(), (Job, std::io::Error)> {
        let inner = self.inner.clone();
        let mut builder = std::thread::Builder::new().name(inner.config.name.clone());
        if let Some(size) = inner.config.stack_size {
            builder = builder.stack_size(size);
        }
        // The job travels inside a slot so that it can be handed back if the spawn fails.
        let slot = Arc::new(Mutex::new(Some(first)));
        let thread_slot = slot.clone();
        match builder.spawn(move || {
            let first = thread_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(thread_slot);
            inner.work(first)
        }) {
            Ok(_) => Ok(()),
            Err(err) => {
                let job = slot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("job still in its slot");
                Err((job, err))
            }
        }
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

    /// A pool thread's life: run jobs while there are any, then wait up to `keep_alive`.
    fn work(&self, first: Option<Job>) {
        if let Some(job) = first {
            job();
        }
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                job();
                state = self.lock();
                continue;
            }
            if state.shutdown {
                break;
            }
            state.idle += 1;
            let deadline = Instant::now() + self.config.keep_alive;
            let mut timed_out = false;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    timed_out = true;
                    break;
                }
                let (guard, _) = self
                    .condvar
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner());
                state = guard;
                if state.notified > 0 {
                    // A submitter claimed this thread and already took it off `idle`.
                    state.notified -= 1;
                    break;
                }
                if state.shutdown {
                    state.idle -= 1;
                    break;
                }
            }
            if timed_out {
                state.idle -= 1;
                if state.queue.is_empty() {
                    break;
                }
            }
        }
        state.threads -= 1;
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
    /// blocking pool.
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

    /// Builds the pool. No thread starts until the first job.
    pub fn build(self) -> BlockingPool {
        BlockingPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    notified: 0,
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
        let first: Job = Box::new(move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        assert_eq!(pool.try_submit(first).ok(), Some(Admission::Started));
        started_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let second: Job = Box::new(move || done_tx.send(()).unwrap());
        assert_eq!(pool.try_submit(second).ok(), Some(Admission::Queued));
        assert!(pool.try_submit(Box::new(|| {})).is_err());
        release_tx.send(()).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("queued job ran");
    }

    #[test]
    fn idle_threads_exit_after_keep_alive() {
        let pool = BlockingPool::builder()
            .keep_alive(Duration::from_millis(20))
            .build();
        let (tx, rx) = mpsc::channel();
        pool.try_submit(Box::new(move || tx.send(()).unwrap()))
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
            pool.try_submit(Box::new(move || tx.send(()).unwrap()))
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
}
