//! The bundled server: bind, accept, serve HTTP/1.1 and h2c on one port, shut down
//! gracefully.
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
//! methods that set them, `serve` the accept loop and the shutdown, `conn` one
//! connection's task and its watchdogs, `shutdown` the handle and the signal watcher.

mod config;
mod conn;
mod exec;
mod linger;
mod remote;
mod serve;
mod shutdown;
mod signal;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

pub use remote::RemoteAddr;
pub use shutdown::ShutdownHandle;

use crate::error::{Error, Kind, Result};
use config::Config;

/// An HTTP server for a blocking [`Handler`](crate::Handler).
///
/// Bind it, tune it with the builder methods (each states its default), then run it with
/// [`serve`](Server::serve) on a plain thread, or [`serve_async`](Server::serve_async)
/// inside a runtime you already have. HTTP/1.1 (with keep-alive) and HTTP/2 over
/// cleartext with prior knowledge are served on the same port.
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
#[must_use = "a Server does nothing until `serve` or `serve_async` is called; dropping it closes its socket"]
pub struct Server {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    shutdown: ShutdownHandle,
    config: Config,
}

/// The listen backlog: room for bursts of new connections (gunicorn uses 2048).
const LISTEN_BACKLOG: i32 = 2048;

impl Server {
    /// Binds to `addr`.
    ///
    /// Callable from any thread; it does not need a runtime.
    ///
    /// # Panics
    ///
    /// If the address cannot be bound. Use [`try_bind`](Server::try_bind) to handle that.
    pub fn bind(addr: impl ToSocketAddrs) -> Server {
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
    pub fn try_bind(addr: impl ToSocketAddrs) -> Result<Server> {
        let addrs = addr
            .to_socket_addrs()
            .map_err(|e| Error::new(Kind::Bind).with_source(e))?;
        let mut last = None;
        for addr in addrs {
            match bind_socket(addr) {
                Ok(listener) => return Server::from_listener(listener),
                Err(err) => last = Some((addr, err)),
            }
        }
        Err(match last {
            Some((addr, err)) => Error::new(Kind::Bind)
                .with_message(addr.to_string())
                .with_source(err),
            None => Error::new(Kind::Bind).with_message("no address to bind"),
        })
    }

    /// Serves on a listener bound elsewhere (socket activation, a test's port).
    ///
    /// # Errors
    ///
    /// [`Error::is_bind`] when the listener cannot be made non-blocking.
    pub fn from_listener(listener: std::net::TcpListener) -> Result<Server> {
        let local_addr = listener
            .local_addr()
            .and_then(|addr| listener.set_nonblocking(true).map(|()| addr))
            .map_err(|e| Error::new(Kind::Bind).with_source(e))?;
        Ok(Server {
            listener,
            local_addr,
            shutdown: ShutdownHandle::new(),
            config: Config::default(),
        })
    }

    /// The address the server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that starts a graceful shutdown from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Restarting a server must not wait for old connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
