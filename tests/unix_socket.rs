//! The server on a Unix domain socket (`Server::bind_unix`), as behind nginx's
//! `proxy_pass http://unix:PATH:`: HTTP/1.1 and HTTP/2 over it, the socket file's life
//! (a stale one replaced, a live one or another file refused, two servers starting at
//! once, its own removed at stop, by a relative path too, and no one else's), the body
//! timeout's count of what a slow reader takes, and the close in stages after an early
//! answer.
#![cfg(unix)]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{closed_by_server, collect, logs, read_raw_response, within};
use syncbridge::{
    Handler, ListenAddr, PeerCred, RemoteAddr, Request, Response, ResponseBody, Server,
    ShutdownHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A fresh path for a socket in the temporary directory, nothing there yet.
fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sb-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A server serving on its own thread, as `support::TestServer` but on a socket file.
struct UnixServer {
    handle: ShutdownHandle,
    thread: Option<JoinHandle<syncbridge::Result<()>>>,
}

impl UnixServer {
    fn start<H: Handler>(server: Server, handler: H) -> UnixServer {
        support::init_tracing();
        let server = server.handle_signals(false).worker_threads(2);
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.serve(handler));
        UnixServer {
            handle,
            thread: Some(thread),
        }
    }

    async fn stop(mut self) {
        self.handle.shutdown();
        let thread = self.thread.take().expect("stopped once");
        let deadline = tokio::time::Instant::now() + support::STEP;
        while !thread.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not stop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        thread
            .join()
            .expect("serve panicked")
            .expect("serve failed");
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Says whether the request carries a client address or a peer process, and logs a line
/// in its span.
fn who(req: Request) -> String {
    tracing::info!(target: "app", path = req.uri().path(), "unix handler runs");
    let extensions = req.extensions();
    match (extensions.get::<RemoteAddr>(), extensions.get::<PeerCred>()) {
        (Some(RemoteAddr(addr)), _) => format!("from {addr}"),
        (None, Some(peer)) => format!(
            "no address; process {:?} of {}:{}",
            peer.pid, peer.uid, peer.gid
        ),
        (None, None) => "no address".to_owned(),
    }
}

/// This process's user and group, as a socket pair of its own sees them (std has no
/// `geteuid`).
fn own_ids() -> (u32, u32) {
    let (ours, _theirs) = UnixStream::pair().expect("a socket pair");
    let cred = ours.peer_cred().expect("its own credentials");
    (cred.uid(), cred.gid())
}

/// What `who` says about a request from this process.
fn from_this_process() -> String {
    let (uid, gid) = own_ids();
    format!(
        "no address; process Some({}) of {uid}:{gid}",
        std::process::id()
    )
}

/// How the server's log lines name a connection from this process: `conn{peer=unix(…)}`.
fn this_process_as_peer() -> String {
    let (uid, _) = own_ids();
    format!("in {{conn peer=unix(pid={},uid={uid})", std::process::id())
}

fn get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

/// An HTTP/1.1 connection to the socket at `path`.
async fn h1_over(path: &Path) -> http1::SendRequest<Empty<Bytes>> {
    support::h1_on(within(UnixStream::connect(path)).await.expect("connect")).await
}

#[tokio::test]
async fn serves_http1_and_http2_over_a_unix_socket_and_removes_its_file_at_stop() {
    let path = socket_path("serves");
    // Asked for client addresses: a Unix socket has none to give, but its peer's process
    // (the test's own) instead.
    let server = Server::bind_unix(&path).remote_addr(true);
    assert_eq!(server.listen_addr(), &ListenAddr::Unix(path.clone()));
    assert_eq!(
        server.listen_addr().to_string(),
        format!("unix:{}", path.display())
    );
    let server = UnixServer::start(server, who);

    // HTTP/1.1, two requests on one kept-alive connection.
    let mut send = h1_over(&path).await;
    for request in ["/one", "/two"] {
        let reply = collect(within(send.send_request(get(request))).await.unwrap()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), from_this_process());
    }

    // HTTP/2 with prior knowledge, on the same socket.
    let stream = within(UnixStream::connect(&path)).await.expect("connect");
    let (mut send, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = within(send.send_request(get("/three"))).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(collect(response).await.text(), from_this_process());

    // The handler's lines name the connection's peer as `unix` and its process.
    assert!(logs::contains(&[
        "unix handler runs",
        "/two",
        &this_process_as_peer()
    ]));
    assert!(logs::contains(&[
        "syncbridge listening",
        &format!("addr=unix:{}", path.display())
    ]));

    server.stop().await;
    assert!(!path.exists(), "the socket file is removed at stop");
}

#[tokio::test]
async fn with_trusted_proxies_a_unix_sockets_peer_is_a_trusted_proxy() {
    let path = socket_path("proxied");
    // No address listed: the socket's peers (nginx) are trusted all the same.
    let server = UnixServer::start(
        Server::bind_unix(&path).trusted_proxies(Vec::<syncbridge::TrustedProxy>::new()),
        |req: Request| {
            let ip = req.extensions().get::<syncbridge::ClientIp>().map(|c| c.0);
            let scheme = req.extensions().get::<syncbridge::ClientScheme>().cloned();
            format!("{ip:?} {scheme:?}")
        },
    );
    let mut send = h1_over(&path).await;
    let forwarded = http::Request::get("http://localhost/")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(Empty::new())
        .unwrap();
    let reply = collect(within(send.send_request(forwarded)).await.unwrap()).await;
    assert_eq!(
        reply.text(),
        "Some(203.0.113.7) Some(ClientScheme(\"https\"))"
    );
    // Without the header the client is unknown: a Unix peer has no address.
    let reply = collect(within(send.send_request(get("/"))).await.unwrap()).await;
    assert_eq!(reply.text(), "None Some(ClientScheme(\"http\"))");
    server.stop().await;
    // Its requests carry no `PeerCred` (not asked for), but the log lines still say
    // which process sent them: the proxy's header names only the client.
    assert!(logs::contains(&[
        "path=/ ",
        "status=200",
        &this_process_as_peer()
    ]));
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_live_one_and_other_files_are_refused() {
    support::init_tracing(); // before the bind, which logs the line below
    let path = socket_path("stale");
    // A server killed before it removed its file leaves one nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = UnixServer::start(Server::try_bind_unix(&path).expect("stale replaced"), who);
    assert!(logs::contains(&[
        "removed a stale socket file",
        &path.display().to_string()
    ]));

    // A second server on the live socket's path is refused, and leaves it alone.
    let err = Server::try_bind_unix(&path).expect_err("a server listens there");
    assert!(err.is_bind(), "{err:?}");
    let cause = std::error::Error::source(&err)
        .expect("the OS's reason")
        .to_string();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(cause.to_lowercase().contains("in use"), "{cause}");
    let reply = support::get_unix(&path, "/still").await;
    assert_eq!(reply.status, 200);
    server.stop().await;

    // A file that is not a socket is somebody's data: refused, and kept.
    let file = socket_path("not-a-socket");
    std::fs::write(&file, "data").unwrap();
    let err = Server::try_bind_unix(&file).expect_err("a regular file is in the way");
    assert!(err.is_bind(), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn only_its_own_socket_file_is_removed() {
    // Its path taken over by another socket (a new server's bind) before it closes: that
    // socket's file stays.
    let path = socket_path("replaced");
    let server = Server::bind_unix(&path);
    std::fs::remove_file(&path).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(server);
    assert!(path.exists(), "the other socket's file is left alone");
    drop(other);
    std::fs::remove_file(&path).unwrap();

    // Handed a bound listener (systemd's socket activation), the file is the binder's.
    let path = socket_path("handed");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = UnixServer::start(Server::from_unix_listener(listener).unwrap(), who);
    assert_eq!(
        support::get_unix(&path, "/handed").await.text(),
        "no address"
    );
    server.stop().await;
    assert!(
        path.exists(),
        "a handed-over socket's file is not the server's"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn local_addr_of_a_unix_server_says_to_use_listen_addr() {
    let path = socket_path("local-addr");
    let server = Server::bind_unix(&path);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.local_addr()))
        .expect_err("no TCP address");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(message.contains("Server::listen_addr"), "{message}");
    assert!(
        message.contains(&format!("unix:{}", path.display())),
        "{message}"
    );
}

/// Reads ten bytes of the body and drops the rest with the request.
fn reads_ten(mut req: Request) -> &'static str {
    let mut ten = [0u8; 10];
    req.body_mut().read_exact(&mut ten).expect("ten bytes");
    "took 10"
}

#[tokio::test]
async fn a_client_that_writes_its_whole_body_before_reading_gets_the_early_answer() {
    // As nginx sends to an upstream: the whole body, then the response. The server
    // answers after ten bytes and closes in stages, draining the rest, so the client's
    // writes do not fail before it reads the answer.
    let path = socket_path("early");
    let server = UnixServer::start(Server::bind_unix(&path), reads_ten);
    for declared in [8 << 20, 100 << 20] {
        // 8 MiB: read in part by the handler; 100 MiB: past the limit, answered 413
        // from the head alone.
        let stream = within(UnixStream::connect(&path)).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let mut request =
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n")
                .into_bytes();
        request.resize(request.len() + (8 << 20), b'x');
        within(write.write_all(&request))
            .await
            .expect("8 MiB of the upload went out");
        let reply = read_raw_response(&mut read).await.expect("a response");
        if declared == 8 << 20 {
            assert_eq!(reply.body, b"took 10", "{}", reply.head);
        } else {
            assert_eq!(reply.status, 413, "{}", reply.head);
        }
        assert!(closed_by_server(&mut read).await);
    }
    server.stop().await;
    assert!(!Path::new(&path).exists());
}

#[test]
fn two_servers_starting_on_one_stale_path_at_once_do_not_both_bind() {
    // A restart that overlaps the old server's stop: both find the stale file. Without
    // the directory lock, one could take the other's fresh socket for stale and remove
    // it (a few rounds in 300), or fail with "No such file" for one removed meanwhile.
    let path = socket_path("race");
    for _ in 0..300 {
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // stale
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let binds: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, path) = (barrier.clone(), path.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Server::try_bind_unix(&path)
                })
            })
            .collect();
        let results: Vec<_> = binds.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            let cause = std::error::Error::source(err).expect("the OS's reason");
            assert!(
                cause.to_string().to_lowercase().contains("in use"),
                "{cause}"
            );
        }
        drop(results);
        assert!(!path.exists(), "the winner's file goes with it");
    }
}

#[tokio::test]
async fn a_socket_bound_by_a_relative_path_is_removed_after_the_working_directory_changes() {
    let dir = std::env::temp_dir();
    let name = format!("sb-{}-relative.sock", std::process::id());
    let _ = std::fs::remove_file(dir.join(&name));
    let before = std::env::current_dir().unwrap();
    // The only test here that moves the working directory; the others' paths are
    // absolute.
    std::env::set_current_dir(&dir).unwrap();
    let server = Server::try_bind_unix(&name);
    std::env::set_current_dir(&before).unwrap();
    let server = UnixServer::start(server.expect("bound"), who);
    let reply = support::get_unix(&dir.join(&name), "/rel").await;
    assert_eq!(reply.status, 200);
    server.stop().await;
    assert!(
        !dir.join(&name).exists(),
        "the server's own file, found by its absolute path"
    );
}

/// A 2 MiB response (`/small`) or a 32 MiB one, chunked, in 64 KiB pieces.
fn download(req: Request) -> Response {
    let pieces = if req.uri().path() == "/small" {
        32
    } else {
        512
    };
    let piece = Bytes::from(vec![b'd'; 64 * 1024]);
    Response::new(ResponseBody::from_chunks(
        (0..pieces).map(move |_| Ok(piece.clone())),
    ))
}

/// Reads from `stream` until the chunked response's end (true) or the server's close
/// (false).
async fn read_to_end_of_response(stream: &mut UnixStream, mut seen: Vec<u8>) -> bool {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if seen.ends_with(b"\r\n0\r\n\r\n") {
            return true;
        }
        match within(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return false,
            // Only the tail matters for the end marker.
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                let keep = seen.len().saturating_sub(16);
                seen.drain(..keep);
            }
        }
    }
}

#[tokio::test]
async fn a_slow_but_steady_reader_is_not_cut_off_and_one_that_stops_is() {
    // The socket's "writable" comes only once a quarter of its ~208 KiB buffer is left,
    // so without a count of what the client takes, one taking less than about 200 KiB
    // per body timeout looked stalled: 128 KiB per 1 s timeout was cut. The count moves
    // a piece of the kernel's queue at a time (up to 36 KiB), which this pace passes
    // three times over.
    const TIMEOUT: Duration = Duration::from_secs(1);
    let path = socket_path("slow-reader");
    let server = UnixServer::start(Server::bind_unix(&path).body_timeout(TIMEOUT), download);

    let mut slow = within(UnixStream::connect(&path)).await.unwrap();
    within(slow.write_all(b"GET /small HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut stopped = within(UnixStream::connect(&path)).await.unwrap();
    within(stopped.write_all(b"GET /large HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();

    // 16 KiB every eighth of a second for four body timeouts.
    let mut piece = vec![0u8; 16 * 1024];
    let mut seen = Vec::new();
    let until = Instant::now() + TIMEOUT * 4;
    while Instant::now() < until {
        let n = within(slow.read(&mut piece)).await.expect("read");
        assert!(n > 0, "the slow reader's connection closed");
        seen.extend_from_slice(&piece[..n]);
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
    assert!(
        read_to_end_of_response(&mut slow, seen).await,
        "the slow but steady reader was cut off"
    );
    // The other took nothing all that time: its connection was closed, and what it reads
    // now (what the socket held) ends before its 32 MiB.
    assert!(
        !read_to_end_of_response(&mut stopped, Vec::new()).await,
        "a reader that took nothing for four body timeouts was not cut off"
    );
    server.stop().await;
}
