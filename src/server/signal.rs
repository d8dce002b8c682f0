//! The server's word to its connections: keep serving, drain, or stop now; and, at the
//! connection limit, "one idle connection please make room".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// What the server tells its connections, read by each with one atomic load per poll.
///
/// The level (serve, drain, force) only rises. Above it, in the same word, counts the
/// server's requests for room: each one changes the word, which wakes every connection,
/// and the first idle one to see `room_wanted` closes (`grant_room`); a busy one that
/// turns idle while it is set closes too. Connections sleep on `notify` in between, so a
/// shutdown or a request for room reaches every connection at once.
#[derive(Debug, Default)]
pub(super) struct ConnSignal {
    word: AtomicU64,
    room_wanted: AtomicBool,
    pub(super) notify: Notify,
}

// Level 0, the word's first: serve.
/// Finish the requests in flight, take no new ones.
pub(super) const DRAIN: u8 = 1;
/// Stop now: the shutdown deadline passed or a second signal came.
pub(super) const FORCE: u8 = 2;

const LEVEL_BITS: u64 = 0xff;
const ONE_ASK: u64 = 1 << 8;

/// One reading of a `ConnSignal`: compared whole to see whether anything changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Word(u64);

impl Word {
    pub(super) fn level(self) -> u8 {
        (self.0 & LEVEL_BITS) as u8
    }
}

impl ConnSignal {
    pub(super) fn raise(&self, level: u8) {
        let level = u64::from(level);
        let mut current = self.word.load(Ordering::Acquire);
        while current & LEVEL_BITS < level {
            let raised = (current & !LEVEL_BITS) | level;
            match self.word.compare_exchange_weak(
                current,
                raised,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.notify.notify_waiters();
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub(super) fn word(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    pub(super) fn level(&self) -> u8 {
        self.word().level()
    }

    /// Asks one idle connection to close, so that a new one waiting for a slot under
    /// `max_connections` gets it (as nginx reuses idle keep-alive connections when it
    /// runs out). Asking again before one was granted still asks for one.
    pub(super) fn ask_for_room(&self) {
        self.room_wanted.store(true, Ordering::Release);
        self.word.fetch_add(ONE_ASK, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Whether a new connection waits for room and no idle one has made it yet: one
    /// relaxed load, for every poll of every connection.
    pub(super) fn room_wanted(&self) -> bool {
        self.room_wanted.load(Ordering::Relaxed)
    }

    /// Called by an idle connection that saw a request for room: whether it is the one to
    /// close.
    pub(super) fn grant_room(&self) -> bool {
        self.room_wanted.swap(false, Ordering::AcqRel)
    }

    /// Withdraws a request for room that a slot freed by other means has met: else the
    /// next idle connection (or refused one) would close for nobody.
    pub(super) fn withdraw_room_request(&self) {
        self.room_wanted.store(false, Ordering::Release);
    }

    /// Completes once the caller is granted a request for room: for a connection that
    /// may close whenever a new one waits for its slot.
    pub(super) async fn room_granted(&self) {
        loop {
            // Made before the flag is read, as in `reached`.
            let asked = self.notify.notified();
            if self.room_wanted() && self.grant_room() {
                return;
            }
            asked.await;
        }
    }

    /// Completes once the level is `level` or higher.
    pub(super) async fn reached(&self, level: u8) {
        loop {
            // Made before the level is read: a raise in between still completes it.
            let raised = self.notify.notified();
            if self.level() >= level {
                return;
            }
            raised.await;
        }
    }
}
