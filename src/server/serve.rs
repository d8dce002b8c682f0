//! Running the server: the accept loop, then the graceful shutdown (stop accepting,
//! drain the connections, cut off the rest at the deadline, drain background tasks),
//! and what a `serve_async` future dropped before the end leaves behind.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::client_limit::{self, ClientLimit};
use super::config::http_builder;
use super::conn::{self, ConnConfig, NewConn};
use super::forwarded::{ClientSource, Proxies};
use super::listen::{Accepted, AddrList, Listener, Listeners, ACCEPT_REST};
use super::proxy_protocol::{self, Client};
use super::remote::Peer;
use super::signal::{self, ConnSignal};
use super::stream::ConnStream;
use super::{shutdown, ListenAddr, Server};
use crate::bridge::SyncService;
use crate::error::{Error, Kind, Result};
use crate::handler::Handler;
use crate::throttle::Throttle;

/// How much written data may wait unsent in a connection's socket before the kernel
/// stops reporting it writable (`TCP_NOTSENT_LOWAT`): two of hyper's 64 KiB writes. The
/// kernel wakes a writer when less than half of it is left, and a write may leave 64 KiB
/// past it: a client must take about 128 to 192 KiB before a blocked writer moves. The
/// body timeout counts what the client's kernel acknowledges instead, where it can (see
/// `conn::Watch::stalled_for`); where it cannot, that makes its floor about 256 KiB per
/// timeout (its docs). Without the option it would be a third of a send buffer
/// autotuning grows to MiBs; and a connection holds this much unsent, not MiBs.
const NOTSENT_LOWAT: u32 = 128 * 1024;

impl Server {
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
    /// [`serve_async`](Server::serve_async) there). [`Error::is_runtime`] when the
    /// runtime cannot start: among other causes, when `TOKIO_WORKER_THREADS` is not a
    /// number above 0, or when the OS refuses its worker threads (a pids or
    /// `RLIMIT_NPROC` limit already reached; size it for the whole process,
    /// `docs/operations.md`, "Limits of the process").
    ///
    /// # Panics
    ///
    /// tokio panics inside its runtime builder ("OS can't spawn worker thread") instead
    /// of returning an error when the OS refuses a worker thread, and hangs while it
    /// unwinds once one has started. So `serve` first starts as many threads as the
    /// runtime will and lets them end, and returns the error above when one is refused;
    /// it then waits (up to 100 ms, on Linux; 10 ms elsewhere, where it cannot see the
    /// count) until they no longer count against the limit. Only a limit reached by
    /// another thread or process in the moment between that check and the runtime's
    /// start, or a joined thread the OS takes longer than that to reap, still meets
    /// tokio's panic. A runtime of your own for [`serve_async`](Server::serve_async) has
    /// no such check.
    pub fn serve<H: Handler>(self, handler: H) -> Result<()> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(Kind::AsyncContext).with_message(
                "Server::serve blocks its thread; inside a tokio runtime use Server::serve_async",
            ));
        }
        let runtime = super::runtime::build(self.config.worker_threads)?;
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
    /// Shut it down through its [`ShutdownHandle`](super::ShutdownHandle) and let it return. Dropped before that
    /// (another branch of a `select!` won), it stops accepting and asks each connection
    /// to close after its requests in flight, but waits for nothing and drains no
    /// background tasks, and says so in a warning.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_context`] at once when polled outside a tokio runtime, or in one
    /// built without IO or without timers (tokio prints its own panic message for the
    /// missing driver first: that is how it is detected, and under `panic = "abort"` the
    /// process aborts there instead). [`Error::is_bind`] when a listener cannot be
    /// registered with the runtime.
    pub async fn serve_async<H: Handler>(self, handler: H) -> Result<()> {
        self.run(handler).await
    }

    /// The server's future, boxed: it is the largest state machine of the crate (the
    /// accept loop and the shutdown, 36 KiB of code), and an `async fn`'s body is a
    /// closure, which rustc copies into each codegen unit that polls or drops it: three
    /// copies without the box, one with it. `Send` and `Sync`, as the future was before
    /// it was boxed.
    fn run<H: Handler>(
        self,
        handler: H,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + Sync>> {
        Box::pin(self.serving(handler))
    }

    async fn serving<H: Handler>(self, handler: H) -> Result<()> {
        let Server {
            listeners,
            listen_addrs,
            shutdown,
            config,
        } = self;
        let mut listeners = match register(listeners, &listen_addrs) {
            Ok(mut listeners) => {
                if config.proxy_protocol {
                    listeners.require_proxy_protocol(&config.direct_sockets);
                }
                listeners
            }
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
            .head_grace(config.head_grace)
            .handler_timeout(config.handler_timeout)
            .stream_timeout(config.stream_timeout)
            .retry_after(config.retry_after)
            .runtime(tokio::runtime::Handle::current())
            .tasks(tasks.clone())
            .request_span(config.request_span.clone())
            .build();
        // Cancelled by a second Ctrl-C/SIGTERM only: it cuts every remaining wait short.
        let second_signal = CancellationToken::new();
        // hyper's HTTP/2 stream tasks, beside the connections' own: a connection closes
        // before its streams' tasks have dropped (and logged) what it cut off.
        let streams = TaskTracker::new();
        let conn_config = Arc::new(ConnConfig {
            http: http_builder(&config, streams.clone()),
            keep_alive: config.keep_alive_timeout,
            header_read_timeout: config.header_read_timeout,
            write_stall_timeout: config.body_timeout,
            remote_addr: config.remote_addr,
            listen_addr: config.remote_addr && listen_addrs.len() > 1,
            // Both settings known now, whichever order they were made in.
            trusted_proxies: config
                .trusted_proxies
                .clone()
                .map(|list| Arc::new(Proxies::new(list, config.forwarded_headers))),
            client_limit: config
                .max_connections_per_client
                .map(|cap| Arc::new(ClientLimit::new(cap))),
            signal: ConnSignal::default(),
        });
        let signal_watcher = config.handle_signals.then(|| {
            tokio::spawn(shutdown::watch_signals(
                shutdown.graceful.clone(),
                second_signal.clone(),
            ))
        });
        let connections = TaskTracker::new();
        // Aborted when `run` ends or is dropped; nothing without the `metrics` feature.
        let all_addrs = AddrList(&listen_addrs);
        let _load_sampler = crate::metrics::sample_server(&all_addrs, &pool, &connections);
        // Until the shutdown below has run its course: a `serve_async` future dropped
        // before that would otherwise leave its connections and signal watcher running.
        let mut dropped_early = DroppedEarly {
            conn_config: conn_config.clone(),
            connections: connections.clone(),
            signal_watcher: signal_watcher.as_ref().map(|w| w.abort_handle()),
            stage: Stage::Serving,
        };
        let spawner = ConnSpawner {
            connections: connections.clone(),
            config: conn_config.clone(),
            service,
        };
        let slots = Arc::new(Semaphore::new(config.max_connections));
        for (i, addr) in listen_addrs.iter().enumerate() {
            let max_threads = pool.max_threads();
            if config.proxy_protocol {
                let proxy_protocol = !config.direct_sockets.contains(&i);
                tracing::info!(%addr, max_threads, proxy_protocol, "syncbridge listening");
            } else {
                tracing::info!(%addr, max_threads, "syncbridge listening");
            }
        }
        warn_if_short_of_files(config.max_connections);
        warn_if_zero_timeouts(&config);
        // Named, not `_`, so that the pings go on until `run` ends, through the drain: a
        // server still draining is alive, and a stop systemd did not ask for (through the
        // handle) leaves the watchdog armed.
        if config.notify_systemd {
            super::systemd::ready(&all_addrs);
        }
        let _watchdog = if config.systemd_watchdog {
            // `ready` has named a `$NOTIFY_SOCKET` that is no address, if it ran.
            super::systemd::watchdog(!config.notify_systemd)
        } else {
            None
        };

        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.graceful.cancelled() => break,
                accepted = listeners.accept() => accepted,
            };
            match accepted {
                Ok((accepted, local, proxy_protocol)) => {
                    let peer = accepted.peer();
                    // Accepted first, then given a slot: the server then knows that someone
                    // waits for one, and asks an idle keep-alive connection to make room.
                    let permit = match slots.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => {
                            crate::metrics::connection_waited();
                            let waited = wait_for_slot(
                                &slots,
                                config.max_connections,
                                &conn_config.signal,
                                &shutdown.graceful,
                            );
                            match waited.await {
                                Some(permit) => permit,
                                None => {
                                    // No request of it was read: closed as the listen
                                    // backlog is, but named.
                                    tracing::info!(
                                        %peer,
                                        "connection waiting for a slot closed by the shutdown"
                                    );
                                    break;
                                }
                            }
                        }
                    };
                    match accepted {
                        Accepted::Tcp(stream, _) => {
                            let _ = stream.set_nodelay(true);
                            crate::sys::set_notsent_lowat(&stream, NOTSENT_LOWAT);
                            let stream = ConnStream::Tcp(stream);
                            spawner.spawn(stream, peer, local, permit, proxy_protocol);
                        }
                        #[cfg(unix)]
                        Accepted::Unix(stream) => {
                            let stream = ConnStream::Unix(stream);
                            spawner.spawn(stream, peer, local, permit, proxy_protocol)
                        }
                    }
                }
                Err(failed) if failed.per_connection => {
                    let (addr, error) = (failed.addr, failed.error);
                    tracing::debug!(%addr, %error, "accept failed for one connection");
                }
                Err(failed) => {
                    // EMFILE and friends: that listener rests instead of spinning on the
                    // error (the others go on), and it is said once a second, not at
                    // every retry, for as long as it lasts.
                    crate::metrics::accept_failed();
                    if let Some(left_out) = failed.say {
                        let (addr, error) = (failed.addr, failed.error);
                        let rest_ms = ACCEPT_REST.as_millis() as u64;
                        tracing::error!(%addr, %error, left_out, rest_ms, "accept failed; retrying");
                    }
                }
            }
        }

        drop(listeners);
        if config.notify_systemd {
            super::systemd::stopping();
        }
        dropped_early.stage = Stage::ShuttingDown;
        conn_config.signal.raise(signal::DRAIN);
        connections.close();
        streams.close();
        let all_ended = || async {
            connections.wait().await;
            streams.wait().await;
        };
        tracing::info!(
            connections = connections.len(),
            handlers_running = pool.stats().busy,
            deadline_secs = config.shutdown_timeout.as_secs_f64(),
            "shutting down: stopped accepting, draining in-flight requests"
        );
        let cut_off_by = tokio::select! {
            _ = all_ended() => None,
            _ = tokio::time::sleep(config.shutdown_timeout) => Some("shutdown deadline reached"),
            _ = second_signal.cancelled() => Some("second shutdown signal"),
        };
        if let Some(cause) = cut_off_by {
            tracing::warn!(
                connections = connections.len(),
                "{cause}; cutting off the remaining connections"
            );
            conn_config.signal.raise(signal::FORCE);
            // Each connection task logs what it cuts off and returns on its next poll; one
            // that is not polled again within the grace below is left behind, said here.
            // A second signal cuts the grace short, unless it is what began the cut-off
            // (the tasks still get their next poll then).
            let by_signal = second_signal.is_cancelled();
            let grace = Duration::from_secs(5);
            let all_closed = tokio::select! {
                _ = all_ended() => true,
                _ = tokio::time::sleep(grace) => false,
                _ = second_signal.cancelled(), if !by_signal => false,
            };
            if !all_closed {
                tracing::error!(
                    connections = connections.len(),
                    http2_stream_tasks = streams.len(),
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
        for addr in &listen_addrs {
            tracing::info!(%addr, "syncbridge stopped");
        }
        Ok(())
    }
}

/// What each connection's task is spawned with, on the server's tracker of them.
struct ConnSpawner<H: Handler> {
    connections: TaskTracker,
    config: Arc<ConnConfig>,
    service: SyncService<H>,
}

impl<H: Handler> ConnSpawner<H> {
    fn spawn(
        &self,
        stream: ConnStream,
        peer: Peer,
        local: Arc<ListenAddr>,
        permit: OwnedSemaphorePermit,
        proxy_protocol: bool,
    ) {
        let accepted = std::time::Instant::now();
        let (config, service) = (self.config.clone(), self.service.clone());
        let new = move |stream, peer, client_source, client_slot| NewConn {
            stream,
            peer,
            client_source,
            local,
            permit,
            client_slot,
            accepted,
        };
        if !proxy_protocol {
            // Every line logged on the connection's behalf, the handler's own included (its
            // request's span is this one), names its client.
            let span = tracing::info_span!("conn", %peer);
            // Its warning, if refused, names the client itself: no span entered for it.
            match client_limit::admit(&config, peer) {
                Ok(client_slot) => {
                    let client_source = config
                        .trusted_proxies
                        .as_ref()
                        .map(|p| ClientSource::of(peer, p));
                    let conn = new(stream, peer, client_source, client_slot);
                    let conn = conn::serve(conn, config, service);
                    self.connections.spawn(conn.instrument(span));
                }
                Err(over) => {
                    let conn = new(stream, peer, None, None);
                    let answer = async move { over.answer(conn, &config, service).await };
                    self.connections.spawn(answer.instrument(span));
                }
            }
            return;
        }
        // The connection's client is known once its PROXY protocol header is read: its
        // lines name the client, and the proxy beside it.
        self.connections.spawn(async move {
            let mut stream = stream;
            let read = proxy_protocol::client_of(&mut stream, peer, &config, accepted);
            let Some(client) = read.await else {
                return;
            };
            let proxies = config.trusted_proxies.as_ref();
            let (client, source, span) = match client {
                Client::Proxied { addr, tls } => {
                    let client = Peer::Tcp(addr);
                    let source = proxies.map(|p| ClientSource::of(client, p).over_tls(tls));
                    let span = tracing::info_span!("conn", peer = %addr, proxy = %peer);
                    (Some(client), source, span)
                }
                Client::Peer => {
                    let source = proxies.map(|p| ClientSource::of(peer, p));
                    (Some(peer), source, tracing::info_span!("conn", %peer))
                }
                Client::Local => {
                    let source = proxies.map(|_| ClientSource::direct(peer));
                    (Some(peer), source, tracing::info_span!("conn", %peer))
                }
                // The client's own bytes follow, and no proxy's headers: none is believed,
                // and the client, unknown, is counted against no cap.
                Client::Unknown { tls } => {
                    let source = proxies.map(|_| ClientSource::unknown().over_tls(tls));
                    (None, source, tracing::info_span!("conn", %peer))
                }
            };
            let admitted = match client {
                Some(client) => span.in_scope(|| client_limit::admit(&config, client)),
                None => Ok(None),
            };
            let client = client.unwrap_or(peer);
            match admitted {
                Ok(client_slot) => {
                    let conn = new(stream, client, source, client_slot);
                    conn::serve(conn, config, service).instrument(span).await
                }
                Err(over) => {
                    let conn = new(stream, client, None, None);
                    over.answer(conn, &config, service).instrument(span).await
                }
            }
        });
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
        self.conn_config.signal.raise(signal::DRAIN);
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
/// process holds open (the listeners, the runtime's own descriptors, logs, a database).
fn warn_if_short_of_files(max_connections: usize) {
    const MARGIN: u64 = 64;
    if let Some(limit) = crate::sys::open_file_limit() {
        if (max_connections as u64).saturating_add(MARGIN) > limit {
            // What is open now, where it can be counted: the margin is a guess for later.
            let open = crate::sys::open_files();
            tracing::warn!(
                max_connections,
                open_file_limit = limit,
                open_files = open,
                "the open-file limit (RLIMIT_NOFILE) is below max_connections: \
                 past about {} connections, accept fails until one closes; \
                 raise it (`ulimit -n`) or lower max_connections",
                limit.saturating_sub(open.unwrap_or(MARGIN)),
            );
        }
    }
}

/// Says at start when a timeout that bounds the client is zero: accepted, since a test
/// may want it, but in production it refuses nearly everyone, and the log would show only
/// a stream of closed connections or `408`s, each looking like a client's fault.
fn warn_if_zero_timeouts(config: &super::config::Config) {
    if config.header_read_timeout.is_zero() {
        tracing::warn!(
            "header_read_timeout is zero: every connection whose first request is not \
             already there when it is accepted is closed"
        );
    }
    if config.body_timeout.is_zero() {
        tracing::warn!(
            "body_timeout is zero: every wait on a client fails at once (a request body \
             not yet arrived is answered 408, a response larger than the socket holds is \
             cut off)"
        );
    }
}

/// Registers the listeners with the current runtime, checking first that the runtime has
/// what the server needs: tokio would otherwise panic from deep inside, here for a
/// missing runtime or IO driver, and at the first connection for missing timers.
fn register(listeners: Vec<Listener>, addrs: &[ListenAddr]) -> Result<Listeners> {
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
    match catch_unwind(AssertUnwindSafe(|| Listeners::register(listeners, addrs))) {
        Ok(registered) => registered.map_err(|e| Error::new(Kind::Bind).with_source(e)),
        Err(_) => Err(no_context("needs a runtime with IO")),
    }
}

/// Waits for a slot under `max_connections` for a connection accepted at the limit,
/// asking an idle connection to close every second meanwhile (one that is busy at one ask
/// may be idle at the next), and saying so, throttled, for as long as it lasts. `None`
/// when the shutdown began: the accepted connection is dropped with the listeners.
async fn wait_for_slot(
    slots: &Arc<Semaphore>,
    max_connections: usize,
    signal: &ConnSignal,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    static AT_LIMIT: Throttle = Throttle::new();
    let started = std::time::Instant::now();
    loop {
        if let Some(left_out) = AT_LIMIT.admit() {
            // Not an error, but the one sign of it: clients wait unanswered meanwhile.
            tracing::warn!(
                max_connections,
                waited_ms = started.elapsed().as_millis() as u64,
                left_out,
                "connection limit reached; a new connection waits for a slot (idle \
                 keep-alive connections are closed to make room, busy ones are not)"
            );
        }
        signal.ask_for_room();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            permit = slots.clone().acquire_owned() => {
                // The one accept loop asks for room: none is wanted once it has a slot.
                signal.withdraw_room_request();
                return Some(permit.expect("semaphore never closed"));
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
