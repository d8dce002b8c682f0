//! `Server::trusted_proxies`: the client behind a reverse proxy, from its
//! `X-Forwarded-For` and `X-Forwarded-Proto` (or RFC 7239's `Forwarded`), believed only from a
//! trusted proxy.

mod support;

use std::net::SocketAddr;

use support::TestServer;
use syncbridge::{ForwardedHeaders, Request, Server, TrustedProxy};

// Names the request's client as the server resolved it: `IP SCHEME`, `none` for each
// missing.
use support::client_ip_and_scheme as client;

fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

/// `GET /` with `headers`, over HTTP/2 or HTTP/1.1, on a fresh connection: the body.
async fn client_seen(addr: SocketAddr, http2: bool, headers: &[(&str, &str)]) -> String {
    let raw: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    client_seen_raw(addr, http2, &raw).await
}

/// As [`client_seen`], with header values that may hold any byte HTTP allows.
async fn client_seen_raw(addr: SocketAddr, http2: bool, headers: &[(&str, &[u8])]) -> String {
    let reply = support::get_with(addr, http2, "/", headers).await;
    assert_eq!(reply.status, 200);
    reply.text()
}

/// What a client behind two proxies sends, having put a forged entry first.
const FORWARDED: [(&str, &str); 2] = [
    ("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2"),
    ("x-forwarded-proto", "https"),
];

#[tokio::test]
async fn a_trusted_proxys_client_is_read_from_the_right_of_its_header() {
    // The test client (127.0.0.1) plays the proxy nearest the server, 10.0.0.2 the one
    // before it.
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").trusted_proxies(proxies(&["127.0.0.1", "10.0.0.0/8"])),
        client,
    );
    for http2 in [false, true] {
        // Past both proxies, and not the client's own forged first entry.
        assert_eq!(
            client_seen(server.addr, http2, &FORWARDED).await,
            "203.0.113.7 https",
            "http2: {http2}"
        );
        // Without the headers: the proxy itself, over plain HTTP.
        assert_eq!(client_seen(server.addr, http2, &[]).await, "127.0.0.1 http");
    }
    // Several lines of the header are one list, in order.
    let lines = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-for", "203.0.113.8"),
        ("x-forwarded-for", "10.0.0.2"),
    ];
    assert_eq!(
        client_seen(server.addr, false, &lines).await,
        "203.0.113.8 http"
    );
    // A client's own line with a byte that is not ASCII, which nginx appends the
    // client's address to: the client is still found, not the proxy.
    for http2 in [false, true] {
        let spoiled: [(&str, &[u8]); 1] = [("x-forwarded-for", b"caf\xe9, 203.0.113.9")];
        assert_eq!(
            client_seen_raw(server.addr, http2, &spoiled).await,
            "203.0.113.9 http",
            "http2: {http2}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_is_no_trusted_proxy_is_its_own_client_whatever_its_headers_say() {
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").trusted_proxies(proxies(&["10.0.0.0/8"])),
        |req: Request| {
            // The headers themselves reach the handler as they came.
            let raw = req.headers().get("x-forwarded-for").cloned();
            format!("{} / {raw:?}", client(req))
        },
    );
    assert_eq!(
        client_seen(server.addr, false, &FORWARDED).await,
        "127.0.0.1 http / Some(\"6.6.6.6, 203.0.113.7, 10.0.0.2\")"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_trusted_proxies_requests_carry_no_client() {
    let server = TestServer::start(client);
    assert_eq!(
        client_seen(server.addr, false, &FORWARDED).await,
        "none none"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_dual_stack_listeners_ipv4_peer_is_matched_as_ipv4() {
    // On `[::]`, an IPv4 client's address is IPv4-mapped (`::ffff:127.0.0.1`): it must
    // still be the trusted `127.0.0.1`, and the client it names is reported as IPv4.
    let Ok(server) = Server::try_bind("[::]:0") else {
        eprintln!("no IPv6 on this machine; a dual-stack listener cannot be tested");
        return;
    };
    let port = server.local_addr().port();
    let server = TestServer::start_with(server.trusted_proxies(proxies(&["127.0.0.1"])), client);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let forged = [("x-forwarded-for", "::ffff:203.0.113.9")];
    assert_eq!(client_seen(addr, false, &forged).await, "203.0.113.9 http");
    assert_eq!(client_seen(addr, false, &[]).await, "127.0.0.1 http");
    server.stop().await;
}

#[tokio::test]
async fn told_so_the_server_reads_forwarded_and_no_x_forwarded_header() {
    // HAProxy's `option forwarded` appends its element; the client wrote the first one,
    // and X-Forwarded-* headers the proxy passes on unread.
    let server = TestServer::start_with(
        // Told after `trusted_proxies`: the order of the two calls does not matter.
        Server::bind("127.0.0.1:0")
            .trusted_proxies(proxies(&["127.0.0.1", "10.0.0.0/8"]))
            .forwarded_headers(ForwardedHeaders::Forwarded),
        client,
    );
    let behind_two = [(
        "forwarded",
        "for=6.6.6.6;proto=http, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2",
    )];
    for http2 in [false, true] {
        assert_eq!(
            client_seen(server.addr, http2, &behind_two).await,
            "2001:db8::7 https",
            "http2: {http2}"
        );
        assert_eq!(
            client_seen(server.addr, http2, &FORWARDED).await,
            "127.0.0.1 http",
            "http2: {http2}"
        );
    }
    server.stop().await;

    // Told before: the same. Without it, `Forwarded` is the client's own text.
    let told_first = Server::bind("127.0.0.1:0")
        .forwarded_headers(ForwardedHeaders::Forwarded)
        .trusted_proxies(proxies(&["127.0.0.1"]));
    let server = TestServer::start_with(told_first, client);
    let one = [("forwarded", "for=203.0.113.7;proto=https")];
    assert_eq!(
        client_seen(server.addr, false, &one).await,
        "203.0.113.7 https"
    );
    server.stop().await;
    let server = TestServer::start_with(
        Server::bind("127.0.0.1:0").trusted_proxies(proxies(&["127.0.0.1"])),
        client,
    );
    assert_eq!(
        client_seen(server.addr, false, &one).await,
        "127.0.0.1 http"
    );
    server.stop().await;
}
