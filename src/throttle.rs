//! At most one line a second for each kind of refusal (`503`, `413`, `414`, `431`) and
//! each other line a client or a load can set off in floods (a client that leaves, a
//! full queue): a line per request would write megabytes of log a second, on the runtime
//! threads that should be answering. The lines left out are counted in the next line of
//! the same kind (`left_out`: since the last one logged, however long ago); every
//! request still has its access-log line. A handler's own errors and panics are not
//! throttled: each is a bug to see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// How often one kind of refusal is logged at most, in milliseconds.
const EVERY_MS: u64 = 1000;

/// One kind of refusal's warnings: when the next may be logged, and how many were left
/// out since the last.
#[derive(Debug)]
pub(crate) struct Throttle {
    next_ms: AtomicU64,
    left_out: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Throttle {
            next_ms: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` if this one may be logged now; else it
    /// is counted as left out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + EVERY_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Milliseconds since the first refusal the process logged.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_rest_counted_in_the_next() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        // As if the second had passed.
        throttle.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(throttle.admit(), Some(5));
    }
}
