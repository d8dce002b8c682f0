//! Dropping what blocking code owns away from the runtime's threads.
//!
//! A legacy handler, a blocking task's closure or its callback may own a tokio runtime of
//! its own: the sync `postgres::Client` and `reqwest::blocking::Client` each do. tokio
//! panics when a runtime is dropped on a thread that drives another one ("Cannot drop a
//! runtime in a context where blocking is not allowed"), and the places where the crate
//! lets go of such values (the end of `serve_async`, a cancelled `ensure_async`, a task
//! that ended) are on such threads. There, the value goes to one long-lived thread that
//! drops it.
//!
//! ```text
//! drop_off_runtime(value): no runtime here -> dropped at once
//!                          runtime thread  -> bounded queue -> "syncbridge-drop" thread
//!                          queue full      -> dropped at once, logged
//! ```

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};

use crate::error::panic_message;
use crate::throttle::Throttle;

/// How many values may wait for the drop thread. Drops are rare and quick (the end of a
/// server, a cancelled call, a finished task's closure): a full queue means the thread is
/// stuck in one, and the next values are dropped where they are instead of waiting.
const QUEUE: usize = 1024;

type Dropped = Box<dyn Any + Send>;

/// Drops `value` on a thread where blocking is allowed: at once when the calling thread
/// drives no tokio runtime, else on the crate's drop thread. A `Drop` that panics there
/// is logged. Callable from anywhere.
pub(crate) fn drop_off_runtime<T: Send + 'static>(value: T) {
    if tokio::runtime::Handle::try_current().is_err() {
        drop(value);
        return;
    }
    let value: Dropped = Box::new(value);
    let refused = match drop_thread() {
        Some(queue) => match queue.try_send(value) {
            Ok(()) => return,
            Err(TrySendError::Full(value) | TrySendError::Disconnected(value)) => value,
        },
        None => value,
    };
    // Throttled: a drop thread stuck in one `Drop` would otherwise have every later value
    // say so.
    static REFUSED: Throttle = Throttle::new();
    if let Some(left_out) = REFUSED.admit() {
        tracing::warn!(
            left_out,
            "the drop thread is busy or gone; dropping a value that may own a runtime on a \
             runtime thread"
        );
    }
    drop(refused);
}

/// Owns a `T` that is dropped off the runtime (see [`drop_off_runtime`]). The bounds
/// that takes are checked in `new`, so that the structs holding one need none.
pub(crate) struct DropsOffRuntime<T> {
    value: Option<T>,
    drop_with: fn(T),
}

impl<T> DropsOffRuntime<T> {
    pub(crate) fn new(value: T) -> Self
    where
        T: Send + 'static,
    {
        DropsOffRuntime {
            value: Some(value),
            drop_with: drop_off_runtime::<T>,
        }
    }
}

impl<T> DropsOffRuntime<T> {
    /// The value, to use in place.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .expect("taken only by `into_inner` and `drop`")
    }

    /// The value back, for a caller that lets go of it where it may.
    pub(crate) fn into_inner(mut self) -> T {
        self.value
            .take()
            .expect("taken only by `into_inner` and `drop`")
    }
}

impl<T> Drop for DropsOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            (self.drop_with)(value);
        }
    }
}

/// The drop thread's queue, started at the first use; `None` if it could not start.
fn drop_thread() -> Option<&'static SyncSender<Dropped>> {
    static QUEUE_TX: DropQueue = DropQueue::new();
    QUEUE_TX.sender(|rx| {
        std::thread::Builder::new()
            .name("syncbridge-drop".into())
            .spawn(move || {
                for value in rx {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
                        let panic = panic_message(payload);
                        tracing::error!(
                            %panic,
                            "a value dropped off the runtime panicked in its Drop"
                        );
                    }
                }
            })
            .map(drop)
    })
}

/// A queue whose thread starts at the first use, and at a later use again if it could
/// not: a moment short of threads (a pids limit) must not cost the rest of the process
/// its drops off the runtime.
struct DropQueue {
    tx: OnceLock<SyncSender<Dropped>>,
    starting: Mutex<()>,
}

impl DropQueue {
    const fn new() -> Self {
        DropQueue {
            tx: OnceLock::new(),
            starting: Mutex::new(()),
        }
    }

    fn sender(
        &self,
        start: impl FnOnce(Receiver<Dropped>) -> std::io::Result<()>,
    ) -> Option<&SyncSender<Dropped>> {
        if let Some(tx) = self.tx.get() {
            return Some(tx);
        }
        // One start at a time, so that two first uses do not start two threads.
        let _starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = self.tx.get() {
            return Some(tx);
        }
        let (tx, rx) = sync_channel::<Dropped>(QUEUE);
        match start(rx) {
            Ok(()) => Some(self.tx.get_or_init(|| tx)),
            Err(err) => {
                // Tried again at each use while it fails: throttled.
                static START_FAILED: Throttle = Throttle::new();
                if let Some(left_out) = START_FAILED.admit() {
                    tracing::error!(error = %err, left_out, "could not start the drop thread");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DropQueue;

    #[test]
    fn a_drop_thread_that_could_not_start_is_started_at_the_next_use() {
        let queue = DropQueue::new();
        let failed = queue.sender(|_rx| Err(std::io::Error::other("no threads (test)")));
        assert!(failed.is_none());
        let (started_tx, started) = std::sync::mpsc::channel();
        let sender = queue.sender(|rx| {
            std::thread::spawn(move || {
                for value in rx {
                    drop(value);
                    started_tx.send(()).unwrap();
                }
            });
            Ok(())
        });
        sender
            .expect("started this time")
            .send(Box::new(1))
            .unwrap();
        started
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        // Started once: later uses take the same queue.
        let again = queue.sender(|_rx| panic!("started twice"));
        assert!(again.is_some());
    }
}
