//! Says when a future the crate runs for the user holds its runtime thread too long.
//!
//! A future run by `ensure_sync`, or an async background task, that calls blocking code
//! (`std::thread::sleep`, a sync client, a long computation) holds its runtime thread for
//! as long: every connection and task on that thread waits, and on a small machine the
//! whole server stalls. Nothing fails, so nothing would be said. The one thing the crate
//! can see is how long each poll took. A poll this long is almost always blocking code;
//! the rest is a machine so overloaded that the thread did not run for that long, or a
//! `block_in_place`, which hands the thread's other work off first.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A poll at least this long is said. Far above any poll that does not block (tens of
/// microseconds), and below what a client notices as a stalled server.
pub(crate) const LONG_POLL: Duration = Duration::from_millis(100);

/// Whose future it is: it says what the line names, and where the blocking code belongs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Runs {
    /// The future a handler passed to `ensure_sync`.
    EnsureSync,
    /// The future an async background task's closure made.
    AsyncTask,
}

pin_project_lite::pin_project! {
    /// `future`, with each of its polls timed. Polled on any executor; a long poll is
    /// said on the polling thread, in the span current there.
    pub(crate) struct PollTimed<F> {
        #[pin]
        future: F,
        runs: Runs,
    }
}

impl<F> PollTimed<F> {
    /// Callable anywhere; it only wraps `future`.
    pub(crate) fn new(future: F, runs: Runs) -> Self {
        PollTimed { future, runs }
    }
}

impl<F: Future> Future for PollTimed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let start = Instant::now();
        let polled = this.future.poll(cx);
        let took = start.elapsed();
        if took >= LONG_POLL {
            said_blocked(took, *this.runs);
        }
        polled
    }
}

/// Not throttled, as a handler's own errors are not: each is a bug to see, and a thread
/// can say it at most ten times a second.
#[cold]
fn said_blocked(took: Duration, runs: Runs) {
    let took_ms = took.as_millis() as u64;
    match runs {
        Runs::EnsureSync => tracing::warn!(
            took_ms,
            "a future run by ensure_sync held its runtime thread that long in one poll: \
             blocking code in async code (keep it in the handler, or use ensure_async); the \
             connections and tasks on that thread waited"
        ),
        Runs::AsyncTask => tracing::warn!(
            took_ms,
            "an async background task held its runtime thread that long in one poll: \
             blocking code in async code (make it a spawn_blocking task); the connections \
             and tasks on that thread waited"
        ),
    }
}
