//! The one thing std cannot do for us: lower a thread's scheduling priority.

/// Sets the calling thread's nice value to the process's own plus `increment` (the
/// kernel caps it at 19). Best effort: a failure only costs the scheduling benefit, so
/// it is logged at debug level.
///
/// Absolute on purpose: a new thread inherits its creator's nice value, and pool threads
/// are often started by other pool threads, so adding to the current value would push
/// every thread after the first to the lowest priority.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_thread_nice(increment: i32) {
    // SAFETY (both calls): plain integer arguments, no memory of ours is touched. With
    // PRIO_PROCESS, `who = pid` names the main thread (its tid is the pid), whose value
    // stands for the process; `who = 0` names the calling thread only, as Linux keeps a
    // nice value per thread.
    let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, std::process::id()) };
    let target = (base + increment).min(19);
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            target,
            "could not set a pool thread's priority"
        );
    }
}

/// No portable per-thread priority elsewhere: nothing to do.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_thread_nice(_increment: i32) {}
