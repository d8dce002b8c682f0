//! One connection's task: hyper drives it on the runtime, the handlers run elsewhere.
//!
//! Besides hyper's connection future, the task watches two things: the server's
//! shutdown signal and the connection's idle time (the keep-alive timeout, and the
//! header read timeout that cuts off a client too slow to send a request head). Both
//! are checked with an atomic load or two per poll, because the task is polled at least
//! twice per request: a `select!` over cancellation tokens and a timer costs more than
//! the blocking hand-off it sits beside (see docs/benchmarks.md).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::client_limit::{ClientLimit, ClientSlot};
use super::exec::{PanicLog, StreamExecutor};
use super::forwarded::{ClientSource, Proxies};
use super::remote::Peer;
use super::signal::{ConnSignal, Word, DRAIN, FORCE};
use super::stream::ConnStream;
use super::ListenAddr;
use crate::body::MIN_PROGRESS;
use crate::bridge::{Activity, CutOff, PartialHead, SyncService};
use crate::handler::Handler;
use crate::metrics::ConnClosed;
use crate::sys::{ConnSocket, Progress};
use crate::throttle::Throttle;

/// What every connection task shares.
pub(super) struct ConnConfig {
    pub(super) http: auto::Builder<StreamExecutor>,
    pub(super) keep_alive: Option<Duration>,
    /// How long an HTTP/1 request head may take from its first byte (or the connection
    /// from its start to its first request) before the connection is closed outright;
    /// hyper's own header timer is off (see `http_builder`).
    pub(super) header_read_timeout: Duration,
    /// How long a client may leave a response unread (the socket full) before the
    /// connection is closed: the server's body timeout.
    pub(super) write_stall_timeout: Duration,
    /// Whether requests carry the peer's address (`Server::remote_addr`).
    pub(super) remote_addr: bool,
    /// Whether they also carry the `ListenAddr` they came in on: with `remote_addr`, on
    /// a server with several (with one, its address is no news, and a second extension
    /// would cost each request about 500 instructions).
    pub(super) listen_addr: bool,
    /// Which peers are trusted proxies (`Server::trusted_proxies`), when any may be.
    pub(super) trusted_proxies: Option<Arc<Proxies>>,
    /// Each client's open connections, with `Server::max_connections_per_client`.
    pub(super) client_limit: Option<Arc<ClientLimit>>,
    pub(super) signal: ConnSignal,
}

/// A connection as the accept loop hands it to its task.
pub(super) struct NewConn {
    pub(super) stream: ConnStream,
    /// Whom its requests are from: the socket's peer, or the client a PROXY protocol
    /// header named.
    pub(super) peer: Peer,
    /// Where its requests' `ClientIp` and `ClientScheme` come from, with
    /// `trusted_proxies` set (`ClientSource::of` the peer, unless a PROXY protocol
    /// header said otherwise).
    pub(super) client_source: Option<ClientSource>,
    pub(super) local: Arc<ListenAddr>,
    /// Its slot under `max_connections`: it returns when the task ends.
    pub(super) permit: OwnedSemaphorePermit,
    /// Its place in its client's count under `max_connections_per_client`, when counted:
    /// given back when the task ends.
    pub(super) client_slot: Option<ClientSlot>,
    /// When it was accepted: its first request is due a header read timeout after it.
    pub(super) accepted: std::time::Instant,
}

/// Serves one connection until it closes, idles out, or the server stops.
pub(super) async fn serve<H: Handler>(
    new: NewConn,
    config: Arc<ConnConfig>,
    service: SyncService<H>,
) {
    let NewConn {
        stream,
        peer,
        client_source,
        local,
        permit: _permit,
        client_slot: _client_slot,
        accepted,
    } = new;
    let activity = Arc::new(Activity::new(accepted));
    let socket = stream.conn_socket();
    let peer_extension = config.remote_addr.then(|| peer.extension()).flatten();
    let local = config.listen_addr.then_some(local);
    // Set when the header read timeout ends a request head on its way: it is answered.
    let mut late_head = false;
    // In a block of its own, so that hyper's connection (and its handle on the socket)
    // is dropped before a close in stages.
    let unread = {
        let conn = config.http.serve_connection(
            WatchedIo::new(stream, activity.clone()),
            service.for_connection(activity.clone(), peer_extension, local, client_source),
        );
        let mut conn = std::pin::pin!(conn);
        let mut notified = std::pin::pin!(config.signal.notify.notified());
        let mut watchdog = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut state = Watch {
            seen: Word::default(),
            draining: false,
            idle_close: false,
            closing_since: None,
            recheck: false,
            notified_done: false,
            held_goaway: None,
            registered: None,
            taken: None,
            limits: Limits {
                keep_alive: config.keep_alive,
                header_read: config.header_read_timeout,
                write_stall: config.write_stall_timeout,
            },
        };

        let _panic_log = PanicLog::Connection(peer);
        std::future::poll_fn(|cx| loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(err) = result {
                    log_connection_error(peer, &*err);
                }
                if activity.is_http2() {
                    return Poll::Ready(None);
                }
                // hyper ends an HTTP/1 connection whose response broke off; its close must
                // not look like the end of a body framed by the close. (HTTP/2 resets the
                // stream.)
                if activity.has_aborted_response() {
                    socket.reset_on_close();
                    return Poll::Ready(None);
                }
                // A client still sending a body nobody read gets time to read the response
                // before the close (see `linger`); not when the shutdown cuts connections
                // off.
                if config.signal.level() < FORCE {
                    let more_may_come = activity.had_request_body();
                    return Poll::Ready(socket.if_unread_input(more_may_come));
                }
                return Poll::Ready(None);
            }

            // Both wake-up sources hold this task's waker from an earlier poll; they are
            // polled again only when they fired or the waker changed, not on every request.
            let fresh = !state
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if fresh {
                state.registered = Some(cx.waker().clone());
                activity.register_task(cx.waker());
            }
            // A streamed response aborted for the stream timeout: closed now, not once
            // its slow client has taken what hyper and the socket still hold (HTTP/1
            // only, where the connection carries nothing else; HTTP/2 resets the stream).
            if activity.abort_wanted() {
                socket.reset_on_close();
                return Poll::Ready(None);
            }

            let word = config.signal.word();
            let level = word.level();
            if word != state.seen || fresh || state.notified_done {
                if level >= FORCE {
                    let in_flight = activity.in_flight();
                    // A response hyper took whole counts as ended (its access line is
                    // written), but its last bytes may still wait in hyper's buffer
                    // behind a full socket: dropped with the connection, they are lost.
                    // HTTP/1 only: h2 frames its streams, and what it holds behind a full
                    // socket may be only its GOAWAY and PING, a whole response ahead of
                    // them in the kernel, which a reset would throw away.
                    let unsent = in_flight == 0
                        && !activity.is_http2()
                        && activity.write_blocked_for().is_some();
                    if in_flight > 0 || unsent {
                        crate::metrics::connection_closed(ConnClosed::Shutdown);
                        // The server's own line says why: the deadline, or a second signal.
                        tracing::warn!(
                            %peer,
                            in_flight,
                            unsent_response = unsent,
                            "connection cut off by the shutdown"
                        );
                    }
                    if unsent {
                        // As for a stalled client: a clean close would let a body framed
                        // by the close pass for whole.
                        socket.reset_on_close();
                    }
                    // Its requests, dropped with `conn`, are the server's doing, not the
                    // client's.
                    activity.cut_off(CutOff::Shutdown);
                    return Poll::Ready(None);
                }
                let closing = level == DRAIN && !state.draining;
                if closing {
                    conn.as_mut().graceful_shutdown();
                    state.draining = true;
                }
                if level == DRAIN && state.closing_since.is_none() {
                    state.closing_since = Some(Instant::now());
                    state.recheck = true;
                }
                if word != state.seen || state.notified_done {
                    // The old `Notified` completed; wait for the next word on a new one.
                    state.seen = word;
                    state.notified_done = false;
                    notified.set(config.signal.notify.notified());
                }
                // Registers the waker. The `Notified` existed before the load above, so a
                // change since then completes it; the second load catches a change
                // between that load and a `Notified` made just now.
                if notified.as_mut().poll(cx).is_ready() {
                    // Completed by a notify that came after the word it told of was read
                    // (the signal stores, then notifies): the word is seen already, so
                    // the next pass replaces it anyway. A completed one never wakes the
                    // task again.
                    state.notified_done = true;
                    continue;
                }
                if config.signal.word() != word {
                    continue;
                }
                if closing {
                    continue; // hyper may be able to finish now
                }
            }

            // A request head begun on an idle connection has its own deadline; stamped
            // before the room check below, which must not take a connection with a head on
            // its way for an idle one.
            let head_begun = activity.head_begun();

            // The connection limit is reached and a new client waits: an idle keep-alive
            // connection is a cache, closed to make room (RFC 9112 §9.5 lets a server
            // close one at any time; nginx does the same). Looked at on every poll, not
            // only when the server asks (which wakes the idle ones): a connection whose
            // last request just ended makes room at once.
            if config.signal.room_wanted()
                && !state.draining
                && is_idle(&activity)
                && config.signal.grant_room()
            {
                crate::metrics::connection_closed(ConnClosed::MadeRoom);
                tracing::debug!(%peer, "idle connection closed to make room at the connection limit");
                conn.as_mut().graceful_shutdown();
                state.draining = true;
                state.idle_close = true;
                state.closing_since = Some(Instant::now());
                state.recheck = true;
                continue; // hyper may be able to finish now
            }

            let recheck = std::mem::take(&mut state.recheck);
            if fresh || head_begun || recheck || watchdog.is_elapsed() {
                match state.check_idle(&activity, socket, watchdog.as_mut(), cx) {
                    Idle::Busy => {}
                    Idle::Drain => {
                        crate::metrics::connection_closed(ConnClosed::KeepAlive);
                        tracing::debug!(%peer, "keep-alive idle timeout; closing");
                        conn.as_mut().graceful_shutdown();
                        continue;
                    }
                    Idle::Close if head_to_answer(&activity, socket) => {
                        // Any client can send these (Slowloris): throttled.
                        static LATE_HEAD: Throttle = Throttle::new();
                        // The handle the answer is written on once hyper lets go of its
                        // own; none off Linux, or past the file limit.
                        let last = socket.duplicate();
                        crate::metrics::connection_closed(ConnClosed::HeadTimeout);
                        if let Some(left_out) = LATE_HEAD.admit() {
                            let timeout_ms = state.limits.header_read.as_millis() as u64;
                            if last.is_some() {
                                tracing::info!(
                                    %peer, timeout_ms, left_out,
                                    "request head not complete within the header read \
                                     timeout; answered 408 and closed"
                                );
                            } else {
                                tracing::info!(
                                    %peer, timeout_ms, left_out,
                                    "request head not complete within the header read \
                                     timeout; closed"
                                );
                            }
                        }
                        late_head = true;
                        return Poll::Ready(last);
                    }
                    Idle::Close => {
                        // Nothing came (a browser's unused preconnect, an idle HTTP/1
                        // connection without a keep-alive timeout): nothing to answer. Or
                        if activity.partial_head().is_some() {
                            // HTTP/2's preface came, or an HTTP/1 head began on a socket
                            // that cannot tell the two apart (`head_to_answer`).
                            crate::metrics::connection_closed(ConnClosed::HeadTimeout);
                            tracing::debug!(
                                %peer,
                                "bytes but no whole request within the header read timeout \
                                 (HTTP/2's preface, or part of an HTTP/1 head on a Unix \
                                 socket or off Linux, where the two cannot be told apart); \
                                 closed without a 408"
                            );
                        } else {
                            crate::metrics::connection_closed(ConnClosed::Idle);
                            tracing::debug!(
                                %peer,
                                "no request head within the header read timeout; closing"
                            );
                        }
                        return Poll::Ready(None);
                    }
                    Idle::Stalled => {
                        crate::metrics::connection_closed(ConnClosed::StalledClient);
                        tracing::warn!(
                            %peer,
                            timeout_ms = state.limits.write_stall.as_millis() as u64,
                            min_bytes = MIN_PROGRESS,
                            "client took too little of its response for the body timeout (the \
                             socket stayed full); connection closed"
                        );
                        // Its requests' lines name them: on HTTP/1 the producer of a
                        // streamed response leaves its stall to this watch, and only
                        // learns that its client is gone.
                        activity.cut_off(CutOff::StalledClient);
                        // A reset: a clean close would queue the end behind what waits
                        // unsent, passing off a body framed by the close as whole if the
                        // client ever read on, and keep that in the kernel until it did.
                        socket.reset_on_close();
                        return Poll::Ready(None);
                    }
                    Idle::ClosingUnanswered => {
                        // Everyday with some clients (httpx): at debug.
                        tracing::debug!(
                            %peer,
                            "idle HTTP/2 connection closing for the shutdown or to make room \
                             has not ended (its client has not answered the closing PING); \
                             closed"
                        );
                        return Poll::Ready(None);
                    }
                    Idle::DrainStalled => {
                        // Once per idle connection of some clients (httpx, below): throttled.
                        // Not counted again: its close was, as `keep_alive` or `made_room`,
                        // when it began.
                        static DRAIN_STALLED: Throttle = Throttle::new();
                        if let Some(left_out) = DRAIN_STALLED.admit() {
                            tracing::warn!(
                                %peer,
                                timeout_ms = state.limits.write_stall.as_millis() as u64,
                                left_out,
                                "HTTP/2 connection closing for idleness still open the body \
                                 timeout later (its client holds back a response, keeps a \
                                 stream open, or does not answer the closing PING, as clients \
                                 on Python's h2 such as httpx do not); connection closed"
                            );
                        }
                        return Poll::Ready(None);
                    }
                    Idle::Held if !state.draining => {
                        // Its other streams may be moving (a proxy that multiplexes many
                        // clients, one of them slow): a GOAWAY lets them finish, and tells the
                        // client which requests were never taken.
                        tracing::warn!(
                            %peer,
                            timeout_ms = state.limits.write_stall.as_millis() as u64,
                            "HTTP/2 client took no frame of one of its responses for the \
                             body timeout (its flow-control window or the socket held it \
                             back); closing the connection (GOAWAY), its other requests have \
                             one more body timeout to finish"
                        );
                        conn.as_mut().graceful_shutdown();
                        state.draining = true;
                        state.held_goaway = Some(Instant::now());
                        continue;
                    }
                    Idle::Held => {
                        crate::metrics::connection_closed(ConnClosed::StalledClient);
                        tracing::warn!(
                            %peer,
                            timeout_ms = state.limits.write_stall.as_millis() as u64,
                            "HTTP/2 client held back a response for the body timeout while its \
                             connection was closing; connection closed"
                        );
                        activity.cut_off(CutOff::StalledClient);
                        return Poll::Ready(None);
                    }
                }
            }
            return Poll::Pending;
        })
        .await
    };
    if let Some(socket) = unread {
        use super::linger::{
            answer, drain_then_close, head_timeout_answer, LINGER, LINGER_AFTER_408,
        };
        let linger = if late_head {
            answer(&socket, &head_timeout_answer());
            LINGER_AFTER_408
        } else {
            LINGER
        };
        // Lingering is bounded (`LINGER`): a graceful drain waits for it, as for the
        // response it lets the client read; the shutdown's cut does not.
        drain_then_close(socket, linger, config.signal.reached(FORCE)).await;
    }
}

struct Limits {
    keep_alive: Option<Duration>,
    header_read: Duration,
    write_stall: Duration,
}

/// The watchdog's bookkeeping for one connection.
struct Watch {
    seen: Word,
    draining: bool,
    /// Whether the watchdog itself began the graceful close, for the keep-alive timeout.
    idle_close: bool,
    /// When the shutdown's drain, or a request for room, began this connection's graceful
    /// close: an idle HTTP/2 one then has `CLOSING_IDLE_GRACE` to end.
    closing_since: Option<Instant>,
    /// Whether the next poll looks at the connection's times whatever its timer says (a
    /// close just began, whose grace the timer does not know yet).
    recheck: bool,
    /// Whether the signal's `Notified` has completed and must be replaced, whether or not
    /// the word changed since it was last read.
    notified_done: bool,
    /// When the watchdog sent a GOAWAY for a response the client held back.
    held_goaway: Option<Instant>,
    /// The waker the signal and the timer hold.
    registered: Option<Waker>,
    limits: Limits,
    /// While the socket is full: what the client was last seen to take of it.
    taken: Option<Taken>,
}

/// While the socket stays full: when the count of what the client took (its kernel's
/// acknowledgements, or a Unix socket's queue upside down) was first read, or last found
/// `MIN_PROGRESS` past the count before, and that count.
#[derive(Clone, Copy)]
struct Taken {
    count: u64,
    at: Instant,
}

impl Watch {
    /// How long the client has taken too little of a response held in a full socket,
    /// which has been full for `blocked`.
    ///
    /// The socket's "writable" says little about a slow reader: Linux reports it only
    /// once 64 KiB or less waits unsent, and one of hyper's 64 KiB writes can leave 192
    /// KiB, so a client taking less than 128–192 KiB per body timeout would look as if it
    /// took nothing (a probe cut 6 of 6 such connections). The socket's count of bytes
    /// the client's kernel acknowledged moves as data reaches it: from it, the client
    /// must have at least `MIN_PROGRESS` (8 KiB) acknowledged per body timeout, what a
    /// request body must bring. That is the client's rate where its link is the
    /// bottleneck; where its application reads slowly from a fast link, its kernel
    /// acknowledges more only as it reopens its receive window, in steps that Linux
    /// makes as large as a good part of its receive buffer (about 128 KiB with default
    /// buffers, in a probe on loopback), and a step per timeout is the floor. Read once
    /// per check of a full socket (a `getsockopt`), never on the hot path. Where it cannot
    /// be read, the socket's own wake-ups are all there is.
    ///
    /// A Unix socket has no acknowledgements, and its "writable" comes later still:
    /// once no more than a quarter of its send buffer (about 208 KiB) waits, so a reader
    /// would need about 150 KiB per timeout. What waits unread falls as the client reads
    /// and rises only when the server writes, which it does not while the socket is
    /// full: its fall is the client's progress, counted afresh each time the socket
    /// fills. It falls a piece of the kernel's queue at a time (up to 36 KiB; a 64 KiB
    /// write is queued as 36 and 28 KiB), so that is the floor there, above
    /// `MIN_PROGRESS`.
    fn stalled_for(&mut self, blocked: Duration, now: Instant, socket: ConnSocket) -> Duration {
        let (count, per_fill) = match socket.progress() {
            None => return blocked,
            Some(Progress::Acked(acked)) => (acked, false),
            // Upside down, to grow as the client reads.
            Some(Progress::Queued(queued)) => (u64::MAX - queued, true),
        };
        let since = now.checked_sub(blocked).unwrap_or(now);
        // First seen full: counted from now, when the count was read, not from when it
        // filled, so that the client has a whole timeout to show its progress. A client
        // that takes nothing is cut a body timeout after the first check that saw the
        // socket full, which comes within a timeout of it filling (`Limits::shortest`).
        let taken = self.taken.get_or_insert(Taken { count, at: now });
        // Filled again since the mark (the server wrote in between): a queue's mark is
        // from before those writes and says nothing about this fill.
        if per_fill && taken.at < since {
            *taken = Taken { count, at: now };
        }
        if count.saturating_sub(taken.count) >= MIN_PROGRESS {
            *taken = Taken { count, at: now };
        }
        now.saturating_duration_since(taken.at.max(since))
    }
}

enum Idle {
    Busy,
    Drain,
    Close,
    /// The client has not taken any of a pending response for the write stall limit.
    Stalled,
    /// An HTTP/2 client has opened no window for one of its pending responses for the
    /// write stall limit; if the connection was closing already (the GOAWAY this sends
    /// first, the shutdown, the keep-alive timeout), it is closed now.
    Held,
    /// An HTTP/2 connection closing for idleness is still open the write stall limit
    /// after the keep-alive timeout.
    DrainStalled,
    /// An idle HTTP/2 connection closing for the shutdown, or to make room, is still open
    /// `CLOSING_IDLE_GRACE` later.
    ClosingUnanswered,
}

/// How long an HTTP/2 connection with nothing in flight, closing for the shutdown or to
/// make room, may take to end (at most the body timeout). h2 ends it once its client
/// answers the closing GOAWAY's PING, which some clients never do (Python's h2, under
/// httpx): without this it would hold the shutdown to its deadline, or its slot for
/// ever. Go's server closes such a connection as soon as its GOAWAY is out; the grace
/// is for requests already on their way, and for a response h2 still holds for a client
/// that reads it.
const CLOSING_IDLE_GRACE: Duration = Duration::from_secs(5);

/// Whether a connection has nothing in flight, no request head on its way (HTTP/1, or
/// any connection before its first request) and no response waiting in its socket: one
/// the keep-alive timeout may close, and the connection limit may reclaim.
fn is_idle(activity: &Activity) -> bool {
    activity.in_flight() == 0
        && activity.write_blocked_for().is_none()
        && (activity.is_http2() || activity.head_arriving_for().is_none())
}

/// How often an idle connection is looked at, at most, for a body timeout shorter than
/// this.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

impl Watch {
    /// Acts on the connection's idle time and re-arms the timer for the next check.
    fn check_idle(
        &mut self,
        activity: &Activity,
        socket: ConnSocket,
        mut timer: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Idle {
        loop {
            let now = Instant::now();
            let stall = self.limits.write_stall;
            // After the GOAWAY a held response sent, the connection has one more body
            // timeout, whatever it does meanwhile: it ends on its own if its requests end
            // and h2 gets the held response out; otherwise it is closed then (with
            // nothing in flight, a response h2 still holds unsent would keep it open for
            // ever, the keep-alive deadline being past use once the GOAWAY is out).
            let goaway_deadline = match self.held_goaway {
                Some(sent) => {
                    let since = now.saturating_duration_since(sent);
                    if since >= stall {
                        return Idle::Held;
                    }
                    Some(later(now, stall - since))
                }
                None => None,
            };
            let blocked = activity.write_blocked_for();
            if blocked.is_none() {
                self.taken = None;
            }
            let next = if let Some(blocked) = blocked {
                // A response waits in a full socket. Checked before the requests in
                // flight: a streamed response whose producer gave up stays in flight,
                // because hyper polls a body only when it can buffer more of it.
                let stalled = self.stalled_for(blocked, now, socket);
                if stalled >= stall {
                    return Idle::Stalled;
                }
                later(now, stall - stalled)
            } else if activity.in_flight() > 0 {
                // Busy: a handler runs (its own time is not limited here: a handler
                // timeout is the request future's; its waits on the client are, in the
                // body channels), or hyper holds its response. Only the
                // HTTP/2 flow watch can expire before it ends; look again later, counting
                // idleness from now at the earliest.
                activity.touch();
                let mut next = later(now, self.limits.shortest());
                if self.closing_since.is_some() && activity.is_http2() {
                    // Its last request may end soon, leaving it to its grace (below).
                    next = next.min(later(now, IDLE_RECHECK));
                }
                match activity.longest_held() {
                    // Past the GOAWAY, the deadline above decides.
                    Some(held) if held >= stall && goaway_deadline.is_none() => return Idle::Held,
                    Some(held) if held < stall => next.min(later(now, stall - held)),
                    _ => next,
                }
            } else {
                let idle = activity.idle_for();
                let http1 = !activity.is_http2();
                let arriving = activity.head_arriving_for().filter(|_| http1);
                // A request head on its way over HTTP/1 (or the first request, whatever
                // its protocol) has `header_read` from its first byte, as Go's
                // `ReadHeaderTimeout` and nginx's `client_header_timeout` count
                // (Slowloris protection). Without a keep-alive timeout, an idle HTTP/1
                // connection is held to it too, from its last request: hyper's rule. With
                // one, it is the backstop past it: the keep-alive close leaves open an
                // HTTP/1 connection that hyper still reads a body nobody wants from.
                let header_read = self.limits.header_read;
                let head_left = match (arriving, self.limits.keep_alive) {
                    (Some(arriving), _) => Some(header_read.saturating_sub(arriving)),
                    (None, None) if http1 => Some(header_read.saturating_sub(idle)),
                    (None, Some(keep_alive)) if http1 => {
                        Some(keep_alive.saturating_add(header_read).saturating_sub(idle))
                    }
                    (None, _) => None,
                };
                if head_left == Some(Duration::ZERO) {
                    return Idle::Close;
                }
                // An idle connection with no head on its way has the keep-alive timeout;
                // an HTTP/2 connection between its streams has only that (hyper sends no
                // pings unless asked to).
                let keep_alive = self.limits.keep_alive.filter(|_| !self.draining);
                if arriving.is_none() && keep_alive.is_some_and(|limit| idle >= limit) {
                    self.draining = true;
                    self.idle_close = true;
                    return Idle::Drain;
                }
                // An HTTP/2 connection closing gracefully waits for its streams, and a
                // response hyper took whole (so no longer in flight) may still sit in h2's
                // buffers, held back by the client's window. The client gets the body
                // timeout, past the keep-alive timeout, to take it.
                let drain_limit = self
                    .limits
                    .keep_alive
                    .filter(|_| self.idle_close && activity.is_http2())
                    .map(|limit| limit.saturating_add(self.limits.write_stall));
                if drain_limit.is_some_and(|limit| idle >= limit) {
                    return Idle::DrainStalled;
                }
                let closing_left =
                    self.closing_since
                        .filter(|_| activity.is_http2())
                        .map(|since| {
                            let grace = CLOSING_IDLE_GRACE.min(self.limits.write_stall);
                            grace.saturating_sub(now.saturating_duration_since(since))
                        });
                if closing_left == Some(Duration::ZERO) {
                    return Idle::ClosingUnanswered;
                }
                // Looked at again within a body timeout whatever the limits above: a
                // request that starts meanwhile may leave a response waiting on its
                // client, which must be seen in time (at most two body timeouts). Not
                // more often than every `IDLE_RECHECK`, so that a tiny body timeout does
                // not wake every idle connection all the time.
                let recheck = self.limits.write_stall.max(IDLE_RECHECK);
                // And within the keep-alive timeout: what is left of it, or with a head
                // on its way a whole one from now. That head may come whole and its
                // request end long before the header timeout, with nothing waking the
                // task between: the keep-alive timeout counts from that end.
                let keep_alive_left = keep_alive.map(|limit| match arriving {
                    Some(_) => limit,
                    None => limit - idle,
                });
                [
                    keep_alive_left,
                    drain_limit.map(|limit| limit - idle),
                    head_left,
                    closing_left,
                ]
                .into_iter()
                .flatten()
                .map(|left| later(now, left))
                .fold(later(now, recheck), Instant::min)
            };
            let next = goaway_deadline.map_or(next, |deadline| next.min(deadline));
            timer.as_mut().reset(next);
            if timer.as_mut().poll(cx).is_pending() {
                return Idle::Busy;
            }
        }
    }
}

/// Whether the connection closing at the header read timeout has part of an HTTP/1
/// request head on its way, to be answered `408`: not nothing (a browser's unused
/// preconnect), nor HTTP/2's preface. Before a connection's first request, the socket
/// tells that one: HTTP/2's server answers the preface at once with its SETTINGS, and
/// an HTTP/1 server has written nothing. Out of the way of every request: read once, at
/// the close.
fn head_to_answer(activity: &Activity, socket: ConnSocket) -> bool {
    match activity.partial_head() {
        Some(PartialHead::Http1) => true,
        Some(PartialHead::First) => socket.bytes_acked() == Some(0),
        None => false,
    }
}

/// Logs how a connection ended with an error. A request hyper's parser refused never
/// reaches the service, whose refusals are logged: this is its only line, as visible as
/// theirs (throttled, any client can send them). So is an HTTP/2 connection h2 ended
/// with a GOAWAY of its own for the client's doing (a flood of resets or CONTINUATION
/// frames, a protocol error): an attack's signature. Everything else (resets, a client
/// gone mid-message) is everyday, at debug.
#[cold]
fn log_connection_error(peer: Peer, err: &(dyn std::error::Error + 'static)) {
    static TOO_LARGE: Throttle = Throttle::new();
    static MALFORMED: Throttle = Throttle::new();
    static GOAWAY: Throttle = Throttle::new();
    if let Some((reason, h2)) = goaway_sent(err) {
        crate::metrics::connection_closed(ConnClosed::ProtocolError);
        if let Some(left_out) = GOAWAY.admit() {
            tracing::warn!(
                %peer, ?reason, error = %h2, left_out,
                "HTTP/2 client broke the protocol or flooded the connection; sent GOAWAY \
                 and closed"
            );
        }
        return;
    }
    match err.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse_too_large() => {
            crate::metrics::connection_closed(ConnClosed::HeadTooLarge);
            if let Some(left_out) = TOO_LARGE.admit() {
                tracing::warn!(
                    %peer, error = %e, left_out,
                    "request head over hyper's limits (size or header count); answered 431 \
                     or 414 and closed"
                );
            }
        }
        Some(e) if e.is_parse() => {
            crate::metrics::connection_closed(ConnClosed::Malformed);
            if let Some(left_out) = MALFORMED.admit() {
                tracing::info!(
                    %peer, error = %e, left_out,
                    "malformed request refused by hyper's parser; answered 400 and closed"
                );
            }
        }
        _ => tracing::debug!(%peer, error = %err, "connection ended with an error"),
    }
}

/// The reason of a GOAWAY h2 sent for an error of the client's, and h2's error, found
/// in `err`'s chain.
fn goaway_sent<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<(h2::Reason, &'a h2::Error)> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let reason = h2.reason()?;
            let theirs = h2.is_go_away() && h2.is_library() && reason != h2::Reason::NO_ERROR;
            return theirs.then_some((reason, h2));
        }
        source = err.source();
    }
    None
}

/// `now + after`, for any `after`: a limit too large for the clock (`Duration::MAX`) is a
/// check a year from now, which is as good as never; a zero limit is a check a
/// millisecond from now (tokio's granularity), not a timer that fires on every poll.
pub(super) fn later(now: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now + after.clamp(Duration::from_millis(1), FAR)
}

impl Limits {
    /// How soon a busy connection is looked at again: the response it is busy with may
    /// stall, and the request may end and leave it idle.
    fn shortest(&self) -> Duration {
        self.keep_alive
            .map_or(self.header_read, |k| k.min(self.header_read))
            .min(self.write_stall)
    }
}

/// The connection's socket as hyper sees it, telling `Activity` whether hyper waits to
/// write: a response handed to hyper whole counts as done for the bridge while the
/// client may still be reading it, and a slow reader is not an idle connection.
pub(super) struct WatchedIo {
    io: TokioIo<ConnStream>,
    activity: Arc<Activity>,
}

impl WatchedIo {
    pub(super) fn new(stream: ConnStream, activity: Arc<Activity>) -> Self {
        WatchedIo {
            io: TokioIo::new(stream),
            activity,
        }
    }

    fn watch<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.activity.set_write_blocked(polled.is_pending());
        polled
    }
}

impl hyper::rt::Read for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.read_returned();
        }
        polled
    }
}

impl hyper::rt::Write for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(polled)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
