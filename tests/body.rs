//! Request and response bodies: streamed both ways, in parts, with backpressure.
mod support;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use support::{h1, h2, read_raw_response, request, within, TestServer};
use syncbridge::{Request, Response, ResponseBody, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PART: usize = 64 * 1024;

/// A handler that reads the body a part at a time and reports each part as it lands.
fn parts_handler(parts_seen: mpsc::SyncSender<usize>) -> impl Fn(Request) -> String + Send + Sync {
    let parts_seen = Mutex::new(parts_seen);
    move |mut req: Request| {
        let mut total = 0;
        let mut part = vec![0u8; PART];
        for i in 0..3 {
            req.body_mut().read_exact(&mut part).expect("part");
            assert!(part.iter().all(|&b| b == b'a' + i as u8));
            total += part.len();
            parts_seen.lock().unwrap().send(i).unwrap();
        }
        assert_eq!(req.body_mut().read(&mut part).unwrap(), 0);
        format!("{total}")
    }
}

async fn next_part(rx: &Arc<Mutex<mpsc::Receiver<usize>>>) -> usize {
    let rx = rx.clone();
    within(tokio::task::spawn_blocking(move || {
        rx.lock()
            .unwrap()
            .recv_timeout(support::STEP)
            .expect("handler saw part")
    }))
    .await
    .unwrap()
}

#[tokio::test]
async fn http1_body_sent_in_parts_after_the_head_reaches_the_handler_part_by_part() {
    let (tx, rx) = mpsc::sync_channel(4);
    let rx = Arc::new(Mutex::new(rx));
    let server = TestServer::start(parts_handler(tx));
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = format!(
        "POST /parts HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        3 * PART
    );
    within(stream.write_all(head.as_bytes())).await.unwrap();
    for i in 0..3u8 {
        // The next part goes out only once the handler has read the previous one: a
        // handler that ran on the connection's thread would deadlock here.
        within(stream.write_all(&vec![b'a' + i; PART]))
            .await
            .unwrap();
        assert_eq!(next_part(&rx).await, i as usize);
    }
    let reply = read_raw_response(&mut stream).await.expect("response");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, format!("{}", 3 * PART).as_bytes());
    server.stop().await;
}

#[tokio::test]
async fn h2c_body_sent_in_parts_after_the_head_reaches_the_handler_part_by_part() {
    let (tx, rx) = mpsc::sync_channel(4);
    let rx = Arc::new(Mutex::new(rx));
    let server = TestServer::start(parts_handler(tx));
    let (body_tx, body) = support::channel_body(1);
    let mut send = h2(server.addr).await;
    let req = http::Request::post(server.url("/parts"))
        .body(body)
        .unwrap();
    let response = tokio::spawn(send.send_request(req));
    for i in 0..3u8 {
        within(body_tx.send(Bytes::from(vec![b'a' + i; PART])))
            .await
            .unwrap();
        assert_eq!(next_part(&rx).await, i as usize);
    }
    drop(body_tx);
    let response = within(response).await.unwrap().expect("h2 response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let reply = support::collect(response).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("{}", 3 * PART));
    server.stop().await;
}

/// A reader of `x` bytes that counts what it produced and reports when it is dropped.
struct CountingReader {
    produced: Arc<AtomicU64>,
    limit: u64,
    dropped: Option<mpsc::SyncSender<()>>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let done = self.produced.load(Ordering::SeqCst);
        let n = (self.limit - done).min(buf.len() as u64) as usize;
        buf[..n].fill(b'x');
        self.produced.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

impl Drop for CountingReader {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn slow_client_holds_the_producer_back() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let produced = Arc::new(AtomicU64::new(0));
    let server_produced = produced.clone();
    let server = TestServer::start(move |_req: Request| {
        let mut response = Response::new(ResponseBody::from_reader(CountingReader {
            produced: server_produced.clone(),
            limit: TOTAL,
            dropped: None,
        }));
        response
            .headers_mut()
            .insert("content-length", TOTAL.into());
        response
    });
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    while read < 1024 * 1024 {
        read += within(stream.read(&mut buf)).await.unwrap() as u64;
    }
    // The client stops reading: the producer must stall once the bridge's few chunks and
    // the kernel's socket buffers are full. Wait for it to stall, then check how far ahead
    // it got (this polls a counter; it does not synchronise anything).
    let deadline = std::time::Instant::now() + support::STEP;
    let mut last = produced.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = produced.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "producer never stalled"
        );
        last = now;
    }
    assert!(
        last < read + 32 * 1024 * 1024,
        "producer ran {} MiB ahead of a paused client",
        (last - read) >> 20
    );
    assert!(last < TOTAL);
    // Reading resumes; everything arrives (the head is a few dozen bytes on top).
    within(async {
        while read < TOTAL {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            read += n as u64;
        }
    })
    .await;
    assert_eq!(produced.load(Ordering::SeqCst), TOTAL);
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_mid_download_drops_the_reader() {
    let (dropped_tx, dropped_rx) = mpsc::sync_channel(1);
    let dropped_tx = Mutex::new(Some(dropped_tx));
    let server = TestServer::start(move |req: Request| {
        if req.uri().path() != "/endless" {
            return ResponseBody::from("ok");
        }
        ResponseBody::from_reader(CountingReader {
            produced: Arc::new(AtomicU64::new(0)),
            limit: u64::MAX,
            dropped: dropped_tx.lock().unwrap().take(),
        })
    });
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    within(stream.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < 512 * 1024 {
        read += within(stream.read(&mut buf)).await.unwrap();
    }
    drop(stream);
    within(tokio::task::spawn_blocking(move || {
        dropped_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("the endless reader was dropped after the client left");
    // The pool slot came back: the server still answers.
    let reply = support::get(server.addr, "/after").await;
    assert_eq!(reply.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn writer_iterator_and_echo_bodies_arrive_whole() {
    let server = TestServer::start(|req: Request| match req.uri().path() {
        "/writer" => ResponseBody::from_writer(|w| {
            for i in 0..1000 {
                writeln!(w, "line {i}")?;
            }
            Ok(())
        }),
        "/iter" => ResponseBody::from_chunks((0..100).map(|i| Ok(Bytes::from(format!("{i},"))))),
        "/echo" => ResponseBody::from(req.into_body()),
        _ => ResponseBody::from("?"),
    });
    let writer = support::get(server.addr, "/writer").await;
    let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(writer.text(), expected);
    let iter = support::get(server.addr, "/iter").await;
    let expected: String = (0..100).map(|i| format!("{i},")).collect();
    assert_eq!(iter.text(), expected);
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let echo = request(server.addr, "POST", "/echo", payload.clone()).await;
    assert_eq!(echo.status, 200);
    assert!(echo.body == payload, "echo differs");
    server.stop().await;
}

#[tokio::test]
async fn body_over_the_limit_gets_413_and_fails_the_handlers_read() {
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let (err_tx, err_rx) = mpsc::sync_channel(1);
    let started_tx = Mutex::new(started_tx);
    let err_tx = Mutex::new(err_tx);
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_body_size(100_000),
        move |mut req: Request| {
            let _ = started_tx.lock().unwrap().send(());
            let mut sink = Vec::new();
            let result = req.body_mut().read_to_end(&mut sink);
            let _ = err_tx.lock().unwrap().send(result.map_err(|e| e.kind()));
            "read it all"
        },
    );
    // Declared too large: refused before the handler runs.
    let declared = request(server.addr, "POST", "/declared", vec![0u8; 200_000]).await;
    assert_eq!(declared.status, 413);

    // Streamed without a length: the limit trips mid-body, while the handler reads.
    let (body_tx, body) = support::channel_body(64);
    let mut send = h1(server.addr).await;
    let req = http::Request::post("/streamed")
        .header("host", "x")
        .body(body)
        .unwrap();
    let response = tokio::spawn(send.send_request(req));
    within(body_tx.send(Bytes::from(vec![1u8; 8192])))
        .await
        .unwrap();
    let started_rx = within(tokio::task::spawn_blocking(move || {
        started_rx
            .recv_timeout(support::STEP)
            .expect("handler started");
        started_rx
    }))
    .await
    .unwrap();
    // 13 × 8 KiB = 106,496 bytes: just past the limit. The body stays open, so the client
    // writes nothing into a connection the server closes after its 413 (hyper's client
    // would report that write's broken pipe instead of the response).
    for _ in 0..12 {
        within(body_tx.send(Bytes::from(vec![1u8; 8192])))
            .await
            .unwrap();
    }
    let reply = support::collect(within(response).await.unwrap().expect("response")).await;
    drop(body_tx);
    assert_eq!(reply.status, 413);
    let read = within(tokio::task::spawn_blocking(move || {
        err_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("handler reported its read");
    assert_eq!(read, Err(std::io::ErrorKind::InvalidData));
    drop(started_rx);
    server.stop().await;
}

/// Through the service itself: a host's body (here one that simply ends, as an HTTP/2
/// stream reset with NO_ERROR does in hyper) that stops short of its `Content-Length`.
#[tokio::test]
async fn a_body_that_ends_short_of_its_content_length_fails_the_read() {
    let (tx, rx) = mpsc::channel();
    let service = syncbridge::SyncService::new(move |mut req: Request| {
        let mut body = Vec::new();
        let read = req.body_mut().read_to_end(&mut body);
        tx.send(read.map_err(|e| e.kind())).unwrap();
        "read"
    });
    let req = http::Request::post("/")
        .header("content-length", "10")
        .body(http_body_util::Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let response = within(tower::ServiceExt::oneshot(service, req))
        .await
        .unwrap();
    assert_eq!(
        rx.recv_timeout(support::STEP).unwrap(),
        Err(std::io::ErrorKind::UnexpectedEof)
    );
    // Whatever the handler answered after its failed read, the client is the cause.
    assert_eq!(response.status(), 400);
}

/// The other way round: the client has sent its whole body, and the reader on its own
/// thread takes it slowly but steadily. The pump then waits for room in the channel and
/// is woken only when half of it has been read, so the reader's takes have to count as
/// the connection's activity too: before, the header read timeout cut the upload off
/// mid-body, and the reader's next read failed as if the client had left.
#[tokio::test]
async fn a_body_read_slowly_after_the_response_is_not_cut_off_by_the_idle_timeouts() {
    // Twice the request channel's 256 KiB: the pump waits for room, with more to come.
    const TOTAL: usize = 512 * 1024;
    const PIECE: usize = 8 * 1024;
    let (total_tx, total_rx) = mpsc::channel();
    let total_tx = Mutex::new(total_tx);
    // Half the channel (128 KiB) takes the reader 640 ms, past these 300 ms.
    let server = Server::bind("127.0.0.1:0")
        .header_read_timeout(std::time::Duration::from_millis(300))
        .keep_alive_timeout(Some(std::time::Duration::from_millis(300)));
    let server = TestServer::start_with(server, move |req: Request| {
        let total_tx = total_tx.lock().unwrap().clone();
        let mut body = req.into_body();
        std::thread::spawn(move || {
            let mut buf = [0u8; PIECE];
            let mut total = 0;
            // Paces the reader at 200 KiB/s; nothing waits on these sleeps.
            let read = loop {
                match body.read(&mut buf) {
                    Ok(0) => break Ok(total),
                    Ok(n) => total += n,
                    Err(err) => break Err((err.kind(), total)),
                }
                std::thread::sleep(std::time::Duration::from_millis(40));
            };
            total_tx.send(read).unwrap();
        });
        "accepted"
    });
    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n");
    within(write.write_all(head.as_bytes())).await.unwrap();
    // The write half comes back: dropped, it would half-close the connection, which
    // hyper takes for the client leaving.
    let upload =
        tokio::spawn(async move { write.write_all(&vec![b'x'; TOTAL]).await.map(|()| write) });
    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.body, b"accepted");
    let read = within(tokio::task::spawn_blocking(move || {
        total_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("the reader finished");
    assert_eq!(read, Ok(TOTAL));
    let _write = within(upload).await.unwrap().unwrap();
    server.stop().await;
}

/// While its reader is behind, a body fed after the response keeps its connection busy;
/// once the reader drops it, that ends: a client that then stops sending the rest is
/// cut off at the header read timeout, as for any body nobody reads.
#[tokio::test]
async fn a_body_dropped_by_its_slow_reader_no_longer_keeps_a_stalled_client_connected() {
    const DECLARED: usize = 1024 * 1024;
    // More than the server takes in (the request channel's 256 KiB and a frame past it,
    // a frame in hyper's body channel and its 64 KiB read buffer: about 448 KiB), so that
    // the pump waits for room; the last 64 KiB wait in the sockets' buffers, which hold
    // them, so the upload completes while the reader holds the body. (At 448 KiB the
    // pump waits on the client instead, and the test no longer sees the guard.)
    const SENT: usize = 512 * 1024;
    let (read_tx, read_rx) = mpsc::channel();
    let (drop_tx, drop_rx) = mpsc::channel::<()>();
    let hand_off = Mutex::new(Some((read_tx, drop_rx)));
    let server = Server::bind("127.0.0.1:0")
        .header_read_timeout(std::time::Duration::from_millis(300))
        .keep_alive_timeout(Some(std::time::Duration::from_millis(300)));
    let server = TestServer::start_with(server, move |req: Request| {
        let (read_tx, drop_rx) = hand_off.lock().unwrap().take().expect("one request");
        let mut body = req.into_body();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8 * 1024];
            read_tx
                .send(body.read(&mut buf).map_err(|e| e.kind()))
                .unwrap();
            // Holds the body, unread, until the test has sent what it sends.
            let _ = drop_rx.recv_timeout(support::STEP);
            drop(body);
        });
        "accepted"
    });
    let stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: {DECLARED}\r\n\r\n");
    within(write.write_all(head.as_bytes())).await.unwrap();
    // More than the request channel holds, then nothing: the client stalls.
    let upload =
        tokio::spawn(async move { write.write_all(&vec![b'x'; SENT]).await.map(|()| write) });
    let reply = read_raw_response(&mut read).await.expect("a response");
    assert_eq!(reply.body, b"accepted");
    let first = within(tokio::task::spawn_blocking(move || {
        read_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap();
    assert!(matches!(first, Ok(Ok(n)) if n > 0), "{first:?}");
    let _write = within(upload).await.unwrap().unwrap();
    drop_tx.send(()).unwrap();
    // Closed without a word: what stalled was a body, not a request head to answer `408`.
    // A connection kept open fails the step (the stalled client kept it); its end may
    // be a close or a reset.
    let mut after = Vec::new();
    let _ = within(read.read_to_end(&mut after)).await;
    assert_eq!(
        String::from_utf8_lossy(&after),
        "",
        "sent after the response"
    );
    server.stop().await;
}

/// A handler may answer at once and leave the body to a thread of its own: the upload
/// goes on after the response, and the connection is busy (not idle for its header read
/// timeout) for as long as the body keeps coming.
#[tokio::test]
async fn a_body_read_on_after_the_response_is_not_cut_off_by_the_idle_timeouts() {
    const PIECE: usize = 1000;
    const PIECES: usize = 25;
    let (total_tx, total_rx) = mpsc::channel();
    let total_tx = Mutex::new(total_tx);
    let server = Server::bind("127.0.0.1:0")
        .header_read_timeout(std::time::Duration::from_secs(1))
        .keep_alive_timeout(Some(std::time::Duration::from_secs(1)));
    let server = TestServer::start_with(server, move |req: Request| {
        let total_tx = total_tx.lock().unwrap().clone();
        let mut body = req.into_body();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let read = body.read_to_end(&mut all).map_err(|e| e.kind());
            total_tx.send(read).unwrap();
        });
        "accepted"
    });
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = format!(
        "POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        PIECE * PIECES
    );
    within(stream.write_all(head.as_bytes())).await.unwrap();
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(reply.body, b"accepted");
    // A client that uploads slowly, as over a poor link: a piece every 100 ms, two
    // seconds and a half in all, past both timeouts (1 s: a pause in the client's writes
    // on a loaded machine must last nine of its steps to reach them).
    for _ in 0..PIECES {
        within(stream.write_all(&[b'x'; PIECE])).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let read = within(tokio::task::spawn_blocking(move || {
        total_rx.recv_timeout(support::STEP)
    }))
    .await
    .unwrap()
    .expect("the reader finished");
    assert_eq!(read, Ok(PIECE * PIECES));
    server.stop().await;
}
