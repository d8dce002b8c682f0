//! A bounded channel of body chunks with a blocking end and an async end.
//!
//! Both body directions cross the sync/async line through it: request chunks go from the
//! connection task (async `poll_ready` + `send`) to the handler thread (`blocking_recv`),
//! response chunks from the producer thread (`blocking_send`) to hyper (`poll_recv`).
//! At most `capacity` chunks are in flight, so a slow side slows the other one down.
//!
//! The end of a stream is explicit: a sender dropped without [`Sender::finish`] (a panic
//! while producing, a cancelled pump) ends the stream with an error, never with a clean
//! EOF, so a truncated body is never mistaken for a complete one.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// Creates a channel that holds at most `capacity` chunks (at least one).
pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            end: End::Open,
            receiver_alive: true,
            recv_waker: None,
            send_waker: None,
            blocked_receiver: false,
            blocked_sender: false,
        }),
        condvar: Condvar::new(),
    });
    (
        Sender {
            shared: shared.clone(),
            finished: false,
        },
        Receiver { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    // One condvar serves both blocking ends: only one end of a channel ever blocks.
    condvar: Condvar,
}

struct State {
    queue: VecDeque<Bytes>,
    capacity: usize,
    end: End,
    receiver_alive: bool,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
    // Whether a thread waits on the condvar; a notify without a waiter is a wasted syscall.
    blocked_receiver: bool,
    blocked_sender: bool,
}

#[derive(Clone)]
enum End {
    Open,
    Finished,
    Failed(io::ErrorKind, Arc<str>),
}

/// The sender went away or the receiver was dropped: nobody will read what is sent.
#[derive(Debug)]
pub(crate) struct Closed;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held (no user code runs under it), so
        // a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn wake_receiver(&mut self, condvar: &Condvar) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if self.blocked_receiver {
            condvar.notify_all();
        }
    }

    /// After a chunk was taken: wakes a waiting sender only once the queue has drained to
    /// half. Waking it at the first free slot would cost a thread wake-up per chunk (the
    /// sender fills the slot, blocks again, is woken again); this way it refills several.
    fn chunk_taken(&mut self, condvar: &Condvar) {
        if self.queue.len() <= self.capacity / 2 {
            self.wake_sender(condvar);
        }
    }

    fn wake_sender(&mut self, condvar: &Condvar) {
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
        if self.blocked_sender {
            condvar.notify_all();
        }
    }
}

/// The producing end.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    finished: bool,
}

impl Sender {
    /// Waits, blocking the thread, until there is room, then queues `chunk`.
    /// Fails once the receiver is gone. Call only from a thread that may block.
    pub(crate) fn blocking_send(&self, chunk: Bytes) -> Result<(), Closed> {
        let mut state = self.shared.lock();
        while state.receiver_alive && state.queue.len() >= state.capacity {
            state.blocked_sender = true;
            state = self
                .shared
                .condvar
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            state.blocked_sender = false;
        }
        if !state.receiver_alive {
            return Err(Closed);
        }
        state.queue.push_back(chunk);
        state.wake_receiver(&self.shared.condvar);
        Ok(())
    }

    /// Ready when a chunk may be sent without exceeding the capacity.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Poll::Ready(Err(Closed));
        }
        if state.queue.len() < state.capacity {
            return Poll::Ready(Ok(()));
        }
        match &state.send_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.send_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Queues `chunk` after `poll_ready` said there is room.
    pub(crate) fn send_ready(&self, chunk: Bytes) {
        let mut state = self.shared.lock();
        if state.receiver_alive {
            state.queue.push_back(chunk);
            state.wake_receiver(&self.shared.condvar);
        }
    }

    /// Whether the receiver has been dropped.
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.lock().receiver_alive
    }

    /// Ends the stream cleanly: the receiver sees EOF after the queued chunks.
    pub(crate) fn finish(mut self) {
        self.finished = true;
        self.close(End::Finished);
    }

    /// Ends the stream with an error: the receiver sees it after the queued chunks.
    pub(crate) fn fail(mut self, kind: io::ErrorKind, message: impl Into<Arc<str>>) {
        self.finished = true;
        self.close(End::Failed(kind, message.into()));
    }

    fn close(&self, end: End) {
        let mut state = self.shared.lock();
        if let End::Open = state.end {
            state.end = end;
        }
        state.wake_receiver(&self.shared.condvar);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.finished {
            self.close(End::Failed(
                io::ErrorKind::UnexpectedEof,
                Arc::from("body stream ended before it was finished"),
            ));
        }
    }
}

/// The consuming end.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Waits, blocking the thread, for the next chunk; `None` at a clean end.
    /// Call only from a thread that may block.
    pub(crate) fn blocking_recv(&self) -> Option<io::Result<Bytes>> {
        let mut state = self.shared.lock();
        loop {
            if let Some(chunk) = state.queue.pop_front() {
                state.chunk_taken(&self.shared.condvar);
                return Some(Ok(chunk));
            }
            match &state.end {
                End::Open => {}
                End::Finished => return None,
                End::Failed(kind, msg) => return Some(Err(io::Error::new(*kind, msg.to_string()))),
            }
            state.blocked_receiver = true;
            state = self
                .shared
                .condvar
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            state.blocked_receiver = false;
        }
    }

    /// The next chunk if one is queued or the stream has ended, without blocking.
    /// `Poll::Pending` means nothing is there yet.
    pub(crate) fn try_recv(&self) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.shared.lock();
        Self::take(&mut state, &self.shared.condvar)
    }

    /// Async receive; `None` at a clean end.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.shared.lock();
        let polled = Self::take(&mut state, &self.shared.condvar);
        if polled.is_pending() {
            match &state.recv_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.recv_waker = Some(cx.waker().clone()),
            }
        }
        polled
    }

    fn take(state: &mut State, condvar: &Condvar) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(chunk) = state.queue.pop_front() {
            state.chunk_taken(condvar);
            return Poll::Ready(Some(Ok(chunk)));
        }
        match &state.end {
            End::Open => Poll::Pending,
            End::Finished => Poll::Ready(None),
            End::Failed(kind, msg) => {
                Poll::Ready(Some(Err(io::Error::new(*kind, msg.to_string()))))
            }
        }
    }

    /// Whether the stream has ended (cleanly or not) and every chunk was taken.
    pub(crate) fn is_end(&self) -> bool {
        let state = self.shared.lock();
        state.queue.is_empty() && !matches!(state.end, End::Open)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        // Free the queued chunks now rather than when the sender goes.
        state.queue.clear();
        state.wake_sender(&self.shared.condvar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn blocking_ends_pass_chunks_in_order_and_finish() {
        let (tx, rx) = channel(2);
        let producer = thread::spawn(move || {
            for i in 0..100u8 {
                tx.blocking_send(Bytes::from(vec![i])).unwrap();
            }
            tx.finish();
        });
        let mut seen = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            seen.extend_from_slice(&chunk.unwrap());
        }
        producer.join().unwrap();
        assert_eq!(seen, (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn sender_dropped_without_finish_is_an_error_not_eof() {
        let (tx, rx) = channel(2);
        tx.blocking_send(Bytes::from_static(b"a")).unwrap();
        drop(tx);
        assert_eq!(&rx.blocking_recv().unwrap().unwrap()[..], b"a");
        let err = rx.blocking_recv().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn dropping_receiver_unblocks_a_full_sender() {
        let (tx, rx) = channel(1);
        tx.blocking_send(Bytes::from_static(b"a")).unwrap();
        let producer = thread::spawn(move || tx.blocking_send(Bytes::from_static(b"b")));
        drop(rx);
        assert!(producer.join().unwrap().is_err());
    }

    #[test]
    fn never_holds_more_than_capacity() {
        let (tx, rx) = channel(3);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(matches!(tx.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            tx.send_ready(Bytes::from_static(b"x"));
        }
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert!(matches!(rx.try_recv(), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(tx.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    }
}
