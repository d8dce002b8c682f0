//! A pool's limits, and the builder that sets them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BlockingPool, Inner, State};

/// The default nice increment of pool threads; see [`BlockingPoolBuilder::nice`].
pub(super) const DEFAULT_NICE: i32 = 10;

/// The limits a pool is built with; fixed from then on.
#[derive(Clone, Debug)]
pub(super) struct PoolConfig {
    pub(super) name: String,
    pub(super) max_threads: usize,
    pub(super) queue_capacity: usize,
    pub(super) queue_timeout: Duration,
    pub(super) keep_alive: Duration,
    pub(super) stack_size: Option<usize>,
    pub(super) nice: i32,
    pub(super) batch: bool,
    pub(super) trim_when_idle: bool,
}

/// `name` as an OS thread may carry it: std refuses (panics on) a name with a NUL byte.
pub(crate) fn thread_name(mut name: String) -> String {
    name.retain(|c| c != '\0');
    name
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
                trim_when_idle: false,
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
    /// blocking pool. `Duration::MAX` keeps threads for ever, also once every handle to
    /// the pool is dropped (nothing else stops them): a pool built per component or per
    /// test wants a finite keep-alive. The last thread to leave
    /// hands the allocator's free memory back to the OS, unless
    /// [`trim_memory_when_idle`](Self::trim_memory_when_idle) is off.
    ///
    /// The thread that waited least is given the next job, so after a burst a lighter
    /// load keeps busy only the threads it needs, and the others exit at their
    /// keep-alive while it goes on.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.keep_alive = keep_alive;
        self
    }

    /// The name given to the pool's threads. Default is `syncbridge-worker`. NUL bytes,
    /// which an OS thread name cannot hold, are left out.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.config.name = thread_name(name.into());
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

    /// Whether the last thread to leave the pool, once it is idle, hands the C
    /// allocator's free memory back to the OS (`malloc_trim(0)`; glibc only). Default is
    /// `false`; the bundled server turns it on for its own handler pool
    /// ([`Server::trim_memory_when_idle`](crate::Server::trim_memory_when_idle)).
    ///
    /// Why: glibc's malloc keeps what a burst freed for the next allocation, so a
    /// process's resident memory otherwise stays near its peak for good: the bench
    /// server idled at 12.1–12.9 MB after ten seconds each of 256 sleeping clients, 1
    /// MiB uploads and 16 MiB downloads, and at 6.3–6.4 MB with the trim (4.7–5.5 MB at
    /// start). At most one trim runs at a time in the process, and none within 10 seconds
    /// of the last, so a pool whose threads come and go with sparse requests does not
    /// trim for each.
    ///
    /// The cost: the call walks every arena of the process, each under its lock, and
    /// the process's other threads wait for an allocation from an arena meanwhile. It
    /// took 1.8–1.9 ms after the load above; after 384 MiB freed in 32 KiB pieces on
    /// eight threads, 71–95 ms, with another thread's allocation from the arena being
    /// trimmed waiting up to 72 ms. It runs on the pool's last thread, at the pool's
    /// priority ([`nice`](Self::nice)): on a core busy with threads of that priority or
    /// higher it takes longer, and holds the locks longer. Turn it on where nothing
    /// else waits on the allocator when the pool goes idle (a server that only serves
    /// the pool's handlers), not beside an async runtime that serves other work.
    pub fn trim_memory_when_idle(mut self, enabled: bool) -> Self {
        self.config.trim_when_idle = enabled;
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
                    parked: Vec::new(),
                    searching: 0,
                    shutdown: false,
                    peak_threads: 0,
                    idle_waiters: 0,
                }),
                went_idle: Default::default(),
                config: self.config,
                #[cfg(test)]
                fail_spawns: Default::default(),
            }),
        }
    }
}
