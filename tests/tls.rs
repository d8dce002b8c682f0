//! The TLS example over real HTTPS: a rustls client that trusts the example's
//! self-signed certificate, speaking HTTP/2 or HTTP/1.1 as ALPN settles.
mod support;

#[path = "../examples/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{channel_body, collect, within, Reply};
use syncbridge::BlockingPool;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The example's server on 127.0.0.1:0 until `stop`.
struct Https {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    pool: BlockingPool,
    shutdown: oneshot::Sender<()>,
    served: JoinHandle<()>,
}

async fn serve() -> Https {
    support::logs::install();
    let (cert, key) = tls::self_signed().unwrap();
    let acceptor = tls::acceptor(vec![cert.clone()], key).unwrap();
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = BlockingPool::builder().max_threads(4).build();
    let (shutdown, signal) = oneshot::channel::<()>();
    let served = tokio::spawn(tls::serve_tls(
        listener,
        acceptor,
        tls::app(pool.clone()),
        async {
            let _ = signal.await;
        },
    ));
    Https {
        addr,
        cert,
        pool,
        shutdown,
        served,
    }
}

impl Https {
    /// A TLS connection offering only `alpn`, and the protocol the server chose.
    async fn connect(&self, alpn: &[u8]) -> (TlsStream<TcpStream>, SocketAddr) {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = within(TcpStream::connect(self.addr)).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = within(TlsConnector::from(Arc::new(config)).connect(name, tcp))
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        (tls, local)
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        within(self.served).await.unwrap();
        assert_eq!(within(self.pool.wait_idle(support::STEP)).await.busy, 0);
    }
}

async fn h2_over<B>(tls: TlsStream<TcpStream>) -> http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(tls)))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn https_serves_http2_and_http11_as_alpn_chooses_and_tells_the_handler_who_asked() {
    let server = serve().await;

    let (tls, local) = server.connect(b"h2").await;
    let mut send = h2_over::<Empty<Bytes>>(tls).await;
    let reply: Reply = collect(within(send.send_request(get("/hello"))).await.unwrap()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("hello {local}, over HTTP/2.0\n"));

    let (tls, local) = server.connect(b"http/1.1").await;
    let (mut send, conn) = within(http1::handshake(TokioIo::new(tls))).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/hello")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = collect(within(send.send_request(req)).await.unwrap()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("hello {local}, over HTTP/1.1\n"));

    let reply = collect(within(send.send_request(get("/nowhere"))).await.unwrap()).await;
    assert_eq!(reply.status, 404);

    // Both connections are still open, one of them idle: the shutdown closes them and
    // returns without waiting out its timeout.
    server.stop().await;
}

#[tokio::test]
async fn a_streamed_upload_comes_back_streamed_over_tls() {
    let server = serve().await;
    let (tls, _) = server.connect(b"h2").await;
    let mut send = h2_over(tls).await;
    let (parts, body) = channel_body(2);
    let req = http::Request::post("https://localhost/echo")
        .body(body)
        .unwrap();
    let response = within(send.send_request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut echoed = response.into_body();

    // Each part comes back before the next is sent: nothing waits for the whole body.
    for i in 0..8u8 {
        let part = Bytes::from(vec![i; 100 * 1024]);
        within(parts.send(part.clone())).await.unwrap();
        let mut back = Vec::new();
        while back.len() < part.len() {
            let frame = within(echoed.frame()).await.unwrap().unwrap();
            back.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(back, part, "part {i}");
    }
    drop(parts);
    let rest = within(echoed.collect()).await.unwrap().to_bytes();
    assert!(
        rest.is_empty(),
        "the echo ends with the upload: {} more bytes",
        rest.len()
    );
    server.stop().await;
}
