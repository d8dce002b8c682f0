//! Runs a streamed response body's producer on the handler thread.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};

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
    /// The client's side failed after `u64` bytes: it took no piece of the response for the
    /// stall limit, or the request body an echo reads stalled, broke off or grew over the
    /// limit. The response was aborted to free the thread.
    ByClient(u64, io::Error),
    /// The producer failed; the response was aborted.
    Failed(io::Error),
    /// The producer panicked; the response was aborted.
    Panicked(String),
}

/// A streamed response's head, held back until the body has its first bytes (or ends):
/// WSGI servers hold theirs the same way, so that a producer that fails before anything
/// is ready is still answered with a status of its own (a `500`), not a `200` that breaks
/// off.
pub(crate) trait HeldHead {
    /// Hands the head on; false if nobody waits for the response any more.
    fn release(self: Box<Self>) -> bool;
    /// Whether nobody waits for the response any more.
    fn abandoned(&self) -> bool;
}

thread_local! {
    /// The head of the response this thread produces, while it is held: a read of the
    /// request body that is about to wait reaches it here (`take_held_head`).
    static HELD_HEAD: RefCell<Option<Box<dyn HeldHead>>> = const { RefCell::new(None) };
}

/// Takes the head this thread holds, if any, to send it before the thread waits for
/// the request body: a full-duplex client (an HTTP/2 echo) may send the rest of its body
/// only once it has the response head, so waiting with it held could wait for ever.
pub(crate) fn take_held_head() -> Option<Box<dyn HeldHead>> {
    HELD_HEAD
        .try_with(|held| held.borrow_mut().take())
        .ok()
        .flatten()
}

fn held_head_abandoned() -> Option<bool> {
    HELD_HEAD
        .try_with(|held| held.borrow().as_ref().map(|head| head.abandoned()))
        .ok()
        .flatten()
}

/// Drives `producer` into `tx` until it ends, the receiver goes away, or it fails.
/// `declared` is the response's `Content-Length`, if the handler set one: a body that
/// goes past it, or ends short of it, is aborted as a failure of the producer (hyper's
/// HTTP/1 would cut the excess off silently, and HTTP/2 clients reset the stream).
///
/// `head` goes out with the first bytes, at a writer's `flush`, when the producer first
/// waits for the request body, or at the end of a whole body. The second value tells
/// whether it went out (or nobody waited for it): if not, the producer ended before its
/// first bytes, and the caller answers in its place.
/// The producer is dropped before this returns, so a disconnect frees what it holds.
pub(crate) fn produce(
    producer: Producer,
    tx: Sender,
    declared: Option<u64>,
    head: Box<dyn HeldHead>,
) -> (Produced, bool) {
    let earlier = HELD_HEAD.with(|held| held.borrow_mut().replace(head));
    debug_assert!(earlier.is_none(), "one producer at a time on a thread");
    let mut out = Out {
        tx: &tx,
        sent: 0,
        declared,
        overran: false,
        head_held: true,
    };
    let result = catch_unwind(AssertUnwindSafe(|| run(producer, &mut out)));
    // A body that ended whole (or empty) takes its head out before its end; one that
    // failed before its first bytes leaves it to the caller, which answers instead.
    let whole = matches!(result, Ok(Ok(())))
        && !out.overran
        && declared.is_none_or(|declared| out.sent >= declared);
    if whole && out.release_head().is_err() {
        return (Produced::Disconnected(out.sent), true);
    }
    let (sent, overran) = (out.sent, out.overran);
    // While the head is held, so is the body's receiver: only the head can tell.
    let left = held_head_abandoned().unwrap_or_else(|| tx.is_closed());
    let produced = match result {
        // Checked first: the producer may have wrapped the error, or swallowed it.
        Ok(_) if overran => {
            let err = wrong_length(format!(
                "the response body went past the {} bytes its Content-Length declares",
                declared.unwrap_or_default()
            ));
            tx.fail(err.kind(), err.to_string());
            Produced::Failed(err)
        }
        Ok(Ok(())) => match declared {
            // Short, but the client left: a producer that took no notice of its failed
            // writes.
            Some(declared) if sent < declared && left => Produced::Disconnected(sent),
            Some(declared) if sent < declared => {
                let err = wrong_length(format!(
                    "the response body ended after {sent} of the {declared} bytes its \
                     Content-Length declares"
                ));
                tx.fail(err.kind(), err.to_string());
                Produced::Failed(err)
            }
            _ => {
                tx.finish();
                Produced::Complete(sent)
            }
        },
        // The client's doing, not the producer's (the channels mark such errors).
        Ok(Err(err)) if ByClient::is(&err) => {
            tx.fail(err.kind(), err.to_string());
            Produced::ByClient(sent, err)
        }
        // Whatever the producer made of it (a `BrokenPipe`, or its own error wrapping
        // one), a write failed because nobody reads the response any more.
        Ok(Err(_)) if left => Produced::Disconnected(sent),
        Ok(Err(err)) => {
            tx.fail(err.kind(), err.to_string());
            Produced::Failed(err)
        }
        Err(payload) => {
            // Dropping `tx` unfinished aborts the response rather than ending it cleanly.
            drop(tx);
            Produced::Panicked(panic_message(&*payload))
        }
    };
    // Still held: dropped unsent, with the body's receiver, for the caller's answer.
    let head_sent = take_held_head().is_none();
    (produced, head_sent)
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
    }
}

/// Where a producer's chunks go: the channel, counted against the declared length.
struct Out<'a> {
    tx: &'a Sender,
    sent: u64,
    declared: Option<u64>,
    /// The producer tried to send more than `declared`.
    overran: bool,
    /// Whether this thread may still hold the response head (`HELD_HEAD`): until the
    /// first chunk, a flush, or the end releases it here (a wait for the request body
    /// may release it first, in `channel`).
    head_held: bool,
}

impl Out<'_> {
    /// Releases the head if it is still held; `BrokenPipe` if nobody waits for it.
    fn release_head(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.head_held) {
            if let Some(head) = take_held_head() {
                if !head.release() {
                    return Err(send_error(SendError::Closed));
                }
            }
        }
        Ok(())
    }

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
    /// there and served. One atomic load once the head is out.
    fn still_read(&mut self) -> io::Result<()> {
        // While the head is held, the body's receiver is too: only the head can tell.
        let held = if self.head_held {
            held_head_abandoned()
        } else {
            None
        };
        self.head_held = held.is_some();
        let gone = match held {
            Some(abandoned) => abandoned,
            None => self.tx.is_closed() && self.declared != Some(self.sent),
        };
        if gone {
            return Err(send_error(SendError::Closed));
        }
        Ok(())
    }

    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.check_room(chunk.len())?;
        self.release_head()?;
        let n = chunk.len() as u64;
        self.tx.blocking_send(chunk).map_err(send_error)?;
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
            // A flush with nothing gathered still sends the head, for a body whose first
            // bytes may be long in coming (an event stream); and as an empty write, it
            // tells whether the client has left.
            self.out.release_head()?;
            return self.out.still_read();
        }
        self.send_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::channel::channel;

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A head that goes out at once, to a client still there or (`gone`) not.
    struct TestHead {
        gone: bool,
        released: Arc<AtomicBool>,
    }

    impl TestHead {
        /// The head, and whether it was released.
        fn to(gone: bool) -> (Box<dyn HeldHead>, Arc<AtomicBool>) {
            let released = Arc::new(AtomicBool::new(false));
            let head = TestHead {
                gone,
                released: released.clone(),
            };
            (Box::new(head), released)
        }
    }

    impl HeldHead for TestHead {
        fn release(self: Box<Self>) -> bool {
            self.released.store(true, Ordering::Relaxed);
            !self.gone
        }
        fn abandoned(&self) -> bool {
            self.gone
        }
    }

    fn produce_failing(err: io::Error) -> Produced {
        let (tx, _rx) = channel(1024, None);
        let mut err = Some(err);
        let iter = std::iter::from_fn(move || err.take().map(Err));
        let (head, released) = TestHead::to(false);
        let (produced, head_sent) = produce(Producer::Iter(Box::new(iter)), tx, None, head);
        // Failed before anything: the caller answers in its place.
        assert!(!head_sent && !released.load(Ordering::Relaxed));
        assert!(take_held_head().is_none(), "the thread holds no head after");
        produced
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

    /// Runs `producer` for a client that has left: its head and its body's receiver are
    /// gone.
    fn produce_for_a_client_that_left(producer: Producer) -> Produced {
        let (tx, rx) = channel(1024, None);
        drop(rx);
        produce(producer, tx, None, TestHead::to(true).0).0
    }

    #[test]
    fn a_producer_error_after_the_client_left_is_a_disconnect_however_it_is_wrapped() {
        let wrapped = io::Error::other("sending event: the client went away");
        let mut err = Some(wrapped);
        let iter = std::iter::from_fn(move || err.take().map(Err));
        assert!(matches!(
            produce_for_a_client_that_left(Producer::Iter(Box::new(iter))),
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
        let (head, released) = TestHead::to(false);
        let (produced, head_sent) = produce(Producer::Writer(Box::new(writer)), tx, Some(5), head);
        assert!(matches!(produced, Produced::Complete(5)), "{produced:?}");
        assert!(head_sent && released.load(Ordering::Relaxed));
    }

    #[test]
    fn empty_chunks_writes_and_flushes_tell_a_producer_its_client_left() {
        // Before: each was skipped or succeeded, and a heartbeat loop ran on for ever.
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let heartbeats = std::iter::repeat_with(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(Bytes::new())
        })
        .take(1000);
        let produced = produce_for_a_client_that_left(Producer::Iter(Box::new(heartbeats)));
        assert!(
            matches!(produced, Produced::Disconnected(0)),
            "{produced:?}"
        );
        assert_eq!(pulled.load(Ordering::Relaxed), 1);

        for empty_write in [false, true] {
            let beats = Arc::new(AtomicUsize::new(0));
            let counter = beats.clone();
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
            let produced = produce_for_a_client_that_left(Producer::Writer(Box::new(writer)));
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
