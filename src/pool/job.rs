//! What the pool runs: jobs, and the handle through which a submitter takes one back.

use std::sync::{Arc, Mutex};

use super::BlockingPool;

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

    pub(super) fn run(self) {
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

    pub(super) fn id(&self) -> Option<JobId> {
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
        // Outside the job's lock (it may hold what a `Drop` needs), and off the runtime
        // (it may own a runtime of its own).
        crate::offload::drop_off_runtime(f);
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
