//! Timers for bounded waits, in a runtime that may have been built without them.
//!
//! tokio panics where a `Sleep` is made in a runtime without a time driver (built
//! without `enable_time`). A wait the crate bounds with a timer (a queued request, a
//! queued `ensure_async` closure) checks first, so that such a runtime gets a clear
//! error instead of a panic from inside tokio.

use std::panic::catch_unwind;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Sleep;

/// A sleep of `after` on the current runtime, or `None` when it has no timers (logged at
/// error level). `known` caches the answer where the caller has a place for it; without
/// one every call checks, which costs only a misconfigured runtime (tokio prints its
/// panic message each time). Call only inside a tokio runtime.
pub(crate) fn sleep(after: Duration, known: Option<&OnceLock<bool>>) -> Option<Pin<Box<Sleep>>> {
    let enabled = match known {
        Some(known) => *known.get_or_init(runtime_has_timers),
        None => runtime_has_timers(),
    };
    enabled.then(|| Box::pin(tokio::time::sleep(after)))
}

fn runtime_has_timers() -> bool {
    let enabled = catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok();
    if !enabled {
        tracing::error!(
            "the tokio runtime has no timers (build it with `enable_time` or `enable_all`): \
             work that finds every pool thread busy is refused at once instead of waiting"
        );
    }
    enabled
}
