//! The `metrics` feature, as a dashboard would show it: requests that succeed, panic,
//! fail, time out and are refused, a background task that fails, and the server's load.
//! A binary of its own: it installs the process's one recorder.
#![cfg(feature = "metrics")]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use support::{get, panic_quietly, within, TestServer, STEP};
use syncbridge::{BlockingPool, IntoResponse, Request, Response, ResponseBody, Server, TaskSet};

/// A metric's value as the recorder holds it: a counter's count, a gauge's value (as
/// `f64` bits) or a histogram's number of samples. Each change is also sent to the
/// test as `(name{labels}, value)`.
struct Cell {
    key: String,
    value: AtomicU64,
    changes: mpsc::Sender<(String, f64)>,
}

impl Cell {
    fn changed(&self, value: f64) {
        let _ = self.changes.send((self.key.clone(), value));
    }
}

impl metrics::CounterFn for Cell {
    fn increment(&self, by: u64) {
        let now = self.value.fetch_add(by, SeqCst) + by;
        self.changed(now as f64);
    }
    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, SeqCst);
        self.changed(value as f64);
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, by: f64) {
        self.set(f64::from_bits(self.value.load(SeqCst)) + by);
    }
    fn decrement(&self, by: f64) {
        self.set(f64::from_bits(self.value.load(SeqCst)) - by);
    }
    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), SeqCst);
        self.changed(value);
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, _value: f64) {
        let now = self.value.fetch_add(1, SeqCst) + 1;
        self.changed(now as f64);
    }
}

/// An error whose `Display` panics, as a buggy one can.
#[derive(Debug)]
struct PanickingDisplay;

impl std::fmt::Display for PanickingDisplay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic_quietly("a Display that panics")
    }
}

impl std::error::Error for PanickingDisplay {}

/// Keeps every metric by `name{label=value,...}`.
struct TestRecorder {
    cells: Mutex<HashMap<String, Arc<Cell>>>,
    changes: Mutex<mpsc::Sender<(String, f64)>>,
    described: Mutex<Vec<String>>,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut name = key.name().to_owned();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if !labels.is_empty() {
            name = format!("{name}{{{}}}", labels.join(","));
        }
        let changes = self.changes.lock().unwrap().clone();
        self.cells
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Cell {
                    key: name,
                    value: AtomicU64::new(0),
                    changes,
                })
            })
            .clone()
    }

    /// A counter's count, or a histogram's number of samples (0 when never touched).
    fn count(&self, key: &str) -> u64 {
        let cells = self.cells.lock().unwrap();
        cells.get(key).map_or(0, |c| c.value.load(SeqCst))
    }

    /// A gauge's value (NaN when never set).
    fn gauge(&self, key: &str) -> f64 {
        let cells = self.cells.lock().unwrap();
        cells
            .get(key)
            .map_or(f64::NAN, |c| f64::from_bits(c.value.load(SeqCst)))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

/// Installs the recorder (once) and returns it with the receiving end of its changes.
fn recorder() -> (&'static TestRecorder, mpsc::Receiver<(String, f64)>) {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    let (changes_tx, changes_rx) = mpsc::channel();
    let recorder = RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::new(TestRecorder {
            cells: Mutex::default(),
            changes: Mutex::new(changes_tx.clone()),
            described: Mutex::default(),
        }));
        metrics::set_global_recorder(recorder).expect("the only recorder");
        recorder
    });
    *recorder.changes.lock().unwrap() = changes_tx;
    (recorder, changes_rx)
}

/// Waits (at most [`STEP`]) until gauge `key` has a value that `wanted` accepts: at
/// once if it has one now (its value is stored before its change is sent, so a change
/// not seen here is still to come on `changes`).
fn wait_for_gauge(
    recorder: &TestRecorder,
    changes: &mpsc::Receiver<(String, f64)>,
    key: &str,
    wanted: impl Fn(f64) -> bool,
) {
    if !wanted(recorder.gauge(key)) {
        wait_for(changes, key, wanted);
    }
}

/// Waits (at most [`STEP`]) until `key` changes to a value that `wanted` accepts.
fn wait_for(changes: &mpsc::Receiver<(String, f64)>, key: &str, wanted: impl Fn(f64) -> bool) {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match changes.recv_timeout(left) {
            Ok((changed, value)) if changed == key && wanted(value) => return,
            Ok(_) => {}
            Err(_) => panic!("{key} did not change as wanted within {STEP:?}"),
        }
    }
}

/// A connection whose `GET /` got `status`, left open.
async fn answered(addr: std::net::SocketAddr, status: u16) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = support::read_raw_response(&mut stream).await;
    assert_eq!(reply.map(|r| r.status), Some(status));
    stream
}

/// The dashboard test's server's stream timeout.
const STREAM_TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_sees_each_outcome_once() {
    let (recorder, changes) = recorder();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    let release_rx = Mutex::new(release_rx);
    // One thread and no queue: while `/hold` runs, any other request is refused.
    let pool = BlockingPool::builder()
        .max_threads(1)
        .queue_capacity(0)
        .build();
    // The stream timeout counts from a request's arrival: 500 ms leaves a producer that
    // fails at once (`/stream-error`) ample time to fail before it, on a loaded machine
    // too. The handler timeout, 2 s, is as far past `/late-stream`'s sleep, which it must
    // not cut short; it is also how long `/hold` waits for its 504.
    let server = Server::bind("127.0.0.1:0")
        .pool(pool.clone())
        .handler_timeout(Duration::from_secs(2))
        .stream_timeout(STREAM_TIMEOUT)
        .header_read_timeout(Duration::from_millis(300));
    // The same pool reported under a name of its own, as an embedded service's would be.
    let pool_gauges = pool.report_gauges("embedded").expect("in a runtime");
    let outside = pool.clone();
    let outside = std::thread::spawn(move || outside.report_gauges("nowhere").map(drop));
    let outside = outside
        .join()
        .unwrap()
        .expect_err("no runtime on a plain thread");
    assert!(outside.is_no_context(), "{outside}");
    // Nor on a runtime without timers: its sampler could never tick.
    let untimed = pool.clone();
    let untimed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { untimed.report_gauges("untimed").map(drop) })
    });
    let untimed = untimed.join().unwrap().expect_err("no timers");
    assert!(untimed.is_no_context(), "{untimed}");
    let server = TestServer::start_with(
        server,
        move |req: Request| -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
            match req.uri().path() {
                "/panic" => panic_quietly("a bug"),
                "/error" => Err(support::cart_error().into()),
                // Its log line panics: one failure, counted as the panic it became.
                "/bad-display" => Err(PanickingDisplay.into()),
                // The producer is the handler's code too: its failure is counted.
                "/stream-error" => Ok(Response::new(ResponseBody::from_writer(|_out| {
                    Err(std::io::Error::other("the export failed"))
                }))),
                // Returns its stream past the stream timeout (within the handler
                // timeout): its first write fails, and it is answered 504. Past it
                // whatever the machine's pace: the timeout counts from the request's
                // arrival, before the handler started.
                "/late-stream" => {
                    std::thread::sleep(STREAM_TIMEOUT + Duration::from_millis(200));
                    Ok(Response::new(ResponseBody::from_chunks(std::iter::once(
                        Ok(bytes::Bytes::from_static(b"too late")),
                    ))))
                }
                "/hold" => {
                    started_tx.lock().unwrap().send(()).unwrap();
                    release_rx.lock().unwrap().recv_timeout(STEP).unwrap();
                    Ok("held".into_response())
                }
                "/task" => {
                    let _detached = TaskSet::current()?.spawn_blocking(|_ctx| {
                        Err::<(), _>(std::io::Error::other("the report failed"))
                    })?;
                    Ok("spawned".into_response())
                }
                _ => Ok("ok".into_response()),
            }
        },
    );

    let busy_threads = format!("syncbridge_pool_busy_threads{{listener={}}}", server.addr);
    assert_eq!(get(server.addr, "/").await.status, 200);
    // One after the other on the pool's one thread, each once it is free: a failed
    // handler's thread logs its failure after its answer is out, and a request that
    // came meanwhile was refused: `/late-stream` got a 503 once, in about ten runs.
    for (path, status) in [
        ("/panic", 500),
        ("/error", 500),
        ("/stream-error", 500),
        ("/bad-display", 500),
        ("/late-stream", 504),
    ] {
        within(async {
            while pool.stats().busy > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert_eq!(get(server.addr, path).await.status, status, "{path}");
    }
    // A head that never ends, and one hyper's parser refuses: the server closes both.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let slow_reply = support::read_raw_response(&mut slow).await;
    assert_eq!(slow_reply.map(|r| r.status), Some(408));
    let mut bad = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    bad.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let bad_reply = support::read_raw_response(&mut bad).await;
    assert_eq!(bad_reply.map(|r| r.status), Some(400));
    // One that sends nothing (an unused preconnect): closed at the header read timeout.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(support::closed_by_server(&mut silent).await);
    // Past the handler timeout `/hold` is answered 504, and its thread stays busy.
    let held = tokio::spawn(get(server.addr, "/hold"));
    within(tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(STEP)
    }))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(within(held).await.unwrap().status, 504);
    assert_eq!(get(server.addr, "/").await.status, 503);
    // A refusal dropped before anyone polled it (a layer in front gave up): it never went
    // out, so it counts as the client's leaving (499), not as the 200 it starts as.
    let mut embedded = syncbridge::SyncService::builder(|_req: Request| "ok")
        .pool(pool.clone())
        .build();
    let request = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    drop(tower::Service::call(&mut embedded, request));
    // The load, as sampled once a second: the thread still runs the handler.
    let busy = busy_threads.clone();
    let changes = within(tokio::task::spawn_blocking(move || {
        wait_for(&changes, &busy, |v| v == 1.0);
        changes
    }))
    .await
    .unwrap();
    let embedded_busy = "syncbridge_pool_busy_threads{listener=embedded}";
    let changes = within(tokio::task::spawn_blocking(move || {
        wait_for_gauge(recorder, &changes, embedded_busy, |v| v == 1.0);
        changes
    }))
    .await
    .unwrap();
    release_tx.send(()).unwrap();
    // Its thread back, the pool takes the next request.
    let changes = within(tokio::task::spawn_blocking(move || {
        wait_for(&changes, &busy_threads, |v| v == 0.0);
        changes
    }))
    .await
    .unwrap();
    assert_eq!(get(server.addr, "/task").await.status, 200);
    let changes = within(tokio::task::spawn_blocking(move || {
        wait_for(
            &changes,
            "syncbridge_tasks_finished_total{status=failed}",
            |v| v == 1.0,
        );
        changes
    }))
    .await
    .unwrap();
    // An idle connection, sampled; the gauge goes back to 0 when the server stops. One
    // request first: idle before any, it would be closed at the header read timeout.
    let mut idle = support::h1::<http_body_util::Empty<bytes::Bytes>>(server.addr).await;
    let first = http::Request::get("/")
        .header("host", server.addr.to_string())
        .body(http_body_util::Empty::new())
        .unwrap();
    let first = within(idle.send_request(first)).await.unwrap();
    assert_eq!(support::collect(first).await.status, 200);
    let connections = format!("syncbridge_connections{{listener={}}}", server.addr);
    let key = connections.clone();
    let changes = within(tokio::task::spawn_blocking(move || {
        wait_for(&changes, &key, |v| v >= 1.0);
        changes
    }))
    .await
    .unwrap();
    // Every response has ended (and been counted) once the server has stopped.
    server.stop().await;
    assert_eq!(recorder.gauge(&connections), 0.0, "{connections} at stop");
    // The pool's own report: its thread still alive (kept for 10 s), then 0 once dropped;
    // and no connections gauge of its own.
    let embedded_threads = "syncbridge_pool_threads{listener=embedded}";
    assert_eq!(recorder.gauge(embedded_threads), 1.0, "{embedded_threads}");
    drop(pool_gauges);
    within(tokio::task::spawn_blocking(move || {
        wait_for_gauge(recorder, &changes, embedded_threads, |v| v == 0.0)
    }))
    .await
    .unwrap();
    assert!(recorder
        .gauge("syncbridge_connections{listener=embedded}")
        .is_nan());

    // Idle connections closed by a server at its limit of one: the first to make room
    // for the second, the second past the keep-alive timeout. (Two more 200s.) 2 s: the
    // first must still be idle, not closed for its keep-alive, when the second comes.
    let small = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_connections(1)
            .keep_alive_timeout(Some(Duration::from_secs(2))),
        |_req: Request| "ok",
    );
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut first = answered(small.addr, 200).await;
    let mut second = tokio::net::TcpStream::connect(small.addr).await.unwrap();
    second.write_all(request).await.unwrap();
    assert!(support::closed_by_server(&mut first).await, "made room");
    let reply = support::read_raw_response(&mut second).await;
    assert_eq!(reply.map(|r| r.status), Some(200));
    assert!(support::closed_by_server(&mut second).await, "keep-alive");
    small.stop().await;

    // A connection without the PROXY protocol header its server requires.
    let proxied = TestServer::start_with(
        Server::bind("127.0.0.1:0").proxy_protocol(true),
        |_req: Request| "ok",
    );
    let mut direct = tokio::net::TcpStream::connect(proxied.addr).await.unwrap();
    direct.write_all(request).await.unwrap();
    assert!(support::closed_by_server(&mut direct).await, "no header");
    proxied.stop().await;

    // A client over its cap of one connection: answered `503` by the server itself, not
    // the handler, and counted as a request so answered (as nginx's `limit_conn` logs it).
    let capped = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_connections_per_client(1),
        |_req: Request| "ok",
    );
    let _first = answered(capped.addr, 200).await;
    let _over = answered(capped.addr, 503).await;
    capped.stop().await;

    let expected = [
        ("syncbridge_requests_total{status=200}", 6),
        ("syncbridge_requests_total{status=500}", 4),
        ("syncbridge_requests_total{status=503}", 2),
        ("syncbridge_requests_total{status=504}", 2),
        ("syncbridge_requests_total{status=499}", 1),
        ("syncbridge_request_duration_seconds{class=2xx}", 6),
        ("syncbridge_request_duration_seconds{class=4xx}", 1),
        ("syncbridge_request_duration_seconds{class=5xx}", 8),
        ("syncbridge_requests_refused_total{reason=pool_full}", 2),
        ("syncbridge_requests_refused_total{reason=client_limit}", 1),
        ("syncbridge_handler_timeouts_total", 1),
        ("syncbridge_stream_timeouts_total", 1),
        ("syncbridge_handler_failures_total{kind=panic}", 2),
        ("syncbridge_handler_failures_total{kind=error}", 2),
        ("syncbridge_handler_failures_total{kind=unavailable}", 0),
        ("syncbridge_tasks_finished_total{status=failed}", 1),
        ("syncbridge_tasks_finished_total{status=succeeded}", 0),
        (
            "syncbridge_connections_closed_total{reason=head_timeout}",
            1,
        ),
        ("syncbridge_connections_closed_total{reason=malformed}", 1),
        ("syncbridge_connections_closed_total{reason=shutdown}", 0),
        ("syncbridge_connections_closed_total{reason=idle}", 1),
        ("syncbridge_connections_closed_total{reason=made_room}", 1),
        ("syncbridge_connections_closed_total{reason=keep_alive}", 1),
        (
            "syncbridge_connections_closed_total{reason=proxy_header}",
            1,
        ),
        (
            "syncbridge_connections_closed_total{reason=client_limit}",
            1,
        ),
        ("syncbridge_connection_waits_total", 1),
    ];
    for (key, count) in expected {
        assert_eq!(recorder.count(key), count, "{key}");
    }
    let described = recorder.described.lock().unwrap();
    for name in [
        "syncbridge_requests_total",
        "syncbridge_request_duration_seconds",
        "syncbridge_connections",
    ] {
        assert!(described.iter().any(|d| d == name), "{name} not described");
    }
}
