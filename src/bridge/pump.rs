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
}

pub(super) enum PumpPoll {
    Pending,
    Done,
    TooLarge,
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
    ) -> Self {
        Pump {
            body: Box::pin(body),
            tx: Some(tx),
            seen: 0,
            limit,
            declared,
            expects_continue,
            received: false,
        }
    }

    /// Whether the client still waits for `100 Continue` and someone may read the body.
    pub(super) fn awaits_continue(&self) -> bool {
        self.expects_continue
            && !self.received
            && self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> PumpPoll {
        let Some(tx) = &self.tx else {
            return PumpPoll::Done;
        };
        loop {
            // Backpressure: take the next frame only when the channel has room for it.
            match tx.poll_ready(cx) {
                Poll::Pending => return PumpPoll::Pending,
                Poll::Ready(Err(_)) => return PumpPoll::Done, // the handler dropped the body
                Poll::Ready(Ok(())) => {}
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
    /// a task of its own.
    ///
    /// The response no longer counts as in flight once it is out, but the connection is
    /// still busy with this body: each time it moves, `activity` (the bundled server's)
    /// is told, so the connection's idle timeouts count from the body's last move, not
    /// from the response.
    pub(super) fn continue_detached(mut self, activity: Option<Arc<Activity>>) {
        let Some(tx) = &self.tx else { return };
        if tx.is_closed() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(std::future::poll_fn(move |cx| {
                    let polled = self.poll(cx);
                    if let Some(activity) = &activity {
                        activity.touch();
                    }
                    match polled {
                        PumpPoll::Pending => Poll::Pending,
                        PumpPoll::Done | PumpPoll::TooLarge => Poll::Ready(()),
                    }
                }));
            }
            Err(_) => tracing::warn!(
                "request body still being read after the response, but no runtime to feed it"
            ),
        }
    }
}
