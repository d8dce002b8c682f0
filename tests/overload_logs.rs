//! Overload is logged, but not a line per refused request: a flood of `503`s writes one
//! warning a second (counting the rest), while the access log keeps every request.
mod support;

use std::sync::{mpsc, Mutex};

use bytes::Bytes;
use http_body_util::Empty;
use support::{h1, logs, within, TestServer};
use syncbridge::{Request, Server};

const REFUSED: usize = 40;

#[tokio::test]
async fn a_flood_of_refusals_logs_a_warning_a_second_and_every_access() {
    logs::install();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_threads(1).queue_capacity(0),
        move |req: Request| {
            if req.uri().path() == "/busy" {
                started_tx.lock().unwrap().send(()).unwrap();
                let _ = release_rx.lock().unwrap().recv_timeout(support::STEP);
            }
            "done"
        },
    );
    let addr = server.addr;
    let busy = tokio::spawn(async move { support::get(addr, "/busy").await });
    within(tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("the one thread is busy");

    let mut send = h1::<Empty<Bytes>>(server.addr).await;
    for _ in 0..REFUSED {
        let req = http::Request::get("/flood")
            .header("host", addr.to_string())
            .body(Empty::new())
            .unwrap();
        let response = within(send.send_request(req)).await.unwrap();
        assert_eq!(response.status(), 503);
        support::collect(response).await;
    }
    release_tx.send(()).unwrap();
    assert_eq!(within(busy).await.unwrap().status, 200);
    server.stop().await;

    let warnings = logs::count(&["WARN", "blocking pool and queue are full"]);
    // One a second: the flood takes well under three seconds even on a loaded machine.
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for {REFUSED} refusals"
    );
    assert_eq!(
        logs::count(&["path=/flood", "status=503"]),
        REFUSED,
        "every refused request has its access-log line"
    );
}

/// The process's soft open-file limit, read as a user would (`ulimit -n`); `None` when it
/// has none or it cannot be read here.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_server_allowed_more_connections_than_open_files_says_so_at_start() {
    logs::install();
    let Some(limit) = open_file_limit() else {
        eprintln!("no finite open-file limit here: nothing to warn about");
        return;
    };
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_connections(usize::MAX),
        |_req: Request| "ok",
    );
    // The warning comes before the first accept, so it is in by the first answer.
    assert_eq!(support::get(server.addr, "/").await.status, 200);
    assert!(
        logs::contains(&[
            "WARN",
            "open-file limit",
            &format!("open_file_limit={limit}")
        ]),
        "no warning naming the limit of {limit}"
    );
    server.stop().await;
}
