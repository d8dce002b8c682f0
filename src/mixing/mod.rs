//! Mixing the two worlds: async code from blocking handlers and blocking code from async
//! handlers, and handlers whose state cannot be shared between threads.
//!
//! ```text
//! handler thread ── ensure_sync(fut) ──► spawn on the server's runtime, park until done
//! async task ────── ensure_async(f) ───► bounded BlockingPool thread, span + context kept
//! !Sync state ───── PerThread::new(factory)       one instance per pool thread
//! !Send state ───── SingleThread::spawn(factory)  one thread, bounded FIFO queue
//! ```
//!
//! `ensure_sync` and `ensure_async` refuse the wrong context with a typed
//! [`Error`](crate::Error), and a `SingleThread` handler called from async code answers
//! `500`, instead of panicking inside tokio or deadlocking. `PerThread` checks nothing:
//! it runs on whatever thread calls it. The guide with the full table is
//! `docs/mixing-sync-and-async.md`.

mod ensure_async;
mod ensure_sync;
mod thread_sensitive;

pub use ensure_async::{ensure_async, ensure_async_on, EnsureAsyncFuture};
pub use ensure_sync::{ensure_sync, ensure_sync_with_handle, sync_fn};
pub use thread_sensitive::{PerThread, SingleThread, SingleThreadBuilder};

/// Compiles and runs the code in the guide as doctests, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/mixing-sync-and-async.md")]
pub struct MixingGuide;
