//! Timers for bounded waits, in a runtime that may have been built without them.
//!
//! tokio panics where a `Sleep` is made in a runtime without a time driver (built
//! without `enable_time`). A wait the crate bounds with a timer (a queued request, a
//! queued `ensure_async` closure, a background task's timeout or retry) checks first, so
//! that such a runtime gets a clear error instead of a panic from inside tokio; a drain's
//! deadline, which must end, falls back to a thread that sleeps.
//!
//! tokio has no way to ask whether a runtime has timers, so the check makes a `Sleep`
//! under `catch_unwind`. On a runtime without them, the process's panic hook therefore
//! sees (and by default prints) tokio's "timers are disabled" panic once per check,
//! before the crate's own error; under `panic = "abort"` the check aborts, as the wait
//! itself would have. A runtime with timers never panics here.

use std::panic::catch_unwind;
use std::pin::Pin;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::throttle::Throttle;

/// Whether a runtime has timers, asked once for the first runtime it is asked about and
/// kept with that runtime's id; any other runtime is asked afresh each time. One service
/// or task set may be driven by several runtimes, with timers or without.
#[derive(Debug, Default)]
pub(crate) struct TimersKnown(OnceLock<(Id, bool)>);

impl TimersKnown {
    /// Whether `runtime` has timers, and whether this call asked (nothing was known).
    fn of(&self, runtime: &Handle) -> (bool, bool) {
        let id = runtime.id();
        if let Some(&(first, enabled)) = self.0.get() {
            if first == id {
                return (enabled, false);
            }
            return (has_timers(runtime), true);
        }
        let enabled = has_timers(runtime);
        let _ = self.0.set((id, enabled));
        (enabled, true)
    }

    /// As [`has_timers`], kept for `runtime` if it is the first asked about.
    pub(crate) fn has_timers(&self, runtime: &Handle) -> bool {
        self.of(runtime).0
    }
}

/// A sleep of `after` on the current runtime, or `None` when it has no timers or there is
/// no runtime (both logged at error level). `known` keeps the answer where the caller has
/// a place for it; without one every call checks, which costs only a misconfigured
/// runtime (tokio prints its panic message each time). A call outside any runtime is
/// not kept: it says nothing about the runtime the next call comes from.
pub(crate) fn sleep(after: Duration, known: Option<&TimersKnown>) -> Option<Pin<Box<Sleep>>> {
    let Ok(current) = Handle::try_current() else {
        tracing::error!(
            "a wait that needs a tokio timer was started outside any tokio runtime (call a \
             `SyncService` from inside one); refused at once"
        );
        return None;
    };
    let (enabled, asked) = match known {
        Some(known) => known.of(&current),
        None => (has_timers(&current), true),
    };
    if !enabled && asked {
        // Asked afresh for every wait on a runtime other than the one kept: throttled.
        static NO_TIMERS: Throttle = Throttle::new();
        if let Some(left_out) = NO_TIMERS.admit() {
            tracing::error!(
                left_out,
                "the tokio runtime has no timers (build it with `enable_time` or \
                 `enable_all`): work that finds every pool thread busy is refused at once \
                 instead of waiting, a streamed response's head is not held for its first \
                 bytes, and no handler timeout applies"
            );
        }
    }
    enabled.then(|| Box::pin(tokio::time::sleep(after)))
}

/// Whether `handle`'s runtime has timers, without logging. Callable from anywhere.
pub(crate) fn has_timers(handle: &Handle) -> bool {
    let _entered = handle.enter();
    probe()
}

/// Completes after `after`, in any runtime: on tokio's timer where the current runtime
/// has one, else on a plain thread of its own that sleeps. Meant for a rare wait that
/// must end (a drain's deadline), not for one per request. Call only inside a tokio
/// runtime. Dropped early, it ends its thread too, rather than leave it asleep until
/// `after` (`Duration::MAX` for a wait that should only end otherwise).
pub(crate) async fn sleep_anywhere(after: Duration) {
    if probe() {
        return tokio::time::sleep(after).await;
    }
    let Some(mut deadline) = DeadlineThread::start(after) else {
        // No way to wait: the deadline counts as passed, which ends the wait early
        // rather than never.
        return;
    };
    let _ = (&mut deadline.passed).await;
}

/// A plain thread that stands in for a timer: it says when `after` has passed, and ends
/// as soon as its owner drops this, whichever comes first.
struct DeadlineThread {
    passed: oneshot::Receiver<()>,
    /// Dropped with this: the thread's wait ends at once, and so does the thread.
    _cancel: mpsc::Sender<()>,
    #[cfg(test)]
    thread: std::thread::JoinHandle<()>,
}

impl DeadlineThread {
    /// `None`, logged, when the thread cannot start.
    fn start(after: Duration) -> Option<Self> {
        let (done, passed) = oneshot::channel::<()>();
        let (cancel, cancelled) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("syncbridge-timer".into())
            .spawn(move || {
                // Nothing is ever sent: the wait ends at `after`, or when the owner drops
                // its sender. A deadline past the clock's range waits for the drop alone.
                if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(after) {
                    let _ = done.send(());
                }
            });
        match spawned {
            Ok(_thread) => Some(Self {
                passed,
                _cancel: cancel,
                #[cfg(test)]
                thread: _thread,
            }),
            Err(err) => {
                tracing::error!(error = %err, "could not start a timer thread; the wait ends at once");
                None
            }
        }
    }
}

fn probe() -> bool {
    // Outside any runtime there is no timer either; asking tokio would print its panic.
    Handle::try_current().is_ok()
        && catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::DeadlineThread;

    /// Joins `thread` within `within`, or fails the test.
    fn joined_within(thread: std::thread::JoinHandle<()>, within: Duration) {
        let (joined_tx, joined) = mpsc::channel();
        std::thread::spawn(move || joined_tx.send(thread.join()).unwrap());
        let joined = joined
            .recv_timeout(within)
            .expect("the timer thread is still asleep");
        joined.expect("the timer thread panicked");
    }

    #[test]
    fn a_deadline_thread_says_when_its_time_has_passed() {
        let deadline = DeadlineThread::start(Duration::from_millis(10)).unwrap();
        let DeadlineThread { passed, thread, .. } = deadline;
        assert_eq!(passed.blocking_recv(), Ok(()));
        joined_within(thread, Duration::from_secs(5));
    }

    #[test]
    fn a_deadline_thread_ends_when_its_owner_drops_it() {
        for after in [Duration::from_secs(3600), Duration::MAX] {
            let deadline = DeadlineThread::start(after).unwrap();
            let DeadlineThread {
                passed,
                _cancel,
                thread,
            } = deadline;
            drop((passed, _cancel));
            joined_within(thread, Duration::from_secs(5));
        }
    }
}
