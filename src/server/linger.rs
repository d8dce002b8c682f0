//! Closing in stages (RFC 9112 §9.6) an HTTP/1 connection whose client is still sending,
//! and the one answer the server writes outside hyper before such a close (a late request
//! head's `408`).
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

use crate::sys::SecondHandle;

/// The longest a closing connection is drained: enough for a client to read a response
/// sent while it was writing and stop, not enough to let a client that never stops hold
/// its connection slot for long. nginx's `lingering_time` is 30 s; Go waits 500 ms.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// The drain after a `408` for a request head that did not come in time: long enough for
/// a client to read it, short enough that Slowloris clients, which is what most such
/// connections are, hold their slots little longer than the header timeout gave them
/// (Go's 500 ms).
pub(super) const LINGER_AFTER_408: Duration = Duration::from_millis(500);

/// How much is read from the socket at a time while draining it.
const DRAIN_BUFFER: usize = 64 * 1024;

/// Half-closes `socket` (hyper has usually done so already), then reads and discards
/// until the client closes its side, an error, `linger` ([`LINGER`] but after a `408`),
/// or `shutdown` (the shutdown's cut: a graceful drain waits for a linger, as short as it
/// is, so that the answer it protects reaches a proxy), and closes it. The
/// connection keeps its slot under `max_connections` meanwhile.
pub(super) async fn drain_then_close(
    socket: SecondHandle,
    linger: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Already shut down for writing when hyper closed cleanly: an error here is moot.
    let _ = match &socket {
        SecondHandle::Tcp(socket) => socket.shutdown(Shutdown::Write),
        #[cfg(unix)]
        SecondHandle::Unix(socket) => socket.shutdown(Shutdown::Write),
    };
    let socket = match Draining::new(socket) {
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
            match socket.read(&mut buffer).await {
                Ok(0) => return, // the client's own close: nothing more can come
                Ok(n) => drained += n as u64,
                Err(_) => return,
            }
        }
    };
    let client_closed = tokio::select! {
        ended = tokio::time::timeout(linger, drain) => ended.is_ok(),
        () = shutdown => false,
    };
    // The connection's span names the client.
    tracing::debug!(
        drained,
        client_closed,
        linger_ms = linger.as_millis() as u64,
        "drained a closing connection's unread request bytes"
    );
}

/// The second handle, registered with the runtime to be drained.
enum Draining {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Draining {
    fn new(socket: SecondHandle) -> std::io::Result<Draining> {
        match socket {
            SecondHandle::Tcp(socket) => tokio::net::TcpStream::from_std(socket).map(Draining::Tcp),
            #[cfg(unix)]
            SecondHandle::Unix(socket) => {
                tokio::net::UnixStream::from_std(socket).map(Draining::Unix)
            }
        }
    }

    /// Reads what has come, waiting for some; `Ok(0)` at the client's close.
    async fn read(&self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let read = match self {
                Draining::Tcp(socket) => {
                    socket.readable().await?;
                    socket.try_read(buffer)
                }
                #[cfg(unix)]
                Draining::Unix(socket) => {
                    socket.readable().await?;
                    socket.try_read(buffer)
                }
            };
            match read {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                read => return read,
            }
        }
    }
}

/// What a client whose request head did not come whole within the header read timeout
/// is told before the close (as Apache's `mod_reqtimeout` does; nginx only logs its
/// `408`): a request it sees fail with a status, not a connection gone without a word.
pub(super) fn head_timeout_answer() -> Vec<u8> {
    const TEXT: &str = "Request Timeout: the request head did not arrive in time";
    format!(
        "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; \
         charset=utf-8\r\ncontent-length: {}\r\ndate: {}\r\n\r\n{TEXT}",
        TEXT.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    )
    .into_bytes()
}

/// Writes `answer` to a socket hyper has let go of, before its close in stages: what
/// the socket takes at once. A short answer to a socket with nothing unsent (the
/// connection was idle) goes whole; whatever does not is dropped, logged at debug.
pub(super) fn answer(socket: &SecondHandle, answer: &[u8]) {
    // Non-blocking, as tokio set the socket: never waits. `MSG_NOSIGNAL`: a client gone
    // meanwhile is an error, not a `SIGPIPE` (std's own sends do the same).
    #[cfg(target_os = "linux")]
    let flags = libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    let flags = 0;
    let socket = match socket {
        SecondHandle::Tcp(socket) => socket2::SockRef::from(socket),
        #[cfg(unix)]
        SecondHandle::Unix(socket) => socket2::SockRef::from(socket),
    };
    match socket.send_with_flags(answer, flags) {
        Ok(n) if n == answer.len() => {}
        Ok(n) => tracing::debug!(written = n, of = answer.len(), "last answer cut short"),
        Err(err) => tracing::debug!(error = %err, "could not write a last answer"),
    }
}
