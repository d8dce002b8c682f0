//! A pool thread's life: it runs jobs while there are any, then parks up to its keep-alive.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::{Inner, Job, State, Wake};

thread_local! {
    /// The pool this thread works for, and whether its current job has already
    /// announced that it is finishing (see [`job_finishing`]).
    static WORKER: RefCell<Option<Arc<Inner>>> = const { RefCell::new(None) };
    static FINISHING: Cell<bool> = const { Cell::new(false) };
}

/// Called by a job on a pool thread right before it hands its result back: the thread
/// counts as searching from now on, so the next submit (which the result may trigger at
/// once, e.g. the next request on a keep-alive connection) finds it instead of waking
/// or spawning another thread. Does nothing off a pool thread.
pub(crate) fn job_finishing() {
    WORKER.with(|worker| {
        if let Some(inner) = &*worker.borrow() {
            if !FINISHING.get() {
                FINISHING.set(true);
                let mut state = inner.lock();
                state.running -= 1;
                state.searching += 1;
                inner.unlock(state);
            }
        }
    });
}

/// A parked pool thread's own place to wait, so that a submitter wakes the thread it
/// chooses (the one parked last) rather than whichever a shared condvar picks.
#[derive(Default)]
pub(super) struct Parker {
    /// Waited on with the pool's lock.
    pub(super) condvar: Condvar,
    /// Set by the submitter that took this thread off `parked`: tells its wake-up from a
    /// spurious or timed-out one. Read and written under the pool's lock only.
    pub(super) claimed: AtomicBool,
}

impl Inner {
    pub(super) fn spawn_thread(
        self: &Arc<Self>,
        first: Option<Job>,
    ) -> Result<(), (Option<Job>, std::io::Error)> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            if (self.fail_spawns)
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err((first, std::io::Error::other("thread start failed (test)")));
            }
        }
        let inner = self.clone();
        let mut builder = std::thread::Builder::new().name(inner.config.name.clone());
        if let Some(size) = inner.config.stack_size {
            builder = builder.stack_size(size);
        }
        // The job travels inside a slot so that it can be handed back if the spawn fails.
        let slot = Arc::new(Mutex::new(first));
        let thread_slot = slot.clone();
        match builder.spawn(move || {
            let first = thread_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(thread_slot);
            inner.work(first)
        }) {
            Ok(_) => Ok(()),
            Err(err) => Err((slot.lock().unwrap_or_else(|e| e.into_inner()).take(), err)),
        }
    }

    /// A pool thread's life: run jobs while there are any, then park up to `keep_alive`.
    /// It starts either with a job in hand (counted as running) or as a searcher.
    fn work(self: Arc<Self>, first: Option<Job>) {
        // Always, even for 0: the thread may have inherited a pool thread's value.
        crate::sys::set_thread_nice(self.config.nice);
        crate::sys::set_thread_batch(self.config.batch);
        WORKER.with(|worker| *worker.borrow_mut() = Some(self.clone()));
        let parker = Arc::new(Parker::default());
        let mut next = first;
        let mut state = self.lock();
        loop {
            let (job, wake) = match next.take() {
                Some(job) => (job, Wake::Nothing),
                None => match state.queue.pop_front() {
                    Some(job) => {
                        state.searching -= 1;
                        state.running += 1;
                        // More work waiting and nobody else looking: get another thread
                        // on its way, so a handler that blocks long does not hold up
                        // the queue behind it.
                        let wake = if !state.queue.is_empty() && state.searching == 0 {
                            self.claim(&mut state)
                        } else {
                            Wake::Nothing
                        };
                        (job, wake)
                    }
                    None => {
                        let (guard, again) = self.park(state, &parker);
                        state = guard;
                        if !again {
                            break;
                        }
                        continue;
                    }
                },
            };
            drop(state);
            let _ = self.act(wake);
            FINISHING.set(false);
            // Jobs guard user code themselves; this catches what slips past (a panicking
            // `Drop` or `Display` of a user type), so the counters stay right and the
            // thread lives on.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job.run())) {
                let panic = crate::error::panic_message(payload);
                tracing::error!(
                    pool = %self.config.name,
                    %panic,
                    "a pool job panicked outside its own guard; the thread goes on"
                );
            }
            state = self.lock();
            if !FINISHING.get() {
                state.running -= 1;
                state.searching += 1;
                if state.wakes_idle_waiters() {
                    // Under the lock, rare as it is (only while someone waits): it only
                    // wakes tasks, and one that runs at once waits for this lock briefly.
                    self.went_idle.notify_waiters();
                }
            }
        }
        state.threads -= 1;
        // The last thread out of a pool gone idle (not shut down): the burst that needed
        // the threads is over.
        let pool_idle = state.threads == 0 && !state.shutdown && self.config.trim_when_idle;
        drop(state);
        WORKER.with(|worker| worker.borrow_mut().take());
        if pool_idle {
            give_back_free_memory(&self.config.name);
        }
    }

    /// Parks a searching thread that found the queue empty, on top of `parked`, waiting
    /// on its own `parker`. Returns true when it should look at the queue again (claimed,
    /// or timed out with work waiting), false when the thread should exit (kept alive
    /// long enough, or shut down).
    fn park<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        parker: &Arc<Parker>,
    ) -> (MutexGuard<'a, State>, bool) {
        state.searching -= 1;
        if state.shutdown {
            return (state, false);
        }
        parker.claimed.store(false, Relaxed);
        state.parked.push(parker.clone());
        // A keep-alive too large for the clock (`Duration::MAX`) means for ever.
        let deadline = Instant::now().checked_add(self.config.keep_alive);
        loop {
            state = match deadline {
                None => parker
                    .condvar
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        unpark(&mut state, parker);
                        if state.queue.is_empty() {
                            return (state, false);
                        }
                        state.searching += 1;
                        return (state, true);
                    }
                    parker
                        .condvar
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            if parker.claimed.load(Relaxed) {
                // A submitter took it off `parked` and counted it searching already.
                return (state, true);
            }
            if state.shutdown {
                unpark(&mut state, parker);
                return (state, false);
            }
        }
    }
}

/// Takes an unclaimed `parker` off `parked`, where a thread that leaves it by itself (its
/// keep-alive over, or a shutdown) still is. The threads that time out are the ones
/// parked longest, near the bottom: found from there.
fn unpark(state: &mut State, parker: &Arc<Parker>) {
    if let Some(at) = state.parked.iter().position(|p| Arc::ptr_eq(p, parker)) {
        state.parked.remove(at);
    }
}

/// Hands the C allocator's free memory back to the OS once a pool has gone idle
/// (`BlockingPoolBuilder::trim_memory_when_idle` says why and what it costs): at most
/// one call at a time in the process, and none within `MIN_TRIM_INTERVAL` of the last
/// (pools whose threads come and go with sparse requests would otherwise trim for each
/// request, a probe found).
fn give_back_free_memory(pool: &str) {
    use std::sync::TryLockError;
    const MIN_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
    /// When the last trim ended. Held for the length of a trim: a pool going idle
    /// meanwhile leaves the trim to the one under way.
    static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

    let mut last = match LAST_TRIM.try_lock() {
        Ok(last) => last,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    if last.is_some_and(|ended| ended.elapsed() < MIN_TRIM_INTERVAL) {
        return;
    }
    let started = Instant::now();
    let released = crate::sys::trim_allocator();
    let took = started.elapsed();
    *last = Some(Instant::now());
    drop(last);
    if released {
        tracing::debug!(
            pool,
            took_us = took.as_micros() as u64,
            "pool idle; the allocator's free memory handed back to the OS"
        );
    }
}
