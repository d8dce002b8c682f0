//! Catches the one join that can never end: every thread of a set's task pool blocked
//! in `join_blocking`, each on a blocking task of the same set that has not ended. Each
//! such task then needs a thread of that pool (to start, to run its next attempt, or to
//! go on from where its thread is blocked), and none will ever be free. The last thread
//! to join is refused with `is_would_deadlock`: its task fails, its thread frees, and
//! the queue moves.
//!
//! Kept per set: the threads that run a blocking task of the set mark themselves, and a
//! join from a marked thread on a blocking task of the same set records its target
//! while it waits. Only when there are as many as the pool's `max_threads`, and none of
//! the targets has ended, is the join refused: a target that has ended (its callbacks
//! may still run, on a pool of their own) lets its joiner go soon. Joins from anywhere
//! else (a handler thread, a plain thread) are not recorded, and may still wait on a
//! full pool that moves.

use std::cell::Cell;
use std::sync::{Arc, MutexGuard, Weak};

use super::info::TaskId;
use super::set::Shared;
use crate::error::{Error, Kind, Result};

thread_local! {
    /// The set whose blocking task this thread runs now (its `Shared`'s address), or 0.
    static RUNNING_TASK_OF: Cell<usize> = const { Cell::new(0) };
}

fn address(shared: &Shared) -> usize {
    shared as *const Shared as usize
}

/// Marks the thread as running a blocking task of `shared`'s set until dropped, even by
/// a panic that escapes.
pub(super) struct RunningTask(usize);

impl RunningTask {
    pub(super) fn enter(shared: &Shared) -> Self {
        RunningTask(RUNNING_TASK_OF.replace(address(shared)))
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        RUNNING_TASK_OF.set(self.0);
    }
}

/// One thread of the task pool recorded as waiting for `target`, until dropped.
pub(super) struct Joining {
    shared: Arc<Shared>,
    target: TaskId,
}

impl Drop for Joining {
    fn drop(&mut self) {
        let mut joining = lock(&self.shared);
        if let Some(at) = joining.iter().position(|id| *id == self.target) {
            joining.swap_remove(at);
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Vec<TaskId>> {
    // Nothing panics while it is held.
    shared.joining.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a join of blocking task `id` of `set` from the calling thread, if that thread
/// runs a blocking task of the same set; refuses it when every thread of the pool would
/// then wait so, and none of the tasks they wait for has ended.
pub(super) fn enter(set: &Weak<Shared>, id: TaskId) -> Result<Option<Joining>> {
    let Some(shared) = set.upgrade() else {
        return Ok(None);
    };
    if RUNNING_TASK_OF.get() != address(&shared) {
        return Ok(None);
    }
    let max_threads = shared.pool.max_threads();
    let mut joining = lock(&shared);
    joining.push(id);
    // Snapshotted under the lock, looked up after it: the registry has a lock of its own.
    let targets = (joining.len() >= max_threads).then(|| joining.clone());
    drop(joining);
    let joining = Joining { shared, target: id };
    let Some(targets) = targets else {
        return Ok(Some(joining));
    };
    // An entry that has ended (or is gone: only ended ones are evicted or expire) waits
    // for nothing but its callbacks, which run on a pool of their own.
    let backend = &joining.shared.backend;
    let any_ended = targets.iter().any(|target| {
        backend
            .get(*target)
            .is_none_or(|info| info.status().is_finished())
    });
    if any_ended {
        return Ok(Some(joining));
    }
    Err(Error::new(Kind::WouldDeadlock).with_message(format!(
        "TaskHandle::join_blocking called from a blocking task for task {id}, which has not \
         ended, while every other thread of the task pool ({max_threads}) waits in such a \
         join for a task that has not ended either: no thread would ever be free to run \
         them"
    )))
}
