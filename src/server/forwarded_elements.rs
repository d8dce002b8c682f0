//! The `Forwarded` header (RFC 7239) read element by element, from the right: each
//! proxy appends one element (`for=192.0.2.60;proto=https`) describing the connection it
//! received, so the nearest proxy's is last.
//!
//! The elements are split on the commas outside quoted strings, scanning from the right.
//! A client writes the left part of the header (its own line, or the start of the line
//! its proxy appends to); read from the left, one unclosed quote of its own would swallow
//! the proxy's element after it, and hide the client's address behind its proxy's.
//! Read from the right, the proxy's well-formed element comes first and reads the same
//! whatever precedes it.

use std::borrow::Cow;

use http::header::{HeaderMap, FORWARDED};

/// The elements of every `Forwarded` line, last first, trimmed, empty ones left out
/// (HTTP's list syntax allows them, and they say nothing).
pub(super) fn elements_from_the_right(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(FORWARDED)
        .iter()
        .rev()
        .flat_map(|line| SplitOutsideQuotes::new(line.as_bytes(), b','))
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// What one element says of the connection its proxy received: the `for` and `proto`
/// parameters, unquoted. `by`, `host` and extensions are not read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Element<'a> {
    /// The node the proxy received the request from: an address, with or without a
    /// port, `unknown`, or an obfuscated name (`_hidden`).
    pub(super) for_node: Option<Cow<'a, [u8]>>,
    /// The scheme the proxy received the request with (`http`, `https`).
    pub(super) proto: Option<Cow<'a, [u8]>>,
}

impl<'a> Element<'a> {
    /// The element's `for` and `proto`; `None` when it is not `pair *(";" pair)` with
    /// each of the two at most once, as RFC 7239 has it: a malformed element says nothing.
    pub(super) fn parse(element: &'a [u8]) -> Option<Self> {
        let mut parsed = Element::default();
        for pair in SplitOutsideQuotes::new(element, b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let slot = if name.eq_ignore_ascii_case(b"for") {
                &mut parsed.for_node
            } else if name.eq_ignore_ascii_case(b"proto") {
                &mut parsed.proto
            } else if !name.is_empty() && name.iter().all(|&b| is_tchar(b)) {
                continue;
            } else {
                return None;
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(unquote(value)?);
        }
        Some(parsed)
    }
}

/// A value, a token or a quoted string (`"[2001:db8::1]:4711"`), without its quotes and
/// escapes; `None` for an empty one, an unclosed quote, or a token with a byte a token
/// cannot hold.
fn unquote(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let Some(inner) = value.strip_prefix(b"\"") else {
        // An IPv6 address left unquoted (`for=2001:db8::1`, `for=[2001:db8::1]:4711`, as
        // some proxies write it) is no token, but it says what it means.
        let token = !value.is_empty()
            && value
                .iter()
                .all(|&b| is_tchar(b) || matches!(b, b':' | b'[' | b']'));
        return token.then_some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return (!inner.contains(&b'"')).then_some(Cow::Borrowed(inner));
    }
    let mut unescaped = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => unescaped.push(*bytes.next()?),
            b'"' => return None,
            _ => unescaped.push(b),
        }
    }
    Some(Cow::Owned(unescaped))
}

/// RFC 9110's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `bytes` split on `separator` where it is outside a quoted string, last part first.
struct SplitOutsideQuotes<'a> {
    rest: Option<&'a [u8]>,
    separator: u8,
}

impl<'a> SplitOutsideQuotes<'a> {
    fn new(bytes: &'a [u8], separator: u8) -> Self {
        SplitOutsideQuotes {
            rest: Some(bytes),
            separator,
        }
    }
}

impl<'a> Iterator for SplitOutsideQuotes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let mut quoted = false;
        for i in (0..rest.len()).rev() {
            match rest[i] {
                b'"' if !escaped(rest, i) => quoted = !quoted,
                b if b == self.separator && !quoted => {
                    self.rest = Some(&rest[..i]);
                    return Some(&rest[i + 1..]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(rest)
    }
}

/// Whether the quote at `i` is escaped: an odd number of backslashes before it. Each
/// backslash is counted for the one quote right of it, so a scan stays linear.
fn escaped(bytes: &[u8], i: usize) -> bool {
    bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(lines: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(FORWARDED, http::HeaderValue::from_bytes(line).unwrap());
        }
        elements_from_the_right(&headers)
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn parsed(element: &str) -> Option<(Option<String>, Option<String>)> {
        let text = |v: Option<Cow<'_, [u8]>>| v.map(|v| String::from_utf8(v.into_owned()).unwrap());
        Element::parse(element.as_bytes()).map(|e| (text(e.for_node), text(e.proto)))
    }

    fn some(
        for_node: Option<&str>,
        proto: Option<&str>,
    ) -> Option<(Option<String>, Option<String>)> {
        Some((for_node.map(str::to_owned), proto.map(str::to_owned)))
    }

    #[test]
    fn splits_on_commas_outside_quotes_last_first() {
        let got = elements(&[
            b"for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\"",
            b"for=\"a,b\";proto=https, ,for=198.51.100.17",
        ]);
        let want: [&[u8]; 4] = [
            b"for=198.51.100.17",
            b"for=\"a,b\";proto=https",
            b"for=\"[2001:db8:cafe::17]:4711\"",
            b"for=192.0.2.43",
        ];
        assert_eq!(got, want.map(<[u8]>::to_vec));
    }

    #[test]
    fn a_clients_unclosed_quote_leaves_the_proxys_element_whole() {
        // The client wrote `for="`; its proxy appended its own element to the line.
        let got = elements(&[b"for=\"6.6.6.6, for=203.0.113.7"]);
        assert_eq!(got[0], b"for=203.0.113.7");
        // An escaped quote does not end a quoted string; an escaped backslash does not
        // escape the quote after it.
        let got = elements(&[b"x=\"a,\\\"b\", for=203.0.113.7, y=\"c\\\\\",for=10.0.0.1"]);
        let want: [&[u8]; 4] = [
            b"for=10.0.0.1",
            b"y=\"c\\\\\"",
            b"for=203.0.113.7",
            b"x=\"a,\\\"b\"",
        ];
        assert_eq!(got, want.map(<[u8]>::to_vec));
    }

    #[test]
    fn reads_for_and_proto_of_one_element() {
        assert_eq!(
            parsed("for=192.0.2.60;proto=http;by=203.0.113.43"),
            some(Some("192.0.2.60"), Some("http"))
        );
        assert_eq!(
            parsed("For=\"[2001:db8:cafe::17]:4711\""),
            some(Some("[2001:db8:cafe::17]:4711"), None)
        );
        assert_eq!(
            parsed("proto=HTTPS ; for = 192.0.2.60 ;"),
            some(Some("192.0.2.60"), Some("HTTPS"))
        );
        assert_eq!(parsed("for=unknown"), some(Some("unknown"), None));
        assert_eq!(parsed("for=2001:db8::1"), some(Some("2001:db8::1"), None));
        assert_eq!(
            parsed("for=[2001:db8::1]:80"),
            some(Some("[2001:db8::1]:80"), None)
        );
        assert_eq!(parsed("host=\"example.com\";ext=\"x;y\""), some(None, None));
        assert_eq!(parsed("for=\"_a\\\"b\""), some(Some("_a\"b"), None));
        // Malformed: each of these says nothing.
        for bad in [
            "for=1.2.3.4;for=5.6.7.8",
            "for",
            "for=",
            "for=\"1.2.3.4",
            "for=\"a\"b\"",
            "for=a/b",
            "=1.2.3.4",
            "fo r=1.2.3.4",
            "proto=https;proto=http",
        ] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
    }
}
