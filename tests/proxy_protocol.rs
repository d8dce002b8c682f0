//! `Server::proxy_protocol`: the PROXY protocol header (versions 1 and 2) a TCP load
//! balancer writes before its client's bytes. The client it names is the request's
//! peer, over HTTP/1.1 and HTTP/2, for every request of the connection; a header that
//! names none leaves the peer; a connection without a valid header is closed
//! unanswered; an untrusted peer's header is read but not believed; and a connection
//! still waiting for its header is closed by the shutdown.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{closed_by_server, logs, read_raw_response, within, TestServer};
use syncbridge::{ClientIp, RemoteAddr, Request, Server, TrustedProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The request's peer and client as the server resolved them: `PEER CLIENT_IP`, `none`
/// for each missing.
fn whoami(req: Request) -> String {
    let peer = req.extensions().get::<RemoteAddr>().map(|p| p.0);
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    format!("{} {}", support::shown(peer), support::shown(client))
}

fn proxied() -> Server {
    Server::bind("127.0.0.1:0")
        .proxy_protocol(true)
        .remote_addr(true)
}

const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A version 2 header: `command` 1 is `PROXY`, 0 `LOCAL`.
fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20 | command, family]);
    header.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    header.extend_from_slice(addresses);
    header.extend_from_slice(tlvs);
    header
}

/// `PROXY` for a TCP client at 198.51.100.4:40000 (to 10.0.0.1:443), with `tlvs`.
fn v2_tcp4(tlvs: &[u8]) -> Vec<u8> {
    v2(
        1,
        0x11,
        &[198, 51, 100, 4, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb],
        tlvs,
    )
}

/// `GET path` on `stream`, with `extra` header lines: the response's body.
async fn ask(stream: &mut TcpStream, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: proxied\r\n{extra}\r\n");
    within(stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let reply = read_raw_response(stream).await.expect("a response");
    assert_eq!(reply.status, 200, "{}", reply.head);
    String::from_utf8(reply.body).expect("text")
}

/// A connection that has sent `start`, in pieces cut at `cuts` (see [`send_in_pieces`]).
async fn connect_with(addr: SocketAddr, start: &[u8], cuts: &[usize]) -> TcpStream {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    send_in_pieces(&mut stream, start, cuts).await;
    stream
}

/// Sends `bytes` in pieces cut at `cuts`, each on its own, 20 ms apart: not for
/// synchronisation, but so that the server sees a header arrive in parts, as a header
/// split by the network would (the tests hold whichever way the pieces arrive).
async fn send_in_pieces<S>(stream: &mut S, bytes: &[u8], cuts: &[usize])
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut from = 0;
    for &cut in cuts.iter().chain([&bytes.len()]) {
        within(stream.write_all(&bytes[from..cut]))
            .await
            .expect("write");
        from = cut;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_client_a_header_names_is_the_peer_of_every_request_on_its_connection() {
    let server = TestServer::start_with(proxied(), whoami);

    // Version 1, the header and a request in one write; and a second request on the
    // same connection, with no header before it.
    let mut first = V1_TCP4.to_vec();
    first.extend_from_slice(b"GET /a HTTP/1.1\r\nhost: proxied\r\n\r\n");
    let mut stream = connect_with(server.addr, &first, &[]).await;
    let reply = read_raw_response(&mut stream).await.expect("a response");
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        "203.0.113.7:51000 none"
    );
    assert_eq!(ask(&mut stream, "/b", "").await, "203.0.113.7:51000 none");

    // Version 1 over IPv6, arriving in three pieces, the CRLF itself split.
    let v1_tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
    let mut stream = connect_with(server.addr, v1_tcp6, &[3, v1_tcp6.len() - 1]).await;
    assert_eq!(ask(&mut stream, "/", "").await, "[2001:db8::7]:51000 none");

    // Version 2 with 1,500 bytes of TLVs (more than the server's buffer), in pieces
    // that cut the signature, the fixed part and the TLVs.
    // (Of bytes no HTTP request begins with: left unread, they would fail the request.)
    let mut tlvs = vec![0xe0, 0x05, 0xd9];
    tlvs.resize(1500, 0);
    let header = v2_tcp4(&tlvs);
    let mut stream = connect_with(server.addr, &header, &[5, 14, 40, 700]).await;
    assert_eq!(ask(&mut stream, "/", "").await, "198.51.100.4:40000 none");

    // Version 2, then HTTP/2 with prior knowledge.
    let stream = connect_with(server.addr, &v2_tcp4(&[]), &[]).await;
    let (mut send, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get("http://proxied/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within(send.send_request(req)).await.expect("response");
        let body = within(response.into_body().collect()).await.unwrap();
        assert_eq!(&body.to_bytes()[..], b"198.51.100.4:40000 none");
    }

    // The lines logged on the connection's behalf name the client, and the balancer.
    assert!(logs::eventually_contains(&["peer=198.51.100.4:40000", "proxy=127.0.0.1:"]).await);
    server.stop().await;
}

#[tokio::test]
async fn a_header_that_names_no_client_leaves_the_connection_its_peer() {
    let server = TestServer::start_with(proxied(), whoami);
    let unnamed = [
        // The balancer's health check, whatever its family says.
        v2(0, 0x11, &[9; 12], &[]),
        v2(0, 0x00, &[], &[]),
        // A client with no IP address: a Unix socket's, or the unspecified family.
        v2(1, 0x31, &[0; 216], &[]),
        v2(1, 0x00, &[], b"tlv"),
        b"PROXY UNKNOWN\r\n".to_vec(),
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
    ];
    for header in unnamed {
        let mut stream = connect_with(server.addr, &header, &[]).await;
        let own = stream.local_addr().unwrap();
        assert_eq!(ask(&mut stream, "/", "").await, format!("{own} none"));
    }
    server.stop().await;
}

/// The CPU time (user and system, in clock ticks) each thread of this process has used,
/// by its id.
#[cfg(target_os = "linux")]
fn cpu_by_thread() -> std::collections::HashMap<String, u64> {
    let mut by_thread = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        // A thread that ended since the directory was read has no `stat` left.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `utime` and `stime` are the 12th and 13th fields after the thread's name.
        let (_, fields) = stat.rsplit_once(')').unwrap();
        let ticks: u64 = fields
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|field| field.parse::<u64>().unwrap())
            .sum();
        by_thread.insert(task.file_name().to_string_lossy().into_owned(), ticks);
    }
    by_thread
}

/// The most CPU time any thread alive at `before` has used since, at Linux's 100 ticks a
/// second (`USER_HZ`).
#[cfg(target_os = "linux")]
fn busiest_thread_since(before: &std::collections::HashMap<String, u64>) -> Duration {
    let ticks = cpu_by_thread()
        .into_iter()
        // A thread id reused since by a new thread may show fewer ticks.
        .filter_map(|(thread, now)| now.checked_sub(*before.get(&thread)?))
        .max()
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Reads `stream` to its end: what the server sent before it closed (or reset) it.
async fn everything_sent(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = within(tokio::io::AsyncReadExt::read_to_end(stream, &mut got)).await;
    got
}

// The only test here that sends broken headers: their warnings are throttled to one a
// second for the whole binary, and it counts them.
#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_unanswered() {
    let timeout = Duration::from_secs(1);
    let server = TestServer::start_with(proxied().header_read_timeout(timeout), whoami);

    // A client that reached the port round the balancer: refused at its first byte, and
    // said, naming it.
    let mut direct = connect_with(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", &[]).await;
    let port = direct.local_addr().unwrap().port();
    assert!(everything_sent(&mut direct).await.is_empty());
    let peer = format!("peer=127.0.0.1:{port} ");
    assert!(
        logs::eventually_contains(&[
            "WARN",
            "connection closed: the connection does not begin with a PROXY protocol header",
            &peer,
            "left_out=0",
        ])
        .await
    );

    // Broken headers, each refused as soon as it is seen to be (the parser's own tests
    // name each reason); their warnings fall within the second, and are counted.
    let mut too_long = b"PROXY UNKNOWN ".to_vec();
    too_long.resize(200, b'x');
    let broken: [&[u8]; 5] = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\n",
        &too_long,
        &v2(2, 0x11, &[0; 12], &[]),
    ];
    for start in broken {
        let mut stream = connect_with(server.addr, start, &[]).await;
        let got = everything_sent(&mut stream).await;
        assert!(got.is_empty(), "{start:?}: answered {got:?}");
    }

    // A header begun and never finished, and a connection that says nothing: closed at
    // the header read timeout, not left holding a slot.
    let mut partial = connect_with(server.addr, &V1_TCP4[..20], &[]).await;
    let mut silent = connect_with(server.addr, b"", &[]).await;
    #[cfg(target_os = "linux")]
    let (cpu_before, waiting) = (cpu_by_thread(), std::time::Instant::now());
    assert!(closed_by_server(&mut partial).await);
    // Waiting for the rest of a header costs no CPU: a read loop that went round again
    // at once (peeking the same 20 bytes) would keep a runtime thread busy until the
    // timeout.
    #[cfg(target_os = "linux")]
    {
        let (busiest, waited) = (busiest_thread_since(&cpu_before), waiting.elapsed());
        assert!(
            busiest * 3 < waited,
            "a thread used {busiest:?} of CPU in the {waited:?} a header was awaited"
        );
    }
    assert!(closed_by_server(&mut silent).await);
    assert!(
        logs::eventually_contains(&["no PROXY protocol header within the header read timeout"])
            .await
    );

    // The time a header takes counts against the first request's: a header that comes
    // in pieces over 0.8 s (forty 20 ms sleeps) leaves a slow request head the rest of
    // a 2 s header read timeout, not 2 s more. On a server of its own, whose 2 s leave
    // a loaded machine's sleeps room to overrun: the whole header must be in before it.
    let slow_server = TestServer::start_with(
        proxied().header_read_timeout(Duration::from_secs(2)),
        whoami,
    );
    let connected = std::time::Instant::now();
    let cuts: Vec<usize> = (1..40).map(|i| i * V1_TCP4.len() / 40).collect();
    let mut slow = connect_with(slow_server.addr, V1_TCP4, &cuts).await;
    within(slow.write_all(b"GET / HTTP/1.1\r\n")).await.unwrap();
    assert!(connected.elapsed() >= Duration::from_millis(800));
    assert!(closed_by_server(&mut slow).await);
    let closed = connected.elapsed();
    // A timer begun again at the header's end would close at 2.8 s at the earliest.
    assert!(
        closed < Duration::from_millis(2700),
        "closed {closed:?} after the connect"
    );
    slow_server.stop().await;

    // A second on, the next broken header is said again, with the five left out.
    let mut late = connect_with(server.addr, &v2(1, 0x41, &[0; 12], &[]), &[]).await;
    let port = late.local_addr().unwrap().port();
    assert!(everything_sent(&mut late).await.is_empty());
    let peer = format!("peer=127.0.0.1:{port} ");
    assert!(
        logs::eventually_contains(&["WARN", "unknown family", &peer, "left_out=5"]).await,
        "no warning with the left-out count"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_untrusted_peer_s_header_is_read_but_not_believed() {
    let proxies =
        |list: &[&str]| -> Vec<TrustedProxy> { list.iter().map(|p| p.parse().unwrap()).collect() };

    // The test (127.0.0.1) is no trusted proxy: its header is required and read, and its
    // requests are its own.
    let server =
        TestServer::start_with(proxied().trusted_proxies(proxies(&["10.0.0.0/8"])), whoami);
    let mut stream = connect_with(server.addr, V1_TCP4, &[]).await;
    let own = stream.local_addr().unwrap();
    assert_eq!(
        ask(&mut stream, "/", "x-forwarded-for: 6.6.6.6\r\n").await,
        format!("{own} 127.0.0.1")
    );
    assert!(
        logs::eventually_contains(&["WARN", "no trusted proxy", "claimed=203.0.113.7:51000"]).await
    );
    server.stop().await;

    // A trusted balancer: the header's client is the peer whose `X-Forwarded-For` is
    // believed or not, as a direct peer's would be.
    let server = TestServer::start_with(
        proxied().trusted_proxies(proxies(&["127.0.0.1", "10.0.0.0/8"])),
        whoami,
    );
    let mut stream = connect_with(server.addr, V1_TCP4, &[]).await;
    assert_eq!(
        ask(&mut stream, "/", "x-forwarded-for: 6.6.6.6\r\n").await,
        "203.0.113.7:51000 203.0.113.7"
    );
    let from_a_proxy = b"PROXY TCP4 10.0.0.9 10.0.0.1 51000 443\r\n";
    let mut stream = connect_with(server.addr, from_a_proxy, &[]).await;
    assert_eq!(
        ask(
            &mut stream,
            "/",
            "x-forwarded-for: 6.6.6.6, 198.51.100.1\r\n"
        )
        .await,
        "10.0.0.9:51000 198.51.100.1"
    );
    // A client the balancer could not name: the balancer stays the peer, but the bytes,
    // its `X-Forwarded-For` included, are the client's, and name no one. The same for
    // a `LOCAL` header, which HAProxy sends for its own health checks but also for a
    // client it cannot name (one on a Unix socket): the balancer is the client, and no
    // `X-Forwarded-For` on it is believed.
    let mut unknown = connect_with(server.addr, b"PROXY UNKNOWN\r\n", &[]).await;
    let own = unknown.local_addr().unwrap();
    assert_eq!(
        ask(&mut unknown, "/", "x-forwarded-for: 6.6.6.6\r\n").await,
        format!("{own} none")
    );
    let mut local = connect_with(server.addr, &v2(0, 0x11, &[0; 12], &[]), &[]).await;
    let own = local.local_addr().unwrap();
    assert_eq!(
        ask(&mut local, "/", "x-forwarded-for: 198.51.100.2\r\n").await,
        format!("{own} 127.0.0.1")
    );
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_header_on_a_unix_socket_names_the_client() {
    let path = std::env::temp_dir().join(format!("sb-{}-proxy-protocol.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // Every Unix socket peer counts as a trusted proxy.
    // Bound before the setting, so that it applies there too.
    let server = Server::bind("127.0.0.1:0")
        .also_bind_unix(&path)
        .expect("bind the Unix socket")
        .proxy_protocol(true)
        .remote_addr(true)
        .trusted_proxies(Vec::<TrustedProxy>::new());
    let server = TestServer::start_with(server, whoami);
    // Whole, and in pieces that cut the signature, the addresses and the TLVs: the
    // peek on a Unix socket waits for more, as on TCP.
    let mut start = v2_tcp4(&[0; 600]);
    start.extend_from_slice(b"GET / HTTP/1.1\r\nhost: proxied\r\n\r\n");
    for cuts in [&[][..], &[7, 20, 300]] {
        let mut stream = within(tokio::net::UnixStream::connect(&path))
            .await
            .expect("connect");
        send_in_pieces(&mut stream, &start, cuts).await;
        let reply = read_raw_response(&mut stream).await.expect("a response");
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            "198.51.100.4:40000 198.51.100.4"
        );
    }
    server.stop().await;
    assert!(!path.exists(), "the socket file is removed at stop");
}

#[tokio::test]
async fn the_shutdown_closes_a_connection_still_waiting_for_its_header() {
    // The header read timeout (30 s) is far off: only the shutdown can close it.
    let server = TestServer::start_with(proxied(), whoami);
    let mut waiting = connect_with(server.addr, &V1_TCP4[..10], &[]).await;
    // The server has accepted it: a full connection after it is served.
    let mut served = connect_with(server.addr, V1_TCP4, &[]).await;
    assert_eq!(ask(&mut served, "/", "").await, "203.0.113.7:51000 none");
    drop(served);
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(closed_by_server(&mut waiting).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_direct_socket_takes_plain_connections_and_every_other_requires_the_header() {
    // The balancer's port, a port for a health checker that connects directly, and one
    // more bound after the setting, which applies there too.
    let server = Server::bind("127.0.0.1:0")
        .also_bind_direct("127.0.0.1:0")
        .expect("a second port")
        .proxy_protocol(true)
        .remote_addr(true)
        .also_bind("127.0.0.1:0")
        .expect("a third port");
    let syncbridge::ListenAddr::Tcp(third) = server.listen_addrs()[2] else {
        panic!("a TCP port");
    };
    let syncbridge::ListenAddr::Tcp(health) = server.listen_addrs()[1] else {
        panic!("a TCP port");
    };
    let server = TestServer::start_with(server, whoami);
    for (addr, required) in [(server.addr, true), (health, false), (third, true)] {
        assert!(
            logs::eventually_contains(&[
                "syncbridge listening",
                &format!("addr={addr} "),
                &format!("proxy_protocol={required}"),
            ])
            .await,
            "{addr}"
        );
    }

    // Plain on the direct port: its peer is its own.
    let reply = support::get(health, "/").await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().starts_with("127.0.0.1:"), "{}", reply.text());
    // A header there is no header but a broken request.
    let mut stream = connect_with(health, V1_TCP4, &[]).await;
    within(stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut stream).await.expect("an answer");
    assert_eq!(reply.status, 400);
    // Required on the other two, whenever they were bound.
    for addr in [server.addr, third] {
        let mut stream = connect_with(addr, V1_TCP4, &[]).await;
        assert_eq!(ask(&mut stream, "/", "").await, "203.0.113.7:51000 none");
    }
    server.stop().await;
}

/// `PP2_TYPE_NOOP` of `len` bytes: padding.
fn noop_tlv(len: u16) -> Vec<u8> {
    let mut tlv = vec![0x04];
    tlv.extend_from_slice(&len.to_be_bytes());
    tlv.resize(3 + usize::from(len), 0);
    tlv
}

/// `PP2_TYPE_SSL` with the `client` flags given: HAProxy's `send-proxy-v2-ssl`.
fn ssl_tlv(client: u8) -> Vec<u8> {
    vec![0x20, 0x00, 0x05, client, 0, 0, 0, 0]
}

#[tokio::test]
async fn a_header_that_says_the_client_came_over_tls_makes_its_scheme_https() {
    let trusting =
        |list: &[&str]| -> Vec<TrustedProxy> { list.iter().map(|p| p.parse().unwrap()).collect() };
    let server = TestServer::start_with(
        proxied().trusted_proxies(trusting(&["127.0.0.1", "10.0.0.0/8"])),
        support::client_ip_and_scheme,
    );
    let from_a_proxy = |tlvs: &[u8]| {
        v2(
            1,
            0x11,
            &[10, 0, 0, 9, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb],
            tlvs,
        )
    };
    // The header's own word, after other TLVs.
    let alpn = [0x01, 0x00, 0x02, b'h', b'2'];
    let cases: [(Vec<u8>, &[usize], &str, &str); 7] = [
        (
            v2_tcp4(&[&alpn[..], &ssl_tlv(0x01)].concat()),
            &[30, 36],
            "",
            "198.51.100.4 https",
        ),
        // Straddling the server's 232-byte buffer, past 199 bytes of padding: its type
        // and length come in two of the buffer's reads.
        (
            v2_tcp4(&[&noop_tlv(199)[..], &ssl_tlv(0x01)].concat()),
            &[],
            "",
            "198.51.100.4 https",
        ),
        (v2_tcp4(&ssl_tlv(0x00)), &[], "", "198.51.100.4 http"),
        (v2_tcp4(&[]), &[], "", "198.51.100.4 http"),
        // A client-side proxy in front of the balancer: its X-Forwarded-Proto decides,
        // and the header's word stands in for a missing one.
        (
            from_a_proxy(&ssl_tlv(0x01)),
            &[],
            "x-forwarded-proto: http\r\n",
            "10.0.0.9 http",
        ),
        (from_a_proxy(&ssl_tlv(0x01)), &[], "", "10.0.0.9 https"),
        // A client the balancer could not name, over TLS.
        (v2(1, 0x00, &[], &ssl_tlv(0x01)), &[], "", "none https"),
    ];
    for (header, cuts, extra, expected) in cases {
        let mut stream = connect_with(server.addr, &header, cuts).await;
        assert_eq!(ask(&mut stream, "/", extra).await, expected, "{header:?}");
    }
    server.stop().await;

    // From a peer that is no trusted proxy, the word is not believed either. (A header
    // that names no client: one that did would set off the untrusted-peer warning,
    // whose throttle another test here counts on.)
    let server = TestServer::start_with(
        proxied().trusted_proxies(trusting(&["10.0.0.0/8"])),
        support::client_ip_and_scheme,
    );
    let header = v2(1, 0x00, &[], &ssl_tlv(0x01));
    let mut stream = connect_with(server.addr, &header, &[]).await;
    assert_eq!(ask(&mut stream, "/", "").await, "127.0.0.1 http");
    server.stop().await;
}

#[tokio::test]
async fn the_client_a_header_names_is_the_one_counted_against_its_cap() {
    let server = TestServer::start_with(proxied().max_connections_per_client(1), whoami);
    // The balancer's connection for 203.0.113.7 takes the client's one place.
    let mut first = connect_with(server.addr, V1_TCP4, &[]).await;
    assert_eq!(ask(&mut first, "/", "").await, "203.0.113.7:51000 none");

    // A second one for the same client: answered 503.
    let mut second = connect_with(server.addr, V1_TCP4, &[]).await;
    within(second.write_all(b"GET / HTTP/1.1\r\nhost: proxied\r\n\r\n"))
        .await
        .unwrap();
    let reply = read_raw_response(&mut second).await.expect("an answer");
    assert_eq!(reply.status, 503, "{}", reply.head);

    // Another client through the same balancer, and the balancer's own health check
    // (`LOCAL`: the balancer, 127.0.0.1, is the client): each is served.
    let mut other = connect_with(server.addr, &v2_tcp4(&[]), &[]).await;
    assert_eq!(ask(&mut other, "/", "").await, "198.51.100.4:40000 none");
    let mut local = connect_with(server.addr, &v2(0, 0x11, &[0; 12], &[]), &[]).await;
    let own = local.local_addr().unwrap();
    assert_eq!(ask(&mut local, "/", "").await, format!("{own} none"));
    server.stop().await;
}

/// At the connection limit, a connection with not a byte of its header yet makes room as
/// an idle one does (an AWS NLB sends the header only with its client's first bytes, so a
/// client that connects and says nothing is one); one with part of its header keeps its
/// slot. The header read timeout is a minute: a slot held to it would fail the step.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_connection_with_no_header_yet_makes_room_at_the_limit_and_one_with_part_keeps_its_slot()
{
    let server = TestServer::start_with(
        proxied()
            .max_connections(1)
            .header_read_timeout(Duration::from_secs(60)),
        whoami,
    );
    let connect = || async { within(TcpStream::connect(server.addr)).await.unwrap() };

    // Part of a header, then a connection waiting for the slot: the part keeps it, and
    // once whole is served; then, idle, it makes room.
    let mut partial = connect().await;
    within(partial.write_all(b"PROXY TCP4 203.0.113.7 "))
        .await
        .unwrap();
    support::accepted_by_server(server.addr, partial.local_addr().unwrap()).await;
    let mut waiting = connect_with(server.addr, &v2_tcp4(&[]), &[]).await;
    support::accepted_by_server(server.addr, waiting.local_addr().unwrap()).await;
    within(partial.write_all(b"10.0.0.1 51000 443\r\n"))
        .await
        .unwrap();
    assert_eq!(ask(&mut partial, "/", "").await, "203.0.113.7:51000 none");
    assert_eq!(ask(&mut waiting, "/", "").await, "198.51.100.4:40000 none");

    // A silent connection takes the slot `waiting` makes room with; the next one gets it
    // from the silent one at once.
    let mut silent = connect().await;
    support::accepted_by_server(server.addr, silent.local_addr().unwrap()).await;
    let mut next = connect_with(server.addr, V1_TCP4, &[]).await;
    assert_eq!(ask(&mut next, "/", "").await, "203.0.113.7:51000 none");
    assert!(closed_by_server(&mut silent).await);
    assert!(
        logs::eventually_contains(&["DEBUG", "make room", "before its PROXY protocol header"])
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn a_header_read_timeout_of_duration_max_means_no_limit_for_the_header() {
    let server = TestServer::start_with(proxied().header_read_timeout(Duration::MAX), whoami);
    let mut stream = connect_with(server.addr, V1_TCP4, &[]).await;
    assert_eq!(ask(&mut stream, "/", "").await, "203.0.113.7:51000 none");
    server.stop().await;
}
