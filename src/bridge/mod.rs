//! The bridge: a tower/hyper service that moves each request onto the blocking pool and
//! its response back.
//!
//! ```text
//! call(request) -> admission: pool.try_submit(job)       (full: 503 + Retry-After now)
//!   job on a pool thread:  handler(Request{head, Body: io::Read <- channel <- pump})
//!                          -> head through the ReplyCell; streamed body -> channel
//!   SyncServiceFuture:     pumps the request body, waits for the head (a streamed
//!                          one's for its first bytes, briefly), enforces the queue
//!                          timeout (503) and the body limit (413)
//! ```

mod activity;
mod answer;
mod conform;
mod future;
mod head;
mod job;
mod pump;
mod refused;
mod reply;

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use http::HeaderValue;

pub(crate) use activity::{Activity, CutOff, PartialHead};
pub use future::SyncServiceFuture;
pub(crate) use refused::RefusedConnection;

use crate::body::{channel, Body, BridgeBody, Completion, OwnedLine, BYTES_IN_FLIGHT};
use crate::context::Context;
use crate::handler::{Handler, Request};
use crate::offload::DropsOffRuntime;
use crate::pool::{Admission, BlockingPool, Job, Refusal};
use crate::server::{ClientSource, ListenAddr, PeerExtension};
use crate::tasks::TaskSet;
use crate::throttle::Throttle;
use crate::timer::TimersKnown;
use head::{
    asks_close, close_after, expects_continue, has_option, head_size, http10_keeps,
    keeps_connection, target_len,
};
pub(crate) use head::{content_length, declared_length};
use job::RequestJob;
use pump::Pump;
use reply::Reply;

/// The completion of a request the service answers itself, without the handler, from
/// `start`.
fn answered_here(
    parts: http::request::Parts,
    start: Instant,
    activity: Option<Arc<Activity>>,
) -> Completion {
    // Embedded, the host's request span, for the request's access line; the bundled
    // server's connection span is entered where that is written.
    let span = if activity.is_some() {
        tracing::Span::none()
    } else {
        tracing::Span::current()
    };
    let line = Arc::new(OwnedLine {
        method: parts.method,
        uri: parts.uri,
        span,
    });
    Completion::new(line, start, activity)
}

/// The longest `Retry-After` sent, in seconds: a day.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// `after` as a `Retry-After` value: whole seconds, rounded up, from 1 (`0` would invite
/// an instant retry) to a day.
pub(crate) fn retry_after_value(after: Duration) -> HeaderValue {
    let secs = after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0));
    HeaderValue::from(secs.clamp(1, MAX_RETRY_AFTER_SECS))
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `tower::Service` and `hyper::service::Service` that runs a blocking [`Handler`] on a
/// [`BlockingPool`], for any request body type.
///
/// Mount it in an axum `Router` (`fallback_service`, `nest_service`), put tower-http
/// layers around it, or hand it to hyper. Its error type is [`Infallible`]: overload is a
/// `503` with `Retry-After`, a body over the limit a `413`, a handler panic a `500`, a
/// `CONNECT` (no blocking answer can become a tunnel) a `501`. `poll_ready` is always
/// ready (admission happens in `call`, which answers `503` rather than hold a caller
/// back), and clones share one handler, one pool and its limits.
///
/// The [`tracing::Span`] current when `call` runs (a request span made by a layer in
/// front, such as tower-http's `TraceLayer`) is entered on the handler thread for the
/// handler and its streamed body, and [`ensure_sync`](crate::ensure_sync) carries it on
/// to the runtime: the handler's events nest in the request's span as an async
/// handler's would.
///
/// # Where it may be called from
///
/// `call` must run inside a tokio runtime (any flavour), which becomes the one handler
/// threads reach through the crate's context. The queue timeout uses tokio's timer: in a
/// runtime built without timers (no `enable_time`/`enable_all`, which `#[tokio::main]`
/// has) a request that finds every handler thread busy is answered `503` at once, and
/// an error saying so is logged. The handler itself never runs on that runtime's threads.
/// Called outside any runtime, such a request is answered `503` the same way (logged),
/// and a handler that runs has no runtime to reach (`ensure_sync` fails with
/// `is_no_context`) unless [`SyncServiceBuilder::runtime`] pinned one.
///
/// Each request's handler reaches the runtime that called the service for that request,
/// so one service may be called from several runtimes (a start-up check on a runtime of
/// its own, one `#[tokio::test]` after another). [`SyncServiceBuilder::runtime`] pins one
/// instead, for every request.
///
/// # Examples
///
/// ```
/// use syncbridge::{Request, SyncService};
///
/// let service = SyncService::new(|_req: Request| "hello from a blocking handler");
/// // axum: Router::new().route("/async", get(..)).fallback_service(service)
/// # let _ = service;
/// ```
pub struct SyncService<H> {
    shared: Arc<Shared<H>>,
    /// The connection this clone serves, when the bundled server tracks idleness.
    activity: Option<Arc<Activity>>,
    /// The client of that connection (its address, or a Unix socket peer's
    /// credentials), put in each request's extensions when the server was asked to
    /// (`Server::remote_addr`).
    peer: Option<PeerExtension>,
    /// Where that connection came in (the bundled server's listener), put in each
    /// request's extensions with the peer.
    local: Option<Arc<ListenAddr>>,
    /// Where its requests' `ClientIp` and `ClientScheme` come from, when the server was
    /// told its trusted proxies.
    client: Option<Arc<ClientSource>>,
    /// Set when the bundled server refuses the connection: its requests are answered at
    /// once, by this, not the handler.
    refused: Option<Arc<RefusedConnection>>,
}

pub(crate) struct Shared<H> {
    /// Called through this reference. The last one is `_last_handler`'s, dropped after it
    /// (fields drop in order) and off the runtime.
    handler: Arc<H>,
    pool: BlockingPool,
    max_body_size: u64,
    max_header_size: Option<usize>,
    retry_after: HeaderValue,
    body_timeout: Duration,
    /// How long a streamed response's head waits for its first bytes (zero: not at all).
    head_grace: Duration,
    /// How long a request may wait for its handler's response, from its arrival; `None`:
    /// no limit.
    handler_timeout: Option<Duration>,
    /// How long a streamed response may go on, from its request's arrival; `None`: no
    /// limit.
    stream_timeout: Option<Duration>,
    /// The context of the builder's runtime, for every request whatever runtime calls.
    pinned: Option<Arc<Context>>,
    /// Without one: the first calling runtime's context, kept so that calls from that
    /// runtime (all of them, usually) need no context of their own.
    first_caller: OnceLock<Arc<Context>>,
    /// For a context made for a calling runtime.
    tasks: Option<TaskSet>,
    /// Makes each request's own span (`Server::request_span`).
    make_span: Option<MakeSpan>,
    /// Whether the runtime that calls the service has timers (see `crate::timer`).
    timers: TimersKnown,
    /// A legacy handler may own a runtime of its own (a sync database client), and the
    /// last clone of a service usually goes on a runtime thread, where tokio panics on
    /// dropping one. Apart from `handler` so that calls go straight through an `Arc`.
    _last_handler: DropsOffRuntime<Arc<H>>,
}

impl<H: Handler> SyncService<H> {
    /// Wraps `handler` with a pool of its own and the default limits. Callable from
    /// anywhere: nothing starts (no thread, no runtime needed) until the first `call`.
    pub fn new(handler: H) -> Self {
        Self::builder(handler).build()
    }

    /// Configures the pool and limits of a service for `handler`. Callable from anywhere.
    pub fn builder(handler: H) -> SyncServiceBuilder<H> {
        SyncServiceBuilder {
            handler,
            pool: None,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            max_header_size: None,
            retry_after: Duration::from_secs(1),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            head_grace: DEFAULT_HEAD_GRACE,
            handler_timeout: None,
            stream_timeout: None,
            runtime: None,
            tasks: None,
            make_span: None,
        }
    }

    /// The pool this service runs its handler on: its [`stats`](BlockingPool::stats)
    /// show the load, and what is still running once a host has stopped serving.
    /// Callable from anywhere.
    pub fn pool(&self) -> &BlockingPool {
        &self.shared.pool
    }

    /// The clone that serves one connection of the bundled server; `peer` when its
    /// requests are to carry it, `client` when the server was told its trusted proxies.
    pub(crate) fn for_connection(
        &self,
        activity: Arc<Activity>,
        peer: Option<PeerExtension>,
        local: Option<Arc<ListenAddr>>,
        client: Option<ClientSource>,
    ) -> Self {
        SyncService {
            shared: self.shared.clone(),
            activity: Some(activity),
            peer,
            local,
            client: client.map(Arc::new),
            refused: None,
        }
    }

    /// The clone that answers every request of a connection the bundled server refuses
    /// with `refused`'s answer, not the handler's: the request still gets its access line
    /// and is counted, as any the service answers itself.
    pub(crate) fn for_refused_connection(
        &self,
        activity: Arc<Activity>,
        refused: Arc<RefusedConnection>,
    ) -> Self {
        SyncService {
            shared: self.shared.clone(),
            activity: Some(activity),
            peer: None,
            local: None,
            client: None,
            refused: Some(refused),
        }
    }

    /// The context this call's handler runs in: the builder's runtime, else the runtime
    /// that calls now (none outside any runtime).
    fn context(&self) -> Option<Arc<Context>> {
        let shared = &*self.shared;
        if let Some(pinned) = &shared.pinned {
            return Some(pinned.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let context_of = |runtime| {
            Arc::new(Context {
                runtime,
                tasks: shared.tasks.clone(),
            })
        };
        let first = shared
            .first_caller
            .get_or_init(|| context_of(runtime.clone()));
        if first.runtime.id() == runtime.id() {
            Some(first.clone())
        } else {
            // Another runtime than the first: kept for this request only. Caching the first
            // for good made every later handler reach a runtime that may no longer run.
            Some(context_of(runtime))
        }
    }

    /// Starts handling `request`; the returned future resolves to the response head.
    fn start<B>(&self, request: http::Request<B>) -> SyncServiceFuture<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if request.version() != http::Version::HTTP_10 {
            return self.admit(request);
        }
        let keep_alive = http10_keeps(request.headers());
        let mut future = self.admit(request);
        future.answers_http10(keep_alive);
        future
    }

    /// Answers a request of a refused connection: the request is over, whatever its
    /// body (what hyper does with a body left unread, the connection's task knows).
    /// Called by `admit` with the request in parts, so that a request's path pays one
    /// branch for it and no copy of the request.
    #[cold]
    #[inline(never)]
    fn refuse<B>(
        &self,
        refused: &RefusedConnection,
        parts: http::request::Parts,
    ) -> SyncServiceFuture<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        crate::metrics::refused(crate::metrics::Refused::ClientLimit);
        let answer = refused.answer(parts.version, self.shared.retry_after.clone());
        let completion = answered_here(parts, start, self.activity.clone());
        SyncServiceFuture::ready(answer.map(BridgeBody::full), completion)
    }

    /// Refuses `request` at once (a head too large, a body declared too large, a head
    /// HTTP refuses, no room in the pool) or hands it to the pool.
    fn admit<B>(&self, request: http::Request<B>) -> SyncServiceFuture<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        if let Some(activity) = &self.activity {
            activity.request_started(parts.version);
            // A body the server may leave unread, the connection closing under it.
            if !body.is_end_stream() {
                activity.request_body_seen();
            }
        }
        if let Some(refused) = &self.refused {
            return self.refuse(refused, parts);
        }
        if let Some(peer) = self.peer {
            peer.insert_into(&mut parts.extensions);
        }
        if let Some(local) = &self.local {
            parts.extensions.insert(ListenAddr::clone(local));
        }
        if let Some(client) = &self.client {
            client.resolve(&parts.headers, &mut parts.extensions);
        }
        let start = Instant::now();
        let activity = self.activity.clone();
        let refused = |parts| answered_here(parts, start, activity.clone());
        let shared = &self.shared;

        // The bundled server's head checks look at `Host`; its size limit walks every
        // header anyway, and finds it on the way (no lookup of its own).
        let bundled = self.activity.is_some();
        let mut hosts = None;
        if let Some(limit) = shared.max_header_size {
            let (size, found) = head_size(&parts);
            if size > limit {
                let mut response = head_too_large(&parts, limit);
                if parts.version <= http::Version::HTTP_11 && !body.is_end_stream() {
                    // Its body is not read: the connection cannot be kept.
                    close_after(&mut response);
                }
                return SyncServiceFuture::ready(response, refused(parts));
            }
            hosts = Some(found);
        }
        let hosts = bundled.then(|| hosts.unwrap_or_else(|| conform::Hosts::of(&parts.headers)));
        if let Some(refusal) = conform::refusal(&parts, hosts) {
            return SyncServiceFuture::ready(refuse(&parts, refusal), refused(parts));
        }
        let watched = match &self.activity {
            Some(activity) if parts.version <= http::Version::HTTP_11 => Some(activity.clone()),
            _ => None,
        };
        let (body, pump, fault_probe) = if body.is_end_stream() {
            // No body (most GETs): no `Content-Length` to look up either.
            (Body::empty(), None, None)
        } else {
            let declared = declared_length(&parts.headers);
            if declared.is_some_and(|len| len > shared.max_body_size) {
                static DECLARED_TOO_LARGE: Throttle = Throttle::new();
                if let Some(left_out) = DECLARED_TOO_LARGE.admit() {
                    tracing::warn!(
                        method = %parts.method, path = %parts.uri.path(),
                        limit = shared.max_body_size, left_out,
                        "request body declared larger than the limit; answered 413"
                    );
                }
                return SyncServiceFuture::ready(future::payload_too_large(), refused(parts));
            }
            let (tx, rx) = channel::channel(BYTES_IN_FLIGHT, Some(shared.body_timeout));
            let probe = rx.fault_probe();
            (
                Body::streamed(rx),
                Some(Pump::new(
                    body,
                    tx,
                    shared.max_body_size,
                    declared,
                    expects_continue(&parts.headers),
                    keeps_connection(&parts),
                )),
                Some(probe),
            )
        };
        let job = Arc::new(RequestJob::new(
            self.shared.clone(),
            self.context(),
            Request::from_parts(parts, body),
            fault_probe,
            watched,
            start,
        ));
        let cell: Arc<dyn Reply> = job.clone();
        let completion = Completion::new(job.clone(), start, activity);

        match shared.pool.try_submit(Job::Shared(job)) {
            Ok(admission) => {
                let queued_in = (admission == Admission::Queued).then(|| shared.pool.clone());
                SyncServiceFuture::waiting(
                    cell,
                    pump,
                    queued_in,
                    shared.retry_after.clone(),
                    completion,
                    shared.handler_timeout,
                    &shared.timers,
                )
            }
            Err(_job) => {
                crate::metrics::pool_refused(&shared.pool);
                static POOL_FULL: Throttle = Throttle::new();
                if let Some(left_out) = POOL_FULL.admit() {
                    let why = match shared.pool.refusal() {
                        Refusal::Full => "blocking pool and queue are full",
                        // The OS refused to start one (logged at error by the pool).
                        Refusal::NoThread => "no blocking pool thread could start",
                        Refusal::ShutDown => "blocking pool is shut down",
                    };
                    tracing::warn!(
                        method = %completion.method(), path = %completion.path(), left_out,
                        "{why}; answered 503"
                    );
                }
                let mut response = future::overloaded(shared.retry_after.clone());
                let activity = completion.activity.clone();
                if pump.is_some_and(|pump| !pump.settle(activity, true, true)) {
                    close_after(&mut response);
                }
                SyncServiceFuture::ready(response, completion)
            }
        }
    }
}

/// The default cap on a request body: 64 MiB. Streaming keeps memory flat at any size;
/// the cap is about how long one request may occupy a handler thread.
pub(crate) const DEFAULT_MAX_BODY_SIZE: u64 = 64 * 1024 * 1024;

/// The default body timeout: 30 seconds, gunicorn's worker `timeout`.
pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a streamed response's head waits for its body's first bytes by default.
/// Producers that fail at their start (a file that is not there, a query refused) fail
/// within milliseconds; a client waiting for an event stream's head barely notices.
pub(crate) const DEFAULT_HEAD_GRACE: Duration = Duration::from_millis(100);

/// How much of a path too long to take a log line shows.
const PATH_SHOWN: usize = 128;

/// The answer to a head over `limit`: `414 URI Too Long` when the request target alone
/// is (RFC 9112 §3: a server "MUST" answer so), else `431`.
#[cold]
#[inline(never)]
fn head_too_large(parts: &http::request::Parts, limit: usize) -> http::Response<BridgeBody> {
    static URI_TOO_LONG: Throttle = Throttle::new();
    static HEAD_TOO_LARGE: Throttle = Throttle::new();
    let target_len = target_len(&parts.uri);
    if target_len > limit {
        if let Some(left_out) = URI_TOO_LONG.admit() {
            // Its start only: the whole target is what the limit keeps out.
            let path = parts.uri.path();
            let shown = (0..=path.len().min(PATH_SHOWN))
                .rev()
                .find_map(|end| path.get(..end))
                .unwrap_or("");
            tracing::warn!(
                method = %parts.method, path_start = shown, target_len, limit, left_out,
                "request target longer than the head limit; answered 414"
            );
        }
        return future::uri_too_long();
    }
    if let Some(left_out) = HEAD_TOO_LARGE.admit() {
        tracing::warn!(
            method = %parts.method, path = %parts.uri.path(), limit, left_out,
            "request head larger than the limit; answered 431"
        );
    }
    future::header_too_large()
}

/// The answer to a head `conform` refuses, logged at info (the client is the cause), at
/// most once a second. The connection closes after it: the request was not one to read
/// past, and a refused `CONNECT`'s client may already be sending tunnel bytes.
#[cold]
#[inline(never)]
fn refuse(parts: &http::request::Parts, refusal: conform::Refusal) -> http::Response<BridgeBody> {
    static REFUSED_HEAD: Throttle = Throttle::new();
    if let Some(left_out) = REFUSED_HEAD.admit() {
        tracing::info!(
            method = %parts.method, path = %conform::shown_target(&parts.uri), left_out,
            status = refusal.status.as_u16(), reason = refusal.text,
            "request head refused"
        );
    }
    let mut response = future::plain(refusal.status, refusal.text);
    close_after(&mut response);
    response
}

impl<H> Clone for SyncService<H> {
    fn clone(&self) -> Self {
        SyncService {
            shared: self.shared.clone(),
            activity: self.activity.clone(),
            peer: self.peer,
            local: self.local.clone(),
            client: self.client.clone(),
            refused: self.refused.clone(),
        }
    }
}

impl<H> fmt::Debug for SyncService<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncService")
            .field("pool", &self.shared.pool)
            .field("max_body_size", &self.shared.max_body_size)
            .finish_non_exhaustive()
    }
}

impl<H, B> tower_service::Service<http::Request<B>> for SyncService<H>
where
    H: Handler,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<BridgeBody>;
    type Error = Infallible;
    type Future = SyncServiceFuture<B>;

    /// Always ready: admission happens in `call`, which answers `503` when the pool is
    /// full, rather than holding connections back unseen.
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.start(request)
    }
}

impl<H, B> hyper::service::Service<http::Request<B>> for SyncService<H>
where
    H: Handler,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<BridgeBody>;
    type Error = Infallible;
    type Future = SyncServiceFuture<B>;

    fn call(&self, request: http::Request<B>) -> Self::Future {
        self.start(request)
    }
}

/// What `Server::request_span` takes: makes a request's span from the request, to which
/// it may add extensions. Called on the handler thread, just before the handler.
#[derive(Clone)]
pub(crate) struct MakeSpan(
    pub(crate) Arc<dyn Fn(&mut Request) -> tracing::Span + Send + Sync + 'static>,
);

impl fmt::Debug for MakeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeSpan(..)")
    }
}

/// Configures a [`SyncService`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct SyncServiceBuilder<H> {
    handler: H,
    pool: Option<BlockingPool>,
    max_body_size: u64,
    max_header_size: Option<usize>,
    retry_after: Duration,
    body_timeout: Duration,
    head_grace: Duration,
    handler_timeout: Option<Duration>,
    stream_timeout: Option<Duration>,
    runtime: Option<tokio::runtime::Handle>,
    tasks: Option<TaskSet>,
    make_span: Option<MakeSpan>,
}

impl<H: Handler> SyncServiceBuilder<H> {
    /// The pool to run the handler on; share one pool between services to share its
    /// limit. Default is a new pool with [`BlockingPool::new`]'s limits.
    pub fn pool(mut self, pool: BlockingPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The largest request body accepted, in bytes. A larger declared `Content-Length` is
    /// answered `413` before the handler runs; a body that grows past it while streaming
    /// fails the handler's read and is answered `413`. Default is 64 MiB.
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// The largest request head (request line and headers) accepted, in bytes; a larger
    /// one is answered `431 Request Header Fields Too Large`, or `414 URI Too Long` when
    /// the request target alone is over it. Default is no limit of the
    /// service's own: the server in front of it (hyper, axum) has one.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.max_header_size = Some(bytes);
        self
    }

    /// How long a handler thread waits on the client at a time: for the next piece of the
    /// request body, or for the client to take the next piece of a streamed response.
    /// Default is 30 seconds, gunicorn's worker `timeout`.
    ///
    /// Why: a handler thread is one of the pool's few; a client that sends half a body and
    /// goes quiet, or stops reading a download, would otherwise hold it for as long as it
    /// keeps its connection. So would one that sends a byte now and then: from the
    /// moment the handler first waits, at least 8 KiB of the body must come per limit
    /// (about 270 bytes a second at 30 s). Past the limit the handler's read fails with
    /// [`io::ErrorKind::TimedOut`](std::io::ErrorKind::TimedOut) and the request is
    /// answered `408 Request Timeout` (whatever the handler answers), or the streamed
    /// response is aborted and its producer stops; either is logged at warn level. The
    /// time a handler spends on its own work is not limited here (see
    /// [`handler_timeout`](Self::handler_timeout)). `Duration::MAX` waits for
    /// ever. Zero fails every wait on the client at once.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long a streamed response's head is held back for the body's first bytes.
    /// Default is 100 ms; zero sends every head as soon as the handler returns.
    ///
    /// Why: once the head is out, the status is too. A producer that fails before its
    /// first bytes (the file it opens is not there, the query it runs is refused) then
    /// leaves a `200` cut off with no body, which a client may take for an empty
    /// success. Held, the head goes out with the first bytes, at the end of a body that
    /// has none, or when the grace is over, whichever comes first; a failure before then
    /// is answered `500 Internal Server Error` in its place and logged at error, and a
    /// failure of the request body the producer reads is answered as a handler's read of
    /// it is (`408`, `400`, `413`). WSGI servers hold the head until the first bytes with
    /// no limit; the limit here keeps an event stream's client, or a client that sends
    /// its request body only once it has the head, from waiting on a producer that is
    /// waiting for it. A producer that wants its head out at once sends its first bytes
    /// at once (an event stream, a comment line such as `: open`).
    ///
    /// A layer in front that times the service's future (tower's `TimeoutLayer`) times
    /// this wait too: keep the grace well under its timeout. A failure after the grace
    /// aborts the response. Outside a tokio runtime, or on one without timers, there is
    /// no grace.
    pub fn head_grace(mut self, grace: Duration) -> Self {
        self.head_grace = grace;
        self
    }

    /// How long a request may wait for its handler's response, counted from its arrival
    /// (its time in the pool's queue included). Default is no limit; zero means no limit
    /// too.
    ///
    /// When it passes before the handler has returned its response, the request is
    /// answered `504 Gateway Timeout` and logged at warn level, as ASP.NET Core's request
    /// timeouts answer. gunicorn's `timeout` (30 s by default) kills such a worker; a
    /// thread cannot be killed, so the handler runs on, and its thread stays busy (and
    /// counts against the pool's limit) until it returns. Its reads of the request body
    /// fail once they reach what had not come by then (what had, up to 256 KiB, it may
    /// still read), its response is dropped when it comes, and a line at warn level says
    /// how long it took. A request still waiting in the pool's queue at its deadline is
    /// taken out and answered `503`, as at the queue timeout.
    ///
    /// Only the wait for the handler to return is timed: a streamed body is not, even
    /// while its head is held for its first bytes (`head_grace`), and has the body timeout
    /// for its stalls, and [`stream_timeout`](Self::stream_timeout) for its length. The deadline costs a tokio timer per request (about a
    /// microsecond). Outside a tokio runtime, or on one without timers, there is none
    /// (logged at error level).
    ///
    /// Embedded, a host's own `TimeoutLayer` does the same for the whole request; this
    /// one answers as the bundled server does and logs the handler that comes back late.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// How long a streamed response may go on, counted from its request's arrival (as
    /// the handler timeout is). Default is no limit; zero means no limit too.
    ///
    /// Why: a streamed response's producer keeps its handler thread until the body is
    /// out, and a client that reads slowly but steadily, above the body timeout's floor,
    /// keeps it for as long as the body lasts: a 100 MiB download at 3 KiB/s, nine
    /// hours. Past this limit the producer's next write fails with
    /// [`io::ErrorKind::TimedOut`](std::io::ErrorKind::TimedOut) (every write: an empty
    /// one, a heartbeat's, and one a writer only gathers), and a write waiting for the
    /// client to take more fails at once, so a producer that writes is free by the
    /// deadline however slowly its client reads. The response is aborted, whatever the
    /// producer makes of the failed write, and what it had queued is dropped: on the
    /// bundled server over HTTP/1 the connection is closed at once, with a reset over
    /// TCP on Linux (what hyper and the socket still held never reaches the client);
    /// over HTTP/2 the stream is reset once the client has taken what hyper had of it
    /// already (at most two 64 KiB chunks); embedded, hyper's own buffer and the socket's
    /// still go out before the host's HTTP/1 closes the connection. A line at warn level
    /// says so (throttled: one a second at most, with how many were left out). A producer
    /// that had sent nothing yet, its head still held for its first bytes
    /// ([`head_grace`](Self::head_grace)), is answered `504 Gateway Timeout` instead. A
    /// client that left first is a disconnect, as without the limit.
    ///
    /// Only the producer's writes are timed: one that works an hour between two writes
    /// keeps its thread that hour, and fails at the next write; one that reads the
    /// request body (an echo) waits on it as long as the body timeout lets it. A full
    /// body (bytes, a `String`) holds no thread once the handler returns, and is not
    /// timed. An event stream meant to
    /// last must fit in the limit, or be served by a service without one. gunicorn's
    /// worker `timeout` bounds a sync worker's whole request, response included, and
    /// Go's `http.Server.WriteTimeout` every response, from the request's arrival.
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.stream_timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// The `Retry-After` sent with a `503` when the pool is full, rounded up to whole
    /// seconds, at least 1 (`0` would invite an instant retry) and at most a day
    /// (86,400; `Duration::MAX` would send a 20-digit number some clients overflow on).
    /// Default is 1 second.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// The runtime handler threads reach for `ensure_sync` and background tasks, for
    /// every request. Default is the runtime that calls the service for each request.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// The background task set handlers reach with [`TaskSet::current()`]. Default is
    /// none: there `TaskSet::current()` fails with `is_no_context`, and a handler spawns
    /// through a set it captured.
    ///
    /// The bundled server drains its own set at shutdown; a host drains this one: await
    /// [`TaskSet::shutdown`] after the host's server has stopped (axum's graceful
    /// shutdown), or the tasks still running are cut off when the runtime goes.
    pub fn tasks(mut self, tasks: TaskSet) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Makes each request's span with `make` (`Server::request_span`).
    pub(crate) fn request_span(mut self, make: Option<MakeSpan>) -> Self {
        self.make_span = make;
        self
    }

    /// Builds the service. Callable from anywhere; starts no thread.
    pub fn build(self) -> SyncService<H> {
        crate::metrics::describe();
        let pinned = self.runtime.map(|runtime| {
            Arc::new(Context {
                runtime,
                tasks: self.tasks.clone(),
            })
        });
        let handler = Arc::new(self.handler);
        SyncService {
            shared: Arc::new(Shared {
                handler: handler.clone(),
                _last_handler: DropsOffRuntime::new(handler),
                pool: self.pool.unwrap_or_default(),
                max_body_size: self.max_body_size,
                max_header_size: self.max_header_size,
                retry_after: retry_after_value(self.retry_after),
                body_timeout: self.body_timeout,
                head_grace: self.head_grace,
                handler_timeout: self.handler_timeout,
                stream_timeout: self.stream_timeout,
                pinned,
                first_caller: OnceLock::new(),
                tasks: self.tasks,
                make_span: self.make_span,
                timers: TimersKnown::default(),
            }),
            activity: None,
            peer: None,
            local: None,
            client: None,
            refused: None,
        }
    }
}

impl<H> fmt::Debug for SyncServiceBuilder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncServiceBuilder")
            .field("max_body_size", &self.max_body_size)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}
