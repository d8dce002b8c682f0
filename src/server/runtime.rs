//! The runtime [`Server::serve`](super::Server::serve) builds for itself, and the check
//! that the OS will start its worker threads before tokio is asked to.
//!
//! tokio cannot report a worker thread the OS refused (a pids or `RLIMIT_NPROC` limit
//! already reached): its builder panics ("OS can't spawn worker thread"), and when some
//! workers did start, the unwind then waits for them forever, as nothing tells them to
//! stop. So the same number of threads is started here first, held until all are up, and
//! let go; a refusal is then an error the caller can print. An invalid
//! `TOKIO_WORKER_THREADS`, which tokio also panics on, is refused here the same way.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::error::{Error, Kind, Result};

/// What tokio reads for its default number of workers; read here so that the check
/// starts as many threads as tokio will.
const ENV_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// How long to wait for the check's threads to be gone from the process's count once
/// they have been joined (below). They go within microseconds, up to 8 ms seen on a
/// loaded machine; this bounds a count that other threads keep above its old level.
const REAP_WAIT: Duration = Duration::from_millis(100);

/// Where the process's thread count cannot be read (no `/proc`): how long to give the
/// joined threads to be gone before the runtime starts its own.
const REAP_GUESS: Duration = Duration::from_millis(10);

/// Builds the server's multi-thread runtime with `worker_threads` workers (tokio's
/// default when `None`), after checking that the OS will start them.
pub(super) fn build(worker_threads: Option<usize>) -> Result<Runtime> {
    let workers = match worker_threads {
        Some(n) => n,
        None => default_workers()?,
    };
    check_threads_start(workers)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .thread_name("syncbridge-rt")
        .worker_threads(workers);
    // Only a thread the OS refused between the check and here still panics. With no
    // worker started yet that unwinds, and is an error here; past the first, tokio's
    // unwind hangs (above) and this is never reached.
    match catch_unwind(AssertUnwindSafe(|| builder.build())) {
        Ok(Ok(runtime)) => Ok(runtime),
        Ok(Err(err)) => Err(Error::new(Kind::Runtime).with_source(err)),
        Err(_) => Err(Error::new(Kind::Runtime).with_message(
            "tokio panicked while starting the runtime's worker threads (its message is above)",
        )),
    }
}

/// tokio's default: `TOKIO_WORKER_THREADS` when set, else the CPUs available.
fn default_workers() -> Result<usize> {
    match std::env::var(ENV_WORKER_THREADS) {
        // As tokio reads it (no trimming), then kept to `Server::worker_threads`' range.
        Ok(value) => match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n.min(super::config::MAX_WORKER_THREADS)),
            _ => Err(Error::new(Kind::Runtime).with_message(format!(
                "{ENV_WORKER_THREADS} must be a whole number above 0, not {value:?}"
            ))),
        },
        Err(std::env::VarError::NotPresent) => {
            Ok(std::thread::available_parallelism().map_or(1, |n| n.get()))
        }
        Err(std::env::VarError::NotUnicode(value)) => Err(Error::new(Kind::Runtime).with_message(
            format!("{ENV_WORKER_THREADS} must be a whole number above 0, not {value:?}"),
        )),
    }
}

/// Starts `n` threads with the stack tokio's workers get (std's default), holds them
/// until all are running, and lets them end: the OS counts them all at once, as it will
/// count the workers.
fn check_threads_start(n: usize) -> Result<()> {
    let before = crate::sys::thread_count();
    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().unwrap_or_else(|e| e.into_inner());
    let mut started = Vec::with_capacity(n);
    let mut refused = None;
    for _ in 0..n {
        let gate = gate.clone();
        let spawned = std::thread::Builder::new()
            .name("syncbridge-rt".to_owned())
            .spawn(move || drop(gate.read()));
        match spawned {
            Ok(thread) => started.push(thread),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    drop(held);
    let count = started.len();
    for thread in started {
        let _ = thread.join();
    }
    // A joined thread still counts against the limits for a moment: the kernel wakes its
    // joiner before it takes the thread off the process's count and the user's. A worker
    // started in that moment would be refused because of the check itself.
    match before {
        Some(before) => {
            let deadline = Instant::now() + REAP_WAIT;
            while crate::sys::thread_count().is_some_and(|now| now > before) {
                if Instant::now() >= deadline {
                    tracing::debug!(
                        threads = crate::sys::thread_count(),
                        before,
                        "the thread check's threads still count after 100 ms (or others \
                         started meanwhile); starting the runtime"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        None if count > 0 => std::thread::sleep(REAP_GUESS),
        None => {}
    }
    match refused {
        None => Ok(()),
        Some(err) => Err(Error::new(Kind::Runtime)
            .with_message(format!(
                "the OS refused to start the runtime's worker threads ({count} of {n} started); \
                 raise the process's thread limit (systemd's TasksMax, a container's pids \
                 limit, RLIMIT_NPROC) or lower Server::worker_threads"
            ))
            .with_source(err)),
    }
}
