//! The server's own tasks and a panic in them: the executor hyper spawns HTTP/2 stream
//! tasks on, and the guard that logs a panic in those and in the connection tasks.
//!
//! tokio catches a panic in a task and drops the task, leaving only the panic hook's
//! message on stderr. On HTTP/2 hyper polls each request's service future and response
//! body in a task of its own, beside the connection task; either may hold our code.

use std::future::Future;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::remote::Peer;

/// Spawns hyper's HTTP/2 stream tasks, each with a [`PanicLog`], on the server's tracker
/// of them: a request cut off by the shutdown is dropped, and logged, in its stream's
/// task, which the shutdown waits for before it says the server stopped.
#[derive(Clone, Debug)]
pub(super) struct StreamExecutor {
    pub(super) streams: TaskTracker,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // Spawned from the connection's poll: its span (the client's address) goes along.
        let span = tracing::Span::current();
        self.streams.spawn(
            async move {
                let _panic_log = PanicLog::Http2Stream;
                fut.await
            }
            .instrument(span),
        );
    }
}

/// Logs a panic that unwinds through a task of the server, with `tracing`.
///
/// Held in the task's state: tokio drops a panicked task's future while the panic
/// unwinds (before it catches it), so the guard sees `panicking()`, and costs nothing
/// per poll, unlike a `catch_unwind` around each. (A runtime dropped by a thread that is
/// itself panicking would make every open task say so too.)
pub(super) enum PanicLog {
    Connection(Peer),
    Http2Stream,
}

impl Drop for PanicLog {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        match self {
            PanicLog::Connection(peer) => tracing::error!(
                %peer,
                "connection task panicked (the panic message is the one printed just \
                 before); connection closed"
            ),
            PanicLog::Http2Stream => tracing::error!(
                "HTTP/2 stream task panicked (the panic message is the one printed just \
                 before); its stream was dropped"
            ),
        }
    }
}
