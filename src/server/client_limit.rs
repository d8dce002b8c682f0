//! The most connections one client may hold open at once
//! ([`Server::max_connections_per_client`](crate::Server::max_connections_per_client)):
//! a count of each client's open connections, and the answer a connection past the cap
//! gets.
//!
//! Without a cap one client can take every slot under `max_connections`: a connection
//! that is busy, or still sending its first request, is never closed to make room (the
//! header read timeout bounds each, and the client opens the next). nginx's
//! `limit_conn` does this job in front of a server; this is it for a server on its own.

use std::collections::hash_map::{Entry, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use super::conn::{ConnConfig, NewConn};
use super::remote::Peer;
use super::signal::{DRAIN, FORCE};
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

/// Each client's open connections, for the clients with any, and the cap.
#[derive(Debug)]
pub(super) struct ClientLimit {
    cap: usize,
    /// One entry per client with a connection open: at most `max_connections` entries.
    open: Mutex<HashMap<ClientKey, usize>>,
    /// The `Retry-After` of the `503` a connection over the cap gets.
    retry_after: HeaderValue,
}

impl ClientLimit {
    pub(super) fn new(cap: usize, retry_after: HeaderValue) -> Self {
        ClientLimit {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
            retry_after,
        }
    }

    /// A slot for one more connection of `client`, or how many it holds already when
    /// that is the cap.
    fn take(self: &Arc<Self>, client: IpAddr) -> Result<ClientSlot, usize> {
        let key = ClientKey::of(client);
        // Nothing panics under the lock: a poisoned one holds whole counts.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return Err(*count);
        }
        *count += 1;
        Ok(ClientSlot {
            limit: self.clone(),
            key,
        })
    }
}

/// One connection's place in its client's count: given back when the connection's task
/// ends, as its slot under `max_connections` is.
#[derive(Debug)]
pub(super) struct ClientSlot {
    limit: Arc<ClientLimit>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut count) = open.entry(self.key) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
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
    limit.take(addr.ip()).map(Some).map_err(|open| {
        static OVER_CAP: Throttle = Throttle::new();
        if let Some(left_out) = OVER_CAP.admit() {
            tracing::warn!(
                client = %addr.ip(),
                open,
                cap = limit.cap,
                left_out,
                "a client holds the most connections it may; its new one is answered 503 \
                 and closed"
            );
        }
        OverCap {
            retry_after: limit.retry_after.clone(),
        }
    })
}

/// A connection whose client holds the most it may.
#[derive(Debug)]
pub(super) struct OverCap {
    retry_after: HeaderValue,
}

impl OverCap {
    /// Answers the connection's first request `503` with `Retry-After` and closes it:
    /// `Connection: close` on HTTP/1, a GOAWAY after the answer on HTTP/2. The request
    /// is due within the header read timeout, as any first request; its answer is
    /// bounded by the body timeout, as any a client does not read; the shutdown closes
    /// it unanswered.
    pub(super) async fn answer(self, conn: NewConn, config: &ConnConfig) {
        crate::metrics::connection_closed(ConnClosed::ClientLimit);
        // Its slot under `max_connections` is held until the end, as any connection's.
        let NewConn {
            stream,
            permit: _permit,
            ..
        } = conn;
        let answered = Arc::new(Notify::new());
        let service = {
            let answered = answered.clone();
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                answered.notify_one();
                let answer = too_many(req.version(), self.retry_after.clone());
                async move { Ok::<_, Infallible>(answer) }
            })
        };
        let conn = config.http.serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let first_request = tokio::time::timeout(config.header_read_timeout, async {
            tokio::select! {
                _ = conn.as_mut() => false,
                _ = answered.notified() => true,
            }
        });
        let answering = tokio::select! {
            biased;
            _ = config.signal.reached(DRAIN) => false,
            answering = first_request => answering.unwrap_or(false),
        };
        if !answering {
            return;
        }
        // No request after it: HTTP/1 closes after the answer, HTTP/2 says GOAWAY.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            biased;
            _ = config.signal.reached(FORCE) => {}
            _ = tokio::time::timeout(config.write_stall_timeout, conn) => {}
        }
    }
}

/// The `503` a connection over its client's cap gets.
fn too_many(version: Version, retry_after: HeaderValue) -> Response<Full<Bytes>> {
    let body = "Service Unavailable: too many connections from this client, retry later\n";
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(RETRY_AFTER, retry_after);
    // HTTP/2 has no such header: its GOAWAY says it.
    if version < Version::HTTP_2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_client_up_to_the_cap_and_forgets_it_at_none() {
        let limit = Arc::new(ClientLimit::new(2, HeaderValue::from(1)));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = limit.take(ip("192.0.2.1")).unwrap();
        let second = limit.take(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(limit.take(ip("192.0.2.1")).unwrap_err(), 2);
        // Another client, and an IPv6 one's /64 as one client.
        let other = limit.take(ip("192.0.2.2")).unwrap();
        let v6 = limit.take(ip("2001:db8::1")).unwrap();
        let v6_too = limit.take(ip("2001:db8::ffff:1")).unwrap();
        assert_eq!(limit.take(ip("2001:db8::2")).unwrap_err(), 2);
        assert!(limit.take(ip("2001:db8:0:1::1")).is_ok());
        drop(first);
        let third = limit.take(ip("192.0.2.1")).unwrap();
        drop((second, third, other, v6, v6_too));
        let open = limit.open.lock().unwrap();
        assert!(open.is_empty(), "{open:?}");
    }
}
