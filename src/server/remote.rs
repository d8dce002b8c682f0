//! The client's address, as the bundled server hands it to a handler.

use std::net::SocketAddr;

/// The address of the client a request came from: WSGI's `REMOTE_ADDR`, axum's
/// `ConnectInfo<SocketAddr>`.
///
/// The bundled [`Server`](crate::Server) puts one in every request's extensions when
/// asked to with [`Server::remote_addr`](crate::Server::remote_addr). It is the TCP
/// peer: behind a reverse proxy that is the proxy, and the client is in a header the
/// proxy sets (`X-Forwarded-For`), believed only from a proxy the server was told to
/// trust: see [`ClientIp`](crate::ClientIp) and
/// [`Server::trusted_proxies`](crate::Server::trusted_proxies). A
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

/// A connection's peer as the server's log lines name it (`peer=...` in the connection's
/// span): a TCP client's address, or `unix` for a client on the Unix socket, which has
/// no address of its own.
#[derive(Clone, Copy, Debug)]
pub(super) enum Peer {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            #[cfg(unix)]
            Peer::Unix => f.write_str("unix"),
        }
    }
}

impl Peer {
    /// The address a request's [`RemoteAddr`] carries, if any.
    pub(super) fn remote_addr(self) -> Option<SocketAddr> {
        match self {
            Peer::Tcp(addr) => Some(addr),
            #[cfg(unix)]
            Peer::Unix => None,
        }
    }
}
