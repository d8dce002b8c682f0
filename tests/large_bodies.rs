//! 256 MiB each way with the memory the process holds bounded. In a test binary of its
//! own: the assertion reads the whole process's peak memory, so unrelated tests running
//! beside it in the same process would blur it. For the same reason the two run one
//! after the other, each from a peak reset to what the process holds then.
mod support;

use std::io::Read;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::{h1, within, TestServer};
use syncbridge::{Request, Response, ResponseBody, Server};

const PART: usize = 64 * 1024;

const BIG: u64 = 256 * 1024 * 1024;
/// What the transfer may add to the process's peak memory (client and server together).
const MEMORY_BOUND: u64 = 48 * 1024 * 1024;

/// Held by each test for its whole run: the peak is the process's, and the tests of a
/// binary run at once unless told otherwise.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the process holds now, with its peak (`VmHWM`) reset to it (Linux's
/// `clear_refs`), so that an earlier test's transfer is not counted.
fn memory_with_the_peak_reset() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak memory");
    let (peak, rss) = support::memory();
    assert!(peak <= rss + 4 * 1024 * 1024, "the peak was not reset");
    rss
}

#[tokio::test]
async fn upload_of_256_mib_streams_with_bounded_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").max_body_size(BIG),
        |mut req: Request| {
            let mut n = 0u64;
            let mut buf = vec![0u8; PART];
            loop {
                match req.body_mut().read(&mut buf).expect("read") {
                    0 => return n.to_string(),
                    k => n += k as u64,
                }
            }
        },
    );
    let rss_before = memory_with_the_peak_reset();
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let chunks = stream::iter(
        (0..BIG >> 20).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let mut send = h1(server.addr).await;
    let req = http::Request::post("/upload")
        .header("host", "x")
        .header("content-length", BIG)
        .body(StreamBody::new(chunks))
        .unwrap();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(120), send.send_request(req))
            .await
            .expect("upload in time")
            .expect("response");
    let reply = support::collect(response).await;
    assert_eq!(reply.text(), BIG.to_string());
    let (peak, _) = support::memory();
    assert!(
        peak.saturating_sub(rss_before) < MEMORY_BOUND,
        "peak memory grew by {} MiB for a 256 MiB upload",
        peak.saturating_sub(rss_before) >> 20
    );
    server.stop().await;
}

#[tokio::test]
async fn download_of_256_mib_streams_with_bounded_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start(|_req: Request| {
        let mut response =
            Response::new(ResponseBody::from_reader(std::io::repeat(b'x').take(BIG)));
        response.headers_mut().insert("content-length", BIG.into());
        response
    });
    let rss_before = memory_with_the_peak_reset();
    let mut send = h1(server.addr).await;
    let req = http::Request::get("/big")
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = within(send.send_request(req)).await.expect("response");
    assert_eq!(
        response.headers()["content-length"],
        BIG.to_string().as_str()
    );
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut last_byte = 0u8;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while let Some(frame) = within(body.frame()).await {
        let data = frame.expect("frame").into_data().expect("data");
        received += data.len() as u64;
        last_byte = *data.last().unwrap_or(&last_byte);
        assert!(std::time::Instant::now() < deadline, "download too slow");
    }
    assert_eq!(received, BIG);
    assert_eq!(last_byte, b'x');
    let (peak, _) = support::memory();
    assert!(
        peak.saturating_sub(rss_before) < MEMORY_BOUND,
        "peak memory grew by {} MiB for a 256 MiB download",
        peak.saturating_sub(rss_before) >> 20
    );
    server.stop().await;
}
