//! Background tasks that outlive the request: spawn, identify, look up, cancel, drain.
//!
//! ```text
//! handler thread --TaskSet::current()--> TaskSet --spawn_blocking--> task pool (own limits)
//!                                                 --spawn----------> runtime
//!   every task: id + registry entry (bounded, TTL) + token + span following the caller's
//! later request --TaskSet::status(id) / info(id)--> registry (not_found is distinct)
//! server shutdown: connections drain -> tasks drain (own deadline) -> cancel the rest
//! ```
//!
//! The guide with the Flask-Executor / Celery / Starlette mapping is
//! `docs/background-tasks.md`.

/// Compiles the code in the guide as doctests, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/background-tasks.md")]
pub struct BackgroundTasksGuide;

mod attempt;
mod backend;
mod handle;
mod info;
mod joins;
mod registry;
mod set;
mod spawn;
mod supervise;
mod sweep;

pub use handle::TaskHandle;
pub use info::{ParseTaskIdError, TaskId, TaskInfo, TaskStatus};
pub(crate) use set::{current_in_async, with_current};
pub use set::{TaskSet, TaskSetBuilder};
pub use spawn::{TaskBuilder, TaskContext};
