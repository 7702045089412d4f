//! The storm signal: retry amplification and escalations per second over a
//! sliding window, the warning Bedrock's operators never had (seed 002).
//!
//! Commits add nothing here: the window is computed from the sharded run
//! counters that every run already updates. A sample of their sums is taken at
//! most once per step (a tenth of the window), by a run that loses a conflict or
//! escalates, or by `Engine::stats`; a quiet engine takes none. The signal is
//! edge-triggered: `tick` reports a crossing once, and again only after a sample
//! found the engine below the thresholds in between.

use super::stats::Counters;
use crate::options::StormThresholds;
use crate::sync::{AtomicU64, Mutex, Ordering};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The retry-storm signal (`Stats::storm`, and what `Engine::on_storm`
/// callbacks get).
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct StormSignal {
    /// The span the figures cover: about `Options::storm.window`; less while the
    /// engine is younger than that, more on the first sample after a quiet spell
    /// (nothing conflicted, so no sample was taken).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub window: Duration,
    /// Runs that committed writes in the window.
    pub commits: u64,
    /// Attempts in the window: commits plus lost conflicts (each lost conflict
    /// is one more run of a closure).
    pub attempts: u64,
    /// Escalations to the blocking queue in the window.
    pub escalations: u64,
    /// `attempts / commits` (`attempts` when nothing committed): 1.0 when no
    /// command lost a conflict; 2.0 when on average each commit lost one first.
    pub attempts_per_commit: f64,
    /// `escalations / window`.
    pub escalations_per_second: f64,
    /// Whether the thresholds of `Options::storm` are crossed: at least
    /// `min_attempts` attempts, and either figure at or above its threshold.
    pub storming: bool,
    /// Times the engine has crossed into a storm since it opened.
    pub storms: u64,
}

/// Cumulative counter sums at one instant.
#[derive(Clone, Copy)]
struct Sample {
    at_ns: u64,
    commits: u64,
    conflicts: u64,
    escalations: u64,
}

struct State {
    /// Oldest first, one step or more apart; the first is the baseline.
    samples: VecDeque<Sample>,
    storming: bool,
    storms: u64,
}

pub(crate) struct StormWatch {
    thresholds: StormThresholds,
    window_ns: u64,
    step_ns: u64,
    epoch: Instant,
    /// When the next sample is due, in ns since `epoch`: read by losing runs
    /// without taking the lock.
    next_ns: AtomicU64,
    state: Mutex<State>,
}

impl StormWatch {
    pub(crate) fn new(thresholds: StormThresholds) -> Self {
        let window_ns = u64::try_from(thresholds.window.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let step_ns = (window_ns / 10).max(1);
        let mut samples = VecDeque::new();
        samples.push_back(Sample {
            at_ns: 0,
            commits: 0,
            conflicts: 0,
            escalations: 0,
        });
        StormWatch {
            thresholds,
            window_ns,
            step_ns,
            epoch: Instant::now(),
            next_ns: AtomicU64::new(step_ns),
            state: Mutex::new(State {
                samples,
                storming: false,
                storms: 0,
            }),
        }
    }

    /// Takes a sample of `all` if one is due, and always when `force` (then the
    /// signal is computed even between steps). Returns the signal when computed,
    /// and it again as the second value when this sample crossed into a storm.
    /// A tick that is not due, or that finds another in progress, does nothing.
    pub(crate) fn tick(&self, all: &Counters, force: bool) -> (StormSignal, Option<StormSignal>) {
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if !force && now_ns < self.next_ns.load(Ordering::Relaxed) {
            return (StormSignal::default(), None);
        }
        let mut st = if force {
            self.state.lock()
        } else {
            match self.state.try_lock() {
                Some(st) => st,
                None => return (StormSignal::default(), None),
            }
        };
        let sums = all.sum();
        let now = Sample {
            at_ns: now_ns,
            commits: sums.commits,
            conflicts: sums.conflicts,
            escalations: sums.escalations,
        };
        let due = now_ns >= self.next_ns.load(Ordering::Relaxed);
        if due {
            st.samples.push_back(now);
            self.next_ns
                .store(now_ns.saturating_add(self.step_ns), Ordering::Relaxed);
        }
        // The baseline: the oldest sample inside the window, or the newest one
        // before it when none but `now` is inside (the engine was quiet).
        let start = now_ns.saturating_sub(self.window_ns);
        while st.samples.len() > 1 && st.samples[1].at_ns <= start {
            st.samples.pop_front();
        }
        if st.samples.len() > 2 && st.samples[0].at_ns < start {
            st.samples.pop_front();
        }
        let base = st.samples[0];
        let (signal, crossed) = self.signal(&base, &now, &mut st);
        drop(st);
        let crossed = crossed.then(|| signal.clone());
        (signal, crossed)
    }

    /// The figures between `base` and `now`; `true` when they just crossed.
    fn signal(&self, base: &Sample, now: &Sample, st: &mut State) -> (StormSignal, bool) {
        let t = &self.thresholds;
        let span = Duration::from_nanos(now.at_ns.saturating_sub(base.at_ns));
        let commits = now.commits.saturating_sub(base.commits);
        let conflicts = now.conflicts.saturating_sub(base.conflicts);
        let escalations = now.escalations.saturating_sub(base.escalations);
        let attempts = commits.saturating_add(conflicts);
        let attempts_per_commit = if commits == 0 {
            attempts as f64
        } else {
            attempts as f64 / commits as f64
        };
        let secs = span.as_secs_f64();
        let escalations_per_second = if secs > 0.0 {
            escalations as f64 / secs
        } else {
            0.0
        };
        let storming = attempts >= t.min_attempts
            && (attempts_per_commit >= t.attempts_per_commit
                || escalations_per_second >= t.escalations_per_second);
        let crossed = storming && !st.storming;
        st.storming = storming;
        if crossed {
            st.storms += 1;
        }
        let signal = StormSignal {
            window: span,
            commits,
            attempts,
            escalations,
            attempts_per_commit,
            escalations_per_second,
            storming,
            storms: st.storms,
        };
        (signal, crossed)
    }
}
