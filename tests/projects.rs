//! The `projects` example over real HTTP: 202 + task id at once, the task's status and
//! result, the row in SQLite, delivery to a callback receiver, a failing task, unknown ids.

mod support;

#[path = "../examples/projects.rs"]
#[allow(dead_code)] // `main` and friends are for the example binary
mod projects;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{get, request, within, TestServer, STEP};
use syncbridge::Request;
use tokio::sync::mpsc;

/// A fresh database file, removed when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> TempDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "syncbridge-projects-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        TempDb(path)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start_app(db: &TempDb, work: Duration) -> TestServer {
    let app = projects::app(&db.0, work).expect("database");
    TestServer::start_with(
        projects::server("127.0.0.1:0").expect("bind"),
        move |req: Request| app.handle(req),
    )
}

/// A second server that forwards every body POSTed to it into a channel.
fn start_receiver() -> (TestServer, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Mutex::new(tx);
    let server = TestServer::start(move |mut req: Request| {
        let body: Value = serde_json::from_reader(req.body_mut()).unwrap_or(Value::Null);
        let _ = tx.lock().unwrap().send(body);
        "ok"
    });
    (server, rx)
}

fn json_of(reply: &support::Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.text()))
}

async fn post_project(addr: std::net::SocketAddr, body: Value) -> (u16, Value) {
    let reply = request(addr, "POST", "/projects", body.to_string()).await;
    (reply.status.as_u16(), json_of(&reply))
}

/// Polls `GET /tasks/{id}` until the status is final (a short poll with a deadline).
async fn final_status(addr: std::net::SocketAddr, id: &str) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let reply = get(addr, &format!("/tasks/{id}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let status = json_of(&reply);
        if !matches!(status["status"].as_str(), Some("pending" | "running")) {
            return status;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn post_answers_202_pending_then_the_task_creates_the_row_and_calls_back() {
    let db = TempDb::new();
    let work = Duration::from_millis(500);
    let server = start_app(&db, work);
    let (receiver, mut received) = start_receiver();

    let posted = Instant::now();
    let (status, accepted) = post_project(
        server.addr,
        json!({"name": "apollo", "callback_url": receiver.url("/done")}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(accepted["status"], "pending");
    let id = accepted["task_id"].as_str().unwrap().to_owned();

    // Answered before the slow work is done, which a look at the task confirms while the
    // work cannot have ended yet (a loaded machine may delay the look past that).
    let early = json_of(&get(server.addr, &format!("/tasks/{id}")).await);
    if posted.elapsed() < work {
        assert!(
            matches!(early["status"].as_str(), Some("pending" | "running")),
            "{early}"
        );
    }

    let done = final_status(server.addr, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["name"], "apollo");
    assert!(done["finished_at"].as_u64() >= done["started_at"].as_u64());

    let callback = within(received.recv()).await.unwrap();
    assert_eq!(callback["task_id"], id.as_str());
    assert_eq!(callback["status"], "succeeded");
    assert_eq!(callback["result"], done["result"]);

    let rows = json_of(&get(server.addr, "/projects").await);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["name"], "apollo");
    assert_eq!(rows[0]["task_id"], id.as_str());
    receiver.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_duplicate_name_fails_the_task_and_the_callback_reports_failed() {
    let db = TempDb::new();
    let server = start_app(&db, Duration::ZERO);
    let (receiver, mut received) = start_receiver();

    let (_, first) = post_project(server.addr, json!({"name": "gemini"})).await;
    let first = final_status(server.addr, first["task_id"].as_str().unwrap()).await;
    assert_eq!(first["status"], "succeeded", "{first}");

    let (status, second) = post_project(
        server.addr,
        json!({"name": "gemini", "callback_url": receiver.url("/hook")}),
    )
    .await;
    assert_eq!(status, 202);
    let id = second["task_id"].as_str().unwrap();
    let failed = final_status(server.addr, id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("UNIQUE"),
        "{failed}"
    );
    assert_eq!(failed["result"], Value::Null);

    let callback = within(received.recv()).await.unwrap();
    assert_eq!(callback["task_id"], id);
    assert_eq!(callback["status"], "failed");
    assert!(callback["error"].as_str().unwrap().contains("UNIQUE"));

    let rows = json_of(&get(server.addr, "/projects").await);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    receiver.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_task_id_is_404_not_found() {
    let db = TempDb::new();
    let server = start_app(&db, Duration::ZERO);
    let unknown = "0123456789abcdef0123456789abcdef";
    let reply = get(server.addr, &format!("/tasks/{unknown}")).await;
    assert_eq!(reply.status, 404);
    let body = json_of(&reply);
    assert_eq!(body["status"], "not_found");
    assert_eq!(body["task_id"], unknown);
    assert_eq!(get(server.addr, "/tasks/not-an-id").await.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_body_is_400_and_starts_no_task() {
    let db = TempDb::new();
    let server = start_app(&db, Duration::ZERO);
    let reply = request(server.addr, "POST", "/projects", "{\"nom\": 1}").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let rows = json_of(&get(server.addr, "/projects").await);
    assert_eq!(rows, json!([]));
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_413_and_an_overlong_name_400_and_neither_starts_a_task() {
    let db = TempDb::new();
    let server = start_app(&db, Duration::ZERO);
    let huge = json!({ "name": "x".repeat(64 * 1024) }).to_string();
    let reply = request(server.addr, "POST", "/projects", huge).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    let (status, body) = post_project(server.addr, json!({ "name": "y".repeat(201) })).await;
    assert_eq!(status, 400, "{body}");
    let rows = json_of(&get(server.addr, "/projects").await);
    assert_eq!(rows, json!([]));
    server.stop().await;
}
