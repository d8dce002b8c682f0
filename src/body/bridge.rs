//! The body handed to hyper (or any tower stack): full bytes or the receiving end of a
//! streamed response.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body::{Frame, SizeHint};

use super::channel::Receiver;

/// The response body [`SyncService`](crate::SyncService) returns: `http_body::Body` with
/// `Data = Bytes` and `Error = io::Error`, so hyper, axum and tower-http layers take it.
///
/// A full body reports its exact size (hyper sends `Content-Length`); a streamed one
/// yields the chunks the handler thread produces, and dropping it (the client went away)
/// tells that thread to stop.
pub struct BridgeBody {
    kind: Kind,
    completion: Option<Completion>,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Receiver),
}

impl BridgeBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        BridgeBody {
            kind: Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            completion: None,
        }
    }

    pub(crate) fn stream(rx: Receiver) -> Self {
        BridgeBody {
            kind: Kind::Stream(rx),
            completion: None,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        matches!(self.kind, Kind::Full(_))
    }

    pub(crate) fn set_completion(&mut self, completion: Completion) {
        self.completion = Some(completion);
    }
}

impl http_body::Body for BridgeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            Kind::Stream(rx) => rx.poll_recv(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(c) = &mut this.completion {
                    c.bytes += chunk.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(c) = &mut this.completion {
                    c.complete = true;
                }
            }
            _ => {}
        }
        polled.map(|next| next.map(|chunk| chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

impl Drop for BridgeBody {
    fn drop(&mut self) {
        if let (Some(c), Kind::Full(None)) = (&mut self.completion, &self.kind) {
            // hyper may drop a full body without polling its end once it has the bytes.
            c.complete = true;
        }
    }
}

impl fmt::Debug for BridgeBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Stream(_) => "stream",
        };
        f.debug_struct("BridgeBody").field("kind", &kind).finish()
    }
}

/// A request's method and URI, kept for log lines after the request itself has moved
/// into the handler. The bridge keeps them in the allocation a request shares with its
/// pool job, so that one copy serves the job's logs and the access log.
pub(crate) trait RequestLine: Send + Sync {
    fn method(&self) -> &Method;
    fn uri(&self) -> &Uri;
}

/// A request line of its own, for requests refused before they reach the pool.
pub(crate) struct OwnedLine {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
}

impl RequestLine for OwnedLine {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// Marks a request done when its response body is dropped: writes the access-log event
/// and tells the connection it is idle again.
pub(crate) struct Completion {
    pub(crate) line: Arc<dyn RequestLine>,
    pub(crate) status: StatusCode,
    pub(crate) start: Instant,
    pub(crate) bytes: u64,
    /// The response's `Content-Length`: hyper stops polling once it has that many bytes.
    pub(crate) expected: Option<u64>,
    pub(crate) complete: bool,
    pub(crate) activity: Option<Arc<crate::bridge::Activity>>,
}

impl Completion {
    pub(crate) fn method(&self) -> &Method {
        self.line.method()
    }

    pub(crate) fn path(&self) -> &str {
        self.line.uri().path()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(activity) = &self.activity {
            activity.request_done();
        }
        tracing::info!(
            target: "syncbridge::access",
            method = %self.line.method(),
            path = %self.line.uri().path(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            latency_us = self.start.elapsed().as_micros() as u64,
            complete = self.complete || self.expected == Some(self.bytes),
        );
    }
}
