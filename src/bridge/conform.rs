//! What HTTP asks of a request head that hyper's server leaves unchecked, refused before
//! a handler thread is taken.
//!
//! - `CONNECT` asks for a tunnel, and a blocking handler's answer cannot become one: hyper
//!   would take a `2xx` for "tunnel established" and then deliver nothing (RFC 9110
//!   §9.3.6). Every service refuses it with `501`.
//! - The bundled server also checks what hyper's parser accepts but RFC 9112 refuses:
//!   an HTTP/1.1 request without a `Host`, more than one `Host`, or an invalid one
//!   (§3.2: "MUST respond with a 400"), and a target form that does not fit the method
//!   (authority-form is for `CONNECT` only, asterisk-form for `OPTIONS` only; §3.2.3–4).
//!   A handler that builds URLs or cache keys from `Host` can then trust its form. One
//!   leniency: a target in absolute-form names its host itself (RFC 9112 §3.2.2 has the
//!   server use that one), so such a request may come without `Host`. An embedded
//!   service leaves these to its host: a request built in a test (`Request::new`) has
//!   no `Host`, and the host's server has already accepted it.
//!
//! An ordinary request costs a method comparison, two looks at its URI, and a scan of its
//! `Host` value's bytes; the bundled server finds the `Host` in the walk over the headers
//! its head-size limit makes anyway (`head::head_size`).

use http::header::HOST;
use http::{HeaderValue, Method, StatusCode, Version};

/// Why a request head is refused: the status and the text of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) text: &'static str,
}

const CONNECT: Refusal = Refusal {
    status: StatusCode::NOT_IMPLEMENTED,
    text: "Not Implemented: this server does not open CONNECT tunnels",
};
const NO_HOST: Refusal = bad_request("Bad Request: an HTTP/1.1 request needs a Host header");
const HOSTS: Refusal = bad_request("Bad Request: more than one Host header");
const BAD_HOST: Refusal = bad_request("Bad Request: invalid Host header");
const TARGET_FORM: Refusal =
    bad_request("Bad Request: the request target's form does not fit its method");

const fn bad_request(text: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        text,
    }
}

/// The `Host` headers of a request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hosts<'a> {
    None,
    One(&'a HeaderValue),
    Many,
}

impl<'a> Hosts<'a> {
    /// Looks them up (when no walk over the headers found them already).
    pub(super) fn of(headers: &'a http::HeaderMap) -> Self {
        headers.get_all(HOST).iter().fold(Hosts::None, Hosts::and)
    }

    /// These and one more.
    pub(super) fn and(self, host: &'a HeaderValue) -> Self {
        match self {
            Hosts::None => Hosts::One(host),
            _ => Hosts::Many,
        }
    }
}

/// The request target as a log line shows it: its path, or for authority-form (a
/// `CONNECT`'s `host:port`, whose path is empty) the authority.
pub(super) fn shown_target(uri: &http::Uri) -> &str {
    match (uri.path(), uri.authority()) {
        ("", Some(authority)) => authority.as_str(),
        (path, _) => path,
    }
}

/// The refusal `parts` gets, if any. `hosts`: its `Host` headers, given when the request
/// came through the bundled server (see the module docs for what only it checks).
#[inline]
pub(super) fn refusal(parts: &http::request::Parts, hosts: Option<Hosts<'_>>) -> Option<Refusal> {
    if parts.method == Method::CONNECT {
        return Some(CONNECT);
    }
    let hosts = hosts?;
    let uri = &parts.uri;
    // hyper gives an HTTP/2 request's URI its scheme and authority; an HTTP/1 one has
    // them only in absolute-form. An authority alone is authority-form.
    if (uri.authority().is_some() && uri.scheme().is_none())
        || (uri.path() == "*" && parts.method != Method::OPTIONS)
    {
        return Some(TARGET_FORM);
    }
    match hosts {
        // HTTP/2 carries the authority in `:authority` instead, and so does a target in
        // absolute-form (which is how hyper's own client sends one); HTTP/1.0 predates
        // `Host`.
        Hosts::None => {
            (parts.version == Version::HTTP_11 && uri.authority().is_none()).then_some(NO_HOST)
        }
        Hosts::Many => Some(HOSTS),
        Hosts::One(host) => (!valid_host(host)).then_some(BAD_HOST),
    }
}

/// Whether `value` is a `Host` as RFC 9110 §7.2 defines it: `uri-host [ ":" port ]`, the
/// host a registered name, an IPv4 address or a bracketed IP literal (checked for its
/// characters, not parsed), the port at most 65535. Empty is valid: it is what a client
/// sends for a target without an authority. No user info (`a@b`), no path, no spaces.
fn valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let (host, port) = match bytes.first() {
        Some(b'[') => {
            let Some(end) = bytes.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &bytes[1..end];
            if literal.is_empty() || !literal.iter().all(|&b| b == b':' || reg_name(b)) {
                return false;
            }
            (&[][..], &bytes[end + 1..])
        }
        _ => {
            let mut stop = 0;
            while stop < bytes.len() && reg_name(bytes[stop]) {
                stop += 1;
            }
            (&bytes[..stop], &bytes[stop..])
        }
    };
    debug_assert!(host.iter().all(|&b| reg_name(b)));
    match port {
        [] => true,
        [b':', digits @ ..] if digits.len() <= 5 => {
            let mut port = 0u32;
            for &digit in digits {
                if !digit.is_ascii_digit() {
                    return false;
                }
                port = port * 10 + u32::from(digit - b'0');
            }
            port <= u32::from(u16::MAX)
        }
        _ => false,
    }
}

/// The bytes of a `reg-name` (RFC 3986: unreserved, sub-delims, and `%` of a
/// pct-encoding), which also covers an IPv4 address: a host is checked on every request,
/// at a load a byte.
static REG_NAME: [bool; 256] = {
    let mut set = [false; 256];
    let mut b = 0u8;
    while b < 128 {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let sub_delim = matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        );
        set[b as usize] = unreserved || sub_delim || b == b'%';
        b += 1;
    }
    set
};

fn reg_name(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bundled`: as the bundled server asks (with the request's `Host` headers).
    fn refusal(parts: &http::request::Parts, bundled: bool) -> Option<Refusal> {
        super::refusal(parts, bundled.then(|| Hosts::of(&parts.headers)))
    }

    fn parts(method: &str, target: &str, version: Version, hosts: &[&str]) -> http::request::Parts {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hosts_as_rfc_9110_defines_them_pass() {
        for host in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:8000",
            "[::1]",
            "",
            "localhost:",
            "xn--bcher-kva.example",
            "a%20b",
            "a:65535",
        ] {
            assert_eq!(
                refusal(&parts("GET", "/", Version::HTTP_11, &[host]), true),
                None,
                "{host:?}"
            );
        }
    }

    #[test]
    fn invalid_missing_and_repeated_hosts_are_refused() {
        for host in [
            "a b", "a/b", "a@b", "a:99999", "a:123456", "a:8x", "[::1", "[]", "a:1:2",
        ] {
            assert_eq!(
                refusal(&parts("GET", "/", Version::HTTP_11, &[host]), true),
                Some(BAD_HOST),
                "{host:?}"
            );
        }
        assert_eq!(
            refusal(&parts("GET", "/", Version::HTTP_11, &[]), true),
            Some(NO_HOST)
        );
        assert_eq!(
            refusal(&parts("GET", "/", Version::HTTP_11, &["a", "a"]), true),
            Some(HOSTS)
        );
        // HTTP/1.0 and HTTP/2 requests need none.
        assert_eq!(
            refusal(&parts("GET", "/", Version::HTTP_10, &[]), true),
            None
        );
        let h2 = parts("GET", "http://example.com/", Version::HTTP_2, &[]);
        assert_eq!(refusal(&h2, true), None);
    }

    #[test]
    fn target_forms_must_fit_their_method() {
        let host = &["example.com"];
        assert_eq!(
            refusal(&parts("OPTIONS", "*", Version::HTTP_11, host), true),
            None
        );
        assert_eq!(
            refusal(&parts("GET", "*", Version::HTTP_11, host), true),
            Some(TARGET_FORM)
        );
        assert_eq!(
            refusal(
                &parts("GET", "example.com:80", Version::HTTP_11, host),
                true
            ),
            Some(TARGET_FORM)
        );
        let absolute = parts("GET", "http://example.com/x", Version::HTTP_11, host);
        assert_eq!(refusal(&absolute, true), None);
        // Its target names the host: no `Host` needed, but a second one is still refused.
        let absolute = parts("GET", "http://example.com/x", Version::HTTP_11, &[]);
        assert_eq!(refusal(&absolute, true), None);
        let absolute = parts("GET", "http://example.com/x", Version::HTTP_11, &["a", "b"]);
        assert_eq!(refusal(&absolute, true), Some(HOSTS));
    }

    #[test]
    fn a_log_line_shows_a_connects_authority_where_other_targets_show_their_path() {
        let shown = |target: &str| shown_target(&target.parse().unwrap()).to_owned();
        assert_eq!(shown("example.com:443"), "example.com:443");
        assert_eq!(shown("/a/b?q=1"), "/a/b");
        assert_eq!(shown("*"), "*");
        assert_eq!(shown("http://example.com/x"), "/x");
        assert_eq!(shown("http://example.com"), "/");
    }

    #[test]
    fn connect_is_refused_everywhere_and_the_rest_only_by_the_bundled_server() {
        let connect = parts(
            "CONNECT",
            "example.com:443",
            Version::HTTP_11,
            &["example.com"],
        );
        assert_eq!(refusal(&connect, false), Some(CONNECT));
        assert_eq!(refusal(&connect, true), Some(CONNECT));
        assert_eq!(
            refusal(&parts("GET", "/", Version::HTTP_11, &[]), false),
            None
        );
        assert_eq!(
            refusal(&parts("GET", "*", Version::HTTP_11, &["a b"]), false),
            None
        );
    }
}
