//! The in-memory task registry: bounded in size, finished entries expire after a TTL.
//!
//! Bounds, so that a busy server's memory cannot grow without limit:
//! - a finished entry is kept for `ttl` after it finished, then forgotten: at the next
//!   insert or lookup, or by the sweep thread (`sweep.rs`) once the TTL ends;
//! - at most `max_entries` entries exist; inserting into a full registry first evicts the
//!   oldest *finished* entry (a client polling it gets "not found", as after the TTL);
//! - when every entry is live (pending or running), nothing can be evicted without losing
//!   a running task's status, so the insert fails with `is_overloaded()` instead.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::backend::{Backend, Outcome};
use super::info::{TaskId, TaskInfo, TaskStatus};
use crate::error::{panic_message, Error, Kind, Result};

/// The default cap on entries, live and finished.
pub(crate) const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// The default time a finished entry is kept.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(3600);

pub(crate) struct Registry {
    max_entries: usize,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<TaskId, TaskInfo>,
    /// Finished ids in the order they finished: with one TTL for all, the front is always
    /// the next to expire and the oldest to evict.
    finished: VecDeque<(TaskId, Instant)>,
}

impl Registry {
    pub(crate) fn new(max_entries: usize, ttl: Duration) -> Registry {
        Registry {
            max_entries: max_entries.max(1),
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under the lock, so it is never poisoned by a panic there: the
        // entries it removes (and the results in them) are dropped after it, by `let_go`.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert_at(&self, id: TaskId, name: Option<Arc<str>>, now: Instant) -> Result<()> {
        let mut state = self.lock();
        let mut gone = state.expire(now, self.ttl);
        let mut inserted = Ok(());
        if state.entries.len() >= self.max_entries {
            match state.finished.pop_front() {
                Some((oldest, _)) => {
                    gone.extend(state.entries.remove(&oldest));
                    tracing::debug!(task_id = %oldest, "task registry full; evicted the oldest finished entry");
                }
                None => {
                    inserted = Err(Error::new(Kind::Overloaded).with_message(format!(
                        "the task registry holds {} live tasks, its limit",
                        state.entries.len()
                    )))
                }
            }
        }
        if inserted.is_ok() {
            state.entries.insert(id, TaskInfo::pending(id, name));
        }
        drop(state);
        let_go(gone);
        inserted
    }

    fn finished_at(&self, id: TaskId, outcome: Outcome, now: Instant) -> Option<TaskInfo> {
        let mut state = self.lock();
        let entry = state.entries.get_mut(&id)?;
        if entry.status.is_finished() {
            return Some(entry.clone());
        }
        entry.status = outcome.status;
        entry.result = outcome.result;
        entry.error = outcome.error;
        entry.finished_at = Some(SystemTime::now());
        let info = entry.clone();
        state.finished.push_back((id, now));
        Some(info)
    }

    fn get_at(&self, id: TaskId, now: Instant) -> Option<TaskInfo> {
        let mut state = self.lock();
        let gone = state.expire(now, self.ttl);
        let info = state.entries.get(&id).cloned();
        drop(state);
        let_go(gone);
        info
    }

    fn update(&self, id: TaskId, f: impl FnOnce(&mut TaskInfo)) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            if !entry.status.is_finished() {
                f(entry);
            }
        }
    }

    fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn sweep_at(&self, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        let gone = state.expire(now, self.ttl);
        let next = state.finished.front().map(|&(_, finished)| {
            // A TTL past the clock's range (`Duration::MAX`) never ends: `Duration::MAX`,
            // which the sweeper takes as "never".
            finished
                .checked_add(self.ttl)
                .map_or(Duration::MAX, |expires| {
                    expires.saturating_duration_since(now)
                })
        });
        drop(state);
        let_go(gone);
        next
    }
}

/// The bounds and a count, never the entries: a `{:?}` of a task set (or of the server
/// holding one) in a log line must not print up to `max_entries` task ids, which are
/// what keeps one client from reading another's results, nor hold the lock to do so.
impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("max_entries", &self.max_entries)
            .field("ttl", &self.ttl)
            .field("entries", &self.len())
            .finish()
    }
}

/// Drops entries the registry let go of, after its lock: a result's `Drop` is user code,
/// and may own what must not be dropped on a runtime thread (a runtime of its own, a
/// blocking client's), so it goes off the runtime, as a task's unused callback does.
fn let_go(gone: Vec<TaskInfo>) {
    if !gone.is_empty() {
        crate::offload::drop_off_runtime(Gone(gone));
    }
}

/// Entries let go of, dropped one at a time: a result whose `Drop` panics is logged, and
/// the next is still dropped. (A `Vec` dropped whole would abort the process at a second
/// such panic, one during the first's unwinding, and a type whose `Drop` panics usually
/// does so every time.)
struct Gone(Vec<TaskInfo>);

impl Drop for Gone {
    fn drop(&mut self) {
        for info in self.0.drain(..) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(info))) {
                let panic = panic_message(payload);
                tracing::error!(
                    %panic,
                    "a task's result panicked in its Drop"
                );
            }
        }
    }
}

/// A set dropped drops its entries as the registry lets go of any: off the runtime.
impl Drop for Registry {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let gone = state.entries.drain().map(|(_, info)| info).collect();
        let_go(gone);
    }
}

impl State {
    /// Removes the entries past their TTL, and gives them back (no allocation when there
    /// are none).
    fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<TaskInfo> {
        let mut expired = Vec::new();
        while let Some(&(id, finished)) = self.finished.front() {
            if now.saturating_duration_since(finished) < ttl {
                break;
            }
            self.finished.pop_front();
            expired.extend(self.entries.remove(&id));
        }
        expired
    }
}

impl Backend for Registry {
    fn insert(&self, id: TaskId, name: Option<Arc<str>>) -> Result<()> {
        self.insert_at(id, name, Instant::now())
    }

    fn started(&self, id: TaskId, attempt: u32) {
        self.update(id, |e| {
            e.status = TaskStatus::Running;
            e.attempts = attempt;
            e.started_at.get_or_insert_with(SystemTime::now);
        });
    }

    fn retrying(&self, id: TaskId, error: Arc<str>) {
        self.update(id, |e| {
            e.status = TaskStatus::Pending;
            e.error = Some(error);
        });
    }

    fn finished(&self, id: TaskId, outcome: Outcome) -> Option<TaskInfo> {
        self.finished_at(id, outcome, Instant::now())
    }

    fn get(&self, id: TaskId) -> Option<TaskInfo> {
        self.get_at(id, Instant::now())
    }

    fn sweep(&self) -> Option<Duration> {
        self.sweep_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: TaskStatus) -> Outcome {
        Outcome {
            status,
            result: Some(Arc::new(7u32)),
            error: None,
        }
    }

    #[test]
    fn finished_entries_expire_after_the_ttl() {
        let registry = Registry::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let id = TaskId::generate();
        registry.insert_at(id, None, t0).unwrap();
        registry.finished_at(id, done(TaskStatus::Succeeded), t0);
        let kept = registry.get_at(id, t0 + Duration::from_secs(59)).unwrap();
        assert_eq!(kept.status(), TaskStatus::Succeeded);
        assert_eq!(kept.result::<u32>(), Some(&7));
        assert!(registry.get_at(id, t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_sweep_drops_expired_entries_and_says_when_the_next_expires() {
        let registry = Registry::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(registry.sweep_at(t0), None, "nothing finished");
        let (early, late, live) = (TaskId::generate(), TaskId::generate(), TaskId::generate());
        for id in [early, late, live] {
            registry.insert_at(id, None, t0).unwrap();
        }
        registry.finished_at(early, done(TaskStatus::Succeeded), t0);
        registry.finished_at(late, done(TaskStatus::Failed), t0 + Duration::from_secs(10));
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(registry.sweep_at(at(20)), Some(Duration::from_secs(40)));
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.sweep_at(at(60)), Some(Duration::from_secs(10)));
        assert_eq!(registry.len(), 2, "the first expired");
        assert_eq!(registry.sweep_at(at(75)), None, "only a live entry is left");
        assert_eq!(registry.len(), 1);

        let forever = Registry::new(10, Duration::MAX);
        forever.insert_at(early, None, t0).unwrap();
        forever.finished_at(early, done(TaskStatus::Succeeded), t0);
        assert_eq!(forever.sweep_at(at(1)), Some(Duration::MAX));
    }

    #[test]
    fn live_entries_never_expire() {
        let registry = Registry::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        let id = TaskId::generate();
        registry.insert_at(id, None, t0).unwrap();
        registry.started(id, 1);
        let later = registry.get_at(id, t0 + Duration::from_secs(3600)).unwrap();
        assert_eq!(later.status(), TaskStatus::Running);
    }

    #[test]
    fn full_registry_evicts_the_oldest_finished_entry() {
        let registry = Registry::new(3, Duration::from_secs(3600));
        let t0 = Instant::now();
        let ids: Vec<_> = (0..3).map(|_| TaskId::generate()).collect();
        for id in &ids {
            registry.insert_at(*id, None, t0).unwrap();
        }
        registry.finished_at(ids[2], done(TaskStatus::Failed), t0);
        registry.finished_at(ids[1], done(TaskStatus::Succeeded), t0);
        let newcomer = TaskId::generate();
        registry.insert_at(newcomer, None, t0).unwrap();
        assert_eq!(registry.len(), 3);
        assert!(
            registry.get_at(ids[2], t0).is_none(),
            "oldest finished evicted"
        );
        assert!(registry.get_at(ids[1], t0).is_some());
        assert!(registry.get_at(ids[0], t0).is_some(), "live entry kept");
    }

    #[test]
    fn full_registry_of_live_tasks_refuses_with_overloaded() {
        let registry = Registry::new(2, Duration::from_secs(3600));
        let t0 = Instant::now();
        registry.insert_at(TaskId::generate(), None, t0).unwrap();
        registry.insert_at(TaskId::generate(), None, t0).unwrap();
        let err = registry
            .insert_at(TaskId::generate(), None, t0)
            .unwrap_err();
        assert!(err.is_overloaded(), "{err:?}");
        assert_eq!(registry.len(), 2);
    }

    #[test]
    fn debug_shows_the_bounds_and_a_count_not_the_ids() {
        let registry = Registry::new(5, Duration::from_secs(60));
        let id = TaskId::generate();
        registry.insert(id, None).unwrap();
        registry.finished(id, done(TaskStatus::Failed));
        let shown = format!("{registry:?}");
        assert!(!shown.contains(&id.to_string()), "{shown}");
        assert_eq!(shown, "Registry { max_entries: 5, ttl: 60s, entries: 1 }");
    }

    #[test]
    fn a_finished_status_is_final() {
        let registry = Registry::new(2, Duration::from_secs(3600));
        let id = TaskId::generate();
        registry.insert(id, None).unwrap();
        registry.finished(id, done(TaskStatus::TimedOut));
        registry.started(id, 2);
        registry.finished(id, done(TaskStatus::Succeeded));
        assert_eq!(registry.get(id).unwrap().status(), TaskStatus::TimedOut);
    }
}
