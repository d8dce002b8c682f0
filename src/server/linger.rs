//! Closing in stages (RFC 9112 §9.6) an HTTP/1 connection whose client is still sending.
//!
//! The server may answer before it has read a request's body (a `413` for a declared
//! length over the limit, a handler that does not read a large body) and then closes the
//! connection. Closed with request bytes unread, or with more on the way, the kernel
//! answers them with a reset, and a reset can reach the client before it has read the
//! response: a client that writes the whole body before reading (nginx, most proxies)
//! sees its write fail and reports the connection's failure (nginx answers `502`)
//! instead of the `413`. So, as nginx's `lingering_close` and Go's `net/http` do, the
//! server stops sending, then reads and discards what still comes for a short while.

use std::net::Shutdown;
use std::time::Duration;

/// The longest a closing connection is drained: enough for a client to read a response
/// sent while it was writing and stop, not enough to let a client that never stops hold
/// its connection slot for long. nginx's `lingering_time` is 30 s; Go waits 500 ms.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// How much is read from the socket at a time while draining it.
const DRAIN_BUFFER: usize = 64 * 1024;

/// Half-closes `socket` (hyper has usually done so already), then reads and discards
/// until the client closes its side, an error, [`LINGER`], or `shutdown` (a server that
/// stops does not wait on it), and closes it. The connection keeps its slot under
/// `max_connections` meanwhile.
pub(super) async fn drain_then_close(
    socket: std::net::TcpStream,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Already shut down for writing when hyper closed cleanly: an error here is moot.
    let _ = socket.shutdown(Shutdown::Write);
    let socket = match tokio::net::TcpStream::from_std(socket) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::debug!(error = %err, "could not drain a closing connection");
            return;
        }
    };
    let mut buffer = vec![0u8; DRAIN_BUFFER];
    let mut drained = 0u64;
    let drain = async {
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            match socket.try_read(&mut buffer) {
                Ok(0) => return, // the client's own close: nothing more can come
                Ok(n) => drained += n as u64,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let client_closed = tokio::select! {
        ended = tokio::time::timeout(LINGER, drain) => ended.is_ok(),
        () = shutdown => false,
    };
    // The connection's span names the client.
    tracing::debug!(
        drained,
        client_closed,
        "drained a closing connection's unread request bytes"
    );
}
