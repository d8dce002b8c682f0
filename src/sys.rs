//! The one thing std cannot do for us: lower a thread's scheduling priority.

/// Adds `increment` to the calling thread's nice value (a lower priority than the rest
/// of the process; the kernel caps it at 19). Best effort: a failure only costs the
/// scheduling benefit, so it is logged at debug level.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn lower_thread_priority(increment: i32) {
    // SAFETY: `nice` takes a plain integer and touches no memory of ours. On Linux it is
    // `setpriority(PRIO_PROCESS, 0, ..)`, which applies to the calling thread only
    // (threads are tasks with their own nice value), so no other thread is affected.
    let rc = unsafe { libc::nice(increment) };
    if rc == -1 {
        let err = std::io::Error::last_os_error();
        // -1 is also a valid nice value; only a set errno means failure.
        if err.raw_os_error().is_some_and(|code| code != 0) {
            tracing::debug!(error = %err, increment, "could not lower a pool thread's priority");
        }
    }
}

/// No portable per-thread priority elsewhere: nothing to do.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_thread_priority(_nice: i32) {}
