//! The response body a handler returns: full bytes, or a stream produced on its thread.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::Bytes;

/// The body of a [`Response`](crate::Response).
///
/// Either bytes known up front (sent with `Content-Length`), or a stream produced on the
/// handler's thread after the handler returns: from a reader, an iterator of chunks, or a
/// closure writing into an [`io::Write`] (like WSGI's `write()`). Streams go to the client
/// through a bounded channel of a few chunks, so a slow client slows the producer and
/// nothing is buffered whole. When the client goes away, the writer's next `write` fails
/// with [`io::ErrorKind::BrokenPipe`], and a reader or iterator is dropped at its next
/// chunk, so the thread is freed. An empty chunk, an empty `write` and a `flush` with
/// nothing to send tell too, though they send nothing: a heartbeat loop that yields
/// `b""` to ask whether its client is still there ends when it left. With a stream
/// timeout (`Server::stream_timeout`), every write, these too, fails with
/// [`io::ErrorKind::TimedOut`] once it has passed.
///
/// A streamed body is sent chunked unless the handler sets `Content-Length` itself. Then
/// the producer must write exactly that many bytes. A write past it fails with
/// [`io::ErrorKind::InvalidInput`] and nothing past it is sent; a body that ends short of
/// it is aborted. Either is logged at error, on either protocol.
///
/// # Errors and aborts
///
/// The status and headers wait for the producer's first bytes (or the end of a body
/// that has none) for a short grace, 100 ms by default
/// ([`Server::head_grace`](crate::Server::head_grace),
/// [`SyncServiceBuilder::head_grace`](crate::SyncServiceBuilder::head_grace)). A
/// producer that fails in that time (returns `Err`, panics, or breaks the declared
/// length before any byte) is answered `500 Internal Server Error` in their place, on a
/// connection that stays open, and the failure is logged at error; one that meets the
/// client's failure in the request body it reads (a stall, a body cut short) is
/// answered as a handler's read of it is (`408`, `400`). Once they have gone out, the
/// response cannot become a `500` any more: a failure aborts it instead (no final chunk
/// on HTTP/1, the connection closed; `RST_STREAM` on HTTP/2), so the client sees a body
/// cut off, never a complete one, and the failure is logged at error. The grace is
/// short, not "until the first bytes" as in WSGI servers, for clients that send more of
/// their body, or a request of their own, only once they have the head (an event
/// stream's, a full-duplex echo's), and for a host's timeout around the service, which
/// times the grace too. A producer that wants its head out at once sends its first
/// bytes at once (an event stream, a comment line). Where the close itself ends the
/// body (HTTP/1.0, nginx's default towards upstreams), the bundled server closes with a
/// reset, which a clean end cannot be taken for (on Linux; a host serving `SyncService`
/// itself decides its own close). A producer that fails just as its head goes out (with
/// no grace, before anything went out; with one, right at its end) may leave the client
/// with no response at all: hyper drops a head not yet written with the body. An error
/// met because the client left is logged at debug, even if the producer wrapped it in
/// an error of its own.
///
/// The constructors only wrap their argument and may be called anywhere. The producer
/// runs where its handler ran, with the same reach: [`ensure_sync`](crate::ensure_sync)
/// and [`TaskSet::current`](crate::TaskSet::current) work in it as in the handler.
///
/// # Examples
///
/// ```
/// use syncbridge::ResponseBody;
///
/// let full = ResponseBody::from("hello");
/// let file_like = ResponseBody::from_reader(std::io::Cursor::new(vec![0u8; 1024]));
/// let chunks = ResponseBody::from_chunks(["a", "b"].map(|s| Ok(bytes::Bytes::from(s))));
/// let written = ResponseBody::from_writer(|w| {
///     w.write_all(b"line 1\n")?;
///     w.write_all(b"line 2\n")
/// });
/// # let _ = (full, file_like, chunks, written);
/// ```
pub struct ResponseBody {
    pub(crate) kind: ResponseKind,
}

pub(crate) enum ResponseKind {
    Full(Bytes),
    Stream(Producer),
}

/// A writer-style body: a closure that writes the body into the `io::Write` it is given.
pub(crate) type WriteFn = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// Where a streamed body's chunks come from; runs on the handler's thread.
pub(crate) enum Producer {
    Reader(Box<dyn Read + Send>),
    Iter(Box<dyn Iterator<Item = io::Result<Bytes>> + Send>),
    Writer(WriteFn),
}

impl ResponseBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        ResponseBody {
            kind: ResponseKind::Full(Bytes::new()),
        }
    }

    /// Streams what `reader` yields until EOF, in chunks of up to 64 KiB.
    pub fn from_reader(reader: impl Read + Send + 'static) -> Self {
        ResponseBody {
            kind: ResponseKind::Stream(Producer::Reader(Box::new(reader))),
        }
    }

    /// Streams the chunks of `iter`; an `Err` item aborts the response. Each chunk goes to
    /// the client whole, in pieces of up to 64 KiB: a chunk larger than the channel's
    /// 256 KiB is held in memory whole until it is sent. Empty chunks send nothing.
    pub fn from_chunks<I>(iter: I) -> Self
    where
        I: IntoIterator<Item = io::Result<Bytes>>,
        I::IntoIter: Send + 'static,
    {
        ResponseBody {
            kind: ResponseKind::Stream(Producer::Iter(Box::new(iter.into_iter()))),
        }
    }

    /// Streams what `write` writes into the writer it is given. Writes are gathered into
    /// chunks of up to 64 KiB; call `flush` to send what has been written so far (a
    /// stream of events, a progress line). Returning an `Err` aborts the response.
    pub fn from_writer<F>(write: F) -> Self
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
    {
        ResponseBody {
            kind: ResponseKind::Stream(Producer::Writer(Box::new(write))),
        }
    }

    /// Runs the body to its end on this thread and returns it whole: for a handler's
    /// unit tests, which call it with no server. The server never does this (it streams
    /// with backpressure): do not call it on a body that may be large.
    ///
    /// Callable from any thread. A producer runs here as on a plain thread: with no
    /// syncbridge context, so an `ensure_sync` in it fails with `is_no_context`.
    ///
    /// # Errors
    ///
    /// The producer's own: a reader's, a chunk's, or the writer closure's `Err`. A
    /// panic in the producer is not caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use syncbridge::{http::StatusCode, IntoResponse, Request, ResponseBody};
    ///
    /// fn report(_req: Request) -> (StatusCode, ResponseBody) {
    ///     let body = ResponseBody::from_writer(|w| writeln!(w, "rows: {}", 3));
    ///     (StatusCode::OK, body)
    /// }
    ///
    /// let response = report(Request::new(Default::default())).into_response();
    /// assert_eq!(response.status(), StatusCode::OK);
    /// assert_eq!(response.into_body().into_bytes().unwrap(), "rows: 3\n");
    /// ```
    pub fn into_bytes(self) -> io::Result<Bytes> {
        match self.kind {
            ResponseKind::Full(bytes) => Ok(bytes),
            ResponseKind::Stream(Producer::Reader(mut reader)) => {
                let mut whole = Vec::new();
                reader.read_to_end(&mut whole)?;
                Ok(whole.into())
            }
            ResponseKind::Stream(Producer::Iter(chunks)) => {
                let mut whole = Vec::new();
                for chunk in chunks {
                    whole.extend_from_slice(&chunk?);
                }
                Ok(whole.into())
            }
            ResponseKind::Stream(Producer::Writer(write)) => {
                let mut whole = Vec::new();
                write(&mut whole)?;
                Ok(whole.into())
            }
        }
    }

    /// The body's length, when it is known before it is sent.
    pub fn len_hint(&self) -> Option<u64> {
        match &self.kind {
            ResponseKind::Full(b) => Some(b.len() as u64),
            ResponseKind::Stream(_) => None,
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::empty()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ResponseKind::Full(b) => f.debug_tuple("ResponseBody::Full").field(&b.len()).finish(),
            ResponseKind::Stream(_) => f.write_str("ResponseBody::Stream"),
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody {
            kind: ResponseKind::Full(bytes),
        }
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(bytes: Vec<u8>) -> Self {
        ResponseBody::from(Bytes::from(bytes))
    }
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        ResponseBody::from(Bytes::from(s))
    }
}

impl From<&'static str> for ResponseBody {
    fn from(s: &'static str) -> Self {
        ResponseBody::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for ResponseBody {
    fn from(s: &'static [u8]) -> Self {
        ResponseBody::from(Bytes::from_static(s))
    }
}

impl From<()> for ResponseBody {
    fn from(_: ()) -> Self {
        ResponseBody::empty()
    }
}

/// A request body is a reader, so it can be sent straight back (an echo).
impl From<crate::Body> for ResponseBody {
    fn from(body: crate::Body) -> Self {
        ResponseBody::from_reader(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_bytes_runs_every_kind_of_producer_and_passes_on_its_error() {
        let reader = ResponseBody::from_reader(io::Cursor::new(vec![b'r'; 100_000]));
        assert_eq!(reader.into_bytes().unwrap().len(), 100_000);
        let chunks = ResponseBody::from_chunks(["a", "b"].map(|s| Ok(Bytes::from(s))));
        assert_eq!(chunks.into_bytes().unwrap(), "ab");
        let broken =
            ResponseBody::from_chunks([Ok(Bytes::from("a")), Err(io::Error::other("disk gone"))]);
        assert_eq!(broken.into_bytes().unwrap_err().to_string(), "disk gone");
        assert_eq!(ResponseBody::from("full").into_bytes().unwrap(), "full");
    }
}
