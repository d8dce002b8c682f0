//! Prometheus metrics for a blocking app: the `metrics` feature reports to the recorder
//! installed here, and a second server, on a port of its own with a pool of its own,
//! serves them on `/metrics`, as `prometheus_client.start_http_server` does beside a
//! WSGI app. Served by the app's own pool, a scrape would wait behind the busy handlers
//! (or be answered `503`) exactly when the numbers matter.
//!
//! ```text
//! cargo run --release --example metrics --features metrics
//! curl http://127.0.0.1:8000/slow; curl http://127.0.0.1:8000/boom
//! curl http://127.0.0.1:9464/metrics
//! ```
//!
//! `/metrics` then shows `syncbridge_requests_total{status="200"}`,
//! `syncbridge_handler_failures_total{kind="panic"}`, the duration histogram's buckets
//! and the server's load (`syncbridge_pool_busy_threads{listener="127.0.0.1:8000"}`,
//! sampled once a second). The names are in `docs/operations.md`, "Metrics".

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use syncbridge::http::{header, Response};
use syncbridge::{Request, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Installed before the server is built, so that the metrics carry their `# HELP`.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("syncbridge_request_duration_seconds".to_owned()),
            &[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0],
        )?
        .install_recorder()?;
    // The exporter leaves its upkeep (draining histogram samples) to its caller: without
    // a scrape, samples would pile up.
    let upkeep = prometheus.clone();
    std::thread::Builder::new()
        .name("prometheus-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })?;

    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let metrics_port = std::env::var("METRICS_PORT").unwrap_or_else(|_| "9464".to_owned());
    let server = Server::try_bind(format!("127.0.0.1:{port}"))?;
    // One thread and a small queue: scrapes are few, and each renders in microseconds.
    // Its own signal handling off: it stops when the app's server has (below). Its
    // scrapes count in `syncbridge_requests_total` too, one per scrape interval; its
    // load has a `listener` label of its own.
    let metrics_server = Server::try_bind(format!("127.0.0.1:{metrics_port}"))?
        .max_threads(1)
        .queue_capacity(4)
        .handle_signals(false);
    println!(
        "serving on http://{}; metrics on http://{}/metrics",
        server.local_addr(),
        metrics_server.local_addr()
    );
    let stop_metrics = metrics_server.shutdown_handle();
    let metrics_thread = std::thread::spawn(move || {
        metrics_server.serve(move |_req: Request| {
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(prometheus.render())
        })
    });
    let served = server.serve(|req: Request| match req.uri().path() {
        "/slow" => {
            // A blocking call, as a legacy handler makes: it holds its thread, not the
            // runtime's.
            std::thread::sleep(Duration::from_millis(200));
            Response::new("slow\n".to_owned())
        }
        "/boom" => panic!("a bug in the legacy code"),
        _ => Response::new("hello\n".to_owned()),
    });
    stop_metrics.shutdown();
    let metrics_served = metrics_thread.join().expect("the metrics server's thread");
    served?;
    metrics_served?;
    Ok(())
}
