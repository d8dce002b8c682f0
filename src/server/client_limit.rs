//! The most connections one client may hold open at once
//! ([`Server::max_connections_per_client`](crate::Server::max_connections_per_client)):
//! a count of each client's open connections, and how a connection past the cap is
//! answered (its `503` is the service's: `bridge::RefusedConnection`).
//!
//! Without a cap one client can take every slot under `max_connections`: a connection
//! that is busy, or still sending its first request, is never closed to make room (the
//! header read timeout bounds each, and the client opens the next). nginx's
//! `limit_conn` does this job in front of a server; this is it for a server on its own.

use std::collections::hash_map::{Entry, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::conn::{ConnConfig, NewConn, WatchedIo};
use super::linger::{drain_then_close, LINGER};
use super::remote::Peer;
use super::signal::{DRAIN, FORCE};
use crate::bridge::{Activity, CutOff, RefusedConnection, SyncService};
use crate::handler::Handler;
use crate::metrics::ConnClosed;
use crate::throttle::Throttle;

/// Which client a connection counts against: an IPv4 address, or an IPv6 address's /64
/// network (a host's usual share: one that holds an address holds 2^64 of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4.into()),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The most connections of one client being answered `503` at once: past them, its new
/// connections are closed unanswered, so that one client holds at most its cap and
/// these of the server's slots.
const MAX_REFUSING: usize = 4;

/// Each client's open connections, for the clients with any, and the cap.
#[derive(Debug)]
pub(super) struct ClientLimit {
    cap: usize,
    /// One entry per client with a connection open or being refused: each holds a slot
    /// under `max_connections`, so there are at most that many entries.
    open: Mutex<HashMap<ClientKey, Counts>>,
}

/// One client's connections: those served, and those being answered `503`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    served: usize,
    refusing: usize,
}

/// What a new connection of a client may do.
#[derive(Debug)]
enum Taken {
    Served(ClientSlot),
    /// Past the cap: answered `503`, holding its place among the refused.
    Refused(ClientSlot),
    /// Past the cap with `MAX_REFUSING` being answered already: closed at once.
    Closed,
}

impl ClientLimit {
    pub(super) fn new(cap: usize) -> Self {
        ClientLimit {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more connection of `client`, as served if it may be, else as refused;
    /// and how many it has served (the cap, when refused).
    fn take(self: &Arc<Self>, client: IpAddr) -> (Taken, usize) {
        let key = ClientKey::of(client);
        // Nothing panics under the lock: a poisoned one holds whole counts.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = open.entry(key).or_default();
        let served = counts.served;
        let slot = |refused| ClientSlot {
            limit: self.clone(),
            key,
            refused,
        };
        let taken = if served < self.cap {
            counts.served += 1;
            Taken::Served(slot(false))
        } else if counts.refusing < MAX_REFUSING {
            counts.refusing += 1;
            Taken::Refused(slot(true))
        } else {
            Taken::Closed
        };
        (taken, served)
    }
}

/// One connection's place in its client's count: given back when the connection's task
/// ends, as its slot under `max_connections` is.
#[derive(Debug)]
pub(super) struct ClientSlot {
    limit: Arc<ClientLimit>,
    key: ClientKey,
    /// Counted among the client's refused connections, not its served ones.
    refused: bool,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut counts) = open.entry(self.key) {
            let count = match self.refused {
                false => &mut counts.get_mut().served,
                true => &mut counts.get_mut().refusing,
            };
            *count = count.saturating_sub(1);
            if *counts.get() == Counts::default() {
                counts.remove();
            }
        }
    }
}

/// Whether a connection from `client` may be served: `Ok` with its slot in its client's
/// count (`None` when it is not counted: no cap set, a Unix socket's peer, or a trusted
/// proxy, whose connections carry many clients' requests), or `Err` when the client
/// holds the most it may, which is said (throttled).
pub(super) fn admit(config: &ConnConfig, client: Peer) -> Result<Option<ClientSlot>, OverCap> {
    let Some(limit) = &config.client_limit else {
        return Ok(None);
    };
    let Some(addr) = client.remote_addr() else {
        return Ok(None);
    };
    if config
        .trusted_proxies
        .as_ref()
        .is_some_and(|proxies| proxies.trust_peer(client))
    {
        return Ok(None);
    }
    let (taken, open) = limit.take(addr.ip());
    let refused = match taken {
        Taken::Served(slot) => return Ok(Some(slot)),
        Taken::Refused(slot) => Some(slot),
        Taken::Closed => None,
    };
    static OVER_CAP: Throttle = Throttle::new();
    if let Some(left_out) = OVER_CAP.admit() {
        let (client, cap) = (addr.ip(), limit.cap);
        if refused.is_some() {
            tracing::warn!(
                %client,
                open,
                cap,
                left_out,
                "a client holds the most connections it may; its new one is answered 503 \
                 and closed"
            );
        } else {
            tracing::warn!(
                %client,
                open,
                cap,
                refusing = MAX_REFUSING,
                left_out,
                "a client holds the most connections it may, and more are being refused; \
                 its new one is closed unanswered"
            );
        }
    }
    Err(OverCap { slot: refused })
}

/// A connection whose client holds the most it may.
#[derive(Debug)]
pub(super) struct OverCap {
    /// Its place among its client's refused connections; `None` when there are too many
    /// of those: it is closed unanswered.
    slot: Option<ClientSlot>,
}

impl OverCap {
    /// Answers the connection's first request `503` with `Retry-After` and closes it:
    /// `Connection: close` on HTTP/1, a GOAWAY after the answer on HTTP/2, and over
    /// HTTP/1 what the client still sends (a request body) is read and dropped for up to
    /// 2 s before the close, so that the client reads the answer rather than a reset.
    /// The request is due within the header read timeout of the accept, as any first
    /// request; while it is awaited the connection is closed unanswered when a new
    /// connection waits for its slot under `max_connections`, or the shutdown begins.
    /// Its answer is bounded by the body timeout, as any a client does not read.
    ///
    /// `service` answers (`SyncService::for_refused_connection`), not a service of its
    /// own: hyper's connection is then the one every connection is served with, compiled
    /// once (a second one was 130 KB of code).
    pub(super) async fn answer<H: Handler>(
        self,
        conn: NewConn,
        config: &ConnConfig,
        service: SyncService<H>,
    ) {
        crate::metrics::connection_closed(ConnClosed::ClientLimit);
        // Its slot under `max_connections`, and its place among the refused, are held
        // until the end, as any connection's.
        let NewConn {
            stream,
            peer,
            permit: _permit,
            accepted,
            ..
        } = conn;
        let OverCap { slot: Some(_slot) } = self else {
            return;
        };
        let socket = stream.conn_socket();
        // The service tells it whether it answered, over which protocol, and whether the
        // request had a body (which the client may still be sending).
        let activity = Arc::new(Activity::new(accepted));
        let refused = Arc::new(RefusedConnection::new());
        let service = service.for_refused_connection(activity.clone(), refused.clone());
        let unread = {
            let io = WatchedIo::new(stream, activity.clone());
            let conn = config.http.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let accepted = tokio::time::Instant::from_std(accepted);
            let due = super::conn::later(accepted, config.header_read_timeout);
            // Whether the connection ended (`true`), or its first request is being
            // answered; `None` when it is given up unanswered.
            let first_request = tokio::time::timeout_at(due, async {
                // hyper first: a poll that calls the service sees its notice in the same
                // round, so a request being answered is never given up below.
                tokio::select! {
                    biased;
                    ended = conn.as_mut() => {
                        said_if_failed(ended);
                        true
                    }
                    _ = refused.answered() => false,
                }
            });
            let ended = tokio::select! {
                biased;
                _ = config.signal.reached(DRAIN) => None,
                _ = config.signal.room_granted() => None,
                ended = first_request => ended.ok(),
            };
            let written = match ended {
                None => return,
                // hyper may answer, and close for the answer's `Connection: close`, in
                // one poll.
                Some(true) => refused.was_answered(),
                Some(false) => {
                    // No request after it: HTTP/1 closes after the answer, HTTP/2 says
                    // GOAWAY.
                    conn.as_mut().graceful_shutdown();
                    // Cut off, a request still in flight (its answer not yet handed to
                    // hyper) says why in its own line, as any request's. The answer is
                    // small, so hyper has usually taken it whole, and the request is done:
                    // a stall is then said here. The shutdown's cut-off is counted in the
                    // server's own line.
                    tokio::select! {
                        biased;
                        _ = config.signal.reached(FORCE) => {
                            activity.cut_off(CutOff::Shutdown);
                            false
                        }
                        ended = tokio::time::timeout(config.write_stall_timeout, conn.as_mut()) => {
                            let ended = ended.map(said_if_failed);
                            if ended.is_err() {
                                activity.cut_off(CutOff::StalledClient);
                                said_stalled(peer, config);
                            }
                            ended.is_ok()
                        }
                    }
                }
            };
            // Looked at while hyper still holds the socket open. (HTTP/2 resets what
            // it does not read, stream by stream.)
            let lingers = written && !activity.is_http2();
            let more_may_come = activity.had_request_body();
            lingers
                .then(|| socket.if_unread_input(more_may_come))
                .flatten()
        };
        if let Some(socket) = unread {
            drain_then_close(socket, LINGER, config.signal.reached(FORCE)).await;
        }
    }
}

/// Says that a refused connection was still open the body timeout after its `503`, as
/// `conn` says it of any connection: its client took too little of it (an HTTP/2 client
/// that opens no window for it), or does not answer HTTP/2's closing PING (clients on
/// Python's h2, such as httpx). With `peer` as a field of its own, as `conn`'s
/// connection-level lines: the connection's span is off above `info`. Throttled: a client
/// past its cap is one that opens many connections.
#[cold]
fn said_stalled(peer: Peer, config: &ConnConfig) {
    static STALLED: Throttle = Throttle::new();
    if let Some(left_out) = STALLED.admit() {
        tracing::warn!(
            %peer,
            timeout_ms = config.write_stall_timeout.as_millis() as u64,
            left_out,
            "connection refused for its client's cap still open the body timeout after its \
             503 (its client took too little of it, or does not answer the closing PING); \
             connection closed"
        );
    }
}

/// Says (at `debug`, as `conn` does for errors that are no one's but the client's) why
/// hyper ended a refused connection, if with an error: the client's bytes were not HTTP,
/// or it left. The connection is counted as refused already.
fn said_if_failed(ended: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = ended {
        tracing::debug!(%error, "connection refused for its client's cap ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_client_up_to_the_cap_and_forgets_it_at_none() {
        let limit = Arc::new(ClientLimit::new(2));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let served = |taken: (Taken, usize)| match taken {
            (Taken::Served(slot), _) => slot,
            other => panic!("not served: {other:?}"),
        };
        let first = served(limit.take(ip("192.0.2.1")));
        let second = served(limit.take(ip("::ffff:192.0.2.1")));
        // Past the cap: refused, and past the refused ones too, closed.
        let refused: Vec<_> = (0..MAX_REFUSING)
            .map(|_| match limit.take(ip("192.0.2.1")) {
                (Taken::Refused(slot), 2) => slot,
                other => panic!("not refused: {other:?}"),
            })
            .collect();
        assert!(matches!(limit.take(ip("192.0.2.1")), (Taken::Closed, 2)));
        // Another client, and an IPv6 one's /64 as one client.
        let other = served(limit.take(ip("192.0.2.2")));
        let v6 = served(limit.take(ip("2001:db8::1")));
        let v6_too = served(limit.take(ip("2001:db8::ffff:1")));
        assert!(matches!(
            limit.take(ip("2001:db8::2")),
            (Taken::Refused(_), 2)
        ));
        served(limit.take(ip("2001:db8:0:1::1")));
        // A served connection's end makes room for one more; a refused one's, for one
        // more refused.
        drop(first);
        let third = served(limit.take(ip("192.0.2.1")));
        drop(refused);
        assert!(matches!(
            limit.take(ip("192.0.2.1")),
            (Taken::Refused(_), 2)
        ));
        drop((second, third, other, v6, v6_too));
        let open = limit.open.lock().unwrap();
        assert!(open.is_empty(), "{open:?}");
    }
}
