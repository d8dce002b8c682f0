//! What the handler's answer becomes before it goes on the wire: the client's fault
//! answered as such, the crate's own "not now" as `503`, and a body framed as HTTP
//! allows (none for `HEAD`, 204, 205 and 304; a full body's true length; no 1xx as a
//! final answer; framing headers the server's own).
//!
//! Every check on the path of an ordinary answer is a comparison; the rest is out of line.

use std::io;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, RETRY_AFTER, TRANSFER_ENCODING};
use http::{HeaderValue, Method, StatusCode, Uri};

use super::reply::GivenUp;
use crate::body::{BridgeBody, ResponseKind};
use crate::error::Chain;
use crate::handler::{BoxError, IntoResponse, Response};
use crate::metrics::HandlerFailure;
use crate::throttle::Throttle;

/// Replaces whatever the handler made of a request body read that failed by the client's
/// doing (`kind`, from the body's `FaultProbe`): the client is the cause, so the answer
/// is a `4xx`, logged below error level. `abandoned`: the request was given up (the
/// client left), and the answer goes nowhere.
#[cold]
#[inline(never)]
pub(super) fn client_fault(
    kind: io::ErrorKind,
    method: &Method,
    uri: &Uri,
    body_timeout: std::time::Duration,
    abandoned: bool,
) -> Response {
    if abandoned {
        // The future's own line said the request was abandoned; this one is its end.
        tracing::debug!(
            method = %method,
            path = %uri.path(),
            ?kind,
            "request body cut off by the request's abandonment; the handler's answer goes nowhere"
        );
        return closing(StatusCode::BAD_REQUEST, "Bad Request");
    }
    match kind {
        io::ErrorKind::TimedOut => {
            tracing::warn!(
                method = %method,
                path = %uri.path(),
                timeout_ms = body_timeout.as_millis() as u64,
                min_bytes = crate::body::channel::MIN_PROGRESS,
                "client sent too little request body data for the body timeout; answered 408"
            );
            closing(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout: the request body stopped arriving",
            )
        }
        io::ErrorKind::InvalidData => {
            // The service future has answered 413 already; this answer goes nowhere.
            tracing::debug!(
                method = %method,
                path = %uri.path(),
                "handler met the request body's limit; the 413 already sent stands"
            );
            closing(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large")
        }
        _ => {
            static BROKEN: Throttle = Throttle::new();
            if let Some(left_out) = BROKEN.admit() {
                tracing::info!(
                    method = %method,
                    path = %uri.path(),
                    ?kind,
                    left_out,
                    "request body broken or cut short by the client; answered 400"
                );
            }
            closing(
                StatusCode::BAD_REQUEST,
                "Bad Request: the request body was broken or cut short",
            )
        }
    }
}

/// A response after which the connection is closed: the rest of the request body was
/// not read, so the connection cannot be reused.
fn closing(status: StatusCode, text: &'static str) -> Response {
    let mut response = (status, text).into_response();
    super::close_after(&mut response);
    response
}

/// Logs the error a handler returned and answers it: `503` with `Retry-After` when it is
/// the crate's own "not now" (a full task pool, a shutdown), else the `500` it carries.
/// `given_up`: whether the request was answered (`504` for the handler timeout) or given
/// up already; then the error is only logged, saying so (a "not now" at debug).
/// Out of line: the path of a handler that answers stays as it was.
#[cold]
#[inline(never)]
pub(super) fn handler_error(
    response: &mut Response,
    err: &BoxError,
    method: &Method,
    uri: &Uri,
    retry_after: &HeaderValue,
    given_up: GivenUp,
) {
    // Once: it walks the error's chain.
    let unavailable = unavailable(&**err);
    let _counted = CountedOnReturn(if unavailable {
        HandlerFailure::Unavailable
    } else {
        HandlerFailure::Error
    });
    if given_up != GivenUp::No {
        // Nobody gets an answer made of it: the error is logged, saying what became of
        // the request. A "not now" is no failure of the handler's: at debug.
        let error = Chain(&**err);
        if unavailable {
            tracing::debug!(
                method = %method, path = %uri.path(), error = %error, ?given_up,
                "handler returned an overload or shutdown error after its request was given up"
            );
            return;
        }
        if given_up == GivenUp::TimedOut {
            tracing::error!(
                method = %method, path = %uri.path(), error = %error,
                "handler returned an error after its request was answered 504 for the \
                 handler timeout"
            );
        } else {
            tracing::error!(
                method = %method, path = %uri.path(), error = %error,
                "handler returned an error after its request was given up (its client \
                 left, or it was answered already)"
            );
        }
        return;
    }
    if !unavailable {
        // A `(StatusCode, Result)` tuple set its status over the `Err`'s 500.
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        tracing::error!(
            method = %method,
            path = %uri.path(),
            error = %Chain(&**err),
            "handler returned an error; answered 500"
        );
        return;
    }
    // A full task pool or registry sets this off for every request that spawns.
    static UNAVAILABLE: Throttle = Throttle::new();
    if let Some(left_out) = UNAVAILABLE.admit() {
        tracing::warn!(
            method = %method,
            path = %uri.path(),
            error = %Chain(&**err),
            left_out,
            "handler returned an overload or shutdown error; answered 503"
        );
    }
    *response = (
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable: the server is busy, retry later",
    )
        .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, retry_after.clone());
}

/// Whether the crate's own "not now" is the error or what it wraps: `?` through an
/// error type of the application's (`anyhow`'s context, a `thiserror` variant with a
/// source) or an `io::Error` must not turn a `503` into a `500`.
/// Counts a handler's error once its log line is written. An error whose `Display`
/// panics while it is logged unwinds the job, which counts that as the handler's panic
/// (`AnswerOnUnwind`): counted here too, one failure would count twice.
struct CountedOnReturn(HandlerFailure);

impl Drop for CountedOnReturn {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::metrics::handler_failed(self.0);
        }
    }
}

fn unavailable(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    // Bounded: a cycle of sources is a bug of someone else's we must not hang on.
    for _ in 0..16 {
        let Some(err) = next else { break };
        if err
            .downcast_ref::<crate::Error>()
            .is_some_and(crate::Error::is_unavailable)
        {
            return true;
        }
        // An `io::Error` hides the error it wraps from `source()`.
        next = match err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// The body as HTTP allows it for this method and status, and the framing headers as
/// the crate, not the handler, decides them:
/// - hyper leaves the body out of a `HEAD`, 1xx, 204 or 304 response on HTTP/1, but on
///   HTTP/2 it sends it, and the client fails the stream; a 205 it sends on both;
/// - a 1xx is no final answer: hyper's HTTP/1 answers 500 for most, sends a 101 without
///   `Upgrade`, and its HTTP/2 sends a malformed response. It becomes a logged 500, and
///   so does a status past 599 (`http` takes up to 999; hyper sends it on);
/// - hyper trusts a `Content-Length` the handler set on a full body, so a wrong one
///   desyncs an HTTP/1 connection (in debug builds hyper panics instead). On a streamed
///   body one that is not a length, or more than one, makes hyper's HTTP/1 drop the
///   connection without a response and its HTTP/2 send it on as it is;
/// - a handler's `Transfer-Encoding` beside a `Content-Length` makes hyper's HTTP/1 drop
///   the connection too, and hyper adds `chunked` itself where it is needed.
///
/// A full `HEAD` answer keeps its body until `finish`, which strips every such answer.
#[inline]
pub(super) fn framed(
    method: &Method,
    uri: &Uri,
    parts: &mut http::response::Parts,
    kind: ResponseKind,
) -> ResponseKind {
    let head = *method == Method::HEAD;
    if !may_have_body(parts.status) || (head && matches!(kind, ResponseKind::Stream(_))) {
        return without_body(method, uri, parts, kind);
    }
    // A response has a few headers, usually neither of these: comparing names costs less
    // than hashing them for two lookups.
    let (mut length, mut coding) = (false, false);
    for name in parts.headers.keys() {
        length |= *name == CONTENT_LENGTH;
        coding |= *name == TRANSFER_ENCODING;
    }
    if coding {
        drop_transfer_encoding(method, uri, parts);
    }
    if length {
        match &kind {
            // An empty `HEAD` answer under a declared length is how a handler answers
            // `HEAD` itself: that length is the `GET` body's, not this one's.
            ResponseKind::Full(bytes) if !(head && bytes.is_empty()) => {
                if !declares(&parts.headers, bytes.len()) {
                    correct_length(method, uri, parts, bytes.len());
                }
            }
            // A stream's length, or that `HEAD` answer's, goes out as the handler set it:
            // it must at least be one length.
            _ => {
                if !declares_one(&parts.headers) {
                    drop_length(method, uri, parts);
                }
            }
        }
    }
    kind
}

/// A full answer to `HEAD` (the handler's, or one the service made itself, a `503` say)
/// as it goes out: without its body, under the `Content-Length` the same answer to a
/// `GET` would have.
#[cold]
#[inline(never)]
pub(super) fn head_without_body(response: &mut http::Response<BridgeBody>) {
    let body = response.body();
    if http_body::Body::is_end_stream(body) {
        return;
    }
    if let Some(len) = http_body::Body::size_hint(body).exact() {
        response
            .headers_mut()
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    *response.body_mut() = BridgeBody::full(Bytes::new());
}

fn may_have_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || not_http(status)
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::RESET_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// A status `http` takes but HTTP does not define (RFC 9110 section 15: 100 to 599);
/// hyper would send it as it is.
fn not_http(status: StatusCode) -> bool {
    status.as_u16() > 599
}

/// Whether `headers` declare exactly `len` bytes: one `Content-Length`, of digits only
/// (hyper's own rule: no sign, no spaces), equal to it.
fn declares(headers: &http::HeaderMap, len: usize) -> bool {
    single_length(headers) == Some(len as u64)
}

/// Whether `headers` declare a length: one `Content-Length`, of digits only.
fn declares_one(headers: &http::HeaderMap) -> bool {
    single_length(headers).is_some()
}

fn single_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    super::content_length(value)
}

/// Drops the body, a producer unrun: for a 1xx, 204, 205 or 304, and for a streamed
/// `HEAD` answer (a full one loses its body in `finish`, with the answers the service
/// makes itself). A 1xx or 204 may not carry a `Content-Length`, a 205 says `0`; a 304
/// and a `HEAD` keep the one the handler declared (for a 304 it describes the cached
/// representation; hyper's HTTP/1 leaves it out of a `GET`'s) if it is one length: any
/// other makes hyper's HTTP/1 drop the connection unanswered and HTTP/2 clients fail
/// theirs. A 1xx, or a status past 599, becomes a 500.
#[cold]
#[inline(never)]
fn without_body(
    method: &Method,
    uri: &Uri,
    parts: &mut http::response::Parts,
    kind: ResponseKind,
) -> ResponseKind {
    let status = parts.status;
    if status.is_informational() || not_http(status) {
        tracing::error!(
            method = %method,
            path = %uri.path(),
            status = status.as_u16(),
            "handler answered with a 1xx status, which cannot end a request, or one past \
             599, which HTTP does not define; answered 500"
        );
        drop(kind);
        let (error, body) = crate::handler::internal_error().into_parts();
        *parts = error;
        return body.kind;
    }
    parts.headers.remove(TRANSFER_ENCODING);
    if status == StatusCode::NO_CONTENT {
        parts.headers.remove(CONTENT_LENGTH);
    } else if status == StatusCode::RESET_CONTENT {
        // RFC 9110 §15.3.6: no content, and saying so keeps an HTTP/1 connection framed.
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    } else if parts.headers.contains_key(CONTENT_LENGTH) && !declares_one(&parts.headers) {
        drop_length(method, uri, parts);
    }
    let has_body = match &kind {
        ResponseKind::Full(bytes) => !bytes.is_empty(),
        ResponseKind::Stream(_) => true,
    };
    if *method == Method::HEAD && may_have_body(status) {
        // The usual `HEAD` answer: the `GET` handler's body, not wanted.
        tracing::trace!(method = %method, path = %uri.path(), %status, "answer to HEAD; its body producer is not run");
    } else if has_body && status == StatusCode::NOT_MODIFIED {
        // A conditional `GET` answered from the full response: common, and harmless.
        tracing::debug!(method = %method, path = %uri.path(), "a 304 has no body; the handler's was dropped");
    } else if has_body {
        // The handler meant the client to read something that HTTP does not carry.
        tracing::warn!(method = %method, path = %uri.path(), %status, "a 204 or 205 response has no body; the handler's was dropped");
    }
    drop(kind);
    ResponseKind::Full(Bytes::new())
}

/// An answer to an HTTP/1.0 request that asked to keep its connection (`keep_alive`),
/// where hyper would promise what it does not keep. hyper, seeing a response head of
/// version 1.1, adds `Connection: keep-alive` whenever it means to keep the connection
/// (right for an answer of known length, and it knows better than this service whether
/// it will: a graceful shutdown, its own keep-alive setting, a later `Connection: close`
/// line), but it also adds it over a body it then ends by closing the connection (a
/// stream of no declared length) and beside a `Connection: close`. For those two the
/// head says 1.0, and hyper closes without a promise.
#[cold]
#[inline(never)]
pub(super) fn for_http10(response: &mut http::Response<BridgeBody>, keep_alive: bool) {
    if !keep_alive {
        return;
    }
    let delimited =
        response.body().is_full() || super::declared_length(response.headers()).is_some();
    let closes = response
        .headers()
        .get_all(CONNECTION)
        .iter()
        .any(|value| super::has_option(value, b"close"));
    if delimited && !closes {
        return;
    }
    *response.version_mut() = http::Version::HTTP_10;
}

/// Removes a handler's `Transfer-Encoding`: framing is hyper's, which chunks a body of
/// unknown length on HTTP/1.1 by itself. Any coding other than `chunked` (a `gzip` the
/// handler meant the client to undo) is lost with it, so that one is a warning.
#[cold]
#[inline(never)]
fn drop_transfer_encoding(method: &Method, uri: &Uri, parts: &mut http::response::Parts) {
    let codings = remove_all(&mut parts.headers, TRANSFER_ENCODING);
    if codings
        .iter()
        .all(|value| value.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        tracing::debug!(method = %method, path = %uri.path(), "handler's Transfer-Encoding: chunked removed; the server frames the body");
    } else {
        tracing::warn!(
            method = %method,
            path = %uri.path(),
            transfer_encoding = ?codings,
            "handler's Transfer-Encoding removed: the server frames the body, and sends it \
             without that coding (use Content-Encoding for a compressed body)"
        );
    }
}

/// Removes a `Content-Length` that is not one length: a streamed body goes out chunked
/// (HTTP/1.1) or ended by the stream's end (HTTP/2); a bodiless answer (`HEAD`, 304)
/// goes out without one.
#[cold]
#[inline(never)]
fn drop_length(method: &Method, uri: &Uri, parts: &mut http::response::Parts) {
    let values = remove_all(&mut parts.headers, CONTENT_LENGTH);
    tracing::warn!(
        method = %method,
        path = %uri.path(),
        declared = ?values,
        "handler's Content-Length is not one length; removed, the response goes out without it"
    );
}

/// Removes every `name` line of `headers`, and returns their values for a log line.
fn remove_all(headers: &mut http::HeaderMap, name: http::HeaderName) -> Vec<HeaderValue> {
    match headers.entry(name) {
        http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
        http::header::Entry::Vacant(_) => Vec::new(),
    }
}

#[cold]
#[inline(never)]
fn correct_length(method: &Method, uri: &Uri, parts: &mut http::response::Parts, len: usize) {
    tracing::warn!(
        method = %method,
        path = %uri.path(),
        declared = ?parts.headers.get(CONTENT_LENGTH),
        length = len,
        "handler's Content-Length does not match its body; sent the body's length"
    );
    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}
