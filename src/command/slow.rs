//! Slow commands: runs that took longer than `Options::slow_command`.
//!
//! The check costs a run one coarse clock read before each commit attempt (a
//! few nanoseconds: no syscall, no shared cache line) and a comparison at the
//! end; the start time is the one the run's counters take anyway. Only a run
//! already over the threshold pays for the report (its footprint, a lock on the
//! bounded list, the callback).

use super::hook::Hook;
use crate::sync::Mutex;
use crate::txn::{Footprint, Tx};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// How many slow runs `Stats::slow_commands` keeps (the most recent).
pub const SLOW_COMMANDS_KEPT: usize = 32;

/// How a command run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum RunEnding {
    /// It committed writes.
    Committed,
    /// It wrote nothing.
    ReadOnly,
    /// It returned an error (its own, or the engine's).
    Failed,
}

/// One command run that took longer than `Options::slow_command`: an entry of
/// `Stats::slow_commands`, and what `Engine::on_slow_command` callbacks get.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SlowCommand {
    /// The command's name as given to `Engine::run`.
    pub name: String,
    /// Wall time of the whole run: every attempt, conflict waits and the
    /// blocking queue included.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub duration: Duration,
    /// Times the closure ran (each lost conflict adds one).
    pub attempts: u32,
    /// Conflicts the run lost.
    pub conflicts: u32,
    /// Whether it went to the blocking queue.
    pub escalated: bool,
    /// How it ended.
    pub ending: RunEnding,
    /// What its last attempt touched. `None` when the run crossed the threshold
    /// only while committing (the footprint is taken before commit, and only
    /// once the run is already slow), or when its closure returned an error.
    pub last_attempt: Option<Footprint>,
    /// `CommandStats::conflicts_caused` of this command name when the run
    /// finished: conflicts other runs lost to commits of this name, since the
    /// engine opened. Not this one run's: the conflicts a commit causes come
    /// after it, so they can be counted per name only.
    pub conflicts_caused: u64,
    /// When it finished (wall clock).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::unix_time")
    )]
    pub finished_at: SystemTime,
}

/// The bounded list of recent slow runs, and the callback told of each.
pub(crate) struct SlowLog {
    /// The threshold; `None` turns detection off.
    pub(crate) threshold: Option<Duration>,
    recent: Mutex<VecDeque<SlowCommand>>,
    pub(crate) hook: Hook<SlowCommand>,
}

impl SlowLog {
    pub(crate) fn new(threshold: Option<Duration>) -> Self {
        SlowLog {
            threshold,
            recent: Mutex::new(VecDeque::new()),
            hook: Hook::new(),
        }
    }

    pub(crate) fn push(&self, report: SlowCommand) {
        let mut recent = self.recent.lock();
        if recent.len() == SLOW_COMMANDS_KEPT {
            recent.pop_back();
        }
        recent.push_front(report);
    }

    /// Newest first.
    pub(crate) fn recent(&self) -> Vec<SlowCommand> {
        self.recent.lock().iter().cloned().collect()
    }
}

/// One run's attempts, and its footprint once it is slow.
pub(crate) struct Attempts {
    pub(crate) count: u32,
    pub(crate) footprint: Option<Footprint>,
    /// The run's start ([`monotonic_ns`]) and the threshold, in nanoseconds;
    /// `None` when slow-command detection is off.
    clock: Option<(u64, u64)>,
}

impl Attempts {
    /// For a run that started at `started` ([`monotonic_ns`]).
    pub(crate) fn new(threshold: Option<Duration>, started: u64) -> Self {
        Attempts {
            count: 0,
            footprint: None,
            clock: threshold.map(|t| (started, u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))),
        }
    }

    /// Called with each attempt's transaction before it commits: counts the
    /// attempt, and keeps its footprint if the run is already past the threshold.
    pub(crate) fn before_commit(&mut self, tx: &Tx<'_>) {
        self.count += 1;
        if let Some((start, limit)) = self.clock {
            if coarse_ns().saturating_sub(start) >= limit {
                self.footprint = Some(tx.touched());
            }
        }
    }

    /// An attempt whose closure returned an error (nothing to commit).
    pub(crate) fn failed_attempt(&mut self) {
        self.count += 1;
        self.footprint = None;
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `Instant` reads).
pub(crate) fn monotonic_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC)
}

/// The same clock as [`monotonic_ns`], at the resolution of the kernel tick (it
/// lags by at most a tick) and several times cheaper to read: good enough to
/// tell that a run is slow.
fn coarse_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC_COARSE)
}

fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}
