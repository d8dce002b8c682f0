//! Finished entries dropped at their TTL while nobody uses the set. Spawns and lookups
//! expire entries too, but after a burst and then silence, up to `max_entries` results
//! (each as large as its task made it) would stay in memory until the set was used again.
//!
//! At most one sweeper per set, a task on the runtime its tasks finish on, asleep until
//! the oldest finished entry's TTL ends. It ends once no finished entry is left, and the
//! next task to finish starts another: an idle set has no task and no timer. It holds the
//! set weakly, so a set nobody else holds is not kept for a TTL by its sweeper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::runtime::Handle;

use super::set::{Shared, TaskSet};

/// Starts the set's sweeper, unless one runs. Called by a task's supervisor once its
/// entry is final, on the task's runtime. A runtime without timers gets none: its
/// entries expire at the next spawn or lookup, as before.
pub(super) fn sweep_later(set: &TaskSet) {
    let shared = &set.shared;
    if shared.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    // Dropped unless the sweeper takes it: the flag is then free again.
    let owner = Sweeping {
        flag: shared.sweeping.clone(),
        held: true,
    };
    let Ok(runtime) = Handle::try_current() else {
        return;
    };
    if shared.timers.has_timers(&runtime) {
        runtime.spawn(sweep(Arc::downgrade(shared), owner));
    }
}

async fn sweep(set: Weak<Shared>, mut owner: Sweeping) {
    loop {
        let wait = {
            let Some(shared) = set.upgrade() else {
                return;
            };
            match shared.backend.sweep() {
                Some(wait) => wait,
                None => {
                    owner.release();
                    // A task that finished after that sweep, and before the release, found
                    // the flag still set and left its entry to this sweeper: one more look
                    // (the registry's lock orders the two).
                    if shared.backend.sweep().is_none() || !owner.retake() {
                        return;
                    }
                    continue;
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The set's "a sweeper runs" flag, held by the sweeper: cleared when it ends, however it
/// ends (a runtime shut down drops it asleep), so that the next finished task starts
/// another.
struct Sweeping {
    flag: Arc<AtomicBool>,
    held: bool,
}

impl Sweeping {
    fn release(&mut self) {
        self.held = false;
        self.flag.store(false, Ordering::SeqCst);
    }

    /// Takes the flag back, unless another sweeper has it now.
    fn retake(&mut self) -> bool {
        self.held = !self.flag.swap(true, Ordering::SeqCst);
        self.held
    }
}

impl Drop for Sweeping {
    fn drop(&mut self) {
        if self.held {
            self.flag.store(false, Ordering::SeqCst);
        }
    }
}
