//! Runs a streamed response body's producer on the handler thread.

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::BytesMut;

use super::channel::{ByClient, SendError, Sender};
use super::{Producer, CHUNK_SIZE};
use crate::error::panic_message;

/// How a producer ended.
#[derive(Debug)]
pub(crate) enum Produced {
    /// Every chunk was handed over; `u64` bytes.
    Complete(u64),
    /// The client went away (or the response was dropped) after `u64` bytes.
    Disconnected(u64),
    /// The client's side failed after `u64` bytes: it read none of the response for the
    /// stall limit, or the request body an echo reads stalled, broke off or grew over the
    /// limit. The response was aborted to free the thread.
    ByClient(u64, io::Error),
    /// The producer failed; the response was aborted.
    Failed(io::Error),
    /// The producer panicked; the response was aborted.
    Panicked(String),
}

/// Drives `producer` into `tx` until it ends, the receiver goes away, or it fails.
/// The producer is dropped before this returns, so a disconnect frees what it holds.
pub(crate) fn produce(producer: Producer, tx: Sender) -> Produced {
    let mut sent = 0u64;
    let result = catch_unwind(AssertUnwindSafe(|| run(producer, &tx, &mut sent)));
    match result {
        Ok(Ok(())) => {
            tx.finish();
            Produced::Complete(sent)
        }
        // The client's doing, not the producer's (the channels mark such errors).
        Ok(Err(err)) if ByClient::is(&err) => {
            tx.fail(err.kind(), err.to_string());
            Produced::ByClient(sent, err)
        }
        Ok(Err(err)) if err.kind() == io::ErrorKind::BrokenPipe && tx.is_closed() => {
            Produced::Disconnected(sent)
        }
        Ok(Err(err)) => {
            tx.fail(err.kind(), err.to_string());
            Produced::Failed(err)
        }
        Err(payload) => {
            // Dropping `tx` unfinished aborts the response rather than ending it cleanly.
            drop(tx);
            Produced::Panicked(panic_message(&*payload))
        }
    }
}

fn send_error(err: SendError) -> io::Error {
    match err {
        SendError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"),
        SendError::Stalled => ByClient::error(
            io::ErrorKind::TimedOut,
            "the client read none of the response for the body timeout",
        ),
    }
}

fn run(producer: Producer, tx: &Sender, sent: &mut u64) -> io::Result<()> {
    match producer {
        Producer::Reader(mut reader) => {
            let mut buf = BytesMut::new();
            loop {
                // `reserve` takes back the previous chunk's allocation once hyper has
                // written and dropped it, so a steady stream reuses a few buffers.
                buf.reserve(CHUNK_SIZE);
                buf.resize(CHUNK_SIZE, 0);
                let n = loop {
                    match reader.read(&mut buf[..]) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                tx.blocking_send(buf.split().freeze()).map_err(send_error)?;
                *sent += n as u64;
            }
        }
        Producer::Iter(iter) => {
            for chunk in iter {
                let chunk = chunk?;
                if chunk.is_empty() {
                    continue;
                }
                let n = chunk.len() as u64;
                tx.blocking_send(chunk).map_err(send_error)?;
                *sent += n;
            }
            Ok(())
        }
        Producer::Writer(write) => {
            let mut writer = ChannelWriter {
                tx,
                sent,
                buf: BytesMut::new(),
            };
            write(&mut writer)?;
            writer.send_buffered()
        }
    }
}

/// The `io::Write` a writer-style body writes into. Small writes are gathered into
/// chunks of up to 64 KiB (a `writeln!` per line would otherwise cost a chunk, a wake-up
/// and a chunk header on the wire each); `flush` sends what has been gathered.
struct ChannelWriter<'a> {
    tx: &'a Sender,
    sent: &'a mut u64,
    buf: BytesMut,
}

impl ChannelWriter<'_> {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let n = chunk.len() as u64;
        self.tx.blocking_send(chunk).map_err(send_error)?;
        *self.sent += n;
        Ok(())
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.buf.len() + data.len() > CHUNK_SIZE {
            self.send_buffered()?;
        }
        let n = data.len().min(CHUNK_SIZE);
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::channel::channel;

    fn produce_failing(err: io::Error) -> Produced {
        let (tx, _rx) = channel(1024, None);
        let mut err = Some(err);
        let iter = std::iter::from_fn(move || err.take().map(Err));
        produce(Producer::Iter(Box::new(iter)), tx)
    }

    #[test]
    fn an_error_the_client_caused_is_told_from_the_producers_own() {
        // The request body an echo reads broke off with the client's connection.
        let by_client = ByClient::error(io::ErrorKind::ConnectionAborted, "connection reset");
        assert!(matches!(
            produce_failing(by_client),
            Produced::ByClient(0, _)
        ));
        // The producer's own upstream reset its connection: a failure, logged as one.
        let own = io::Error::new(io::ErrorKind::ConnectionReset, "upstream reset");
        assert!(matches!(produce_failing(own), Produced::Failed(_)));
    }
}
