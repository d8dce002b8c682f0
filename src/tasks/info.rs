//! What the registry knows of a task: its id, status, times and outcome.

use std::any::Any;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// A task's id: 128 bits, written as 32 lowercase hex digits.
///
/// Ids are hard to guess (so a status endpoint does not let one client enumerate the
/// results of another) but they are not a security token: put authorisation in front of
/// an endpoint that shows results. Unique within a process; parse one from a URL with
/// [`TaskId::parse`] or [`str::parse`].
///
/// # Examples
///
/// ```
/// use syncbridge::TaskId;
///
/// assert!(TaskId::parse("not an id").is_none());
/// let id = TaskId::parse("0123456789abcdef0123456789abcdef").unwrap();
/// assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
/// assert_eq!("0123456789abcdef0123456789abcdef".parse::<TaskId>(), Ok(id));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(u128);

impl TaskId {
    /// A fresh id. SipHash with per-process random keys over a counter and the clock:
    /// unpredictable without a dependency on a random number crate.
    pub(crate) fn generate() -> TaskId {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let keys = KEYS.get_or_init(RandomState::new);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut high = keys.build_hasher();
        high.write_u64(n);
        high.write_u128(nanos);
        let high = high.finish();
        let mut low = keys.build_hasher();
        low.write_u64(high);
        low.write_u64(!n);
        TaskId((u128::from(high) << 64) | u128::from(low.finish()))
    }

    /// Parses the 32 hex digits of [`Display`](fmt::Display); `None` for anything else.
    /// Callable from anywhere.
    pub fn parse(s: &str) -> Option<TaskId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(TaskId)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    /// As [`TaskId::parse`], with an error for `?`.
    fn from_str(s: &str) -> Result<TaskId, ParseTaskIdError> {
        TaskId::parse(s).ok_or(ParseTaskIdError(()))
    }
}

/// A string that is not a [`TaskId`]: not exactly 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTaskIdError(());

impl fmt::Display for ParseTaskIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task id is 32 hex digits")
    }
}

impl std::error::Error for ParseTaskIdError {}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

/// Where a task is in its life, as a status endpoint reports it.
///
/// [`NotFound`](TaskStatus::NotFound) is distinct from [`Pending`](TaskStatus::Pending):
/// an id that was never issued, or whose entry expired or was evicted, is *not found*.
/// (Celery reports `PENDING` for unknown ids, so a typo polls forever.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskStatus {
    /// No task with this id is known: never issued, expired past the TTL, or evicted.
    NotFound,
    /// Accepted, waiting for a thread (or between two attempts when retrying).
    Pending,
    /// Running now.
    Running,
    /// Finished with a value.
    Succeeded,
    /// Finished with an error or a panic, after any retries.
    Failed,
    /// Cancelled through its token (before it started, or it stopped when asked).
    Cancelled,
    /// Ran past its timeout; its token was cancelled and its result is discarded.
    TimedOut,
}

impl TaskStatus {
    /// The lowercase name used in logs and JSON: `"not_found"`, `"pending"`, `"running"`,
    /// `"succeeded"`, `"failed"`, `"cancelled"`, `"timed_out"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::NotFound => "not_found",
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::TimedOut => "timed_out",
        }
    }

    /// Whether the task has ended (succeeded, failed, cancelled or timed out).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::TimedOut
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's value with its type erased, shared by the registry and the typed handle.
pub(crate) type ErasedValue = Arc<dyn Any + Send + Sync>;

/// A snapshot of one task's registry entry, for status endpoints and callbacks.
///
/// Obtained from [`TaskSet::info`](crate::TaskSet::info) or passed to a task's
/// callbacks. The value is type-erased: read it back with [`result`](TaskInfo::result)
/// and the type the task returned. Its methods are plain reads, callable from anywhere.
/// The value it holds is kept alive as long as it is: drop it where the value may be
/// dropped (a value that owns a runtime, off the runtime's threads).
#[derive(Clone)]
pub struct TaskInfo {
    pub(crate) id: TaskId,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) status: TaskStatus,
    pub(crate) attempts: u32,
    pub(crate) created_at: SystemTime,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) result: Option<ErasedValue>,
    pub(crate) error: Option<Arc<str>>,
}

impl TaskInfo {
    pub(crate) fn pending(id: TaskId, name: Option<Arc<str>>) -> TaskInfo {
        TaskInfo {
            id,
            name,
            status: TaskStatus::Pending,
            attempts: 0,
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The name given with [`TaskBuilder::name`](crate::TaskBuilder::name), if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The status when the snapshot was taken; never [`TaskStatus::NotFound`].
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// How many attempts have started (more than one when retried).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the task was spawned.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// When its first attempt started running, if it has.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.started_at
    }

    /// When it finished, if it has.
    pub fn finished_at(&self) -> Option<SystemTime> {
        self.finished_at
    }

    /// The value of a succeeded task, if it is a `T`: exactly the type the task returned
    /// (a task returning `&'static str` is read as `&'static str`; as `String` it is
    /// `None`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(info: syncbridge::TaskInfo) {
    /// if let Some(rows) = info.result::<u64>() {
    ///     println!("inserted {rows} rows");
    /// }
    /// # }
    /// ```
    pub fn result<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.result.as_deref()?.downcast_ref::<T>()
    }

    /// The error of a task that failed, timed out or was cancelled: its `Display` and its
    /// sources', as `outer: inner` (the cause an error leaves to `source()` is kept), or
    /// the panic message. While a task is retried (pending or running again), the last
    /// failed attempt's.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

impl fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("has_result", &self.result.is_some())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip_through_display() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert_ne!(a, b);
        assert_eq!(TaskId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn parse_rejects_wrong_length_and_non_hex() {
        assert_eq!(TaskId::parse(""), None);
        assert_eq!(TaskId::parse("abc"), None);
        assert_eq!(TaskId::parse(&"g".repeat(32)), None);
        assert_eq!(TaskId::parse(&"+".repeat(32)), None);
        let err = "abc".parse::<TaskId>().unwrap_err();
        assert_eq!(err.to_string(), "a task id is 32 hex digits");
    }
}
