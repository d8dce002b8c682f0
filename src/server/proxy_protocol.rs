//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer that
//! passes TCP through unread writes before its client's first byte, naming the client
//! (HAProxy's `send-proxy` and `send-proxy-v2`, an AWS Network Load Balancer, nginx's
//! `proxy_protocol on` in a `stream` block). Without it, every connection seems to come
//! from the balancer ([`Server::proxy_protocol`](crate::Server::proxy_protocol)).
//!
//! The header is read before hyper sees the connection, with no byte past it: a peek
//! shows what has arrived, and only the header's own bytes are then read, so the
//! request after it is hyper's to read, on the same socket, as on any other connection.
//! No buffer of ours sits in front of hyper's reads, and a connection without the
//! setting costs nothing more.
//!
//! As the protocol asks, a server that expects the header requires it: a connection
//! that does not begin with one is closed, never guessed to be a direct client (a client
//! could otherwise send a header of its own choosing on a connection that bypasses the
//! balancer, or be taken for one).
//!
//! Of version 2's TLVs only one is read: HAProxy's `PP2_TYPE_SSL`, which says whether the
//! client's connection to the balancer was TLS (the scheme a balancer that ends TLS in
//! `mode tcp` cannot put in a header).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;

use super::conn::ConnConfig;
use super::remote::Peer;
use super::signal::DRAIN;
use super::stream::ConnStream;
use crate::metrics::ConnClosed;
use crate::throttle::Throttle;

/// Version 1 begins so.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header, its CRLF included (the specification's own bound).
const V1_MAX: usize = 107;
/// Version 2 begins so: bytes no HTTP request, or version 1 header, begins with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2's fixed part: the signature, version and command, family, and length.
const V2_FIXED: usize = 16;
/// Version 2's longest address block: two 108-byte Unix socket paths.
const V2_MAX_ADDRESSES: usize = 216;
/// What is read of a header at most: any version 1 header, or version 2's fixed part and
/// addresses. Version 2's TLVs after them (up to 64 KiB) are read through the same buffer,
/// and only `PP2_TYPE_SSL`'s flags kept, so a connection's header costs 232 bytes in its
/// task, whatever its length.
const BUFFER: usize = V2_FIXED + V2_MAX_ADDRESSES;

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Header {
    /// The client's address and port as the balancer saw them (the header's source).
    Client(SocketAddr),
    /// Version 2's `LOCAL`: the balancer's own connection (its health check), whose peer
    /// is the balancer, as the protocol asks.
    Local,
    /// A client the balancer could not name: version 1's `UNKNOWN`, or version 2's
    /// unspecified or Unix family. Its bytes follow, as any client's.
    Unknown,
}

/// How far `parse` got with the bytes that have arrived.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A header so far; more bytes are needed.
    Incomplete,
    /// Not a header, or a broken one: the connection is closed.
    Invalid(&'static str),
    /// A header `len` bytes long, of which what `header` says was in the bytes given.
    Done { len: usize, header: Header },
}

const NOT_A_HEADER: &str = "the connection does not begin with a PROXY protocol header";

/// Parses the start of a connection. Decides as soon as the bytes allow it: a first byte
/// that begins neither version is refused at once.
fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Parsed::Invalid(NOT_A_HEADER),
    }
}

/// `PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n`, or `PROXY UNKNOWN…\r\n`.
fn parse_v1(buf: &[u8]) -> Parsed {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Parsed::Invalid(NOT_A_HEADER);
    }
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid(V1_TOO_LONG)
        } else {
            Parsed::Incomplete
        };
    };
    // The prefix has no LF, so `lf` is past it.
    if lf + 1 > V1_MAX {
        return Parsed::Invalid(V1_TOO_LONG);
    }
    if buf[lf - 1] != b'\r' {
        return Parsed::Invalid("a PROXY protocol version 1 header that does not end in CRLF");
    }
    match v1_fields(&buf[V1_PREFIX.len()..lf - 1]) {
        Some(header) => Parsed::Done {
            len: lf + 1,
            header,
        },
        None => Parsed::Invalid("a PROXY protocol version 1 header with malformed fields"),
    }
}

const V1_TOO_LONG: &str = "a PROXY protocol version 1 header without its CRLF in 107 bytes";

/// The fields after `PROXY `: the protocol, then for TCP the two addresses and the two
/// ports, one space apart.
fn v1_fields(line: &[u8]) -> Option<Header> {
    // Whatever follows `UNKNOWN` is to be ignored, bytes that are no text included.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Some(Header::Unknown);
    }
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split(' ');
    let protocol = fields.next()?;
    let source = fields.next()?;
    let destination = fields.next()?;
    let source_port = port(fields.next()?)?;
    let _destination_port = port(fields.next()?)?;
    if fields.next().is_some() {
        return None;
    }
    // The destination is checked as well as the source: a header half garbage is not
    // believed half.
    let ip: IpAddr = match protocol {
        "TCP4" => {
            destination.parse::<Ipv4Addr>().ok()?;
            source.parse::<Ipv4Addr>().ok()?.into()
        }
        "TCP6" => {
            destination.parse::<Ipv6Addr>().ok()?;
            // An IPv4 client HAProxy maps into IPv6 (`::ffff:a.b.c.d`, when it reaches
            // us over IPv6) is the IPv4 client, as `ClientIp` and the caps take it.
            source.parse::<Ipv6Addr>().ok()?.to_canonical()
        }
        _ => return None,
    };
    Some(Header::Client(SocketAddr::new(ip, source_port)))
}

/// A port in decimal: digits only (`u16`'s parser would take a `+`), and no leading
/// zero, which the protocol forbids.
fn port(field: &str) -> Option<u16> {
    let digits = field.len() <= 5 && field.bytes().all(|b| b.is_ascii_digit());
    if !digits || (field.starts_with('0') && field != "0") {
        return None;
    }
    field.parse().ok()
}

/// The signature, `0x21` (version 2, `PROXY`) or `0x20` (`LOCAL`), the family and
/// transport, the length of the rest, then the addresses and any TLVs.
fn parse_v2(buf: &[u8]) -> Parsed {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return Parsed::Invalid(NOT_A_HEADER);
    }
    if buf.len() < V2_FIXED {
        return Parsed::Incomplete;
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let (version, command, family) = (buf[12] >> 4, buf[12] & 0x0f, buf[13]);
    if version != 2 {
        return Parsed::Invalid("a PROXY protocol version 2 header of another version");
    }
    match command {
        // The balancer's own connection: its family is to be ignored.
        0x0 => {
            return Parsed::Done {
                len,
                header: Header::Local,
            }
        }
        0x1 => {}
        _ => return Parsed::Invalid("a PROXY protocol version 2 header with an unknown command"),
    }
    // The high half is the address family (unspecified, IPv4, IPv6, Unix), the low half
    // the transport (unspecified, stream, datagram); any other value is to be refused.
    let Some(addresses) = v2_addresses(family) else {
        return Parsed::Invalid("a PROXY protocol version 2 header with an unknown family");
    };
    if len < V2_FIXED + addresses {
        return Parsed::Invalid("a PROXY protocol version 2 header shorter than its addresses");
    }
    let Some(block) = buf.get(V2_FIXED..V2_FIXED + addresses) else {
        return Parsed::Incomplete;
    };
    // Over UDP too (a QUIC client of the balancer): the address is the client's.
    let header = match family {
        0x11 | 0x12 => Header::Client(SocketAddr::new(
            Ipv4Addr::from(<[u8; 4]>::try_from(&block[..4]).expect("4 bytes")).into(),
            u16::from_be_bytes([block[8], block[9]]),
        )),
        0x21 | 0x22 => Header::Client(SocketAddr::new(
            Ipv6Addr::from(<[u8; 16]>::try_from(&block[..16]).expect("16 bytes")).to_canonical(),
            u16::from_be_bytes([block[32], block[33]]),
        )),
        _ => Header::Unknown,
    };
    Parsed::Done { len, header }
}

/// The size of version 2's address block for `family`: the high half is the address
/// family (unspecified, IPv4, IPv6, Unix), the low half the transport (unspecified,
/// stream, datagram); `None` for any other value, which is to be refused.
fn v2_addresses(family: u8) -> Option<usize> {
    match family {
        0x00 => Some(0),
        0x11 | 0x12 => Some(12),
        0x21 | 0x22 => Some(36),
        0x31 | 0x32 => Some(216),
        _ => None,
    }
}

/// Where a version 2 `PROXY` header's TLVs begin, past its addresses; `None` for any
/// other header (version 1's have none, and `LOCAL`'s are the balancer's own).
fn tlvs_start(header: &[u8]) -> Option<usize> {
    if !header.starts_with(V2_SIGNATURE) || header.get(12)? & 0x0f != 0x1 {
        return None;
    }
    v2_addresses(*header.get(13)?).map(|addresses| V2_FIXED + addresses)
}

/// `PP2_TYPE_SSL`: the TLV HAProxy's `send-proxy-v2-ssl` adds when it ended TLS from the
/// client, whose first byte has `PP2_CLIENT_SSL` set if the client's connection was TLS.
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_CLIENT_SSL: u8 = 0x01;

/// `PP2_TYPE_SSL`'s value is at least its `client` flags and a 4-byte `verify`.
const PP2_SSL_MIN_LEN: usize = 5;

/// Walks version 2's TLVs as they are read, a piece at a time (they may be longer than
/// the buffer), for the one that says the client came over TLS. Nothing else in them is
/// used. A `PP2_TYPE_SSL` counts only whole and of its least length: one cut short by the
/// header's end, or too short, says nothing.
#[derive(Debug, Default)]
struct ClientTls {
    /// A TLV's type and length, as far as they came.
    head: [u8; 3],
    head_len: usize,
    /// What is left of the current TLV's value; 0 while a head is read.
    value_left: usize,
    /// In a `PP2_TYPE_SSL` of at least its least length: its flags once seen, kept
    /// until its value is whole.
    ssl: Option<Option<u8>>,
    tls: bool,
}

impl ClientTls {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(&byte) = bytes.first() {
            if self.value_left == 0 {
                self.head[self.head_len] = byte;
                self.head_len += 1;
                bytes = &bytes[1..];
                if self.head_len == self.head.len() {
                    self.head_len = 0;
                    self.value_left = usize::from(u16::from_be_bytes([self.head[1], self.head[2]]));
                    let ssl = self.head[0] == PP2_TYPE_SSL && self.value_left >= PP2_SSL_MIN_LEN;
                    self.ssl = ssl.then_some(None);
                }
                continue;
            }
            if let Some(flags @ None) = &mut self.ssl {
                *flags = Some(byte);
            }
            let value = self.value_left.min(bytes.len());
            self.value_left -= value;
            bytes = &bytes[value..];
            if self.value_left == 0 {
                if let Some(Some(flags)) = self.ssl.take() {
                    self.tls = flags & PP2_CLIENT_SSL != 0;
                }
            }
        }
    }
}

/// Why a connection's header was not read.
#[derive(Debug)]
enum Refused {
    /// The peer closed before a whole header came.
    Closed,
    Io(std::io::Error),
    Invalid(&'static str),
}

impl From<std::io::Error> for Refused {
    fn from(err: std::io::Error) -> Self {
        Refused::Io(err)
    }
}

/// Reads the header at the start of `stream`, and not a byte more: what it says, and
/// whether it says the client's connection was TLS.
///
/// Each round peeks at what has arrived past what was read so far. A whole header among
/// it is read and the rest left in the socket; a header still incomplete is read as far
/// as it came, so that the next peek waits for new bytes instead of seeing the same ones
/// again.
///
/// `begun` is set once the first byte has come.
async fn read_header(
    stream: &mut ConnStream,
    begun: &AtomicBool,
) -> Result<(Header, bool), Refused> {
    let mut buf = [0u8; BUFFER];
    let mut have = 0;
    loop {
        let seen = have + stream.peek(&mut buf[have..]).await?;
        if seen == have {
            return Err(Refused::Closed);
        }
        begun.store(true, Ordering::Relaxed);
        match parse(&buf[..seen]) {
            // A version 1 header is refused at 107 bytes and version 2's addresses end
            // by 232, so a full buffer has always been decided; said here as well.
            Parsed::Incomplete if seen == BUFFER => return Err(Refused::Invalid(NOT_A_HEADER)),
            Parsed::Incomplete => {
                stream.read_exact(&mut buf[have..seen]).await?;
                have = seen;
            }
            Parsed::Invalid(why) => return Err(Refused::Invalid(why)),
            Parsed::Done { len, header } => {
                let in_buf = len.min(seen);
                stream.read_exact(&mut buf[have..in_buf]).await?;
                // Version 2's TLVs: walked for the client's TLS, through the same buffer.
                let start = tlvs_start(&buf[..in_buf]);
                let mut tls = ClientTls::default();
                if let Some(start) = start {
                    tls.feed(&buf[start.min(in_buf)..in_buf]);
                }
                let mut rest = len - in_buf;
                while rest > 0 {
                    let chunk = rest.min(BUFFER);
                    stream.read_exact(&mut buf[..chunk]).await?;
                    if start.is_some() {
                        tls.feed(&buf[..chunk]);
                    }
                    rest -= chunk;
                }
                return Ok((header, tls.tls));
            }
        }
    }
}

/// Whom a connection's requests are from, once its header is read.
#[derive(Debug)]
pub(super) enum Client {
    /// The client the header named, believed, and whether it says the client's
    /// connection was TLS.
    Proxied { addr: SocketAddr, tls: bool },
    /// The peer itself: a peer that may not name a client.
    Peer,
    /// A version 2 `LOCAL` header: the balancer's own connection (a health check), so
    /// the peer, but with none of its forwarding headers believed. HAProxy also sends
    /// `LOCAL` for a client it relays but cannot name (one on a Unix socket), whose
    /// bytes, `X-Forwarded-For` included, are the client's: believed, they would let it
    /// name itself. A balancer's health check sends no such header anyway.
    Local,
    /// A client the balancer could not name. The peer stays the balancer, but its
    /// requests are the client's: with `trusted_proxies`, no `X-Forwarded-For` of theirs
    /// is believed (`ClientSource::unknown`), though the balancer is trusted.
    Unknown { tls: bool },
}

/// Broken headers, and headers from peers that are no trusted proxy: at most a line a
/// second of each, as for the server's other refusals (a port open to the world gets
/// floods of both).
static BROKEN: Throttle = Throttle::new();
static UNTRUSTED: Throttle = Throttle::new();

/// Completes once this connection, with not a byte of its header yet, is granted a
/// request for room at the connection limit: as idle as a connection can be, it makes
/// room as an idle keep-alive one does (and as one on a plain socket that has sent
/// nothing). An AWS Network Load Balancer sends the header only with its client's first
/// bytes (its default `header_placement`), so without this a client that connects and
/// says nothing would hold a slot until the header read timeout, counted against no
/// client's cap (its client is not known yet). Once a byte has come, it is a head on its
/// way, and keeps its slot.
async fn room_before_first_byte(config: &ConnConfig, begun: &AtomicBool) {
    let signal = &config.signal;
    loop {
        // Made before the flags are read, as in `ConnSignal::room_granted`.
        let asked = signal.notify.notified();
        if !begun.load(Ordering::Relaxed) && signal.room_wanted() && signal.grant_room() {
            return;
        }
        asked.await;
    }
}

/// Reads a new connection's header, within the header read timeout of `accepted` and
/// before the shutdown begins, and says whom the connection's requests are from: the
/// header's client, when `peer` may name one (a trusted proxy, or any peer when no
/// proxies were listed), else `peer` itself. `None` when the connection is to be
/// closed, said in a log line.
pub(super) async fn client_of(
    stream: &mut ConnStream,
    peer: Peer,
    config: &ConnConfig,
    accepted: std::time::Instant,
) -> Option<Client> {
    let timeout = config.header_read_timeout;
    // `later`: a timeout of `Duration::MAX` (no limit) must not overflow the instant.
    let deadline = super::conn::later(tokio::time::Instant::from_std(accepted), timeout);
    let begun = AtomicBool::new(false);
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, read_header(stream, &begun)) => read,
        // A connection that has not said whom it is for has no request in flight.
        _ = config.signal.reached(DRAIN) => {
            tracing::debug!(%peer, "connection closed by the shutdown before its PROXY protocol header");
            return None;
        }
        _ = room_before_first_byte(config, &begun) => {
            crate::metrics::connection_closed(ConnClosed::MadeRoom);
            tracing::debug!(
                %peer,
                "connection closed to make room at the connection limit before its PROXY \
                 protocol header"
            );
            return None;
        }
    };
    let (header, tls) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(Refused::Invalid(why))) => {
            crate::metrics::connection_closed(ConnClosed::ProxyHeader);
            if let Some(left_out) = BROKEN.admit() {
                tracing::warn!(%peer, left_out, "connection closed: {why}");
            }
            return None;
        }
        Ok(Err(Refused::Closed)) => {
            tracing::debug!(%peer, "connection closed by its peer before a PROXY protocol header");
            return None;
        }
        Ok(Err(Refused::Io(error))) => {
            tracing::debug!(%peer, %error, "connection failed before its PROXY protocol header");
            return None;
        }
        Err(_) => {
            crate::metrics::connection_closed(ConnClosed::ProxyHeader);
            let timeout_ms = timeout.as_millis() as u64;
            tracing::debug!(%peer, timeout_ms, "no PROXY protocol header within the header read timeout; closing");
            return None;
        }
    };
    let may_name = || {
        config
            .trusted_proxies
            .as_ref()
            .is_none_or(|proxies| proxies.trust_peer(peer))
    };
    match header {
        Header::Local => Some(Client::Local),
        Header::Unknown if may_name() => Some(Client::Unknown { tls }),
        // An untrusted peer's requests are its own, whatever it says.
        Header::Unknown => Some(Client::Peer),
        Header::Client(addr) if may_name() => Some(Client::Proxied { addr, tls }),
        Header::Client(client) => {
            if let Some(left_out) = UNTRUSTED.admit() {
                tracing::warn!(
                    %peer, claimed = %client, left_out,
                    "a PROXY protocol header from a peer that is no trusted proxy; \
                     its requests are the peer's"
                );
            }
            Some(Client::Peer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    fn client(addr: &str) -> Header {
        Header::Client(addr.parse().unwrap())
    }

    #[test]
    fn version_1_names_the_client_and_ends_at_its_crlf() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Done {
                len: 43,
                header: client("203.0.113.7:51000")
            }
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(line),
            Parsed::Done {
                len: line.len(),
                header: client("[2001:db8::7]:51000")
            }
        );
        for unknown in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN \xff\xfe whatever\r\n",
        ] {
            assert_eq!(
                parse(unknown),
                Parsed::Done {
                    len: unknown.len(),
                    header: Header::Unknown
                }
            );
        }
    }

    #[test]
    fn an_ipv4_client_mapped_into_ipv6_is_named_as_the_ipv4_client() {
        let line = b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(line),
            Parsed::Done {
                len: line.len(),
                header: client("203.0.113.7:51000")
            }
        );
        let mut addresses = [0; 36];
        addresses[10..12].copy_from_slice(&[0xff, 0xff]);
        addresses[12..16].copy_from_slice(&[203, 0, 113, 7]);
        addresses[32..34].copy_from_slice(&51000u16.to_be_bytes());
        let header = v2(1, 0x21, &addresses, &[]);
        assert_eq!(
            parse(&header),
            Parsed::Done {
                len: header.len(),
                header: client("203.0.113.7:51000")
            }
        );
    }

    #[test]
    fn version_1_waits_for_its_crlf_then_refuses_past_107_bytes() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]), Parsed::Incomplete, "{cut} bytes");
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(106, b'x');
        assert_eq!(parse(&long), Parsed::Incomplete);
        long.push(b'x');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        // 106 bytes and the CRLF: 108.
        long.truncate(106);
        long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        long.truncate(105);
        long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&long), Parsed::Done { len: 107, .. }));
    }

    #[test]
    fn anything_else_is_refused_as_soon_as_it_differs() {
        for start in [
            &b"G"[..],
            b"GET / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n",
            b"PROXZ",
            b"\r\n\r\n\0\r\nQUIX",
            b"\x16\x03\x01",
        ] {
            assert_eq!(parse(start), Parsed::Invalid(NOT_A_HEADER), "{start:?}");
        }
        for broken in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443 extra\r\n",
            b"PROXY TCP4 203.0.113.7  10.0.0.1 51000 443\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 443\r\n",
            b"PROXY TCP6 2001:db8::7 10.0.0.1 51000 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +5100 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 051000 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5100 0443\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 51000 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\r\n",
        ] {
            assert!(
                matches!(parse(broken), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn version_2_names_the_client_and_counts_its_tlvs() {
        let ipv4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xc7, 0x38, 0x01, 0xbb];
        let header = v2(1, 0x11, &ipv4, &[0x04, 0x00, 0x01, 0xff]);
        assert_eq!(
            parse(&header),
            Parsed::Done {
                len: 32,
                header: client("203.0.113.7:51000")
            }
        );
        // The TLVs need not have arrived to decide.
        assert!(matches!(parse(&header[..28]), Parsed::Done { len: 32, .. }));
        assert_eq!(parse(&header[..27]), Parsed::Incomplete);
        assert_eq!(parse(&header[..15]), Parsed::Incomplete);

        let mut ipv6 = [0u8; 36];
        ipv6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        ipv6[32..34].copy_from_slice(&51000u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &ipv6, &[])),
            Parsed::Done {
                len: 52,
                header: client("[2001:db8::7]:51000")
            }
        );
        // A UDP client is named too.
        assert_eq!(
            parse(&v2(1, 0x12, &ipv4, &[])),
            Parsed::Done {
                len: 28,
                header: client("203.0.113.7:51000")
            }
        );
        // A Unix client and the unspecified family name none; LOCAL (whatever its
        // family) is the balancer's own.
        for (command, family, addresses, named) in [
            (1, 0x31, 216, Header::Unknown),
            (1, 0x00, 0, Header::Unknown),
            (0, 0x11, 12, Header::Local),
            (0, 0x77, 0, Header::Local),
        ] {
            let header = v2(command, family, &vec![0; addresses], &[]);
            assert_eq!(
                parse(&header),
                Parsed::Done {
                    len: header.len(),
                    header: named
                }
            );
        }
    }

    #[test]
    fn the_ssl_tlv_says_whether_the_client_came_over_tls_in_any_pieces() {
        // ALPN, then PP2_TYPE_SSL with PP2_CLIENT_SSL, then a unique id.
        let tlvs = [
            &[0x01, 0x00, 0x02, b'h', b'2'][..],
            &[0x20, 0x00, 0x05, 0x01, 0, 0, 0, 0],
            &[0x05, 0x00, 0x01, 0x07],
        ]
        .concat();
        let tls_of = |pieces: &[&[u8]]| {
            let mut walk = ClientTls::default();
            for piece in pieces {
                walk.feed(piece);
            }
            walk.tls
        };
        for a in 0..=tlvs.len() {
            for b in a..=tlvs.len() {
                assert!(
                    tls_of(&[&tlvs[..a], &tlvs[a..b], &tlvs[b..]]),
                    "cut at {a}, {b}"
                );
            }
        }
        // Its flags without PP2_CLIENT_SSL; an empty one; one shorter than its flags and
        // `verify`; one cut short by the header's end; none; and 0x20 inside another
        // TLV's value, which is no type byte.
        assert!(!tls_of(&[&[0x20, 0x00, 0x05, 0x00, 0, 0, 0, 0]]));
        assert!(!tls_of(&[&[0x20, 0x00, 0x00, 0x05, 0x00, 0x01, 0x01]]));
        assert!(!tls_of(&[&[0x20, 0x00, 0x01, 0x01]]));
        assert!(!tls_of(&[&[0x20, 0x00, 0x05, 0x01, 0, 0]]));
        assert!(!tls_of(&[&[0x05, 0x00, 0x01, 0x07]]));
        assert!(!tls_of(&[&[0x05, 0x00, 0x03, 0x20, 0x00, 0x05, 0x01]]));

        // Looked for after a `PROXY` header's addresses only.
        let ipv4 = [0u8; 12];
        assert_eq!(tlvs_start(&v2(1, 0x11, &ipv4, &tlvs)), Some(28));
        assert_eq!(tlvs_start(&v2(1, 0x21, &[0; 36], &tlvs)), Some(52));
        assert_eq!(tlvs_start(&v2(1, 0x00, &[], &tlvs)), Some(16));
        assert_eq!(tlvs_start(&v2(1, 0x31, &[0; 216], &tlvs)), Some(232));
        assert_eq!(tlvs_start(&v2(0, 0x11, &ipv4, &tlvs)), None);
        assert_eq!(tlvs_start(b"PROXY UNKNOWN\r\n"), None);
    }

    #[test]
    fn version_2_refuses_other_versions_commands_families_and_short_lengths() {
        let ipv4 = [0u8; 12];
        let mut other_version = v2(1, 0x11, &ipv4, &[]);
        other_version[12] = 0x11;
        let mut short = v2(1, 0x11, &ipv4, &[]);
        short[15] = 11;
        for broken in [
            other_version,
            v2(2, 0x11, &ipv4, &[]),
            v2(1, 0x13, &ipv4, &[]),
            v2(1, 0x41, &ipv4, &[]),
            short,
        ] {
            assert!(matches!(parse(&broken), Parsed::Invalid(_)), "{broken:?}");
        }
    }
}
