//! A connection the bundled server refuses whole (its client holds the most it may:
//! `server::client_limit`): the service answers each of its requests itself, at once,
//! counts it as refused (`client_limit`), and tells the connection's task that it did.
//! Served by the same hyper connection as any other, so that hyper's HTTP/1 and HTTP/2
//! code is compiled once, not twice.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Version};
use tokio::sync::Notify;

/// Makes the answer to a refused connection's request, from the request's version and
/// the service's `Retry-After`.
pub(crate) type Answer = fn(Version, HeaderValue) -> http::Response<Bytes>;

/// A connection whose requests the service answers with `answer`, not the handler.
#[derive(Debug)]
pub(crate) struct RefusedConnection {
    answer: Answer,
    answered: AtomicBool,
    notify: Notify,
}

impl RefusedConnection {
    pub(crate) fn new(answer: Answer) -> Self {
        RefusedConnection {
            answer,
            answered: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// The answer to one of its requests; the connection's task hears of it.
    pub(super) fn answer(
        &self,
        version: Version,
        retry_after: HeaderValue,
    ) -> http::Response<Bytes> {
        self.answered.store(true, Ordering::Release);
        self.notify.notify_one();
        (self.answer)(version, retry_after)
    }

    /// Whether a request of it has been answered.
    pub(crate) fn was_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Resolves once a request of it has been answered: at once if one was (for one
    /// waiter, the connection's task).
    pub(crate) async fn answered(&self) {
        self.notify.notified().await
    }
}
