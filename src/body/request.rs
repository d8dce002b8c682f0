//! The request body a handler reads: `std::io::Read` over bounded chunks.

use std::fmt;
use std::io::{self, BufRead, Read};
use std::task::Poll;

use bytes::{Buf, Bytes};

use super::channel::Receiver;

/// The body of a [`Request`](crate::Request): read it with [`std::io::Read`] or
/// [`std::io::BufRead`] (lines, `read_until`), or chunk by chunk with [`Body::chunk`].
///
/// A body that came off the network is fed by the connection task through a bounded
/// channel (a few chunks at most), so it is never held whole in memory, and a handler that
/// reads slowly slows the client down.
///
/// # Errors a read may return
///
/// - [`io::ErrorKind::InvalidData`]: the body grew over the server's size limit. The
///   client gets `413 Payload Too Large`, whatever the handler answers (unless the
///   handler already answered with a streamed response that reads this body, an echo:
///   that response is cut off instead).
/// - [`io::ErrorKind::TimedOut`]: the client sent less than 8 KiB of the body in one
///   body timeout while the handler waited for it (about 270 B/s at the default 30 s;
///   [`Server::body_timeout`](crate::Server::body_timeout)). The client gets
///   `408 Request Timeout`, whatever the handler answers (unless, again, a streamed
///   response reading this body is already on its way: it is cut off).
/// - [`io::ErrorKind::UnexpectedEof`] or [`io::ErrorKind::ConnectionAborted`]: the body
///   ended short of its `Content-Length`, its framing was broken, or the connection
///   broke. The client, if still there, gets `400 Bad Request` and `Connection: close`,
///   whatever the handler answers (logged at info: the client is the cause), unless a
///   streamed response reading this body is already on its way: it is cut off.
/// - [`io::ErrorKind::WouldBlock`]: read from the wrong place (below).
///
/// # Where it may be read
///
/// Reading blocks the calling thread while the next chunk is on its way, so read it from
/// a handler thread or any plain thread. Read from inside a tokio runtime context (an
/// async task, but also a `tokio::task::spawn_blocking` closure or code under
/// `Handle::enter`), a read that would have to wait fails with
/// [`io::ErrorKind::WouldBlock`] instead of blocking: the thread could be the very one
/// that has to deliver the chunk. Reads of chunks already there still succeed, so such a
/// reader fails only some of the time; read on a handler thread, or hand the body to
/// one with [`ensure_async`](crate::ensure_async).
///
/// A handler may also answer first and leave the body to a thread of its own (take it
/// with `Request::into_body`): the connection keeps feeding it after the response, and
/// its idle timeouts count from the body's last move, so a slow upload is not cut off.
///
/// Trailers (a chunked body's, or HTTP/2's) are not passed on: a reader of bytes has
/// nowhere to put them.
///
/// A client that sent `Expect: 100-continue` gets its `100 Continue` when the handler
/// first reads (or when its response is ready while the body lives on, in the response
/// or another thread): a handler that answers without reading, a `401` or a `413` from
/// the declared length, spares the client its upload. That is HTTP/1 only: hyper's
/// HTTP/2 server cannot send a `100`, so an HTTP/2 client sends after its own expect
/// timeout.
///
/// A body the handler drops before its end (or never reads) costs an HTTP/1 client its
/// connection only when much of it is still to come: on the bundled server, up to
/// 256 KiB of the rest of a `Content-Length` body is read off the wire and dropped, as
/// Go's `net/http` does, and the connection is kept. Past that, for a chunked body not
/// ended by the time of the response, when the client waits for `100 Continue`, or
/// under another server, the response says `Connection: close` and the connection
/// closes after it. Over HTTP/2 the stream is reset and the connection stays.
///
/// # Examples
///
/// ```
/// use std::io::Read;
/// use syncbridge::Body;
///
/// let mut body = Body::from("hello");
/// let mut text = String::new();
/// body.read_to_string(&mut text).unwrap();
/// assert_eq!(text, "hello");
/// ```
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Bytes),
    Streamed { rx: Receiver, current: Bytes },
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Body { kind: Kind::Empty }
    }

    pub(crate) fn streamed(rx: Receiver) -> Self {
        Body {
            kind: Kind::Streamed {
                rx,
                current: Bytes::new(),
            },
        }
    }

    /// The next chunk of the body as it arrived, or `None` at its end.
    ///
    /// What [`Read`] has not consumed of the current chunk comes first. Blocks like
    /// [`Read::read`]; see the type docs for where that is allowed.
    ///
    /// # Errors
    ///
    /// The client went away, sent a malformed body, or went past the size limit.
    pub fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        match &mut self.kind {
            Kind::Empty => Ok(None),
            Kind::Full(bytes) => {
                if bytes.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(std::mem::take(bytes)))
                }
            }
            Kind::Streamed { rx, current } => {
                if !current.is_empty() {
                    return Ok(Some(std::mem::take(current)));
                }
                recv(rx)
            }
        }
    }

    /// Reads the whole body into memory. Only for bodies you know are small: the size
    /// limit still applies, but everything up to it is held at once.
    ///
    /// # Errors
    ///
    /// As for [`Body::chunk`].
    pub fn to_bytes(mut self) -> io::Result<Bytes> {
        let first = match self.chunk()? {
            None => return Ok(Bytes::new()),
            Some(chunk) => chunk,
        };
        let Some(second) = self.chunk()? else {
            return Ok(first);
        };
        let mut all = Vec::with_capacity(first.len() + second.len());
        all.extend_from_slice(&first);
        all.extend_from_slice(&second);
        while let Some(chunk) = self.chunk()? {
            all.extend_from_slice(&chunk);
        }
        Ok(all.into())
    }

    /// Whether the body is fed from the network (and not yet known to be empty).
    pub(crate) fn is_streamed(&self) -> bool {
        matches!(self.kind, Kind::Streamed { .. })
    }

    /// Whether the body is known to have ended cleanly with every byte read, without
    /// blocking.
    ///
    /// A body that failed (cut short of its `Content-Length`, broken off, over the size
    /// limit) is not at its end: `false`, and the next read returns the error. So
    /// `is_end` never passes a truncated body off as a whole one.
    pub fn is_end(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_empty(),
            Kind::Streamed { rx, current } => current.is_empty() && rx.is_end(),
        }
    }
}

/// Takes the next chunk, refusing to block a thread that runs async code.
fn recv(rx: &Receiver) -> io::Result<Option<Bytes>> {
    if let Poll::Ready(next) = rx.try_recv() {
        return next.transpose();
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "syncbridge::Body read from async code would block the runtime; \
             read it on a handler thread (or through ensure_async)",
        ));
    }
    rx.blocking_recv().transpose()
}

/// Reads through the chunks as they arrive, without a copy into a buffer of its own:
/// `lines()`, `read_until` and `BufReader`-style parsing work on the body as it comes.
impl BufRead for Body {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match &mut self.kind {
            Kind::Empty => Ok(&[]),
            Kind::Full(bytes) => Ok(&bytes[..]),
            Kind::Streamed { rx, current } => {
                while current.is_empty() {
                    match recv(rx)? {
                        Some(chunk) => *current = chunk,
                        None => break,
                    }
                }
                Ok(&current[..])
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        match &mut self.kind {
            Kind::Empty => {}
            Kind::Full(bytes) | Kind::Streamed { current: bytes, .. } => {
                bytes.advance(amount.min(bytes.len()));
            }
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let current = match &mut self.kind {
            Kind::Empty => return Ok(0),
            Kind::Full(bytes) => bytes,
            Kind::Streamed { rx, current } => {
                while current.is_empty() {
                    match recv(rx)? {
                        Some(chunk) => *current = chunk,
                        None => return Ok(0),
                    }
                }
                current
            }
        };
        let n = buf.len().min(current.len());
        buf[..n].copy_from_slice(&current[..n]);
        current.advance(n);
        Ok(n)
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Streamed { .. } => "streamed",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body {
            kind: Kind::Full(bytes),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::from(Bytes::from(bytes))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Body::from(Bytes::from_static(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::channel::channel;

    #[test]
    fn reads_across_chunks_and_reports_eof() {
        let (tx, rx) = channel(4, None);
        let mut body = Body::streamed(rx);
        std::thread::spawn(move || {
            tx.blocking_send(Bytes::from_static(b"hel")).unwrap();
            tx.blocking_send(Bytes::from_static(b"lo")).unwrap();
            tx.finish();
        });
        let mut s = String::new();
        body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert_eq!(body.read(&mut [0; 4]).unwrap(), 0);
        assert!(body.is_end());
    }

    #[test]
    fn lines_are_read_across_chunks_without_losing_a_byte() {
        let (tx, rx) = channel(64, None);
        let mut body = Body::streamed(rx);
        std::thread::spawn(move || {
            for part in ["one\ntw", "o\n", "", "thr", "ee"] {
                tx.blocking_send(Bytes::from_static(part.as_bytes()))
                    .unwrap();
            }
            tx.finish();
        });
        let mut first = String::new();
        body.read_line(&mut first).unwrap();
        assert_eq!(first, "one\n");
        // `Read` and `BufRead` share the chunk in hand.
        let mut t = [0u8; 1];
        body.read_exact(&mut t).unwrap();
        assert_eq!(&t, b"t");
        let rest: Vec<String> = body.lines().map(Result::unwrap).collect();
        assert_eq!(rest, ["wo", "three"]);
    }

    #[test]
    fn a_body_that_failed_is_not_at_its_end_and_its_next_read_says_why() {
        let (tx, rx) = channel(16, None);
        let mut body = Body::streamed(rx);
        tx.blocking_send(Bytes::from_static(b"cut")).unwrap();
        // A sender gone without `finish`: the pump's body broke off.
        drop(tx);
        assert_eq!(&body.chunk().unwrap().unwrap()[..], b"cut");
        assert!(!body.is_end(), "a failed body passed off as complete");
        let err = body.chunk().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn read_from_async_code_fails_instead_of_blocking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (_tx, rx) = channel(1, None);
        let mut body = Body::streamed(rx);
        let err = rt.block_on(async move { body.read(&mut [0; 8]).unwrap_err() });
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
