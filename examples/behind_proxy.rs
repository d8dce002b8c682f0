//! A server behind nginx, as gunicorn runs behind it: on a Unix domain socket (or on
//! 127.0.0.1:8000 with `--tcp`), believing the proxy's `X-Forwarded-For` and
//! `X-Forwarded-Proto` and nobody else's, and logging each request in a span named by
//! nginx's `X-Request-Id`.
//!
//! ```text
//! cargo run --example behind_proxy                     # unix:/tmp/syncbridge-behind-proxy.sock
//! cargo run --example behind_proxy -- --tcp            # 127.0.0.1:8000
//! FORWARDED_ALLOW_IPS="127.0.0.1,10.0.0.0/8" cargo run --example behind_proxy -- --tcp
//! cargo run --example behind_proxy -- --tcp --proxy-protocol   # behind HAProxy's
//!                                                              # send-proxy, an AWS NLB
//! cargo run --example behind_proxy -- --tcp --forwarded        # behind HAProxy's
//!                                                              # option forwarded
//!
//! curl --unix-socket /tmp/syncbridge-behind-proxy.sock http://app/ \
//!      -H 'X-Forwarded-For: 6.6.6.6, 203.0.113.7' -H 'X-Forwarded-Proto: https'
//! # you are 203.0.113.7, over https: curl plays nginx, whose appended entry (the
//! # rightmost) names its client; 6.6.6.6 is what that client wrote itself, and proves
//! # nothing
//! ```
//!
//! The nginx side:
//!
//! ```nginx
//! upstream app { server unix:/tmp/syncbridge-behind-proxy.sock; keepalive 16; }
//! server {
//!     listen 443 ssl;
//!     location / {
//!         proxy_pass http://app;
//!         proxy_http_version 1.1;
//!         proxy_set_header Connection "";
//!         proxy_set_header Host $host;
//!         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//!         proxy_set_header X-Forwarded-Proto $scheme;
//!         proxy_set_header X-Request-Id $request_id;
//!     }
//! }
//! ```
//!
//! `FORWARDED_ALLOW_IPS` lists the proxies' addresses or networks, as for uvicorn and
//! gunicorn (default here `127.0.0.1,::1`). On the Unix socket every peer is a trusted
//! proxy: the socket file's permissions say who may connect.
//!
//! With `--proxy-protocol`, every connection must begin with a PROXY protocol header
//! (HAProxy's `server app 127.0.0.1:8000 send-proxy` in a `mode tcp` backend), whose
//! client, from a trusted proxy, is the connection's peer; curl plays HAProxy with
//! `curl --haproxy-protocol http://127.0.0.1:8000/` (it names itself, though).
//! Connections without the header are closed: plain `curl` gets a reset connection
//! (its request is left unread), and the log says why.
//!
//! With `--forwarded`, the proxies' RFC 7239 `Forwarded` is read instead of the
//! `X-Forwarded-*` headers (HAProxy 2.8's `option forwarded` in an `http` backend):
//!
//! ```text
//! curl http://127.0.0.1:8000/ -H 'Forwarded: for=6.6.6.6, proto=https;for=203.0.113.7'
//! # you are 203.0.113.7, over https
//! ```

use syncbridge::http::uri::Scheme;
use syncbridge::{ClientIp, ClientScheme, ForwardedHeaders, Request, Server, TrustedProxy};

fn whoami(req: Request) -> String {
    // In `conn{peer=unix}:request{id=…}`: nginx's log line has the same id.
    tracing::info!(path = req.uri().path(), "whoami");
    let client = match req.extensions().get::<ClientIp>() {
        Some(ClientIp(ip)) => ip.to_string(),
        // A Unix socket's peer with no `X-Forwarded-For`: nobody to name.
        None => "unknown".to_owned(),
    };
    let secure = req
        .extensions()
        .get::<ClientScheme>()
        .is_some_and(|scheme| scheme.0 == Scheme::HTTPS);
    format!(
        "you are {client}, over {}\n",
        if secure { "https" } else { "http" }
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let allowed = std::env::var("FORWARDED_ALLOW_IPS").unwrap_or_else(|_| "127.0.0.1,::1".into());
    // A typo is an error at start, not a proxy silently left untrusted.
    let proxies = allowed
        .split(',')
        .map(|entry| entry.trim().parse::<TrustedProxy>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("FORWARDED_ALLOW_IPS={allowed:?}: {err}"))?;

    let server = if std::env::args().any(|arg| arg == "--tcp") {
        Server::try_bind("127.0.0.1:8000")?
    } else {
        tcp_or_unix()?
    };
    let proxy_protocol = std::env::args().any(|arg| arg == "--proxy-protocol");
    let headers = if std::env::args().any(|arg| arg == "--forwarded") {
        ForwardedHeaders::Forwarded
    } else {
        ForwardedHeaders::XForwarded
    };
    println!(
        "serving on {}, trusting {proxies:?} ({headers:?}){}",
        server.listen_addr(),
        if proxy_protocol {
            ", PROXY protocol required"
        } else {
            ""
        }
    );
    server
        .proxy_protocol(proxy_protocol)
        .trusted_proxies(proxies)
        .forwarded_headers(headers)
        .request_span(|req: &mut Request| {
            use tracing::field::{display, Empty};
            let span = tracing::info_span!("request", id = Empty, client = Empty);
            if let Some(id) = req.headers().get("x-request-id") {
                span.record("id", id.to_str().unwrap_or("(not ASCII)"));
            }
            if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
                span.record("client", display(ip));
            }
            span
        })
        .serve(whoami)?;
    Ok(())
}

#[cfg(unix)]
fn tcp_or_unix() -> syncbridge::Result<Server> {
    Server::try_bind_unix("/tmp/syncbridge-behind-proxy.sock")
}

#[cfg(not(unix))]
fn tcp_or_unix() -> syncbridge::Result<Server> {
    // No Unix sockets here: TCP it is.
    Server::try_bind("127.0.0.1:8000")
}
