//! The executor hyper spawns HTTP/2 stream tasks on: tokio's, with a panic in a stream
//! task logged through `tracing`.
//!
//! On HTTP/2 hyper polls each request's service future and response body in a task of
//! its own, beside the connection task. tokio catches a panic there and drops the task,
//! leaving only the panic hook's message on stderr; the guard below says it in the log
//! too, as `conn::PanicLog` does for the connection task.

use std::future::Future;

/// Spawns hyper's HTTP/2 stream tasks with `tokio::spawn`, each with a panic log.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(async move {
            // Part of the task's state: tokio drops it while a panic unwinds.
            let _panic_log = StreamPanicLog;
            fut.await
        });
    }
}

struct StreamPanicLog;

impl Drop for StreamPanicLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "HTTP/2 stream task panicked (the panic message is the one printed just \
                 before); its stream was dropped"
            );
        }
    }
}
