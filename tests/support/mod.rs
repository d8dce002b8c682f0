//! Shared helpers for the behaviour tests: a real server on 127.0.0.1:0 on its own
//! thread and runtime, and a real HTTP client (hyper) over TCP. Every await goes through
//! [`within`], so a hang fails the test instead of stalling the suite.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use syncbridge::{Handler, Server, ShutdownHandle};
use tokio::net::TcpStream;

pub mod child;
pub mod logs;
pub mod stuck;

/// How long any single step of a test may take before it counts as a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test step timed out after {STEP:?}"),
    }
}

/// A server running `serve` on a thread of its own.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    thread: Option<JoinHandle<syncbridge::Result<()>>>,
}

impl TestServer {
    /// Starts `handler` on 127.0.0.1:0 with the default settings.
    pub fn start<H: Handler>(handler: H) -> Self {
        Self::start_with(Server::bind("127.0.0.1:0"), handler)
    }

    /// Starts `handler` on a server configured by the caller (bound to 127.0.0.1:0).
    pub fn start_with<H: Handler>(server: Server, handler: H) -> Self {
        init_tracing();
        let server = server.handle_signals(false).worker_threads(2);
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.serve(handler));
        TestServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Shuts down gracefully and waits (at most [`STEP`]) for `serve` to return. Async so
    /// that the test's own runtime keeps driving client connections meanwhile (an h2
    /// client must answer the server's GOAWAY ping).
    pub async fn stop(mut self) {
        self.handle.shutdown();
        self.join().await.expect("serve failed");
    }

    /// Shuts down and waits for `serve` to return, which must take less than 5 s: for a
    /// server whose shutdown deadline must cut off what a longer timeout would wait for.
    pub async fn stop_by_its_deadline(&mut self) {
        let t0 = std::time::Instant::now();
        self.handle.shutdown();
        within(self.join()).await.expect("serve returned Ok");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
    }

    /// Waits (at most [`STEP`]) for `serve` to return, after a shutdown from elsewhere.
    pub async fn join(&mut self) -> syncbridge::Result<()> {
        let thread = self.thread.take().expect("joined once");
        let deadline = tokio::time::Instant::now() + STEP;
        while !thread.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not stop in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        thread.join().expect("serve panicked")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A handler naming the request's client as `Server::trusted_proxies` resolved it:
/// `IP SCHEME`, `none` for each missing.
pub fn client_ip_and_scheme(req: syncbridge::Request) -> String {
    let ip = req.extensions().get::<syncbridge::ClientIp>().map(|c| c.0);
    let scheme = req.extensions().get::<syncbridge::ClientScheme>();
    format!("{} {}", shown(ip), shown(scheme.map(|s| &s.0)))
}

/// `value` as text, or `none`.
pub fn shown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("none".to_owned(), |v| v.to_string())
}

/// Panics with `message` as `panic!(message)` does, but without running the panic hook.
/// For the tests' deliberate panics: under load and with `RUST_BACKTRACE=1`, the default
/// hook's backtrace of a large debug binary takes seconds, which a test would count
/// against its step timeout. What the crate catches, and its `panicked: ...` text, are
/// the same.
pub fn panic_quietly(message: &'static str) -> ! {
    std::panic::resume_unwind(Box::new(message))
}

/// An error whose cause is in `source()` only, as Rust's convention has it: what the
/// crate logs and records must still show the cause.
#[derive(Debug)]
pub struct CartError(pub std::io::Error);

impl std::fmt::Display for CartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("could not load the cart")
    }
}

impl std::error::Error for CartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A [`CartError`] caused by a refused connection.
pub fn cart_error() -> CartError {
    CartError(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

/// The binary's subscriber: [`logs::install`]'s, whichever test comes first, so that no
/// test's outcome depends on the order the tests run in.
pub fn init_tracing() {
    logs::install();
}

/// A task closure that only records that it ran, and the flag it sets.
pub fn flags_when_run<A>() -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    impl FnMut(A) -> std::io::Result<()> + Send + 'static,
) {
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let closure = move |_: A| {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    };
    (ran, closure)
}

/// What a handler thread (or a task, a callback) sends on `rx`, waited for off the test's
/// runtime, whose thread a blocking wait would hold, for at most [`STEP`]; `what` says
/// what never came.
pub async fn received<T: Send + 'static>(
    rx: std::sync::mpsc::Receiver<T>,
    what: &'static str,
) -> T {
    within(tokio::task::spawn_blocking(move || rx.recv_timeout(STEP)))
        .await
        .expect("the waiting task")
        .expect(what)
}

/// Takes `pool`'s thread with a closure that runs until released; returns its task and
/// the release once it runs.
pub async fn occupy_one_thread(
    pool: &syncbridge::BlockingPool,
) -> (
    tokio::task::JoinHandle<syncbridge::Result<()>>,
    std::sync::mpsc::Sender<()>,
) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let first = tokio::spawn(syncbridge::ensure_async_on(pool, move || {
        started_tx.send(()).unwrap();
        release_rx.recv_timeout(STEP).unwrap();
    }));
    within(started_rx).await.unwrap();
    (first, release_tx)
}

/// A request body fed part by part through the returned sender (which holds at most
/// `parts` unsent parts); it ends when the sender is dropped.
pub fn channel_body(
    parts: usize,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(parts);
    let body =
        http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
        }))
        .boxed();
    (tx, body)
}

/// An HTTP/1.1 connection; the connection task runs in the background.
pub async fn h1<B>(addr: SocketAddr) -> http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    h1_on(stream).await
}

/// An HTTP/1.1 connection over `stream` (TCP, a Unix socket); the connection task runs
/// in the background.
pub async fn h1_on<S, B>(stream: S) -> http1::SendRequest<B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = within(http1::handshake(TokioIo::new(stream)))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

/// An HTTP/2 connection over cleartext with prior knowledge (h2c).
pub async fn h2<B>(addr: SocketAddr) -> http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    let (send, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// An HTTP/2 connection (h2c) whose client opens only `window` bytes of flow-control
/// window per stream, so a response larger than that waits on it: the client keeps
/// answering the server's frames (pings, settings), but opens a stream's window again
/// only as its body is read. The returned task ends when the connection does, or when a
/// GOAWAY has come (hyper's client stops there); the address is the client's, as the
/// server's lines name it.
pub async fn h2_with_window(
    addr: SocketAddr,
    window: u32,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
    SocketAddr,
) {
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    let local = stream.local_addr().unwrap();
    let (send, conn) = within(
        http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(window)
            .handshake(TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, conn, local)
}

/// Sends a bodiless `GET path` on a fresh connection, over HTTP/2 (h2c) or HTTP/1.1,
/// under [`within`]: the response head, or the client's error.
pub async fn get_over(
    addr: SocketAddr,
    http2: bool,
    path: &str,
) -> hyper::Result<http::Response<hyper::body::Incoming>> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    if http2 {
        within(h2(addr).await.send_request(req)).await
    } else {
        within(h1(addr).await.send_request(req)).await
    }
}

/// `GET path` with `headers` (values any bytes HTTP allows) on a fresh connection, over
/// HTTP/2 (h2c) or HTTP/1.1: the response read whole.
pub async fn get_with(
    addr: SocketAddr,
    http2: bool,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Reply {
    let mut req = http::Request::get(format!("http://localhost{path}"));
    for (name, value) in headers {
        req = req.header(
            *name,
            http::HeaderValue::from_bytes(value).expect("a header value"),
        );
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let response = if http2 {
        within(h2(addr).await.send_request(req)).await
    } else {
        within(h1(addr).await.send_request(req)).await
    };
    collect(response.expect("a response")).await
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a response whole (under [`within`]).
pub async fn collect(response: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = within(body.collect())
        .await
        .expect("response body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: impl Into<Bytes>) -> Reply {
    let mut send = h1::<Full<Bytes>>(addr).await;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body.into()))
        .unwrap();
    let response = within(send.send_request(req)).await.expect("response");
    collect(response).await
}

/// `GET path` on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, Bytes::new()).await
}

/// `GET path` on a fresh HTTP/1.1 connection to the Unix socket at `socket`.
#[cfg(unix)]
pub async fn get_unix(socket: &std::path::Path, path: &str) -> Reply {
    let stream = within(tokio::net::UnixStream::connect(socket))
        .await
        .expect("connect");
    let mut send = h1_on::<_, Empty<Bytes>>(stream).await;
    let req = http::Request::get(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap();
    collect(within(send.send_request(req)).await.expect("response")).await
}

/// A raw HTTP/1.1 response read off a socket (only `Content-Length` framing).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Reads one `Content-Length`-framed response from `stream`; `None` if the server
/// closed the connection before a response head.
pub async fn read_raw_response<S>(stream: &mut S) -> Option<RawReply>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = within(stream.read(&mut chunk)).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head[9..12].parse().expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = within(stream.read(&mut chunk)).await.expect("body read");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawReply { status, head, body })
}

/// Whether the server closes `stream` (EOF or reset) within [`STEP`].
pub async fn closed_by_server<S>(stream: &mut S) -> bool
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(STEP, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Peak and current resident memory of this process, in bytes (Linux).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("memory field")
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Polls `fut` on the calling thread with no runtime anywhere, under the step timeout.
pub fn block_on_without_runtime<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "test step timed out");
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    }
}

/// Waits, for at most [`STEP`], until the server listening on `server` has accepted the
/// TCP connection the client made from `client` (IPv4 only): in `/proc/net/tcp` a
/// connection still in the accept queue has no inode, an accepted one has its socket's.
/// For a test that needs one connection taken before it makes the next.
#[cfg(target_os = "linux")]
pub async fn accepted_by_server(server: SocketAddr, client: SocketAddr) {
    let (local, remote) = (
        format!(":{:04X}", server.port()),
        format!(":{:04X}", client.port()),
    );
    let accepted = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[1].ends_with(&local) && fields[2].ends_with(&remote) && fields[9] != "0"
        })
    };
    within(async {
        while !accepted() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
