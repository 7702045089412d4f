//! Commands: the retry loop, conflict accounting, escalation and the blocking queue.
//!
//! A command is a closure run atomically over a transaction. On a conflict it is
//! re-run on a fresh snapshot — after waiting until that snapshot includes the
//! commit that beat it, so a retry never loses to the same commit twice. After
//! `max_conflicts` conflicts it is escalated: it joins the blocking queue (one
//! escalated command at a time, FIFO), which closes the commit gate, waits for
//! commits in flight to drain, and runs the command alone, where it cannot conflict.
//! Snapshots and readers are never stopped by the queue.

mod gate;
mod stats;
mod workers;

pub use stats::{BlockingQueueStats, CommandStats, HotKey, HotPage, Stats, OTHER_COMMANDS};
pub(crate) use workers::{handle, panic_message, Workers};
pub use workers::{Affinity, CommandHandle};

use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::store::Store;
use crate::sync::{thread_local, Arc, Mutex};
use crate::txn::{commit, Log, Outcome, Tx};
use gate::CommitGate;
use stats::{Counters, Ending, Telemetry};
use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    /// Commands running on this thread: (executor id, command name). Guards nesting.
    static RUNNING: RefCell<Vec<(usize, String)>> = RefCell::new(Vec::new());
    /// Per-thread cache of command counters, so a run does not take a shared lock.
    static COUNTERS: RefCell<Vec<(usize, String, Arc<Counters>)>> = RefCell::new(Vec::new());
}

const COUNTER_CACHE: usize = 64;

/// Runs commands against one store.
pub(crate) struct Executor {
    id: usize,
    max_conflicts: u32,
    gate: CommitGate,
    /// The blocking queue: escalated commands take it in turn.
    queue: Mutex<()>,
    pub(crate) telemetry: Telemetry,
}

/// Marks a command as running on this thread; unmarks even when the closure panics.
struct Running {
    id: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(i) = r.iter().rposition(|(id, _)| *id == self.id) {
                r.remove(i);
            }
        });
    }
}

/// Counts a run that is still going when its thread unwinds from a panic.
struct RunRecord<'a> {
    counters: &'a Counters,
    all: &'a Counters,
    started: Instant,
    done: bool,
}

impl RunRecord<'_> {
    fn finish(&mut self, ending: Ending) {
        let took = self.started.elapsed();
        self.counters.finish(ending, took);
        self.all.finish(ending, took);
        self.done = true;
    }
}

impl Drop for RunRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Ending::Failed);
        }
    }
}

impl Executor {
    pub(crate) fn new(max_conflicts: u32, hot_tracked: usize, max_command_names: usize) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Executor {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_conflicts,
            gate: CommitGate::new(),
            queue: Mutex::new(()),
            telemetry: Telemetry::new(hot_tracked, max_command_names),
        }
    }

    /// The counters of command `name`, without touching a shared reference count:
    /// the per-thread cache holds an `Arc`, and the telemetry map keeps every
    /// command's counters for the executor's whole life.
    fn counters(&self, name: &str) -> &Counters {
        let ptr = COUNTERS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((_, _, c)) = cache.iter().find(|(id, n, _)| *id == self.id && n == name) {
                return Arc::as_ptr(c);
            }
            let c = self.telemetry.command(name);
            if cache.len() >= COUNTER_CACHE {
                cache.remove(0);
            }
            let ptr = Arc::as_ptr(&c);
            cache.push((self.id, name.to_owned(), c));
            ptr
        });
        // SAFETY: `Telemetry::commands` holds an `Arc` to these counters and never
        // removes it, so they live as long as `self`.
        unsafe { &*ptr }
    }

    /// Runs `f` atomically; see `Engine::run`.
    /// Runs `f` atomically: optimistically up to `max_conflicts` times (the
    /// engine's setting when `None`), then in the blocking queue; see `Engine::run`.
    pub(crate) fn run<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        max_conflicts: Option<u32>,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        let outer = RUNNING.with(|r| {
            r.borrow()
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, n)| n.clone())
        });
        if let Some(outer) = outer {
            return Err(Error::NestedRun {
                outer,
                inner: name.to_owned(),
            });
        }
        RUNNING.with(|r| r.borrow_mut().push((self.id, name.to_owned())));
        let _running = Running { id: self.id };

        let counters = self.counters(name);
        let mut record = RunRecord {
            counters,
            all: &self.telemetry.all,
            started: Instant::now(),
            done: false,
        };
        let mut conflicts = 0u32;
        let max_conflicts = max_conflicts.unwrap_or(self.max_conflicts);
        while conflicts < max_conflicts {
            self.gate.wait_open();
            let mut tx = Tx::begin(store);
            let value = match f(&mut tx) {
                Ok(v) => v,
                Err(e) => {
                    record.finish(Ending::Failed);
                    return Err(e);
                }
            };
            let pass = self.gate.enter();
            let outcome = commit(
                tx,
                Log {
                    journal,
                    command: name,
                    apply: false,
                },
            );
            drop(pass);
            match outcome {
                Ok(Outcome::Committed {
                    restructured,
                    resolved,
                }) => {
                    if restructured {
                        self.telemetry.restructured();
                    }
                    if resolved {
                        counters.resolved();
                        self.telemetry.all.resolved();
                    }
                    record.finish(Ending::Committed);
                    return Ok(value);
                }
                Ok(Outcome::ReadOnly) => {
                    record.finish(Ending::ReadOnly);
                    return Ok(value);
                }
                Ok(Outcome::Conflict(c)) => {
                    conflicts += 1;
                    let retry = conflicts < max_conflicts;
                    counters.conflict(retry);
                    self.telemetry.all.conflict(retry);
                    let loser = self.telemetry.reported_name(counters, name);
                    for p in &c.pages {
                        self.telemetry
                            .conflict_on(p.page, &p.first_key, &p.last_key, loser);
                    }
                    for (first, last) in &c.keys {
                        self.telemetry.conflict_on_keys(first, last, loser);
                    }
                    // Retry on a snapshot that includes the commit that beat us.
                    if !store.clock.wait_visible(c.newer) {
                        record.finish(Ending::Failed);
                        return Err(journal.halted_error());
                    }
                }
                Err(e) => {
                    record.finish(Ending::Failed);
                    return Err(e);
                }
            }
        }
        counters.escalation();
        self.telemetry.all.escalation();
        let result = self.run_escalated(store, journal, name, &mut f);
        record.finish(match &result {
            Ok((_, true)) => Ending::Committed,
            Ok((_, false)) => Ending::ReadOnly,
            Err(_) => Ending::Failed,
        });
        result.map(|(v, _)| v)
    }

    /// The blocking queue: runs `f` with exclusive commit rights. Returns the value
    /// and whether it committed writes.
    fn run_escalated<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        f: &mut F,
    ) -> Result<(T, bool)>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        let entered = Instant::now();
        self.telemetry.queue_enter();
        struct Leave<'a>(&'a Telemetry, Instant);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.queue_leave(self.1.elapsed());
            }
        }
        let _leave = Leave(&self.telemetry, entered);
        let _turn = self.queue.lock();
        let _exclusive = self.gate.close();
        loop {
            let mut tx = Tx::begin(store);
            let value = f(&mut tx)?;
            let log = Log {
                journal,
                command: name,
                apply: false,
            };
            match commit(tx, log)? {
                Outcome::Committed {
                    restructured,
                    resolved: _,
                } => {
                    if restructured {
                        self.telemetry.restructured();
                    }
                    return Ok((value, true));
                }
                Outcome::ReadOnly => return Ok((value, false)),
                Outcome::Conflict(c) => {
                    // Cannot happen while the gate is closed: every other commit is drained.
                    debug_assert!(
                        false,
                        "escalated command conflicted on {:?}",
                        c.pages.first().map(|p| p.page)
                    );
                    if !store.clock.wait_visible(c.newer) {
                        return Err(journal.halted_error());
                    }
                }
            }
        }
    }
}
