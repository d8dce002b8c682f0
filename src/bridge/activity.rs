//! What the bundled server knows of one connection, shared by its task and the requests
//! on it: the connection's watchdog (`server::conn`) reads it, the bridge writes it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `Activity::write_blocked_since_ms` when the socket is not full.
const NOT_BLOCKED: u64 = u64::MAX;

/// What the bundled server knows of one connection: requests in flight, when the last
/// one ended, and whether it speaks HTTP/2; for its keep-alive and header timeouts. And,
/// for its body timeout, whether the client takes what is written to it.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the last request ended (0: the connection's start).
    last_busy_ms: AtomicU64,
    http2: AtomicBool,
    /// Milliseconds since `epoch` when the connection's writes began to find the socket
    /// full, or `NOT_BLOCKED` (see `server::conn`).
    write_blocked_since_ms: AtomicU64,
    /// HTTP/2 responses not polled yet, or whose last poll handed hyper a frame
    /// (`body::bridge::Http2Flow`): hyper holds such a frame until the client's
    /// flow-control window has room, so these may wait on the client, not on their
    /// handler or producer.
    held_responses: AtomicUsize,
    /// How many frames hyper has taken from HTTP/2 response bodies: whether any of them
    /// moved since the watchdog last looked.
    frames_taken: AtomicU64,
    epoch: Instant,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_busy_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            write_blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            held_responses: AtomicUsize::new(0),
            frames_taken: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    // No clock read here: `idle_for` is zero while a request is in flight anyway.
    pub(crate) fn request_started(&self, version: http::Version) {
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn request_done(&self) {
        self.touch();
        // Release: whoever sees the count drop also sees the time above.
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts the connection as busy until now.
    pub(crate) fn touch(&self) {
        self.last_busy_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Records whether the last write found the socket full. The clock is read only when
    /// that changes: when the socket fills, and when the client takes some of it again,
    /// which counts as activity for the idle timeouts.
    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        // Plain loads and stores: the connection task is the only writer and reader.
        let was_blocked = self.write_blocked_since_ms.load(Ordering::Relaxed) != NOT_BLOCKED;
        if blocked && !was_blocked {
            self.write_blocked_since_ms
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        } else if !blocked && was_blocked {
            self.write_blocked_since_ms
                .store(NOT_BLOCKED, Ordering::Relaxed);
            self.touch();
        }
    }

    /// How long the socket has been full without the client taking any of it, if it is.
    pub(crate) fn write_blocked_for(&self) -> Option<Duration> {
        let since = self.write_blocked_since_ms.load(Ordering::Relaxed);
        (since != NOT_BLOCKED).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(since))
        })
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether a request on this connection came over HTTP/2.
    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request in flight; zero while one is.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_busy_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Counts an HTTP/2 response in or out of those waiting for the client's window.
    pub(crate) fn set_held(&self, held: bool) {
        if held {
            self.held_responses.fetch_add(1, Ordering::Relaxed);
        } else {
            self.held_responses.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Records that hyper polled an HTTP/2 response body: the client's window had room
    /// for the frame before.
    pub(crate) fn frame_taken(&self) {
        // Bodies are polled by hyper's per-stream tasks, on any runtime thread.
        self.frames_taken.fetch_add(1, Ordering::Relaxed);
    }

    /// How many HTTP/2 responses wait for their client's window, and how many frames
    /// all of them have had taken so far.
    pub(crate) fn held_responses(&self) -> (usize, u64) {
        (
            self.held_responses.load(Ordering::Relaxed),
            self.frames_taken.load(Ordering::Relaxed),
        )
    }
}
