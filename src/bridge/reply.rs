//! The one-shot cell a handler's response travels back in, with the claim that settles
//! the race between a worker starting a request and the request giving up.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use crate::body::BridgeBody;
use crate::timer::TimersKnown;

/// What the service future sees of its request's job (`RequestJob`, which owns both).
pub(crate) trait Reply: Send + Sync {
    /// The cell the response comes back in.
    fn cell(&self) -> &ReplyCell;
    /// How long a streamed response's head is held back for its first bytes, and what is
    /// known of the calling runtime's timers, which time that.
    fn head_grace(&self) -> (Duration, &TimersKnown);
    /// The answer to the client's failure of `kind` that a producer met while its head
    /// was held, as a handler's read of it is answered (`408`, `400`), logged as such.
    fn client_fault(&self, kind: std::io::ErrorKind) -> http::Response<BridgeBody>;
}

/// What became of a request before its handler answered ([`ReplyCell::given_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GivenUp {
    /// Waited for: the handler's answer is the client's.
    No,
    /// Answered `504` for the handler timeout.
    TimedOut,
    /// Given up otherwise: its client left, a layer in front dropped it, or the service
    /// answered it itself (a `413`).
    Abandoned,
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 3;

/// Shared by the service future (async side) and the job (handler thread).
///
/// A request is either *claimed* by a worker (`QUEUED -> RUNNING`) or *cancelled* by the
/// future (`QUEUED -> CANCELLED`, on queue timeout or disconnect), never both: a client
/// told `503, retry` can be sure the handler did not run.
pub(crate) struct ReplyCell {
    state: AtomicU8,
    slot: Mutex<Slot>,
    waker: AtomicWaker,
}

struct Slot {
    response: Option<http::Response<BridgeBody>>,
    /// `No` while the response is waited for; else nobody will read it, and why.
    given_up: GivenUp,
}

impl ReplyCell {
    pub(crate) fn new() -> Self {
        ReplyCell {
            state: AtomicU8::new(QUEUED),
            slot: Mutex::new(Slot {
                response: None,
                given_up: GivenUp::No,
            }),
            waker: AtomicWaker::new(),
        }
    }

    /// Worker side: take the request. False if it was cancelled first.
    pub(crate) fn claim(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Worker side: wake the future, which pumps the request body only once the request
    /// is claimed.
    pub(crate) fn wake_waiter(&self) {
        self.waker.wake();
    }

    /// Async side: withdraw the request. True if no worker will ever run it.
    pub(crate) fn cancel(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Worker side: deliver the response. False when nobody waits for it any more: the
    /// response is then dropped here, on the worker's thread, and its body never produced.
    pub(crate) fn complete(&self, response: http::Response<BridgeBody>) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.given_up != GivenUp::No {
            drop(slot);
            drop(response);
            return false;
        }
        slot.response = Some(response);
        self.state.store(DONE, Ordering::Release);
        drop(slot);
        self.waker.wake();
        true
    }

    /// Async side: the response, once delivered.
    pub(crate) fn poll_response(&self, cx: &mut Context<'_>) -> Poll<http::Response<BridgeBody>> {
        if self.state.load(Ordering::Acquire) != DONE {
            self.waker.register(cx.waker());
            if self.state.load(Ordering::Acquire) != DONE {
                return Poll::Pending;
            }
        }
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match slot.response.take() {
            Some(response) => Poll::Ready(response),
            // Taken already: the future is polled after completion, which it never is.
            None => Poll::Pending,
        }
    }

    /// Async side: nobody will read the response. Drops one already delivered, which
    /// closes its body channel and stops the producer.
    pub(crate) fn abandon(&self) {
        let response = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if slot.given_up == GivenUp::No {
                slot.given_up = GivenUp::Abandoned;
            }
            slot.response.take()
        };
        drop(response);
    }

    /// Async side: the handler timeout passed while the handler ran. True if no response
    /// was delivered before: nobody will read one now (as after [`abandon`](Self::abandon)),
    /// and the future answers `504` itself. False if one is there to be taken.
    pub(crate) fn time_out(&self) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        // `complete` stores under this lock, so `DONE` is seen here if it came first.
        if self.state.load(Ordering::Acquire) != RUNNING || slot.given_up != GivenUp::No {
            return false;
        }
        slot.given_up = GivenUp::TimedOut;
        true
    }

    /// Whether, and how, the request was given up before its handler's answer, for the
    /// handler's thread to say what became of the request in its lines.
    pub(crate) fn given_up(&self) -> GivenUp {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).given_up
    }

    /// Whether nobody will read the response (see [`abandon`](Self::abandon),
    /// [`time_out`](Self::time_out)).
    pub(crate) fn is_abandoned(&self) -> bool {
        self.given_up() != GivenUp::No
    }

    /// Whether a worker has started or finished the request.
    pub(crate) fn was_claimed(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), RUNNING | DONE)
    }
}
