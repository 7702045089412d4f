//! Commands: the retry loop, conflict accounting, escalation and the blocking queue.
//!
//! A command is a closure run atomically over a transaction. On a conflict it is
//! re-run on a fresh snapshot — after waiting until that snapshot includes the
//! commit that beat it, so a retry never loses to the same commit twice (with a
//! jittered pause from the second conflict on). After `max_conflicts` conflicts it
//! is escalated: admitted to the blocking queue in arrival order (`admission`), it
//! re-runs holding locks on the keys and ranges it touched (`txn::keylock`), so it
//! cannot lose on them again and nothing else is stopped; after a few locked
//! attempts that still lose, or under `Escalation::StopTheWorld` (Bedrock's policy),
//! it closes the commit gate, waits for commits in flight to drain, and runs alone.
//! Snapshots and readers are never stopped.
//!
//! Runs also feed the slow-command report and the storm signal (`slow`, `storm`);
//! their callbacks are called after the run, with no engine lock held.

mod admission;
mod gate;
mod hook;
mod prometheus;
mod slow;
mod stats;
mod storm;
mod workers;

pub use slow::{RunEnding, SlowCommand, SLOW_COMMANDS_KEPT};
pub use stats::{BlockingQueueStats, CommandStats, HotKey, HotPage, Stats, OTHER_COMMANDS};
pub use storm::StormSignal;
pub(crate) use workers::{handle, panic_message, Workers};
pub use workers::{Affinity, CommandHandle};

use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::options::{Escalation, Options};
use crate::store::Store;
use crate::sync::{thread_local, Arc};
use crate::txn::{
    commit, point, start_key, CommitId, Conflict, Holding, KeyBounds, KeyLocks, Locking, Log,
    Outcome, Owner, Tx, WaitError,
};
use admission::Admission;
use gate::CommitGate;
use slow::Attempts;
use stats::{Counters, Ending, Telemetry};
use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime};

thread_local! {
    /// Commands running on this thread: (executor id, command name). Guards nesting.
    static RUNNING: RefCell<Vec<(usize, String)>> = RefCell::new(Vec::new());
    /// Per-thread cache of command counters, so a run does not take a shared lock.
    static COUNTERS: RefCell<Vec<(usize, String, Arc<Counters>)>> = RefCell::new(Vec::new());
}

const COUNTER_CACHE: usize = 64;

/// Escalated attempts under key locks before a command runs alone.
const LOCKED_ATTEMPTS: u32 = 4;

/// Traces a command that gave up waiting on the escalation path (a lock wait
/// that timed out or would deadlock, a full blocking queue); returns `e`.
fn gave_up(e: Error) -> Error {
    match &e {
        Error::Deadlock { command, key } => tracing::warn!(
            target: "shardstone",
            command = %command,
            key = %crate::error::show_key(key),
            "lock wait would deadlock"
        ),
        Error::Timeout {
            command,
            key,
            waited,
        } => tracing::warn!(
            target: "shardstone",
            command = %command,
            key = %crate::error::show_key(key),
            waited_secs = waited.as_secs_f64(),
            "lock wait timed out"
        ),
        Error::Overloaded { command, waiting } => tracing::warn!(
            target: "shardstone",
            command = %command,
            waiting,
            "blocking queue overloaded: command turned away"
        ),
        _ => {}
    }
    e
}

/// A short, jittered pause before re-running after the second conflict in a row,
/// growing with each: losers of one hot key spread out instead of re-colliding.
fn backoff(conflicts: u32) {
    if conflicts < 2 || cfg!(loom) {
        return;
    }
    thread_local! {
        static SEED: std::cell::Cell<u64> = std::cell::Cell::new(0);
    }
    let r = SEED.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = (s as *const _ as u64) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    let cap_us = 1u64 << conflicts.min(8);
    std::thread::sleep(Duration::from_micros(r % cap_us + 1));
}

/// Runs commands against one store.
pub(crate) struct Executor {
    id: usize,
    max_conflicts: u32,
    policy: Escalation,
    lock_wait: Duration,
    /// Locks of escalated commands on keys and ranges.
    keys: KeyLocks,
    admission: Admission,
    gate: CommitGate,
    /// Exclusive commit rights (the last resort, and `StopTheWorld`): taken one
    /// command at a time, in arrival order.
    exclusive: Admission,
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
    /// When it started, on `slow::monotonic_ns`'s clock (the slow-command check
    /// compares its coarse reads with it, so a run reads the clock once here).
    started: u64,
    done: bool,
    /// How it ended and how long it took, once `done`.
    ending: Ending,
    took: Duration,
}

impl RunRecord<'_> {
    fn finish(&mut self, ending: Ending) {
        let took = Duration::from_nanos(slow::monotonic_ns().saturating_sub(self.started));
        self.counters.finish(ending, took);
        self.all.finish(ending, took);
        self.done = true;
        self.ending = ending;
        self.took = took;
    }
}

/// What one run's attempts leave for its slow-command report and for the
/// callbacks, which are called once the run holds nothing (not even its nesting
/// mark, so a callback may run commands).
struct RunState {
    attempts: Attempts,
    conflicts: u32,
    escalated: bool,
    /// The storm signal, when a sample this run took crossed into a storm.
    storm: Option<StormSignal>,
}

impl Drop for RunRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Ending::Failed);
        }
    }
}

impl Executor {
    /// `shards`: shards of the commit gate and the counters, one per CPU of the
    /// engine's topology (`sync::shards_for`).
    pub(crate) fn new(opts: &Options, shards: usize) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Executor {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_conflicts: opts.max_conflicts,
            policy: opts.escalation,
            lock_wait: opts.lock_wait,
            keys: KeyLocks::new(),
            admission: Admission::new(opts.max_escalated, opts.max_queued),
            gate: CommitGate::new(shards),
            exclusive: Admission::new(1, usize::MAX),
            telemetry: Telemetry::new(
                shards,
                opts.hot_pages_tracked,
                opts.max_command_names,
                opts.slow_command,
                opts.storm.clone(),
            ),
        }
    }

    /// Escalated commands waiting for admission now.
    pub(crate) fn admission_waiting(&self) -> usize {
        self.admission.waiting()
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

    /// Runs `f` atomically: optimistically up to `max_conflicts` times (the
    /// engine's setting when `None`), then escalated; see `Engine::run`. A
    /// `deadline` bounds the waits for admission and for locks.
    pub(crate) fn run<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        max_conflicts: Option<u32>,
        deadline: Option<Instant>,
        f: F,
    ) -> Result<T>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        self.run_with_id(store, journal, name, max_conflicts, deadline, f)
            .map(|(value, _)| value)
    }

    /// `run`, also returning the id of the commit the command made (`None`
    /// when it wrote nothing), on every path: optimistic, key-locked, alone.
    pub(crate) fn run_with_id<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        max_conflicts: Option<u32>,
        deadline: Option<Instant>,
        mut f: F,
    ) -> Result<(T, Option<CommitId>)>
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
        let counters = self.counters(name);
        let mut record = RunRecord {
            counters,
            all: &self.telemetry.all,
            started: slow::monotonic_ns(),
            done: false,
            ending: Ending::Failed,
            took: Duration::ZERO,
        };
        let mut run = RunState {
            attempts: Attempts::new(self.telemetry.slow.threshold, record.started),
            conflicts: 0,
            escalated: false,
            storm: None,
        };
        let result = {
            RUNNING.with(|r| r.borrow_mut().push((self.id, name.to_owned())));
            let _running = Running { id: self.id };
            let result = self.attempts(
                store,
                journal,
                name,
                max_conflicts,
                deadline,
                counters,
                &mut f,
                &mut run,
            );
            record.finish(match &result {
                Ok((_, Some(_))) => Ending::Committed,
                Ok((_, None)) => Ending::ReadOnly,
                Err(_) => Ending::Failed,
            });
            result.map(|(v, id)| (v, id.map(CommitId)))
        };
        // Nothing is held now: the callbacks may take their time, or panic.
        if let Some(signal) = &run.storm {
            self.telemetry.fire_storm(signal);
        }
        if let Some(threshold) = self.telemetry.slow.threshold {
            if record.took > threshold {
                self.report_slow(name, counters, &record, run);
            }
        }
        result
    }

    /// Reports a run that took longer than `Options::slow_command`.
    fn report_slow(&self, name: &str, counters: &Counters, record: &RunRecord<'_>, run: RunState) {
        let report = SlowCommand {
            name: name.to_owned(),
            duration: record.took,
            attempts: run.attempts.count,
            conflicts: run.conflicts,
            escalated: run.escalated,
            ending: match record.ending {
                Ending::Committed => RunEnding::Committed,
                Ending::ReadOnly => RunEnding::ReadOnly,
                Ending::Failed => RunEnding::Failed,
            },
            last_attempt: run.attempts.footprint,
            conflicts_caused: 0,
            finished_at: SystemTime::now(),
        };
        self.telemetry.report_slow(counters, report);
    }

    /// After a lost conflict, once the commit that beat it is visible: credits
    /// that commit's command with it, and samples the storm window if due.
    fn after_loss(&self, journal: &Journal, newer: u64, run: &mut RunState) {
        if let Some(winner) = journal.command_of(newer) {
            self.telemetry.caused_by(&winner);
        }
        if let Some(s) = self.telemetry.storm_tick(false) {
            run.storm = Some(s);
        }
    }

    /// How long a wait for a lock (or the gate) may last from now.
    fn wait_deadline(&self, deadline: Option<Instant>) -> Instant {
        let limit = Instant::now() + self.lock_wait;
        deadline.map_or(limit, |d| d.min(limit))
    }

    /// The optimistic attempts, then escalation. Returns the value and the id
    /// of its commit (`None`: it wrote nothing).
    #[allow(clippy::too_many_arguments)]
    fn attempts<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        max_conflicts: Option<u32>,
        deadline: Option<Instant>,
        counters: &Counters,
        f: &mut F,
        run: &mut RunState,
    ) -> Result<(T, Option<u64>)>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        let max_conflicts = max_conflicts.unwrap_or(self.max_conflicts);
        // What the failed attempts touched: an escalated re-run locks it first.
        let mut footprint: Vec<KeyBounds> = Vec::new();
        while run.conflicts < max_conflicts {
            if !self.gate.wait_open(|| self.wait_deadline(deadline)) {
                return Err(self.gate_timeout(name));
            }
            let mut tx = Tx::begin(store);
            let value = match f(&mut tx) {
                Ok(v) => v,
                Err(e) => {
                    run.attempts.failed_attempt();
                    return Err(e);
                }
            };
            run.attempts.before_commit(&tx);
            match self.commit_at_gate(tx, journal, name, deadline, 0)? {
                Outcome::Committed {
                    id,
                    restructured,
                    resolved,
                } => {
                    self.committed(counters, restructured, resolved);
                    return Ok((value, Some(id)));
                }
                Outcome::ReadOnly => return Ok((value, None)),
                Outcome::Blocked { key } => {
                    // An escalated command holds a key this one writes: wait for
                    // that key only, then re-run (not a conflict: nothing changed).
                    self.wait_for_key(name, &key, deadline)?;
                }
                Outcome::Conflict(c) => {
                    run.conflicts += 1;
                    let retry = run.conflicts < max_conflicts;
                    self.lost(counters, name, &c, retry);
                    footprint.extend(c.footprint);
                    // Retry on a snapshot that includes the commit that beat us.
                    if !store.clock.wait_visible(c.newer) {
                        return Err(journal.halted_error());
                    }
                    self.after_loss(journal, c.newer, run);
                    if retry {
                        backoff(run.conflicts);
                    }
                }
            }
        }
        counters.escalation();
        self.telemetry.all.escalation();
        run.escalated = true;
        if let Some(s) = self.telemetry.storm_tick(false) {
            run.storm = Some(s);
        }
        self.telemetry.queue_enter();
        struct Leave<'a>(&'a Telemetry, Instant);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.queue_leave(self.1.elapsed());
            }
        }
        let _leave = Leave(&self.telemetry, Instant::now());
        let _admitted = match self.admission.enter(deadline) {
            Ok(a) => a,
            Err(waiting) => {
                self.telemetry.overloaded();
                return Err(gave_up(Error::Overloaded {
                    command: name.to_owned(),
                    waiting,
                }));
            }
        };
        match self.policy {
            Escalation::StopTheWorld => {
                self.run_exclusive(store, journal, name, deadline, f, &mut run.attempts)
            }
            Escalation::KeyLocks => {
                self.run_locked(store, journal, name, deadline, counters, footprint, f, run)
            }
        }
    }

    /// Commits `tx` through the commit gate (waiting for it at most until the
    /// lock-wait deadline), checking the key locks of escalated commands other
    /// than `owner` (0: an ordinary command).
    fn commit_at_gate(
        &self,
        tx: Tx<'_>,
        journal: &Journal,
        name: &str,
        deadline: Option<Instant>,
        owner: Owner,
    ) -> Result<Outcome> {
        let Some(_pass) = self.gate.enter(|| self.wait_deadline(deadline)) else {
            return Err(self.gate_timeout(name));
        };
        commit(
            tx,
            Log {
                journal,
                command: name,
                apply: false,
                locks: Some((&self.keys, owner)),
            },
        )
    }

    fn gate_timeout(&self, name: &str) -> Error {
        self.telemetry.timed_out();
        gave_up(Error::Timeout {
            command: name.to_owned(),
            key: Vec::new(),
            waited: self.lock_wait,
        })
    }

    /// Waits until no escalated command holds `key`.
    fn wait_for_key(&self, name: &str, key: &[u8], deadline: Option<Instant>) -> Result<()> {
        let started = Instant::now();
        let r = self
            .keys
            .wait_released(0, key, self.wait_deadline(deadline));
        self.telemetry.lock_waited(started.elapsed());
        r.map_err(|e| {
            self.telemetry.timed_out();
            gave_up(e.into_error(name, &point(key)))
        })
    }

    fn committed(&self, counters: &Counters, restructured: bool, resolved: bool) {
        if restructured {
            self.telemetry.restructured();
        }
        if resolved {
            counters.resolved();
            self.telemetry.all.resolved();
        }
    }

    fn lost(&self, counters: &Counters, name: &str, c: &Conflict, retry: bool) {
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
    }

    /// An escalated run under key locks: lock what the failed attempts touched,
    /// in key order, then re-run locking anything new as it goes. A run that still
    /// loses (it touched keys it did not hold) holds those too next time; after
    /// `LOCKED_ATTEMPTS` it runs alone.
    #[allow(clippy::too_many_arguments)]
    fn run_locked<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        deadline: Option<Instant>,
        counters: &Counters,
        footprint: Vec<KeyBounds>,
        f: &mut F,
        run: &mut RunState,
    ) -> Result<(T, Option<u64>)>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        let owner = self.keys.owner();
        let _holding = Holding {
            locks: &self.keys,
            owner,
        };
        let started = Instant::now();
        let lock_all = |spans: Vec<KeyBounds>| -> Result<()> {
            let until = self.wait_deadline(deadline);
            let mut spans = spans;
            spans.sort_by(|a, b| start_key(a).cmp(&start_key(b)));
            spans.dedup();
            for span in spans {
                self.keys.acquire(owner, span.clone(), until).map_err(|e| {
                    self.telemetry.wait_failed(&e);
                    gave_up(e.into_error(name, &span))
                })?;
            }
            Ok(())
        };
        lock_all(footprint)?;
        self.telemetry.lock_waited(started.elapsed());
        for _ in 0..LOCKED_ATTEMPTS {
            let locking = Locking {
                locks: &self.keys,
                owner,
                deadline: self.wait_deadline(deadline),
                command: name,
            };
            let mut tx = Tx::begin_with(store, Some(locking));
            let value = match f(&mut tx) {
                Ok(v) => v,
                Err(e) => {
                    run.attempts.failed_attempt();
                    // A lock taken on the way in (a deadlock or a timeout), or the
                    // command's own error.
                    match &e {
                        Error::Deadlock { .. } => self.telemetry.wait_failed(&WaitError::Deadlock),
                        Error::Timeout { .. } => self.telemetry.timed_out(),
                        _ => return Err(e),
                    }
                    return Err(gave_up(e));
                }
            };
            run.attempts.before_commit(&tx);
            match self.commit_at_gate(tx, journal, name, deadline, owner)? {
                Outcome::Committed {
                    id,
                    restructured,
                    resolved,
                } => {
                    self.committed(counters, restructured, resolved);
                    return Ok((value, Some(id)));
                }
                Outcome::ReadOnly => return Ok((value, None)),
                Outcome::Blocked { key } => lock_all(vec![point(&key)])?,
                Outcome::Conflict(c) => {
                    // It read a key before locking it, and another commit got there
                    // first: the next attempt holds everything this one touched.
                    run.conflicts += 1;
                    self.lost(counters, name, &c, true);
                    if !store.clock.wait_visible(c.newer) {
                        return Err(journal.halted_error());
                    }
                    self.after_loss(journal, c.newer, run);
                    lock_all(c.footprint)?;
                }
            }
        }
        self.run_exclusive(store, journal, name, deadline, f, &mut run.attempts)
    }

    /// The last resort, and Bedrock's policy: runs `f` with exclusive commit
    /// rights (every other commit waits). Returns the value and the id of its
    /// commit (`None`: it wrote nothing).
    fn run_exclusive<T, F>(
        &self,
        store: &Store,
        journal: &Journal,
        name: &str,
        deadline: Option<Instant>,
        f: &mut F,
        attempts: &mut Attempts,
    ) -> Result<(T, Option<u64>)>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        let _turn = self
            .exclusive
            .enter(None)
            .expect("waiting without a deadline ends only in admission");
        let _exclusive = self.gate.close();
        let _ = deadline;
        loop {
            let mut tx = Tx::begin(store);
            let value = match f(&mut tx) {
                Ok(v) => v,
                Err(e) => {
                    attempts.failed_attempt();
                    return Err(e);
                }
            };
            attempts.before_commit(&tx);
            let log = Log {
                journal,
                command: name,
                apply: false,
                locks: None,
            };
            match commit(tx, log)? {
                Outcome::Committed {
                    id,
                    restructured,
                    resolved: _,
                } => {
                    if restructured {
                        self.telemetry.restructured();
                    }
                    return Ok((value, Some(id)));
                }
                Outcome::ReadOnly => return Ok((value, None)),
                Outcome::Blocked { .. } => unreachable!("an exclusive commit checks no key locks"),
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
