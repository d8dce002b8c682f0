//! The Celery + Redis "create a project, answer pending, call back later" flow, in one
//! process: no broker, no worker, no result backend.
//!
//! What it shows: a blocking handler that answers `202` with a task id at once and hands
//! the slow work (here: a sleep, then an insert into SQLite) to a background task; a
//! status endpoint backed by the task registry; a completion callback POSTed to a URL the
//! client gave, whether the task succeeded or failed.
//!
//! ```text
//! cargo run --example projects -- --database /tmp/projects.db    # or $DATABASE, $PORT
//! curl -i -X POST localhost:8000/projects -d '{"name": "apollo", "callback_url": "http://127.0.0.1:9000/done"}'
//!   202 {"task_id":"…","status":"pending"}
//! curl localhost:8000/tasks/<task_id>    # pending -> running -> succeeded (404 if unknown)
//! curl localhost:8000/projects
//! ```
//!
//! Creating a project whose name exists makes the task fail (SQLite's UNIQUE constraint):
//! its status becomes `failed` with the error, and the callback still gets the news.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};
use syncbridge::http::{header, HeaderValue, Method, StatusCode};
use syncbridge::{
    IntoResponse, Request, Response, Server, TaskContext, TaskId, TaskInfo, TaskSet, TaskStatus,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application: where the database is and how long the "slow work" takes.
#[derive(Clone, Debug)]
pub struct App {
    database: PathBuf,
    work: Duration,
}

#[derive(Deserialize)]
struct NewProject {
    name: String,
    callback_url: Option<String>,
}

/// Builds the handler, creating the table if needed.
pub fn app(database: impl Into<PathBuf>, work: Duration) -> Result<App, rusqlite::Error> {
    let app = App {
        database: database.into(),
        work,
    };
    app.connect()?.execute_batch(
        "CREATE TABLE IF NOT EXISTS projects (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             task_id TEXT NOT NULL,
             created_at INTEGER NOT NULL
         )",
    )?;
    Ok(app)
}

/// The largest request body: a project's JSON is a few hundred bytes. A larger declared
/// `Content-Length` is answered `413` by the server before the handler runs; a chunked
/// body gets its `413` when it grows past the limit, as the handler reads it.
const MAX_REQUEST_BYTES: u64 = 16 * 1024;
/// The longest project name accepted.
const MAX_NAME_CHARS: usize = 200;
/// How long a callback delivery may take, connect to status line.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a callback receiver's answer read to find its status line.
const CALLBACK_HEAD_BYTES: usize = 1024;

/// The server with the limits and background-task settings this app wants.
///
/// # Errors
///
/// When `addr` cannot be bound.
pub fn server(addr: &str) -> syncbridge::Result<Server> {
    Ok(Server::try_bind(addr)?
        .max_body_size(MAX_REQUEST_BYTES)
        .max_task_threads(4)
        .task_drain_timeout(Duration::from_secs(60)))
}

impl App {
    /// The handler: plain blocking code, routed by method and path.
    pub fn handle(&self, mut req: Request) -> Response {
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::POST, "/projects") => {
                let new: NewProject = match serde_json::from_reader(req.body_mut()) {
                    Ok(new) => new,
                    Err(err) => {
                        return reply(StatusCode::BAD_REQUEST, json!({"error": err.to_string()}))
                    }
                };
                if new.name.is_empty() || new.name.chars().count() > MAX_NAME_CHARS {
                    let error = format!("name must have 1 to {MAX_NAME_CHARS} characters");
                    return reply(StatusCode::BAD_REQUEST, json!({ "error": error }));
                }
                self.create(new)
            }
            (Method::GET, "/projects") => match self.list() {
                Ok(rows) => reply(StatusCode::OK, rows),
                Err(err) => internal_error("listing projects failed", &err),
            },
            (Method::GET, p) if p.starts_with("/tasks/") => task_status(&p["/tasks/".len()..]),
            _ => reply(StatusCode::NOT_FOUND, json!({"error": "no such route"})),
        }
    }

    fn create(&self, new: NewProject) -> Response {
        // No handle threaded through: the server's task set is found from this thread.
        let tasks = match TaskSet::current() {
            Ok(tasks) => tasks,
            Err(err) => return internal_error("no task set to run the work on", &err),
        };
        let app = self.clone();
        let name = new.name;
        let mut task = tasks.task().name("create-project");
        if let Some(url) = new.callback_url {
            // Runs whatever the outcome, on a blocking thread, after the status is final.
            task = task.on_done(move |info| notify(&url, info));
        }
        match task.spawn_blocking(move |ctx| app.insert(&ctx, &name)) {
            Ok(handle) => reply(
                StatusCode::ACCEPTED,
                json!({"task_id": handle.id().to_string(), "status": "pending"}),
            ),
            Err(err) if err.is_overloaded() || err.is_shutdown() => {
                let mut response = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": err.to_string()}),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            Err(err) => internal_error("starting the background task failed", &err),
        }
    }

    /// The background work: slow, blocking, cancellable between steps.
    fn insert(&self, ctx: &TaskContext, name: &str) -> Result<Value, BoxError> {
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        while waited < self.work {
            if ctx.is_cancelled() {
                return Err("cancelled before the project was created".into());
            }
            std::thread::sleep(step.min(self.work - waited));
            waited += step;
        }
        let conn = self.connect()?;
        let now = unix_seconds();
        conn.execute(
            "INSERT INTO projects (name, task_id, created_at) VALUES (?1, ?2, ?3)",
            (name, ctx.id().to_string(), now),
        )?;
        Ok(json!({"id": conn.last_insert_rowid(), "name": name, "created_at": now}))
    }

    fn list(&self) -> Result<Value, rusqlite::Error> {
        let conn = self.connect()?;
        let mut stmt =
            conn.prepare("SELECT id, name, task_id, created_at FROM projects ORDER BY id")?;
        let rows = stmt.query_map([], |row| {
            Ok(json!({
                "id": row.get::<_, i64>(0)?,
                "name": row.get::<_, String>(1)?,
                "task_id": row.get::<_, String>(2)?,
                "created_at": row.get::<_, i64>(3)?,
            }))
        })?;
        Ok(Value::Array(rows.collect::<Result<_, _>>()?))
    }

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        // A connection per use: cheap for SQLite, and nothing shared between threads.
        let conn = Connection::open(&self.database)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }
}

/// `GET /tasks/{id}`: the registry entry as JSON, 404 for an id it does not know.
fn task_status(id: &str) -> Response {
    let tasks = match TaskSet::current() {
        Ok(tasks) => tasks,
        Err(err) => return internal_error("no task set to look the task up in", &err),
    };
    match TaskId::parse(id).and_then(|id| tasks.info(id)) {
        Some(info) => reply(StatusCode::OK, task_json(&info)),
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"task_id": id, "status": TaskStatus::NotFound.as_str()}),
        ),
    }
}

fn task_json(info: &TaskInfo) -> Value {
    json!({
        "task_id": info.id().to_string(),
        "status": info.status().as_str(),
        "result": info.result::<Value>(),
        "error": info.error(),
        "attempts": info.attempts(),
        "created_at": seconds(Some(info.created_at())),
        "started_at": seconds(info.started_at()),
        "finished_at": seconds(info.finished_at()),
    })
}

/// POSTs `{"task_id", "status", "result"}` to `url`. Failures are logged, not retried:
/// the status stays available at `GET /tasks/{id}`.
fn notify(url: &str, info: &TaskInfo) {
    let mut body = json!({
        "task_id": info.id().to_string(),
        "status": info.status().as_str(),
        "result": info.result::<Value>(),
    });
    if let Some(error) = info.error() {
        body["error"] = json!(error);
    }
    match post_json(url, &body) {
        Ok(status) if (200..300).contains(&status) => {
            tracing::info!(task_id = %info.id(), url, status, "callback delivered")
        }
        Ok(status) => tracing::warn!(task_id = %info.id(), url, status, "callback refused"),
        Err(err) => tracing::warn!(task_id = %info.id(), url, error = %err, "callback failed"),
    }
}

/// A minimal HTTP/1.1 POST over a `TcpStream` (http:// only), returning the status code.
/// The delivery from the connect on is bounded by `CALLBACK_TIMEOUT`, and only the
/// status line of the answer is read: a receiver that never answers, or answers without
/// end, holds a callback thread no longer than that. The host name's lookup before it is
/// not: `std` resolves with the system's resolver, whose own limits apply (`timeout` and
/// `attempts` in `/etc/resolv.conf`, 5 s and 2 by default, per name server). A service
/// that calls back arbitrary hosts would resolve with a resolver it can bound, or take
/// addresses only.
///
/// The URL is the client's: a real service would also check where it points (an
/// allow-list, no private addresses) before connecting.
fn post_json(url: &str, body: &Value) -> std::io::Result<u16> {
    use std::io::ErrorKind;
    use std::net::ToSocketAddrs;
    use std::time::Instant;

    let invalid = |what: &str| std::io::Error::new(ErrorKind::InvalidInput, what.to_owned());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// callback URLs are supported"))?;
    if rest.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        // They would end the request line early and let the URL write headers of its own.
        return Err(invalid("the callback URL has spaces or control characters"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let deadline = Instant::now() + CALLBACK_TIMEOUT;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| std::io::Error::new(ErrorKind::TimedOut, "callback took too long"))
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("the callback host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < CALLBACK_HEAD_BYTES {
        stream.set_read_timeout(Some(left()?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("malformed response status line"))
}

/// A `500` whose cause is logged, not sent: the client learns nothing of the database or
/// the server's set-up from it.
fn internal_error(what: &str, err: &dyn std::error::Error) -> Response {
    tracing::error!(error = %err, "{what}");
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": "internal error"}),
    )
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn seconds(time: Option<SystemTime>) -> Option<Value> {
    let since = time?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(json!(since.as_secs()))
}

fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut database = std::env::var("DATABASE").unwrap_or_else(|_| "projects.db".to_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database" => database = args.next().ok_or("--database needs a path")?,
            other => {
                return Err(
                    format!("unknown argument {other}; usage: projects [--database PATH]").into(),
                )
            }
        }
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let app = app(&database, Duration::from_secs(2))?;
    let server = server(&format!("127.0.0.1:{port}"))?;
    println!(
        "serving on http://{} (database {database})",
        server.local_addr()
    );
    server.serve(move |req: Request| app.handle(req))?;
    Ok(())
}
