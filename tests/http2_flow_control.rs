//! HTTP/2 flow control against the server's own queue: uploads on one connection whose
//! requests wait for a thread must not hold back the one a handler is reading.
mod support;

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::{h2, within, TestServer};
use syncbridge::{Request, Server};

/// Reads the whole body and answers its length.
fn read_all(mut req: Request) -> std::io::Result<String> {
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match req.body_mut().read(&mut buf)? {
            0 => return Ok(n.to_string()),
            k => n += k as u64,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_uploads_on_one_connection_leave_window_for_the_one_being_read() {
    // Before: each queued stream held its 256 KiB stream window of body unread, and four
    // of them used up hyper's 1 MiB connection window. The running handler then got no
    // more of its own body: its read timed out and its client, which had sent at full
    // speed, got `408`.
    const STREAMS: usize = 5;
    const SIZE: usize = 2 << 20;
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0")
            .max_threads(1)
            .body_timeout(Duration::from_secs(3)),
        read_all,
    );
    let send = h2::<Full<Bytes>>(server.addr).await;
    let body = Bytes::from(vec![b'x'; SIZE]);
    let uploads: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut send = send.clone();
            let req = http::Request::post(format!("http://{}/{i}", server.addr))
                .body(Full::new(body.clone()))
                .unwrap();
            tokio::spawn(async move {
                let response = within(send.send_request(req)).await.expect("response");
                support::collect(response).await
            })
        })
        .collect();
    for upload in uploads {
        let reply = within(upload).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), SIZE.to_string());
    }
    server.stop().await;
}
