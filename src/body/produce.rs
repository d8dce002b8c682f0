//! Runs a streamed response body's producer on the handler thread.

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};

use super::channel::{ByClient, Failed, FaultProbe, SendError, Sender, Unsent};
use super::{Producer, CHUNK_SIZE};
use crate::error::panic_message;

/// How a producer ended.
#[derive(Debug)]
pub(crate) enum Produced {
    /// Every chunk was handed over; `u64` bytes.
    Complete(u64),
    /// The client went away (or the response was dropped) after `u64` bytes.
    Disconnected(u64),
    /// The client's side failed after `bytes`: it took no piece of the response for the
    /// stall limit, or the request body an echo reads stalled, broke off or grew over the
    /// limit. The response was aborted to free the thread; or, `replaced`, its head had
    /// not gone out and the failure is answered in its place (`408`, `400`), as a
    /// handler's read of it is.
    ByClient {
        bytes: u64,
        err: io::Error,
        replaced: bool,
    },
    /// The producer failed. `replaced`: before its first bytes, with the head still held,
    /// so the head never went out and the request is answered `500` in its place; else
    /// the response was aborted.
    Failed { err: io::Error, replaced: bool },
    /// The stream timeout passed after `bytes`: a send failed, and the response was
    /// aborted to free the thread; or, `replaced`, its head had not gone out and the
    /// request is answered `504` in its place.
    Expired {
        bytes: u64,
        replaced: bool,
        /// The stream failed with its receiver there: the client meets the abort.
        aborted: bool,
    },
    /// The producer panicked; `replaced` as for `Failed`. `by_client`: its reads of the
    /// request body had met the client's failure, and a head replaced is answered as
    /// that failure (`408`, `400`), not `500`.
    Panicked {
        msg: String,
        replaced: bool,
        by_client: bool,
        /// Its write had failed for the stream timeout (a producer that unwraps its
        /// writes): a head replaced is answered `504`.
        expired: bool,
        /// The stream failed with its receiver there: the client meets the abort.
        aborted: bool,
    },
}

impl Produced {
    /// Whether the stream timeout aborted the response after its head went out, its
    /// receiver still there (not one hyper had taken whole and let go of): its queued
    /// chunks were dropped, and the connection may be closed at once.
    pub(crate) fn aborted_for_the_stream_timeout(&self) -> bool {
        matches!(
            self,
            Produced::Expired { aborted: true, .. }
                | Produced::Panicked {
                    aborted: true,
                    by_client: false,
                    expired: true,
                    ..
                }
        )
    }
}

/// Drives `producer` into `tx` until it ends, the receiver goes away, or it fails.
/// `declared` is the response's `Content-Length`, if the handler set one: a body that
/// goes past it, or ends short of it, is aborted as a failure of the producer (hyper's
/// HTTP/1 would cut the excess off silently, and HTTP/2 clients reset the stream).
/// The producer is dropped before this returns, so a disconnect frees what it holds.
/// `request_body` tells whether the producer's reads of the request body (an echo's)
/// met the client's failure: then the client is the cause of the producer's failure,
/// whatever the producer made of it, as it is of a handler's.
pub(crate) fn produce(
    producer: Producer,
    tx: Sender,
    declared: Option<u64>,
    request_body: Option<&FaultProbe>,
) -> Produced {
    let mut out = Out {
        tx: &tx,
        sent: 0,
        declared,
        overran: false,
        stalled: false,
    };
    let result = catch_unwind(AssertUnwindSafe(|| run(producer, &mut out)));
    let (sent, overran, stalled) = (out.sent, out.overran, out.stalled);
    match result {
        // Checked first: the producer may have wrapped the error, or swallowed it (and
        // then ended cleanly: the client must not take a cut-off body for a whole one). A
        // client that left meanwhile is a disconnect, below.
        Ok(_) if tx.expired() && !tx.is_closed() => {
            let failed = tx.fail_before_head(
                io::ErrorKind::TimedOut,
                "the response went on past the stream timeout",
                Unsent::Expired,
            );
            Produced::Expired {
                bytes: sent,
                replaced: failed == Failed::Replaced,
                aborted: failed == Failed::Aborted,
            }
        }
        // A chunk was lost to a client that took nothing for the body timeout: whatever
        // the producer made of it, and however the client reads on, the body has a hole.
        Ok(_) if stalled && !tx.is_closed() => by_client(
            tx,
            sent,
            io::ErrorKind::TimedOut,
            send_error(SendError::Stalled),
        ),
        Ok(_) if overran => failed(
            tx,
            wrong_length(format!(
                "the response body went past the {} bytes its Content-Length declares",
                declared.unwrap_or_default()
            )),
        ),
        Ok(Ok(())) => {
            // The producer met the client's failure in the request body it read, and
            // took it for the body's end (`lines().map_while(Result::ok)`): what it sent
            // is cut short of what the whole request would have made, and is not passed
            // off as whole, as a handler's answer is not. Not with its whole declared
            // length out: hyper ends the body there whatever follows, and the client has
            // all of it.
            let swallowed = (!tx.is_closed() && declared != Some(sent))
                .then(|| client_fault(request_body))
                .flatten();
            if let Some(kind) = swallowed {
                let err = io::Error::new(
                    kind,
                    "the request body failed for its client; the response's producer took \
                     that for the body's end",
                );
                return by_client(tx, sent, kind, err);
            }
            match declared {
                // Short, but the client left: a producer that took no notice of its failed
                // writes.
                Some(declared) if sent < declared && tx.is_closed() => Produced::Disconnected(sent),
                Some(declared) if sent < declared => failed(
                    tx,
                    wrong_length(format!(
                        "the response body ended after {sent} of the {declared} bytes its \
                         Content-Length declares"
                    )),
                ),
                // A producer that took no notice of its failed writes, its client gone.
                None if tx.is_closed() => Produced::Disconnected(sent),
                _ => {
                    tx.finish();
                    Produced::Complete(sent)
                }
            }
        }
        // The client's doing, not the producer's (the channels mark such errors).
        Ok(Err(err)) if ByClient::is(&err) => by_client(tx, sent, err.kind(), err),
        // Whatever the producer made of it (a `BrokenPipe`, or its own error wrapping
        // one), a write failed because nobody reads the response any more. Not with its
        // whole declared length out, which is why HTTP/1 hyper let go: the error is the
        // producer's own, as a write past that length is.
        Ok(Err(_)) if tx.is_closed() && declared != Some(sent) => Produced::Disconnected(sent),
        Ok(Err(err)) => match client_fault(request_body) {
            // The producer wrapped the client's failure in an error of its own.
            Some(kind) => by_client(tx, sent, kind, err),
            None => failed(tx, err),
        },
        Err(payload) => {
            let msg = panic_message(payload);
            let client = client_fault(request_body);
            // A producer that unwraps its writes panics on the one the stream timeout
            // failed: that is what its request is answered as.
            let expired = tx.expired() && !tx.is_closed();
            let why = match client {
                Some(kind) => Unsent::ByClient(kind),
                None if expired => Unsent::Expired,
                None => Unsent::ProducerFailed,
            };
            // Not a clean end: the response is aborted, or answered in its place.
            let failed = tx.fail_before_head(
                client.unwrap_or(io::ErrorKind::Other),
                "the response body's producer panicked",
                why,
            );
            Produced::Panicked {
                msg,
                replaced: failed == Failed::Replaced,
                by_client: client.is_some(),
                expired,
                aborted: failed == Failed::Aborted,
            }
        }
    }
}

/// The client's failure the producer's reads of the request body met, if any.
fn client_fault(request_body: Option<&FaultProbe>) -> Option<io::ErrorKind> {
    request_body.and_then(FaultProbe::client_fault)
}

/// Ends the stream with the client's failure of `kind` that the producer met.
fn by_client(tx: Sender, bytes: u64, kind: io::ErrorKind, err: io::Error) -> Produced {
    let replaced =
        tx.fail_before_head(kind, err.to_string(), Unsent::ByClient(kind)) == Failed::Replaced;
    Produced::ByClient {
        bytes,
        err,
        replaced,
    }
}

/// Ends the stream with the producer's failure.
fn failed(tx: Sender, err: io::Error) -> Produced {
    let replaced = tx.fail_before_head(err.kind(), err.to_string(), Unsent::ProducerFailed)
        == Failed::Replaced;
    Produced::Failed { err, replaced }
}

fn wrong_length(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn send_error(err: SendError) -> io::Error {
    match err {
        SendError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"),
        SendError::Stalled => ByClient::error(
            io::ErrorKind::TimedOut,
            "the client took no piece of the response for the body timeout",
        ),
        SendError::Expired => io::Error::new(
            io::ErrorKind::TimedOut,
            "the response went on past the stream timeout",
        ),
    }
}

/// Where a producer's chunks go: the channel, counted against the declared length.
struct Out<'a> {
    tx: &'a Sender,
    sent: u64,
    declared: Option<u64>,
    /// The producer tried to send more than `declared`.
    overran: bool,
    /// A send failed for a client that took nothing for the body timeout. Every later
    /// send fails the same way: the chunk it carried is lost, so a body sent on after it
    /// would reach a client that reads again with a hole in it.
    stalled: bool,
}

impl Out<'_> {
    /// Fails if `more` bytes on top of those sent would go past the declared length.
    fn check_room(&mut self, more: usize) -> io::Result<()> {
        if self
            .declared
            .is_some_and(|declared| self.sent + more as u64 > declared)
        {
            self.overran = true;
            return Err(wrong_length(
                "the response body goes past its Content-Length".to_owned(),
            ));
        }
        Ok(())
    }

    /// Fails with `BrokenPipe` once nobody reads the response. Not once a declared
    /// length has all gone out: HTTP/1 hyper drops the body then, with the client still
    /// there and served. One atomic load; and with a stream timeout, a clock read, and
    /// `TimedOut` once it has passed: a heartbeat loop, or a writer gathering small
    /// writes, must not run on past it unseen.
    fn still_read(&self) -> io::Result<()> {
        if self.stalled {
            return Err(send_error(SendError::Stalled));
        }
        if self.tx.is_closed() && self.declared != Some(self.sent) {
            return Err(send_error(SendError::Closed));
        }
        self.tx.check_expiry().map_err(send_error)
    }

    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.check_room(chunk.len())?;
        if self.stalled {
            return Err(send_error(SendError::Stalled));
        }
        let n = chunk.len() as u64;
        self.tx.blocking_send(chunk).map_err(|err| {
            self.stalled |= err == SendError::Stalled;
            send_error(err)
        })?;
        self.sent += n;
        Ok(())
    }
}

fn run(producer: Producer, out: &mut Out<'_>) -> io::Result<()> {
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
                out.send(buf.split().freeze())?;
            }
        }
        Producer::Iter(iter) => {
            for chunk in iter {
                let chunk = chunk?;
                if !chunk.is_empty() {
                    out.send(chunk)?;
                } else {
                    // Sends nothing, but an empty chunk is how a WSGI port asks whether
                    // its client is still there: a heartbeat loop would run on for ever.
                    out.still_read()?;
                }
            }
            Ok(())
        }
        Producer::Writer(write) => {
            let mut writer = ChannelWriter {
                out,
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
struct ChannelWriter<'a, 'b> {
    out: &'a mut Out<'b>,
    buf: BytesMut,
}

impl ChannelWriter<'_, '_> {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.send(self.buf.split().freeze())
    }
}

impl Write for ChannelWriter<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            // How a heartbeat loop asks whether its client is still there.
            self.out.still_read()?;
            return Ok(0);
        }
        let n = data.len().min(CHUNK_SIZE);
        // Told at the write that goes past it, not at the flush that would send it; and
        // before the client's leaving, which hyper's HTTP/1 does once it has the
        // declared length.
        self.out.check_room(self.buf.len() + n)?;
        // Gathering would hide a client that left until 64 KiB had been written: an
        // event stream writing a line a second would run on for minutes.
        self.out.still_read()?;
        if self.buf.len() + n > CHUNK_SIZE {
            self.send_buffered()?;
        }
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            // As an empty write: nothing to send, but the client may have left.
            return self.out.still_read();
        }
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
        produce(Producer::Iter(Box::new(iter)), tx, None, None)
    }

    #[test]
    fn an_error_the_client_caused_is_told_from_the_producers_own() {
        // The request body an echo reads broke off with the client's connection.
        let by_client = ByClient::error(io::ErrorKind::ConnectionAborted, "connection reset");
        assert!(matches!(
            produce_failing(by_client),
            Produced::ByClient { bytes: 0, .. }
        ));
        // The producer's own upstream reset its connection: a failure, logged as one.
        let own = io::Error::new(io::ErrorKind::ConnectionReset, "upstream reset");
        assert!(matches!(produce_failing(own), Produced::Failed { .. }));
    }

    #[test]
    fn a_producer_error_after_the_client_left_is_a_disconnect_however_it_is_wrapped() {
        let (tx, rx) = channel(1024, None);
        drop(rx);
        let wrapped = io::Error::other("sending event: the client went away");
        let mut err = Some(wrapped);
        let iter = std::iter::from_fn(move || err.take().map(Err));
        assert!(matches!(
            produce(Producer::Iter(Box::new(iter)), tx, None, None),
            Produced::Disconnected(0)
        ));
    }

    #[test]
    fn a_flush_after_a_declared_length_has_all_gone_out_is_no_disconnect() {
        // HTTP/1 hyper drops the body once it has the declared length: the client is
        // still there, and a second flush (a wrapper's `finish`) must not fail.
        let (tx, rx) = channel(1024, None);
        let rx = std::sync::Mutex::new(Some(rx));
        let writer = move |w: &mut dyn Write| -> io::Result<()> {
            w.write_all(b"hello")?;
            w.flush()?;
            drop(rx.lock().unwrap().take());
            w.flush()?;
            let _: usize = w.write(b"")?;
            Ok(())
        };
        let produced = produce(Producer::Writer(Box::new(writer)), tx, Some(5), None);
        assert!(matches!(produced, Produced::Complete(5)), "{produced:?}");
    }

    #[test]
    fn empty_chunks_writes_and_flushes_tell_a_producer_its_client_left() {
        // Before: each was skipped or succeeded, and a heartbeat loop ran on for ever.
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let heartbeats = std::iter::repeat_with(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(Bytes::new())
        })
        .take(1000);
        let (tx, rx) = channel(1024, None);
        drop(rx);
        let produced = produce(Producer::Iter(Box::new(heartbeats)), tx, None, None);
        assert!(
            matches!(produced, Produced::Disconnected(0)),
            "{produced:?}"
        );
        assert_eq!(pulled.load(Ordering::Relaxed), 1);

        for empty_write in [false, true] {
            let beats = Arc::new(AtomicUsize::new(0));
            let counter = beats.clone();
            let (tx, rx) = channel(1024, None);
            drop(rx);
            let writer = move |w: &mut dyn Write| -> io::Result<()> {
                for _ in 0..1000 {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if empty_write {
                        let _: usize = w.write(b"")?;
                    } else {
                        w.flush()?;
                    }
                }
                Ok(())
            };
            let produced = produce(Producer::Writer(Box::new(writer)), tx, None, None);
            assert!(
                matches!(produced, Produced::Disconnected(0)),
                "{produced:?}"
            );
            assert_eq!(
                beats.load(Ordering::Relaxed),
                1,
                "empty write: {empty_write}"
            );
        }
    }
}
