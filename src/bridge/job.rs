//! What a pool thread does with one request: run the handler, catch what goes wrong,
//! hand the head back, then produce a streamed body on the same thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Uri};

use super::answer;
use super::reply::{GivenUp, Reply, ReplyCell};
use super::{Activity, MakeSpan, Shared};
use crate::body::{
    channel, produce, BridgeBody, FaultProbe, Produced, RequestLine, ResponseKind, BYTES_IN_FLIGHT,
};
use crate::context::{self, Context};
use crate::error::{panic_message, Chain};
use crate::handler::{internal_error, Handler, HandlerError, Request};
use crate::metrics::HandlerFailure;
use crate::pool::SharedJob;
use crate::throttle::Throttle;
use crate::timer::TimersKnown;

/// A wait for a thread longer than this is logged at debug level, shorter ones at trace.
const QUEUE_WAIT_WORTH_LOGGING: Duration = Duration::from_millis(1);

/// One request on its way through the pool: what the worker runs and the cell its reply
/// comes back in, in one allocation that the service future shares.
pub(super) struct RequestJob<H> {
    cell: ReplyCell,
    shared: Arc<Shared<H>>,
    /// What the handler and its producer reach through `crate::context`.
    context: Option<Arc<Context>>,
    /// For log lines, here and in the access log, once the request is the handler's.
    method: Method,
    uri: Uri,
    /// Taken by the worker; a `Mutex` nobody else touches, so it is never contended.
    request: Mutex<Option<Request>>,
    /// Tells whether the handler's reads of the request body met the client's failure
    /// (streamed bodies).
    body_fault: Option<FaultProbe>,
    /// The connection, when the bundled server watches the socket a streamed response
    /// goes to (HTTP/1): the producer then leaves the client's stalls to it
    /// (`server::conn`), which sees what the client takes where the body channel sees
    /// only hyper's writes; and a stream timeout's abort closes it at once.
    watched: Option<Arc<Activity>>,
    submitted_at: Instant,
    /// The span current where the request was handed in (a host's request span, such as
    /// tower-http's `TraceLayer`'s), entered on the handler thread: the handler's own
    /// events, its producer's, and the crate's lines about them carry it, as they would
    /// in an async handler.
    span: tracing::Span,
}

impl<H> RequestJob<H> {
    // Always inlined into `admit`, its one caller: built there, the job is moved once
    // less on its way into its `Arc` (docs/benchmarks.md, step 11).
    #[inline(always)]
    pub(super) fn new(
        shared: Arc<Shared<H>>,
        context: Option<Arc<Context>>,
        request: Request,
        body_fault: Option<FaultProbe>,
        watched: Option<Arc<Activity>>,
        submitted_at: Instant,
    ) -> Self {
        RequestJob {
            cell: ReplyCell::new(),
            shared,
            context,
            method: request.method().clone(),
            uri: request.uri().clone(),
            request: Mutex::new(Some(request)),
            body_fault,
            watched,
            submitted_at,
            span: tracing::Span::current(),
        }
    }
}

impl<H: Handler> Reply for RequestJob<H> {
    fn cell(&self) -> &ReplyCell {
        &self.cell
    }

    fn head_grace(&self) -> (Duration, &TimersKnown) {
        (self.shared.head_grace, &self.shared.timers)
    }

    fn client_fault(&self, kind: std::io::ErrorKind) -> http::Response<BridgeBody> {
        let answer = answer::client_fault(
            kind,
            &self.method,
            &self.uri,
            self.shared.body_timeout,
            false,
        );
        // `client_fault`'s answers are full text bodies: `into_bytes` only takes them out.
        let (parts, body) = answer.into_parts();
        let bytes = body.into_bytes().unwrap_or_default();
        http::Response::from_parts(parts, BridgeBody::full(bytes))
    }
}

impl<H: Handler> RequestLine for RequestJob<H> {
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

impl<H: Handler> SharedJob for RequestJob<H> {
    fn run(self: Arc<Self>) {
        let request = self
            .request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(request) = request {
            self.run_handler(request);
        }
    }
}

impl<H: Handler> RequestJob<H> {
    fn run_handler(&self, mut request: Request) {
        let (shared, cell, method, uri) = (&*self.shared, &self.cell, &self.method, &self.uri);
        let streamed = request.body().is_streamed();
        if !cell.claim() {
            // Timed out in the queue or the client left: the future already answered.
            return;
        }
        // Held to the end of the job: the streamed body is produced in it too.
        let _in_span = self.span.enter();
        if streamed {
            // The future starts reading the body now that a handler will consume it.
            cell.wake_waiter();
        }
        // The request's own span (`Server::request_span`), made here rather than in
        // `admit`: the user's function stays off the runtime's thread, and requests
        // refused at admission never pay for it. After the wake-up above, so that it may
        // read the body; in the handler's context, so that it may do what a handler may.
        let request_span = shared.make_span.as_ref().and_then(|make| {
            context::enter(self.context.as_ref(), || {
                make_request_span(make, &mut request)
            })
        });
        let _in_request = request_span.as_ref().map(tracing::Span::enter);
        // From here on the future waits for this thread's answer with no timer of its own.
        // Should anything below unwind past the handler's own guard (a panicking `Display`
        // of its error, a panicking `Drop` of its body), the guard still answers 500.
        let mut answered = AnswerOnUnwind { cell, done: false };
        // The clock is read only when the wait can be logged at all.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let wait = self.submitted_at.elapsed();
            if wait >= QUEUE_WAIT_WORTH_LOGGING {
                tracing::debug!(
                    wait_us = wait.as_micros() as u64,
                    "request waited for a handler thread"
                );
            } else {
                tracing::trace!(
                    wait_us = wait.as_micros() as u64,
                    "request handed to a handler thread"
                );
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            context::enter(self.context.as_ref(), || shared.handler.call(request))
        }));
        let mut response = match outcome {
            Ok(response) => response,
            Err(payload) => {
                let panic = panic_message(payload);
                crate::metrics::handler_failed(HandlerFailure::Panic);
                // A panic is a bug to see whatever became of the request; the line says
                // whether the client got the `500`.
                match cell.given_up() {
                    GivenUp::No => tracing::error!(
                        method = %method, path = %uri.path(), panic = %panic,
                        "handler panicked; answered 500"
                    ),
                    GivenUp::TimedOut => tracing::error!(
                        method = %method, path = %uri.path(), panic = %panic,
                        "handler panicked after its request was answered 504 for the handler \
                         timeout"
                    ),
                    GivenUp::Abandoned => tracing::error!(
                        method = %method, path = %uri.path(), panic = %panic,
                        "handler panicked after its request was given up (its client left, \
                         or it was answered already)"
                    ),
                }
                internal_error()
            }
        };
        if let Some(kind) = self.body_fault.as_ref().and_then(FaultProbe::client_fault) {
            // Whatever the handler made of its failed read, the client is the cause.
            response =
                answer::client_fault(kind, method, uri, shared.body_timeout, cell.is_abandoned());
        } else if let Some(HandlerError(Some(err))) =
            response.extensions_mut().remove::<HandlerError>()
        {
            let given_up = cell.given_up();
            answer::handler_error(
                &mut response,
                &err,
                method,
                uri,
                &shared.retry_after,
                given_up,
            );
        }

        let (mut parts, body) = response.into_parts();
        match answer::framed(method, uri, &mut parts, body.kind) {
            ResponseKind::Full(bytes) => {
                // Nothing left to do here once the reply is out: let the pool count this
                // thread as free before the reply can trigger the next request.
                crate::pool::job_finishing();
                answered.done = true;
                let response = http::Response::from_parts(parts, BridgeBody::full(bytes));
                if !cell.complete(response) && cell.given_up() == GivenUp::TimedOut {
                    self.log_late();
                }
            }
            ResponseKind::Stream(producer) => {
                // Over HTTP/1, hyper takes a piece only once the socket has room, which
                // Linux reports only with 64 KiB or less unsent: a client reading tens of
                // KiB/s would look stalled to the channel. The connection's watch cuts
                // off a client that takes too little, and this producer with it.
                let stall_limit = self.watched.is_none().then_some(shared.body_timeout);
                let end_by = shared
                    .stream_timeout
                    .and_then(|timeout| self.submitted_at.checked_add(timeout));
                let (tx, rx) = channel::channel_until(BYTES_IN_FLIGHT, stall_limit, end_by);
                if !shared.head_grace.is_zero() {
                    // The service future holds the head back for the first bytes.
                    tx.hold_head();
                }
                let declared = super::declared_length(&parts.headers);
                let response = http::Response::from_parts(parts, BridgeBody::stream(rx));
                answered.done = true;
                if !cell.complete(response) {
                    if cell.given_up() == GivenUp::TimedOut {
                        self.log_late();
                    } else {
                        tracing::debug!(method = %method, path = %uri.path(), "client left before the response; body not produced");
                    }
                    return;
                }
                // The thread (and its pool slot) stays with the response until the body is
                // out, and so does the handler's context: a producer may `ensure_sync` or
                // spawn a task as the handler could.
                let produced = context::enter(self.context.as_ref(), || {
                    produce(producer, tx, declared, self.body_fault.as_ref())
                });
                if let Some(activity) = &self.watched {
                    if produced.aborted_for_the_stream_timeout() {
                        activity.abort_now();
                    }
                }
                log_produced(produced, method, uri, cell.is_abandoned());
            }
        }
    }
}

impl<H> RequestJob<H> {
    /// The handler returned after its request was answered `504` for the handler
    /// timeout: how long it took, for whoever looks into the slow dependency.
    #[cold]
    fn log_late(&self) {
        static LATE: Throttle = Throttle::new();
        if let Some(left_out) = LATE.admit() {
            tracing::warn!(
                method = %self.method, path = %self.uri.path(),
                took_ms = self.submitted_at.elapsed().as_millis() as u64, left_out,
                "handler returned after the handler timeout, its request answered 504 \
                 already; its response was dropped"
            );
        }
    }
}

/// `abandoned`: the service future gave the request up while the response's head was
/// held (it answered `413` in its place, or the client left); nothing of it went out.
fn log_produced(produced: Produced, method: &Method, uri: &Uri, abandoned: bool) {
    // The producer is the handler's code: its failure is the handler's, whatever became
    // of the response.
    match &produced {
        Produced::Failed { .. } => crate::metrics::handler_failed(HandlerFailure::Error),
        Produced::Panicked { .. } => crate::metrics::handler_failed(HandlerFailure::Panic),
        _ => {}
    }
    // Cut off (or answered `504`) by the stream timeout; not counted for a request given
    // up already, of which nothing went out.
    if let Produced::Expired { .. }
    | Produced::Panicked {
        expired: true,
        by_client: false,
        ..
    } = &produced
    {
        if !abandoned {
            crate::metrics::stream_timed_out();
        }
    }
    match produced {
        Produced::Complete(bytes) => {
            tracing::trace!(method = %method, path = %uri.path(), bytes, "response body produced")
        }
        Produced::Disconnected(bytes) => tracing::debug!(
            method = %method, path = %uri.path(), bytes,
            "client went away during the response body; producer stopped"
        ),
        // Nothing of the response went out: the future answers the client's failure in
        // its place (and logs that answer), or answered it already (a `413`), or the
        // client left.
        Produced::ByClient {
            bytes,
            err,
            replaced,
            ..
        } if replaced || abandoned => tracing::debug!(
            method = %method, path = %uri.path(), bytes, error = %Chain(&err),
            "request body failed before the response's head went out; producer stopped"
        ),
        // A stall costs a thread its body timeout: worth a warning. A broken connection
        // is everyday.
        Produced::ByClient { bytes, err, .. } if err.kind() == std::io::ErrorKind::TimedOut => {
            tracing::warn!(
                method = %method, path = %uri.path(), bytes, error = %Chain(&err),
                "client stalled during a streamed response; response aborted"
            )
        }
        Produced::ByClient { bytes, err, .. } => tracing::info!(
            method = %method, path = %uri.path(), bytes, error = %Chain(&err),
            "client's side failed during a streamed response; response aborted"
        ),
        Produced::Expired { bytes, .. } if abandoned => tracing::debug!(
            method = %method, path = %uri.path(), bytes,
            "stream timeout passed before the response's head went out, its request given \
             up already; producer stopped"
        ),
        Produced::Expired {
            bytes, replaced, ..
        } => {
            // Any slow client sets it off: throttled.
            static EXPIRED: Throttle = Throttle::new();
            if let Some(left_out) = EXPIRED.admit() {
                if replaced {
                    tracing::warn!(
                        method = %method, path = %uri.path(), left_out,
                        "streamed response had sent nothing by the stream timeout; \
                         answered 504 unless its client left"
                    );
                } else {
                    tracing::warn!(
                        method = %method, path = %uri.path(), bytes, left_out,
                        "streamed response went on past the stream timeout; response \
                         aborted, its thread free"
                    );
                }
            }
        }
        Produced::Failed {
            err,
            replaced: true,
        } => tracing::error!(
            method = %method, path = %uri.path(), error = %Chain(&err),
            "response body producer failed before its first bytes, its head held; the \
             request is answered 500 unless its client left"
        ),
        Produced::Failed { err, .. } if abandoned => tracing::error!(
            method = %method, path = %uri.path(), error = %Chain(&err),
            "response body producer failed before its head went out; its client had left"
        ),
        Produced::Failed { err, .. } => tracing::error!(
            method = %method, path = %uri.path(), error = %Chain(&err),
            "response body producer failed; response aborted"
        ),
        // A bug of the producer's whatever its cause: logged at error, as a handler's
        // panic is, even when the client's failure is what it is answered as.
        Produced::Panicked {
            msg,
            replaced: true,
            by_client: false,
            expired: true,
            ..
        } if !abandoned => tracing::error!(
            method = %method, path = %uri.path(), panic = %msg,
            "response body producer panicked on its write the stream timeout failed, \
             before its first bytes; the request is answered 504 unless its client left"
        ),
        Produced::Panicked {
            msg,
            by_client: false,
            expired: true,
            ..
        } if !abandoned => tracing::error!(
            method = %method, path = %uri.path(), panic = %msg,
            "response body producer panicked on its write the stream timeout failed; \
             response aborted"
        ),
        Produced::Panicked {
            msg,
            replaced: true,
            by_client: false,
            ..
        } => tracing::error!(
            method = %method, path = %uri.path(), panic = %msg,
            "response body producer panicked before its first bytes, its head held; the \
             request is answered 500 unless its client left"
        ),
        Produced::Panicked {
            msg,
            replaced: true,
            by_client: true,
            ..
        } => tracing::error!(
            method = %method, path = %uri.path(), panic = %msg,
            "response body producer panicked before its first bytes, after its request \
             body failed by the client's doing; the request is answered as that failure \
             unless its client left"
        ),
        Produced::Panicked { msg, .. } if abandoned => tracing::error!(
            method = %method, path = %uri.path(), panic = %msg,
            "response body producer panicked before its head went out; its client had left"
        ),
        Produced::Panicked { msg, .. } => tracing::error!(
            method = %method, path = %uri.path(), panic = %msg,
            "response body producer panicked; response aborted"
        ),
    }
}

/// Answers `500` for a claimed request if the job unwinds before it answered.
struct AnswerOnUnwind<'a> {
    cell: &'a ReplyCell,
    done: bool,
}

impl Drop for AnswerOnUnwind<'_> {
    fn drop(&mut self) {
        if !self.done {
            crate::metrics::handler_failed(HandlerFailure::Panic);
            tracing::error!("request job unwound before answering; answered 500");
            self.cell.complete(super::future::internal_server_error());
        }
    }
}

/// Makes `request`'s span with the server's `make`. A panic in it is logged and leaves
/// the request without a span of its own, served all the same: the function is the
/// server's setting, not the handler, and a request it fails on need not fail with it.
// Out of line: `run_handler` stays as it was for servers without the setting.
#[inline(never)]
fn make_request_span(make: &MakeSpan, request: &mut Request) -> Option<tracing::Span> {
    match catch_unwind(AssertUnwindSafe(|| (make.0)(request))) {
        Ok(span) => Some(span),
        Err(payload) => {
            // Let go of whether or not the line is written (`panic_message`).
            let panic = panic_message(payload);
            static PANICKED: Throttle = Throttle::new();
            if let Some(left_out) = PANICKED.admit() {
                tracing::error!(
                    method = %request.method(), path = %request.uri().path(),
                    %panic, left_out,
                    "the server's request_span function panicked; the request is served \
                     without its span"
                );
            }
            None
        }
    }
}
