//! What the server listens on: a TCP socket, or a Unix domain socket (as gunicorn's
//! `--bind unix:PATH`, for a reverse proxy on the same machine), and the socket file the
//! server owns in the second case; and a server's several listeners, accepted from as
//! one.
//!
//! All end in the same accept loop (`serve`); a connection is served by the same code
//! either way (`conn::serve`, over a `stream::ConnStream` that is either). What differs
//! here: a Unix socket has no peer address, no `TCP_NODELAY`, and leaves a file behind.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::throttle::Throttle;

/// The listen backlog: room for bursts of new connections (gunicorn uses 2048).
const LISTEN_BACKLOG: i32 = 2048;

/// Where a [`Server`](super::Server) listens.
///
/// Its `Display` is the address, or `unix:` and the path, as in the server's log lines.
/// With [`Server::remote_addr`](super::Server::remote_addr) on, each request to a server
/// with several sockets carries the one it came in on in its extensions.
///
/// # Examples
///
/// ```
/// use syncbridge::{ListenAddr, Request};
///
/// fn handler(req: Request) -> &'static str {
///     match req.extensions().get::<ListenAddr>() {
///         Some(ListenAddr::Tcp(addr)) if addr.port() == 8081 => "healthy\n",
///         _ => "hello\n",
///     }
/// }
/// # let _ = handler;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP address (the real port when bound to port 0).
    Tcp(SocketAddr),
    /// The path of a Unix domain socket, as it was bound. Empty for a listener handed
    /// over without one (an abstract socket, on Linux).
    #[cfg(unix)]
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            #[cfg(unix)]
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// The TCP address, if it is one.
    pub(super) fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            #[cfg(unix)]
            ListenAddr::Unix(_) => None,
        }
    }
}

/// A bound listener, before it is registered with a runtime.
pub(super) enum Listener {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener, Option<SocketFile>),
}

/// A listener registered with the current runtime.
pub(super) enum Registered {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix {
        listener: tokio::net::UnixListener,
        /// Held to be removed with the listener, after it (fields drop in order).
        _file: Option<SocketFile>,
    },
}

/// A connection just accepted.
pub(super) enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Listener {
    /// Binds the TCP address `addr`.
    pub(super) fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // Restarting a server must not wait for old connections in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(Listener::Tcp(socket.into()))
    }

    /// Binds a Unix socket at `path`, replacing a stale socket file there on Linux: one
    /// that no server listens on any more (a server killed before it could remove it),
    /// as gunicorn does. A file that is not a socket, or a socket a server still accepts
    /// on, is left alone and the bind fails with `AddrInUse`.
    #[cfg(unix)]
    pub(super) fn bind_unix(path: &Path) -> io::Result<Listener> {
        // Bound as given (a relative path is a way round the ~100-byte limit), kept
        // absolute: the file is still found if the working directory changes, as a
        // daemon's does. Made before the bind, which nothing may fail after but the
        // file's own disappearance.
        let absolute = std::path::absolute(path)?;
        // Around the bind too: a socket bound but not yet listening refuses connections,
        // and looks stale to another server's check.
        #[cfg(target_os = "linux")]
        let _lock = crate::sys::lock_dir(match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        });
        let listener = match listen_unix(path) {
            Err(err) if err.kind() == io::ErrorKind::AddrInUse && replace_stale(path)? => {
                listen_unix(path)?
            }
            bound => bound?,
        };
        let file = SocketFile::of(&absolute)?;
        Ok(Listener::Unix(listener, Some(file)))
    }

    /// Makes the listener non-blocking (tokio needs it so) and says where it listens.
    pub(super) fn prepare(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                listener.local_addr().map(ListenAddr::Tcp)
            }
            #[cfg(unix)]
            Listener::Unix(listener, _) => {
                listener.set_nonblocking(true)?;
                let addr = listener.local_addr()?;
                let path = addr.as_pathname().map(Path::to_path_buf);
                Ok(ListenAddr::Unix(path.unwrap_or_default()))
            }
        }
    }

    /// Registers the listener with the current runtime. Panics (inside tokio) without a
    /// runtime or its IO driver: the caller checks for those.
    pub(super) fn register(self) -> io::Result<Registered> {
        match self {
            Listener::Tcp(listener) => {
                tokio::net::TcpListener::from_std(listener).map(Registered::Tcp)
            }
            #[cfg(unix)]
            Listener::Unix(listener, file) => {
                let listener = tokio::net::UnixListener::from_std(listener)?;
                Ok(Registered::Unix {
                    listener,
                    _file: file,
                })
            }
        }
    }
}

impl Registered {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        match self {
            Registered::Tcp(listener) => listener
                .poll_accept(cx)
                .map_ok(|(stream, peer)| Accepted::Tcp(stream, peer)),
            #[cfg(unix)]
            Registered::Unix { listener, .. } => listener
                .poll_accept(cx)
                .map_ok(|(stream, _unnamed)| Accepted::Unix(stream)),
        }
    }
}

/// Every listener of a server, accepted from as one: a server bound to a TCP address
/// and a Unix socket, or passed several sockets by systemd, has one accept loop, one
/// pool and one shutdown for all of them, as gunicorn's several `--bind`s have.
pub(super) struct Listeners {
    listening: Vec<Listening>,
    /// Where the next accept starts looking: the one after the last that gave a
    /// connection, so that a flood on one listener does not starve the others.
    next: usize,
}

struct Listening {
    registered: Registered,
    /// Shared with each connection it accepts, whose requests may carry it.
    addr: Arc<ListenAddr>,
    /// Set after an accept error that is not one connection's (a file limit, a socket
    /// shut down under the server): this listener is not tried again until it fires,
    /// rather than spin on the error; the others go on.
    resting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Its accept errors are said once a second, each listener's apart: with one for
    /// all, the first of several failing listeners would take every line.
    said: Throttle,
    /// Whether its connections begin with a PROXY protocol header
    /// (`Server::proxy_protocol`).
    proxy_protocol: bool,
}

/// How long a listener rests after an accept error that is not one connection's.
pub(super) const ACCEPT_REST: std::time::Duration = std::time::Duration::from_millis(100);

/// An accept that failed, and on which listener.
pub(super) struct AcceptFailed {
    pub(super) addr: ListenAddr,
    pub(super) error: io::Error,
    /// The error concerns one connection only (reset before it was taken): the listener
    /// is fine, and goes on at once. Otherwise it rests for [`ACCEPT_REST`].
    pub(super) per_connection: bool,
    /// Whether to say so now, and how many of this listener's errors were not said since
    /// the last line: `None` while its once-a-second throttle holds them back.
    pub(super) say: Option<u64>,
}

impl Listeners {
    /// Registers every listener with the current runtime (see [`Listener::register`]);
    /// `addrs` are where each listens, for the log lines.
    pub(super) fn register(
        listeners: Vec<Listener>,
        addrs: &[ListenAddr],
    ) -> io::Result<Listeners> {
        let listening = listeners
            .into_iter()
            .zip(addrs)
            .map(|(listener, addr)| {
                Ok(Listening {
                    registered: listener.register()?,
                    addr: Arc::new(addr.clone()),
                    resting: None,
                    said: Throttle::new(),
                    proxy_protocol: false,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Listeners { listening, next: 0 })
    }

    /// Makes every listener but the `direct` ones (by index) require a PROXY protocol
    /// header on each connection.
    pub(super) fn require_proxy_protocol(&mut self, direct: &[usize]) {
        for (i, listening) in self.listening.iter_mut().enumerate() {
            listening.proxy_protocol = !direct.contains(&i);
        }
    }

    /// The next connection from any listener, where it listens, and whether it begins
    /// with a PROXY protocol header; or an accept error of one of them.
    pub(super) async fn accept(
        &mut self,
    ) -> Result<(Accepted, Arc<ListenAddr>, bool), AcceptFailed> {
        std::future::poll_fn(|cx| {
            let count = self.listening.len();
            for i in (0..count).map(|i| (self.next + i) % count) {
                let listening = &mut self.listening[i];
                if let Some(rest) = &mut listening.resting {
                    if rest.as_mut().poll(cx).is_pending() {
                        continue;
                    }
                    listening.resting = None;
                }
                let Poll::Ready(accepted) = listening.registered.poll_accept(cx) else {
                    continue;
                };
                self.next = (i + 1) % count;
                let (addr, proxy_protocol) = (&listening.addr, listening.proxy_protocol);
                let accepted = accepted.map(|a| (a, addr.clone(), proxy_protocol));
                return Poll::Ready(accepted.map_err(|error| {
                    let per_connection = is_per_connection(&error);
                    if !per_connection {
                        listening.resting = Some(Box::pin(tokio::time::sleep(ACCEPT_REST)));
                    }
                    AcceptFailed {
                        addr: ListenAddr::clone(addr),
                        error,
                        per_connection,
                        say: if per_connection {
                            None
                        } else {
                            listening.said.admit()
                        },
                    }
                }));
            }
            Poll::Pending
        })
        .await
    }
}

/// Accept errors that concern one connection only; the listener is fine. Among them the
/// network errors Linux's accept(2) passes on from a connection that failed in its
/// backlog, which it asks to retry as `EAGAIN`.
fn is_per_connection(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        err.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | Interrupted
            | WouldBlock
            | NetworkDown
            | NetworkUnreachable
            | HostUnreachable
    ) {
        return true;
    }
    #[cfg(unix)]
    if let Some(code) = err.raw_os_error() {
        return [
            libc::EPROTO,
            libc::ENOPROTOOPT,
            libc::EHOSTDOWN,
            libc::EOPNOTSUPP,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            libc::ENONET,
        ]
        .contains(&code);
    }
    false
}

/// Several listen addresses as one log field or label: `127.0.0.1:8000, unix:/run/app.sock`.
pub(super) struct AddrList<'a>(pub(super) &'a [ListenAddr]);

impl fmt::Display for AddrList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            addr.fmt(f)?;
        }
        Ok(())
    }
}

impl Accepted {
    /// The peer, as the connection's log lines name it.
    pub(super) fn peer(&self) -> super::remote::Peer {
        match self {
            Accepted::Tcp(_, addr) => super::remote::Peer::Tcp(*addr),
            #[cfg(unix)]
            Accepted::Unix(stream) => super::remote::Peer::of_unix(stream),
        }
    }
}

/// Binds and listens on a Unix socket at `path`, as `UnixListener::bind` does but with
/// the server's backlog.
#[cfg(unix)]
fn listen_unix(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(std::os::fd::OwnedFd::from(socket).into())
}

/// Removes the file at `path` if it is a stale socket, one nobody accepts on (a
/// connection to it is refused); whether the path is free to bind now. Another server
/// starting at the same moment may have removed it first: free too, and whichever binds
/// second gets `AddrInUse`. Servers of this crate take a lock on the directory around
/// this and the bind (`sys::lock_dir`); another program that does not could still have
/// its fresh socket taken for a stale one, as gunicorn's can.
#[cfg(target_os = "linux")]
fn replace_stale(path: &Path) -> io::Result<bool> {
    let gone = |err: &io::Error| err.kind() == io::ErrorKind::NotFound;
    match is_stale_socket(path) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(err) if gone(&err) => return Ok(true),
        Err(err) => return Err(err),
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a stale socket file nobody listened on");
            Ok(true)
        }
        Err(err) if gone(&err) => Ok(true),
        Err(err) => Err(err),
    }
}

/// BSD kernels (macOS among them) refuse a connection to a full backlog as they refuse
/// one to no listener: a live server's socket could not be told from a stale one, so
/// none is replaced.
#[cfg(all(unix, not(target_os = "linux")))]
fn replace_stale(_path: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Whether the file at `path` is a socket nobody accepts on: a connection to it is
/// refused. Tried without blocking: a live server's full backlog (`EAGAIN` on Linux)
/// must not hang the bind.
#[cfg(target_os = "linux")]
fn is_stale_socket(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
        return Ok(false);
    }
    let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&socket2::SockAddr::unix(path)?) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(err), // gone meanwhile
        Err(err) => Ok(err.kind() == io::ErrorKind::ConnectionRefused),
        Ok(()) => Ok(false),
    }
}

/// The socket file a server bound, removed when its listener closes (the accept loop
/// ends, or the `Server` is dropped): a client then finds no socket rather than one
/// nobody accepts on, and the next server's bind finds the path free. Only the file the
/// server made: if another took its path meanwhile (a new server's bind), that one's is
/// left alone.
#[cfg(unix)]
pub(super) struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

#[cfg(unix)]
impl SocketFile {
    fn of(path: &Path) -> io::Result<SocketFile> {
        Ok(SocketFile {
            path: path.to_path_buf(),
            id: file_id(path)?,
        })
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        let path = self.path.display();
        match file_id(&self.path) {
            Ok(id) if id == self.id => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(%path, error = %err, "could not remove the server's socket file");
                }
            }
            Ok(_) => tracing::debug!(%path, "socket file replaced by another; left alone"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(%path, "socket file already gone");
            }
            Err(err) => {
                tracing::warn!(%path, error = %err, "could not look at the server's socket file; left");
            }
        }
    }
}
