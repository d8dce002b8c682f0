//! systemd's two protocols a server takes part in, as gunicorn does.
//!
//! Readiness (`sd_notify(3)`): a service of `Type=notify` is started only once it says
//! `READY=1`, so units ordered after it (`After=`), and a `systemctl start` that waits,
//! see a server that accepts, not one still binding or building its runtime. The message
//! is a datagram to the Unix socket named in `$NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`), which systemd sets for such a service. Without it
//! nothing is sent: under any other supervisor, or none, this is a no-op; off Unix,
//! always.
//!
//! Socket activation (`sd_listen_fds(3)`): systemd binds the socket of a `.socket` unit
//! and passes it to the service open, from descriptor 3 on, saying how many in
//! `$LISTEN_FDS` and for which process in `$LISTEN_PID`. The socket outlives the
//! service: connections made while it restarts wait in its backlog.

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

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
#[cfg(unix)]
const LISTEN_FDS_START: std::os::fd::RawFd = 3;

/// Whether this process has taken its socket from systemd: a second take would close it
/// twice.
#[cfg(unix)]
static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The listening socket systemd passed this process, or why there is none to serve.
#[cfg(unix)]
pub(super) fn passed_listener() -> Result<super::Listener, String> {
    use std::sync::atomic::Ordering;
    let var = |name| std::env::var(name).ok();
    let (pid, fds) = match (var("LISTEN_PID"), var("LISTEN_FDS")) {
        (Some(pid), Some(fds)) => (pid, fds),
        _ => {
            return Err(
                "systemd passed no socket: LISTEN_PID and LISTEN_FDS are not set (a \
                        unit started by its .socket unit has them)"
                    .to_owned(),
            )
        }
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Err(format!(
            "systemd's sockets are for process {pid} (LISTEN_PID), not this one ({})",
            std::process::id()
        ));
    }
    match fds.trim().parse::<u32>() {
        Ok(1) => {}
        Ok(0) | Err(_) => return Err(format!("LISTEN_FDS is {fds:?}: no socket to serve")),
        Ok(n) => {
            return Err(format!(
                "systemd passed {n} sockets; a server serves one (use \
                 `Server::from_listener` for each, through a crate such as `listenfd`)"
            ))
        }
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err("systemd's socket was taken already, by an earlier from_systemd".to_owned());
    }
    let fd = crate::sys::adopt_passed_fd(LISTEN_FDS_START)
        .map_err(|err| format!("descriptor {LISTEN_FDS_START} from systemd: {err}"))?;
    let socket = socket2::Socket::from(fd);
    if socket.r#type().map_err(|err| err.to_string())? != socket2::Type::STREAM {
        return Err("systemd's socket is not a stream socket (ListenStream=)".to_owned());
    }
    // `Accept=yes` passes each connection to an instance of its own, not the listener.
    if socket.peer_addr().is_ok() {
        return Err(
            "systemd passed a connection, not a listening socket: set Accept=no \
                    in the .socket unit (its default)"
                .to_owned(),
        );
    }
    let local = socket.local_addr().map_err(|err| err.to_string())?;
    let fd = std::os::fd::OwnedFd::from(socket);
    if local.is_unix() {
        // Its file is systemd's: the server does not remove it.
        Ok(super::Listener::Unix(fd.into(), None))
    } else if local.as_socket().is_some() {
        Ok(super::Listener::Tcp(fd.into()))
    } else {
        Err("systemd's socket is neither TCP nor a Unix socket".to_owned())
    }
}
