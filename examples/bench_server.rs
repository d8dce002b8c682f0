//! The bench contract (`../shared/bench/CONTRACT.md`) with plain blocking handlers.
//!
//! ```text
//! cargo build --release --example bench_server
//! PORT=18080 target/release/examples/bench_server
//! ../shared/bench/compare.sh target/release/examples/bench_server
//! ```
//!
//! Logs only warnings and errors, so that the access log does not weigh on the numbers;
//! `RUST_LOG` overrides that.

use std::time::Duration;

use syncbridge::bytes::Bytes;
use syncbridge::http::{header, HeaderValue, StatusCode};
use syncbridge::{Request, Response, ResponseBody, Server};

const CHUNK: usize = 64 * 1024;
static XS: [u8; CHUNK] = [b'x'; CHUNK];
/// The longest `/sleep` and the largest `/download` a query may ask for, so that one
/// request cannot hold a thread, or stream, for ever (the workloads ask 50 ms, 16 MiB).
/// Past them, or with no number, the answer is `400`: never another length than asked.
const MAX_SLEEP_MS: u64 = 60_000;
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// The query's `key` as a number of at most `max`: `None` when absent, not a number, or
/// more.
fn query_u64(req: &Request, key: &str, max: u64) -> Option<u64> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .filter(|&n| n <= max)
}

fn bad_request(why: &'static str) -> Response {
    let mut response = plain(why);
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

fn plain(body: impl Into<ResponseBody>) -> Response {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Sums the body as it arrives, read through `std::io::Read` into a 64 KiB buffer, as
/// the contract asks and legacy code reads a body (`Body::chunk` would save a copy of
/// every byte).
fn upload(mut req: Request) -> std::io::Result<Response> {
    use std::io::Read;
    let (mut len, mut sum) = (0u64, 0u64);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = req.body_mut().read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        // The peers' own expression, so that every server's handler does the same work.
        sum = sum.wrapping_add(buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
    }
    Ok(plain(format!("{len} {sum}")))
}

fn download(req: &Request) -> Response {
    let Some(total) = query_u64(req, "bytes", MAX_DOWNLOAD_BYTES) else {
        return bad_request("bytes=N, at most 1073741824");
    };
    let chunks = (0..total.div_ceil(CHUNK as u64)).map(move |i| {
        let k = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok(Bytes::from_static(&XS[..k]))
    });
    let mut response = Response::new(ResponseBody::from_chunks(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    response
}

fn route(req: Request) -> std::io::Result<Response> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/hello") => Ok(plain("Hello, World!")),
        ("GET", "/sleep") => match query_u64(&req, "ms", MAX_SLEEP_MS) {
            Some(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(plain("ok"))
            }
            None => Ok(bad_request("ms=N, at most 60000")),
        },
        ("POST", "/upload") => upload(req),
        ("GET", "/download") => Ok(download(&req)),
        _ => {
            let mut response = plain("not found");
            *response.status_mut() = StatusCode::NOT_FOUND;
            Ok(response)
        }
    }
}

fn main() -> syncbridge::Result<()> {
    // `RUST_LOG` as `target=level` directives (`Targets`), not `EnvFilter`: its
    // directive parser and matchers are code a start touches, and at idle the process
    // held 0.4–0.5 MiB more of its executable resident with it (docs/benchmarks.md).
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| "warn".parse().expect("a filter"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "18080".to_owned());
    Server::try_bind(format!("127.0.0.1:{port}"))?.serve(route)
}
