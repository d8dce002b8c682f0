//! The sync handler model: an ordinary blocking function from request to response.

use std::error::Error as StdError;
use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use crate::body::{Body, ResponseBody};

/// The request a handler receives: an [`http::Request`] whose body is read with
/// [`std::io::Read`].
pub type Request = http::Request<Body>;

/// The response a handler produces.
///
/// A type alias: build one with [`Response::new`](http::Response::new) and its setters,
/// or with `http::Response::builder()` (`syncbridge::http` re-exports the crate), whose
/// `body` takes a [`ResponseBody`] (`.body("text".into())`). A handler may also return
/// the builder's `http::Response<B>` for any `B` a `ResponseBody` converts from, or the
/// builder's `Result` (see [`IntoResponse`]):
///
/// ```
/// use syncbridge::http::{self, StatusCode};
/// use syncbridge::{Handler, Request};
///
/// fn created(_req: Request) -> http::Result<http::Response<&'static str>> {
///     http::Response::builder()
///         .status(StatusCode::CREATED)
///         .header("location", "/items/7")
///         .body("made")
/// }
/// # fn assert_handler(_: impl Handler) {}
/// assert_handler(created);
/// ```
pub type Response = http::Response<ResponseBody>;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A blocking request handler.
///
/// Implemented for every `Fn(Request) -> R` that is `Send + Sync + 'static` where `R`
/// converts [`IntoResponse`]: a [`Response`], a string, bytes, a `(StatusCode, body)`
/// pair, or a `Result` whose `Err` becomes a logged `500`. An `Err` that is, or wraps
/// (as its `source()`, or inside an `io::Error`), a [`syncbridge::Error`](crate::Error)
/// saying the server has no room
/// ([`is_overloaded`](crate::Error::is_overloaded): a full task pool or registry) or is
/// going away ([`is_shutdown`](crate::Error::is_shutdown)) becomes `503` with
/// `Retry-After` instead, logged at warn: `?` on `spawn_blocking` or `ensure_sync` gives
/// the client the answer that tells it to come back. [`syncbridge::Result`](crate::Result)
/// carries only the crate's own errors (it has no `From<io::Error>`): a handler that `?`s
/// both those and others returns `Result<T, Box<dyn std::error::Error + Send + Sync>>`
/// (or anyhow's), and the `503` is still found inside.
///
/// # Where it runs
///
/// Always on a thread of the server's [`BlockingPool`](crate::BlockingPool), never on a
/// thread that drives connections or the tokio runtime, so it may block as long as it
/// likes: a sync database client, `std::fs`, `reqwest::blocking`. A panic is caught,
/// logged with the method and path, and answered `500`; the thread goes on serving.
///
/// # Examples
///
/// ```
/// use std::io::Read;
/// use syncbridge::{Handler, Request};
///
/// fn count_bytes(mut req: Request) -> std::io::Result<String> {
///     let mut n = 0u64;
///     let mut buf = [0u8; 8192];
///     loop {
///         match req.body_mut().read(&mut buf)? {
///             0 => return Ok(format!("{n} bytes")),
///             k => n += k as u64,
///         }
///     }
/// }
///
/// fn assert_handler(_: impl Handler) {}
/// assert_handler(count_bytes);
/// assert_handler(|_req: Request| "hello");
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one request. Called on a pool thread.
    fn call(&self, request: Request) -> Response;
}

impl<F, R> Handler for F
where
    F: Fn(Request) -> R + Send + Sync + 'static,
    R: IntoResponse,
{
    // Into the pool thread's job, as other calls there are: out of line, the request and
    // the response are each copied once more on the way in and out.
    #[inline]
    fn call(&self, request: Request) -> Response {
        self(request).into_response()
    }
}

/// Converts a handler's return value into a [`Response`].
pub trait IntoResponse {
    /// Makes the response.
    fn into_response(self) -> Response;
}

/// Any body [`ResponseBody`] converts from: `http::Response::builder().body("text")`
/// is a handler's answer as it stands (under the headers the builder set; none added).
impl<B: Into<ResponseBody>> IntoResponse for http::Response<B> {
    #[inline]
    fn into_response(self) -> Response {
        self.map(Into::into)
    }
}

impl IntoResponse for ResponseBody {
    fn into_response(self) -> Response {
        Response::new(self)
    }
}

fn text(body: ResponseBody) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn octets(body: ResponseBody) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        text(self.into())
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        text(self.into())
    }
}

impl IntoResponse for Bytes {
    fn into_response(self) -> Response {
        octets(self.into())
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        octets(self.into())
    }
}

impl IntoResponse for () {
    fn into_response(self) -> Response {
        Response::new(ResponseBody::empty())
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = self;
        response
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        *response.status_mut() = self.0;
        response
    }
}

impl<T, E> IntoResponse for Result<T, E>
where
    T: IntoResponse,
    E: Into<BoxError>,
{
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => {
                let mut response = internal_error();
                // The bridge logs it with the method and path, which only it knows.
                response
                    .extensions_mut()
                    .insert(HandlerError(Some(err.into())));
                response
            }
        }
    }
}

/// The error a handler returned, carried to the bridge for logging.
pub(crate) struct HandlerError(pub(crate) Option<BoxError>);

impl Clone for HandlerError {
    // Extensions must be `Clone`; the bridge takes the error out, so a clone is never read.
    fn clone(&self) -> Self {
        HandlerError(None)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HandlerError").field(&self.0).finish()
    }
}

/// The generic `500` for a panic or an error: the details go to the log, not the client.
pub(crate) fn internal_error() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
}
