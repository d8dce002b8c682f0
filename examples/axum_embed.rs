//! Embedding a legacy blocking app in an axum server: async routes and sync handlers on
//! one port, one runtime (the host's), one graceful shutdown, one set of tower-http
//! layers.
//!
//! ```text
//! cargo run --example axum_embed                  # 127.0.0.1:3000, or $PORT
//! curl http://127.0.0.1:3000/async                # an async axum handler
//! curl http://127.0.0.1:3000/async/blocking       # async handler -> ensure_async
//! curl http://127.0.0.1:3000/legacy/hello         # a blocking handler on a pool thread
//! curl 'http://127.0.0.1:3000/legacy/wait?ms=50'  # blocking handler -> ensure_sync
//! curl -H 'accept-encoding: gzip' -i http://127.0.0.1:3000/legacy/report
//! ```
//!
//! The `TimeoutLayer` answers `408` when a request takes too long, but it cannot stop a
//! blocking handler: that one finishes on its thread and its response is dropped. Bound
//! the blocking work itself (and the pool) as well.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use syncbridge::{ensure_async_on, ensure_sync, BlockingPool, Request, SyncService};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// The legacy app's limits, stated rather than left to the defaults: handler threads
/// (shared with the async routes' blocking calls), requests waiting for one, and the
/// largest request body.
const LEGACY_THREADS: usize = 64;
const LEGACY_QUEUE: usize = 256;
const LEGACY_MAX_BODY: u64 = 1 << 20;

/// The whole app with a 10 second request timeout.
pub fn app() -> Router {
    app_with_timeout(Duration::from_secs(10))
}

/// The whole app, with `timeout` for the `TimeoutLayer` (tests use a short one).
pub fn app_with_timeout(timeout: Duration) -> Router {
    app_on(legacy_pool(), timeout)
}

/// The pool the legacy app's handlers and the async routes' blocking calls share.
pub fn legacy_pool() -> BlockingPool {
    BlockingPool::builder()
        .max_threads(LEGACY_THREADS)
        .queue_capacity(LEGACY_QUEUE)
        .build()
}

/// The whole app on `pool`, which the caller keeps to see its load (`pool.stats()`) and
/// to wait for its handlers at exit (`pool.wait_idle`).
pub fn app_on(pool: BlockingPool, timeout: Duration) -> Router {
    // The legacy app: its handler runs on the service's bounded pool; `ensure_sync` in it
    // reaches the runtime that calls the service, that is the host's.
    let legacy = SyncService::builder(legacy)
        .pool(pool.clone())
        .max_body_size(LEGACY_MAX_BODY)
        .build();
    Router::new()
        .route("/async", get(|| async { "hello from an async route\n" }))
        .route(
            "/async/blocking",
            get(move || {
                // Shares the legacy app's pool, so both obey one thread limit.
                let pool = pool.clone();
                async move {
                    match ensure_async_on(&pool, legacy_lookup).await {
                        Ok(text) => (StatusCode::OK, text).into_response(),
                        Err(err) => blocking_call_failed(&err),
                    }
                }
            }),
        )
        // `nest_service` strips the prefix: the legacy app sees `/hello`.
        .nest_service("/legacy", legacy)
        // The first layer is the outermost: trace everything, then time out, then compress.
        .layer((
            TraceLayer::new_for_http(),
            TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout),
            CompressionLayer::new(),
        ))
}

/// An async route's blocking call that failed: `503` with `Retry-After` when the pool had
/// no room in time or is shutting down (another instance may take the retry), else a
/// logged `500` (a panic in the call) with a generic body.
fn blocking_call_failed(err: &syncbridge::Error) -> Response {
    if err.is_overloaded() || err.is_timeout() || err.is_shutdown() {
        tracing::warn!(error = %err, "blocking call refused; answered 503");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy, retry later\n",
        )
            .into_response();
    }
    tracing::error!(error = %err, "blocking call failed; answered 500");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

/// The legacy WSGI-style app: an ordinary blocking function from request to response.
/// An `Err` from `ensure_sync` is left to the bridge: `503` with `Retry-After` while the
/// runtime goes away, a logged `500` for a panic.
fn legacy(req: Request) -> syncbridge::Result<(StatusCode, String)> {
    Ok(match req.uri().path() {
        "/hello" => (
            StatusCode::OK,
            format!(
                "hello from a blocking handler on {}\n",
                std::thread::current().name().unwrap_or("an unnamed thread")
            ),
        ),
        "/wait" => {
            let ms = match req.uri().query() {
                None => Some(10),
                Some(query) => query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("ms="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|ms| *ms <= 10_000),
            };
            let Some(ms) = ms else {
                let usage = "expected ?ms=N with N at most 10000\n".to_owned();
                return Ok((StatusCode::BAD_REQUEST, usage));
            };
            // A legacy handler awaiting async code on the host's runtime. The `async move`
            // block matters: `sleep` is built when the block first runs, on the runtime;
            // built here, on the handler thread, it would panic ("no reactor running").
            ensure_sync(async move { tokio::time::sleep(Duration::from_millis(ms)).await })?;
            (
                StatusCode::OK,
                format!("waited {ms} ms on the host runtime\n"),
            )
        }
        "/report" => (
            StatusCode::OK,
            "a line of a long, very compressible report\n".repeat(200),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    })
}

/// A blocking call an async route needs: a sync client, a file, a C library.
fn legacy_lookup() -> String {
    format!(
        "blocking lookup done on {}\n",
        std::thread::current().name().unwrap_or("an unnamed thread")
    )
}

#[allow(dead_code)] // the example's entry point; tests include this file for `app`
#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=debug".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("serving on http://{}", listener.local_addr()?);
    let pool = legacy_pool();
    // One graceful shutdown for both worlds: axum stops accepting and waits for every
    // in-flight request, async or blocking.
    axum::serve(listener, app_on(pool.clone(), Duration::from_secs(10)))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // What axum does not wait for: a blocking handler the `TimeoutLayer` answered `408`
    // for runs on, and a thread cannot be interrupted. Give it time to finish its work
    // (a write to a database, say); what still runs then is logged by `wait_idle`.
    pool.wait_idle(Duration::from_secs(10)).await;
    Ok(())
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send). A signal handler that cannot
/// be installed is logged, and that signal is not waited for.
#[allow(dead_code)] // used by `main` only
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    // Windows has no SIGTERM; a service stop there is Ctrl-C's console event.
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
