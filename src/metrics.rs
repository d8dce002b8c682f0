//! What the crate reports through the [`metrics`](https://docs.rs/metrics) facade, with
//! the `metrics` feature: responses by status and their durations, the server's own
//! refusals, failed handlers and finished background tasks, counted exactly where the
//! log lines about them are throttled; and a bundled server's load, sampled once a
//! second. The application installs the recorder (a Prometheus exporter, say); until it
//! does, the facade drops what it is given. Without the feature every function here is
//! empty. The names are listed in `docs/operations.md`, "Metrics".

use std::time::Instant;

use http::StatusCode;

use crate::pool::{BlockingPool, Refusal};

/// Adds one to counter `$name`, with at most one label, under the feature. Without it
/// nothing is done, and the label's value is not even computed (it sits in a closure
/// never called, which keeps its inputs used).
macro_rules! count {
    ($name:literal) => {{
        #[cfg(feature = "metrics")]
        ::metrics::counter!($name).increment(1);
    }};
    ($name:literal, $key:literal => $value:expr) => {{
        #[cfg(feature = "metrics")]
        ::metrics::counter!($name, $key => $value).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = || $value;
    }};
}

/// Why the server itself answered `503`, as the `reason` label of
/// `syncbridge_requests_refused_total`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refused {
    /// The pool's threads and its queue were full.
    PoolFull,
    /// No pool thread was alive and the OS refused to start one.
    NoThread,
    /// The pool was shut down.
    PoolShutDown,
    /// Every thread was busy and the calling runtime has no timer to bound a wait.
    NoTimer,
    /// The request waited in the queue past the queue timeout, or the handler timeout.
    QueueTimeout,
    /// A `SingleThread`'s queue was full.
    SingleThreadFull,
    /// The request waited for a `SingleThread` past its queue timeout.
    SingleThreadTimeout,
    /// Its connection's client held the most connections it may
    /// (`Server::max_connections_per_client`).
    ClientLimit,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => Refused::PoolFull,
            Refusal::NoThread => Refused::NoThread,
            Refusal::ShutDown => Refused::PoolShutDown,
        }
    }
}

/// How a handler failed, as the `kind` label of `syncbridge_handler_failures_total`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HandlerFailure {
    /// It panicked (`500`).
    Panic,
    /// It returned an error (`500`).
    Error,
    /// It returned an overload or shutdown error (`503`).
    Unavailable,
}

/// Why the bundled server closed a connection itself, as the `reason` label of
/// `syncbridge_connections_closed_total`: each is a log line that is throttled or that a
/// client can set off at will.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ConnClosed {
    /// Bytes of a request head, but not the whole of it, within the header read timeout
    /// (a slow or Slowloris client).
    HeadTimeout,
    /// The client took too little of a response for the body timeout, or held the
    /// connection open past its closing.
    StalledClient,
    /// h2 sent a GOAWAY for the client's protocol error or flood.
    ProtocolError,
    /// hyper refused a request head over its limits (`431` or `414`).
    HeadTooLarge,
    /// hyper's parser refused a request (`400`).
    Malformed,
    /// Cut off by the shutdown's deadline or a second signal, with requests in flight or
    /// (HTTP/1) a response's tail hyper had not written yet.
    Shutdown,
    /// Idle past the keep-alive timeout.
    KeepAlive,
    /// Nothing at all within the header read timeout: a connection never used (a
    /// browser's unused preconnect), or an idle HTTP/1 one with no keep-alive timeout.
    Idle,
    /// Idle, closed to make room for a new connection at `max_connections`.
    MadeRoom,
    /// With `proxy_protocol`: no valid PROXY protocol header, or no whole one within the
    /// header read timeout.
    ProxyHeader,
    /// Its client held the most connections it may (`max_connections_per_client`): its
    /// first request answered `503`, or, past four such at once, closed unanswered.
    ClientLimit,
}

impl ConnClosed {
    fn label(self) -> &'static str {
        match self {
            ConnClosed::HeadTimeout => "head_timeout",
            ConnClosed::StalledClient => "stalled_client",
            ConnClosed::ProtocolError => "protocol_error",
            ConnClosed::HeadTooLarge => "head_too_large",
            ConnClosed::Malformed => "malformed",
            ConnClosed::Shutdown => "shutdown",
            ConnClosed::KeepAlive => "keep_alive",
            ConnClosed::Idle => "idle",
            ConnClosed::MadeRoom => "made_room",
            ConnClosed::ProxyHeader => "proxy_header",
            ConnClosed::ClientLimit => "client_limit",
        }
    }
}

/// The server closed a connection for `reason`: `syncbridge_connections_closed_total`.
#[inline]
pub(crate) fn connection_closed(reason: ConnClosed) {
    count!("syncbridge_connections_closed_total", "reason" => reason.label());
}

/// A new connection found every slot taken (`max_connections`) and waited:
/// `syncbridge_connection_waits_total`.
#[inline]
pub(crate) fn connection_waited() {
    count!("syncbridge_connection_waits_total");
}

/// `accept` failed for a reason other than one connection's (a file limit):
/// `syncbridge_accept_errors_total`.
#[inline]
pub(crate) fn accept_failed() {
    count!("syncbridge_accept_errors_total");
}

/// A response that began at `start` ended (the access line):
/// `syncbridge_requests_total{status}` and `syncbridge_request_duration_seconds{class}`.
#[inline]
pub(crate) fn request_done(status: StatusCode, start: Instant) {
    #[cfg(feature = "metrics")]
    {
        static METADATA: ::metrics::Metadata<'static> =
            ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, None);
        ::metrics::with_recorder(|recorder| {
            recorder.register_counter(requests_key(status), &METADATA)
        })
        .increment(1);
        ::metrics::with_recorder(|recorder| {
            recorder.register_histogram(duration_key(status), &METADATA)
        })
        .record(start.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (status, start);
}

/// `syncbridge_requests_total{status}`'s key for `status`, made at its first use and
/// kept: `counter!` with a label that is not a literal allocates and hashes a new key at
/// every call, a third of the counter's cost per request.
#[cfg(feature = "metrics")]
fn requests_key(status: StatusCode) -> &'static ::metrics::Key {
    use std::sync::OnceLock;
    // 900 slots, as `StatusCode` holds 100 to 999: only the pages of codes sent are
    // ever touched.
    static KEYS: [OnceLock<::metrics::Key>; 900] = [const { OnceLock::new() }; 900];
    let slot = usize::from(status.as_u16().saturating_sub(100)).min(899);
    KEYS[slot].get_or_init(|| {
        let label = ::metrics::Label::from_static_parts("status", status_label(status));
        ::metrics::Key::from_parts("syncbridge_requests_total", vec![label])
    })
}

/// `syncbridge_request_duration_seconds{class}`'s key for `status`'s class (`1xx` to
/// `5xx`, `other` for 600 to 999), kept as [`requests_key`]'s are. The class keeps the
/// server's instant answers (`503` at admission, `413`) out of the handlers' latency
/// without a series per status.
#[cfg(feature = "metrics")]
fn duration_key(status: StatusCode) -> &'static ::metrics::Key {
    use std::sync::OnceLock;
    const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
    static KEYS: [OnceLock<::metrics::Key>; 6] = [const { OnceLock::new() }; 6];
    let slot = usize::from(status.as_u16() / 100).saturating_sub(1).min(5);
    KEYS[slot].get_or_init(|| {
        let label = ::metrics::Label::from_static_parts("class", CLASSES[slot]);
        ::metrics::Key::from_parts("syncbridge_request_duration_seconds", vec![label])
    })
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::PoolFull => "pool_full",
            Refused::NoThread => "no_thread",
            Refused::PoolShutDown => "pool_shut_down",
            Refused::NoTimer => "no_timer",
            Refused::QueueTimeout => "queue_timeout",
            Refused::SingleThreadFull => "single_thread_full",
            Refused::SingleThreadTimeout => "single_thread_timeout",
            Refused::ClientLimit => "client_limit",
        }
    }
}

/// The server answered `503` itself: `syncbridge_requests_refused_total{reason}`.
#[inline]
pub(crate) fn refused(reason: Refused) {
    count!("syncbridge_requests_refused_total", "reason" => reason.label());
}

/// `pool` refused a request: [`refused`] with its reason. The reason is read back under
/// the pool's lock, which only the feature pays for.
#[inline]
pub(crate) fn pool_refused(pool: &BlockingPool) {
    #[cfg(feature = "metrics")]
    refused(pool.refusal().into());
    #[cfg(not(feature = "metrics"))]
    let _ = pool;
}

/// A handler ran past the handler timeout (`504`): `syncbridge_handler_timeouts_total`.
#[inline]
pub(crate) fn handler_timed_out() {
    count!("syncbridge_handler_timeouts_total");
}

/// A streamed response went on past the stream timeout, and was cut off:
/// `syncbridge_stream_timeouts_total`.
#[inline]
pub(crate) fn stream_timed_out() {
    count!("syncbridge_stream_timeouts_total");
}

impl HandlerFailure {
    fn label(self) -> &'static str {
        match self {
            HandlerFailure::Panic => "panic",
            HandlerFailure::Error => "error",
            HandlerFailure::Unavailable => "unavailable",
        }
    }
}

/// A handler failed, whether or not its client got the answer:
/// `syncbridge_handler_failures_total{kind}`.
#[inline]
pub(crate) fn handler_failed(kind: HandlerFailure) {
    count!("syncbridge_handler_failures_total", "kind" => kind.label());
}

/// A background task ended (`status`: a `TaskStatus`'s name, or `lost`):
/// `syncbridge_tasks_finished_total{status}`.
#[inline]
pub(crate) fn task_finished(status: &'static str) {
    count!("syncbridge_tasks_finished_total", "status" => status);
}

/// Samples a bundled server's load once a second until the handle is dropped:
/// `syncbridge_connections` (open connections) and the pool's `syncbridge_pool_threads`,
/// `syncbridge_pool_busy_threads` and `syncbridge_pool_queued`, each labelled with the
/// server's `listener` (its address, or its addresses joined by `, `), so that two
/// servers in one process do not overwrite each other's. Sampled rather than counted at
/// each change, which would cost every request. `None` without the feature.
pub(crate) fn sample_server(
    listener: &dyn std::fmt::Display,
    pool: &BlockingPool,
    connections: &tokio_util::task::TaskTracker,
) -> Option<tokio_util::task::AbortOnDropHandle<()>> {
    #[cfg(feature = "metrics")]
    {
        Some(sample(listener.to_string(), pool, Some(connections)))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (listener, pool, connections);
        None
    }
}

/// Sets the gauges of `pool` (and of a server's `connections`, if given), labelled
/// `listener`, once a second on the current runtime, until the handle is dropped; then
/// sets them to 0: a stopped server has no load, and an exporter would otherwise show its
/// last sample for good.
#[cfg(feature = "metrics")]
fn sample(
    listener: String,
    pool: &BlockingPool,
    connections: Option<&tokio_util::task::TaskTracker>,
) -> tokio_util::task::AbortOnDropHandle<()> {
    describe();
    let (pool, connections) = (pool.clone(), connections.cloned());
    // A pool alone has no connections gauge: no series of zeros under its name.
    let names = if connections.is_some() {
        &GAUGES[..]
    } else {
        &GAUGES[1..]
    };
    let sampler = tokio::spawn(async move {
        // Dropped with the task, when the handle is.
        let zero_at_stop = ZeroAtStop { listener, names };
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let stats = pool.stats();
            let open = connections.as_ref().map_or(0, |c| c.len());
            let values = [open, stats.threads, stats.busy, stats.queued];
            for (name, value) in GAUGES.into_iter().zip(values) {
                if names.contains(&name) {
                    let listener = zero_at_stop.listener.clone();
                    ::metrics::gauge!(name, "listener" => listener).set(value as f64);
                }
            }
        }
    });
    tokio_util::task::AbortOnDropHandle::new(sampler)
}

/// The gauges a bundled server samples, in `sample`'s order; a pool alone, all but the
/// first.
#[cfg(feature = "metrics")]
const GAUGES: [&str; 4] = [
    "syncbridge_connections",
    "syncbridge_pool_threads",
    "syncbridge_pool_busy_threads",
    "syncbridge_pool_queued",
];

/// Sets the gauges `names` of `listener` to 0 when dropped.
#[cfg(feature = "metrics")]
struct ZeroAtStop {
    listener: String,
    names: &'static [&'static str],
}

#[cfg(feature = "metrics")]
impl Drop for ZeroAtStop {
    fn drop(&mut self) {
        for &name in self.names {
            ::metrics::gauge!(name, "listener" => self.listener.clone()).set(0.0);
        }
    }
}

/// A pool's load reported as gauges once a second, until this is dropped: see
/// [`BlockingPool::report_gauges`].
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
#[must_use = "the gauges are reported only until this is dropped"]
#[derive(Debug)]
pub struct PoolGauges {
    _sampler: tokio_util::task::AbortOnDropHandle<()>,
}

#[cfg(feature = "metrics")]
impl BlockingPool {
    /// Reports this pool's load through the `metrics` facade once a second, as the
    /// bundled server reports its own: `syncbridge_pool_threads`,
    /// `syncbridge_pool_busy_threads` and `syncbridge_pool_queued`, with the label
    /// `listener` set to `name`. For a pool no bundled server samples: an embedded
    /// [`SyncService`](crate::SyncService)'s (`service.pool()`), or one of your own. (A
    /// pool a bundled server was given with `Server::pool` is sampled already, under the
    /// server's address; reported here too, it appears under both names.)
    ///
    /// Keep the returned [`PoolGauges`] for as long as the pool serves; dropping it stops
    /// the reports and sets the three gauges of `name` to 0, so an exporter does not go
    /// on showing the last sample. Use one report per name: two under the same name
    /// overwrite each other's samples, and the first dropped sets them to 0 under the
    /// other. Reporting costs a timer wake-up a second and a look at
    /// the pool's counts under its lock; the requests pay nothing for it.
    ///
    /// Call it from within a tokio runtime (an async task, or a thread that has entered
    /// one): the sampling runs on that runtime, and stops with it.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_context`](crate::Error::is_no_context) outside any tokio runtime, or
    /// on one without timers (`enable_time`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn host() -> syncbridge::Result<()> {
    /// use syncbridge::{Request, SyncService};
    ///
    /// let service = SyncService::new(|_req: Request| "hello");
    /// // Served by axum, say, on 0.0.0.0:3000: no bundled server samples its pool.
    /// let _gauges = service.pool().report_gauges("0.0.0.0:3000")?;
    /// // ... serve `service` until the host stops; the gauges go to 0 then.
    /// # Ok(())
    /// # }
    /// ```
    pub fn report_gauges(&self, name: impl Into<String>) -> crate::Result<PoolGauges> {
        use crate::error::{Error, Kind};
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::new(Kind::NoContext).with_message(
                "BlockingPool::report_gauges called outside any tokio runtime; call it from \
                 an async task, or a thread that has entered a runtime",
            ));
        };
        // Its sampler ticks on the runtime's timer: without one it would panic at once,
        // unseen, and the gauges would never move.
        if !crate::timer::has_timers(&runtime) {
            return Err(Error::new(Kind::NoContext).with_message(
                "BlockingPool::report_gauges called on a tokio runtime without timers; \
                 build it with `enable_time` or `enable_all`",
            ));
        }
        Ok(PoolGauges {
            _sampler: sample(name.into(), self, None),
        })
    }
}

/// Gives the recorder installed now each metric's description and unit (a Prometheus
/// exporter shows them as `# HELP`): at each service's build, and each server's or
/// `report_gauges`' start, so a recorder installed by then has them. Each call costs a
/// dozen lookups in the recorder, never per request.
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "syncbridge_requests_total",
        "Responses whose body ended (sent whole or cut off), by status"
    );
    describe_histogram!(
        "syncbridge_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to the end of its response body, by status class"
    );
    describe_counter!(
        "syncbridge_requests_refused_total",
        "Requests the server answered 503 itself, by reason"
    );
    describe_counter!(
        "syncbridge_handler_timeouts_total",
        "Requests answered 504: their handler ran past the handler timeout"
    );
    describe_counter!(
        "syncbridge_stream_timeouts_total",
        "Streamed responses cut off: they went on past the stream timeout"
    );
    describe_counter!(
        "syncbridge_handler_failures_total",
        "Handlers that panicked, or returned an error, by kind"
    );
    describe_counter!(
        "syncbridge_tasks_finished_total",
        "Background tasks that ended, by status"
    );
    describe_counter!(
        "syncbridge_connections_closed_total",
        "Connections the server closed itself, by reason"
    );
    describe_counter!(
        "syncbridge_connection_waits_total",
        "New connections that waited for a slot (max_connections reached)"
    );
    describe_counter!(
        "syncbridge_accept_errors_total",
        "Failed accepts (a file limit), each followed by a 100 ms pause"
    );
    describe_gauge!(
        "syncbridge_connections",
        "Open connections, sampled each second"
    );
    describe_gauge!("syncbridge_pool_threads", "Handler pool threads alive");
    describe_gauge!(
        "syncbridge_pool_busy_threads",
        "Handler pool threads running a job"
    );
    describe_gauge!(
        "syncbridge_pool_queued",
        "Jobs waiting for a handler pool thread"
    );
}

/// Without the feature: nothing to describe.
#[cfg(not(feature = "metrics"))]
pub(crate) fn describe() {}

/// A status code's three digits as a `&'static str`, the label of its key.
#[cfg(feature = "metrics")]
fn status_label(status: StatusCode) -> &'static str {
    static DIGITS: [u8; 2700] = {
        let mut digits = [0u8; 2700];
        let mut i = 0;
        while i < 900 {
            let code = i + 100;
            digits[i * 3] = b'0' + (code / 100) as u8;
            digits[i * 3 + 1] = b'0' + (code / 10 % 10) as u8;
            digits[i * 3 + 2] = b'0' + (code % 10) as u8;
            i += 1;
        }
        digits
    };
    // `StatusCode` holds 100 to 999 only.
    let at = usize::from(status.as_u16().saturating_sub(100)) * 3;
    DIGITS
        .get(at..at + 3)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .unwrap_or("???")
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_codes() {
        for code in [100, 200, 404, 503, 999] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_label(status), code.to_string());
        }
    }
}
