//! The future a [`SyncService`](super::SyncService) call returns: it pumps the request
//! body to the handler thread and waits for the response head.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, StatusCode};
use http_body::Body as HttpBody;
use tokio::time::Sleep;

use super::pump::{Pump, PumpPoll};
use super::reply::{Reply, ReplyCell};
use super::BoxError;
use crate::body::channel::{HeadCall, Unsent};
use crate::body::{BridgeBody, Completion};
use crate::metrics::Refused;
use crate::pool::{BlockingPool, JobId};
use crate::throttle::Throttle;
use crate::timer::TimersKnown;

/// The future returned by [`SyncService`](super::SyncService)'s `call`.
///
/// While it waits for the response head it also feeds the request body to the handler
/// thread, a few chunks ahead of the handler's reads. Dropping it (the client went away)
/// withdraws a request that has not started, and drops the response of one that has,
/// which stops its body producer.
///
/// Poll it inside the tokio runtime whose `call` made it, as hyper and axum do: a queued
/// request's wait is timed by that runtime's timer.
#[must_use = "futures do nothing unless polled"]
pub struct SyncServiceFuture<B> {
    state: State<B>,
    completion: Option<Completion>,
    /// For an HTTP/1.0 request: whether it asked to keep its connection.
    http10: Option<bool>,
}

// `Ready` (an early 413/503) is rare and short-lived; boxing it would cost the common
// path nothing but cost the rare one an allocation, so the size difference stays.
#[allow(clippy::large_enum_variant)]
enum State<B> {
    Ready(Option<http::Response<BridgeBody>>),
    Waiting(Waiting<B>),
    Done,
}

struct Waiting<B> {
    /// The request's job, seen as the cell its reply comes back in.
    cell: Arc<dyn Reply>,
    /// A streamed response whose head waits for its first bytes.
    held: Option<Held>,
    pump: Option<Pump<B>>,
    queue_deadline: Option<Pin<Box<Sleep>>>,
    /// The handler timeout's end (`SyncServiceBuilder::handler_timeout`), if it has one.
    handler_deadline: Option<Pin<Box<Sleep>>>,
    /// The pool a queued request waits in, to take it out again if it is given up.
    queued_in: Option<BlockingPool>,
    retry_after: HeaderValue,
    /// The handler dropped an HTTP/1 body with more of it to come than the pump drains:
    /// the connection closes after the response.
    body_given_up: bool,
}

/// A streamed response whose head is held back until its first bytes, its end, or the
/// end of its grace (`SyncServiceBuilder::head_grace`), so that a producer failing
/// before its first bytes is answered `500` in its place (or as the client's failure it
/// met in the request body, `408`, `400`). The request body's pump runs on meanwhile:
/// an echo's producer reads it before it writes.
struct Held {
    response: http::Response<BridgeBody>,
    grace: Pin<Box<Sleep>>,
}

impl<B> Waiting<B> {
    /// Whether the handler timeout has passed with no response from the handler, and
    /// how the request was given up then (`answer_late` answers it). A response that
    /// came just in time is taken on the next poll (woken here).
    fn poll_handler_deadline(&mut self, cx: &mut Context<'_>) -> Option<Deadline> {
        let deadline = self.handler_deadline.as_mut()?;
        if deadline.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.handler_deadline = None;
        // Either no worker will take it, or the one that took it finds nobody waiting
        // for its answer: each is settled in the cell, so a worker claiming the request
        // meanwhile cannot slip between the two.
        if self.withdraw() {
            return Some(Deadline::HandlerWhileQueued);
        }
        if self.cell.cell().time_out() {
            return Some(Deadline::Handler);
        }
        cx.waker().wake_by_ref();
        None
    }

    /// Gives up the request unless a thread has claimed it, and frees its place in the
    /// queue. Returns whether it was given up (no handler runs for it).
    fn withdraw(&self) -> bool {
        let cell = self.cell.cell();
        if !cell.cancel() {
            return false;
        }
        if let Some(pool) = &self.queued_in {
            // The cell lives in the job's own allocation: it names the job.
            pool.withdraw(JobId::of(&self.cell));
        }
        true
    }
}

/// The deadline that ended a request's wait for its handler's answer (`answer_late`).
#[derive(Clone, Copy)]
enum Deadline {
    /// The queue timeout: taken out of the queue, no handler ran.
    Queue,
    /// The handler timeout, still queued: taken out of the queue, no handler ran.
    HandlerWhileQueued,
    /// The handler timeout: its handler runs on, and its answer will be dropped.
    Handler,
}

/// A streamed response just delivered: `Some` if its head goes now (not held, or its
/// first bytes or end are there already, or there is no timer for a grace), else held in
/// `held` with its grace running. Out of line: full responses never come here.
#[cold]
#[inline(never)]
fn hold(
    reply: &dyn Reply,
    held: &mut Option<Held>,
    response: http::Response<BridgeBody>,
    cx: &mut Context<'_>,
) -> Option<http::Response<BridgeBody>> {
    if let Poll::Ready(call) = response.body().poll_head(cx) {
        return Some(head_answer(reply, response, call));
    }
    let (grace, timers) = reply.head_grace();
    // Polled outside any runtime (against the future's docs), it goes without a grace
    // rather than log an error for every streamed response.
    let runtime = tokio::runtime::Handle::try_current().is_ok();
    let Some(grace) = runtime
        .then(|| crate::timer::sleep(grace, Some(timers)))
        .flatten()
    else {
        // No timer, no grace: the head goes now.
        let call = response.body().let_head_go();
        return Some(head_answer(reply, response, call));
    };
    *held = Some(Held { response, grace });
    // Polled once now, so that the grace's end and the producer's first chunk wake us.
    poll_held(reply, held, cx)
}

/// The held response once its head may go out: its first bytes or its end are there,
/// or its grace is over. A producer that failed before then has its failure answered
/// instead (`head_answer`): its thread logged a failure of its own, and
/// `client_fault` logs a failure of the client's as it answers it.
#[inline(never)]
fn poll_held(
    reply: &dyn Reply,
    held: &mut Option<Held>,
    cx: &mut Context<'_>,
) -> Option<http::Response<BridgeBody>> {
    let holding = held.as_mut()?;
    let call = if holding.grace.as_mut().poll(cx).is_ready() {
        holding.response.body().let_head_go()
    } else {
        match holding.response.body().poll_head(cx) {
            Poll::Ready(call) => call,
            Poll::Pending => return None,
        }
    };
    held.take()
        .map(|held| head_answer(reply, held.response, call))
}

/// The response whose head was let go, or the answer to its producer's failure in its
/// place: `500`, or the client's fault's own.
fn head_answer(
    reply: &dyn Reply,
    response: http::Response<BridgeBody>,
    call: HeadCall,
) -> http::Response<BridgeBody> {
    match call {
        HeadCall::Send => response,
        HeadCall::FailedInstead(Unsent::ProducerFailed) => internal_server_error(),
        HeadCall::FailedInstead(Unsent::ByClient(kind)) => reply.client_fault(kind),
        HeadCall::FailedInstead(Unsent::Expired) => gateway_timeout(),
    }
}

impl<B> Waiting<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Settles a request body that has not ended as its response goes out (see
    /// `Pump::settle`); if the connection cannot be kept, the response says so, so that
    /// an HTTP/1 client does not send its next request on a connection about to close.
    /// `reader_left`: the request was withdrawn, no handler reads its body.
    fn settle_body(
        &mut self,
        response: &mut http::Response<BridgeBody>,
        completion: Option<&Completion>,
        reader_left: bool,
    ) {
        let Some(pump) = self.pump.take() else {
            if self.body_given_up {
                super::close_after(response);
            }
            return;
        };
        // hyper closes after such a response anyway: nothing to drain for.
        let closing = super::asks_close(response.headers());
        // Only a request with a body still coming pays for the `Arc` clone.
        let activity = completion.and_then(|c| c.activity.clone());
        let keep = pump.settle(activity, reader_left, !closing) && !self.body_given_up;
        if !keep && !closing {
            if let Some(c) = completion {
                tracing::debug!(
                    method = %c.method(), path = %c.path(),
                    "request body left unread, too much of it to drain; the connection \
                     closes after the response"
                );
            }
            super::close_after(response);
        }
    }
}

impl<B> SyncServiceFuture<B> {
    pub(super) fn ready(response: http::Response<BridgeBody>, completion: Completion) -> Self {
        SyncServiceFuture {
            state: State::Ready(Some(response)),
            completion: Some(completion),
            http10: None,
        }
    }

    /// `queued_in` is the pool when the request waits in its queue (no thread yet);
    /// `timers` caches whether the runtime has a timer to bound that wait with.
    pub(super) fn waiting(
        cell: Arc<dyn Reply>,
        pump: Option<Pump<B>>,
        queued_in: Option<BlockingPool>,
        retry_after: HeaderValue,
        completion: Completion,
        handler_timeout: Option<Duration>,
        timers: &TimersKnown,
    ) -> Self
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // Only queued requests pay for a timer: the fast path has a thread already.
        let queue_deadline = queued_in
            .as_ref()
            .and_then(|pool| crate::timer::sleep(pool.queue_timeout(), Some(timers)));
        let handler_deadline = handler_timeout.and_then(|timeout| {
            if tokio::runtime::Handle::try_current().is_err() {
                // Called outside any runtime (against the service's docs): no timer.
                static NO_RUNTIME: Throttle = Throttle::new();
                if let Some(left_out) = NO_RUNTIME.admit() {
                    tracing::error!(
                        left_out,
                        "a SyncService with a handler timeout was called outside any tokio \
                         runtime; no handler timeout applies"
                    );
                }
                return None;
            }
            crate::timer::sleep(timeout, Some(timers))
        });
        let mut waiting = Waiting {
            cell,
            held: None,
            pump,
            queue_deadline,
            handler_deadline,
            queued_in,
            retry_after,
            body_given_up: false,
        };
        if waiting.queued_in.is_some() && waiting.queue_deadline.is_none() && waiting.withdraw() {
            // No timer to bound the wait with: refuse now rather than wait unbounded.
            crate::metrics::refused(Refused::NoTimer);
            static NO_TIMER: Throttle = Throttle::new();
            if let Some(left_out) = NO_TIMER.admit() {
                tracing::warn!(
                    method = %completion.method(), path = %completion.path(), left_out,
                    "no handler thread free and no timer to bound a wait; answered 503"
                );
            }
            let mut response = overloaded(waiting.retry_after.clone());
            waiting.settle_body(&mut response, Some(&completion), true);
            return Self::ready(response, completion);
        }
        SyncServiceFuture {
            state: State::Waiting(waiting),
            completion: Some(completion),
            http10: None,
        }
    }

    /// A deadline passed with no response, and the request was given up: `503` for one
    /// taken out of the queue (no handler will run), `504` for one whose handler runs on
    /// past the handler timeout (`Waiting::poll_handler_deadline`).
    #[cold]
    fn answer_late(&mut self, deadline: Deadline) -> http::Response<BridgeBody>
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let State::Waiting(waiting) = &mut self.state else {
            unreachable!("only a waiting request has a deadline")
        };
        let completion = self.completion.as_ref();
        let mut response = match deadline {
            Deadline::Handler => {
                crate::metrics::handler_timed_out();
                gateway_timeout()
            }
            Deadline::Queue | Deadline::HandlerWhileQueued => {
                crate::metrics::refused(Refused::QueueTimeout);
                overloaded(waiting.retry_after.clone())
            }
        };
        // Nobody reads the body, or a handler past its timeout is cut off from it (the
        // pump is dropped, or drains what is left for the connection's sake).
        waiting.settle_body(&mut response, completion, true);
        // Throttled apart: a stuck dependency times out every request that reaches it,
        // and a pool it fills times out the ones queued behind.
        static QUEUE_TIMEOUT: Throttle = Throttle::new();
        static QUEUED_AT_HANDLER_TIMEOUT: Throttle = Throttle::new();
        static HANDLER_TIMEOUT: Throttle = Throttle::new();
        let throttle = match deadline {
            Deadline::Queue => &QUEUE_TIMEOUT,
            Deadline::HandlerWhileQueued => &QUEUED_AT_HANDLER_TIMEOUT,
            Deadline::Handler => &HANDLER_TIMEOUT,
        };
        if let Some((c, left_out)) = completion.zip(throttle.admit()) {
            let (method, path) = (c.method(), c.path());
            let waited_ms = c.start.elapsed().as_millis() as u64;
            match deadline {
                Deadline::Queue => tracing::warn!(
                    method = %method, path = %path, left_out, waited_ms,
                    "request timed out waiting for a handler thread; answered 503"
                ),
                Deadline::HandlerWhileQueued => tracing::warn!(
                    method = %method, path = %path, waited_ms, left_out,
                    "request reached the handler timeout waiting for a handler thread; \
                     answered 503"
                ),
                Deadline::Handler => tracing::warn!(
                    method = %method, path = %path, waited_ms, left_out,
                    "handler did not answer within the handler timeout; answered 504 (its \
                     thread stays busy until the handler returns)"
                ),
            }
        }
        self.finish(response)
    }

    /// Marks the answer as one to an HTTP/1.0 request; `keep_alive`: it asked to keep its
    /// connection.
    pub(super) fn answers_http10(&mut self, keep_alive: bool) {
        self.http10 = Some(keep_alive);
    }

    fn finish(&mut self, mut response: http::Response<BridgeBody>) -> http::Response<BridgeBody> {
        self.state = State::Done;
        if let Some(keep_alive) = self.http10 {
            super::answer::for_http10(&mut response, keep_alive);
        }
        if let Some(mut completion) = self.completion.take() {
            completion.status = response.status();
            // A full body is known to be complete once hyper has taken it; a streamed one
            // is complete at `Content-Length` bytes, where hyper stops polling it.
            if !response.body().is_full() {
                completion.expected = super::declared_length(response.headers());
            } else if *completion.method() == http::Method::HEAD {
                // The handler's full answers and the ones made here (503, 413, 431, 500)
                // alike; a streamed one was dropped unrun in the job.
                super::answer::head_without_body(&mut response);
            }
            response.body_mut().set_completion(completion);
        }
        response
    }
}

impl<B> Future for SyncServiceFuture<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<BridgeBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let waiting = match &mut this.state {
            State::Ready(response) => {
                let response = response.take().expect("polled after completion");
                return Poll::Ready(Ok(this.finish(response)));
            }
            State::Waiting(waiting) => waiting,
            State::Done => panic!("SyncServiceFuture polled after completion"),
        };

        let cell: &ReplyCell = waiting.cell.cell();
        loop {
            // The body is read only once a handler runs: a queued request leaves it to TCP
            // (no memory held for it; over HTTP/2, h2 holds what the stream's window let
            // the client send ahead, 256 KiB at most on the bundled server), and
            // `Expect: 100-continue` is answered only once the handler reads (the pump
            // waits for that).
            // The worker wakes this future when it claims a request with a body.
            let claimed = cell.was_claimed();
            if let (true, Some(pump)) = (claimed, &mut waiting.pump) {
                match pump.poll(cx) {
                    PumpPoll::Pending => {}
                    PumpPoll::Done => waiting.pump = None,
                    PumpPoll::GaveUp => {
                        waiting.pump = None;
                        waiting.body_given_up = true;
                    }
                    PumpPoll::TooLarge => {
                        let limit = pump.limit;
                        waiting.pump = None;
                        cell.abandon();
                        static GREW_TOO_LARGE: Throttle = Throttle::new();
                        if let Some((c, left_out)) =
                            this.completion.as_ref().zip(GREW_TOO_LARGE.admit())
                        {
                            tracing::warn!(
                                method = %c.method(), path = %c.path(), limit, left_out,
                                "request body grew past the limit; answered 413"
                            );
                        }
                        return Poll::Ready(Ok(this.finish(payload_too_large())));
                    }
                }
            }

            // A full response goes out at once; a streamed one's head may be held for its
            // first bytes (`hold`).
            let answer = if waiting.held.is_none() {
                match cell.poll_response(cx) {
                    Poll::Ready(response) if response.body().is_full() => Some(response),
                    Poll::Ready(response) => hold(&*waiting.cell, &mut waiting.held, response, cx),
                    Poll::Pending => None,
                }
            } else {
                poll_held(&*waiting.cell, &mut waiting.held, cx)
            };
            if let Some(mut response) = answer {
                if let Some(pump) = waiting.pump.as_mut().filter(|p| p.awaits_continue()) {
                    pump.want();
                    match pump.poll(cx) {
                        PumpPoll::Pending => {
                            // hyper sends `100 Continue` only before the response head,
                            // at its first turn after the body is asked for, and the
                            // handler's answer may come in the very turn the pump first
                            // asked (an echo answers at once): the head waits one turn,
                            // so the 100 goes first.
                            waiting.settle_body(&mut response, this.completion.as_ref(), false);
                            this.state = State::Ready(Some(response));
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        PumpPoll::Done => waiting.pump = None,
                        // Not read to its end: the connection cannot be kept.
                        PumpPoll::GaveUp | PumpPoll::TooLarge => {
                            waiting.pump = None;
                            waiting.body_given_up = true;
                        }
                    }
                }
                waiting.settle_body(&mut response, this.completion.as_ref(), false);
                return Poll::Ready(Ok(this.finish(response)));
            }
            // Claimed between the check above and the waker's registration: the worker's
            // wake may have found no waker, so pump now rather than wait for it.
            if !claimed && waiting.pump.is_some() && cell.was_claimed() {
                continue;
            }
            break;
        }

        if let Some(deadline) = &mut waiting.queue_deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                waiting.queue_deadline = None;
                if waiting.withdraw() {
                    return Poll::Ready(Ok(this.answer_late(Deadline::Queue)));
                }
                // A worker claimed it just in time: wait for its answer.
            }
        }
        // Once the response is there (its head held), the handler has answered in time.
        if waiting.held.is_none() && waiting.handler_deadline.is_some() {
            if let Some(deadline) = waiting.poll_handler_deadline(cx) {
                return Poll::Ready(Ok(this.answer_late(deadline)));
            }
        }
        Poll::Pending
    }
}

impl<B> Drop for SyncServiceFuture<B> {
    fn drop(&mut self) {
        if let (State::Ready(Some(_)), Some(c)) = (&self.state, &mut self.completion) {
            // An answer made at admission (a `503`, `413`, `431`, logged as it was made),
            // or the handler's own, parked for one poll while `100 Continue` goes out:
            // dropped before it was polled, it never went out, so its access line (and
            // its count) must not say the `200` the completion starts with.
            c.status = if c.activity.as_ref().is_some_and(|a| a.is_cut_off()) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            };
            return;
        }
        if let State::Waiting(waiting) = &self.state {
            let withdrawn = waiting.withdraw();
            let cell = waiting.cell.cell();
            // Before the pump's own drop fails the body: a handler that meets the failed
            // read then knows its answer goes nowhere.
            cell.abandon();
            if let Some(c) = &mut self.completion {
                if c.activity.as_ref().is_some_and(|a| a.is_cut_off()) {
                    // The server's doing, logged as the completion drops (as is a response
                    // cut off mid-body). The access line's status says the server gave up.
                    c.status = StatusCode::SERVICE_UNAVAILABLE;
                } else {
                    // nginx's code for a client that closed the request.
                    c.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
                    // Any client can make these as fast as it connects: throttled (the
                    // access log still has each).
                    static ABANDONED: Throttle = Throttle::new();
                    if let Some(left_out) = ABANDONED.admit() {
                        // Embedded, in the host's request span, as the access line is.
                        let _host_span = c.activity.is_none().then(|| c.line.span().enter());
                        let handler_ran = !withdrawn && cell.was_claimed();
                        tracing::info!(
                            method = %c.method(), path = %c.path(), handler_ran, left_out,
                            "request abandoned before its response (the client left, or a \
                             layer or host in front gave up on it)"
                        );
                    }
                }
            }
        }
    }
}

impl<B> fmt::Debug for SyncServiceFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Waiting(_) => "waiting",
            State::Done => "done",
        };
        f.debug_struct("SyncServiceFuture")
            .field("state", &state)
            .finish()
    }
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> http::Response<BridgeBody> {
    let mut response =
        http::Response::new(BridgeBody::full(bytes::Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(super) fn overloaded(retry_after: HeaderValue) -> http::Response<BridgeBody> {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable: the server is busy, retry later",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after);
    response
}

/// What a request gets when its handler has not answered within the handler timeout.
pub(super) fn gateway_timeout() -> http::Response<BridgeBody> {
    plain(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway Timeout: the handler did not answer in time",
    )
}

/// What a claimed request gets when its job unwinds before answering.
pub(super) fn internal_server_error() -> http::Response<BridgeBody> {
    plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

pub(super) fn header_too_large() -> http::Response<BridgeBody> {
    plain(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "Request Header Fields Too Large",
    )
}

pub(super) fn uri_too_long() -> http::Response<BridgeBody> {
    plain(StatusCode::URI_TOO_LONG, "URI Too Long")
}

pub(super) fn payload_too_large() -> http::Response<BridgeBody> {
    let mut response = plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
    // The rest of the body is not read: the connection cannot be reused.
    super::close_after(&mut response);
    response
}
