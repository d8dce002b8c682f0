//! What the bundled server knows of one connection, shared by its task and the requests
//! on it: the connection's watchdog (`server::conn`) reads it, the bridge writes it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

/// `Activity::write_blocked_since_ms` when the socket is not full.
const NOT_BLOCKED: u64 = u64::MAX;

/// `Activity::head`'s top bit: a read with no request in flight has returned since the
/// connection task last looked (`head_begun`).
const READ_WHILE_IDLE: u64 = 1 << 63;

/// `Activity::head`'s other bits: milliseconds since `epoch` when the next request's
/// head began to arrive, or `NO_HEAD`.
const STAMP: u64 = !READ_WHILE_IDLE;

/// `Activity::head`'s stamp when no request head is on its way.
const NO_HEAD: u64 = STAMP;

/// In `Activity::cut_off`, beside the `CutOff`: a request cut off with the connection has
/// said so at `warn`.
const CUT_OFF_SAID: u8 = 0x80;

/// What the bundled server knows of one connection: requests in flight, when the last
/// one ended, and whether it speaks HTTP/2; for its keep-alive and header timeouts. And,
/// for its body timeout, whether the client takes what is written to it.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the last request ended (0: the connection's start).
    last_busy_ms: AtomicU64,
    /// In its `STAMP` bits, milliseconds since `epoch` when the next request's head
    /// began to arrive (bytes read with no request in flight), or `NO_HEAD`; 0 at first:
    /// a connection's first request is due from its start. In its `READ_WHILE_IDLE` bit,
    /// whether a read with no request in flight has returned since the connection task
    /// last looked (`head_begun`): the task stamps the head only if it is still
    /// incomplete then, so that a head that comes whole costs no clock read. One word,
    /// so that the task's stamp and a body's clear from another thread (a request body
    /// read after its response: what was read was its bytes) cannot cross: the stamp is
    /// written only if nothing changed since the read was seen.
    head: AtomicU64,
    /// Whether a read with no request in flight has ever returned: for a connection's
    /// first request, due from its start, whether any of its head came (a browser's
    /// unused preconnect sends none).
    head_read: AtomicBool,
    /// Request bodies still read after their response (`bridge::pump`): what is read with
    /// no request in flight is theirs while any is, not a head.
    bodies_after_response: AtomicUsize,
    http2: AtomicBool,
    /// Milliseconds since `epoch` when the connection's writes began to find the socket
    /// full, or `NOT_BLOCKED` (see `server::conn`).
    write_blocked_since_ms: AtomicU64,
    /// The HTTP/2 responses on the connection, each in a slot of its own, with since
    /// when it has waited on the client (see `HeldSlots`).
    held: Mutex<HeldSlots>,
    /// Why the server closed the connection itself, if it did (a `CutOff` as a byte, 0
    /// when not), so that a request dropped with it is not blamed on its client.
    cut_off: AtomicU8,
    /// Whether a response body on it broke off (its producer failed): an HTTP/1
    /// connection then ends in a reset, not a close that could pass for the body's end.
    aborted: AtomicBool,
    /// Whether a request on it came with a body: the server may then close it while its
    /// client still sends a body nobody read (an early `413`, a handler that did not
    /// read it), and closes it in stages (`server::linger`).
    had_request_body: AtomicBool,
    /// Set by an HTTP/1 streamed response's producer thread when the stream timeout
    /// aborts it: the connection task then closes the connection at once (with a reset
    /// over TCP on Linux), not once the client has taken what hyper and the socket still
    /// hold of it (which a slow reader takes minutes over).
    abort_wanted: AtomicBool,
    /// The connection task's waker, registered when it changes: what `abort_now` wakes.
    task: Mutex<Option<Waker>>,
    epoch: Instant,
}

/// HTTP/2 responses not polled yet, or whose last poll handed hyper a frame
/// (`body::bridge::Http2Flow`): hyper holds such a frame until the client's flow-control
/// window has room for it, so these wait on the client, not on their handler or
/// producer. Each response has a slot, holding the millisecond (since `epoch`) its wait
/// began, or `NOT_HELD`: the watchdog cuts the connection off when any one response has
/// waited for the body timeout, whatever the others do (one stream that moves must not
/// keep a hundred others, and their memory, held for ever). As many slots as streams
/// were ever open at once, which hyper bounds (`max_concurrent_streams`).
#[derive(Debug, Default)]
struct HeldSlots {
    since_ms: Vec<u64>,
    free: Vec<usize>,
}

/// Why the server closed a connection with requests on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CutOff {
    /// The shutdown deadline, or a second signal.
    Shutdown = 1,
    /// Its client held back a response for the body timeout (and, on HTTP/2, one more
    /// after the GOAWAY that followed).
    StalledClient = 2,
}

/// A `HeldSlots` slot whose response does not wait on the client.
const NOT_HELD: u64 = u64::MAX;

impl Activity {
    /// A connection's, from `accepted`, when it was accepted: its first request is due a
    /// header read timeout after that, time spent on a PROXY protocol header included.
    pub(crate) fn new(accepted: Instant) -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_busy_ms: AtomicU64::new(0),
            head: AtomicU64::new(0),
            head_read: AtomicBool::new(false),
            bodies_after_response: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            write_blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            held: Mutex::new(HeldSlots::default()),
            cut_off: AtomicU8::new(0),
            aborted: AtomicBool::new(false),
            had_request_body: AtomicBool::new(false),
            abort_wanted: AtomicBool::new(false),
            task: Mutex::new(None),
            epoch: accepted,
        }
    }

    // No clock read here: `idle_for` is zero while a request is in flight anyway.
    pub(crate) fn request_started(&self, version: http::Version) {
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        // The head read with no request in flight was this one's, even if the request is
        // done again before the connection task looks (hyper may write a quick response
        // in the same poll).
        self.head.store(NO_HEAD, Ordering::Relaxed);
    }

    pub(crate) fn request_done(&self) {
        self.touch();
        // Release: whoever sees the count drop also sees the time above.
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts the connection busy, as a request in flight does, until the guard drops.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Counts the connection as busy until now.
    pub(crate) fn touch(&self) {
        self.last_busy_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Counts the connection as busy until now, with a request body read on after its
    /// response: what is read meanwhile is that body, not the next request's head.
    pub(crate) fn body_moved(&self) {
        self.touch();
        // The stamp cleared, a read seen or not: its bits all set are `NO_HEAD`.
        self.head.fetch_or(STAMP, Ordering::Relaxed);
    }

    /// Records whether the last write found the socket full. The clock is read only when
    /// that changes: when the socket fills, and when the client takes some of it again,
    /// which counts as activity for the idle timeouts.
    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        // Plain loads and stores: the connection task is the only writer and reader.
        let was_blocked = self.write_blocked_since_ms.load(Ordering::Relaxed) != NOT_BLOCKED;
        if blocked && !was_blocked {
            self.write_blocked_since_ms
                .store(self.now_ms(), Ordering::Relaxed);
        } else if !blocked && was_blocked {
            self.write_blocked_since_ms
                .store(NOT_BLOCKED, Ordering::Relaxed);
            self.touch();
        }
    }

    /// How long the socket has been full without the client taking any of it, if it is.
    pub(crate) fn write_blocked_for(&self) -> Option<Duration> {
        let since = self.write_blocked_since_ms.load(Ordering::Relaxed);
        (since != NOT_BLOCKED).then(|| self.since(since))
    }

    /// Marks the connection as closed by the server, before it drops its requests.
    pub(crate) fn cut_off(&self, why: CutOff) {
        self.cut_off.store(why as u8, Ordering::Relaxed);
    }

    /// Why the server closed the connection itself, if it did.
    pub(crate) fn cut_off_by(&self) -> Option<CutOff> {
        match self.cut_off.load(Ordering::Relaxed) & !CUT_OFF_SAID {
            1 => Some(CutOff::Shutdown),
            2 => Some(CutOff::StalledClient),
            _ => None,
        }
    }

    /// True for the first request of the connection to ask: the one whose cut-off is
    /// said at `warn`. A client can hold back a hundred HTTP/2 responses on each of its
    /// connections; their closes are said once each, and so, at `warn`, is one request of
    /// each.
    pub(crate) fn first_to_say_cut_off(&self) -> bool {
        self.cut_off.fetch_or(CUT_OFF_SAID, Ordering::Relaxed) & CUT_OFF_SAID == 0
    }

    /// Marks a response body on the connection as broken off.
    pub(crate) fn response_aborted(&self) {
        self.aborted.store(true, Ordering::Relaxed);
    }

    /// Whether a response body on the connection broke off.
    pub(crate) fn has_aborted_response(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    /// Asks the connection task to close the (HTTP/1) connection now, with a reset: a
    /// streamed response on it was aborted for the stream timeout. Called from the
    /// producer's thread.
    pub(crate) fn abort_now(&self) {
        self.response_aborted();
        // Set before the waker is looked at, and read by the task after it registered
        // its waker (under the same lock): one of the two sees the other.
        self.abort_wanted.store(true, Ordering::SeqCst);
        // No code that can panic runs under the lock.
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Registers the connection task's waker for `abort_now`; call when it changes.
    pub(crate) fn register_task(&self, waker: &Waker) {
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }

    /// Whether `abort_now` was called.
    pub(crate) fn abort_wanted(&self) -> bool {
        self.abort_wanted.load(Ordering::SeqCst)
    }

    /// Marks the connection as one that carried a request body.
    pub(crate) fn request_body_seen(&self) {
        self.had_request_body.store(true, Ordering::Relaxed);
    }

    /// Whether a request on the connection came with a body.
    pub(crate) fn had_request_body(&self) -> bool {
        self.had_request_body.load(Ordering::Relaxed)
    }

    /// Whether the server closed the connection itself.
    pub(crate) fn is_cut_off(&self) -> bool {
        self.cut_off_by().is_some()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether a request on this connection came over HTTP/2.
    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Notes a read of the connection's socket that returned something (bytes, or its
    /// end): with no request in flight, the next request's head may have begun.
    pub(crate) fn read_returned(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head.fetch_or(READ_WHILE_IDLE, Ordering::Relaxed);
        }
    }

    /// Called by the connection task after each poll of hyper's connection: whether a
    /// request head began to arrive since the last call and is still incomplete (no
    /// request in flight), in which case its time counts from now.
    pub(crate) fn head_begun(&self) -> bool {
        self.head_begun_with(|| {})
    }

    /// `head_begun`, with `meanwhile` run between its look and its stamp: where a body
    /// read after its response may clear both from another thread (its tests).
    fn head_begun_with(&self, meanwhile: impl FnOnce()) -> bool {
        // Only the connection task sets the stamp. A body read on after its response
        // clears it (`body_moved`, `BodyAfterResponse`, the pump's task), and with its
        // end the read seen: then what was read was the body's, and a stamp written
        // after that clear would stand, and answer `408` on a connection that is only
        // idle. So the stamp replaces the very word looked at, or nothing.
        let mut seen = self.head.load(Ordering::Relaxed);
        let mut meanwhile = Some(meanwhile);
        loop {
            if seen & READ_WHILE_IDLE == 0 {
                return false;
            }
            let stamp = seen & STAMP;
            let idle = self.in_flight() == 0;
            let (new, stamped) = if !idle || stamp != NO_HEAD {
                (stamp, false)
            } else {
                // Never 0, which stands for the connection's start (its first request).
                (self.now_ms().max(1), true)
            };
            if let Some(meanwhile) = meanwhile.take() {
                meanwhile();
            }
            match self
                .head
                .compare_exchange(seen, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if idle {
                        self.head_read.store(true, Ordering::Relaxed);
                    }
                    return stamped;
                }
                Err(now) => seen = now,
            }
        }
    }

    /// How long the request head on its way has been arriving (since the connection's
    /// start, for its first), if one is.
    pub(crate) fn head_arriving_for(&self) -> Option<Duration> {
        let since = self.head.load(Ordering::Relaxed) & STAMP;
        (since != NO_HEAD).then(|| self.since(since))
    }

    /// Whether part of a request head is on its way: a head began to arrive
    /// (`head_arriving_for`) and bytes for it were read, not a request body read after
    /// its response. What the header read timeout may answer `408`.
    pub(crate) fn partial_head(&self) -> Option<PartialHead> {
        // Acquire: a body's end seen here comes with its clear of the stamp (its drop).
        if self.is_http2() || self.bodies_after_response.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head.load(Ordering::Relaxed) & STAMP {
            NO_HEAD => None,
            // Due from the connection's start: something came only if a read returned.
            0 => self
                .head_read
                .load(Ordering::Relaxed)
                .then_some(PartialHead::First),
            // Stamped at its first byte, after a request: HTTP/1.
            _ => Some(PartialHead::Http1),
        }
    }

    /// Counts a request body as read after its response until the guard drops.
    pub(crate) fn body_after_response(self: &Arc<Self>) -> BodyAfterResponse {
        self.bodies_after_response.fetch_add(1, Ordering::Relaxed);
        BodyAfterResponse(self.clone())
    }

    /// How long the connection has had no request in flight; zero while one is.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        self.since(self.last_busy_ms.load(Ordering::Relaxed))
    }

    /// Gives an HTTP/2 response a slot among those that may wait on the client's window,
    /// as waiting from now (it has not been polled yet).
    pub(crate) fn watch_held(&self) -> usize {
        let now = self.now_ms();
        let mut held = self.held();
        match held.free.pop() {
            Some(slot) => {
                held.since_ms[slot] = now;
                slot
            }
            None => {
                held.since_ms.push(now);
                held.since_ms.len() - 1
            }
        }
    }

    /// Records that the response in `slot` waits on the client from now (its last poll
    /// handed hyper a frame), or does not (it waits on its producer).
    pub(crate) fn set_held(&self, slot: usize, held: bool) {
        let since = if held { self.now_ms() } else { NOT_HELD };
        if let Some(entry) = self.held().since_ms.get_mut(slot) {
            *entry = since;
        }
    }

    /// Frees the slot of a response that is done.
    pub(crate) fn unwatch_held(&self, slot: usize) {
        let mut held = self.held();
        if let Some(entry) = held.since_ms.get_mut(slot) {
            *entry = NOT_HELD;
            held.free.push(slot);
        }
    }

    /// How long the HTTP/2 response that has waited longest on the client has waited,
    /// if any waits.
    pub(crate) fn longest_held(&self) -> Option<Duration> {
        let oldest = self
            .held()
            .since_ms
            .iter()
            .copied()
            .filter(|&since| since != NOT_HELD)
            .min()?;
        Some(self.since(oldest))
    }

    fn held(&self) -> MutexGuard<'_, HeldSlots> {
        // No code that can panic runs under the lock.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection's clock: milliseconds since `epoch`, what the stamps hold.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How long ago a stamp of `now_ms` was (zero for one in the future).
    fn since(&self, stamp_ms: u64) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(stamp_ms))
    }
}

/// The connection counts as busy while this lives (`Activity::busy`), and its idle time
/// counts from when it drops.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// What came of a request head on its way (`Activity::partial_head`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PartialHead {
    /// Part of an HTTP/1 head, after an earlier request.
    Http1,
    /// Bytes before the connection's first request: part of an HTTP/1 head, or HTTP/2's
    /// preface, whose server then speaks at once.
    First,
}

/// A request body read after its response (`Activity::body_after_response`), until this
/// drops.
#[derive(Debug)]
pub(crate) struct BodyAfterResponse(Arc<Activity>);

impl Drop for BodyAfterResponse {
    fn drop(&mut self) {
        // What its reads stamped (a drain's deadline, `head_begun`), or would have, was
        // the body's, not a head's: left, it would answer `408` on a connection that is
        // only idle.
        self.0.head.store(NO_HEAD, Ordering::Relaxed);
        // Release: whoever sees it gone sees the clear above (`partial_head`).
        self.0.bodies_after_response.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_seen_then_cleared_by_a_body_ending_stamps_no_head() {
        let activity = Arc::new(Activity::new(Instant::now()));
        // A request, answered; its body is read on after the response.
        activity.request_started(http::Version::HTTP_11);
        let body = activity.body_after_response();
        activity.request_done();
        // The connection reads the body's last bytes, with no request in flight.
        activity.read_returned();
        // The connection task looks; meanwhile the body ends on the pump's thread.
        let stamped = activity.head_begun_with(|| drop(body));
        assert!(!stamped);
        assert_eq!(activity.head_arriving_for(), None);
        assert_eq!(activity.partial_head(), None);
    }

    #[test]
    fn a_read_with_no_request_in_flight_stamps_the_next_head() {
        let activity = Arc::new(Activity::new(Instant::now()));
        activity.request_started(http::Version::HTTP_11);
        activity.request_done();
        assert!(!activity.head_begun(), "nothing read");
        activity.read_returned();
        assert!(activity.head_begun());
        assert_eq!(activity.partial_head(), Some(PartialHead::Http1));
        // Looked at once: the stamp stands, and is not made again (a stamp an hour on, so
        // that one made again now would differ).
        activity.head.store(3_600_000, Ordering::Relaxed);
        activity.read_returned();
        assert!(!activity.head_begun());
        assert_eq!(activity.head.load(Ordering::Relaxed), 3_600_000);
        // The head came whole: its request clears it.
        activity.request_started(http::Version::HTTP_11);
        assert_eq!(activity.head_arriving_for(), None);
    }

    #[test]
    fn a_body_moving_clears_the_stamp_but_not_a_read_seen() {
        let activity = Arc::new(Activity::new(Instant::now()));
        activity.request_started(http::Version::HTTP_11);
        let _body = activity.body_after_response();
        activity.request_done();
        activity.read_returned();
        assert!(
            activity.head_begun(),
            "the body's bytes stamp, until it moves"
        );
        activity.read_returned();
        activity.body_moved();
        assert_eq!(activity.head_arriving_for(), None);
        assert!(activity.head_begun(), "the read is still seen");
    }
}
