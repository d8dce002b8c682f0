//! The client's address (or, on a Unix socket, its process), as the bundled server
//! hands it to a handler.

use std::net::SocketAddr;

/// The address of the client a request came from: WSGI's `REMOTE_ADDR`, axum's
/// `ConnectInfo<SocketAddr>`.
///
/// The bundled [`Server`](crate::Server) puts one in every request's extensions when
/// asked to with [`Server::remote_addr`](crate::Server::remote_addr). It is the TCP
/// peer: behind a reverse proxy that is the proxy, and the client is in a header the
/// proxy sets (`X-Forwarded-For`), believed only from a proxy the server was told to
/// trust: see [`ClientIp`](crate::ClientIp) and
/// [`Server::trusted_proxies`](crate::Server::trusted_proxies). Behind a TCP balancer
/// that names its client in a PROXY protocol header
/// ([`Server::proxy_protocol`](crate::Server::proxy_protocol)), it is that client, on a
/// Unix socket too. On a Unix socket without one there is no address, and the request
/// carries a `PeerCred` (Unix only) instead. A
/// [`SyncService`](crate::SyncService) embedded in another server
/// passes on that server's extensions instead (axum's `ConnectInfo`, when the app is
/// served with `into_make_service_with_connect_info`).
///
/// # Examples
///
/// ```
/// use syncbridge::{RemoteAddr, Request};
///
/// fn whoami(req: Request) -> String {
///     match req.extensions().get::<RemoteAddr>() {
///         Some(RemoteAddr(addr)) => format!("you are {}\n", addr.ip()),
///         None => "no client address: not asked for, or not the bundled server\n".to_owned(),
///     }
/// }
/// # let _ = whoami;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteAddr(pub SocketAddr);

/// The process at the other end of a Unix domain socket connection, as the kernel
/// recorded it when the connection was made (`SO_PEERCRED` on Linux, each OS's own call
/// elsewhere, through tokio's `peer_cred`): axum's `UdsConnectInfo` example, for a
/// socket whose clients are told apart by user (an admin socket only root's tools may
/// use, say).
///
/// The bundled [`Server`](crate::Server) on a Unix socket
/// ([`bind_unix`](crate::Server::bind_unix)) puts one in every request's extensions when
/// asked to with [`Server::remote_addr`](crate::Server::remote_addr), in place of the
/// [`RemoteAddr`] such a client does not have. Behind a proxy it names the proxy's
/// process, as `RemoteAddr` names the proxy; a connection whose PROXY protocol header
/// names its client ([`Server::proxy_protocol`](crate::Server::proxy_protocol)) carries
/// that client's `RemoteAddr` instead. On the few Unix targets where tokio cannot
/// read credentials and reports user and group 0 (Hurd, Fuchsia, ESP-IDF, NuttX, the
/// Vita), requests carry none rather than a false root.
///
/// Its fields are public, and it can be built, for a handler's unit tests.
///
/// # Examples
///
/// ```
/// use syncbridge::{PeerCred, Request};
///
/// fn admin(req: Request) -> (syncbridge::http::StatusCode, &'static str) {
///     match req.extensions().get::<PeerCred>() {
///         Some(peer) if peer.uid == 0 => (syncbridge::http::StatusCode::OK, "welcome\n"),
///         _ => (syncbridge::http::StatusCode::FORBIDDEN, "root only\n"),
///     }
/// }
/// # let _ = admin;
/// ```
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// The peer's effective user id when it connected.
    pub uid: u32,
    /// The peer's effective group id when it connected.
    pub gid: u32,
    /// The peer's process id, where the OS reports one (Linux and macOS do; some BSDs
    /// do not).
    pub pid: Option<i32>,
}

/// What a connection's requests carry about their peer (`Server::remote_addr`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerExtension {
    Tcp(RemoteAddr),
    #[cfg(unix)]
    Unix(PeerCred),
}

impl PeerExtension {
    /// Puts it in a request's extensions.
    #[inline]
    pub(crate) fn insert_into(self, extensions: &mut http::Extensions) {
        match self {
            PeerExtension::Tcp(addr) => {
                extensions.insert(addr);
            }
            #[cfg(unix)]
            PeerExtension::Unix(cred) => {
                extensions.insert(cred);
            }
        }
    }
}

/// A connection's peer as the server's log lines name it (`peer=...` in the connection's
/// span): a TCP client's address, or on a Unix socket, which has no address of its own,
/// `unix` and the process's credentials when the OS gave them (`unix(pid=4242,uid=33)`):
/// with several local clients (nginx's workers, a cron job, an admin's curl), which one
/// sent what is otherwise lost.
#[derive(Clone, Copy, Debug)]
pub(super) enum Peer {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(Option<PeerCred>),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            #[cfg(unix)]
            Peer::Unix(None) => f.write_str("unix"),
            #[cfg(unix)]
            Peer::Unix(Some(PeerCred {
                uid,
                pid: Some(pid),
                ..
            })) => write!(f, "unix(pid={pid},uid={uid})"),
            #[cfg(unix)]
            Peer::Unix(Some(PeerCred { uid, pid: None, .. })) => write!(f, "unix(uid={uid})"),
        }
    }
}

impl Peer {
    /// The peer's address, if it has one.
    pub(super) fn remote_addr(self) -> Option<SocketAddr> {
        match self {
            Peer::Tcp(addr) => Some(addr),
            #[cfg(unix)]
            Peer::Unix(_) => None,
        }
    }

    /// What the connection's requests carry about it when the server was asked to
    /// (`Server::remote_addr`): its address, or its process's credentials. `None` when
    /// the OS would not say.
    pub(super) fn extension(self) -> Option<PeerExtension> {
        match self {
            Peer::Tcp(addr) => Some(PeerExtension::Tcp(RemoteAddr(addr))),
            #[cfg(unix)]
            Peer::Unix(cred) => cred.map(PeerExtension::Unix),
        }
    }

    /// A Unix socket connection's peer: its credentials read once (one `getsockopt`).
    #[cfg(unix)]
    pub(super) fn of_unix(stream: &tokio::net::UnixStream) -> Peer {
        if NO_CREDENTIALS {
            return Peer::Unix(None);
        }
        match stream.peer_cred() {
            Ok(cred) => Peer::Unix(Some(PeerCred {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            })),
            Err(err) => {
                tracing::debug!(error = %err, "could not read a Unix peer's credentials");
                Peer::Unix(None)
            }
        }
    }
}

/// Targets where tokio reports a Unix peer as user and group 0 for want of a way to ask
/// (its `impl_noproc`): no credentials beat a false root.
#[cfg(unix)]
const NO_CREDENTIALS: bool = cfg!(any(
    target_os = "hurd",
    target_os = "fuchsia",
    target_os = "espidf",
    target_os = "nuttx",
    target_os = "vita"
));
