//! The client behind a reverse proxy: which peers are trusted proxies
//! ([`Server::trusted_proxies`](crate::Server::trusted_proxies); `trusted_proxy` says
//! what one is), and what their
//! `X-Forwarded-For` and `X-Forwarded-Proto`, or their `Forwarded`
//! ([`ForwardedHeaders`]), say about the client.
//!
//! `X-Forwarded-For` is a list every proxy appends its own peer to; its first entries are
//! whatever the client wrote. So it is read from the right: each entry a trusted proxy
//! wrote is believed, and the first one that is not a trusted proxy's own address is the
//! client (uvicorn's `--forwarded-allow-ips`, whose `ProxyHeadersMiddleware` walks it
//! so; gunicorn's `forwarded_allow_ips` decides only whether the scheme headers are
//! believed). Reading the leftmost entry would let any client choose its address.
//! `Forwarded` (RFC 7239) is a list of the same kind, walked the same way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::HeaderName;
use http::uri::Scheme;
use http::{Extensions, HeaderMap};

use super::forwarded_elements::{self, Element};
use super::remote::Peer;
use super::trusted_proxy::TrustedProxy;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The most `X-Forwarded-For` entries read from the right: the work per request stays
/// bounded whatever the header holds (it is already bounded by `max_header_size`).
const MAX_HOPS: usize = 32;

/// The client's IP address, once the server knows which peers are proxies
/// ([`Server::trusted_proxies`](crate::Server::trusted_proxies)): the peer's own
/// address, or, from a trusted proxy, the client its `X-Forwarded-For` names.
///
/// From a trusted proxy it is the rightmost `X-Forwarded-For` entry that is not itself
/// a trusted proxy: the entries to its left were written by that client, and prove
/// nothing. Every line of the header counts, in order, as one list. When every entry is
/// a trusted proxy, it is the leftmost (so a list that trusts every address, such as
/// `0.0.0.0/0`, lets any client choose it); when an entry is not an address (`unknown`,
/// an obfuscated name, bytes that are not ASCII), the trusted hop to its right. At most
/// the 32 rightmost entries are read: past them, the 32nd stands for the client. A
/// request from a Unix socket's peer carries none unless the header names an address
/// the walk reaches.
///
/// With [`Server::forwarded_headers`](crate::Server::forwarded_headers) set to
/// [`ForwardedHeaders::Forwarded`], the list is RFC 7239's `Forwarded` instead, each
/// element's `for` an entry, walked the same way (an element with no `for`, or one that
/// is not RFC 7239's syntax, names no address).
///
/// # Examples
///
/// ```
/// use syncbridge::{ClientIp, Request};
///
/// fn whoami(req: Request) -> String {
///     match req.extensions().get::<ClientIp>() {
///         Some(ClientIp(ip)) => format!("you are {ip}\n"),
///         None => "unknown\n".to_owned(),
///     }
/// }
/// # let _ = whoami;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The scheme the client's request came in with (`https` behind a proxy that ends TLS),
/// as the trusted proxies report it, once the server knows which peers are
/// proxies ([`Server::trusted_proxies`](crate::Server::trusted_proxies)): gunicorn's
/// `wsgi.url_scheme`.
///
/// From a trusted proxy it is what the last `X-Forwarded-Proto` value says, the one
/// the nearest proxy wrote (`https` or `wss`: HTTPS; `http` or `ws`: HTTP; any other
/// value: HTTP); otherwise, the scheme of the connection itself: HTTP (the server
/// speaks no TLS), or HTTPS when a PROXY protocol header says the client's connection to
/// the balancer was TLS ([`Server::proxy_protocol`](crate::Server::proxy_protocol)).
/// Behind two proxies, the outer one ending TLS, the inner one must pass the outer one's
/// value on, not write its own `http`. gunicorn's other default scheme headers
/// (`X-Forwarded-Protocol: ssl`, `X-Forwarded-Ssl: on`) are not read.
///
/// With [`ForwardedHeaders::Forwarded`] it is the `proto` of the `Forwarded` element the
/// walk for the [`ClientIp`] ends on: the element naming the client, written by the
/// proxy the client connected to, or the first that names no address (written by the
/// trusted proxy that could not name its client). Each proxy appends its own element,
/// so none passes another's `proto` on. Without a `proto` there: the connection's own
/// scheme, as above.
///
/// # Examples
///
/// ```
/// use syncbridge::http::uri::Scheme;
/// use syncbridge::{ClientScheme, Request};
///
/// fn is_secure(req: &Request) -> bool {
///     req.extensions()
///         .get::<ClientScheme>()
///         .is_some_and(|scheme| scheme.0 == Scheme::HTTPS)
/// }
/// # let _ = is_secure;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientScheme(pub Scheme);

/// Which headers a server's trusted proxies name the client in
/// ([`Server::forwarded_headers`](crate::Server::forwarded_headers)). One kind only: the
/// other reaches the handler as the client wrote it, and believing it would let the
/// client choose its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For` and `X-Forwarded-Proto`, which nginx
    /// (`$proxy_add_x_forwarded_for`), HAProxy (`option forwardfor`), Envoy, Traefik,
    /// Caddy and the clouds' load balancers write. The default.
    #[default]
    XForwarded,
    /// `Forwarded` (RFC 7239), its `for` and `proto` parameters: HAProxy's
    /// `option forwarded` (2.8 and later), nginx with a `map` that appends
    /// `for=$remote_addr` to the client's header.
    Forwarded,
}

/// The proxies a server trusts, shared by its connections, and the headers they write.
#[derive(Debug)]
pub(crate) struct Proxies {
    list: Box<[TrustedProxy]>,
    headers: ForwardedHeaders,
}

impl Proxies {
    pub(super) fn new(list: Vec<TrustedProxy>, headers: ForwardedHeaders) -> Self {
        Proxies {
            list: list.into_boxed_slice(),
            headers,
        }
    }

    fn trust(&self, ip: IpAddr) -> bool {
        self.list.iter().any(|net| net.contains(ip))
    }

    /// Whether `peer` is a trusted proxy: one of the list, or any Unix socket's peer.
    pub(super) fn trust_peer(&self, peer: Peer) -> bool {
        peer.remote_addr()
            .is_none_or(|addr| self.trust(addr.ip().to_canonical()))
    }
}

/// Where one connection's requests take their [`ClientIp`] and [`ClientScheme`] from:
/// fixed by its peer (or its PROXY protocol header) when it is accepted.
#[derive(Clone, Debug)]
pub(crate) struct ClientSource {
    via: Via,
    /// Whether the client's connection was TLS as far as the server can tell without a
    /// proxy's header: a PROXY protocol header's `PP2_CLIENT_SSL` (HAProxy's
    /// `send-proxy-v2-ssl`, ending TLS in front). The scheme, unless a trusted proxy's
    /// `X-Forwarded-Proto` says otherwise.
    tls: bool,
}

#[derive(Clone, Debug)]
enum Via {
    /// A peer that is no trusted proxy, or a balancer's own connection (a PROXY protocol
    /// `LOCAL`): the client is the peer, whatever its headers say.
    Direct(IpAddr),
    /// A trusted proxy (or a Unix socket's peer, which has no address: `None`): the
    /// client is in its headers.
    Proxy(Option<IpAddr>, Arc<Proxies>),
    /// A client behind a TCP balancer whose PROXY protocol header named no address for
    /// it (HAProxy's `UNKNOWN`): the bytes are the client's own, with no proxy's headers
    /// to believe, and its address is not known.
    Unknown,
}

impl ClientSource {
    pub(super) fn of(peer: Peer, proxies: &Arc<Proxies>) -> Self {
        let via = match peer.remote_addr().map(|addr| addr.ip().to_canonical()) {
            Some(ip) if !proxies.trust(ip) => Via::Direct(ip),
            ip => Via::Proxy(ip, proxies.clone()),
        };
        ClientSource { via, tls: false }
    }

    /// The peer itself, whatever its headers say, trusted proxy or not (a PROXY
    /// protocol `LOCAL` connection): a Unix socket's peer, with no address, gets no
    /// `ClientIp`.
    pub(super) fn direct(peer: Peer) -> Self {
        let via = match peer.remote_addr() {
            Some(addr) => Via::Direct(addr.ip().to_canonical()),
            None => Via::Unknown,
        };
        ClientSource { via, tls: false }
    }

    /// A client a PROXY protocol header could not name (see [`Via::Unknown`]).
    pub(super) fn unknown() -> Self {
        ClientSource {
            via: Via::Unknown,
            tls: false,
        }
    }

    /// With the client's connection TLS, as a PROXY protocol header said.
    pub(super) fn over_tls(self, tls: bool) -> Self {
        ClientSource { tls, ..self }
    }

    /// Puts the request's [`ClientIp`] (when known) and [`ClientScheme`] in
    /// `extensions`.
    pub(crate) fn resolve(&self, headers: &HeaderMap, extensions: &mut Extensions) {
        let own = if self.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let (ip, scheme) = match &self.via {
            Via::Direct(ip) => (Some(*ip), own),
            Via::Unknown => (None, own),
            Via::Proxy(peer, proxies) => match proxies.headers {
                ForwardedHeaders::XForwarded => (
                    forwarded_for(*peer, headers, proxies),
                    forwarded_proto(headers).unwrap_or(own),
                ),
                ForwardedHeaders::Forwarded => {
                    let (ip, scheme) = forwarded(*peer, headers, proxies);
                    (ip, scheme.unwrap_or(own))
                }
            },
        };
        if let Some(ip) = ip {
            extensions.insert(ClientIp(ip));
        }
        extensions.insert(ClientScheme(scheme));
    }
}

/// The client a trusted proxy `peer` names: its `X-Forwarded-For` read from the right
/// (over every line of the header, in order), past each trusted proxy.
fn forwarded_for(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &Proxies) -> Option<IpAddr> {
    let mut nearest = peer;
    for entry in elements_from_the_right(headers, &X_FORWARDED_FOR).take(MAX_HOPS) {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
            tracing::debug!(
                entry = %String::from_utf8_lossy(entry),
                "X-Forwarded-For entry is no address; the client is taken to be the hop after it"
            );
            return nearest;
        };
        if !proxies.trust(ip) {
            return Some(ip);
        }
        nearest = Some(ip);
    }
    nearest
}

/// The elements of every `name` line, last first, trimmed, empty ones left out (HTTP's
/// list syntax allows them, and they say nothing). Split on the raw bytes: a line with a
/// byte that is not ASCII (obs-text, which hyper passes on) still has its other elements.
/// Reading such a line as one element that is no address let a client hide its own
/// address behind nginx's `$proxy_add_x_forwarded_for`, which appends it to the client's
/// line: the walk stopped there and named the proxy.
fn elements_from_the_right<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// An `X-Forwarded-For` entry's address: `192.0.2.1`, `2001:db8::1`, or either with a
/// port (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as some load balancers write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .or_else(|_| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .unwrap_or("")
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
}

/// A `Forwarded` node's address: an `X-Forwarded-For` entry's forms, or an address
/// with an obfuscated port (`192.0.2.7:_p1`, `[2001:db8::7]:_p1`: RFC 7239's
/// `obfport`, which HAProxy's `for_port-expr` may write).
fn node_address(node: &str) -> Option<IpAddr> {
    if let Some(ip) = parse_entry(node) {
        return Some(ip);
    }
    let (addr, port) = node.rsplit_once(":_")?;
    let obfport = port
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !obfport || port.is_empty() {
        return None;
    }
    let ip = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse().ok()?),
        None => IpAddr::V4(addr.parse().ok()?),
    };
    Some(ip.to_canonical())
}

/// The scheme a trusted proxy's last `X-Forwarded-Proto` value names (`http` for one it
/// does not know); `None` without one.
fn forwarded_proto(headers: &HeaderMap) -> Option<Scheme> {
    let value = elements_from_the_right(headers, &X_FORWARDED_PROTO).next()?;
    Some(scheme_named(value, "X-Forwarded-Proto"))
}

/// The client and its scheme a trusted proxy `peer`'s `Forwarded` names: its elements
/// read from the right, past each trusted proxy, as `X-Forwarded-For`'s entries are. The
/// scheme is the `proto` of the element the walk ends on: the one the proxy that received
/// the client's own connection wrote about it (`None` when it has none).
fn forwarded(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    proxies: &Proxies,
) -> (Option<IpAddr>, Option<Scheme>) {
    let mut nearest = (peer, None);
    for raw in forwarded_elements::elements_from_the_right(headers).take(MAX_HOPS) {
        let element = Element::parse(raw).unwrap_or_default();
        let scheme = element
            .proto
            .as_deref()
            .map(|proto| scheme_named(proto, "Forwarded's proto"));
        let node = element.for_node.as_deref().unwrap_or_default();
        let Some(ip) = std::str::from_utf8(node).ok().and_then(node_address) else {
            tracing::debug!(
                element = %String::from_utf8_lossy(raw),
                "Forwarded element names no address; the client is taken to be the hop after it"
            );
            return (nearest.0, scheme);
        };
        if !proxies.trust(ip) {
            return (Some(ip), scheme);
        }
        nearest = (Some(ip), scheme);
    }
    nearest
}

/// The scheme a proxy's `value` names: `https` or `wss` HTTPS, anything else HTTP.
fn scheme_named(value: &[u8], header: &'static str) -> Scheme {
    if value.eq_ignore_ascii_case(b"https") || value.eq_ignore_ascii_case(b"wss") {
        return Scheme::HTTPS;
    }
    if !(value.eq_ignore_ascii_case(b"http") || value.eq_ignore_ascii_case(b"ws")) {
        tracing::debug!(
            value = %String::from_utf8_lossy(value),
            "{header} names no known scheme; taken as http"
        );
    }
    Scheme::HTTP
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> Proxies {
        let list = list.iter().map(|p| p.parse().unwrap()).collect();
        Proxies::new(list, ForwardedHeaders::XForwarded)
    }

    fn headers<L: AsRef<[u8]>>(name: &HeaderName, lines: &[L]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            let value = http::HeaderValue::from_bytes(line.as_ref()).unwrap();
            map.append(name.clone(), value);
        }
        map
    }

    fn client<L: AsRef<[u8]>>(peer: Option<&str>, trusted: &[&str], xff: &[L]) -> Option<IpAddr> {
        let peer = peer.map(|p| p.parse().unwrap());
        forwarded_for(peer, &headers(&X_FORWARDED_FOR, xff), &proxies(trusted))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn reads_x_forwarded_for_from_the_right_past_trusted_hops() {
        let trusted = ["127.0.0.1", "10.0.0.0/8"];
        let peer = Some("127.0.0.1");
        let cases: [(&[&str], &str); 11] = [
            // The client wrote its own first entry; the proxies appended the rest.
            (&["6.6.6.6, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),
            // Over several header lines, in order.
            (&["6.6.6.6", "203.0.113.7", "10.0.0.2"], "203.0.113.7"),
            // No header: the proxy itself.
            (&[], "127.0.0.1"),
            // Every hop trusted: the leftmost.
            (&["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // Not an address: the hop to its right.
            (&["203.0.113.7, unknown, 10.0.0.2"], "10.0.0.2"),
            (&["unknown"], "127.0.0.1"),
            // Ports and brackets, and empty list elements.
            (&["[2001:db8::7]:4711, ,10.0.0.2"], "2001:db8::7"),
            (&["203.0.113.7:4711"], "203.0.113.7"),
            (&["[2001:db8::7]"], "2001:db8::7"),
            (&["::ffff:203.0.113.7"], "203.0.113.7"),
            (&[" 203.0.113.7\t,10.0.0.2 "], "203.0.113.7"),
        ];
        for (lines, expected) in cases {
            assert_eq!(client(peer, &trusted, lines), ip(expected), "{lines:?}");
        }
        // A Unix socket's peer has no address.
        assert_eq!(client::<&str>(None, &trusted, &[]), None);
        assert_eq!(client(None, &trusted, &["garbage"]), None);
        assert_eq!(client(None, &[], &["203.0.113.7"]), ip("203.0.113.7"));
    }

    #[test]
    fn bytes_that_are_not_ascii_spoil_their_own_entry_only() {
        let trusted = ["127.0.0.1", "10.0.0.0/8"];
        // nginx appends the client's address to the client's own line: the line's other
        // entries still count, and the client cannot hide behind its proxy.
        let forged: [&[u8]; 3] = [
            b"\xff, 203.0.113.7",
            b"caf\xe9, 203.0.113.7, 10.0.0.2",
            b"\xff,203.0.113.7",
        ];
        for line in forged {
            assert_eq!(
                client(Some("127.0.0.1"), &trusted, &[line]),
                ip("203.0.113.7")
            );
            assert_eq!(client(None, &trusted, &[line]), ip("203.0.113.7"));
        }
        // Right of the client, such an entry is no address: the hop after it.
        assert_eq!(
            client(
                Some("127.0.0.1"),
                &trusted,
                &[b"203.0.113.7, \xff" as &[u8]]
            ),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn reads_at_most_max_hops_entries() {
        let long = vec!["10.0.0.9"; MAX_HOPS + 5].join(",");
        let with_client = format!("203.0.113.7,{long}");
        // The client is past the bound: the last hop read stands for it.
        assert_eq!(
            client(
                Some("127.0.0.1"),
                &["127.0.0.1", "10.0.0.0/8"],
                &[&with_client]
            ),
            ip("10.0.0.9")
        );
    }

    /// The client and scheme a `Forwarded` walk from the trusted peer `127.0.0.1` finds.
    fn forwarded_client(lines: &[&str]) -> (Option<IpAddr>, Option<Scheme>) {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let headers = headers(&http::header::FORWARDED, lines);
        forwarded(ip("127.0.0.1"), &headers, &trusted)
    }

    #[test]
    fn reads_forwarded_from_the_right_past_trusted_hops() {
        let https = Some(Scheme::HTTPS);
        let http = Some(Scheme::HTTP);
        let cases: Vec<(&[&str], &str, Option<Scheme>)> = vec![
            // RFC 7239's own examples, the client's own element first.
            (
                &["for=6.6.6.6, for=192.0.2.60;proto=https;by=203.0.113.43"],
                "192.0.2.60",
                https.clone(),
            ),
            (
                &["for=\"[2001:db8:cafe::17]:4711\""],
                "2001:db8:cafe::17",
                None,
            ),
            (&["For=\"192.0.2.43:47011\""], "192.0.2.43", None),
            // Over several lines; the scheme is that of the client's own element.
            (
                &["for=198.51.100.17;proto=https", "for=10.0.0.2;proto=http"],
                "198.51.100.17",
                https.clone(),
            ),
            (&[], "127.0.0.1", None),
            // Every hop trusted: the leftmost, with its scheme.
            (
                &["for=10.0.0.3;proto=http, for=10.0.0.2"],
                "10.0.0.3",
                http.clone(),
            ),
            // No address: the hop after it, with the scheme of the element that said so.
            (
                &["for=203.0.113.7, for=unknown;proto=https, for=10.0.0.2"],
                "10.0.0.2",
                https.clone(),
            ),
            (&["for=_hidden"], "127.0.0.1", None),
            (&["proto=https"], "127.0.0.1", https.clone()),
            (
                &["for=203.0.113.7, for=1.2.3.4;for=10.0.0.9"],
                "127.0.0.1",
                None,
            ),
            // Bare IPv6, as some proxies write it, and an IPv4-mapped one.
            (&["for=2001:db8::7;proto=wss"], "2001:db8::7", https.clone()),
            (&["for=\"[::ffff:203.0.113.7]\""], "203.0.113.7", None),
            // A client's unclosed quote spoils its own element only.
            (&["for=\"6.6.6.6, for=203.0.113.7;proto=https"], "203.0.113.7", https.clone()),
            // An obfuscated port (RFC 7239's `obfport`).
            (&["for=\"192.0.2.7:_p1\";proto=https"], "192.0.2.7", https.clone()),
            (&["for=\"[2001:db8::7]:_x.y-z\""], "2001:db8::7", None),
            (&["for=\"192.0.2.7:_\""], "127.0.0.1", None),
            (&["for=\"2001:db8::7:_p1\""], "127.0.0.1", None),
            // HAProxy appends to the client's last line once that line's first
            // parameters pass its check: whatever the client put after them stays.
            (
                &["proto=http;host=\"a\";by=1.1.1.1;for=1.1.1.1;x=\", proto=https;for=203.0.113.7"],
                "203.0.113.7",
                https.clone(),
            ),
            (&["for=\"\\, for=\"[2001:db8::7]\""], "2001:db8::7", None),
        ];
        for (lines, client, scheme) in cases {
            assert_eq!(forwarded_client(lines), (ip(client), scheme), "{lines:?}");
        }
        let long = vec!["for=10.0.0.9"; MAX_HOPS + 5].join(",");
        let with_client = format!("for=203.0.113.7,{long}");
        assert_eq!(forwarded_client(&[&with_client]), (ip("10.0.0.9"), None));
        // Bytes that are not ASCII (hyper passes them on) left of the proxy's element.
        let spoiled: &[u8] = b"for=\"\xff\\\", proto=https;for=203.0.113.7";
        let trusted = proxies(&["127.0.0.1"]);
        let headers = headers(&http::header::FORWARDED, &[spoiled]);
        assert_eq!(
            forwarded(ip("127.0.0.1"), &headers, &trusted),
            (ip("203.0.113.7"), Some(Scheme::HTTPS))
        );
    }

    #[test]
    fn reads_only_the_kind_of_header_it_was_told() {
        let resolve = |kind: ForwardedHeaders, name: &HeaderName, line: &str| {
            let trusted = Arc::new(Proxies::new(
                vec![std::net::Ipv4Addr::LOCALHOST.into()],
                kind,
            ));
            let peer = Peer::Tcp(SocketAddr::new(ip("127.0.0.1").unwrap(), 1));
            let mut extensions = Extensions::new();
            ClientSource::of(peer, &trusted).resolve(&headers(name, &[line]), &mut extensions);
            let client = extensions.get::<ClientIp>().map(|c| c.0.to_string());
            (
                client.unwrap(),
                extensions.get::<ClientScheme>().unwrap().0.clone(),
            )
        };
        let forwarded = &http::header::FORWARDED;
        let xff = &X_FORWARDED_FOR;
        let xfp = &X_FORWARDED_PROTO;
        let local = "127.0.0.1".to_owned();
        let named = "203.0.113.7".to_owned();
        let cases = [
            (
                ForwardedHeaders::Forwarded,
                forwarded,
                "for=203.0.113.7;proto=https",
                named.clone(),
                Scheme::HTTPS,
            ),
            (
                ForwardedHeaders::Forwarded,
                xff,
                "203.0.113.7",
                local.clone(),
                Scheme::HTTP,
            ),
            (
                ForwardedHeaders::Forwarded,
                xfp,
                "https",
                local.clone(),
                Scheme::HTTP,
            ),
            (
                ForwardedHeaders::XForwarded,
                forwarded,
                "for=203.0.113.7;proto=https",
                local,
                Scheme::HTTP,
            ),
            (
                ForwardedHeaders::XForwarded,
                xff,
                "203.0.113.7",
                named,
                Scheme::HTTP,
            ),
        ];
        for (kind, name, line, client, scheme) in cases {
            assert_eq!(
                resolve(kind, name, line),
                (client, scheme),
                "{kind:?} {name}: {line}"
            );
        }
    }

    #[test]
    fn believes_x_forwarded_proto_from_a_trusted_proxy_only() {
        let trusted = Arc::new(proxies(&["127.0.0.1"]));
        let resolve = |peer: &str, proto: &[&str]| {
            let source = ClientSource::of(
                Peer::Tcp(SocketAddr::new(peer.parse().unwrap(), 1)),
                &trusted,
            );
            let mut extensions = Extensions::new();
            source.resolve(&headers(&X_FORWARDED_PROTO, proto), &mut extensions);
            extensions.get::<ClientScheme>().unwrap().0.clone()
        };
        assert_eq!(resolve("127.0.0.1", &["https"]), Scheme::HTTPS);
        assert_eq!(resolve("127.0.0.1", &["WSS"]), Scheme::HTTPS);
        assert_eq!(resolve("127.0.0.1", &["http"]), Scheme::HTTP);
        assert_eq!(resolve("127.0.0.1", &["gopher"]), Scheme::HTTP);
        assert_eq!(resolve("127.0.0.1", &[]), Scheme::HTTP);
        // The nearest proxy's value is the last one.
        assert_eq!(resolve("127.0.0.1", &["http, https"]), Scheme::HTTPS);
        assert_eq!(resolve("127.0.0.1", &["https", "http"]), Scheme::HTTP);
        assert_eq!(resolve("192.0.2.1", &["https"]), Scheme::HTTP);
        // Empty list elements and lines say nothing.
        assert_eq!(resolve("127.0.0.1", &["https, "]), Scheme::HTTPS);
        assert_eq!(resolve("127.0.0.1", &["https", ""]), Scheme::HTTPS);
    }
}
