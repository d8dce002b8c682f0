//! A handler that gets stuck, for the handler timeout's tests: one server per test,
//! and channels that say when a handler started, release it, and carry what its body
//! read ended with.
use std::io::Read;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use syncbridge::{IntoResponse, Request, Response, ResponseBody, Server};
use tokio::sync::mpsc::{
    unbounded_channel, UnboundedReceiver as Receiver, UnboundedSender as Sender,
};

use super::{logs, within, TestServer};

pub const TIMEOUT: Duration = Duration::from_millis(300);

/// A release the test sends once per stuck request; the handler waits for it.
pub type Release = Arc<Mutex<mpsc::Receiver<()>>>;

/// `/stuck`: says it started, then waits for a release; `/stuck-panics` and
/// `/stuck-fails` then panic or return an error. `/read`: reads its whole body,
/// and reports the error its read ended with. `/stream`: answers at once with a body
/// whose first bytes come only when released. Anything else: says it started (as
/// `other`), then answers `fast`.
pub fn handler(
    started: Sender<&'static str>,
    release: Release,
    read_error: Sender<String>,
) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    move |mut req: Request| match req.uri().path() {
        "/stuck" => {
            started.send("stuck").unwrap();
            let _ = release.lock().unwrap().recv_timeout(super::STEP);
            Response::new(ResponseBody::from("late"))
        }
        "/stuck-panics" => {
            started.send("stuck").unwrap();
            let _ = release.lock().unwrap().recv_timeout(super::STEP);
            super::panic_quietly("database connection lost")
        }
        "/stuck-fails" => {
            started.send("stuck").unwrap();
            let _ = release.lock().unwrap().recv_timeout(super::STEP);
            Err::<Response, _>(std::io::Error::other("database timed out")).into_response()
        }
        "/read" => {
            started.send("read").unwrap();
            let mut all = Vec::new();
            let error = match req.body_mut().read_to_end(&mut all) {
                Ok(_) => "no error".to_string(),
                Err(err) => err.to_string(),
            };
            read_error.send(error).unwrap();
            Response::new(ResponseBody::from("read"))
        }
        "/stream" => {
            let release = release.clone();
            let first = std::iter::from_fn(move || {
                let released = release.lock().unwrap().recv_timeout(super::STEP);
                Some(
                    released
                        .map(|()| Bytes::from_static(b"streamed"))
                        .map_err(std::io::Error::other),
                )
            });
            Response::new(ResponseBody::from_chunks(first.take(1)))
        }
        _ => {
            let _ = started.send("other");
            Response::new(ResponseBody::from("fast"))
        }
    }
}

pub struct Setup {
    pub server: TestServer,
    pub started: Receiver<&'static str>,
    pub release: mpsc::Sender<()>,
    pub read_error: Receiver<String>,
}

pub fn start(server: Server) -> Setup {
    start_with_timeout(server, TIMEOUT)
}

/// [`start`] with a handler timeout of `timeout` in place of [`TIMEOUT`].
pub fn start_with_timeout(server: Server, timeout: Duration) -> Setup {
    logs::install();
    let (started_tx, started) = unbounded_channel();
    let (release, release_rx) = mpsc::channel();
    let (read_error_tx, read_error) = unbounded_channel();
    let server = TestServer::start_with(
        server.handler_timeout(timeout),
        handler(started_tx, Arc::new(Mutex::new(release_rx)), read_error_tx),
    );
    Setup {
        server,
        started,
        release,
        read_error,
    }
}

pub async fn started(rx: &mut Receiver<&'static str>) -> &'static str {
    within(rx.recv()).await.expect("a handler started")
}

pub fn get(path: &str, host: std::net::SocketAddr) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", host.to_string())
        .body(Empty::new())
        .unwrap()
}
