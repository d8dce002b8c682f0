//! systemd's readiness protocol (`sd_notify(3)`): a service of `Type=notify` is started
//! only once it says `READY=1`, so units ordered after it (`After=`), and a
//! `systemctl start` that waits, see a server that accepts, not one still binding or
//! building its runtime. gunicorn's arbiter sends the same when it has booted.
//!
//! The message is a datagram to the Unix socket named in `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`), which systemd sets for such a service.
//! Without it nothing is sent: under any other supervisor, or none, this is a no-op; off
//! Unix, always.

#[cfg(unix)]
use std::io;
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;

/// The variable systemd names its notification socket in.
#[cfg(unix)]
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the server accepts connections on `addr`.
pub(super) fn ready(addr: &super::ListenAddr) {
    notify(&format!("READY=1\nSTATUS=syncbridge listening on {addr}"));
}

/// Tells systemd the server is stopping (it no longer accepts).
pub(super) fn stopping() {
    notify("STOPPING=1\nSTATUS=syncbridge shutting down");
}

#[cfg(not(unix))]
fn notify(_state: &str) {}

/// Sends `state` to `$NOTIFY_SOCKET`, if set. A failure is logged, never returned: the
/// server serves whether or not its supervisor heard.
#[cfg(unix)]
fn notify(state: &str) {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if target.is_empty() {
        return;
    }
    match send(&target, state) {
        Ok(()) => tracing::debug!(socket = ?target, state, "told systemd"),
        Err(err) => tracing::warn!(
            socket = ?target, state, error = %err,
            "could not tell systemd (NOTIFY_SOCKET); a Type=notify unit waits for READY=1 \
             until its start timeout"
        ),
    }
}

#[cfg(unix)]
fn send(target: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    // The caller is the accept loop, on the runtime: never wait on a full queue.
    socket.set_nonblocking(true)?;
    match target.as_bytes().strip_prefix(b"@") {
        Some(name) => send_abstract(&socket, name, state),
        None => socket
            .send_to(state.as_bytes(), std::path::Path::new(target))
            .map(drop),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(drop)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn send_abstract(_socket: &UnixDatagram, _name: &[u8], _state: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}
