//! The syncbridge context of the current thread: which runtime and server it serves.
//!
//! Pool threads run each job inside [`enter`], so code deep inside a legacy handler can
//! reach the server's runtime (for `ensure_sync`) and its task set (for background tasks)
//! without a handle threaded through every call.

use std::cell::RefCell;
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::tasks::TaskSet;

/// What a handler thread can reach while it runs a job.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    /// The persistent runtime that drives the server's connections.
    pub(crate) runtime: Handle,
    /// The server's background task set, for `TaskSet::current()`; `None` for a
    /// `SyncService` built without `SyncServiceBuilder::tasks`.
    pub(crate) tasks: Option<TaskSet>,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Context>>> = const { RefCell::new(None) };
}

/// Runs `f` with `ctx` as the current context, restoring the previous one afterwards,
/// even if `f` unwinds.
pub(crate) fn enter<R>(ctx: Option<&Arc<Context>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Context>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| c.replace(ctx.cloned()));
    let _restore = Restore(previous);
    f()
}

/// The current thread's context, if it runs a syncbridge job.
pub(crate) fn current() -> Option<Arc<Context>> {
    CURRENT.with(|c| c.borrow().clone())
}
