//! A bounded channel of body chunks with a blocking end and an async end.
//!
//! Both body directions cross the sync/async line through it: request chunks go from the
//! connection task (async `poll_ready` + `send`) to the handler thread (`blocking_recv`),
//! response chunks from the producer thread (`blocking_send`) to hyper
//! (`poll_recv_at_most`). At most `max_bytes` of chunks are in flight, so a slow side
//! slows the other one down.
//!
//! A blocking end waits for the other side at most `stall_limit` at a time: a client that
//! stops sending its body, or stops reading the response, would otherwise hold a pool
//! thread for as long as it keeps the connection open. A blocked receiver must get at
//! least `MIN_PROGRESS` bytes per limit, not just a byte: a body sent at a trickle holds a
//! thread as surely as one that stopped.
//!
//! The end of a stream is explicit: a sender dropped without [`Sender::finish`] (a panic
//! while producing, a cancelled pump) ends the stream with an error, never with a clean
//! EOF, so a truncated body is never mistaken for a complete one.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Creates a channel that holds at most `max_bytes` of chunks. A chunk is always taken
/// when the channel is empty, so one chunk larger than the bound still passes. A blocking
/// end waits at most `stall_limit` for the other side to move (`None`: for ever).
pub(crate) fn channel(max_bytes: usize, stall_limit: Option<Duration>) -> (Sender, Receiver) {
    channel_until(max_bytes, stall_limit, None)
}

/// [`channel`], whose sender's blocking sends fail with [`SendError::Expired`] from
/// `end_by` on (a streamed response's stream timeout), waiting for room or not.
pub(crate) fn channel_until(
    max_bytes: usize,
    stall_limit: Option<Duration>,
    end_by: Option<Instant>,
) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        stall_limit,
        end_by,
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(8),
            queued_bytes: 0,
            max_bytes: max_bytes.max(1),
            end: End::Open,
            recv_waker: None,
            send_waker: None,
            blocked_receiver: false,
            blocked_sender: false,
            taken: 0,
            taken_bytes: 0,
            recv_window: None,
            fault_handed: false,
            asked: false,
            expired: false,
            head: Head::Sent,
        }),
        condvar: Condvar::new(),
        receiver_gone: AtomicBool::new(false),
    });
    (
        Sender {
            shared: shared.clone(),
            finished: false,
        },
        Receiver { shared },
    )
}

/// The most chunks queued at once, whatever their size.
const MAX_QUEUED_CHUNKS: usize = 64;

/// The least a blocked receiver must get per stall limit: about 270 bytes a second at the
/// default 30 s (ASP.NET Core's Kestrel asks 240). Less, from a client that sends a byte
/// now and then, fails the body as a stalled one does.
pub(crate) const MIN_PROGRESS: u64 = 8 * 1024;

struct Shared {
    stall_limit: Option<Duration>,
    /// When a blocking send starts to fail, whatever the receiver does (`channel_until`).
    end_by: Option<Instant>,
    state: Mutex<State>,
    // One condvar serves both blocking ends: only one end of a channel ever blocks.
    condvar: Condvar,
    /// Whether the receiver was dropped. Set under the state's lock, so a thread that
    /// holds the lock sees it as part of the state; read without the lock too, by a
    /// writer that gathers small writes and asks at each one.
    receiver_gone: AtomicBool,
}

struct State {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    max_bytes: usize,
    end: End,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
    // Whether a thread waits on the condvar and has not been notified since: a notify
    // without a waiter, or a second one before the waiter runs, is a wasted syscall.
    blocked_receiver: bool,
    blocked_sender: bool,
    /// How many pieces the receiver has taken: a sender waiting for room knows the
    /// receiver still moves, if slowly (one large chunk, taken in pieces).
    taken: u64,
    /// How many bytes the receiver has taken in all.
    taken_bytes: u64,
    /// Open from the receiver's first wait until it has taken `MIN_PROGRESS` more bytes:
    /// how many it had taken then, and how much of the stall limit its waits have left
    /// (`None`: no limit). Only time spent waiting counts: a handler slow with what it
    /// has is not its client stalling.
    recv_window: Option<(u64, Option<Duration>)>,
    /// Whether the receiver has asked for a chunk and found none: a sender that waits for
    /// that (`poll_asked`) learns someone reads.
    asked: bool,
    /// Whether the receiver has been handed the client's failure (`FailedByClient`): its
    /// reader met it, so whatever the reader answered, the client is the cause.
    fault_handed: bool,
    /// Whether a send failed for `end_by`: whatever the producer makes of that failure
    /// (it may swallow it and end cleanly), the stream did not end well.
    expired: bool,
    /// A streamed response's head, held back for the body's first bytes.
    head: Head,
}

/// Where the head of the response a channel carries stands. The head is not in the
/// channel, only its fate: the receiver's side (the service future) holds it back until
/// the body's first bytes, its end, or a grace runs out, so that a producer failing
/// before its first bytes is answered `500` (or `408`, `400` for the client's failure it
/// met) rather than a `200` cut off after its head.
/// Deciding it under the channel's lock settles the race between the grace running out
/// and the producer failing. A request body's channel never holds one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Gone out, or never held.
    Sent,
    Held,
    /// The producer failed before its first bytes while the head was held: the head
    /// never goes out, an error answer does instead.
    FailedUnsent(Unsent),
}

/// How [`Sender::fail_before_head`] ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The head was held and nothing sent: the receiver's side answers the failure in
    /// its place.
    Replaced,
    /// The receiver was there, and meets the failure: the response is aborted.
    Aborted,
    /// The receiver had gone: nobody meets it.
    Unread,
}

/// Why a held head never went out, and so what is answered in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// The producer failed: `500`.
    ProducerFailed,
    /// The client's failure of this kind, which the producer met (a request body that
    /// stalled or broke): answered as a handler's read of it is.
    ByClient(io::ErrorKind),
    /// The stream timeout passed before the first bytes: `504`, as a handler timeout's.
    Expired,
}

/// What the receiver's side does with the head it held (`Receiver::poll_head`, `Receiver::let_head_go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadCall {
    Send,
    /// Answer the failure instead (see [`Unsent`]).
    FailedInstead(Unsent),
}

#[derive(Clone)]
enum End {
    Open,
    Finished,
    Failed(io::ErrorKind, Arc<str>),
    /// Failed by the client's doing: its errors carry [`ByClient`].
    FailedByClient(io::ErrorKind, Arc<str>),
}

/// The source of an error the client caused (it stalled, its connection broke, it sent
/// more than the limit), so that whoever meets it further on, such as a producer echoing
/// the request body, can tell it from a failure of the handler's own I/O.
#[derive(Debug)]
pub(crate) struct ByClient(Arc<str>);

impl fmt::Display for ByClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ByClient {}

impl ByClient {
    pub(crate) fn error(kind: io::ErrorKind, message: impl Into<Arc<str>>) -> io::Error {
        io::Error::new(kind, ByClient(message.into()))
    }

    /// Whether the client caused `err`.
    pub(crate) fn is(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|inner| inner.is::<ByClient>())
    }
}

/// Why a chunk could not be sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The receiver was dropped: nobody will read what is sent.
    Closed,
    /// The receiver took nothing for the channel's stall limit.
    Stalled,
    /// The channel's `end_by` has passed.
    Expired,
}

/// The receiver was dropped: nobody will read what is sent.
#[derive(Debug)]
pub(crate) struct Closed;

/// Whom to wake, decided under the lock and done after it is released: a woken thread
/// often runs at once (on one core it preempts the waker), and if the lock were still
/// held it would only block on it again, costing two more context switches.
#[must_use]
struct Wake {
    waker: Option<Waker>,
    notify: bool,
}

impl Wake {
    const NONE: Wake = Wake {
        waker: None,
        notify: false,
    };

    fn fire(self, condvar: &Condvar) {
        if self.notify {
            condvar.notify_all();
        }
        if let Some(waker) = self.waker {
            waker.wake();
        }
    }
}

impl Shared {
    fn receiver_gone(&self) -> bool {
        self.receiver_gone.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held (no user code runs under it), so
        // a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a notify, or until `deadline`; `Err` with the lock once the deadline has
    /// passed. The deadline is set at the first wait of a call, so the clock is read only
    /// when a thread blocks.
    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: &mut Option<Instant>,
    ) -> Result<MutexGuard<'a, State>, MutexGuard<'a, State>> {
        if let Some(limit) = self.stall_limit {
            if deadline.is_none() {
                // A limit too large for the clock (`Duration::MAX`) means no limit.
                *deadline = Instant::now().checked_add(limit);
            }
        }
        let until = match (*deadline, self.end_by) {
            (Some(stall), Some(end)) => Some(stall.min(end)),
            (stall, end) => stall.or(end),
        };
        let Some(until) = until else {
            return Ok(self.condvar.wait(state).unwrap_or_else(|e| e.into_inner()));
        };
        let now = Instant::now();
        if now >= until {
            return Err(state);
        }
        let (state, _) = self
            .condvar
            .wait_timeout(state, until - now)
            .unwrap_or_else(|e| e.into_inner());
        Ok(state)
    }
}

impl State {
    fn has_room(&self) -> bool {
        // Bytes alone would let a stream of one-byte chunks queue a quarter of a million
        // `Bytes` (and their allocations) within the byte bound: count chunks too.
        self.queue.is_empty()
            || (self.queued_bytes < self.max_bytes && self.queue.len() < MAX_QUEUED_CHUNKS)
    }

    fn push(&mut self, chunk: Bytes) -> Wake {
        self.queued_bytes += chunk.len();
        self.queue.push_back(chunk);
        self.receiver_wake()
    }

    fn receiver_wake(&mut self) -> Wake {
        Wake {
            waker: self.recv_waker.take(),
            // Taken, not read: one notify wakes the thread, and until it blocks again
            // (setting the flag anew) further chunks need not make the syscall again.
            notify: std::mem::take(&mut self.blocked_receiver),
        }
    }

    fn sender_wake(&mut self) -> Wake {
        Wake {
            waker: self.send_waker.take(),
            notify: std::mem::take(&mut self.blocked_sender),
        }
    }

    /// Takes the next chunk. A waiting sender is woken only once the queue has drained
    /// to half: waking it at the first free byte would cost a thread wake-up per chunk
    /// (it fills the room, blocks again, is woken again); this way it refills several.
    fn pop(&mut self) -> Option<(Bytes, Wake)> {
        self.pop_at_most(usize::MAX)
    }

    /// `pop`, splitting a chunk longer than `max` and leaving the rest at the front.
    fn pop_at_most(&mut self, max: usize) -> Option<(Bytes, Wake)> {
        let chunk = match self.queue.front_mut() {
            Some(front) if front.len() > max => front.split_to(max),
            _ => self.queue.pop_front()?,
        };
        self.queued_bytes -= chunk.len();
        self.taken += 1;
        self.taken_bytes += chunk.len() as u64;
        if let Some((from, _)) = self.recv_window {
            if self.taken_bytes - from >= MIN_PROGRESS {
                self.recv_window = None;
            }
        }
        let wake = if self.queued_bytes <= self.max_bytes / 2
            && self.queue.len() <= MAX_QUEUED_CHUNKS / 2
        {
            self.sender_wake()
        } else {
            Wake::NONE
        };
        Some((chunk, wake))
    }

    /// Records that the receiver asked and found nothing; the first time, the sender's
    /// task is to be woken (it may wait for that in `poll_asked`).
    fn ask(&mut self) -> Option<Waker> {
        if std::mem::replace(&mut self.asked, true) {
            None
        } else {
            self.send_waker.take()
        }
    }

    /// The head's fate if it is decided, deciding it for a held head whose stream has a
    /// chunk or has ended, or when `let_go`.
    fn head_call(&mut self, let_go: bool) -> Option<HeadCall> {
        match self.head {
            Head::Sent => Some(HeadCall::Send),
            Head::FailedUnsent(why) => Some(HeadCall::FailedInstead(why)),
            // A failure the producer did not claim (a sender dropped unfinished) goes out
            // as the abort it was before heads were held.
            Head::Held if let_go || !self.queue.is_empty() || !matches!(self.end, End::Open) => {
                self.head = Head::Sent;
                Some(HeadCall::Send)
            }
            Head::Held => None,
        }
    }

    fn ended(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        match &self.end {
            End::Open => Poll::Pending,
            End::Finished => Poll::Ready(None),
            End::Failed(kind, msg) => {
                Poll::Ready(Some(Err(io::Error::new(*kind, msg.to_string()))))
            }
            End::FailedByClient(kind, msg) => {
                self.fault_handed = true;
                Poll::Ready(Some(Err(ByClient::error(*kind, msg.clone()))))
            }
        }
    }
}

/// The producing end.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    finished: bool,
}

impl Sender {
    /// Waits, blocking the thread, until there is room, then queues `chunk`.
    /// Fails once the receiver is gone, or when it has taken nothing for the stall limit
    /// (checked each time the limit runs out, so between one and two limits after the
    /// last piece taken).
    /// Call only from a thread that may block.
    pub(crate) fn blocking_send(&self, chunk: Bytes) -> Result<(), SendError> {
        let mut state = self.shared.lock();
        // A client that left is told as such, whatever the time: a disconnect, not a
        // timeout.
        if !self.shared.receiver_gone() && self.expires(&mut state) {
            return Err(SendError::Expired);
        }
        let mut deadline = None;
        let mut seen = state.taken;
        while !self.shared.receiver_gone() && !state.has_room() {
            state.blocked_sender = true;
            let (woken, timed_out) = match self.shared.wait(state, &mut deadline) {
                Ok(state) => (state, false),
                Err(state) => (state, true),
            };
            state = woken;
            state.blocked_sender = false;
            if timed_out {
                if !self.shared.receiver_gone() && self.expires(&mut state) {
                    return Err(SendError::Expired);
                }
                if state.taken == seen {
                    return Err(SendError::Stalled);
                }
                // No room yet, but the client took some: a slow reader, not a stalled
                // one. The limit counts again from now.
                seen = state.taken;
                deadline = None;
            }
        }
        if self.shared.receiver_gone() {
            return Err(SendError::Closed);
        }
        let wake = state.push(chunk);
        drop(state);
        wake.fire(&self.shared.condvar);
        Ok(())
    }

    /// Whether `end_by` has passed, and if so marks the stream expired. Reads the clock
    /// only for a channel that has one.
    fn expires(&self, state: &mut State) -> bool {
        match self.shared.end_by {
            Some(end) if Instant::now() >= end => {
                state.expired = true;
                true
            }
            _ => false,
        }
    }

    /// Fails, and marks the stream expired, once the channel's `end_by` has passed: for a
    /// producer that asks whether to go on without sending (a heartbeat, a write
    /// gathered). Reads the clock only for a channel that has an `end_by`; takes the
    /// lock only when it has passed.
    pub(crate) fn check_expiry(&self) -> Result<(), SendError> {
        match self.shared.end_by {
            Some(end) if Instant::now() >= end => {
                self.shared.lock().expired = true;
                Err(SendError::Expired)
            }
            _ => Ok(()),
        }
    }

    /// Whether a send failed for the channel's `end_by`. Without one (no stream timeout,
    /// the default) it cannot have: no lock is taken then.
    pub(crate) fn expired(&self) -> bool {
        self.shared.end_by.is_some() && self.shared.lock().expired
    }

    /// Ready when a chunk may be sent without exceeding the bound.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut state = self.shared.lock();
        if self.shared.receiver_gone() {
            return Poll::Ready(Err(Closed));
        }
        if state.has_room() {
            return Poll::Ready(Ok(()));
        }
        match &state.send_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.send_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Ready once the receiver has asked for a chunk and found none, or is gone. Lets a
    /// sender hold off fetching what nobody may read (a body behind `100 Continue`).
    pub(crate) fn poll_asked(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if state.asked || self.shared.receiver_gone() {
            return Poll::Ready(());
        }
        match &state.send_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.send_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Queues `chunk` after `poll_ready` said there is room.
    pub(crate) fn send_ready(&self, chunk: Bytes) {
        let mut state = self.shared.lock();
        if !self.shared.receiver_gone() {
            let wake = state.push(chunk);
            drop(state);
            wake.fire(&self.shared.condvar);
        }
    }

    /// Holds back the head of the response this channel carries until the receiver's
    /// side lets it go (`Receiver::poll_head`, `Receiver::let_head_go`). Called before the receiver is handed on.
    pub(crate) fn hold_head(&self) {
        self.shared.lock().head = Head::Held;
    }

    /// Ends the stream with an error: the receiver sees it after the queued chunks, or at
    /// once for the stream timeout (`Unsent::Expired`), the queued chunks dropped. When
    /// the head is still held, nothing was sent and the receiver is still there, the
    /// head is failed too, and the receiver's side answers the failure in its place, as
    /// `why` says (`Failed::Replaced`).
    pub(crate) fn fail_before_head(
        mut self,
        kind: io::ErrorKind,
        message: impl Into<Arc<str>>,
        why: Unsent,
    ) -> Failed {
        self.finished = true;
        let mut state = self.shared.lock();
        if why == Unsent::Expired {
            // Past the stream timeout the response is aborted, not sent on: what is
            // queued would reach a slow client long after it (and keep its memory).
            state.queue.clear();
            state.queued_bytes = 0;
        }
        // Looked at under the lock: a receiver that takes the last bytes and goes does
        // so before or after this, not during it.
        let gone = self.shared.receiver_gone();
        let instead =
            state.head == Head::Held && state.queue.is_empty() && state.taken == 0 && !gone;
        if instead {
            state.head = Head::FailedUnsent(why);
        }
        if let End::Open = state.end {
            state.end = End::Failed(kind, message.into());
        }
        let wake = state.receiver_wake();
        drop(state);
        wake.fire(&self.shared.condvar);
        match (instead, gone) {
            (true, _) => Failed::Replaced,
            (false, false) => Failed::Aborted,
            (false, true) => Failed::Unread,
        }
    }

    /// Whether the receiver has been dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.receiver_gone()
    }

    /// Ends the stream cleanly: the receiver sees EOF after the queued chunks.
    pub(crate) fn finish(mut self) {
        self.finished = true;
        self.close(End::Finished);
    }

    /// Ends the stream with an error the client caused, as a request body's pump does:
    /// the receiver's error carries [`ByClient`].
    pub(crate) fn fail_by_client(mut self, kind: io::ErrorKind, message: impl Into<Arc<str>>) {
        self.finished = true;
        self.close(End::FailedByClient(kind, message.into()));
    }

    fn close(&self, end: End) {
        let mut state = self.shared.lock();
        if let End::Open = state.end {
            state.end = end;
        }
        let wake = state.receiver_wake();
        drop(state);
        wake.fire(&self.shared.condvar);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.finished {
            self.close(End::Failed(
                io::ErrorKind::UnexpectedEof,
                Arc::from("body stream ended before it was finished"),
            ));
        }
    }
}

/// Tells, once the reader is done, whether it met a failure the client caused.
pub(crate) struct FaultProbe(Arc<Shared>);

impl FaultProbe {
    /// The kind of the client's failure the reader was handed, if it was handed one:
    /// `TimedOut` for a client that stopped sending (the reader gave up waiting),
    /// `InvalidData` for a body past the limit, another kind for a body cut short or
    /// broken. A failure the reader never reached is not reported.
    pub(crate) fn client_fault(&self) -> Option<io::ErrorKind> {
        let state = self.0.lock();
        match &state.end {
            End::FailedByClient(kind, _) if state.fault_handed => Some(*kind),
            _ => None,
        }
    }
}

/// [`State::ask`], waking the sender's task once the lock is let go.
fn ask(mut state: MutexGuard<'_, State>) {
    if let Some(waker) = state.ask() {
        drop(state);
        waker.wake();
    }
}

/// The consuming end.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Waits, blocking the thread, for the next chunk; `None` at a clean end. When the
    /// sender sends less than `MIN_PROGRESS` bytes in the stall limit from the first wait
    /// on, the stream fails with `TimedOut`.
    /// Call only from a thread that may block.
    pub(crate) fn blocking_recv(&self) -> Option<io::Result<Bytes>> {
        let mut state = self.shared.lock();
        loop {
            if let Some((chunk, wake)) = state.pop() {
                drop(state);
                wake.fire(&self.shared.condvar);
                return Some(Ok(chunk));
            }
            if let Poll::Ready(end) = state.ended() {
                return end;
            }
            if let Some(waker) = state.ask() {
                // Woken outside the lock, which the sender's task takes at once.
                drop(state);
                waker.wake();
                state = self.shared.lock();
                continue;
            }
            // The window, and what its waits have left of the limit, carry over from wait
            // to wait (and call to call) until enough has come: a byte now and then does
            // not renew it, and the handler's own time between reads does not use it up.
            let (from, left) = state
                .recv_window
                .unwrap_or((state.taken_bytes, self.shared.stall_limit));
            // A limit too large for the clock (`Duration::MAX`) means no limit.
            let mut deadline = left.and_then(|left| Instant::now().checked_add(left));
            state.blocked_receiver = true;
            state = match self.shared.wait(state, &mut deadline) {
                Ok(state) => state,
                Err(mut state) => {
                    // Failed for good: a handler that reads on would only wait again.
                    let waited = self.shared.stall_limit.unwrap_or_default();
                    state.end = End::FailedByClient(
                        io::ErrorKind::TimedOut,
                        Arc::from(format!(
                            "less than {MIN_PROGRESS} bytes of request body data from the \
                             client in {waited:?}"
                        )),
                    );
                    state
                }
            };
            state.blocked_receiver = false;
            let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            state.recv_window = Some((from, left));
        }
    }

    /// The next chunk if one is queued or the stream has ended, without blocking.
    /// `Poll::Pending` means nothing is there yet.
    pub(crate) fn try_recv(&self) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.shared.lock();
        if let Some((chunk, wake)) = state.pop() {
            drop(state);
            wake.fire(&self.shared.condvar);
            return Poll::Ready(Some(Ok(chunk)));
        }
        let polled = state.ended();
        if polled.is_pending() {
            ask(state);
        }
        polled
    }

    /// Async receive, in pieces of at most `max` bytes (a longer chunk is split, its rest
    /// taken by the next call); `None` at a clean end.
    pub(crate) fn poll_recv_at_most(
        &self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.shared.lock();
        if let Some((chunk, wake)) = state.pop_at_most(max) {
            drop(state);
            wake.fire(&self.shared.condvar);
            return Poll::Ready(Some(Ok(chunk)));
        }
        let polled = state.ended();
        if polled.is_pending() {
            match &state.recv_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.recv_waker = Some(cx.waker().clone()),
            }
            ask(state);
        }
        polled
    }

    /// What to do with a held head (`Sender::hold_head`): `Send` once the stream has a
    /// chunk queued or has ended; `FailedInstead` once the producer failed before its
    /// first bytes; else `Pending`, and the producer's next chunk or end wakes `cx`. A
    /// head never held, or let go already, is `Send` at once. Takes nothing from the
    /// stream.
    pub(crate) fn poll_head(&self, cx: &mut Context<'_>) -> Poll<HeadCall> {
        let mut state = self.shared.lock();
        if let Some(call) = state.head_call(false) {
            return Poll::Ready(call);
        }
        match &state.recv_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.recv_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// As [`poll_head`](Self::poll_head) once the head's grace is over: a head still
    /// held goes now, unless the producer failed first.
    pub(crate) fn let_head_go(&self) -> HeadCall {
        let mut state = self.shared.lock();
        state.head_call(true).unwrap_or(HeadCall::Send)
    }

    /// A handle that tells, after this end is gone, whether its reader met a failure the
    /// client caused.
    pub(crate) fn fault_probe(&self) -> FaultProbe {
        FaultProbe(self.shared.clone())
    }

    /// Whether the stream has ended cleanly and every chunk was taken. A failed one has
    /// not: its error is still to be read.
    pub(crate) fn is_end(&self) -> bool {
        let state = self.shared.lock();
        state.queue.is_empty() && matches!(state.end, End::Finished)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        self.shared.receiver_gone.store(true, Ordering::Release);
        // Free the queued chunks now rather than when the sender goes.
        let queued = std::mem::take(&mut state.queue);
        state.queued_bytes = 0;
        let wake = state.sender_wake();
        drop(state);
        wake.fire(&self.shared.condvar);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn blocking_ends_pass_chunks_in_order_and_finish() {
        let (tx, rx) = channel(2, None);
        let producer = thread::spawn(move || {
            for i in 0..100u8 {
                tx.blocking_send(Bytes::from(vec![i])).unwrap();
            }
            tx.finish();
        });
        let mut seen = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            seen.extend_from_slice(&chunk.unwrap());
        }
        producer.join().unwrap();
        assert_eq!(seen, (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn a_chunk_longer_than_asked_for_is_taken_in_pieces_in_order() {
        let (tx, rx) = channel(1024, None);
        tx.blocking_send(Bytes::from_static(b"0123456789")).unwrap();
        tx.blocking_send(Bytes::from_static(b"ab")).unwrap();
        tx.finish();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pieces = Vec::new();
        while let Poll::Ready(Some(piece)) = rx.poll_recv_at_most(&mut cx, 4) {
            pieces.push(piece.unwrap());
        }
        assert_eq!(pieces, ["0123", "4567", "89", "ab"]);
        assert!(rx.is_end());
        assert_eq!(rx.shared.lock().queued_bytes, 0);
    }

    #[test]
    fn a_sender_waits_on_while_the_receiver_takes_a_large_chunk_in_pieces() {
        // A limit of 500 ms, twenty-five of the reader's 20 ms steps: a reader thread held
        // up on a loaded machine is not taken for a stalled one.
        let (tx, rx) = channel(16, Some(Duration::from_millis(500)));
        tx.blocking_send(Bytes::from(vec![1u8; 5 * 1024])).unwrap();
        let reader = thread::spawn(move || {
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let mut total = 0;
            loop {
                match rx.poll_recv_at_most(&mut cx, 64) {
                    Poll::Ready(Some(piece)) => total += piece.unwrap().len(),
                    Poll::Ready(None) => return total,
                    Poll::Pending => {}
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        // Eighty pieces at one per 20 ms or more: room comes after three stall limits,
        // but the receiver takes something within each.
        tx.blocking_send(Bytes::from_static(b"end"))
            .expect("a slow reader is not a stalled one");
        tx.finish();
        assert_eq!(reader.join().unwrap(), 5 * 1024 + 3);
    }

    #[test]
    fn sender_dropped_without_finish_is_an_error_not_eof() {
        let (tx, rx) = channel(2, None);
        tx.blocking_send(Bytes::from_static(b"a")).unwrap();
        drop(tx);
        assert_eq!(&rx.blocking_recv().unwrap().unwrap()[..], b"a");
        let err = rx.blocking_recv().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn dropping_receiver_unblocks_a_full_sender() {
        let (tx, rx) = channel(1, None);
        tx.blocking_send(Bytes::from_static(b"a")).unwrap();
        let producer = thread::spawn(move || tx.blocking_send(Bytes::from_static(b"b")));
        drop(rx);
        assert!(producer.join().unwrap().is_err());
    }

    #[test]
    fn a_receiver_waits_at_most_the_stall_limit_then_fails_for_good() {
        let (tx, rx) = channel(2, Some(Duration::from_millis(50)));
        let probe = rx.fault_probe();
        assert_eq!(probe.client_fault(), None);
        let err = rx.blocking_recv().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(probe.client_fault(), Some(io::ErrorKind::TimedOut));
        // Chunks sent after the stall do not turn it back into a complete body.
        tx.blocking_send(Bytes::from_static(b"late")).unwrap();
        tx.finish();
        assert_eq!(&rx.blocking_recv().unwrap().unwrap()[..], b"late");
        assert_eq!(
            rx.blocking_recv().unwrap().unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    /// The stall limit counts the receiver's waits, not the handler's time between its
    /// reads: a handler slow with what it got does not use up its client's limit.
    #[test]
    fn a_receivers_time_between_reads_does_not_count_against_its_client() {
        // The two waits below share one limit (a few bytes do not renew it): each a
        // tenth of it, which leaves 400 ms for the threads' scheduling.
        let limit = Duration::from_millis(500);
        let (tx, rx) = channel(64 * 1024, Some(limit));
        let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
        let producer = thread::spawn(move || {
            // A piece after a short wait, the next after the receiver's long work.
            thread::sleep(limit / 10);
            tx.blocking_send(Bytes::from_static(b"first")).unwrap();
            sent_rx.recv().unwrap();
            thread::sleep(limit / 10);
            tx.blocking_send(Bytes::from_static(b"second")).unwrap();
            tx.finish();
        });
        assert_eq!(&rx.blocking_recv().unwrap().unwrap()[..], b"first");
        // The handler's own work, past the whole limit, before it reads again.
        thread::sleep(limit * 2);
        sent_tx.send(()).unwrap();
        let second = rx.blocking_recv().unwrap().expect("not a stall");
        assert_eq!(&second[..], b"second");
        producer.join().unwrap();
    }

    #[test]
    fn a_receiver_fed_small_pieces_steadily_waits_past_many_limits() {
        // 1 KiB every 5 ms: `MIN_PROGRESS` well within each limit (a tenth of it, which a
        // loaded machine's pauses leave), in pieces far smaller, for longer than the limit
        // in all (256 pieces: 1.3 s at the least, past two limits).
        let limit = Duration::from_millis(600);
        let (tx, rx) = channel(64 * 1024, Some(limit));
        let pieces = 256;
        let producer = thread::spawn(move || {
            for _ in 0..pieces {
                tx.blocking_send(Bytes::from(vec![b'x'; 1024])).unwrap();
                thread::sleep(Duration::from_millis(5));
            }
            tx.finish();
        });
        let start = Instant::now();
        let mut got = 0;
        while let Some(chunk) = rx.blocking_recv() {
            got += chunk.expect("not a stall").len();
        }
        assert_eq!(got, pieces * 1024);
        assert!(start.elapsed() > limit, "too quick to show anything");
        producer.join().unwrap();
    }

    #[test]
    fn a_full_sender_waits_at_most_until_its_end_by_then_every_send_fails() {
        // 500 ms: the first send, and the check after it, come before the end on a loaded
        // machine too.
        let end_by = Instant::now() + Duration::from_millis(500);
        // A stall limit far longer: the end comes first.
        let (tx, rx) = channel_until(1, Some(Duration::from_secs(30)), Some(end_by));
        tx.blocking_send(Bytes::from_static(b"a")).unwrap();
        assert!(!tx.expired());
        assert_eq!(
            tx.blocking_send(Bytes::from_static(b"b")),
            Err(SendError::Expired)
        );
        assert!(Instant::now() >= end_by);
        assert!(tx.expired());
        // With room again, still refused: the time is up, not the room.
        assert!(matches!(rx.try_recv(), Poll::Ready(Some(Ok(chunk))) if chunk == "a"));
        assert_eq!(
            tx.blocking_send(Bytes::from_static(b"c")),
            Err(SendError::Expired)
        );
    }

    #[test]
    fn a_stream_failed_for_its_end_by_drops_what_is_queued() {
        // A failure of another kind comes after the queued chunks; the stream timeout's
        // goes first: the response is aborted, not sent on to a slow client.
        for (why, first) in [(Unsent::ProducerFailed, "a"), (Unsent::Expired, "")] {
            let (tx, rx) = channel(16, None);
            tx.blocking_send(Bytes::from_static(b"a")).unwrap();
            tx.blocking_send(Bytes::from_static(b"b")).unwrap();
            assert_eq!(
                tx.fail_before_head(io::ErrorKind::TimedOut, "failed", why),
                Failed::Aborted
            );
            match rx.try_recv() {
                Poll::Ready(Some(Ok(chunk))) => assert_eq!(chunk, first, "{why:?}"),
                Poll::Ready(Some(Err(err))) => {
                    assert!(first.is_empty(), "{why:?}: {err}");
                    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
                }
                other => panic!("{why:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_full_sender_waits_at_most_the_stall_limit() {
        let (tx, rx) = channel(1, Some(Duration::from_millis(50)));
        tx.blocking_send(Bytes::from_static(b"a")).unwrap();
        assert_eq!(
            tx.blocking_send(Bytes::from_static(b"b")),
            Err(SendError::Stalled)
        );
        drop(rx);
    }

    #[test]
    fn a_stall_limit_too_large_for_the_clock_means_no_limit() {
        let (tx, rx) = channel(1, Some(Duration::MAX));
        let producer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.blocking_send(Bytes::from_static(b"a")).unwrap();
            tx.finish();
        });
        assert_eq!(&rx.blocking_recv().unwrap().unwrap()[..], b"a");
        producer.join().unwrap();
    }

    #[test]
    fn never_holds_more_than_its_byte_bound() {
        let (tx, rx) = channel(3, None);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(matches!(tx.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            tx.send_ready(Bytes::from_static(b"x"));
        }
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert!(matches!(rx.try_recv(), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(tx.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_blocked_receiver_is_notified_once_until_it_blocks_again() {
        let (tx, _rx) = channel(256 * 1024, None);
        // As `blocking_recv` leaves it just before it waits on the condvar.
        tx.shared.lock().blocked_receiver = true;
        let notifies = |tx: &Sender| {
            let mut state = tx.shared.lock();
            let wake = state.push(Bytes::from_static(b"x"));
            drop(state);
            let notify = wake.notify;
            wake.fire(&tx.shared.condvar);
            notify
        };
        assert!(
            notifies(&tx),
            "the first chunk must wake the blocked receiver"
        );
        assert!(
            !notifies(&tx),
            "a second notify before it runs is a wasted syscall"
        );
        tx.shared.lock().blocked_receiver = true;
        assert!(notifies(&tx), "blocked again, it must be woken again");
    }

    #[test]
    fn tiny_chunks_are_bounded_by_count_too() {
        let (tx, _rx) = channel(256 * 1024, None);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut queued = 0;
        while let Poll::Ready(Ok(())) = tx.poll_ready(&mut cx) {
            tx.send_ready(Bytes::from_static(b"x"));
            queued += 1;
            assert!(queued <= MAX_QUEUED_CHUNKS, "unbounded in chunks");
        }
        assert_eq!(queued, MAX_QUEUED_CHUNKS);
    }

    #[test]
    fn a_held_head_goes_to_whichever_of_the_failure_and_the_let_go_comes_first() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let other = || io::ErrorKind::Other;

        // Failed first, nothing sent: the head is failed too, for good.
        let (tx, rx) = channel(1024, None);
        tx.hold_head();
        assert!(rx.poll_head(&mut cx).is_pending());
        assert_eq!(
            tx.fail_before_head(other(), "refused", Unsent::ProducerFailed),
            Failed::Replaced
        );
        assert_eq!(
            rx.poll_head(&mut cx),
            Poll::Ready(HeadCall::FailedInstead(Unsent::ProducerFailed))
        );
        assert_eq!(
            rx.let_head_go(),
            HeadCall::FailedInstead(Unsent::ProducerFailed)
        );
        // The client's failure (an echo's request body that stalled) keeps its kind.
        let (tx, rx) = channel(1024, None);
        tx.hold_head();
        assert_eq!(
            tx.fail_before_head(
                io::ErrorKind::TimedOut,
                "stalled",
                Unsent::ByClient(io::ErrorKind::TimedOut)
            ),
            Failed::Replaced
        );
        assert_eq!(
            rx.poll_head(&mut cx),
            Poll::Ready(HeadCall::FailedInstead(Unsent::ByClient(
                io::ErrorKind::TimedOut
            )))
        );

        // Let go first: a failure after it is an abort, not a head failed.
        let (tx, rx) = channel(1024, None);
        tx.hold_head();
        assert_eq!(rx.let_head_go(), HeadCall::Send);
        assert_eq!(
            tx.fail_before_head(other(), "too late", Unsent::ProducerFailed),
            Failed::Aborted
        );
        assert_eq!(rx.poll_head(&mut cx), Poll::Ready(HeadCall::Send));

        // Bytes sent: they go out with the head, whatever comes after them.
        let (tx, rx) = channel(1024, None);
        tx.hold_head();
        tx.blocking_send(Bytes::from_static(b"first")).unwrap();
        assert_eq!(
            tx.fail_before_head(other(), "after the first bytes", Unsent::ProducerFailed),
            Failed::Aborted
        );
        assert_eq!(rx.poll_head(&mut cx), Poll::Ready(HeadCall::Send));

        // A clean end with nothing sent lets the head go; so does a head never held.
        let (tx, rx) = channel(1024, None);
        tx.hold_head();
        tx.finish();
        assert_eq!(rx.poll_head(&mut cx), Poll::Ready(HeadCall::Send));
        let (tx, rx) = channel(1024, None);
        assert_eq!(
            tx.fail_before_head(other(), "not held", Unsent::ProducerFailed),
            Failed::Aborted
        );
        assert_eq!(rx.poll_head(&mut cx), Poll::Ready(HeadCall::Send));

        // Nobody to answer: no head failed, so nothing claims a 500 was sent.
        let (tx, rx) = channel(1024, None);
        tx.hold_head();
        drop(rx);
        assert_eq!(
            tx.fail_before_head(other(), "client left", Unsent::ProducerFailed),
            Failed::Unread
        );
    }
}
