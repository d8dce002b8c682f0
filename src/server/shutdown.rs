//! Triggering a graceful shutdown: a handle, Ctrl-C and SIGTERM.

use tokio_util::sync::CancellationToken;

/// Starts the graceful shutdown of a [`Server`](crate::Server).
///
/// Obtained with [`Server::shutdown_handle`](crate::Server::shutdown_handle) before the
/// server runs. Cloning is cheap. `shutdown` may be called from any thread, async or not,
/// any number of times; calls after the first do nothing.
///
/// # Examples
///
/// ```no_run
/// use syncbridge::{Request, Server};
///
/// let server = Server::bind("127.0.0.1:0");
/// let handle = server.shutdown_handle();
/// let thread = std::thread::spawn(move || server.serve(|_req: Request| "hi"));
/// handle.shutdown();
/// thread.join().unwrap().unwrap();
/// ```
// No `Default`: a handle made apart from a server would shut nothing down.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    pub(super) graceful: CancellationToken,
}

impl ShutdownHandle {
    /// The handle of a new server.
    pub(super) fn new() -> Self {
        ShutdownHandle {
            graceful: CancellationToken::new(),
        }
    }

    /// Stops accepting connections and lets in-flight requests finish, up to the server's
    /// shutdown timeout.
    pub fn shutdown(&self) {
        if !self.graceful.is_cancelled() {
            tracing::info!("shutdown requested through the handle");
        }
        self.graceful.cancel();
    }

    /// Whether a shutdown has been requested.
    pub fn is_shutdown(&self) -> bool {
        self.graceful.is_cancelled()
    }
}

/// Waits for Ctrl-C or SIGTERM and starts a graceful shutdown; a second signal cancels
/// `second`, which cuts every remaining wait of the shutdown short. Runs until then, or
/// until the server aborts it once `serve` is done.
///
/// Listens from the call, inside the runtime, not from the future's first poll: a
/// SIGTERM between the server's start and that poll would otherwise end the process by
/// the default action, with no drain.
pub(super) fn watch_signals(
    graceful: CancellationToken,
    second: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    // The listeners live across both rounds: one made afresh for the second round would
    // miss a signal that came while the first round's was being handled.
    let signals = Signals::listen();
    async move {
        if let Some(signals) = signals {
            watch(signals, graceful, second).await;
        }
    }
}

async fn watch(mut signals: Signals, graceful: CancellationToken, second: CancellationToken) {
    for round in 0..2 {
        match signals.next().await {
            None => return,
            // A drain begun through the handle is not a signal: an orchestrator's usual
            // SIGTERM after it lets the drain go on.
            Some(name) if round == 0 && graceful.is_cancelled() => tracing::info!(
                signal = name,
                "shutdown signal received while already draining; a second one cuts the \
                 drain off"
            ),
            Some(name) if round == 0 => {
                tracing::info!(signal = name, "shutdown signal received; draining");
                graceful.cancel();
            }
            Some(name) => {
                tracing::warn!(
                    signal = name,
                    "second shutdown signal; cutting off the drain"
                );
                graceful.cancel();
                second.cancel();
                return;
            }
        }
    }
}

/// The process's Ctrl-C and SIGTERM listeners, made once.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl Signals {
    /// `None`, logged, when signals cannot be watched.
    fn listen() -> Option<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|err| tracing::error!(error = %err, "cannot watch {name}"))
                    .ok()
            };
            Some(Self {
                interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
                terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(windows)]
        {
            tokio::signal::windows::ctrl_c()
                .map_err(|err| tracing::error!(error = %err, "cannot watch Ctrl-C"))
                .ok()
                .map(|ctrl_c| Self { ctrl_c })
        }
        #[cfg(not(any(unix, windows)))]
        {
            None
        }
    }

    /// The next signal's name; `None` when the listeners have stopped.
    async fn next(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                r = self.interrupt.recv() => r.map(|()| "SIGINT"),
                r = self.terminate.recv() => r.map(|()| "SIGTERM"),
            }
        }
        #[cfg(windows)]
        {
            self.ctrl_c.recv().await.map(|()| "Ctrl-C")
        }
        #[cfg(not(any(unix, windows)))]
        {
            None
        }
    }
}
