//! The axum embedding example over real HTTP, served in-process on the test's own
//! runtime (current-thread unless stated), with axum's graceful shutdown.
mod support;

#[path = "../examples/axum_embed.rs"]
mod axum_embed;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use support::{collect, get, h1, within, Reply};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The router served on 127.0.0.1:0 until the returned sender fires.
struct Embedded {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
}

async fn serve(router: axum::Router) -> Embedded {
    support::logs::install();
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = oneshot::channel::<()>();
    let served = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = signal.await;
            })
            .into_future(),
    );
    Embedded {
        addr,
        shutdown,
        served,
    }
}

impl Embedded {
    async fn stop(self) {
        let _ = self.shutdown.send(());
        within(self.served).await.unwrap().unwrap();
    }
}

async fn get_with(addr: SocketAddr, path: &str, accept_encoding: &str) -> Reply {
    let mut send = h1::<Empty<Bytes>>(addr).await;
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .header("accept-encoding", accept_encoding)
        .body(Empty::new())
        .unwrap();
    collect(within(send.send_request(req)).await.unwrap()).await
}

async fn async_and_legacy_routes_answer() {
    let server = serve(axum_embed::app()).await;
    let reply = get(server.addr, "/async").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from an async route\n");

    let reply = get(server.addr, "/legacy/hello").await;
    assert_eq!(reply.status, 200);
    // Answered by the blocking handler on a pool thread, not a runtime thread.
    assert_eq!(
        reply.text(),
        "hello from a blocking handler on syncbridge-worker\n"
    );

    // ensure_sync inside the legacy handler runs on the host's runtime.
    let reply = get(server.addr, "/legacy/wait?ms=20").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "waited 20 ms on the host runtime\n");

    let reply = get(server.addr, "/async/blocking").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "blocking lookup done on syncbridge-worker\n");

    assert_eq!(get(server.addr, "/legacy/nope").await.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn embedded_on_current_thread_runtime_including_ensure_sync() {
    async_and_legacy_routes_answer().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_on_multi_thread_runtime() {
    async_and_legacy_routes_answer().await;
}

#[tokio::test]
async fn legacy_responses_are_compressed_by_the_host_layer() {
    let server = serve(axum_embed::app()).await;
    let plain = get_with(server.addr, "/legacy/report", "identity").await;
    let gzip = get_with(server.addr, "/legacy/report", "gzip").await;
    assert_eq!(plain.status, 200);
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(gzip.headers["content-encoding"], "gzip");
    assert!(
        gzip.body.len() * 4 < plain.body.len(),
        "gzip {} bytes vs plain {}",
        gzip.body.len(),
        plain.body.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn host_timeout_layer_answers_408_for_a_slow_legacy_handler() {
    let server = serve(axum_embed::app_with_timeout(Duration::from_millis(100))).await;
    let start = Instant::now();
    let reply = get(server.addr, "/legacy/wait?ms=3000").await;
    assert_eq!(reply.status, 408);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The handler itself is still parked in ensure_sync; shutting the host down must not
    // wait for it (the connection is done), and its sleep dies with the runtime.
    server.stop().await;
}

#[tokio::test]
async fn the_host_can_wait_for_a_legacy_handler_its_timeout_layer_gave_up_on() {
    let pool = axum_embed::legacy_pool();
    let server = serve(axum_embed::app_on(pool.clone(), Duration::from_millis(100))).await;
    // A handler of 4 s: still running at the check below, which comes a 100 ms timeout
    // and a shutdown after the request, however slowly; and done well within the 8 s
    // wait after it.
    let reply = get(server.addr, "/legacy/wait?ms=4000").await;
    assert_eq!(reply.status, 408);
    server.stop().await;

    // axum is done; the handler is not, and a wait that ends at once says so.
    let left = within(pool.wait_idle(Duration::ZERO)).await;
    assert_eq!((left.busy, left.queued), (1, 0));
    assert!(support::logs::contains(&[
        "blocking jobs still running after waiting for the pool to go idle",
        "running=1",
    ]));
    // Given the time, it returns as soon as the handler has ended.
    let start = Instant::now();
    let left = within(pool.wait_idle(Duration::from_secs(8))).await;
    assert_eq!((left.busy, left.queued), (0, 0));
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    // Idle already: no wait at all.
    let left = within(pool.wait_idle(Duration::from_secs(8))).await;
    assert_eq!(left.busy, 0);
}

#[tokio::test]
async fn graceful_shutdown_lets_an_inflight_legacy_request_finish() {
    // A layer of the test's own tells when the request is inside the app, so that the
    // shutdown starts while it is in flight (no sleeps).
    let (entered_tx, mut entered) = mpsc::channel::<()>(4);
    let router = axum_embed::app().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let entered_tx = entered_tx.clone();
            async move {
                let _ = entered_tx.try_send(());
                next.run(req).await
            }
        },
    ));
    let server = serve(router).await;
    let addr = server.addr;
    let sent = Instant::now();
    let inflight = tokio::spawn(async move { get(addr, "/legacy/wait?ms=200").await });
    within(entered.recv()).await.unwrap();
    server.stop().await;
    // `stop` returned only after the in-flight request was answered, which cannot be
    // sooner than its 200 ms after it was sent.
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "{:?}",
        sent.elapsed()
    );
    let reply = within(inflight).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "waited 200 ms on the host runtime\n");
}

#[tokio::test]
async fn a_task_set_the_legacy_handler_captured_runs_its_tasks_on_the_hosts_runtime() {
    // Built in async code but never used there: the set learns its runtime from the
    // handler thread's context, whatever route comes first.
    let tasks = syncbridge::TaskSet::new();
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel();
    let legacy = syncbridge::SyncService::new({
        let tasks = tasks.clone();
        move |_req: syncbridge::Request| -> syncbridge::Result<&'static str> {
            let ran_tx = ran_tx.clone();
            // Detached: the test hears from the task itself.
            let _detached = tasks.spawn_blocking(move |_ctx| {
                ran_tx.send(()).unwrap();
                Ok::<_, std::io::Error>(())
            })?;
            Ok("queued")
        }
    });
    let app = serve(axum::Router::new().nest_service("/legacy", legacy)).await;
    let reply = get(app.addr, "/legacy/report").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "queued");
    within(ran_rx.recv()).await.expect("the task ran");
    app.stop().await;
}

#[tokio::test]
async fn a_chunked_body_past_a_host_limit_layer_gets_413_not_400() {
    // tower-http answers a declared length over its limit itself; a chunked body meets
    // the limit only while the legacy handler reads it.
    let legacy = syncbridge::SyncService::new(|mut req: syncbridge::Request| {
        std::io::copy(req.body_mut(), &mut std::io::sink())?;
        std::io::Result::Ok("read it all")
    });
    let limited = tower::ServiceBuilder::new()
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024))
        .service(legacy);
    let app = serve(axum::Router::new().nest_service("/legacy", limited)).await;
    let (body_tx, body) = support::channel_body(4);
    let mut send = h1(app.addr).await;
    let req = http::Request::post("/legacy/upload")
        .header("host", app.addr.to_string())
        .body(body)
        .unwrap();
    let response = tokio::spawn(send.send_request(req));
    for _ in 0..4 {
        // The server may stop reading once it has answered: a refused part is fine.
        if body_tx.send(Bytes::from(vec![b'x'; 1024])).await.is_err() {
            break;
        }
    }
    drop(body_tx);
    let reply = collect(within(response).await.unwrap().expect("a response")).await;
    assert_eq!(reply.status, 413);
    app.stop().await;
}

/// `legacy` at `/legacy`, behind what tower-http's `TraceLayer` does by default, with
/// the `x-request-id` each request brings in its span to tell requests apart.
fn traced_at_legacy<H: syncbridge::Handler>(legacy: syncbridge::SyncService<H>) -> axum::Router {
    let traced = tower::ServiceBuilder::new()
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &http::Request<axum::body::Body>| {
                    let id = req.headers()["x-request-id"].to_str().unwrap().to_owned();
                    tracing::info_span!(target: "app", "request", id)
                },
            ),
        )
        .service(legacy);
    axum::Router::new().nest_service("/legacy", traced)
}

#[tokio::test]
async fn a_request_whose_client_left_is_said_inside_the_hosts_request_span() {
    use tokio::io::AsyncWriteExt;
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let gate = std::sync::Mutex::new((started_tx, release_rx));
    let legacy = syncbridge::SyncService::new(move |_req: syncbridge::Request| {
        let gate = gate.lock().unwrap();
        gate.0.send(()).unwrap();
        let _ = gate.1.recv_timeout(support::STEP);
        "too late"
    });
    let app = serve(traced_at_legacy(legacy)).await;
    // The "abandoned" line is throttled to one a second for the whole binary, whose other
    // tests abandon requests too (a host's timeout layer gives up on them): a client
    // leaves again, under a request id of its own, until one of its lines gets through.
    // Each request's access line (its 499) is not throttled, and comes after that line.
    let deadline = Instant::now() + support::STEP;
    for attempt in 0.. {
        let id = format!("r-left-{attempt}");
        let mut gone = within(tokio::net::TcpStream::connect(app.addr))
            .await
            .unwrap();
        let head = format!("GET /legacy/wait HTTP/1.1\r\nhost: x\r\nx-request-id: {id}\r\n\r\n");
        within(gone.write_all(head.as_bytes())).await.unwrap();
        within(started.recv()).await.expect("the handler started");
        // The client leaves while its handler runs: hyper drops the request's future, and
        // then its response, after the host's span was last entered.
        drop(gone);
        let span = format!("in {{request id=\"{id}\" }}");
        assert!(
            support::logs::eventually_contains(&["status=499", &span]).await,
            "the 499 not logged in the span of the request"
        );
        release.send(()).unwrap();
        if support::logs::contains(&["request abandoned before its response", &span]) {
            break;
        }
        // Throttled (or logged outside the span): tried again until the step runs out.
        assert!(
            Instant::now() < deadline,
            "\"request abandoned before its response\" not logged in the span of any of \
             {} requests whose client left",
            attempt + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn the_legacy_handler_and_its_ensure_sync_log_inside_the_hosts_request_span() {
    let legacy = syncbridge::SyncService::new(
        |req: syncbridge::Request| -> syncbridge::Result<&'static str> {
            tracing::info!(target: "app", "legacy handler ran");
            syncbridge::ensure_sync(async {
                tracing::info!(target: "app", "its async call ran");
            })?;
            if req.uri().path().ends_with("/panic") {
                support::panic_quietly("the legacy handler gave up");
            }
            Ok("logged")
        },
    );
    let app = serve(traced_at_legacy(legacy)).await;
    for (id, path, status) in [("r-1", "/legacy/ok", 200), ("r-2", "/legacy/panic", 500)] {
        let mut send = h1::<Empty<Bytes>>(app.addr).await;
        let req = http::Request::get(path)
            .header("host", app.addr.to_string())
            .header("x-request-id", id)
            .body(Empty::new())
            .unwrap();
        let reply = collect(within(send.send_request(req)).await.unwrap()).await;
        assert_eq!(reply.status, status);
        let span = format!("in {{request id=\"{id}\" }}");
        for line in ["legacy handler ran", "its async call ran"] {
            assert!(
                support::logs::contains(&[line, &span]),
                "{line:?} not logged in the span of request {id}"
            );
        }
        // Its access line too, written as hyper drops the response body: outside the
        // host's span unless the service enters it.
        let status = format!("status={status}");
        assert!(
            support::logs::eventually_contains(&[&status, "complete=true", &span]).await,
            "the access line of request {id} not in its span"
        );
    }
    // The crate's own line about the panic names the request too.
    assert!(support::logs::contains(&[
        "handler panicked",
        "in {request id=\"r-2\" }"
    ]));
    app.stop().await;
}

#[tokio::test]
async fn a_task_set_given_to_the_service_is_the_legacy_handlers_current_one() {
    let tasks = syncbridge::TaskSet::new();
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel();
    let legacy = syncbridge::SyncService::builder(
        move |_req: syncbridge::Request| -> syncbridge::Result<String> {
            let ran_tx = ran_tx.clone();
            let handle = syncbridge::TaskSet::current()?.spawn_blocking(move |_ctx| {
                ran_tx.send(()).unwrap();
                Ok::<_, std::io::Error>(())
            })?;
            Ok(handle.id().to_string())
        },
    )
    .tasks(tasks.clone())
    .build();
    let app = serve(axum::Router::new().nest_service("/legacy", legacy)).await;
    let reply = get(app.addr, "/legacy/report").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    within(ran_rx.recv()).await.expect("the task ran");
    let id = syncbridge::TaskId::parse(&reply.text()).expect("a task id");
    app.stop().await;
    // The host drains the set it gave.
    within(tasks.shutdown(Duration::from_secs(5))).await;
    assert_eq!(tasks.status(id), syncbridge::TaskStatus::Succeeded);
}

/// A producer that takes no notice of its failed writes, behind a host with no watch on
/// its connections: one write fails for a client that took nothing for the body timeout,
/// and the client then reads on. The body must not end as if whole, with a hole where
/// that write was: the response is aborted instead.
#[tokio::test]
async fn a_stream_that_lost_a_chunk_to_a_stalled_client_is_not_passed_off_as_whole() {
    use syncbridge::{Request, Response, ResponseBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 512; // 32 MiB: more than the socket buffers hold (up to 4 MiB each)
    let (failed_tx, failed_rx) = std::sync::mpsc::channel::<()>();
    let failed_tx = std::sync::Mutex::new(failed_tx);
    let legacy = syncbridge::SyncService::builder(move |_req: Request| {
        let failed_tx = failed_tx.lock().unwrap().clone();
        Response::new(ResponseBody::from_writer(move |w| {
            let chunk = vec![b'z'; CHUNK];
            let mut told = false;
            for _ in 0..CHUNKS {
                let wrote = w.write_all(&chunk).and_then(|()| w.flush());
                if wrote.is_err() && !told {
                    told = true;
                    let _ = failed_tx.send(());
                }
            }
            Ok(())
        }))
    })
    .body_timeout(Duration::from_millis(300))
    .build();
    let server = serve(axum::Router::new().route_service("/stream", legacy)).await;

    // A client with a small receive buffer that reads nothing until a write has failed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = within(socket.connect(server.addr)).await.unwrap();
    let request = b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    within(stream.write_all(request)).await.unwrap();
    support::received(failed_rx, "a write failed for the stalled client").await;

    let mut received = Vec::new();
    let _ = within(stream.read_to_end(&mut received)).await;
    let body = received.iter().filter(|&&b| b == b'z').count();
    assert!(
        !received.ends_with(b"0\r\n\r\n"),
        "ended as a whole body with {body} of {} bytes",
        CHUNK * CHUNKS
    );
    assert!(body < CHUNK * CHUNKS, "{body} bytes");
    server.stop().await;
}
