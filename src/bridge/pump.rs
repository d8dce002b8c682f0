//! The request body's way to the handler: a pump that feeds hyper's body, frame by frame,
//! into the bounded channel the handler reads from, while the request's future waits
//! for the response; and after it, from a task of its own, if the handler kept the body.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::Body as HttpBody;

use super::{Activity, BoxError};
use crate::body::channel::Sender;

/// Feeds the request body, chunk by chunk, into the channel the handler reads from.
pub(super) struct Pump<B> {
    body: Pin<Box<B>>,
    tx: Option<Sender>,
    seen: u64,
    pub(super) limit: u64,
    /// The request's `Content-Length`: a body that ends short of it was cut off.
    declared: Option<u64>,
    /// Whether the client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
    /// Whether anything of the body has come: then the client had its `100 Continue`.
    received: bool,
    /// Whether the body may be fetched though nothing of it has come: asking hyper for it
    /// is what sends the `100 Continue` a client may wait for, so that waits until someone
    /// reads (or may read, past the response).
    wanted: bool,
    /// An HTTP/1.1 request that leaves its connection open: it can be kept after a body
    /// nobody reads only if the rest of it is read off the wire. (Over HTTP/2 the body is
    /// simply dropped; a connection that closes after this request anyway needs no
    /// drain.)
    keep_alive: bool,
    /// `seen` when the reader dropped the body before its end: what comes after is
    /// drained, up to `DRAIN_LIMIT`.
    dropped_at: Option<u64>,
    /// Whether the last poll found the channel full: the pump waits on its reader, not
    /// on the client.
    waits_for_room: bool,
}

/// How much of an HTTP/1 request body nobody reads is drained to keep its connection
/// (Go's `net/http` drains 256 KiB too). The bytes are dropped as they come; past this,
/// the connection is closed instead, with `Connection: close` if the response is not
/// out yet.
const DRAIN_LIMIT: u64 = 256 * 1024;

pub(super) enum PumpPoll {
    Pending,
    Done,
    TooLarge,
    /// The reader dropped the body, and draining the rest would take more than
    /// `DRAIN_LIMIT` (or a `100 Continue` the client still waits for): the body is given
    /// up, and the connection cannot be kept.
    GaveUp,
}

/// A pump dropped while its reader still waits for the body was given up with its
/// request: the client left (an HTTP/2 reset, a closed connection), or a deadline or
/// shutdown of the server's or the host's cut it off. The reader's next read fails as
/// by the client, so that a handler's `?` on it is not taken for a server error.
impl<B> Drop for Pump<B> {
    fn drop(&mut self) {
        self.cut_off_reader();
    }
}

impl<B> Pump<B> {
    /// Fails the reader's next read: the request was given up before its body ended.
    fn cut_off_reader(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.fail_by_client(
                io::ErrorKind::ConnectionAborted,
                "the request was given up before its body was read to the end (client left, \
                 or a deadline or shutdown)",
            );
        }
    }
}

impl<B> Pump<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(
        body: B,
        tx: Sender,
        limit: u64,
        declared: Option<u64>,
        expects_continue: bool,
        keep_alive: bool,
    ) -> Self {
        Pump {
            body: Box::pin(body),
            tx: Some(tx),
            seen: 0,
            limit,
            declared,
            expects_continue,
            received: false,
            wanted: !expects_continue,
            keep_alive,
            dropped_at: None,
            waits_for_room: false,
        }
    }

    /// Whether the client still waits for `100 Continue` and someone may read the body.
    pub(super) fn awaits_continue(&self) -> bool {
        self.expects_continue
            && !self.received
            && self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Lets the body be fetched before anyone has asked for it: the response is ready and
    /// the body lives on in it (an echo) or in another thread, and the `100 Continue` has
    /// to go out before the response head or never.
    pub(super) fn want(&mut self) {
        self.wanted = true;
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> PumpPoll {
        if self.dropped_at.is_some() {
            return self.poll_drain(cx);
        }
        let Some(tx) = &self.tx else {
            return PumpPoll::Done;
        };
        loop {
            // Backpressure: take the next frame only when the channel has room for it.
            let ready = tx.poll_ready(cx);
            self.waits_for_room = ready.is_pending();
            match ready {
                Poll::Pending => return PumpPoll::Pending,
                Poll::Ready(Err(_)) => return self.reader_dropped(cx),
                Poll::Ready(Ok(())) => {}
            }
            if !self.wanted {
                // A handler that answers without reading (a `401`, a `413` from the
                // declared length) leaves the client its body.
                if tx.poll_asked(cx).is_pending() {
                    return PumpPoll::Pending;
                }
                // Ready for a reader gone since `poll_ready` too: a fetch now would send
                // `100 Continue` for a body nobody reads.
                if tx.is_closed() {
                    return self.reader_dropped(cx);
                }
                self.wanted = true;
            }
            let polled = self.body.as_mut().poll_frame(cx);
            self.received |= polled.is_ready();
            match polled {
                Poll::Pending => return PumpPoll::Pending,
                Poll::Ready(None) => {
                    self.end();
                    return PumpPoll::Done;
                }
                Poll::Ready(Some(Err(err))) => {
                    let err: BoxError = err.into();
                    if err.is::<http_body_util::LengthLimitError>() {
                        // A limit in front of the service (tower-http's
                        // `RequestBodyLimitLayer` on a chunked body): the same `413` as
                        // past our own, reported where it was met.
                        self.limit = self.seen;
                        if let Some(tx) = self.tx.take() {
                            tx.fail_by_client(io::ErrorKind::InvalidData, err.to_string());
                        }
                        return PumpPoll::TooLarge;
                    }
                    tracing::debug!(error = %err, "request body failed while streaming");
                    if let Some(tx) = self.tx.take() {
                        tx.fail_by_client(io::ErrorKind::ConnectionAborted, err.to_string());
                    }
                    return PumpPoll::Done;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not passed on: a sync reader has nowhere to put them.
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    let n = data.remaining();
                    self.seen += n as u64;
                    if self.seen > self.limit {
                        if let Some(tx) = self.tx.take() {
                            tx.fail_by_client(
                                io::ErrorKind::InvalidData,
                                format!("request body exceeds the limit of {} bytes", self.limit),
                            );
                        }
                        return PumpPoll::TooLarge;
                    }
                    if n > 0 {
                        tx.send_ready(data.copy_to_bytes(n));
                    }
                    // The last frame may come without its end: hyper's HTTP/1 body under
                    // a `Content-Length` whose response is already out (the handler left
                    // the body to a thread of its own) ends only when the next request
                    // head comes. The body says it is done; that is the end.
                    if self.body.is_end_stream() {
                        self.end();
                        return PumpPoll::Done;
                    }
                }
            }
        }
    }

    /// The reader dropped the body before its end. Over HTTP/2 the body is dropped too
    /// (hyper resets its stream; the connection stays), and so it is when the connection
    /// closes after this request anyway. Over a kept HTTP/1 connection the rest has to
    /// come off the wire for the connection to be kept: it is drained, within bounds.
    fn reader_dropped(&mut self, cx: &mut Context<'_>) -> PumpPoll {
        self.tx = None;
        if !self.keep_alive {
            return PumpPoll::Done;
        }
        if self.expects_continue && !self.received {
            // Reading on would send the client its `100 Continue` for a body nobody
            // wants.
            return PumpPoll::GaveUp;
        }
        self.dropped_at = Some(self.seen);
        self.poll_drain(cx)
    }

    /// Reads the rest of a body nobody reads and drops it, up to `DRAIN_LIMIT`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> PumpPoll {
        let dropped_at = self.dropped_at.unwrap_or(self.seen);
        loop {
            if self.body.is_end_stream() {
                return PumpPoll::Done;
            }
            match self.body.as_mut().poll_frame(cx) {
                Poll::Pending => return PumpPoll::Pending,
                // A broken body: hyper closes the connection itself.
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => return PumpPoll::Done,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.seen += data.remaining() as u64;
                    }
                    if self.seen - dropped_at > DRAIN_LIMIT {
                        return PumpPoll::GaveUp;
                    }
                }
            }
        }
    }

    /// The response is ready while the body has not ended. If the handler (or whatever
    /// it handed the body to) still reads it, the pump goes on in a task of its own; a
    /// body nobody reads is drained the same way when its declared rest fits in
    /// `DRAIN_LIMIT`, on the bundled server only (`activity`): its watchdog closes a
    /// connection whose drain stalls, counting from the response (a drain is not
    /// activity). A chunked body's rest is unknown: not drained.
    /// `reader_left`: no handler will read it (the request was withdrawn from the
    /// queue); `may_drain`: the connection may be kept (the response does not close it).
    /// Returns whether the connection can be kept; if not, the body is dropped and the
    /// response should say `Connection: close`.
    pub(super) fn settle(
        mut self,
        activity: Option<Arc<Activity>>,
        reader_left: bool,
        may_drain: bool,
    ) -> bool {
        if self.tx.is_none() && self.dropped_at.is_none() {
            // It ended (or broke, and hyper closes the connection itself).
            return true;
        }
        let reading = !reader_left
            && self.dropped_at.is_none()
            && self.tx.as_ref().is_some_and(|tx| !tx.is_closed());
        if reading {
            self.continue_detached(activity);
            return true;
        }
        if !self.keep_alive {
            return true;
        }
        if !may_drain || activity.is_none() || (self.expects_continue && !self.received) {
            return false;
        }
        // A handler still reading (its handler timeout passed) learns why its read fails.
        self.cut_off_reader();
        let dropped_at = *self.dropped_at.get_or_insert(self.seen);
        match self.declared {
            Some(declared) if declared.saturating_sub(dropped_at) <= DRAIN_LIMIT => {
                self.continue_detached(activity);
                true
            }
            // Too much left, or no telling how much (chunked).
            _ => false,
        }
    }

    /// The body ended: the reader gets its EOF, or an error if it ended short.
    fn end(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        match self.declared {
            // hyper's HTTP/1 checks this itself; an HTTP/2 stream reset with NO_ERROR,
            // or another service's body, may not.
            Some(declared) if self.seen < declared => tx.fail_by_client(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "request body ended after {} of its {declared} declared bytes",
                    self.seen
                ),
            ),
            _ => tx.finish(),
        }
    }

    /// The response is out but the handler kept the request body (an echo, or a body
    /// moved into the response stream or to a thread of its own): keep feeding it from
    /// a task of its own. Or nobody reads it, and its rest is drained there.
    ///
    /// The response no longer counts as in flight once it is out, but the connection is
    /// still busy with this body: each time it moves to its reader, `activity` (the
    /// bundled server's) is told, so the connection's idle timeouts count from the
    /// body's last move, not from the response. While the channel is full the pump
    /// waits on the reader, not on the client, and the connection counts as busy, as
    /// while a handler runs: a reader slower than the client is not the client's
    /// idleness (the pump is woken only when the reader has taken half the channel).
    pub(super) fn continue_detached(mut self, activity: Option<Arc<Activity>>) {
        let feeding = self.tx.as_ref().is_some_and(|tx| !tx.is_closed());
        if !feeding && self.dropped_at.is_none() {
            return;
        }
        let mut busy = None;
        // What the connection reads meanwhile is this body, not the next request's head.
        let after = activity.as_ref().map(|a| a.body_after_response());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(std::future::poll_fn(move |cx| {
                    let _after = &after;
                    let polled = self.poll(cx);
                    // Feeding a reader is the connection's work; a drain is not, so that
                    // a client trickling a body nobody reads is cut off in time.
                    if let (Some(activity), None) = (&activity, self.dropped_at) {
                        activity.body_moved();
                        let waits_on_reader =
                            self.waits_for_room && matches!(polled, PumpPoll::Pending);
                        if waits_on_reader != busy.is_some() {
                            busy = waits_on_reader.then(|| activity.busy());
                        }
                    } else {
                        busy = None;
                    }
                    match polled {
                        PumpPoll::Pending => Poll::Pending,
                        PumpPoll::Done | PumpPoll::TooLarge | PumpPoll::GaveUp => Poll::Ready(()),
                    }
                }));
            }
            Err(_) => tracing::warn!(
                "request body still being read after the response, but no runtime to feed it"
            ),
        }
    }
}
