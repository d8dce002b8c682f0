//! A legacy blocking handler that fans out three concurrent async calls with
//! `ensure_sync` and answers when all are done: it waits for the longest, not the sum.
//!
//! ```text
//! cargo run --example fanout          # 127.0.0.1:8000, or $PORT
//! curl 'http://127.0.0.1:8000/fanout?ms=200'       # about 200 ms
//! curl 'http://127.0.0.1:8000/sequential?ms=200'   # about 600 ms, for contrast
//! ```
//!
//! The three calls run on the server's persistent runtime, not on a runtime built per
//! request (the Flask `asyncio.run` pattern); the handler thread parks until they finish.

use std::time::{Duration, Instant};

use syncbridge::http::StatusCode;
use syncbridge::{ensure_sync, Request, Server};

/// The longest wait a request may ask for, so that one query string cannot hold a thread
/// for ever.
const MAX_MS: u64 = 10_000;

/// Stands for an async HTTP or database call that takes `ms` milliseconds.
async fn backend_call(name: &'static str, ms: u64) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    name
}

/// `GET /fanout?ms=N`: three calls of N ms at once. `GET /sequential?ms=N`: the same
/// three, one after another.
///
/// `ensure_sync` fails only when the runtime is going away (the bridge answers `503` with
/// `Retry-After`) or a call panicked (a logged `500`): `?` leaves both to the bridge.
pub fn handler(req: Request) -> syncbridge::Result<(StatusCode, String)> {
    let Some(ms) = query_ms(&req) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            format!("expected ?ms=N with N at most {MAX_MS}\n"),
        ));
    };
    let start = Instant::now();
    let joined = match req.uri().path() {
        "/fanout" => ensure_sync(async move {
            let (a, b, c) = tokio::join!(
                backend_call("users", ms),
                backend_call("orders", ms),
                backend_call("stock", ms),
            );
            [a, b, c]
        }),
        "/sequential" => ensure_sync(async move {
            [
                backend_call("users", ms).await,
                backend_call("orders", ms).await,
                backend_call("stock", ms).await,
            ]
        }),
        _ => return Ok((StatusCode::NOT_FOUND, "try /fanout?ms=200\n".to_owned())),
    };
    let names = joined?;
    Ok((
        StatusCode::OK,
        format!(
            "{} in {} ms\n",
            names.join(","),
            start.elapsed().as_millis()
        ),
    ))
}

fn query_ms(req: &Request) -> Option<u64> {
    let query = req.uri().query()?;
    let value = query.split('&').find_map(|pair| pair.strip_prefix("ms="))?;
    value.parse().ok().filter(|ms| *ms <= MAX_MS)
}

#[allow(dead_code)] // the example's entry point; tests include this file for `handler`
fn main() -> syncbridge::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let server = Server::try_bind(format!("127.0.0.1:{port}"))?;
    println!("serving on http://{}/fanout?ms=200", server.local_addr());
    server.serve(handler)
}
