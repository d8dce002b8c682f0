//! The seam between running tasks and remembering them.
//!
//! Everything a later request may ask about a task (status, times, outcome) goes through
//! [`Backend`]; running the task (threads, futures, tokens, timers) stays in `spawn.rs`.
//! Today the only backend is the bounded in-memory [`Registry`](super::registry::Registry).
//! A durable, multi-machine backend (Redis: a hash per task with `EXPIRE` for the TTL)
//! implements this trait; handler code, which only sees `TaskSet`, `TaskHandle` and
//! `TaskInfo`, does not change. Such a backend would store values serialised, not as
//! `dyn Any`, which is why outcomes enter here already split into value and error text.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::info::{ErasedValue, TaskId, TaskInfo, TaskStatus};
use crate::error::Result;

/// How a task ended, as the backend records it.
pub(crate) struct Outcome {
    pub(crate) status: TaskStatus,
    pub(crate) result: Option<ErasedValue>,
    pub(crate) error: Option<Arc<str>>,
}

/// Where task state lives. Called from pool threads and runtime tasks alike, so every
/// method is short and never blocks beyond a lock.
pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Records a new pending task. Called last, once the pool has taken a blocking task's
    /// first attempt, so that an entry is never made for a task refused elsewhere (and
    /// never evicts another for one).
    ///
    /// Fails with [`Error::is_overloaded`](crate::Error::is_overloaded) when the store is
    /// full of live tasks.
    fn insert(&self, id: TaskId, name: Option<Arc<str>>) -> Result<()>;

    /// An attempt started running.
    fn started(&self, id: TaskId, attempt: u32);

    /// An attempt failed and another will follow after a backoff.
    fn retrying(&self, id: TaskId, error: Arc<str>);

    /// The task ended; returns the final snapshot for callbacks.
    fn finished(&self, id: TaskId, outcome: Outcome) -> Option<TaskInfo>;

    /// A snapshot of the task, or `None` when unknown, expired or evicted.
    fn get(&self, id: TaskId) -> Option<TaskInfo>;

    /// Drops the finished entries whose TTL has passed, and says how long until the next
    /// one's does: `None` when no finished entry is left. A backend whose store expires
    /// entries itself (Redis's `EXPIRE`) returns `None`.
    fn sweep(&self) -> Option<Duration>;
}
