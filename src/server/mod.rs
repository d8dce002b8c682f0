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

mod conn;
mod exec;
mod remote;
mod shutdown;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use remote::RemoteAddr;
pub use shutdown::ShutdownHandle;

use crate::bridge::{SyncService, DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_SIZE};
use crate::error::{Error, Kind, Result};
use crate::handler::Handler;
use crate::pool::{BlockingPool, BlockingPoolBuilder};
use crate::tasks::{TaskSet, TaskSetBuilder};
use conn::{ConnConfig, ConnSignal};
use exec::StreamExecutor;

/// An HTTP server for a blocking [`Handler`].
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

#[derive(Debug, Clone)]
struct Config {
    pool: BlockingPoolBuilder,
    shared_pool: Option<BlockingPool>,
    max_connections: usize,
    http2_max_concurrent_streams: u32,
    header_read_timeout: Duration,
    keep_alive_timeout: Option<Duration>,
    max_header_size: usize,
    max_body_size: u64,
    body_timeout: Duration,
    retry_after: Duration,
    shutdown_timeout: Duration,
    worker_threads: Option<usize>,
    handle_signals: bool,
    remote_addr: bool,
    tasks: TaskSetBuilder,
    shared_tasks: Option<TaskSet>,
    task_drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pool: BlockingPool::builder(),
            shared_pool: None,
            max_connections: 10_000,
            http2_max_concurrent_streams: 100,
            header_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Some(Duration::from_secs(30)),
            max_header_size: 32 * 1024,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            retry_after: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: None,
            handle_signals: true,
            remote_addr: false,
            tasks: TaskSet::builder(),
            shared_tasks: None,
            task_drain_timeout: Duration::from_secs(30),
        }
    }
}

/// hyper's read/write buffer limit, and so the largest request body frame: 64 KiB.
const HYPER_BUF_SIZE: usize = 64 * 1024;

/// The HTTP/2 flow-control window of each request stream: the body channel's bound.
const HTTP2_STREAM_WINDOW: u32 = crate::body::BYTES_IN_FLIGHT as u32;

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

    /// The most handlers running at once. Default is 512, as tokio's blocking pool.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.config.pool = self.config.pool.max_threads(n);
        self
    }

    /// How many requests may wait for a handler thread when all are busy; past that,
    /// requests are answered `503` with `Retry-After` at once. Default is 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.pool = self.config.pool.queue_capacity(n);
        self
    }

    /// How long a request may wait for a handler thread before it is answered `503`.
    /// Default is 30 seconds.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.config.pool = self.config.pool.queue_timeout(timeout);
        self
    }

    /// How long an idle handler thread lives. Default is 10 seconds.
    pub fn thread_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.pool = self.config.pool.keep_alive(keep_alive);
        self
    }

    /// Runs handlers on `pool` instead of a pool of the server's own (its limits replace
    /// `max_threads`, `queue_capacity`, `queue_timeout`, `thread_keep_alive`).
    pub fn pool(mut self, pool: BlockingPool) -> Self {
        self.config.shared_pool = Some(pool);
        self
    }

    /// The `Retry-After` sent with the server's `503`s (pool full, queue timeout),
    /// rounded up to whole seconds, and at least 1 (`0` would invite an instant retry).
    /// Default is 1 second. At the connection limit there is no `503`: new connections
    /// wait in the listen backlog (see [`max_connections`](Self::max_connections)). A
    /// [`SingleThread`](crate::SingleThread) handler's own `503` always says 1 second.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.config.retry_after = after;
        self
    }

    /// The most connections open at once. When reached, the server stops accepting until
    /// one closes; new clients wait in the listen backlog. Default is 10,000. Values
    /// above tokio's semaphore limit (`usize::MAX >> 3`) are lowered to it, so
    /// `usize::MAX` means no limit of the server's own.
    ///
    /// Each connection is an open file: on Linux the server warns at start when the
    /// process's open-file limit (`ulimit -n`, often 1,024) is below this plus a margin of
    /// 64, since past it `accept` fails and new clients wait in the backlog all the same.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// The most requests one HTTP/2 connection may have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); a client waits for one to end before it opens
    /// another. Default is 100, the least RFC 9113 recommends (hyper's own is 200). Each
    /// open request may hold a handler thread, so this is also how many of
    /// `max_threads` one client can take over one connection; lower it when few clients
    /// share many threads. At least 1.
    pub fn http2_max_concurrent_streams(mut self, n: u32) -> Self {
        self.config.http2_max_concurrent_streams = n.max(1);
        self
    }

    /// How long an HTTP/1 client may take to send a request head (Slowloris protection),
    /// counted from the connection's start or the end of the previous response (or of a
    /// request body its handler reads on after the response), as hyper counts it: a
    /// keep-alive connection waiting for its next request is closed at this timeout too,
    /// and so is one still draining a body nobody reads. A connection that has not sent its first request is held to
    /// it whatever its protocol. Default is 30 seconds.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// How long a connection may stay open with no request in flight. `None` keeps idle
    /// connections open (HTTP/1 still closes at the header read timeout). Default is 30
    /// seconds.
    pub fn keep_alive_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.keep_alive_timeout = timeout;
        self
    }

    /// The largest request head (request line and headers) accepted; a larger one is
    /// answered `431 Request Header Fields Too Large`. Default is 32 KiB, nginx's
    /// `large_client_header_buffers 4 8k`.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.config.max_header_size = bytes;
        self
    }

    /// The largest request body accepted; larger ones get `413`. Default is 64 MiB.
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.config.max_body_size = bytes;
        self
    }

    /// How long the client may keep a handler or a response waiting: sending none of the
    /// rest of its request body, or reading none of its response. Default is 30 seconds,
    /// gunicorn's worker `timeout`.
    ///
    /// A request whose body stops arriving is answered `408 Request Timeout` and its
    /// handler thread freed (see [`SyncServiceBuilder::body_timeout`]); a streamed
    /// response nobody reads is aborted and its producer stopped; a connection whose
    /// client reads none of a pending response for this long is closed (on HTTP/2: whose
    /// client opens no flow-control window for any one of its pending responses, however
    /// its other streams move). Each is logged at warn level. A client reading slowly is
    /// not stalled as long as it takes at least a 64 KiB piece of each response per body
    /// timeout; one sending slowly, as long as at least 8 KiB of its body comes per body
    /// timeout while the handler waits for it (about 270 bytes a second at 30 s), not a
    /// byte now and then. A handler's own work is not
    /// limited. `Duration::MAX` waits for ever. Zero fails every wait on the client at
    /// once (and has every busy connection checked every millisecond).
    ///
    /// [`SyncServiceBuilder::body_timeout`]: crate::SyncServiceBuilder::body_timeout
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config.body_timeout = timeout;
        self
    }

    /// How long a graceful shutdown waits for in-flight requests before it cuts them off
    /// (and logs each). Default is 30 seconds, gunicorn's `graceful_timeout`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The runtime's worker threads (they drive connections, never handlers), for
    /// [`serve`](Server::serve). Default is the number of CPUs available.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.config.worker_threads = Some(n.max(1));
        self
    }

    /// Whether Ctrl-C and SIGTERM start a graceful shutdown. A second one, at any point
    /// of the shutdown, cuts off what is left: the connection drain, the grace after its
    /// deadline and the background task drain. A shutdown begun through the
    /// [`ShutdownHandle`] does not count as a signal: the first signal after it leaves
    /// the drain going, and the second cuts it off. Default is true.
    ///
    /// tokio keeps its signal handler installed once it has one, so after `serve` returns
    /// Ctrl-C and SIGTERM no longer end the process by themselves; a program with long
    /// clean-up after the server should watch for them itself, or pass `false` and call
    /// [`ShutdownHandle::shutdown`] from its own handler.
    pub fn handle_signals(mut self, enabled: bool) -> Self {
        self.config.handle_signals = enabled;
        self
    }

    /// Whether each request carries the client's address in its extensions, as a
    /// [`RemoteAddr`] (WSGI's `REMOTE_ADDR`). Default is false, as for axum's
    /// `ConnectInfo`: it costs each request the allocation of its extensions map, about
    /// a tenth of what a small request costs in all (1,550 more instructions on the
    /// benchmark's `/hello`, measured with `benches/tools/instructions.sh`).
    pub fn remote_addr(mut self, enabled: bool) -> Self {
        self.config.remote_addr = enabled;
        self
    }

    /// The most background blocking tasks running at once, on a pool apart from the
    /// handlers' so that background work never starves requests. Default is 16.
    pub fn max_task_threads(mut self, n: usize) -> Self {
        self.config.tasks = self.config.tasks.max_threads(n);
        self
    }

    /// How many background blocking tasks may wait for a thread; past that, spawning fails
    /// with [`Error::is_overloaded`]. Default is 1024.
    pub fn task_queue_capacity(mut self, n: usize) -> Self {
        self.config.tasks = self.config.tasks.queue_capacity(n);
        self
    }

    /// The most entries in the task registry, live and finished. When full, the oldest
    /// finished entry is evicted; when all are live, spawning fails with
    /// [`Error::is_overloaded`]. Default is 10,000.
    pub fn max_tasks(mut self, n: usize) -> Self {
        self.config.tasks = self.config.tasks.max_entries(n);
        self
    }

    /// How long a finished task's status and result are kept for lookups. Default is one
    /// hour.
    pub fn task_ttl(mut self, ttl: Duration) -> Self {
        self.config.tasks = self.config.tasks.ttl(ttl);
        self
    }

    /// How long a graceful shutdown waits for background tasks, after the connections
    /// have drained, before it cancels the rest through their tokens and logs each
    /// abandoned task id. Apart from [`shutdown_timeout`](Server::shutdown_timeout). A
    /// second signal cuts it short. Default is 30 seconds.
    pub fn task_drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_drain_timeout = timeout;
        self
    }

    /// Uses `tasks` as the server's task set instead of one of its own (its limits replace
    /// `max_task_threads`, `task_queue_capacity`, `max_tasks`, `task_ttl`). Keep a clone
    /// to spawn from outside handlers, or to look tasks up. The server still drains it at
    /// shutdown, after which it takes no new tasks.
    ///
    /// A set runs its futures and timers on the first runtime it is bound to: the
    /// server's, unless the set was built with [`TaskSetBuilder::runtime`] or already
    /// spawned from another runtime before the server started.
    pub fn tasks(mut self, tasks: TaskSet) -> Self {
        self.config.shared_tasks = Some(tasks);
        self
    }

    /// Serves `handler` until shut down, blocking the calling thread.
    ///
    /// Builds a multi-thread tokio runtime that lives as long as the server: it drives
    /// the connections, and handler threads reach it through `ensure_sync`.
    ///
    /// Call it from a plain thread (`main`, a thread you spawned).
    ///
    /// # Errors
    ///
    /// [`Error::is_async_context`] when called from async code (use
    /// [`serve_async`](Server::serve_async) there); [`Error::is_runtime`] when the
    /// runtime cannot start.
    pub fn serve<H: Handler>(self, handler: H) -> Result<()> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(Kind::AsyncContext).with_message(
                "Server::serve blocks its thread; inside a tokio runtime use Server::serve_async",
            ));
        }
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("syncbridge-rt");
        if let Some(n) = self.config.worker_threads {
            builder.worker_threads(n);
        }
        let runtime = builder
            .build()
            .map_err(|e| Error::new(Kind::Runtime).with_source(e))?;
        let result = runtime.block_on(self.run(handler));
        // Everything the server spawned has ended by now; don't wait on stray tasks.
        runtime.shutdown_timeout(Duration::from_secs(1));
        result
    }

    /// Serves `handler` on the current tokio runtime until shut down.
    ///
    /// Call it from async code: it must be polled inside a tokio runtime (any flavour)
    /// with IO and timers enabled (`enable_all`, as `#[tokio::main]` does). Handlers still
    /// run on the server's blocking pool, not on the runtime's threads.
    ///
    /// Shut it down through its [`ShutdownHandle`] and let it return. Dropped before that
    /// (another branch of a `select!` won), it stops accepting and asks each connection
    /// to close after its requests in flight, but waits for nothing and drains no
    /// background tasks, and says so in a warning.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_context`] at once when polled outside a tokio runtime, or in one
    /// built without IO or without timers (tokio prints its own panic message for the
    /// missing driver first: that is how it is detected, and under `panic = "abort"` the
    /// process aborts there instead). [`Error::is_bind`] when the listener cannot be
    /// registered with the runtime.
    pub async fn serve_async<H: Handler>(self, handler: H) -> Result<()> {
        self.run(handler).await
    }

    async fn run<H: Handler>(self, handler: H) -> Result<()> {
        let Server {
            listener,
            local_addr,
            shutdown,
            config,
        } = self;
        let listener = match register(listener) {
            Ok(listener) => listener,
            Err(err) => {
                // Not yet in a service, which would drop it off the runtime itself.
                crate::offload::drop_off_runtime(handler);
                return Err(err);
            }
        };
        let pool = config
            .shared_pool
            .clone()
            .unwrap_or_else(|| config.pool.clone().build());
        let tasks = config
            .shared_tasks
            .clone()
            .unwrap_or_else(|| config.tasks.clone().build());
        tasks.bind_runtime(tokio::runtime::Handle::current());
        let service = SyncService::builder(handler)
            .pool(pool.clone())
            .max_body_size(config.max_body_size)
            .max_header_size(config.max_header_size)
            .body_timeout(config.body_timeout)
            .retry_after(config.retry_after)
            .runtime(tokio::runtime::Handle::current())
            .tasks(tasks.clone())
            .build();
        // Cancelled by a second Ctrl-C/SIGTERM only: it cuts every remaining wait short.
        let second_signal = CancellationToken::new();
        let conn_config = Arc::new(ConnConfig {
            http: http_builder(&config),
            keep_alive: config.keep_alive_timeout,
            header_read_timeout: config.header_read_timeout,
            write_stall_timeout: config.body_timeout,
            remote_addr: config.remote_addr,
            signal: ConnSignal::default(),
        });
        let signal_watcher = config.handle_signals.then(|| {
            tokio::spawn(shutdown::watch_signals(
                shutdown.graceful.clone(),
                second_signal.clone(),
            ))
        });
        let connections = TaskTracker::new();
        // Until the shutdown below has run its course: a `serve_async` future dropped
        // before that would otherwise leave its connections and signal watcher running.
        let mut dropped_early = DroppedEarly {
            conn_config: conn_config.clone(),
            connections: connections.clone(),
            signal_watcher: signal_watcher.as_ref().map(|w| w.abort_handle()),
            stage: Stage::Serving,
        };
        let slots = Arc::new(Semaphore::new(config.max_connections));
        tracing::info!(addr = %local_addr, max_threads = pool.max_threads(), "syncbridge listening");
        warn_if_short_of_files(config.max_connections);

        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.graceful.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let accepted = tokio::select! {
                biased;
                _ = shutdown.graceful.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(conn::serve(
                        stream,
                        peer,
                        conn_config.clone(),
                        service.clone(),
                        permit,
                    ));
                }
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(error = %err, "accept failed for one connection");
                }
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::error!(error = %err, "accept failed; retrying in 100 ms");
                    tokio::select! {
                        _ = shutdown.graceful.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }

        drop(listener);
        dropped_early.stage = Stage::ShuttingDown;
        conn_config.signal.raise(conn::DRAIN);
        connections.close();
        tracing::info!(
            connections = connections.len(),
            handlers_running = pool.stats().busy,
            deadline_secs = config.shutdown_timeout.as_secs_f64(),
            "shutting down: stopped accepting, draining in-flight requests"
        );
        let cut_off_by = tokio::select! {
            _ = connections.wait() => None,
            _ = tokio::time::sleep(config.shutdown_timeout) => Some("shutdown deadline reached"),
            _ = second_signal.cancelled() => Some("second shutdown signal"),
        };
        if let Some(cause) = cut_off_by {
            tracing::warn!(
                connections = connections.len(),
                "{cause}; cutting off the remaining connections"
            );
            conn_config.signal.raise(conn::FORCE);
            // Each connection task logs what it cuts off and returns on its next poll; one
            // that is not polled again within the grace below is left behind, said here.
            // A second signal cuts the grace short, unless it is what began the cut-off
            // (the tasks still get their next poll then).
            let by_signal = second_signal.is_cancelled();
            let grace = Duration::from_secs(5);
            let all_closed = tokio::select! {
                _ = connections.wait() => true,
                _ = tokio::time::sleep(grace) => false,
                _ = second_signal.cancelled(), if !by_signal => false,
            };
            if !all_closed {
                tracing::error!(
                    connections = connections.len(),
                    grace_secs = grace.as_secs(),
                    "connections still open after being cut off; left behind at shutdown"
                );
            }
        }
        // Background tasks after the connections: handlers that finished late may have
        // spawned some. Each abandoned task id is logged inside `drain`; a second signal,
        // before or during it, cuts it short.
        let task_deadline = if second_signal.is_cancelled() {
            Duration::ZERO
        } else {
            config.task_drain_timeout
        };
        let abandoned = tasks.drain(task_deadline, second_signal.cancelled()).await;
        if !abandoned.is_empty() {
            tracing::warn!(
                abandoned = abandoned.len(),
                "background tasks abandoned at shutdown"
            );
        }
        if let Some(watcher) = signal_watcher {
            watcher.abort();
        }
        let stats = pool.stats();
        if stats.busy > 0 || stats.queued > 0 {
            tracing::warn!(
                handlers_running = stats.busy,
                queued = stats.queued,
                "blocking handlers still running at shutdown; their responses are dropped"
            );
        }
        if config.shared_pool.is_none() {
            pool.shutdown();
        }
        dropped_early.stage = Stage::Done;
        tracing::info!(addr = %local_addr, "syncbridge stopped");
        Ok(())
    }
}

/// What a `serve_async` future dropped while serving leaves behind, and says so: it
/// stops the signal watcher and asks each connection to close after its requests in
/// flight, as a shutdown would, but cannot wait for them or drain background tasks.
struct DroppedEarly {
    conn_config: Arc<ConnConfig>,
    connections: TaskTracker,
    signal_watcher: Option<tokio::task::AbortHandle>,
    stage: Stage,
}

#[derive(PartialEq)]
enum Stage {
    Serving,
    ShuttingDown,
    Done,
}

impl Drop for DroppedEarly {
    fn drop(&mut self) {
        if self.stage == Stage::Done {
            return;
        }
        if let Some(watcher) = &self.signal_watcher {
            watcher.abort();
        }
        self.conn_config.signal.raise(conn::DRAIN);
        self.connections.close();
        let when = match self.stage {
            Stage::Serving => "while serving: stopped accepting, and",
            _ => "during its shutdown: the drain was cut short, and",
        };
        tracing::warn!(
            connections = self.connections.len(),
            "serve_async dropped {when} each connection closes after its requests in \
             flight; nothing waits for them, and background tasks are not drained (shut \
             down through the ShutdownHandle and let serve_async return)"
        );
    }
}

/// Says at start when the process may open fewer files than `max_connections` asks:
/// past that, `accept` fails with `EMFILE` and new clients wait in the backlog, which would
/// otherwise show only as an error line under load. The margin is for what else the
/// process holds open (the listener, the runtime's own descriptors, logs, a database).
fn warn_if_short_of_files(max_connections: usize) {
    const MARGIN: u64 = 64;
    if let Some(limit) = crate::sys::open_file_limit() {
        if (max_connections as u64).saturating_add(MARGIN) > limit {
            tracing::warn!(
                max_connections,
                open_file_limit = limit,
                "the open-file limit (RLIMIT_NOFILE) is below max_connections: \
                 past about {} connections, accept fails until one closes; \
                 raise it (`ulimit -n`) or lower max_connections",
                limit.saturating_sub(MARGIN),
            );
        }
    }
}

/// Registers the listener with the current runtime, checking first that the runtime has
/// what the server needs: tokio would otherwise panic from deep inside, here for a
/// missing runtime or IO driver, and at the first connection for missing timers.
fn register(listener: std::net::TcpListener) -> Result<TcpListener> {
    let no_context = |what: &str| {
        Error::new(Kind::NoContext).with_message(format!(
            "Server::serve_async {what}: build the runtime with `enable_all` (or \
             `#[tokio::main]`)"
        ))
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err(no_context("must be polled inside a tokio runtime"));
    };
    if !crate::timer::has_timers(&runtime) {
        return Err(no_context("needs a runtime with timers"));
    }
    match catch_unwind(AssertUnwindSafe(|| TcpListener::from_std(listener))) {
        Ok(registered) => registered.map_err(|e| Error::new(Kind::Bind).with_source(e)),
        Err(_) => Err(no_context("needs a runtime with IO")),
    }
}

fn http_builder(config: &Config) -> auto::Builder<StreamExecutor> {
    let mut http = auto::Builder::new(StreamExecutor);
    http.http1()
        // The connection task enforces the header read timeout (see `conn`): hyper's
        // own timer allocates and registers a tokio timer for every request head, a
        // tenth of the per-request cost of the whole bridge.
        .header_read_timeout(None)
        .keep_alive(true)
        // hyper's buffer limit is also its head limit, but it sizes every body read and
        // write too: at 32 KiB it halves upload and download throughput, at hyper's own
        // ~400 KiB an upload-heavy load holds 2.5 times the memory for no gain (see
        // docs/benchmarks.md). So hyper gets 64 KiB and the service enforces
        // `max_header_size` (431 either way).
        .max_buf_size(HYPER_BUF_SIZE.max(config.max_header_size));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        // How much of a request body a client may send ahead, per stream: h2 holds it
        // in memory until the pump takes it, and a queued request's pump takes nothing.
        // hyper's 1 MiB made every queued HTTP/2 upload hold 1 MiB (HTTP/1 leaves it in
        // the socket); this is the request channel's own bound, which keeps a stream
        // flowing while its handler reads. The connection's window stays at 1 MiB.
        .initial_stream_window_size(HTTP2_STREAM_WINDOW);
    http
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

/// Accept errors that concern one connection only; the listener is fine.
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
