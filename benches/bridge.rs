//! The bridge alone, in process, no sockets: what one request costs through
//! `SyncService` (hand-off to a pool thread and back) against an async `service_fn`
//! (the ceiling: no hand-off at all).
//!
//! ```text
//! cargo bench --bench bridge                  # wall-clock ns per request
//! BRIDGE_BENCH_N=20000 valgrind --tool=callgrind target/release/deps/bridge-*  # instructions
//! ```
//!
//! Two shapes: one request at a time (latency of the hand-off) and 64 in flight (the
//! W1 shape, where batching can pay). Runs on a current-thread runtime, like the bench
//! harness's one pinned core.

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty, Full};
use syncbridge::{Request, SyncService};

fn request() -> http::Request<Empty<Bytes>> {
    http::Request::get("/hello").body(Empty::new()).unwrap()
}

fn hello(_req: Request) -> &'static str {
    "Hello, World!"
}

async fn async_hello(
    _req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

/// Sends `n` requests through `service`, `width` at a time, and checks every body.
async fn run<S, B>(service: &S, n: usize, width: usize)
where
    S: hyper::service::Service<http::Request<Empty<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    for _ in 0..n / width {
        let calls = (0..width).map(|_| async {
            let response = service.call(request()).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        });
        for body in join_all(calls).await {
            assert_eq!(&body[..], b"Hello, World!");
        }
    }
}

fn main() {
    let n: usize = std::env::var("BRIDGE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = SyncService::new(hello as fn(Request) -> &'static str);
    let async_service = hyper::service::service_fn(async_hello);
    rt.block_on(async {
        // Warm up: start the pool's threads and fault in the allocator.
        run(&service, 1000, 1).await;
        for width in [1, 64] {
            let t = Instant::now();
            run(&async_service, n, width).await;
            let ceiling = t.elapsed().as_nanos() as f64 / n as f64;
            let t = Instant::now();
            run(&service, n, width).await;
            let bridged = t.elapsed().as_nanos() as f64 / n as f64;
            println!(
                "in flight {width:>2}: async service_fn {ceiling:8.0} ns/req   SyncService {bridged:8.0} ns/req   ratio {:.2}   pool threads {}",
                bridged / ceiling,
                service.pool().stats().peak_threads
            );
        }
    });
}
