//! A connection's byte stream: TCP, or a Unix domain socket.
//!
//! One type for both, not a generic `conn::serve`: hyper's connection code is then
//! compiled once, as before Unix sockets. A generic `serve` made two copies of it
//! (callgrind showed hyper's dispatcher twice), inlined differently; that build's `/hello`
//! took about 100 more instructions, though a change of layout alone can move that
//! count as much (docs/benchmarks.md, step 11). The `match` here costs a branch per read
//! or write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys::ConnSocket;

pub(super) enum ConnStream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl ConnStream {
    /// The socket under the stream, for the watches that look at it directly.
    pub(super) fn conn_socket(&self) -> ConnSocket {
        match self {
            ConnStream::Tcp(stream) => ConnSocket::tcp(stream),
            #[cfg(unix)]
            ConnStream::Unix(stream) => ConnSocket::unix(stream),
        }
    }

    /// Copies what has arrived into `buf` without taking it, once at least a byte has
    /// (or the peer closed: `Ok(0)`). For the PROXY protocol's header, which must be read
    /// without a byte of the request after it.
    pub(super) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ConnStream::Tcp(stream) => stream.peek(buf).await,
            #[cfg(unix)]
            ConnStream::Unix(stream) => {
                stream
                    .async_io(tokio::io::Interest::READABLE, || {
                        crate::sys::peek(stream, &mut *buf)
                    })
                    .await
            }
        }
    }
}

/// Runs `$call` with `$stream` bound to whichever stream it is (both are `Unpin`).
macro_rules! each {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            ConnStream::Tcp($stream) => $call,
            #[cfg(unix)]
            ConnStream::Unix($stream) => $call,
        }
    };
}

impl AsyncRead for ConnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, stream => Pin::new(stream).poll_read(cx, buf))
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, stream => Pin::new(stream).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, stream => Pin::new(stream).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ConnStream::Tcp(stream) => stream.is_write_vectored(),
            #[cfg(unix)]
            ConnStream::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, stream => Pin::new(stream).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, stream => Pin::new(stream).poll_shutdown(cx))
    }
}
