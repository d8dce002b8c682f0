//! Catches the one join that can never end: every thread of a set's task pool blocked
//! in `join_blocking` on blocking tasks of the same set. Each joined task then needs a
//! thread of that pool (to start, to run its next attempt, or to go on from where its
//! thread is blocked), and none will ever be free. The last thread to join is refused
//! with `is_would_deadlock`: its task fails, its thread frees, and the queue moves.
//!
//! Counted per set: the threads that run a blocking task of the set mark themselves, and
//! a join from a marked thread on a blocking task of the same set counts while it waits.
//! The count only reaches the pool's `max_threads` when every thread is in such a join;
//! joins from anywhere else (a handler thread, a plain thread) are not counted, and may
//! still wait on a full pool that moves.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

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

/// One thread of the task pool counted as waiting in a join, until dropped.
pub(super) struct Joining(Arc<Shared>);

impl Drop for Joining {
    fn drop(&mut self) {
        self.0.joining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a join of blocking task `id` of `set` from the calling thread, if that thread
/// runs a blocking task of the same set; refuses it when every thread of the pool would
/// then be waiting so and `id` has not ended.
pub(super) fn enter(set: &Weak<Shared>, id: TaskId) -> Result<Option<Joining>> {
    let Some(shared) = set.upgrade() else {
        return Ok(None);
    };
    if RUNNING_TASK_OF.get() != address(&shared) {
        return Ok(None);
    }
    let waiting = shared.joining.fetch_add(1, Ordering::AcqRel) + 1;
    let joining = Joining(shared);
    let shared = &joining.0;
    if waiting < shared.pool.max_threads() {
        return Ok(Some(joining));
    }
    // An entry that has ended (or is gone: only ended ones are evicted or expire) waits
    // for nothing but its callbacks, which run on a pool of their own.
    let ended = shared
        .backend
        .get(id)
        .is_none_or(|info| info.status().is_finished());
    if ended {
        return Ok(Some(joining));
    }
    Err(Error::new(Kind::WouldDeadlock).with_message(format!(
        "TaskHandle::join_blocking called from a blocking task for task {id}, which has not \
         ended, while every other thread of the task pool ({}) waits in such a join too: \
         no thread would ever be free to run it",
        shared.pool.max_threads()
    )))
}
