//! What std cannot do for us: lower a thread's scheduling priority and policy, read the
//! open-file limit, bound what waits unsent in a socket, make a socket's close a reset,
//! see whether a client has sent what nobody read, and how much it has taken, count
//! the process's threads, take a socket systemd passed by its number, and look at what
//! a Unix socket's peer sent without taking it.

/// Copies what has arrived on a Unix socket into `buf` without taking it off the socket
/// (`recv` with `MSG_PEEK`, which tokio offers for TCP only), or `WouldBlock`: the
/// PROXY protocol's header is read so, and not a byte past it.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn peek(socket: &impl std::os::fd::AsRawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, the most `recv` writes;
    // the caller keeps the descriptor open.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Sets the calling thread's nice value to the process's own plus `increment` (the
/// kernel caps it at 19). Best effort: a failure only costs the scheduling benefit, so
/// it is logged at debug level.
///
/// Absolute on purpose: a new thread inherits its creator's nice value, and pool threads
/// are often started by other pool threads, so adding to the current value would push
/// every thread after the first to the lowest priority.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_thread_nice(increment: i32) {
    // SAFETY (both calls): plain integer arguments, no memory of ours is touched. With
    // PRIO_PROCESS, `who = pid` names the main thread (its tid is the pid), whose value
    // stands for the process; `who = 0` names the calling thread only, as Linux keeps a
    // nice value per thread.
    let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, std::process::id()) };
    let target = (base + increment).min(19);
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            target,
            "could not set a pool thread's priority"
        );
    }
}

/// Puts the calling thread under `SCHED_BATCH` (`batch`) or `SCHED_OTHER`, keeping its
/// nice value. Best effort, like [`set_thread_nice`].
///
/// Only between those two policies: a process that runs under a real-time policy or
/// `SCHED_IDLE` chose that itself, so its threads are left as they are. Explicit both ways
/// because a new thread inherits its creator's policy, as it does the nice value.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_thread_batch(batch: bool) {
    // Raw syscalls throughout: Linux keeps a policy per thread, and musl's libc wrappers
    // refuse to touch one (ENOSYS), as POSIX speaks only of processes.
    // SAFETY: an integer argument; the policy of the main thread (tid = pid) stands for
    // the process's.
    let process = unsafe {
        libc::syscall(
            libc::SYS_sched_getscheduler,
            std::process::id() as libc::pid_t,
        )
    };
    if process != libc::c_long::from(libc::SCHED_OTHER)
        && process != libc::c_long::from(libc::SCHED_BATCH)
    {
        return;
    }
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call and is only read. `0` names the calling thread.
    // Leaving SCHED_BATCH or SCHED_OTHER for the other needs no privilege, and the nice
    // value is kept.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0 as libc::pid_t,
            policy,
            &param as *const libc::sched_param,
        )
    };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            batch,
            "could not set a pool thread's scheduling policy"
        );
    }
}

/// No portable per-thread priority elsewhere: nothing to do.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_thread_nice(_increment: i32) {}

/// No scheduling policies to choose from elsewhere: nothing to do.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_thread_batch(_batch: bool) {}

/// Has the kernel report `socket` writable only once fewer than `bytes` of what was
/// written wait unsent (`TCP_NOTSENT_LOWAT`). Best effort, like [`set_thread_nice`].
///
/// Why: without it Linux reports a full socket writable again only once about a third
/// of its send buffer has drained, and autotuning grows that buffer to MiBs. A client
/// that reads a large response slowly but steadily then leaves the socket unwritable for
/// many seconds at a time, and the body timeout takes it for one that reads nothing.
#[cfg(target_os = "linux")]
pub(crate) fn set_notsent_lowat(socket: &impl std::os::fd::AsRawFd, bytes: u32) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // The descriptor is open for as long as `socket` is borrowed.
    set_option(
        socket.as_raw_fd(),
        (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
        &value,
        "TCP_NOTSENT_LOWAT",
    );
}

/// Not available: the body timeout's floor for slow readers is then the kernel's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_notsent_lowat<S>(_socket: &S, _bytes: u32) {}

/// A connection's socket, kept by its descriptor beside hyper's own handle: to see how
/// much of its responses the client has taken ([`ConnSocket::bytes_acked`]), and to
/// choose how it closes:
/// - a reset (`SO_LINGER` of zero), which drops what is still unsent, for a response that
///   broke off: where the close is the body's end (HTTP/1.0, or HTTP/1.1 without a
///   length), a clean close would pass it off as whole;
/// - or a close in stages (RFC 9112 §9.6) when the client is still sending a body
///   nobody read: closed with those bytes unread, or with more on the way, the kernel
///   answers with a reset, which can reach the client before it has read the response.
///   nginx then fails its write of the body and answers `502` instead of the `413`.
///
/// A Unix domain socket has no acknowledgements and no reset: for it `bytes_acked` is
/// `None`, `progress` reads what waits in its queue instead, and `reset_on_close` does
/// nothing; the close in stages is the same.
#[derive(Clone, Copy)]
pub(crate) struct ConnSocket {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    #[cfg(target_os = "linux")]
    tcp: bool,
}

impl ConnSocket {
    pub(crate) fn tcp(socket: &tokio::net::TcpStream) -> Self {
        ConnSocket::new(socket, true)
    }

    #[cfg(unix)]
    pub(crate) fn unix(socket: &tokio::net::UnixStream) -> Self {
        ConnSocket::new(socket, false)
    }

    #[cfg(target_os = "linux")]
    fn new(socket: &impl std::os::fd::AsRawFd, tcp: bool) -> Self {
        ConnSocket {
            fd: socket.as_raw_fd(),
            tcp,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn new<S>(_socket: &S, _tcp: bool) -> Self {
        ConnSocket {}
    }

    /// What the client has taken of the server's writes, seen from the socket; `None`
    /// where it cannot be read. Call it only while the socket is open, from the task
    /// that drives it.
    #[cfg(target_os = "linux")]
    pub(crate) fn progress(self) -> Option<Progress> {
        if self.tcp {
            self.bytes_acked().map(Progress::Acked)
        } else {
            self.queued_for_peer().map(Progress::Queued)
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn progress(self) -> Option<Progress> {
        None
    }

    /// How much of what the server wrote to a Unix socket its client has not read yet
    /// (`SIOCOUTQ`): Linux counts the memory the queued data takes, a little more than
    /// its bytes. It falls as the client reads, and rises only as the server writes.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn queued_for_peer(self) -> Option<u64> {
        let mut queued: libc::c_int = 0;
        // SAFETY: `queued` outlives the call, which writes one `int` to it; the caller
        // keeps the descriptor open. (`SIOCOUTQ` is `TIOCOUTQ`, linux/sockios.h.)
        let rc = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, std::ptr::from_mut(&mut queued)) };
        (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
    }

    /// How many bytes of what the server wrote the client's kernel has acknowledged
    /// (`TCP_INFO`'s `tcpi_bytes_acked`, Linux 4.1 on): how much of its responses the
    /// client has taken, seen from the socket, whose "writable" comes only once 64 KiB
    /// or less waits unsent. `None` where it cannot be read. Call it only while the
    /// socket is open, from the task that drives it.
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    #[allow(unsafe_code)]
    pub(crate) fn bytes_acked(self) -> Option<u64> {
        if !self.tcp {
            return None;
        }
        // SAFETY: `tcp_info` is plain integers, for which zeroes are valid.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` outlive the call, which writes at most `len` bytes to
        // `info` and the length it wrote to `len`; the caller keeps the descriptor open.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::from_mut(&mut info).cast(),
                &mut len,
            )
        };
        // An older kernel's shorter struct ends before the field.
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_acked)
    }

    /// Not read elsewhere: the body timeout then counts only what hyper writes.
    #[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
    pub(crate) fn bytes_acked(self) -> Option<u64> {
        None
    }

    /// Makes the socket's close a reset. Call it only while the socket is open (before
    /// hyper's connection, which owns it, is dropped). Best effort, like
    /// [`set_thread_nice`]; a no-op off Linux.
    #[cfg(target_os = "linux")]
    pub(crate) fn reset_on_close(self) {
        if self.tcp {
            reset_on_close(self.fd);
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn reset_on_close(self) {}

    /// A second handle on the socket, to drain it after hyper closes its own, if the
    /// client has sent bytes nobody has read, or if `more_may_come` (a request body was
    /// left unread) and the client has not closed its side. `None` otherwise: one `recv`
    /// that returns at once. Call it only while the socket is open.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn if_unread_input(self, more_may_come: bool) -> Option<SecondHandle> {
        let mut byte = 0u8;
        // SAFETY: `byte` outlives the call, which writes at most one byte to it; the
        // caller keeps the descriptor open. `MSG_PEEK` leaves the byte where it is.
        let n = unsafe {
            libc::recv(
                self.fd,
                std::ptr::from_mut(&mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let waiting = n > 0
            || (n < 0
                && more_may_come
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock);
        if !waiting {
            return None; // the client's own close, an error, or nothing waits or will
        }
        self.duplicate()
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn if_unread_input(self, _more_may_come: bool) -> Option<SecondHandle> {
        None
    }

    /// A second handle on the socket, which keeps it open once hyper's is dropped: to
    /// write a last answer and drain it. `None` if the descriptor cannot be duplicated
    /// (the process's file limit), and off Linux. Call it only while the socket is open.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn duplicate(self) -> Option<SecondHandle> {
        // SAFETY: the caller keeps the descriptor open for the duration of the borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        // The duplicate shares the socket, non-blocking as tokio set it.
        let fd = fd.try_clone_to_owned().ok()?;
        Some(if self.tcp {
            SecondHandle::Tcp(fd.into())
        } else {
            SecondHandle::Unix(fd.into())
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn duplicate(self) -> Option<SecondHandle> {
        None
    }
}

/// What a client has taken of the server's writes ([`ConnSocket::progress`]). Not read
/// off Linux.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Progress {
    /// TCP: the bytes the client's kernel acknowledged since the connection began.
    Acked(u64),
    /// A Unix socket: what waits for the client to read (`SIOCOUTQ`).
    Queued(u64),
}

/// A second handle on a connection's socket ([`ConnSocket::duplicate`]), of its kind.
/// None is made off Linux.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
#[derive(Debug)]
pub(crate) enum SecondHandle {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

/// Releases the C allocator's free memory to the OS (`malloc_trim(0)`: every arena,
/// pages in the middle of a heap too); whether any was. glibc only: musl's allocator
/// and others return memory on their own terms.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn trim_allocator() -> bool {
    // SAFETY: no arguments to uphold; glibc takes the arenas' locks itself.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim_allocator() -> bool {
    false
}

#[cfg(target_os = "linux")]
fn reset_on_close(socket: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(
        socket,
        (libc::SOL_SOCKET, libc::SO_LINGER),
        &linger,
        "SO_LINGER",
    );
}

/// `setsockopt` of `value` as the option `(level, name)`, on an open descriptor. Best
/// effort: a failure costs only what the option was for, and is logged at debug.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_option<T>(
    socket: std::os::fd::RawFd,
    (level, name): (libc::c_int, libc::c_int),
    value: &T,
    what: &str,
) {
    // SAFETY: `value` outlives the call, which only reads `size_of::<T>()` bytes of it;
    // the callers pass the C type the option takes, and keep the descriptor open.
    let rc = unsafe {
        libc::setsockopt(
            socket,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            option = what,
            "could not set a connection's socket option"
        );
    }
}

/// An exclusive `flock` on the directory `dir`, held while the returned handle lives:
/// servers binding Unix sockets there take it around the check for a stale socket file
/// and the bind, so that one cannot remove a file another has just bound. Tried for up
/// to a second, never waited on for ever (another program may hold it); `None` then, or
/// if the directory cannot be opened (no read permission), and the bind goes on without.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn lock_dir(dir: &std::path::Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let not_locked = |why: &dyn std::fmt::Display| {
        tracing::debug!(
            dir = %dir.display(), reason = %why,
            "socket directory not locked; binding without the lock"
        );
        None
    };
    let handle = match std::fs::File::open(dir) {
        Ok(handle) => handle,
        Err(err) => return not_locked(&err),
    };
    for _ in 0..100 {
        // SAFETY: the descriptor is open while `handle` is borrowed.
        let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Some(handle);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return not_locked(&err);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    not_locked(&"held by another for a second")
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), when it has one.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` outlives the call, which only writes it.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    // `rlim_t` is 32 bits on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(soft)
}

/// Not read elsewhere.
#[cfg(not(target_os = "linux"))]
pub(crate) fn open_file_limit() -> Option<u64> {
    None
}

/// How many files the process holds open now (`/proc/self/fd`), when that can be read.
pub(crate) fn open_files() -> Option<u64> {
    // The directory's own descriptor, open while it is read, is one of the entries.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

/// How many threads the process has now (`/proc/self/stat`), when that can be read.
pub(crate) fn thread_count() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The name in parentheses may hold spaces; `num_threads` is the 20th field, the 18th
    // after it.
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(17)?.parse().ok()
}

/// What a descriptor passed by number (systemd's socket activation) is, looked at
/// without taking it: whether it is a stream socket that listens, and its local address.
/// `EBADF` when it is not open; `ENOTSOCK` when it is no socket. Nothing is closed,
/// whatever it is: it may be another part of the process's.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn inspect_passed_fd(
    fd: std::os::fd::RawFd,
) -> std::io::Result<(bool, socket2::SockAddr)> {
    // SAFETY: a plain integer; on a number that is not open `fcntl` fails with `EBADF`.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (above) and stays so while borrowed: the borrow ends with this
    // function, which closes nothing.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let stream = socket.r#type()? == socket2::Type::STREAM;
    let local = socket.local_addr()?;
    Ok((stream && is_listening(&socket)?, local))
}

/// Whether `socket` listens (`SO_ACCEPTCONN`). Where that option is not read, whether it
/// has no peer: `Accept=yes` passes connected sockets, the one other kind systemd gives.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn is_listening(socket: &socket2::SockRef<'_>) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call, which writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value != 0)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn is_listening(socket: &socket2::SockRef<'_>) -> std::io::Result<bool> {
    Ok(socket.peer_addr().is_err())
}

/// Marks `fd`, a listening socket systemd passed this process (checked first with
/// [`inspect_passed_fd`]), close-on-exec as the crate's own sockets are: a program a
/// handler starts must not inherit the listener (systemd passes it without the flag).
/// Touches nothing else, and takes nothing: done for every passed socket before any is
/// taken, so that the take itself cannot fail halfway.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn set_cloexec(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY (both calls): plain integers; on a number that is not open `fcntl` fails
    // with `EBADF` and touches nothing.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes `fd`, a listening socket systemd passed this process, checked with
/// [`inspect_passed_fd`] and marked with [`set_cloexec`] (which found it open). Cannot
/// fail: every check is the caller's, made before it takes any.
///
/// # Safety
///
/// `fd` is open and nothing else in the process owns it, now or later: the caller takes
/// each number at most once (the returned handle closes it when dropped, and a second
/// would close it twice).
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) unsafe fn adopt_passed_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller's (above).
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
