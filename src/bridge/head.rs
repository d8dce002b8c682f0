//! What a message head says about its connection and its body: the `Connection` options,
//! `Expect: 100-continue`, `Content-Length`, and a request head's size as it came in.
//! Read on every request, so nothing here formats or allocates.

use http::{header, HeaderValue};

use super::conform;

/// Whether an HTTP/1 request leaves its connection open after its response: HTTP/1.1
/// unless it asks `Connection: close`, HTTP/1.0 only as [`http10_keeps`] reads it.
/// Looked up only for requests with a body.
pub(super) fn keeps_connection(parts: &http::request::Parts) -> bool {
    match parts.version {
        http::Version::HTTP_11 => !asks_close(&parts.headers),
        http::Version::HTTP_10 => http10_keeps(&parts.headers),
        _ => false,
    }
}

/// Whether an HTTP/1.0 request asks to keep its connection, read as hyper's parser reads
/// it: a `keep-alive` option on any `Connection` line, and `close` on none (a `close`
/// anywhere wins).
pub(super) fn http10_keeps(headers: &http::HeaderMap) -> bool {
    let mut keep = false;
    for value in headers.get_all(header::CONNECTION) {
        // The usual line is the one option: then it holds no `close`.
        if is_option(value.as_bytes(), b"keep-alive") {
            keep = true;
        } else if has_option(value, b"close") {
            return false;
        } else {
            keep = keep || has_option(value, b"keep-alive");
        }
    }
    keep
}

/// Tells an HTTP/1 client that the connection closes after `response` (hyper's HTTP/2
/// drops the header).
pub(super) fn close_after<B>(response: &mut http::Response<B>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Whether a message's `Connection` header has the `close` option.
pub(super) fn asks_close(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| has_option(value, b"close"))
}

/// Whether a `Connection` value lists `option` (lower-case letters and `-`), as hyper
/// reads it: only as text, so a value with obs-text bytes (>= 0x80) lists nothing.
/// Reading it otherwise would have the service and hyper disagree on whether the client
/// asked to close.
pub(super) fn has_option(value: &HeaderValue, option: &[u8]) -> bool {
    let bytes = value.as_bytes();
    // Usually the value is the one option (httparse trims the spaces around it).
    is_option(bytes, option)
        || (value.to_str().is_ok()
            && bytes
                .split(|&b| b == b',')
                .any(|found| is_option(found.trim_ascii(), option)))
}

/// `found` is `option` in any case. Setting bit 5 lowers a letter, and leaves `-` as it
/// is; the only other byte it turns into `-` is CR, which no header value holds. So for
/// an option of lower-case letters and `-` this is exact, at an OR a byte.
fn is_option(found: &[u8], option: &[u8]) -> bool {
    debug_assert!(option.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'));
    found.len() == option.len() && found.iter().zip(option).all(|(&f, &o)| f | 0x20 == o)
}

/// Whether the client waits for `100 Continue` before it sends the body. The last
/// `Expect` decides, as in hyper's parser.
pub(super) fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::EXPECT)
        .iter()
        .next_back()
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The length of the request target as it came in.
pub(super) fn target_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
}

/// The size of a request head as it came in (request line and header lines), and its
/// `Host` headers, found on the way.
pub(super) fn head_size(parts: &http::request::Parts) -> (usize, conform::Hosts<'_>) {
    // Lengths only: this runs for every request, so nothing is formatted or allocated.
    let mut size = parts.method.as_str().len() + target_len(&parts.uri) + 12;
    let mut hosts = conform::Hosts::None;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
        if *name == header::HOST {
            hosts = hosts.and(value);
        }
    }
    (size, hosts)
}

/// The first `Content-Length` of `headers`, if it is a length.
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    content_length(headers.get(header::CONTENT_LENGTH)?)
}

/// A `Content-Length` value as hyper reads it: digits only (no sign, no spaces).
pub(crate) fn content_length(value: &HeaderValue) -> Option<u64> {
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_are_found_in_any_case_and_only_whole() {
        let has = |value: &'static str, option: &[u8]| {
            has_option(&HeaderValue::from_static(value), option)
        };
        for value in [
            "keep-alive",
            "Keep-Alive",
            "KEEP-ALIVE",
            "close, keep-alive",
            "x,Keep-Alive , y",
        ] {
            assert!(has(value, b"keep-alive"), "{value:?}");
        }
        for value in [
            "keep-alives",
            "keep_alive",
            "keepalive",
            "keep-alive-x",
            "",
            "close",
        ] {
            assert!(!has(value, b"keep-alive"), "{value:?}");
        }
        assert!(has("Close", b"close"));
        assert!(!has("closed", b"close"));
        // A line hyper cannot read as text lists nothing, for it or for us.
        let obs_text = HeaderValue::from_bytes(b"close, \x80x").unwrap();
        assert!(!has_option(&obs_text, b"close"));
    }

    #[test]
    fn an_http10_request_keeps_its_connection_as_hyper_reads_it() {
        let keeps = |lines: &[&'static str]| {
            let mut headers = http::HeaderMap::new();
            for line in lines {
                headers.append(header::CONNECTION, HeaderValue::from_static(line));
            }
            http10_keeps(&headers)
        };
        assert!(keeps(&["Keep-Alive"]));
        assert!(keeps(&["x-custom", "keep-alive"]));
        assert!(!keeps(&[]));
        assert!(!keeps(&["keep-alive", "close"]));
        assert!(!keeps(&["close", "keep-alive"]));
        assert!(!keeps(&["keep-alive, close"]));
    }
}
