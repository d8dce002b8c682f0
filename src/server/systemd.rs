//! The systemd protocols a server takes part in: readiness and socket activation, as
//! gunicorn does, and the watchdog.
//!
//! Readiness (`sd_notify(3)`): a service of `Type=notify` is started only once it says
//! `READY=1`, so units ordered after it (`After=`), and a `systemctl start` that waits,
//! see a server that accepts, not one still binding or building its runtime; at its
//! shutdown the server only updates its `STATUS=`. The message is a datagram to the Unix
//! socket named in `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`), which systemd sets for such a service. Without it nothing is sent: under any
//! other supervisor, or none, this is a no-op; off Unix, always.
//!
//! The watchdog (`sd_watchdog_enabled(3)`): a unit with `WatchdogSec=` sets
//! `$WATCHDOG_USEC`, and kills (`SIGABRT`) and, as `Restart=` says, restarts a service
//! that does not send `WATCHDOG=1` that often. The server pings from a task on its
//! runtime, so the pings stop when the runtime runs no task: async code that blocks its
//! threads (`std::thread::sleep` in a background task, a sync client called from
//! `async fn`), which stops every connection on them too.
//!
//! Socket activation (`sd_listen_fds(3)`): systemd binds the sockets of a `.socket` unit
//! and passes them to the service open, from descriptor 3 on, saying how many in
//! `$LISTEN_FDS` and for which process in `$LISTEN_PID`. The sockets outlive the
//! service: connections made while it restarts wait in their backlog.

#[cfg(unix)]
use std::ffi::{OsStr, OsString};
#[cfg(unix)]
use std::io;
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;
#[cfg(unix)]
use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;

/// The variable systemd names its notification socket in.
#[cfg(unix)]
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The variables systemd says its watchdog's limit in, and for which process.
#[cfg(unix)]
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
#[cfg(unix)]
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Tells systemd the server accepts connections on `addr` (one address or several).
/// Called on the runtime: a notification socket whose queue is full for a moment (systemd
/// busy at boot) is tried again from a task of its own, every 20 ms for up to 5 s, rather
/// than lose `READY=1` and have the unit fail its start.
pub(super) fn ready(addr: &dyn std::fmt::Display) {
    let state = format!("READY=1\nSTATUS=syncbridge listening on {addr}");
    #[cfg(unix)]
    if let Some(target) = notify_socket() {
        match send(&target, &state) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tokio::spawn(async move {
                    for _ in 0..250 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        match send(&target, &state) {
                            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                            sent => return said(&target, &state, sent),
                        }
                    }
                    said(&target, &state, Err(io::ErrorKind::WouldBlock.into()));
                });
            }
            sent => said(&target, &state, sent),
        }
    }
    #[cfg(not(unix))]
    let _ = (addr, state);
}

/// Under a unit with `WatchdogSec=`, starts pinging systemd's watchdog from a task on
/// the runtime, until the returned handle is dropped. Called on the runtime; a
/// `$NOTIFY_SOCKET` that is no address is named if `name_a_bad_socket` (not when
/// [`ready`] has just named it). `None` without a watchdog for this process (or off
/// Unix).
pub(super) fn watchdog(name_a_bad_socket: bool) -> Option<AbortOnDropHandle<()>> {
    #[cfg(unix)]
    {
        let target = if name_a_bad_socket {
            notify_socket()?
        } else {
            notify_socket_var().filter(|target| is_notify_address(target))?
        };
        let var = |name| std::env::var_os(name);
        let pid = std::process::id();
        match watchdog_limit(var(WATCHDOG_USEC), var(WATCHDOG_PID), pid) {
            Ok(limit) => limit.map(|limit| ping_watchdog(target, limit)),
            Err(why) => {
                tracing::warn!("{why}; the server does not ping systemd's watchdog");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = name_a_bad_socket;
        None
    }
}

/// Tells systemd, for `systemctl status`, that the server is shutting down. Only the
/// status: `STOPPING=1` would make systemd treat the whole service as stopping (and kill
/// it at `TimeoutStopSec`), which a process that stops one server of several, or its
/// server through its handle, is not. gunicorn sends nothing then either.
pub(super) fn stopping() {
    #[cfg(unix)]
    if let Some(target) = notify_socket() {
        let state = "STATUS=syncbridge shutting down";
        said(&target, state, send(&target, state));
    }
}

/// The watchdog's limit, if systemd set one for this process (`own_pid`), read as
/// sd_watchdog_enabled(3) reads it: the limit first, then whose it is; a `$WATCHDOG_PID`
/// of another process (a parent under the same unit) means none for this one. A value
/// systemd would refuse is said, not guessed at.
#[cfg(unix)]
fn watchdog_limit(
    usec: Option<OsString>,
    pid: Option<OsString>,
    own_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else { return Ok(None) };
    // Decimal, as systemd writes them; leading blanks skipped, as its parser does.
    let number = |value: &OsStr| {
        value
            .to_str()
            .and_then(|v| v.trim_start().parse::<u64>().ok())
    };
    let limit = match number(&usec) {
        // `u64::MAX` is systemd's "infinity", which it refuses too.
        Some(usec) if usec > 0 && usec < u64::MAX => Duration::from_micros(usec),
        _ => {
            return Err(format!(
                "{WATCHDOG_USEC} is {usec:?}, not a positive number of microseconds"
            ))
        }
    };
    match pid.map(|pid| (number(&pid), pid)) {
        None => Ok(Some(limit)),
        Some((Some(pid), _)) if pid == u64::from(own_pid) => Ok(Some(limit)),
        // Any other process id (a `pid_t`, so positive and at most `i32::MAX`).
        Some((Some(pid), _)) if pid > 0 && pid <= i32::MAX as u64 => Ok(None),
        Some((_, pid)) => Err(format!("{WATCHDOG_PID} is {pid:?}, not a process id")),
    }
}

/// Sends `WATCHDOG=1` at once and then every half `limit` (sd_watchdog_enabled(3)'s
/// advice), on one socket, until the handle is dropped. A ping that finds systemd's queue
/// full is tried again every 20 ms until it goes: one lost ping would leave systemd a gap
/// of the whole limit. A tick late by more than a quarter of the limit means this task
/// did not run for at least that long (a runtime blocked, or kept busy by tasks that do
/// not yield): said at warn level once the ping is out, with the time since the ping
/// before it, which is what systemd holds against the limit. A stall that ends between
/// two ticks, or ends in the kill, leaves no such line.
#[cfg(unix)]
fn ping_watchdog(target: OsString, limit: Duration) -> AbortOnDropHandle<()> {
    let every = limit / 2;
    let retry = Duration::from_millis(20).min(every);
    // Never under 50 ms: a limit of a few milliseconds would otherwise have the timer's
    // own jitter said at every tick.
    let warn_after = (limit / 4).max(Duration::from_millis(50));
    let watchdog_ms = limit.as_millis() as u64;
    let every_ms = every.as_millis() as u64;
    tracing::info!(socket = ?target, every_ms, watchdog_ms, "pinging systemd's watchdog");
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut socket = None;
        let mut last_ping = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            let late = ticks.tick().await.elapsed();
            // Sent before anything is logged: a log pipe that blocks is one of the
            // stalls this is for.
            let sent = ping(&mut socket, &target);
            let since_last_ping = last_ping.elapsed();
            match &sent {
                Ok(()) => last_ping = tokio::time::Instant::now(),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => ticks.reset_after(retry),
                Err(_) => {}
            }
            if late > warn_after {
                tracing::warn!(
                    late_ms = late.as_millis() as u64,
                    since_last_ping_ms = since_last_ping.as_millis() as u64,
                    watchdog_ms,
                    "the watchdog's ping task did not run for at least {} ms, and systemd \
                     went {} ms without a ping; it kills the service at watchdog_ms",
                    late.as_millis(),
                    since_last_ping.as_millis()
                );
            }
            // Said when it begins and when it ends, not at every try: a ping that does
            // not arrive is one systemd may kill the service for.
            match (sent, failing) {
                (Ok(()), true) => {
                    failing = false;
                    tracing::info!(socket = ?target, "systemd's watchdog is pinged again");
                }
                (Err(err), false) => {
                    failing = true;
                    tracing::warn!(
                        socket = ?target, error = %err,
                        "could not ping systemd's watchdog (WATCHDOG=1); trying again, and \
                         it kills the service if no ping arrives within its WatchdogSec"
                    );
                }
                _ => {}
            }
        }
    }))
}

/// One `WATCHDOG=1` on `slot`'s socket, made there first if it holds none (or a
/// failure to make it left none).
#[cfg(unix)]
fn ping(slot: &mut Option<UnixDatagram>, target: &OsStr) -> io::Result<()> {
    let socket = match slot {
        Some(socket) => socket,
        None => slot.insert(datagram_socket()?),
    };
    send_on(socket, target, "WATCHDOG=1")
}

/// `$NOTIFY_SOCKET`, if set to an address sd_notify(3) sends to. Anything else (a
/// relative path, systemd's newer `vsock:`) is named in a warning and left alone.
#[cfg(unix)]
fn notify_socket() -> Option<OsString> {
    let target = notify_socket_var()?;
    if !is_notify_address(&target) {
        tracing::warn!(
            socket = ?target,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name; systemd \
             is not told the server's state"
        );
        return None;
    }
    Some(target)
}

/// `$NOTIFY_SOCKET`, if set and not empty.
#[cfg(unix)]
fn notify_socket_var() -> Option<OsString> {
    std::env::var_os(NOTIFY_SOCKET).filter(|target| !target.is_empty())
}

/// Whether `target` is an address sd_notify(3) sends to: an absolute path, or an abstract
/// name written with a leading `@`.
#[cfg(unix)]
fn is_notify_address(target: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    matches!(target.as_bytes(), [b'/', ..] | [b'@', _, ..])
}

/// Logs how telling systemd `state` went. A failure is never returned: the server serves
/// whether or not its supervisor heard.
#[cfg(unix)]
fn said(target: &OsStr, state: &str, sent: io::Result<()>) {
    match sent {
        Ok(()) => tracing::debug!(socket = ?target, state, "told systemd"),
        Err(err) => tracing::warn!(
            socket = ?target, state, error = %err,
            "could not tell systemd (NOTIFY_SOCKET); a Type=notify unit not told READY=1 \
             waits for it until its start timeout"
        ),
    }
}

/// One datagram, without waiting: the caller is on the runtime.
#[cfg(unix)]
fn send(target: &OsStr, state: &str) -> io::Result<()> {
    send_on(&datagram_socket()?, target, state)
}

/// An unbound datagram socket that does not wait: its callers are on the runtime.
#[cfg(unix)]
fn datagram_socket() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(unix)]
fn send_on(socket: &UnixDatagram, target: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    match target.as_bytes().strip_prefix(b"@") {
        Some(name) => send_abstract(socket, name, state),
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

/// Whether this process has taken its sockets from systemd: a second take would close
/// them twice.
#[cfg(unix)]
static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The listening sockets systemd passed this process, in its order, or why there are
/// none to serve. None is taken unless all are listening sockets, and then all are.
#[cfg(unix)]
pub(super) fn passed_listeners() -> Result<Vec<super::Listener>, String> {
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
    let count = match fds.trim().parse::<std::os::fd::RawFd>() {
        Ok(n) if n > 0 && n <= std::os::fd::RawFd::MAX - LISTEN_FDS_START => n,
        _ => return Err(format!("LISTEN_FDS is {fds:?}: no socket to serve")),
    };
    // Before anything is looked at: once taken, the descriptors are the server's, or
    // after it closed them, whatever took their numbers since.
    if TAKEN.load(Ordering::SeqCst) {
        return Err("systemd's sockets were taken already, by an earlier from_systemd".into());
    }
    let passed = LISTEN_FDS_START..LISTEN_FDS_START + count;
    // All looked at before any is taken: a descriptor that is not a listening socket is
    // someone else's (a file, the runtime's epoll), and must stay open, and so must the
    // others then, for whatever else takes passed sockets.
    let mut unix = Vec::new();
    for fd in passed.clone() {
        let named = |why: &dyn std::fmt::Display| format!("systemd's descriptor {fd}: {why}");
        let (listening, local) = crate::sys::inspect_passed_fd(fd).map_err(|err| named(&err))?;
        if !listening {
            return Err(named(
                &"not a listening stream socket (ListenStream=, with Accept=no, \
                  its default: Accept=yes passes each connection instead)",
            ));
        }
        if !local.is_unix() && local.as_socket().is_none() {
            return Err(named(&"neither TCP nor a Unix socket"));
        }
        unix.push(local.is_unix());
    }
    for fd in passed.clone() {
        crate::sys::set_cloexec(fd).map_err(|err| format!("systemd's descriptor {fd}: {err}"))?;
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err("systemd's sockets were taken already, by an earlier from_systemd".into());
    }
    let mut listeners = Vec::new();
    for (fd, unix) in passed.zip(unix) {
        // SAFETY: open (`set_cloexec` found it so), a listening socket (inspected above),
        // and no one else's: systemd passed it to this process alone (`LISTEN_PID`), and
        // `TAKEN` makes this the only take.
        #[allow(unsafe_code)]
        let fd = unsafe { crate::sys::adopt_passed_fd(fd) };
        listeners.push(if unix {
            // Its file is systemd's: the server does not remove it.
            super::Listener::Unix(fd.into(), None)
        } else {
            super::Listener::Tcp(fd.into())
        });
    }
    Ok(listeners)
}

#[cfg(all(test, unix))]
mod tests {
    use super::watchdog_limit;
    use std::time::Duration;

    fn limit(usec: Option<&str>, pid: Option<&str>) -> Result<Option<Duration>, String> {
        watchdog_limit(usec.map(Into::into), pid.map(Into::into), 42)
    }

    #[test]
    fn the_watchdog_limit_is_this_process_s_or_none() {
        let ms = |n| Ok(Some(Duration::from_millis(n)));
        assert_eq!(limit(None, None), Ok(None));
        assert_eq!(limit(None, Some("42")), Ok(None));
        assert_eq!(limit(Some("30000000"), None), ms(30_000));
        assert_eq!(limit(Some("200000"), Some("42")), ms(200));
        assert_eq!(limit(Some(" 200000"), Some(" 42")), ms(200));
        // Set for the process systemd started, which then started this one.
        assert_eq!(limit(Some("200000"), Some("41")), Ok(None));
    }

    #[test]
    fn a_watchdog_variable_that_is_not_a_number_is_named() {
        for (usec, pid, named) in [
            ("0", None, "WATCHDOG_USEC is \"0\""),
            ("-5", None, "WATCHDOG_USEC is \"-5\""),
            ("30s", None, "WATCHDOG_USEC is \"30s\""),
            (
                "18446744073709551615",
                None,
                "WATCHDOG_USEC is \"18446744073709551615\"",
            ),
            ("0x30d40", None, "WATCHDOG_USEC is \"0x30d40\""),
            // The limit is read first, as systemd reads it, whoever it is for.
            ("0", Some("41"), "WATCHDOG_USEC is \"0\""),
            ("200000", Some("me"), "WATCHDOG_PID is \"me\""),
            ("200000", Some(""), "WATCHDOG_PID is \"\""),
            ("200000", Some("0"), "WATCHDOG_PID is \"0\""),
            (
                "200000",
                Some("99999999999"),
                "WATCHDOG_PID is \"99999999999\"",
            ),
        ] {
            let why = limit(Some(usec), pid).expect_err(usec);
            assert!(why.starts_with(named), "{why}");
        }
    }
}
