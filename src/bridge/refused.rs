//! A connection the bundled server refuses whole (its client holds the most it may:
//! `server::client_limit`): the service answers each of its requests itself, at once,
//! counts it as refused (`client_limit`), and tells the connection's task that it did.
//! Served by the same hyper connection as any other, so that hyper's HTTP/1 and HTTP/2
//! code is compiled once, not twice.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode, Version};
use tokio::sync::Notify;

/// A connection whose requests the service answers `503` itself, not the handler.
#[derive(Debug, Default)]
pub(crate) struct RefusedConnection {
    answered: AtomicBool,
    notify: Notify,
}

impl RefusedConnection {
    pub(crate) fn new() -> Self {
        RefusedConnection::default()
    }

    /// The answer to one of its requests; the connection's task hears of it.
    pub(super) fn answer(&self, version: Version, retry_after: HeaderValue) -> Response<Bytes> {
        self.answered.store(true, Ordering::Release);
        self.notify.notify_one();
        too_many(version, retry_after)
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

/// The `503` a connection over its client's cap gets, by the request's version.
fn too_many(version: Version, retry_after: HeaderValue) -> Response<Bytes> {
    let body = "Service Unavailable: too many connections from this client, retry later\n";
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(RETRY_AFTER, retry_after);
    // HTTP/2 has no such header: its GOAWAY says it.
    if version < Version::HTTP_2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_connection_close_over_http1_only() {
        for (version, close) in [
            (Version::HTTP_10, true),
            (Version::HTTP_11, true),
            (Version::HTTP_2, false),
        ] {
            let answer = too_many(version, HeaderValue::from(7));
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(answer.headers()[RETRY_AFTER], "7");
            assert_eq!(
                answer.headers().contains_key(CONNECTION),
                close,
                "{version:?}"
            );
        }
    }
}
