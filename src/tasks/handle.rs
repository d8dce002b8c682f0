//! The typed handle of a spawned task.

use std::fmt;
use std::sync::{Arc, Weak};

use tokio::runtime::Handle;
use tokio::sync::oneshot::{self, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use super::info::TaskId;
use super::joins;
use super::set::Shared;
use super::supervise::in_callback;
use crate::error::{Error, Kind, Result};

/// A spawned task, typed: its id, cancellation, and its value once it ends.
///
/// Dropping the handle detaches the task: it still runs, is recorded, logged and drained.
#[must_use = "dropping a TaskHandle detaches the task; keep its id() to look it up later"]
pub struct TaskHandle<T> {
    pub(super) id: TaskId,
    pub(super) token: CancellationToken,
    pub(super) rx: oneshot::Receiver<Result<Arc<T>>>,
    /// Whether the task has `on_done` or `on_error`, which `join` waits for.
    pub(super) has_callbacks: bool,
    /// A blocking task's set, for a join from another of its tasks (`joins.rs`); weak, so
    /// that a handle does not keep a set alive.
    pub(super) blocking_in: Option<Weak<Shared>>,
}

impl<T> TaskHandle<T> {
    /// The task's id, for [`TaskSet::status`](crate::TaskSet::status) and [`TaskSet::info`](crate::TaskSet::info) in a later request.
    /// Callable from anywhere.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Asks the task to stop, as [`TaskSet::cancel`](crate::TaskSet::cancel). Callable from anywhere.
    pub fn cancel(&self) {
        if !self.token.is_cancelled() {
            tracing::info!(task_id = %self.id, "background task cancellation requested");
        }
        self.token.cancel();
    }

    /// Waits for the task to end (callbacks included) and returns its value. The value is
    /// shared with the registry entry, hence the `Arc`.
    ///
    /// Call it from async code.
    ///
    /// # Errors
    ///
    /// [`Error::is_task_failed`] (the task's error is the `source`; a retry that found
    /// the task pool and its queue full fails this way too, as a failed attempt),
    /// [`Error::is_panic`], [`Error::is_timeout`], [`Error::is_cancelled`], or
    /// [`Error::is_shutdown`] when the runtime went away first.
    pub async fn join(self) -> Result<Arc<T>> {
        self.rx.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// [`join`](Self::join) for blocking code: a handler thread, a blocking task, a plain
    /// thread.
    ///
    /// From a blocking task, mind the task pool's size: a task it joins needs a thread
    /// of the same pool. When every thread of the pool would wait in such a join for a
    /// blocking task of the set that has not ended, none could ever run it, and the last
    /// join is refused (below); its task fails and frees its thread. Size the pool for
    /// the joins you make, or spawn the inner work as an async task.
    ///
    /// From a task callback, a task with callbacks of its own cannot be joined until it
    /// has ended: its callbacks need a thread of the callback pool, and the joining
    /// callback holds one (with every thread held so, none would ever run). Look its
    /// outcome up with [`TaskSet::status`](crate::TaskSet::status) instead, or give it
    /// no callbacks. Waiting on [`join`](Self::join) through `ensure_sync` there has the
    /// same hazard and is not caught. Nor is this one: a callback that joins a blocking
    /// task (one without callbacks) waits for a thread of the task pool, and if every
    /// such thread waits in a join for a task whose callbacks wait for the room in the
    /// callback pool that the joining callback holds (with a
    /// [`queue_capacity`](crate::TaskSetBuilder::queue_capacity) of a few), none ends
    /// until the drain. Keep joins out of callbacks, or size both pools for them.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join); [`Error::is_async_context`] when called from async
    /// code, where blocking would stall the runtime (tokio's `spawn_blocking` threads and
    /// a thread inside `Runtime::enter` count, as tokio marks them in a runtime: join
    /// there with `Handle::block_on(handle.join())`); [`Error::is_would_deadlock`] when
    /// called from a task callback for a task with callbacks, or from a blocking task
    /// whose join would leave no thread of the task pool free (above).
    pub fn join_blocking(mut self) -> Result<Arc<T>> {
        if Handle::try_current().is_ok() {
            return Err(Error::new(Kind::AsyncContext)
                .with_message("TaskHandle::join_blocking called from async code; use join"));
        }
        if self.has_callbacks && in_callback() {
            // Ended already, callbacks and all: nothing to wait for.
            match self.rx.try_recv() {
                Ok(outcome) => return outcome,
                Err(TryRecvError::Closed) => return Err(dropped()),
                Err(TryRecvError::Empty) => {}
            }
            return Err(Error::new(Kind::WouldDeadlock).with_message(
                "TaskHandle::join_blocking called from a task callback for a task with \
                 callbacks, which would wait for a callback thread this one holds",
            ));
        }
        let joining = match &self.blocking_in {
            Some(set) => match joins::enter(set, self.id) {
                Ok(joining) => joining,
                // Ended just now, with the last thread on its way out of a join.
                Err(refused) => return self.rx.try_recv().unwrap_or(Err(refused)),
            },
            None => None,
        };
        let outcome = self.rx.blocking_recv().unwrap_or_else(|_| Err(dropped()));
        drop(joining);
        outcome
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
