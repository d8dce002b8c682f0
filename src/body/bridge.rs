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

use super::channel::{HeadCall, Receiver};
use crate::bridge::{Activity, CutOff};

/// The response body [`SyncService`](crate::SyncService) returns: `http_body::Body` with
/// `Data = Bytes` and `Error = io::Error`, so hyper, axum and tower-http layers take it.
///
/// A full body reports its exact size (hyper sends `Content-Length`); a streamed one
/// yields the chunks the handler thread produces, and dropping it (the client went away)
/// tells that thread to stop.
///
/// Poll it from any task or thread: the producer thread wakes whoever polled it last.
pub struct BridgeBody {
    kind: Kind,
    completion: Option<Completion>,
}

/// The largest piece a body yields, streamed or full. hyper takes the next piece only once it has written (HTTP/1) or
/// handed h2 the window for (HTTP/2) nearly all of the last one, so a larger chunk would
/// make a client that reads it slowly but steadily look stalled to the body timeout.
const FRAME: usize = 64 * 1024;

/// An HTTP/2 response body's standing with its client, for the connection's body
/// timeout (`server::conn`). Kept in the body's `Completion`, beside its activity.
///
/// hyper (1.x) takes a body's next frame as soon as h2 has the last one, then holds it
/// until the client's flow-control window has room for it, and only then polls again.
/// A client that opens no window leaves the body unpolled, and the connection busy, for
/// ever; on HTTP/1 the same client would fill the socket, which the server sees. So the
/// body tells the connection, in a slot of its own, since when its last poll handed
/// hyper a frame, which waits on the client (a `Pending` poll waits on the producer
/// instead); the next poll means the client made room for it. Full bodies are yielded in
/// frames of at most `FRAME` too: taken whole, one would leave the bridge's sight at
/// once. The least a client must take of a response it holds back so is thus one frame
/// per body timeout (about 2 KiB/s at 30 s). (Where the socket fills instead, the
/// connection's watch counts what the client's kernel acknowledges on HTTP/1, and a
/// streamed response's producer leaves the stall to it; on HTTP/2 this watch and the
/// producer see h2's takes, so a client must take a frame per timeout there too: see
/// `Server::body_timeout`.)
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Http2Flow {
    /// Not an HTTP/2 connection of the bundled server.
    Off,
    /// Its slot in `Activity`'s held responses, and whether it has (or may have) a frame
    /// hyper has not taken; if not, its last poll was `Pending`: it waits on its
    /// producer, not on the client.
    Watched { slot: usize, held: bool },
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

    /// Whether a held head may go out (`Receiver::poll_head`); a full body's at once.
    pub(crate) fn poll_head(&self, cx: &mut Context<'_>) -> Poll<HeadCall> {
        match &self.kind {
            Kind::Full(_) => Poll::Ready(HeadCall::Send),
            Kind::Stream(rx) => rx.poll_head(cx),
        }
    }

    /// A held head's fate once its grace is over (`Receiver::let_head_go`).
    pub(crate) fn let_head_go(&self) -> HeadCall {
        match &self.kind {
            Kind::Full(_) => HeadCall::Send,
            Kind::Stream(rx) => rx.let_head_go(),
        }
    }

    /// Attaches the request's completion, and on an HTTP/2 connection of the bundled
    /// server the watch on the client's flow control; the body is handed to hyper next.
    pub(crate) fn set_completion(&mut self, mut completion: Completion) {
        if let Some(activity) = completion.activity.as_ref().filter(|a| a.is_http2()) {
            // Held until its first poll: hyper has not taken anything yet.
            completion.http2 = Http2Flow::Watched {
                slot: activity.watch_held(),
                held: true,
            };
        }
        self.completion = Some(completion);
    }

    /// The next chunk, counted in the completion, of at most `FRAME` bytes (a longer
    /// full body is split, its rest kept for the next call, without a copy). hyper polls
    /// for the next only once it has room for it, so the count, and `complete`, follow
    /// what went to the socket, not what hyper was handed: a large full body handed over
    /// whole would be counted complete at once, whether its client stayed or not.
    #[inline]
    fn next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let polled = match &mut self.kind {
            Kind::Full(Some(bytes)) if bytes.len() > FRAME => {
                Poll::Ready(Some(Ok(bytes.split_to(FRAME))))
            }
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            Kind::Stream(rx) => rx.poll_recv_at_most(cx, FRAME),
        };
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(c) = &mut self.completion {
                    c.bytes += chunk.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(c) = &mut self.completion {
                    c.complete = true;
                }
            }
            Poll::Ready(Some(Err(_))) => self.aborted(),
            Poll::Pending => {}
        }
        polled
    }

    /// Marks the response not complete, even with its declared length sent (HTTP/2 resets
    /// the stream for the error), and tells the connection it broke off (see
    /// `Activity::response_aborted`).
    #[cold]
    fn aborted(&mut self) {
        if let Some(c) = &mut self.completion {
            c.expected = None;
            c.complete = false;
            if let Some(activity) = &c.activity {
                activity.response_aborted();
            }
        }
    }

    /// `next_chunk` on an HTTP/2 connection of the bundled server: in frames of at most
    /// `FRAME`, and every poll reported to the connection (`Http2Flow`).
    #[inline(never)]
    fn next_http2_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let polled = self.next_chunk(cx);
        if let Some(c) = &mut self.completion {
            c.http2_polled(polled.is_pending());
        }
        polled
    }
}

impl http_body::Body for BridgeBody {
    type Data = Bytes;
    type Error = io::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        // HTTP/1 (and any stack but the bundled server's HTTP/2) keeps the short path.
        let http2 = matches!(&this.completion, Some(c) if c.http2 != Http2Flow::Off);
        let polled = if http2 {
            this.next_http2_chunk(cx)
        } else {
            this.next_chunk(cx)
        };
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
    /// The span current where the request was handed in: embedded, the host's request
    /// span, which the lines logged as the request ends (its access line, an abandoned
    /// request's) are in, as the bundled server's are in its connection's.
    fn span(&self) -> &tracing::Span;
}

/// A request line of its own, for requests refused before they reach the pool.
pub(crate) struct OwnedLine {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) span: tracing::Span,
}

impl RequestLine for OwnedLine {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn span(&self) -> &tracing::Span {
        &self.span
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
    pub(crate) http2: Http2Flow,
    pub(crate) activity: Option<Arc<Activity>>,
}

impl Completion {
    /// A request's, from its arrival at `start`, before its response is known.
    #[inline]
    pub(crate) fn new(
        line: Arc<dyn RequestLine>,
        start: Instant,
        activity: Option<Arc<Activity>>,
    ) -> Self {
        Completion {
            line,
            status: StatusCode::OK,
            start,
            bytes: 0,
            expected: None,
            complete: false,
            http2: Http2Flow::Off,
            activity,
        }
    }

    pub(crate) fn method(&self) -> &Method {
        self.line.method()
    }

    pub(crate) fn path(&self) -> &str {
        self.line.uri().path()
    }

    /// Reports a poll of an HTTP/2 body to its connection (see `Http2Flow`).
    fn http2_polled(&mut self, pending: bool) {
        let (Some(activity), Http2Flow::Watched { slot, held }) = (&self.activity, &mut self.http2)
        else {
            return;
        };
        // A frame handed over waits on the client from now: hyper had room for the last
        // one, so the client took it. A `Pending` poll after `Pending` (the producer's
        // wake-up) changes nothing.
        if !pending || *held {
            *held = !pending;
            activity.set_held(*slot, *held);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // With a declared length, only that many bytes make it whole: a producer that ends
        // short of it leaves the client with a cut-off body.
        let complete = match self.expected {
            Some(expected) => self.bytes == expected,
            None => self.complete,
        };
        // Embedded, the host's request span (the bundled server's connection span is
        // entered already: the connection task drops the body).
        let _host_span = self.activity.is_none().then(|| self.line.span().enter());
        if let Some(activity) = &self.activity {
            if let Http2Flow::Watched { slot, .. } = self.http2 {
                activity.unwatch_held(slot);
            }
            activity.request_done();
            if let Some(why) = activity.cut_off_by().filter(|_| !complete) {
                self.log_cut_off(why);
            }
        }
        crate::metrics::request_done(self.status, self.start);
        tracing::info!(
            target: "syncbridge::access",
            method = %self.line.method(),
            path = %self.line.uri().path(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            latency_us = self.start.elapsed().as_micros() as u64,
            complete,
        );
    }
}

impl Completion {
    /// Names a request the server cut off with its connection, head or body unsent: never
    /// a flood, at most the requests in flight then.
    #[cold]
    fn log_cut_off(&self, why: CutOff) {
        let (method, path, bytes) = (self.line.method(), self.line.uri().path(), self.bytes);
        match why {
            CutOff::Shutdown => tracing::warn!(
                %method, %path, bytes,
                "request cut off by the shutdown before its response was complete"
            ),
            CutOff::StalledClient => {
                let first = self
                    .activity
                    .as_ref()
                    .is_none_or(|activity| activity.first_to_say_cut_off());
                if first {
                    tracing::warn!(
                        %method, %path, bytes,
                        "request cut off before its response was complete: its connection \
                         was closed for a client that held back a response for the body \
                         timeout"
                    );
                } else {
                    // The connection's others: at debug (their access lines say
                    // `complete=false`).
                    tracing::debug!(
                        %method, %path, bytes,
                        "request cut off before its response was complete, with others on \
                         its connection closed for a stalled client"
                    );
                }
            }
        }
    }
}
