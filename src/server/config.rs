//! The server's settings, and the builder methods on [`Server`] that set them: each
//! states its default, and [`http_builder`] turns them into hyper's.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::exec::StreamExecutor;
use super::forwarded::ForwardedHeaders;
use super::trusted_proxy::TrustedProxy;
use super::Server;
use crate::bridge::{MakeSpan, DEFAULT_BODY_TIMEOUT, DEFAULT_HEAD_GRACE, DEFAULT_MAX_BODY_SIZE};
use crate::handler::Request;
use crate::pool::{BlockingPool, BlockingPoolBuilder};
use crate::tasks::{TaskSet, TaskSetBuilder};

#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) pool: BlockingPoolBuilder,
    pub(super) shared_pool: Option<BlockingPool>,
    pub(super) max_connections: usize,
    /// `None` until `Server::max_connections_per_client` is called.
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) http2_max_concurrent_streams: u32,
    pub(super) header_read_timeout: Duration,
    pub(super) keep_alive_timeout: Option<Duration>,
    pub(super) max_header_size: usize,
    pub(super) max_body_size: u64,
    pub(super) body_timeout: Duration,
    pub(super) head_grace: Duration,
    pub(super) handler_timeout: Duration,
    pub(super) stream_timeout: Duration,
    pub(super) retry_after: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) worker_threads: Option<usize>,
    pub(super) handle_signals: bool,
    pub(super) notify_systemd: bool,
    pub(super) systemd_watchdog: bool,
    pub(super) remote_addr: bool,
    /// `None` until `Server::trusted_proxies` is called.
    pub(super) trusted_proxies: Option<Vec<TrustedProxy>>,
    /// What the trusted proxies write.
    pub(super) forwarded_headers: ForwardedHeaders,
    pub(super) proxy_protocol: bool,
    /// The listeners (by index) bound with `Server::also_bind_direct`: no PROXY protocol
    /// header on them, whatever `proxy_protocol` says.
    pub(super) direct_sockets: Vec<usize>,
    /// `None` until `Server::request_span` is called.
    pub(super) request_span: Option<MakeSpan>,
    pub(super) http1_half_close: bool,
    pub(super) tasks: TaskSetBuilder,
    pub(super) shared_tasks: Option<TaskSet>,
    pub(super) task_drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pool: BlockingPool::builder().trim_memory_when_idle(true),
            shared_pool: None,
            max_connections: 10_000,
            max_connections_per_client: None,
            http2_max_concurrent_streams: 100,
            header_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Some(Duration::from_secs(30)),
            max_header_size: 32 * 1024,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            head_grace: DEFAULT_HEAD_GRACE,
            handler_timeout: Duration::ZERO,
            stream_timeout: Duration::ZERO,
            retry_after: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: None,
            handle_signals: true,
            notify_systemd: true,
            systemd_watchdog: true,
            remote_addr: false,
            trusted_proxies: None,
            forwarded_headers: ForwardedHeaders::XForwarded,
            proxy_protocol: false,
            direct_sockets: Vec::new(),
            request_span: None,
            http1_half_close: false,
            tasks: TaskSet::builder(),
            shared_tasks: None,
            task_drain_timeout: Duration::from_secs(30),
        }
    }
}

/// hyper's read/write buffer limit, and so the largest request body frame: 64 KiB.
const HYPER_BUF_SIZE: usize = 64 * 1024;

/// The most runtime worker threads `worker_threads` takes: tokio adds its own blocking
/// threads' limit to the count, and past a few per CPU more only cost memory.
pub(super) const MAX_WORKER_THREADS: usize = 1024;

/// The HTTP/2 flow-control window of each request stream: the body channel's bound.
const HTTP2_STREAM_WINDOW: u32 = crate::body::BYTES_IN_FLIGHT as u32;

impl Server {
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

    /// How long an idle handler thread lives. Default is 10 seconds. The thread idle the
    /// shortest takes the next request, so after a burst the threads a lighter load does
    /// not need exit even while it goes on. When the last one leaves, the allocator's
    /// free memory is handed back to the OS
    /// ([`trim_memory_when_idle`](Server::trim_memory_when_idle)).
    pub fn thread_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.pool = self.config.pool.keep_alive(keep_alive);
        self
    }

    /// Whether the handler pool, once idle (its last thread leaving after
    /// [`thread_keep_alive`](Server::thread_keep_alive)), hands the C allocator's free
    /// memory back to the OS. Default is `true` for the server's own pool (a pool given
    /// to [`pool`](Server::pool) keeps its own setting);
    /// [`BlockingPoolBuilder::trim_memory_when_idle`](crate::BlockingPoolBuilder::trim_memory_when_idle)
    /// says what it gives and what it costs.
    pub fn trim_memory_when_idle(mut self, enabled: bool) -> Self {
        self.config.pool = self.config.pool.trim_memory_when_idle(enabled);
        self
    }

    /// The stack size of handler threads, and of the server's background task threads.
    /// Default is the standard library's, 2 MiB. Each thread reserves it as address space
    /// (memory only once touched): lower it for many threads under an address-space
    /// limit, raise it for deeply recursive handlers (a stack overflow aborts the whole
    /// process).
    pub fn thread_stack_size(mut self, bytes: usize) -> Self {
        self.config.pool = self.config.pool.thread_stack_size(bytes);
        self.config.tasks = self.config.tasks.thread_stack_size(bytes);
        self
    }

    /// Runs handlers on `pool` instead of a pool of the server's own (its limits replace
    /// `max_threads`, `queue_capacity`, `queue_timeout`, `thread_keep_alive`,
    /// `thread_stack_size`).
    pub fn pool(mut self, pool: BlockingPool) -> Self {
        self.config.shared_pool = Some(pool);
        self
    }

    /// The `Retry-After` sent with the server's `503`s (pool full, queue timeout, a
    /// client over [`max_connections_per_client`](Self::max_connections_per_client)),
    /// rounded up to whole seconds, at least 1 (`0` would invite an instant retry) and at
    /// most a day (86,400). Default is 1 second. At the connection limit there is no
    /// `503`: new connections wait for a slot (see
    /// [`max_connections`](Self::max_connections)). A
    /// [`SingleThread`](crate::SingleThread) handler's own `503` always says 1 second.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.config.retry_after = after;
        self
    }

    /// The most connections open at once. When reached, a new connection waits for a
    /// slot: the server accepts it, asks an idle keep-alive connection (no request in
    /// flight, none on its way) to close to make room, as nginx reuses idle connections
    /// when it runs out, and asks again once a second for as long as the wait lasts;
    /// clients after it wait in the listen backlog. Busy connections are never closed for
    /// it, and nor is a new one still sending its first request (the header read timeout
    /// bounds that), but one whose last request ends while the new one waits makes room
    /// then.
    /// Logged at `warn`, throttled, with how long the wait has lasted. Default is 10,000. Values
    /// above tokio's semaphore limit (`usize::MAX >> 3`) are lowered to it, so
    /// `usize::MAX` means no limit of the server's own.
    ///
    /// Each connection is an open file: on Linux the server warns at start when the
    /// process's open-file limit (`ulimit -n`, often 1,024) is below this plus a margin of
    /// 64, since past it `accept` fails and new clients wait in the backlog all the same.
    ///
    /// One client can hold every slot (busy connections, or ones still sending their
    /// first request, are not closed to make room): cap each client's share with
    /// [`max_connections_per_client`](Self::max_connections_per_client).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// The most connections one client may hold open at once, as nginx's `limit_conn`
    /// keyed by the client's address. A client is an IP address: the peer's, or the
    /// client a believed PROXY protocol header names
    /// ([`proxy_protocol`](Self::proxy_protocol)); for IPv6, the address's /64 network
    /// (a host can take any address of its network's /64, so a cap per address would
    /// hold no one back; a /64 is usually a whole network, and shares the cap as a NAT
    /// does). Past the cap, the client's new connection is answered `503 Service
    /// Unavailable` with `Retry-After` ([`retry_after`](Self::retry_after)) to its first
    /// request and closed, its open ones served as before; said with a throttled `warn`
    /// naming the client, and counted in
    /// `syncbridge_connections_closed_total{reason="client_limit"}`. Over HTTP/2 each
    /// request the client sent before the GOAWAY is answered so. The handler does not
    /// see them; each has its access line (status `503`) and is counted in the request
    /// metrics, as a refusal (`syncbridge_requests_refused_total{reason="client_limit"}`)
    /// among them, as any answer the server makes itself (nginx logs `limit_conn`'s so
    /// too).
    ///
    /// A refused connection holds its slot under `max_connections` while it is
    /// answered: its first request is due within the header read timeout of its accept,
    /// and until it comes the connection gives its slot up to a new one waiting for it
    /// (as an idle connection does) and to the shutdown; the answer then has the body
    /// timeout to go out (and over HTTP/1 up to 2 s more, while what the client still
    /// sends, a request body, is read and dropped, so that the client reads the answer
    /// rather than a reset). At most four of a client's connections are answered so at
    /// once; past them its new ones are closed unanswered. So one client holds at most
    /// its cap and four of the server's slots. On a [`proxy_protocol`](Self::proxy_protocol)
    /// listener a connection is counted only once its header has named its client: until
    /// then (at most the header read timeout) it holds a slot counted against nobody.
    /// One with not a byte of its header yet gives its slot up to a connection waiting
    /// for one, as an idle connection does: an AWS Network Load Balancer, by default,
    /// sends the header only with its client's first bytes, so each client connection
    /// that says nothing is one. One with part of a header keeps its slot.
    ///
    /// Not counted: the [`trusted_proxies`](Self::trusted_proxies), whose connections
    /// carry many clients' requests (their clients' `X-Forwarded-For` is not counted
    /// either: put the cap in the proxy), a Unix socket's peers, and a client a PROXY
    /// protocol header could not name. Default: no cap. At least 1. Clients behind one
    /// NAT share an address, and so share the cap: a cap of a few connections suits a
    /// server that faces browsers (six or so each over HTTP/1, one over HTTP/2), not
    /// one behind a carrier's NAT.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use syncbridge::{Request, Server};
    ///
    /// Server::bind("127.0.0.1:8000")
    ///     .max_connections(10_000)
    ///     .max_connections_per_client(64)
    ///     .serve(|_req: Request| "hello\n")
    ///     .unwrap();
    /// ```
    pub fn max_connections_per_client(mut self, n: usize) -> Self {
        self.config.max_connections_per_client = Some(n.max(1));
        self
    }

    /// The most requests one HTTP/2 connection may have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); a client waits for one to end before it opens
    /// another. Default is 100, the least RFC 9113 recommends (hyper's own is 200). Each
    /// open request may hold a handler thread, so this is also how many of
    /// `max_threads` one client can take over one connection; lower it when few clients
    /// share many threads. Each may also hold up to 256 KiB of its request body unread
    /// (its flow-control window; the connection's window is this many times that, 25 MiB
    /// at the default), so it bounds a connection's body memory too. At least 1.
    pub fn http2_max_concurrent_streams(mut self, n: u32) -> Self {
        self.config.http2_max_concurrent_streams = n.max(1);
        self
    }

    /// How long an HTTP/1 client may take to send a request head (Slowloris protection),
    /// counted from the head's first byte, as Go's `ReadHeaderTimeout` and nginx's
    /// `client_header_timeout` count: a connection is closed when a head it began is not
    /// complete this long after, answered `408 Request Timeout` first (as Apache's
    /// `mod_reqtimeout` does; nginx only logs a `408`; on Linux) and logged at `info`,
    /// throttled; the client then has 500 ms to read it while the server drains what it
    /// still sends. A connection that sent nothing (a browser's unused preconnect), or an
    /// HTTP/2 one, is closed without an answer, logged at `debug`; so is part of a
    /// connection's first head on a Unix socket, which cannot be told from HTTP/2's
    /// preface there (a later request's gets its `408`). (Part of a head that
    /// came in one read with the request before it, or with the end of a body read after
    /// its response, is not seen: the keep-alive timeout bounds it.) A connection's first
    /// request is due this long after it is accepted, whatever its protocol; so is the
    /// rest of a request body nobody reads, from its first byte after the response.
    /// Default is 30 seconds. Zero closes every connection whose request is not already
    /// there when it is accepted (and is logged at start as a warning): keep it above
    /// your clients' round trip.
    ///
    /// An idle keep-alive connection waits for its next request for the
    /// [`keep_alive_timeout`](Server::keep_alive_timeout), which may be longer; without
    /// one, an idle HTTP/1 connection is closed at this timeout, counted from its last
    /// response (hyper's rule).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// How long a connection may stay open with no request in flight and no request head
    /// on its way: nginx's `keepalive_timeout`, Go's `IdleTimeout`. Behind a proxy that
    /// keeps connections to the server open, set it above the proxy's own idle timeout
    /// (`docs/operations.md`, "Behind a proxy"). Default is 30 seconds. Zero closes a
    /// connection as soon as its requests are done.
    ///
    /// `None` keeps idle HTTP/2 connections open; an idle HTTP/1 connection is then
    /// closed at the [`header_read_timeout`](Server::header_read_timeout), counted from
    /// its last response, as hyper does. With a keep-alive timeout, an HTTP/1 connection
    /// its close leaves open (hyper still reading a body nobody wants) is closed one
    /// header read timeout later.
    pub fn keep_alive_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.keep_alive_timeout = timeout;
        self
    }

    /// The largest request head (request line and headers) accepted; a larger one is
    /// answered `431 Request Header Fields Too Large`. Default is 32 KiB, nginx's
    /// `large_client_header_buffers 4 8k`. Counted as HTTP/1 header lines, over HTTP/2
    /// too; h2's own limit (its `SETTINGS_MAX_HEADER_LIST_SIZE`) is 7 times this plus
    /// 1 KiB, so that the server's check, logged, is the one a client meets. That is also
    /// how much of a header block h2 buffers per connection while it arrives.
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
    /// client reads none of a pending response for this long is closed. On HTTP/2, where
    /// a client holds back one response by opening no flow-control window for it, such a
    /// connection first gets a GOAWAY: its other requests have one more body timeout to
    /// finish, and it is closed then if the response is still held (the requests cut off
    /// with it are logged). Each is logged at warn level. An HTTP/1 client reading
    /// slowly is not stalled as long as its kernel acknowledges at least 8 KiB of its
    /// responses per body timeout (about 270 bytes a second at 30 s): on Linux (glibc or
    /// musl) the server reads that count from the socket (on a Unix socket,
    /// [`bind_unix`](Server::bind_unix), what still waits for the client to read, on any
    /// Linux, which falls a piece of the kernel's queue at a time: the client must take
    /// one, up to 36 KiB, per body timeout). A client on a slow link has
    /// its data acknowledged as it arrives; one whose application reads slowly from a
    /// fast link, only as its kernel reopens its receive window, which Linux does in
    /// steps of up to a good part of its receive buffer (about 128 KiB with default
    /// buffers, in a probe on loopback): such a client must take a step per timeout. An
    /// HTTP/2 client must take a 64 KiB piece of each response per body timeout, whether
    /// its flow-control window or the socket holds it back (on an emulated 50 kbit link
    /// with a 5 s timeout, 28 KiB per timeout was cut off, 75 KiB was not). Where the
    /// count cannot be read, only the socket's wake-ups show progress: on Linux a client
    /// must then take about 256 KiB per body timeout (the server keeps at most 128 KiB
    /// unsent in a socket, and Linux wakes a blocked writer only once less than 64 KiB is
    /// left), elsewhere about a third of the kernel's send buffer, which can be MiBs. One
    /// sending slowly is not stalled as long as at least 8 KiB of its body comes per body
    /// timeout while the handler waits for it, not a byte now and then (over HTTP/2, at
    /// least one whole DATA frame: h2 passes on none before it is complete, and curl
    /// sends 16 KiB frames). A handler's own work is not limited here (see
    /// [`handler_timeout`](Server::handler_timeout)). `Duration::MAX` waits
    /// for ever. Zero fails every wait on the client at once (and has every busy
    /// connection checked every millisecond), and is logged at start as a warning.
    ///
    /// [`SyncServiceBuilder::body_timeout`]: crate::SyncServiceBuilder::body_timeout
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config.body_timeout = timeout;
        self
    }

    /// How long a streamed response's head is held back for the body's first bytes, so
    /// that a producer failing before them is answered `500` rather than a `200` cut off
    /// after its head. Default is 100 ms; zero sends every head as soon as the handler
    /// returns. See [`SyncServiceBuilder::head_grace`].
    ///
    /// [`SyncServiceBuilder::head_grace`]: crate::SyncServiceBuilder::head_grace
    pub fn head_grace(mut self, grace: Duration) -> Self {
        self.config.head_grace = grace;
        self
    }

    /// How long a request may wait for its handler's response, from its arrival; past it
    /// the request is answered `504 Gateway Timeout` while the handler runs on (a thread
    /// cannot be killed, as gunicorn kills a worker at its `timeout`), and the handler's
    /// late response is dropped and logged. Default is no limit; zero means no limit.
    /// See [`SyncServiceBuilder::handler_timeout`].
    ///
    /// [`SyncServiceBuilder::handler_timeout`]: crate::SyncServiceBuilder::handler_timeout
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.config.handler_timeout = timeout;
        self
    }

    /// How long a streamed response may go on, from its request's arrival; past it the
    /// producer's writes fail (one waiting on the client at once), its thread is free,
    /// and the response is aborted (the HTTP/1 connection closed at once, with a reset
    /// over TCP on Linux; the HTTP/2 stream reset once the client has taken what hyper
    /// holds of it, at most two 64 KiB chunks), or answered `504` if it had sent nothing
    /// yet. For a client that reads a long download slowly but steadily, which the body
    /// timeout lets through, holding a thread for as long as it takes. Default is no limit; zero means no limit. See
    /// [`SyncServiceBuilder::stream_timeout`].
    ///
    /// [`SyncServiceBuilder::stream_timeout`]: crate::SyncServiceBuilder::stream_timeout
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.config.stream_timeout = timeout;
        self
    }

    /// How long a graceful shutdown waits for in-flight requests before it cuts them off
    /// (and logs each). Default is 30 seconds, gunicorn's `graceful_timeout`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The runtime's worker threads (they drive connections, never handlers), for
    /// [`serve`](Server::serve). Default is tokio's: `TOKIO_WORKER_THREADS` when set
    /// (`serve` refuses a value that is not a number above 0), else the number of CPUs
    /// available. Values, the variable's too, are kept between 1 and 1,024 (the
    /// connections need no more than the CPUs).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.config.worker_threads = Some(n.clamp(1, MAX_WORKER_THREADS));
        self
    }

    /// Whether Ctrl-C and SIGTERM start a graceful shutdown. A second one, at any point
    /// of the shutdown, cuts off what is left: the connection drain, the grace after its
    /// deadline and the background task drain. A shutdown begun through the
    /// [`ShutdownHandle`](super::ShutdownHandle) does not count as a signal: the first signal after it leaves
    /// the drain going, and the second cuts it off. Default is true.
    ///
    /// tokio keeps its signal handler installed once it has one, so after `serve` returns
    /// Ctrl-C and SIGTERM no longer end the process by themselves; a program with long
    /// clean-up after the server should watch for them itself, or pass `false` and call
    /// [`ShutdownHandle::shutdown`](super::ShutdownHandle::shutdown) from its own handler.
    pub fn handle_signals(mut self, enabled: bool) -> Self {
        self.config.handle_signals = enabled;
        self
    }

    /// Whether the server tells systemd when it is ready, as gunicorn does: under a unit
    /// of `Type=notify` (systemd then sets `$NOTIFY_SOCKET`), `serve` sends `READY=1`
    /// once it accepts connections (with `STATUS=syncbridge listening on ADDR`), so that
    /// `systemctl start` and the units ordered after this one wait until it really
    /// serves; when its shutdown begins it updates only the status (`STATUS=syncbridge
    /// shutting down`, for `systemctl status`), not `STOPPING=1`, which would have
    /// systemd treat the whole service as stopping. Without `$NOTIFY_SOCKET` (or with one
    /// that is neither an absolute path nor an `@abstract` name) nothing is sent.
    ///
    /// Under a unit with `WatchdogSec=`, the server also pings systemd's watchdog; that
    /// has its own switch, [`systemd_watchdog`](Server::systemd_watchdog).
    ///
    /// Default is true; turn it off when the program has more to start after the server,
    /// and tells systemd itself (of several servers in one process, the first to accept
    /// makes the unit ready). A message that cannot be sent is logged at warn level, and
    /// the server serves on; `READY=1` finding systemd's queue full is tried again for up
    /// to 5 s. Unix only; elsewhere it does nothing.
    pub fn notify_systemd(mut self, enabled: bool) -> Self {
        self.config.notify_systemd = enabled;
        self
    }

    /// Whether the server pings systemd's watchdog. Under a unit with `WatchdogSec=`
    /// (systemd then sets `$WATCHDOG_USEC`, and `$NOTIFY_SOCKET`), it sends `WATCHDOG=1`
    /// at once and then every half of that limit, from a task on the runtime, from the
    /// moment it listens (and says `READY=1`) until `serve` returns (through the drain too). So async code that
    /// blocks every worker of the runtime (its only one, on one core) stops the pings, and
    /// systemd kills the service (and restarts it, as its `Restart=` says); a stall that
    /// delayed a ping is logged at warn level once the ping is out. A handler stuck on a
    /// dependency does not stop them: handlers run on the pool. A ping that finds
    /// systemd's queue full is tried again every 20 ms until it goes. See
    /// `docs/operations.md`, "Under systemd".
    ///
    /// Default is true, whether or not the server tells systemd it is ready
    /// ([`notify_systemd`](Server::notify_systemd)): a program that says `READY=1` itself
    /// still has its server's runtime watched. Turn it off when the program pings the
    /// watchdog itself, from somewhere it would rather have watched. Of several servers
    /// in one process, each pings: one whose runtime stalls goes unnoticed while another
    /// pings. Without `$WATCHDOG_USEC`, or with one for another process
    /// (`$WATCHDOG_PID`), nothing is sent. Unix only; elsewhere it does nothing.
    pub fn systemd_watchdog(mut self, enabled: bool) -> Self {
        self.config.systemd_watchdog = enabled;
        self
    }

    /// Whether each request carries the client's address in its extensions, as a
    /// [`RemoteAddr`](super::RemoteAddr) (WSGI's `REMOTE_ADDR`). Default is false, as for axum's
    /// `ConnectInfo`: it costs each request the allocation of its extensions map, about
    /// a tenth of what a small request costs in all (1,550 more instructions on the
    /// benchmark's `/hello`, measured with `benches/tools/instructions.sh`). A server on
    /// a Unix socket ([`bind_unix`](Server::bind_unix)) has no client addresses: its
    /// requests carry the peer process's `PeerCred` instead (its user, group and process
    /// ids; Unix only), read once per connection, unless a PROXY protocol header names
    /// the connection's client ([`proxy_protocol`](Server::proxy_protocol)).
    ///
    /// With it on, on a server with several sockets ([`also_bind`](Server::also_bind)),
    /// each request also carries the [`ListenAddr`](super::ListenAddr) it came in on
    /// (gunicorn's `SERVER_PORT`), for a handler that answers a health checker's port
    /// apart from the proxy's. Not on a server with one: its address is no news there, and
    /// the second extension would cost each request about 500 instructions more (over
    /// TCP; a Unix socket's path is copied too).
    pub fn remote_addr(mut self, enabled: bool) -> Self {
        self.config.remote_addr = enabled;
        self
    }

    /// The reverse proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` (or, with
    /// [`forwarded_headers`](Server::forwarded_headers), `Forwarded`) the server
    /// believes (uvicorn's `--forwarded-allow-ips`; gunicorn's `forwarded_allow_ips`
    /// trusts only the scheme headers). Once called, every request carries a
    /// [`ClientScheme`](super::ClientScheme) and, when the client is known, a
    /// [`ClientIp`](super::ClientIp): from a trusted proxy, what its headers say (read
    /// from the right, past every trusted hop); from any other peer, the peer itself,
    /// whatever its headers say. Default: no proxy is trusted, and requests carry
    /// neither (gunicorn and uvicorn trust `127.0.0.1` by default; here the list is
    /// always the caller's). An empty list trusts nobody but a Unix socket's peers.
    ///
    /// On a Unix socket ([`bind_unix`](Server::bind_unix)) every peer counts as a
    /// trusted proxy once this is called, as gunicorn does: who may connect is what the
    /// socket file's permissions say.
    ///
    /// The headers themselves reach the handler as they came, trusted or not: read the
    /// client from the extensions, not from them. List only proxies that overwrite
    /// `X-Forwarded-Proto` (nginx: `proxy_set_header X-Forwarded-Proto $scheme;`) and
    /// append to `X-Forwarded-For` (`$proxy_add_x_forwarded_for`), or, with
    /// [`forwarded_headers`](Server::forwarded_headers), that append their own element
    /// to `Forwarded` (HAProxy's `option forwarded`; nginx only through a `map`); a proxy
    /// that passes on the client's own values lets the client choose them.
    ///
    /// Every host a listed network holds may name a client, in these headers and, with
    /// [`proxy_protocol`](Server::proxy_protocol), in a PROXY protocol header: list the
    /// proxies' own addresses or subnets, not a whole private network whose other
    /// hosts can reach the port (a security group open to the VPC lets each of them
    /// choose its `ClientIp`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use syncbridge::{ClientIp, Request, Server, TrustedProxy};
    ///
    /// // nginx on this machine, and a load balancer's network.
    /// let proxies: Vec<TrustedProxy> = ["127.0.0.1", "::1", "10.0.0.0/8"]
    ///     .iter()
    ///     .map(|p| p.parse().expect("a trusted proxy"))
    ///     .collect();
    /// Server::bind("127.0.0.1:8000")
    ///     .trusted_proxies(proxies)
    ///     .serve(|req: Request| match req.extensions().get::<ClientIp>() {
    ///         Some(ClientIp(ip)) => format!("hello, {ip}\n"),
    ///         None => "hello\n".to_owned(),
    ///     })
    ///     .unwrap();
    /// ```
    pub fn trusted_proxies<I>(mut self, proxies: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<TrustedProxy>,
    {
        self.config.trusted_proxies = Some(proxies.into_iter().map(Into::into).collect());
        self
    }

    /// Which headers the [`trusted_proxies`](Server::trusted_proxies) name the client in:
    /// `X-Forwarded-For` and `X-Forwarded-Proto` (the default), or RFC 7239's
    /// `Forwarded` ([`ForwardedHeaders::Forwarded`](super::ForwardedHeaders::Forwarded)).
    /// One kind only, never both: a proxy that writes one passes the other on as the
    /// client wrote it. Without `trusted_proxies` neither is read. Either order of the
    /// two calls does the same.
    ///
    /// `Forwarded`'s elements are read from the right, past each trusted proxy, as
    /// `X-Forwarded-For`'s entries are: the client is the `for` of the rightmost element
    /// that names no trusted proxy, and its [`ClientScheme`](super::ClientScheme) the
    /// `proto` of that same element (the one written by the proxy the client connected
    /// to), or the connection's own scheme when it has none. An element that names no
    /// address (`for=unknown`, `for=_hidden`, no `for`, or not RFC 7239's syntax) ends
    /// the walk: the client is the trusted hop after it. IPv6 addresses are read
    /// quoted and bracketed (`for="[2001:db8::1]:4711"`) as RFC 7239 writes them, or
    /// bare as some proxies do. `by` and `host` are not read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::net::Ipv4Addr;
    ///
    /// use syncbridge::{ClientIp, ForwardedHeaders, Request, Server};
    ///
    /// // HAProxy on this machine, with `option forwarded`.
    /// Server::bind("127.0.0.1:8000")
    ///     .trusted_proxies([Ipv4Addr::LOCALHOST])
    ///     .forwarded_headers(ForwardedHeaders::Forwarded)
    ///     .serve(|req: Request| match req.extensions().get::<ClientIp>() {
    ///         Some(ClientIp(ip)) => format!("hello, {ip}\n"),
    ///         None => "hello\n".to_owned(),
    ///     })
    ///     .unwrap();
    /// ```
    pub fn forwarded_headers(mut self, headers: ForwardedHeaders) -> Self {
        self.config.forwarded_headers = headers;
        self
    }

    /// Whether each connection begins with a PROXY protocol header (HAProxy's, version 1
    /// or 2) naming its client: for a server behind a load balancer that passes TCP
    /// through unread and names the client so (HAProxy's `send-proxy` or
    /// `send-proxy-v2`, an AWS Network Load Balancer with proxy protocol v2 on, nginx's
    /// `proxy_protocol on` in a `stream` block; gunicorn's `--proxy-protocol`). Default
    /// is false.
    ///
    /// It applies to every socket of the server, whenever it was bound (the sockets
    /// systemd passes included), but one bound with
    /// [`also_bind_direct`](Server::also_bind_direct): a port for clients that connect
    /// directly, such as a kubelet's probes. The `syncbridge listening` lines say which
    /// sockets require it (`proxy_protocol=true` or `false`).
    ///
    /// There every connection must begin with one, as the protocol asks: one
    /// that does not (a client that reached the port round the balancer, or a balancer
    /// not set to send it) is closed unanswered, and said in a warning, at most one a
    /// second. The header is due within the
    /// [`header_read_timeout`](Server::header_read_timeout) of the connect, and the first
    /// request within the same time in all. The balancer's own connection (its health
    /// check, version 2's `LOCAL`) is its own, and with `trusted_proxies` none of its
    /// `X-Forwarded-For` is believed: HAProxy also sends `LOCAL` for a client it
    /// cannot name (one on a Unix socket), whose bytes are the client's. A client the
    /// balancer could not name in version 1 (`UNKNOWN`) leaves the balancer the peer,
    /// but with `trusted_proxies` its requests get no `ClientIp` and none of their
    /// `X-Forwarded-For` is believed, for the same reason. An IPv4 client named as
    /// IPv6 (`::ffff:203.0.113.7`) is the IPv4 client. Of version 2's TLVs
    /// only one is used: `PP2_TYPE_SSL` with `PP2_CLIENT_SSL` (HAProxy's
    /// `send-proxy-v2-ssl`, ending TLS in front) makes the client's
    /// [`ClientScheme`](super::ClientScheme) `https` with `trusted_proxies`, unless a
    /// trusted proxy the header names sends an `X-Forwarded-Proto` of its own.
    ///
    /// The client the header names becomes the connection's peer: its
    /// [`RemoteAddr`](super::RemoteAddr) (with [`remote_addr`](Server::remote_addr)),
    /// the `peer` of its log lines (beside `proxy`, the balancer), and the peer whose
    /// `X-Forwarded-For` [`trusted_proxies`](Server::trusted_proxies) believes or not.
    /// Without `trusted_proxies`, every peer's header is believed: let only the balancer
    /// reach the port. With it, only a trusted proxy's is (any peer's on a Unix
    /// socket); another peer's header is still required, and read, but its requests are
    /// the peer's own, and a warning says so.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use syncbridge::{RemoteAddr, Request, Server, TrustedProxy};
    ///
    /// # fn main() -> syncbridge::Result<()> {
    /// // An HAProxy backend with `server app 10.0.1.5:8000 send-proxy-v2`, and a port
    /// // for health checks that connect directly.
    /// let haproxy: TrustedProxy = "10.0.0.2".parse().unwrap();
    /// Server::bind("0.0.0.0:8000")
    ///     .also_bind_direct("0.0.0.0:8081")?
    ///     .proxy_protocol(true)
    ///     .trusted_proxies([haproxy])
    ///     .remote_addr(true)
    ///     .serve(|req: Request| match req.extensions().get::<RemoteAddr>() {
    ///         Some(RemoteAddr(client)) => format!("hello, {}\n", client.ip()),
    ///         None => "hello\n".to_owned(),
    ///     })
    /// # }
    /// ```
    pub fn proxy_protocol(mut self, enabled: bool) -> Self {
        self.config.proxy_protocol = enabled;
        self
    }

    /// Makes each request's own span with `make`, as tower-http's `TraceLayer` does with
    /// `make_span_with`. `make` runs on the handler thread, just before the handler and
    /// in its context (it may read the body, or call `ensure_sync`, as the handler may),
    /// in the connection's span (`conn{peer=…}`), so the span it returns is a child of
    /// that one; it is entered for the rest of the request's time on the thread. What
    /// is logged on the handler thread carries its fields: the handler's own events, its
    /// response body's producer's, and the server's lines about a panic, an error, a
    /// body that stalled or broke off while the handler read it, a producer that failed,
    /// or a handler that answered after its timeout. What the server logs on the
    /// connection's task is in the connection's span only: a refusal at admission, a
    /// queue timeout's `503`, a handler timeout's `504`, a body that grew past the limit,
    /// a client that left, and the access line. Default: no span of the request's own.
    ///
    /// `make` sees the whole request, after [`trusted_proxies`](Server::trusted_proxies)
    /// has put its client in the extensions, and may add extensions of its own, such as
    /// the request's id, for the handler to read (and put in its response, or pass on to
    /// the services it calls). It may change the request too; the server's own lines and
    /// the response's framing keep the method and path it came with. A panic in it is
    /// logged at `error` (throttled, as a flood of them would be: at most one line a
    /// second, with how many were left out), and the request is served without its
    /// span.
    ///
    /// # Examples
    ///
    /// A request id: nginx's (`proxy_set_header X-Request-Id $request_id;`), else one
    /// made here, in each request's span and in its response.
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use syncbridge::http::HeaderValue;
    /// use syncbridge::{Request, Response, Server};
    ///
    /// #[derive(Clone)]
    /// struct RequestId(HeaderValue);
    ///
    /// static NEXT: AtomicU64 = AtomicU64::new(1);
    ///
    /// fn handler(req: Request) -> Response {
    ///     tracing::info!("handling"); // logged in `conn{peer=…}:request{id=…}`
    ///     let mut response = Response::new("hello\n".into());
    ///     if let Some(RequestId(id)) = req.extensions().get::<RequestId>() {
    ///         response.headers_mut().insert("x-request-id", id.clone());
    ///     }
    ///     response
    /// }
    ///
    /// Server::bind("127.0.0.1:8000")
    ///     .request_span(|req: &mut Request| {
    ///         let id = match req.headers().get("x-request-id") {
    ///             Some(id) => id.clone(),
    ///             None => HeaderValue::from(NEXT.fetch_add(1, Ordering::Relaxed)),
    ///         };
    ///         let span = tracing::info_span!("request", id = ?id);
    ///         req.extensions_mut().insert(RequestId(id));
    ///         span
    ///     })
    ///     .serve(handler)
    ///     .unwrap();
    /// ```
    pub fn request_span<F>(mut self, make: F) -> Self
    where
        F: Fn(&mut Request) -> tracing::Span + Send + Sync + 'static,
    {
        self.config.request_span = Some(MakeSpan(Arc::new(make)));
        self
    }

    /// Whether an HTTP/1 client may close its sending side once its request is out and
    /// still get the response (hyper's `half_close`). Default is `false`, as hyper,
    /// nginx (its `499`) and Go: the end of the client's stream counts as the client
    /// gone, so a request still queued for a handler thread is dropped unrun, and one
    /// whose handler runs has its response dropped and its reads of the request body
    /// fail (`ConnectionAborted`), even with the whole body sent: the body is read from
    /// the connection only as the handler reads it.
    ///
    /// Turn it on for clients that half-close on purpose (`nc -N`, some webhook senders
    /// and HTTP/1.0-era tools): their requests then run and are answered as gunicorn
    /// would. The cost: while a request waits or runs, the connection is not read, so a
    /// client that has really left is noticed only when its response is written, and its
    /// queued request runs anyway (for up to the queue timeout's wait). HTTP/2 has its
    /// own end-of-stream and is not affected.
    pub fn http1_half_close(mut self, enabled: bool) -> Self {
        self.config.http1_half_close = enabled;
        self
    }

    /// The most background blocking tasks running at once, on a pool apart from the
    /// handlers' so that background work never takes a request's thread, at a lower
    /// priority than handlers (nice +19 against +10 on Linux, so CPU-bound tasks yield to
    /// requests; [`TaskSetBuilder::nice`](crate::TaskSetBuilder::nice) with
    /// [`Server::tasks`] to change it). Default is 16.
    pub fn max_task_threads(mut self, n: usize) -> Self {
        self.config.tasks = self.config.tasks.max_threads(n);
        self
    }

    /// How many background blocking tasks may wait for a thread; past that, spawning fails
    /// with [`Error::is_overloaded`](crate::Error::is_overloaded). Default is 1024.
    pub fn task_queue_capacity(mut self, n: usize) -> Self {
        self.config.tasks = self.config.tasks.queue_capacity(n);
        self
    }

    /// The most entries in the task registry, live and finished. When full, the oldest
    /// finished entry is evicted; when all are live, spawning fails with
    /// [`Error::is_overloaded`](crate::Error::is_overloaded). It bounds the tasks live at
    /// once too, counting a finished one until its callbacks have run. Default is
    /// 10,000 (see [`TaskSetBuilder::max_entries`](crate::TaskSetBuilder::max_entries)).
    pub fn max_tasks(mut self, n: usize) -> Self {
        self.config.tasks = self.config.tasks.max_entries(n);
        self
    }

    /// How long a finished task's status and result are kept for lookups; then the
    /// server's copy is dropped, whether or not anything uses the task set after (see
    /// [`TaskSetBuilder::ttl`](crate::TaskSetBuilder::ttl)). Default is one hour.
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
    /// A task runs its futures and timers on the runtime of whoever spawns it: the
    /// server's for its handlers, the caller's in async code. A spawn from a plain thread
    /// runs on the server's runtime, unless the set was built with
    /// [`TaskSetBuilder::runtime`] (which every task then uses) or already used from
    /// another runtime before the server started.
    pub fn tasks(mut self, tasks: TaskSet) -> Self {
        self.config.shared_tasks = Some(tasks);
        self
    }
}

/// hyper's builder for `config`, spawning HTTP/2 stream tasks on `streams`.
pub(super) fn http_builder(config: &Config, streams: TaskTracker) -> auto::Builder<StreamExecutor> {
    let mut http = auto::Builder::new(StreamExecutor { streams });
    http.http1()
        // The connection task enforces the header read timeout (see `conn`): hyper's
        // own timer allocates and registers a tokio timer for every request head, a
        // tenth of the per-request cost of the whole bridge.
        .header_read_timeout(None)
        .keep_alive(true)
        .half_close(config.http1_half_close)
        // hyper's buffer limit is also its head limit, but it sizes every body read and
        // write too: at 32 KiB it halves upload and download throughput, at hyper's own
        // ~400 KiB an upload-heavy load holds 2.5 times the memory for no gain (see
        // docs/benchmarks.md). So hyper gets 64 KiB and the service enforces
        // `max_header_size` (431 either way).
        .max_buf_size(HYPER_BUF_SIZE.max(config.max_header_size));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(http2_header_list_size(config.max_header_size))
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        // How much of a request body a client may send ahead, per stream: h2 holds it
        // in memory until the pump takes it, and a queued request's pump takes nothing.
        // hyper's 1 MiB made every queued HTTP/2 upload hold 1 MiB (HTTP/1 leaves it in
        // the socket); this is the request channel's own bound, which keeps a stream
        // flowing while its handler reads.
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(http2_connection_window(
            config.http2_max_concurrent_streams,
        ));
    http
}

/// h2's own limit on a request's header list: far enough above `max_header_size` that
/// the service's check, the same as on HTTP/1, is the one a client meets (a `431`
/// logged, with its access line), not h2's silent one. h2 counts 32 bytes more for each
/// field (RFC 9113's accounting), the service 4 (a header line's `: ` and CRLF); a list
/// within the limit by the service's count is at most 33/5 of it by h2's (one-letter
/// names, empty values), under 7 times, plus h2's four pseudo-headers (their 32 bytes
/// each and their values, which the service counts as the request line): 1 KiB covers
/// them. h2 still refuses, unlogged, a list past that. It is also how much of a header
/// block h2 buffers while it arrives (225 KiB at the default).
fn http2_header_list_size(max_header_size: usize) -> u32 {
    let size = max_header_size.saturating_mul(7).saturating_add(1024);
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// The connection's flow-control window: room for every stream's window at once, as
/// nginx gives. A stream whose request waits for a thread, or whose handler does not
/// read, keeps its window's worth of body unread; with less room (hyper's 1 MiB: four
/// such streams) those streams would leave none for the one a handler is reading, which
/// then times out though its client sent at full speed. The memory is the same bound
/// per stream as before, `max_concurrent_streams` of them; h2's largest window caps it.
fn http2_connection_window(max_concurrent_streams: u32) -> u32 {
    const H2_MAX_WINDOW: u32 = (1 << 31) - 1;
    max_concurrent_streams
        .saturating_mul(HTTP2_STREAM_WINDOW)
        .min(H2_MAX_WINDOW)
}
