//! Says when a future the crate runs for the user blocks its runtime thread.
//!
//! A future run by `ensure_sync`, or an async background task, that calls blocking code
//! (`std::thread::sleep`, a sync client, a long computation) holds its runtime thread for
//! as long: every connection and task on that thread waits, and on a small machine the
//! whole server stalls. Nothing fails, so nothing would be said. The one thing the crate
//! can see is how long each poll took; a poll this long is always blocking code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A poll at least this long is said. Far above any poll that does not block (tens of
/// microseconds), and below what a client notices as a stalled server.
pub(crate) const LONG_POLL: Duration = Duration::from_millis(100);

pin_project_lite::pin_project! {
    /// `future`, with each of its polls timed; `what` names it in the warning.
    pub(crate) struct PollTimed<F> {
        #[pin]
        future: F,
        what: &'static str,
    }
}

impl<F> PollTimed<F> {
    pub(crate) fn new(future: F, what: &'static str) -> Self {
        PollTimed { future, what }
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
            said_blocked(took, this.what);
        }
        polled
    }
}

/// Not throttled, as a handler's own errors are not: each is a bug to see, and a thread
/// can say it at most ten times a second.
#[cold]
fn said_blocked(took: Duration, what: &str) {
    tracing::warn!(
        took_ms = took.as_millis() as u64,
        "{what} held its runtime thread that long in one poll: blocking code in async code \
         (move it into ensure_async); every connection and task on that thread waited"
    );
}
