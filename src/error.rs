//! The crate's one error type.

use std::fmt;

/// A `Result` alias whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error returned by syncbridge's fallible functions.
///
/// Opaque on purpose (as in `reqwest` and `hyper-util`): ask it what happened with the
/// `is_*` predicates and walk [`std::error::Error::source`] for the cause.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    message: Option<String>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Binding or configuring the listening socket failed.
    Bind,
    /// Building the tokio runtime or a worker thread failed.
    Runtime,
    /// A blocking function was called from async code, where it would stall the runtime.
    AsyncContext,
    /// A function that needs a syncbridge context was called outside one.
    NoContext,
    /// The blocking pool's concurrency limit and queue are both full.
    Overloaded,
    /// The work waited longer than the queue timeout or its deadline.
    TimedOut,
    /// The work was cancelled before it finished.
    Cancelled,
    /// The work panicked.
    Panicked,
    /// A background task returned an error (its `source`).
    TaskFailed,
    /// The server or pool is shutting down.
    Shutdown,
    /// A wait that could never end was refused.
    WouldDeadlock,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: None,
                source: None,
            }),
        }
    }

    pub(crate) fn with_message(mut self, message: impl Into<String>) -> Self {
        self.inner.message = Some(message.into());
        self
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn kind(&self) -> Kind {
        self.inner.kind
    }

    /// Binding or configuring the listening socket failed.
    pub fn is_bind(&self) -> bool {
        self.kind() == Kind::Bind
    }

    /// Building the tokio runtime or a worker thread failed.
    pub fn is_runtime(&self) -> bool {
        self.kind() == Kind::Runtime
    }

    /// A blocking function was called from async code (a tokio task or `block_on`),
    /// where blocking would stall the runtime or deadlock it.
    pub fn is_async_context(&self) -> bool {
        self.kind() == Kind::AsyncContext
    }

    /// A function that needs a syncbridge context (a handler thread, a background task,
    /// a running server) was called outside one; or the runtime it would wait on was
    /// built without timers (`enable_time`) where the wait needs one (a queued
    /// `ensure_async` closure, a task's timeout or retries); or `Server::serve_async` was
    /// polled outside a runtime, or in one without IO or timers, or
    /// `BlockingPool::report_gauges` (feature `metrics`) was called outside a runtime, or
    /// in one without timers.
    pub fn is_no_context(&self) -> bool {
        self.kind() == Kind::NoContext
    }

    /// The work was refused for lack of room: all of the pool's threads are busy and its
    /// queue is full, no thread could be started, or a task set's registry is full of
    /// live tasks. (A pool that has shut down gives [`is_shutdown`](Self::is_shutdown).)
    pub fn is_overloaded(&self) -> bool {
        self.kind() == Kind::Overloaded
    }

    /// The work waited in the queue past its timeout, or ran past its deadline.
    pub fn is_timeout(&self) -> bool {
        self.kind() == Kind::TimedOut
    }

    /// The work was cancelled before it finished.
    pub fn is_cancelled(&self) -> bool {
        self.kind() == Kind::Cancelled
    }

    /// The work panicked; the message is in `Display`.
    pub fn is_panic(&self) -> bool {
        self.kind() == Kind::Panicked
    }

    /// A background task returned an error; the task's own error is the `source`.
    pub fn is_task_failed(&self) -> bool {
        self.kind() == Kind::TaskFailed
    }

    /// The server or pool is shutting down and takes no more work.
    pub fn is_shutdown(&self) -> bool {
        self.kind() == Kind::Shutdown
    }

    /// A blocking wait was refused because it could never end: a task callback that
    /// joins a task with callbacks of its own, which need a callback thread while the
    /// joining callback holds one; or a blocking task's `join_blocking` that would leave
    /// every thread of its set's task pool waiting on a task of the same set that has
    /// not ended, and needs one of those threads to.
    pub fn is_would_deadlock(&self) -> bool {
        self.kind() == Kind::WouldDeadlock
    }

    /// Whether the error says "not now": no room, or shutting down. The bundled server
    /// and [`SyncService`](crate::SyncService) answer such a handler error with `503`.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self.kind(), Kind::Overloaded | Kind::Shutdown)
    }

    fn describe(&self) -> &'static str {
        match self.kind() {
            Kind::Bind => "failed to bind the listening socket",
            Kind::Runtime => "failed to start the runtime or a thread",
            Kind::AsyncContext => "a blocking call was made from async code",
            Kind::NoContext => "called outside a syncbridge context",
            Kind::Overloaded => "overloaded",
            Kind::TimedOut => "timed out",
            Kind::Cancelled => "cancelled",
            Kind::Panicked => "panicked",
            Kind::TaskFailed => "background task failed",
            Kind::Shutdown => "shutting down",
            Kind::WouldDeadlock => "refused a wait that could never end",
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("syncbridge::Error");
        d.field("kind", &self.kind());
        if let Some(message) = &self.inner.message {
            d.field("message", message);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())?;
        if let Some(message) = &self.inner.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

/// An error and its sources, as `outer: inner: innermost` (anyhow's `{:#}`): a log line
/// or a task's recorded error keeps the cause, which by Rust's convention an error's own
/// `Display` leaves to `source()`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        // Bounded: a source chain is a list, but nothing stops a type from looping.
        let mut source = self.0.source();
        for _ in 0..MAX_SOURCES {
            let Some(err) = source else { break };
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// The most sources [`Chain`] shows.
const MAX_SOURCES: usize = 16;

/// Turns a panic payload into the message it carried, for logs and errors, and lets go of
/// it. A payload is a `&str` or a `String` but for `panic_any` and `resume_unwind`; one of
/// another type is dropped under a guard of its own, so that a `Drop` that panics in turn
/// does not unwind past the guard that caught the first panic (a `SingleThread`'s thread
/// would die with it, a pool thread with its counts left high).
///
/// Callable from any thread. Call it before a `tracing` macro, not inside one: a field is
/// evaluated only when its event is enabled (or its throttle admits it), and the payload
/// must be let go of here either way.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        return (*s).to_owned();
    }
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(other) => {
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(other)));
            if let Err(again) = dropped {
                // Whose `Drop` may panic too: leaked, not dropped.
                std::mem::forget(again);
            }
            "Box<dyn Any>".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_shows_each_source_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(Kind::TaskFailed)
            .with_message("could not load the cart")
            .with_source(inner);
        assert_eq!(
            Chain(&err).to_string(),
            "background task failed: could not load the cart: refused"
        );
    }

    #[test]
    fn error_is_send_sync_static() {
        fn assert<T: Send + Sync + 'static + std::error::Error>() {}
        assert::<Error>();
    }

    #[test]
    fn display_includes_message_and_source_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        let err = Error::new(Kind::Bind)
            .with_message("127.0.0.1:1")
            .with_source(io);
        assert!(err.is_bind());
        assert_eq!(
            err.to_string(),
            "failed to bind the listening socket: 127.0.0.1:1"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    /// A `panic_any` payload whose `Drop` panics, and whose second payload does too.
    struct PanicsOnDrop(u8);

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            if self.0 > 0 {
                std::panic::resume_unwind(Box::new(PanicsOnDrop(self.0 - 1)));
            }
        }
    }

    #[test]
    fn a_payload_whose_drop_panics_is_let_go_of_without_unwinding() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(PanicsOnDrop(2))), "Box<dyn Any>");
    }
}
