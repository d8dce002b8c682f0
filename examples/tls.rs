//! Serving a legacy blocking app over HTTPS: a `SyncService` behind tokio-rustls, with
//! hyper-util's auto builder speaking HTTP/2 or HTTP/1.1 as the client chose by ALPN.
//! The bundled `Server` speaks plain HTTP only (over TCP or a Unix socket), no TLS: put
//! it behind a proxy that ends TLS, or serve the service yourself, as here.
//!
//! ```text
//! cargo run --example tls                        # https://127.0.0.1:8443 (or $PORT),
//!                                                # with a self-signed certificate
//! cargo run --example tls -- chain.pem key.pem   # your certificate chain and key
//! curl -k https://127.0.0.1:8443/hello           # -k: trust the self-signed one
//! curl -k --http1.1 https://127.0.0.1:8443/hello
//! curl -k --data-binary @some-file https://127.0.0.1:8443/echo
//! ```
//!
//! `docs/architecture.md` lists what the bundled server sets on each connection and a
//! host sets itself. This one sets what matters most over TLS: a connection limit, a
//! handshake timeout (a client that connects and says nothing holds a permit), hyper's
//! header read timeout (off unless hyper has a timer), HTTP/2's stream and window limits
//! (hyper's defaults let one connection hold 200 handler threads), PINGs that drop a
//! peer gone without a word, the client's address for the handler, and a graceful
//! shutdown that then waits for the blocking handlers.
//!
//! Left out: an idle timeout for HTTP/2. hyper has none, so an HTTP/2 client that
//! answers PINGs keeps its connection, and its slot under the connection limit, until it
//! closes it (the bundled server closes it after `keep_alive_timeout`, with a timer of
//! its own per connection).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use syncbridge::http::{self, StatusCode};
use syncbridge::{BlockingPool, Handler, RemoteAddr, Request, Response, SyncService};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Connections served at once; past it, clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head (HTTP/1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 streams per connection, each a handler thread at most.
const MAX_STREAMS: u32 = 100;
/// Request body an HTTP/2 client may send ahead of its handler, per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// How often an HTTP/2 connection is PINGed, and how long the answer may take.
const PING_INTERVAL: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the shutdown waits for open connections, then for blocking handlers.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body the app accepts; past it the client gets `413`.
const MAX_BODY: u64 = 16 << 20;

/// A TLS acceptor for `chain` and `key`, offering HTTP/2 first and then HTTP/1.1.
pub fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // Without ALPN a client falls back to HTTP/1.1, which the auto builder also serves.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A certificate for `localhost` and `127.0.0.1`, signed by itself, and its key.
pub fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    Ok((cert.der().clone(), key))
}

/// The legacy app's service on its own bounded pool, which the caller keeps to wait for
/// its handlers at exit.
pub fn app(pool: BlockingPool) -> SyncService<impl Handler> {
    SyncService::builder(legacy)
        .pool(pool)
        .max_body_size(MAX_BODY)
        .build()
}

/// The legacy app: ordinary blocking code, unaware of TLS.
fn legacy(req: Request) -> Response {
    match req.uri().path() {
        "/hello" => {
            let who = match req.extensions().get::<RemoteAddr>() {
                Some(RemoteAddr(addr)) => addr.to_string(),
                None => "someone".to_owned(),
            };
            Response::new(format!("hello {who}, over {:?}\n", req.version()).into())
        }
        // The request body streamed back as it arrives, with backpressure both ways. A
        // declared length past `MAX_BODY` is answered `413` before this runs; a chunked
        // body that grows past it breaks the response off (logged).
        "/echo" => Response::new(req.into_body().into()),
        _ => {
            let mut response = Response::new("not found\n".into());
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}

/// Serves `service` over TLS on `listener` until `shutdown` completes, then waits up to
/// [`SHUTDOWN_TIMEOUT`] for the connections still open. Runs on the caller's runtime.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: SyncService<H>,
    shutdown: impl Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(STREAM_WINDOW * MAX_STREAMS)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        // Taken before accepting, so that past the limit clients wait in the backlog
        // instead of costing a task and a file each.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of files, most often: retrying at once would spin a core.
                    tracing::warn!(error = %err, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        // The client's address, where the bundled server puts it for the handler.
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(RemoteAddr(peer));
            hyper::service::Service::call(&service, req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                // A port scanner or a client that distrusts the certificate: not the
                // server's fault, so not worth more than `debug`.
                Ok(Err(err)) => return tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown timeout; dropped");
    }
}

#[allow(dead_code)] // the example's entry point; tests include this file for the rest
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (chain, key) = match args.as_slice() {
        [] => {
            let (cert, key) = self_signed()?;
            (vec![cert], key)
        }
        [chain, key] => (
            CertificateDer::pem_file_iter(chain)?.collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
        ),
        _ => return Err("usage: tls [CHAIN.pem KEY.pem]".into()),
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "8443".to_owned());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("serving on https://{}", listener.local_addr()?);
    let pool = BlockingPool::builder()
        .max_threads(64)
        .queue_capacity(256)
        .build();
    // Ctrl-C, or SIGTERM (what `docker stop` and systemd send); set up before serving,
    // so that a signal that cannot be caught stops the example at once, not at the end.
    #[cfg(unix)]
    let shutdown = {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut int, mut term) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    };
    #[cfg(not(unix))]
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    serve_tls(listener, acceptor(chain, key)?, app(pool.clone()), shutdown).await;
    // Connections are closed; a handler whose client left may still run on its thread.
    pool.wait_idle(SHUTDOWN_TIMEOUT).await;
    Ok(())
}
