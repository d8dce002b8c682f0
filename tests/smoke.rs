mod support;

use support::{get, within, TestServer};

#[tokio::test]
async fn hello_over_http1() {
    let server = TestServer::start(|_req: syncbridge::Request| "Hello, World!");
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello, World!");
    assert_eq!(reply.headers["content-length"], "13");
    within(async {}).await;
    server.stop().await;
}
