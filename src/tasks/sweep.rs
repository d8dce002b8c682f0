//! Finished entries dropped at their TTL while nobody uses the set. Spawns and lookups
//! expire entries too, but after a burst and then silence, up to `max_entries` results
//! (each as large as its task made it) would stay in memory until the set was used again.
//!
//! ```text
//! a task's entry is final -> its set, weakly, with when its oldest finished entry expires
//!   -> the process's "syncbridge-sweep" thread, asleep until the earliest set is due
//!   -> that set's expired entries dropped; due again at its next expiry, or let go
//! ```
//!
//! A plain thread, not a task on a runtime: a set may be used from several runtimes (one
//! of which nobody drives any more), or from one without timers, and the results it drops
//! may own what must not be dropped on a runtime thread (a runtime of their own). It
//! holds a set only weakly, so a set dropped by everyone else is gone at once, results
//! and all; it starts at the first finished task and ends after `IDLE` with nothing to
//! sweep.

use std::cmp::Ordering as By;
use std::collections::BinaryHeap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::set::{Shared, TaskSet};
use crate::error::panic_message;

/// How long the thread waits with nothing to sweep before it ends.
const IDLE: Duration = Duration::from_secs(10);
/// The least time between two sweeps of one set: a burst whose tasks finished over a
/// second expires in a few sweeps, not one per task.
const MIN_GAP: Duration = Duration::from_millis(50);

static SWEEPER: Sweeper = Sweeper {
    state: Mutex::new(State {
        due: BinaryHeap::new(),
        running: false,
        next_seq: 0,
        pruned: None,
    }),
    wake: Condvar::new(),
};

struct Sweeper {
    state: Mutex<State>,
    /// Rung when a set is due earlier than the thread sleeps for.
    wake: Condvar,
}

struct State {
    /// Each set that has finished entries, once (its `sweeping` flag says so), with when
    /// the oldest of them expires.
    due: BinaryHeap<Due>,
    /// Whether the thread runs.
    running: bool,
    next_seq: u64,
    /// When sets dropped since were last taken out of `due`.
    pruned: Option<Instant>,
}

struct Due {
    at: Instant,
    /// Ties broken in scheduling order.
    seq: u64,
    set: Weak<Shared>,
}

/// Called by a task's supervisor once its entry is final: the set is held for the sweep,
/// unless it is already.
pub(super) fn sweep_later(set: &TaskSet) {
    if !set.shared.sweeping.swap(true, Ordering::SeqCst) {
        schedule_next(&set.shared);
    }
}

/// Drops `set`'s expired entries, then holds it again for its next expiry; or, with no
/// finished entry left, lets go of it. Called by whoever holds the set's flag.
fn schedule_next(set: &Arc<Shared>) {
    let mut released = false;
    loop {
        match set.backend.sweep() {
            // Another caller took the flag after the release below, and holds the set.
            Some(_) if released && set.sweeping.swap(true, Ordering::SeqCst) => return,
            Some(wait) => return SWEEPER.hold(Arc::downgrade(set), wait),
            None if released => return,
            // A task that finished after that sweep, and before this release, found the
            // flag still set and left its entry to this caller: one more look (the
            // registry's lock orders the two).
            None => {
                set.sweeping.store(false, Ordering::SeqCst);
                released = true;
            }
        }
    }
}

impl Sweeper {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `set` for a sweep after `wait`, starting the thread if it is not running.
    fn hold(&self, set: Weak<Shared>, wait: Duration) {
        // A TTL past the clock's range never ends: nothing to hold the set for (its flag
        // stays set, so it is not offered again).
        let Some(at) = Instant::now().checked_add(wait.max(MIN_GAP)) else {
            return;
        };
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.due.push(Due { at, seq, set });
        if !state.running {
            match std::thread::Builder::new()
                .name("syncbridge-sweep".into())
                .spawn(|| SWEEPER.run())
            {
                Ok(_) => state.running = true,
                Err(error) => {
                    // Every set let go of (with no thread, only failed starts held any),
                    // so that the next task to finish tries again. Meanwhile entries
                    // expire at the next spawn or lookup. After the lock: a set whose
                    // last handle this is drops its results here.
                    let held: Vec<Due> = state.due.drain().collect();
                    drop(state);
                    for set in held.iter().filter_map(|due| due.set.upgrade()) {
                        set.sweeping.store(false, Ordering::SeqCst);
                    }
                    tracing::warn!(%error, "could not start the task sweeper thread");
                    return;
                }
            }
        }
        // Only a new earliest changes how long the thread sleeps.
        let earliest = state.due.peek().is_some_and(|due| due.seq == seq);
        drop(state);
        if earliest {
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            // Sets dropped since are gone already, results and all; what is left of them
            // here is an allocation each, until their time. Taken out once a second at most.
            if state
                .pruned
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
            {
                state.due.retain(|due| due.set.strong_count() > 0);
                state.pruned = Some(now);
            }
            let Some(next) = state.due.peek() else {
                let (woken, waited) = self
                    .wake
                    .wait_timeout(state, IDLE)
                    .unwrap_or_else(|e| e.into_inner());
                state = woken;
                if waited.timed_out() && state.due.is_empty() {
                    state.running = false;
                    return;
                }
                continue;
            };
            if next.at > now {
                let wait = next.at - now;
                state = self
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let due = state.due.pop().expect("peeked");
            drop(state);
            if let Some(set) = due.set.upgrade() {
                // The registry catches a result's `Drop` that panics; this is for a bug of
                // ours, so that the thread, which every set shares, goes on, and the set
                // is let go of, to be held again when its next task finishes.
                let swept = catch_unwind(AssertUnwindSafe(|| schedule_next(&set)));
                if let Err(payload) = swept {
                    set.sweeping.store(false, Ordering::SeqCst);
                    let panic = panic_message(payload);
                    tracing::error!(
                        %panic,
                        "the task sweeper panicked; the set it swept is let go of until its \
                         next task finishes"
                    );
                }
            }
            state = self.lock();
        }
    }
}

// The earliest first: `BinaryHeap` is a max-heap.
impl Ord for Due {
    fn cmp(&self, other: &Self) -> By {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<By> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}
