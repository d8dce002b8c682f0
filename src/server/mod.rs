//! The bundled server: bind, accept, serve HTTP/1.1 and h2c on one port (or several
//! sockets), shut down gracefully.
//!
//! ```text
//! Server::serve (plain thread) -- owns --> persistent multi-thread tokio runtime
//!   accept loop: max_connections permits -> one task per connection (hyper, async)
//!     -> SyncService: admission -> pool thread runs the handler -> response back
//!   shutdown (handle, Ctrl-C, SIGTERM): stop accepting -> drain -> deadline -> cut off
//!     -> background tasks drain (own deadline) -> cancel the rest, log each id
//! ```
//!
//! Here: binding and the `Server` itself. `config` holds the settings and the builder
//! methods that set them, `runtime` the runtime `serve` builds, `serve` the accept loop
//! and the shutdown, `conn` one connection's task and its timeouts, `client_limit` the
//! cap on one client's connections, `forwarded` the client behind trusted proxies
//! (`trusted_proxy` an address or network trusted, `forwarded_elements` RFC 7239's
//! header split into its elements), `proxy_protocol` the
//! header a TCP load balancer puts before a connection's first byte, `shutdown` the
//! handle and the signal watcher, `systemd` the readiness message to systemd, the pings
//! of its watchdog and the sockets it passes.

mod client_limit;
mod config;
mod conn;
mod exec;
mod forwarded;
mod forwarded_elements;
mod linger;
mod listen;
mod proxy_protocol;
mod remote;
mod runtime;
mod serve;
mod shutdown;
mod signal;
mod stream;
mod systemd;
mod trusted_proxy;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
#[cfg(unix)]
use std::path::Path;

pub(crate) use forwarded::ClientSource;
pub use forwarded::{ClientIp, ClientScheme, ForwardedHeaders};
pub use listen::ListenAddr;
#[cfg(unix)]
pub use remote::PeerCred;
pub(crate) use remote::PeerExtension;
pub use remote::RemoteAddr;
pub use shutdown::ShutdownHandle;
pub use trusted_proxy::{ParseTrustedProxyError, TrustedProxy};

use crate::error::{Error, Kind, Result};
use config::Config;
use listen::{AddrList, Listener};

/// An HTTP server for a blocking [`Handler`](crate::Handler).
///
/// Bind it, tune it with the builder methods (each states its default), then run it with
/// [`serve`](Server::serve) on a plain thread, or [`serve_async`](Server::serve_async)
/// inside a runtime you already have. HTTP/1.1 (with keep-alive) and HTTP/2 over
/// cleartext with prior knowledge are served on the same port. It listens on TCP
/// ([`bind`](Server::bind)) or, on Unix, on a Unix domain socket
/// ([`bind_unix`](Server::bind_unix)) for a reverse proxy on the same machine.
///
/// # Examples
///
/// ```no_run
/// use syncbridge::{Request, Server};
///
/// fn hello(_req: Request) -> &'static str {
///     "Hello, World!"
/// }
///
/// fn main() -> syncbridge::Result<()> {
///     Server::bind("127.0.0.1:8000").serve(hello)
/// }
/// ```
#[must_use = "a Server does nothing until `serve` or `serve_async` is called; dropping it closes its sockets"]
pub struct Server {
    /// Never empty; `listen_addrs[i]` is where `listeners[i]` listens.
    listeners: Vec<Listener>,
    listen_addrs: Vec<ListenAddr>,
    shutdown: ShutdownHandle,
    config: Config,
}

impl Server {
    /// Binds to `addr`.
    ///
    /// Callable from any thread; it does not need a runtime.
    ///
    /// # Panics
    ///
    /// If the address cannot be bound. Use [`try_bind`](Server::try_bind) to handle that.
    pub fn bind(addr: impl ToSocketAddrs + fmt::Debug) -> Server {
        // The OS's reason ("Address already in use") is the error's source, which its
        // `Display` leaves out by convention: a panic message must say it.
        Server::try_bind(addr).unwrap_or_else(|err| match std::error::Error::source(&err) {
            Some(cause) => panic!("syncbridge: {err}: {cause}"),
            None => panic!("syncbridge: {err}"),
        })
    }

    /// Binds to the first address of `addr` that works.
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when no address could be bound.
    pub fn try_bind(addr: impl ToSocketAddrs + fmt::Debug) -> Result<Server> {
        Server::new(bind_first(addr)?)
    }

    /// Listens on `addr` too, bound as [`try_bind`](Server::try_bind) binds: one server,
    /// with one pool, one connection limit and one shutdown, on several sockets, as
    /// gunicorn with several `--bind`s (the proxy's Unix socket and a port for a health
    /// checker; two interfaces of several). Connections are taken from each in turn, so
    /// that a flood on one does not starve the others, and a listener whose accept fails
    /// (a file limit) rests 100 ms while the others go on.
    ///
    /// IPv4 and IPv6 on all interfaces take one socket, not two: `[::]:8000` alone
    /// accepts both on Linux's default (`net.ipv6.bindv6only = 0`), and `0.0.0.0:8000`
    /// beside it fails as a port in use. A handler learns which socket a request came in
    /// on from its [`ListenAddr`] extension, with [`remote_addr`](Server::remote_addr)
    /// on (a server with one socket does not add it).
    ///
    /// Callable from any thread; it does not need a runtime.
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when no address of `addr` could be bound; the server, and the
    /// sockets it had bound, are dropped then.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use syncbridge::{Request, Server};
    ///
    /// fn main() -> syncbridge::Result<()> {
    ///     // The proxy's port on every interface, the health checker's on loopback.
    ///     Server::try_bind("0.0.0.0:8000")?
    ///         .also_bind("127.0.0.1:8081")?
    ///         .serve(|_req: Request| "hello\n")
    /// }
    /// ```
    pub fn also_bind(self, addr: impl ToSocketAddrs + fmt::Debug) -> Result<Server> {
        let listener = bind_first(addr)?;
        self.also(listener)
    }

    /// Listens on `addr` too, for clients that connect directly rather than through the
    /// load balancer: its connections never begin with a PROXY protocol header, whatever
    /// [`proxy_protocol`](Server::proxy_protocol) says (nginx's `listen` line without
    /// `proxy_protocol`). For a health checker that probes the server itself, as a
    /// kubelet does, beside the balancer's port. Otherwise as
    /// [`also_bind`](Server::also_bind); without `proxy_protocol` it is the same.
    ///
    /// Callable from any thread; it does not need a runtime.
    ///
    /// # Errors
    ///
    /// As [`also_bind`](Server::also_bind)'s.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use syncbridge::{Request, Server};
    ///
    /// fn main() -> syncbridge::Result<()> {
    ///     // The balancer's port, each connection with its header; the probes' without.
    ///     Server::try_bind("0.0.0.0:8000")?
    ///         .also_bind_direct("0.0.0.0:8081")?
    ///         .proxy_protocol(true)
    ///         .serve(|_req: Request| "hello\n")
    /// }
    /// ```
    pub fn also_bind_direct(self, addr: impl ToSocketAddrs + fmt::Debug) -> Result<Server> {
        let mut server = self.also_bind(addr)?;
        server
            .config
            .direct_sockets
            .push(server.listeners.len() - 1);
        Ok(server)
    }

    /// Listens on a Unix domain socket at `path` too, bound as
    /// [`try_bind_unix`](Server::try_bind_unix) binds; otherwise as
    /// [`also_bind`](Server::also_bind).
    ///
    /// # Errors
    ///
    /// As [`try_bind_unix`](Server::try_bind_unix)'s.
    #[cfg(unix)]
    pub fn also_bind_unix(self, path: impl AsRef<Path>) -> Result<Server> {
        let listener = bind_unix(path.as_ref())?;
        self.also(listener)
    }

    /// Listens on a listener bound elsewhere too (one with socket options of its own, one
    /// a crate such as `listenfd` took over); otherwise as [`also_bind`](Server::also_bind).
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the listener cannot be made non-blocking.
    pub fn also_listener(self, listener: std::net::TcpListener) -> Result<Server> {
        self.also(Listener::Tcp(listener))
    }

    /// Listens on a Unix domain socket bound elsewhere too, as
    /// [`from_unix_listener`](Server::from_unix_listener) does (its file is the binder's);
    /// otherwise as [`also_bind`](Server::also_bind).
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the listener cannot be made non-blocking.
    #[cfg(unix)]
    pub fn also_unix_listener(self, listener: std::os::unix::net::UnixListener) -> Result<Server> {
        self.also(Listener::Unix(listener, None))
    }

    /// Serves on a listener bound elsewhere (socket activation, a test's port).
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the listener cannot be made non-blocking.
    pub fn from_listener(listener: std::net::TcpListener) -> Result<Server> {
        Server::new(Listener::Tcp(listener))
    }

    /// Binds a Unix domain socket at `path`, for a reverse proxy on the same machine
    /// (nginx's `proxy_pass http://unix:PATH:`), as gunicorn's `--bind unix:PATH`.
    ///
    /// On Linux, a socket file left at `path` by a server that no longer listens (one
    /// killed before it could remove it) is replaced, and said in an info line;
    /// elsewhere (BSD kernels refuse a connection to a busy server as to a dead one) it
    /// fails the bind, and must be removed first. The file is removed when the server
    /// stops accepting (or the `Server` is dropped), unless another has taken its path
    /// meanwhile. Its permissions follow the process's umask;
    /// change them between the bind and `serve` (`std::fs::set_permissions`) to let
    /// another user's proxy connect.
    ///
    /// Requests over it carry no [`RemoteAddr`], even with
    /// [`remote_addr`](Server::remote_addr) on: a Unix socket's clients have no address
    /// (the proxy in front says who its client is, in a header). With it on they carry
    /// the peer process's [`PeerCred`] instead. Log lines name such a connection's peer
    /// `unix`, with the process's id and user where the OS gives them
    /// (`conn{peer=unix(pid=4242,uid=33)}`), whether or not requests carry them.
    ///
    /// Callable from any thread; it does not need a runtime. On Linux it locks the
    /// directory around its check for a stale file and the bind, and may wait up to a
    /// second for another server's bind there.
    ///
    /// # Panics
    ///
    /// If the socket cannot be bound. Use [`try_bind_unix`](Server::try_bind_unix) to
    /// handle that.
    #[cfg(unix)]
    pub fn bind_unix(path: impl AsRef<Path>) -> Server {
        Server::try_bind_unix(path).unwrap_or_else(|err| match std::error::Error::source(&err) {
            Some(cause) => panic!("syncbridge: {err}: {cause}"),
            None => panic!("syncbridge: {err}"),
        })
    }

    /// Binds a Unix domain socket at `path`, as [`bind_unix`](Server::bind_unix) does.
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`], with the path and the OS's reason, when it cannot be bound: a
    /// server still listens there, or a file that is not a socket is in the way (both
    /// `AddrInUse`, and left alone), the directory is missing or not writable, or the
    /// path is longer than a socket address holds (107 bytes on Linux; a relative path
    /// counts as given).
    #[cfg(unix)]
    pub fn try_bind_unix(path: impl AsRef<Path>) -> Result<Server> {
        Server::new(bind_unix(path.as_ref())?)
    }

    /// Serves on the sockets systemd passed this process (socket activation, as gunicorn
    /// takes them): a `.socket` unit with a `ListenStream=` (an address, or a path for a
    /// Unix socket) starts the service of the same name on its first connection, or at
    /// boot, and keeps the socket while the service restarts, so that no connection is
    /// refused meanwhile: they wait in its backlog. A unit with several `ListenStream=`
    /// lines passes several sockets; the server listens on them all, as
    /// [`also_bind`](Server::also_bind) would, in the unit's order
    /// ([`listen_addrs`](Server::listen_addrs)). The sockets' settings (their backlog, a
    /// Unix socket's permissions) are the unit's; a Unix socket's file is systemd's, and
    /// the server does not remove it.
    ///
    /// Callable from any thread, once per process; it does not need a runtime.
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`], saying why, when there is no socket to take: `$LISTEN_PID` and
    /// `$LISTEN_FDS` are not set, or are another process's; a passed descriptor is not
    /// a listening stream socket (`Accept=yes` passes connections), and all are then
    /// left open, as whatever else it is belongs to someone else; or they were taken
    /// already. The variables are read, not removed: a program a handler starts has
    /// another pid, and does not get the socket (it is made close-on-exec).
    ///
    /// What it cannot check: that a passed descriptor (3 on), a listening socket while
    /// `$LISTEN_PID` names this process, is systemd's and not the program's own (one opened before by
    /// a crate such as `listenfd`, or by hand): call it before anything else takes
    /// passed sockets.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use syncbridge::{Request, Server};
    ///
    /// fn main() -> syncbridge::Result<()> {
    ///     // Started by app.socket (`ListenStream=127.0.0.1:8000`), or run by hand.
    ///     let server = match Server::from_systemd() {
    ///         Ok(server) => server,
    ///         Err(_) => Server::try_bind("127.0.0.1:8000")?,
    ///     };
    ///     server.serve(|_req: Request| "hello\n")
    /// }
    /// ```
    #[cfg(unix)]
    pub fn from_systemd() -> Result<Server> {
        let mut listeners = systemd::passed_listeners()
            .map_err(|why| Error::new(Kind::Bind).with_message(why))?
            .into_iter();
        let first = listeners
            .next()
            .expect("systemd passed at least one socket");
        listeners.try_fold(Server::new(first)?, Server::also)
    }

    /// Serves on a Unix domain socket bound elsewhere (systemd's socket activation).
    /// Its socket file, if any, is the binder's: the server does not remove it. Otherwise
    /// as [`bind_unix`](Server::bind_unix).
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the listener cannot be made non-blocking.
    #[cfg(unix)]
    pub fn from_unix_listener(listener: std::os::unix::net::UnixListener) -> Result<Server> {
        Server::new(Listener::Unix(listener, None))
    }

    fn new(listener: Listener) -> Result<Server> {
        let server = Server {
            listeners: Vec::new(),
            listen_addrs: Vec::new(),
            shutdown: ShutdownHandle::new(),
            config: Config::default(),
        };
        server.also(listener)
    }

    /// Adds a bound listener, made ready for the runtime.
    fn also(mut self, listener: Listener) -> Result<Server> {
        let listen_addr = listener
            .prepare()
            .map_err(|e| Error::new(Kind::Bind).with_source(e))?;
        self.listeners.push(listener);
        self.listen_addrs.push(listen_addr);
        Ok(self)
    }

    /// The TCP address the server listens on (the real port when bound to port 0); with
    /// several, the first TCP one.
    ///
    /// # Panics
    ///
    /// If the server listens on Unix sockets only, which have no such address: use
    /// [`listen_addr`](Server::listen_addr), which covers both.
    pub fn local_addr(&self) -> SocketAddr {
        let tcp = self.listen_addrs.iter().find_map(ListenAddr::tcp);
        match tcp {
            Some(addr) => addr,
            None => panic!(
                "syncbridge: Server::local_addr: the server listens on {}, not TCP; \
                 use Server::listen_addr",
                AddrList(&self.listen_addrs)
            ),
        }
    }

    /// Where the server listens: a TCP address, or a Unix socket's path; with several,
    /// the first (see [`listen_addrs`](Server::listen_addrs)).
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.listen_addrs[0]
    }

    /// Every address the server listens on, in the order they were bound (or passed by
    /// systemd).
    pub fn listen_addrs(&self) -> &[ListenAddr] {
        &self.listen_addrs
    }

    /// A handle that starts a graceful shutdown from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listen_addrs", &self.listen_addrs)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Binds the first address of `addr` that works.
fn bind_first(addr: impl ToSocketAddrs + fmt::Debug) -> Result<Listener> {
    let addrs = addr.to_socket_addrs().map_err(|e| {
        Error::new(Kind::Bind)
            .with_message(format!("{addr:?}"))
            .with_source(e)
    })?;
    let mut last = None;
    for resolved in addrs {
        match Listener::bind_tcp(resolved) {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some((resolved, err)),
        }
    }
    Err(match last {
        Some((resolved, err)) => Error::new(Kind::Bind)
            .with_message(resolved.to_string())
            .with_source(err),
        None => Error::new(Kind::Bind).with_message(format!("{addr:?} names no address")),
    })
}

/// Binds a Unix socket at `path`; its error names the path.
#[cfg(unix)]
fn bind_unix(path: &Path) -> Result<Listener> {
    Listener::bind_unix(path).map_err(|e| {
        Error::new(Kind::Bind)
            .with_message(format!("unix:{}", path.display()))
            .with_source(e)
    })
}
