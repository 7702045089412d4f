//! Automatic checkpoints: one background thread per writable engine with files
//! checkpoints when the journal appended since the newest checkpoint passes
//! `AutoCheckpoint::bytes`, or when that checkpoint is older than
//! `AutoCheckpoint::interval` and something was committed after it.
//!
//! Invariants:
//! - the thread only ever calls the same checkpoint a caller of
//!   `Engine::checkpoint` would (a snapshot, then `Journal::checkpoint`), so it
//!   never blocks commands and trims exactly what retention holds allow;
//! - a failed checkpoint never halts or stops anything: it is counted
//!   ([`AutoStats`]) and retried after a backoff that doubles up to
//!   [`BACKOFF_MAX`];
//! - stopping (engine close or drop) wakes the thread at once and abandons a
//!   checkpoint in progress at its next block of entries, so `join` is prompt.
//!
//! The thread waits in real time and no loom model explores it: its own lock
//! and condition variable are `std`'s, also under `cfg(loom)`.

use crate::error::{Error, Result};
use crate::options::AutoCheckpoint;
use crate::sync::real;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often the thread looks at the journal's size.
const POLL: Duration = Duration::from_millis(100);
/// The first wait after a failed checkpoint; doubled after each further one.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failing checkpoint.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A checkpoint in progress looks at the stop flag once per this many entries.
pub(crate) const STOP_CHECK_ENTRIES: u64 = 1024;

/// What background checkpoints did, reported in `Stats::journal`.
#[derive(Default)]
pub(crate) struct AutoStats {
    inner: real::Mutex<AutoState>,
}

#[derive(Default, Clone)]
pub(crate) struct AutoState {
    pub(crate) done: u64,
    pub(crate) failures: u64,
    pub(crate) last: Option<(u64, SystemTime)>,
    pub(crate) last_error: Option<String>,
}

impl AutoStats {
    fn succeeded(&self, id: u64) {
        let mut st = self.state();
        st.done += 1;
        st.last = Some((id, SystemTime::now()));
        st.last_error = None;
    }

    fn failed(&self, e: &Error) {
        let mut st = self.state();
        st.failures += 1;
        st.last_error = Some(e.to_string());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AutoState> {
        // Nothing panics while holding it; a poisoned lock still holds counters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn read(&self) -> AutoState {
        self.state().clone()
    }
}

/// What the thread asks of the engine.
pub(crate) trait Target: Send + 'static {
    /// The newest checkpoint's commit id.
    fn checkpoint_id(&self) -> u64;
    /// Journal bytes appended since the newest checkpoint began.
    fn since_checkpoint_bytes(&self) -> u64;
    /// The newest visible commit id.
    fn visible(&self) -> u64;
    /// Where counters go.
    fn stats(&self) -> &AutoStats;
    /// Writes a checkpoint; `stop()` true means give up (return an error) soon.
    fn checkpoint(&self, stop: &dyn Fn() -> bool) -> Result<u64>;
}

#[derive(Default)]
struct StopFlag {
    stopped: real::Mutex<bool>,
    wake: real::Condvar,
}

impl StopFlag {
    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout`; true once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }
}

/// The background checkpoint thread of one engine; stopped and joined on drop.
pub(crate) struct Checkpointer {
    stop: Arc<StopFlag>,
    thread: Option<real::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread. Fails only when the system has no thread to give.
    pub(crate) fn start(
        policy: AutoCheckpoint,
        target: impl Target,
    ) -> std::io::Result<Checkpointer> {
        let stop = Arc::new(StopFlag::default());
        let flag = stop.clone();
        let thread = real::thread::Builder::new()
            .name("shardstone-checkpoint".to_owned())
            .spawn(move || run(policy, &target, &flag))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread has nothing left to report here.
            let _ = thread.join();
        }
    }
}

fn run(policy: AutoCheckpoint, target: &impl Target, stop: &StopFlag) {
    let tick = policy.interval.min(POLL);
    // The age of the newest checkpoint counts from the open, or from when this
    // thread first saw it (a checkpoint `Engine::checkpoint` wrote included).
    let mut seen = target.checkpoint_id();
    let mut since = Instant::now();
    let mut backoff = BACKOFF_MIN;
    let mut retry_at: Option<Instant> = None;
    while !stop.wait(tick) {
        let checkpoint = target.checkpoint_id();
        if checkpoint != seen {
            seen = checkpoint;
            since = Instant::now();
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let due = target.since_checkpoint_bytes() >= policy.bytes
            || (since.elapsed() >= policy.interval && target.visible() > checkpoint);
        if !due {
            continue;
        }
        match target.checkpoint(&|| stop.is_set()) {
            Ok(id) => {
                if id > checkpoint {
                    target.stats().succeeded(id);
                }
                seen = target.checkpoint_id();
                since = Instant::now();
                backoff = BACKOFF_MIN;
                retry_at = None;
            }
            Err(_) if stop.is_set() => return,
            Err(e) => {
                target.stats().failed(&e);
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
