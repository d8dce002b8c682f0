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

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use syncbridge::{ensure_async_on, ensure_sync, Request, SyncService};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// The whole app with a 10 second request timeout.
pub fn app() -> Router {
    app_with_timeout(Duration::from_secs(10))
}

/// The whole app, with `timeout` for the `TimeoutLayer` (tests use a short one).
pub fn app_with_timeout(timeout: Duration) -> Router {
    // The legacy app: its handler runs on the service's bounded pool; `ensure_sync` in it
    // reaches the runtime that calls the service, that is the host's.
    let legacy = SyncService::new(legacy);
    let pool = legacy.pool().clone();
    Router::new()
        .route("/async", get(|| async { "hello from an async route\n" }))
        .route(
            "/async/blocking",
            get(move || {
                // Shares the legacy app's pool, so both obey one thread limit.
                let pool = pool.clone();
                async move {
                    match ensure_async_on(&pool, legacy_lookup).await {
                        Ok(text) => (StatusCode::OK, text),
                        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")),
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

/// The legacy WSGI-style app: an ordinary blocking function from request to response.
fn legacy(req: Request) -> (StatusCode, String) {
    match req.uri().path() {
        "/hello" => (
            StatusCode::OK,
            format!(
                "hello from a blocking handler on {}\n",
                std::thread::current().name().unwrap_or("an unnamed thread")
            ),
        ),
        "/wait" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(10)
                .min(10_000);
            // A legacy handler awaiting async code on the host's runtime. The `async move`
            // block matters: `sleep` is built when the block first runs, on the runtime;
            // built here, on the handler thread, it would panic ("no reactor running").
            match ensure_sync(async move { tokio::time::sleep(Duration::from_millis(ms)).await }) {
                Ok(()) => (
                    StatusCode::OK,
                    format!("waited {ms} ms on the host runtime\n"),
                ),
                Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")),
            }
        }
        "/report" => (
            StatusCode::OK,
            "a line of a long, very compressible report\n".repeat(200),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
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
    // One graceful shutdown for both worlds: axum stops accepting and waits for every
    // in-flight request, async or blocking.
    axum::serve(listener, app())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
