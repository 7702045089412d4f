//! Telemetry of commands: what operators lacked in Bedrock's retry-storm outage.
//!
//! Counters are sharded per thread (one cache line per shard, one shard per CPU
//! of the engine's topology, indexed by `sync::thread_shard`) so that counting
//! does not become the contended cache line on a many-core machine. Conflicts,
//! which are rare next to commits, go to a small table of the hottest pages with
//! the command names that lost on each.
//!
//! Memory is bounded whatever names callers use: the first
//! `Options::max_command_names` distinct names get counters of their own, every
//! later name is counted under the one entry [`OTHER_COMMANDS`]. Every run is
//! counted in exactly one entry, so the entries always add up to the totals.

use super::hook::Hook;
use super::slow::{SlowCommand, SlowLog};
use super::storm::{StormSignal, StormWatch};
use crate::feed::ConsumerStats;
use crate::journal::JournalStats;
use crate::options::StormThresholds;
use crate::store::{PageId, StoreStats};
use crate::sync::{thread_shard, Arc, AtomicBool, AtomicU64, CachePadded, Mutex, Ordering};
use crate::txn::WaitError;
use std::collections::HashMap;
use std::time::Duration;

/// The name of the entry of [`Stats::commands`] that counts every command whose
/// name did not get counters of its own: the names that came after the first
/// `Options::max_command_names` distinct ones, and a command that is itself
/// named this. It is listed last, from the first run given to it on.
pub const OTHER_COMMANDS: &str = "(other commands)";

/// Counters of one command name (or of all commands), per shard.
#[derive(Default)]
struct Shard {
    runs: AtomicU64,
    commits: AtomicU64,
    read_only: AtomicU64,
    conflicts: AtomicU64,
    resolved: AtomicU64,
    retries: AtomicU64,
    escalations: AtomicU64,
    errors: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
    slow: AtomicU64,
    caused: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Counters {
    shards: Box<[CachePadded<Shard>]>,
}

/// How one run of a command ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Committed,
    ReadOnly,
    Failed,
}

impl Counters {
    /// Counters with `shards` shards (one per CPU, from `sync::shards_for`; one
    /// under loom, whose models count nothing concurrently that they check).
    fn new(shards: usize) -> Self {
        let shards = if cfg!(loom) { 1 } else { shards.max(1) };
        Counters {
            shards: (0..shards)
                .map(|_| CachePadded::new(Shard::default()))
                .collect(),
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[thread_shard() % self.shards.len()]
    }

    /// A lost conflict; `retry` when the closure re-runs optimistically (rather
    /// than being escalated).
    pub(crate) fn conflict(&self, retry: bool) {
        let s = self.shard();
        s.conflicts.fetch_add(1, Ordering::Relaxed);
        if retry {
            s.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A commit that found a leaf changed and was let through by the key check.
    pub(crate) fn resolved(&self) {
        self.shard().resolved.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn escalation(&self) {
        self.shard().escalations.fetch_add(1, Ordering::Relaxed);
    }

    /// A run that took longer than `Options::slow_command`.
    pub(crate) fn slow(&self) {
        self.shard().slow.fetch_add(1, Ordering::Relaxed);
    }

    /// A conflict another command lost to a commit of this command.
    pub(crate) fn caused(&self) {
        self.shard().caused.fetch_add(1, Ordering::Relaxed);
    }

    /// Conflicts attributed to this command's commits so far.
    pub(crate) fn caused_total(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.caused.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn finish(&self, ending: Ending, took: Duration) {
        let s = self.shard();
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        s.runs.fetch_add(1, Ordering::Relaxed);
        match ending {
            Ending::Committed => s.commits.fetch_add(1, Ordering::Relaxed),
            Ending::ReadOnly => s.read_only.fetch_add(1, Ordering::Relaxed),
            Ending::Failed => s.errors.fetch_add(1, Ordering::Relaxed),
        };
        s.total_ns.fetch_add(ns, Ordering::Relaxed);
        s.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> CommandStats {
        let mut out = CommandStats::default();
        let mut total_ns = 0u64;
        for s in self.shards.iter() {
            out.runs += s.runs.load(Ordering::Relaxed);
            out.commits += s.commits.load(Ordering::Relaxed);
            out.read_only += s.read_only.load(Ordering::Relaxed);
            out.conflicts += s.conflicts.load(Ordering::Relaxed);
            out.page_changes_resolved += s.resolved.load(Ordering::Relaxed);
            out.retries += s.retries.load(Ordering::Relaxed);
            out.escalations += s.escalations.load(Ordering::Relaxed);
            out.errors += s.errors.load(Ordering::Relaxed);
            out.slow_runs += s.slow.load(Ordering::Relaxed);
            out.conflicts_caused += s.caused.load(Ordering::Relaxed);
            total_ns = total_ns.saturating_add(s.total_ns.load(Ordering::Relaxed));
            out.max_duration = out
                .max_duration
                .max(Duration::from_nanos(s.max_ns.load(Ordering::Relaxed)));
        }
        if let Some(mean) = total_ns.checked_div(out.runs) {
            out.mean_duration = Duration::from_nanos(mean);
        }
        out
    }
}

/// Counters of one command name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CommandStats {
    /// The command's name as given to `Engine::run`.
    pub name: String,
    /// Calls of `Engine::run` that finished (committed, read-only, or returned an error).
    pub runs: u64,
    /// Runs that committed writes.
    pub commits: u64,
    /// Runs that wrote nothing (no commit id taken).
    pub read_only: u64,
    /// Conflicts lost: a key it read or a range it scanned had changed.
    pub conflicts: u64,
    /// Commits that found a leaf they used changed since their snapshot, but no
    /// key they read changed: each is a re-run that page-level validation would
    /// have caused and the key check saved.
    pub page_changes_resolved: u64,
    /// Optimistic re-runs after a conflict (the conflicts that did not escalate).
    pub retries: u64,
    /// Runs that went to the blocking queue.
    pub escalations: u64,
    /// Runs that ended in an error (the closure's own, or an engine error).
    pub errors: u64,
    /// Runs that took longer than `Options::slow_command`.
    pub slow_runs: u64,
    /// Conflicts other runs lost where the commit that beat them was one of this
    /// command's: the newest commit on a leaf whose change made them conflict,
    /// looked up by its id in the journal's in-memory window (a conflict whose
    /// winner has left the window, or was not a command run here, is not
    /// attributed). A leaf holds many keys, so the winner named is the last
    /// writer of the leaf, usually but not always of the key that collided.
    pub conflicts_caused: u64,
    /// Mean wall time of a run, retries and queueing included.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub mean_duration: Duration,
    /// Longest run.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub max_duration: Duration,
}

/// A page that conflicts often, and who lost on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HotPage {
    /// The page.
    pub page: PageId,
    /// Conflicts on it.
    pub conflicts: u64,
    /// The first and last key the page held at its latest conflict: the key range it covers.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serialize::hex"))]
    pub first_key: Vec<u8>,
    /// See `first_key`.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serialize::hex"))]
    pub last_key: Vec<u8>,
    /// Command names that lost a conflict on it, most frequent first.
    pub losers: Vec<(String, u64)>,
}

/// A key, or a key range a scan read, that real conflicts were lost on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HotKey {
    /// The key (then `last_key` is the same), or the first key of the range
    /// (empty when the range is unbounded below).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serialize::hex"))]
    pub first_key: Vec<u8>,
    /// The key, or the last key of the range (empty when unbounded above).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serialize::hex"))]
    pub last_key: Vec<u8>,
    /// Conflicts lost because it changed.
    pub conflicts: u64,
    /// Command names that lost a conflict on it, most frequent first.
    pub losers: Vec<(String, u64)>,
}

/// The blocking queue's load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BlockingQueueStats {
    /// Commands waiting for or holding exclusive commit rights right now.
    pub depth: u64,
    /// Commands that have gone through it.
    pub escalated: u64,
    /// Total time commands spent in it, waiting and running.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub total_time: Duration,
    /// Longest time one command spent in it.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub max_time: Duration,
    /// Escalated commands waiting for admission right now (at most
    /// `Options::max_escalated` run at once).
    pub waiting: u64,
    /// Waits for a key an escalated command held (by commands that wanted to write
    /// it, and by escalated commands taking their locks).
    pub lock_waits: u64,
    /// Total time spent in those waits.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::duration")
    )]
    pub lock_wait_time: Duration,
    /// Waits that ended in `Error::Deadlock`.
    pub deadlocks: u64,
    /// Waits that ended in `Error::Timeout`.
    pub timeouts: u64,
    /// Commands turned away with `Error::Overloaded`.
    pub overloaded: u64,
}

/// A point-in-time copy of an engine's counters (`Engine::stats`).
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Newest commit id visible to snapshots.
    pub commit_id: u64,
    /// Commits that installed writes.
    pub commits: u64,
    /// Command runs that wrote nothing.
    pub read_only: u64,
    /// Conflicts lost by commands: each is a key read or a range scanned that
    /// another commit changed after the loser's snapshot (a real conflict).
    pub conflicts: u64,
    /// Commits that found a leaf they used changed since their snapshot, and
    /// committed anyway because no key they read had changed: the re-runs that
    /// deciding conflicts per key instead of per page saved.
    pub page_changes_resolved: u64,
    /// Optimistic re-runs after a conflict. A conflict either causes a retry or is
    /// the last one before escalation; with `max_conflicts: 0` commands escalate
    /// without any conflict.
    pub retries: u64,
    /// Commands escalated to the blocking queue.
    pub escalations: u64,
    /// Runs that ended in an error.
    pub errors: u64,
    /// Commits that split, merged or removed pages (they take the structure lock).
    pub restructures: u64,
    /// The blocking queue.
    pub blocking_queue: BlockingQueueStats,
    /// Per command name, sorted by name; then, once a name did not get counters
    /// of its own (more than `Options::max_command_names` distinct names), one
    /// last entry named [`OTHER_COMMANDS`] that counts all such runs. The
    /// entries add up to the totals above.
    pub commands: Vec<CommandStats>,
    /// The pages that conflicted most, most conflicts first.
    pub hot_pages: Vec<HotPage>,
    /// The keys and scanned ranges whose changes caused the most conflicts, most
    /// conflicts first: where the application's own data collides.
    pub hot_keys: Vec<HotKey>,
    /// Memory and snapshot pins of the page store.
    pub store: StoreStats,
    /// Journal shards, group-commit fsyncs, checkpoint and recovery.
    pub journal: JournalStats,
    /// Every attached feed consumer: position, lag, paused.
    pub feed: Vec<ConsumerStats>,
    /// The most recent slow command runs (longer than `Options::slow_command`),
    /// newest first, at most [`crate::SLOW_COMMANDS_KEPT`]. `CommandStats::slow_runs`
    /// counts all of them.
    pub slow_commands: Vec<SlowCommand>,
    /// Runs that took longer than `Options::slow_command`, since the engine opened.
    pub slow_command_count: u64,
    /// The retry-storm signal: attempts per commit and escalations per second
    /// over the sliding window of `Options::storm`.
    pub storm: StormSignal,
    /// Calls of the `Engine::on_slow_command` and `Engine::on_storm` callbacks
    /// that panicked (each panic was caught; the engine carried on).
    pub callback_panics: u64,
}

/// A key (first = last) or a scanned key range.
type KeySpan = (Vec<u8>, Vec<u8>);

#[derive(Default)]
struct HotEntry {
    conflicts: u64,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
    losers: HashMap<String, u64>,
}

/// Everything `Engine::stats` reports about commands.
pub(crate) struct Telemetry {
    pub(crate) all: Counters,
    /// Counters per command name, at most `max_names` of them. Entries are never
    /// removed: executors hand out plain references into them for the
    /// executor's life.
    commands: Mutex<HashMap<String, Arc<Counters>>>,
    max_names: usize,
    /// The [`OTHER_COMMANDS`] entry: every name past `max_names`.
    other: Arc<Counters>,
    /// Whether some name was given `other` (it is reported from then on).
    other_used: AtomicBool,
    hot: Mutex<HashMap<PageId, HotEntry>>,
    /// Keyed by (first key, last key).
    hot_keys: Mutex<HashMap<KeySpan, HotEntry>>,
    hot_tracked: usize,
    restructures: AtomicU64,
    queue_depth: AtomicU64,
    queue_done: AtomicU64,
    queue_total_ns: AtomicU64,
    queue_max_ns: AtomicU64,
    lock_waits: AtomicU64,
    lock_wait_ns: AtomicU64,
    deadlocks: AtomicU64,
    timeouts: AtomicU64,
    overloaded: AtomicU64,
    /// Slow command runs, and the callback told of each.
    pub(crate) slow: SlowLog,
    pub(crate) storm: StormWatch,
    pub(crate) on_storm: Hook<StormSignal>,
    /// Callbacks that panicked.
    pub(crate) callback_panics: AtomicU64,
}

/// The most shards one command name's counters get: with the 100,000 names
/// `Options::max_command_names` allows, about 400 MiB.
const NAME_SHARDS: usize = 32;

impl Telemetry {
    /// `shards`: shards of the engine-wide counters, one per CPU of the
    /// engine's topology (`sync::shards_for`). Each command name's counters
    /// take at most [`NAME_SHARDS`] of them, which bounds their memory by
    /// `Options::max_command_names` whatever the CPU count (threads beyond it
    /// share lines of one name's counters).
    pub(crate) fn new(
        shards: usize,
        hot_tracked: usize,
        max_names: usize,
        slow_command: Option<Duration>,
        storm: StormThresholds,
    ) -> Self {
        Telemetry {
            all: Counters::new(shards),
            commands: Mutex::new(HashMap::new()),
            max_names,
            other: Arc::new(Counters::new(shards)),
            other_used: AtomicBool::new(false),
            hot: Mutex::new(HashMap::new()),
            hot_keys: Mutex::new(HashMap::new()),
            hot_tracked: hot_tracked.max(1),
            restructures: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            queue_done: AtomicU64::new(0),
            queue_total_ns: AtomicU64::new(0),
            queue_max_ns: AtomicU64::new(0),
            lock_waits: AtomicU64::new(0),
            lock_wait_ns: AtomicU64::new(0),
            deadlocks: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            slow: SlowLog::new(slow_command),
            storm: StormWatch::new(storm),
            on_storm: Hook::new(),
            callback_panics: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock_waited(&self, took: Duration) {
        self.lock_waits.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.lock_wait_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn wait_failed(&self, e: &WaitError) {
        match e {
            WaitError::Deadlock => self.deadlocks.fetch_add(1, Ordering::Relaxed),
            WaitError::Timeout(_) => self.timeouts.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `name` if it already has an entry (its own, or
    /// [`OTHER_COMMANDS`] once names overflowed): never creates one.
    fn existing(&self, name: &str) -> Option<Arc<Counters>> {
        let map = self.commands.lock();
        if let Some(c) = map.get(name) {
            return Some(c.clone());
        }
        (map.len() >= self.max_names || name == OTHER_COMMANDS).then(|| self.other.clone())
    }

    /// A conflict was lost to a commit of command `winner`.
    pub(crate) fn caused_by(&self, winner: &str) {
        if let Some(c) = self.existing(winner) {
            c.caused();
        }
    }

    /// Samples the storm window if a step is due (or `force`); returns the signal
    /// when the engine has just crossed into a storm, for the caller to pass to
    /// [`Telemetry::fire_storm`] once it holds no lock.
    pub(crate) fn storm_tick(&self, force: bool) -> Option<StormSignal> {
        self.storm.tick(&self.all, force).1
    }

    /// Tells the `Engine::on_storm` callback; call with no engine lock held.
    pub(crate) fn fire_storm(&self, signal: &StormSignal) {
        tracing::warn!(
            target: "shardstone",
            attempts_per_commit = signal.attempts_per_commit,
            escalations_per_second = signal.escalations_per_second,
            commits = signal.commits,
            attempts = signal.attempts,
            escalations = signal.escalations,
            window_secs = signal.window.as_secs_f64(),
            storms = signal.storms,
            "retry storm"
        );
        self.on_storm.fire(signal, &self.callback_panics);
    }

    /// Records a slow run and tells the `Engine::on_slow_command` callback; call
    /// with no engine lock held.
    pub(crate) fn report_slow(&self, counters: &Counters, mut report: SlowCommand) {
        counters.slow();
        self.all.slow();
        report.conflicts_caused = counters.caused_total();
        let footprint = report.last_attempt.as_ref();
        tracing::warn!(
            target: "shardstone",
            command = %report.name,
            duration_secs = report.duration.as_secs_f64(),
            attempts = report.attempts,
            conflicts = report.conflicts,
            escalated = report.escalated,
            ending = ?report.ending,
            conflicts_caused = report.conflicts_caused,
            pages = footprint.map(|f| f.pages),
            keys_read = footprint.map(|f| f.keys_read),
            keys_written = footprint.map(|f| f.keys_written),
            ranges_read = footprint.map(|f| f.ranges_read),
            "slow command"
        );
        self.slow.push(report.clone());
        self.slow.hook.fire(&report, &self.callback_panics);
    }

    /// The counters of command `name`: its own (created on first use) while
    /// fewer than `max_names` names have theirs, else the [`OTHER_COMMANDS`] entry.
    pub(crate) fn command(&self, name: &str) -> Arc<Counters> {
        let mut map = self.commands.lock();
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        if map.len() >= self.max_names || name == OTHER_COMMANDS {
            self.other_used.store(true, Ordering::Relaxed);
            return self.other.clone();
        }
        let c = Arc::new(Counters::new(self.all.shards.len().min(NAME_SHARDS)));
        map.insert(name.to_owned(), c.clone());
        c
    }

    /// The name `counters` (from [`Telemetry::command`] for `name`) are reported
    /// under: `name`, or [`OTHER_COMMANDS`]. Keeps the losers of hot pages to the
    /// same bounded set of names as `Stats::commands`.
    pub(crate) fn reported_name<'a>(&self, counters: &Counters, name: &'a str) -> &'a str {
        if std::ptr::eq(counters, &*self.other) {
            OTHER_COMMANDS
        } else {
            name
        }
    }

    pub(crate) fn restructured(&self) {
        self.restructures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn conflict_on(&self, page: PageId, first_key: &[u8], last_key: &[u8], loser: &str) {
        let mut hot = self.hot.lock();
        if hot.len() >= self.hot_tracked * 4 && !hot.contains_key(&page) {
            // Keep the table bounded: drop the colder half.
            let mut counts: Vec<u64> = hot.values().map(|e| e.conflicts).collect();
            counts.sort_unstable();
            let cut = counts[counts.len() / 2];
            hot.retain(|_, e| e.conflicts > cut);
        }
        let e = hot.entry(page).or_default();
        e.conflicts += 1;
        e.first_key.clear();
        e.first_key.extend_from_slice(first_key);
        e.last_key.clear();
        e.last_key.extend_from_slice(last_key);
        *e.losers.entry(loser.to_owned()).or_insert(0) += 1;
    }

    /// A conflict lost because the key (or scanned range) `first..=last` changed.
    pub(crate) fn conflict_on_keys(&self, first: &[u8], last: &[u8], loser: &str) {
        let mut hot = self.hot_keys.lock();
        let id = (first.to_vec(), last.to_vec());
        if hot.len() >= self.hot_tracked * 4 && !hot.contains_key(&id) {
            let mut counts: Vec<u64> = hot.values().map(|e| e.conflicts).collect();
            counts.sort_unstable();
            let cut = counts[counts.len() / 2];
            hot.retain(|_, e| e.conflicts > cut);
        }
        let e = hot.entry(id).or_default();
        e.conflicts += 1;
        *e.losers.entry(loser.to_owned()).or_insert(0) += 1;
    }

    pub(crate) fn queue_enter(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn queue_leave(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
        self.queue_done.fetch_add(1, Ordering::Relaxed);
        self.queue_total_ns.fetch_add(ns, Ordering::Relaxed);
        self.queue_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        commit_id: u64,
        store: StoreStats,
        journal: JournalStats,
        feed: Vec<ConsumerStats>,
    ) -> (Stats, Option<StormSignal>) {
        let (storm, crossed) = self.storm.tick(&self.all, true);
        let all = self.all.sum();
        let mut commands: Vec<CommandStats> = self
            .commands
            .lock()
            .iter()
            .map(|(name, c)| CommandStats {
                name: name.clone(),
                ..c.sum()
            })
            .collect();
        commands.sort_by(|a, b| a.name.cmp(&b.name));
        if self.other_used.load(Ordering::Relaxed) {
            commands.push(CommandStats {
                name: OTHER_COMMANDS.to_owned(),
                ..self.other.sum()
            });
        }
        let mut hot_pages: Vec<HotPage> = self
            .hot
            .lock()
            .iter()
            .map(|(page, e)| {
                let losers = sorted_losers(&e.losers);
                HotPage {
                    page: *page,
                    conflicts: e.conflicts,
                    first_key: e.first_key.clone(),
                    last_key: e.last_key.clone(),
                    losers,
                }
            })
            .collect();
        hot_pages.sort_by(|a, b| {
            b.conflicts
                .cmp(&a.conflicts)
                .then_with(|| a.page.cmp(&b.page))
        });
        hot_pages.truncate(self.hot_tracked);
        let mut hot_keys: Vec<HotKey> = self
            .hot_keys
            .lock()
            .iter()
            .map(|((first, last), e)| HotKey {
                first_key: first.clone(),
                last_key: last.clone(),
                conflicts: e.conflicts,
                losers: sorted_losers(&e.losers),
            })
            .collect();
        hot_keys.sort_by(|a, b| {
            b.conflicts
                .cmp(&a.conflicts)
                .then_with(|| a.first_key.cmp(&b.first_key))
        });
        hot_keys.truncate(self.hot_tracked);
        let stats = Stats {
            commit_id,
            commits: all.commits,
            read_only: all.read_only,
            conflicts: all.conflicts,
            page_changes_resolved: all.page_changes_resolved,
            retries: all.retries,
            escalations: all.escalations,
            errors: all.errors,
            restructures: self.restructures.load(Ordering::Relaxed),
            blocking_queue: BlockingQueueStats {
                depth: self.queue_depth.load(Ordering::Relaxed),
                escalated: self.queue_done.load(Ordering::Relaxed),
                total_time: Duration::from_nanos(self.queue_total_ns.load(Ordering::Relaxed)),
                max_time: Duration::from_nanos(self.queue_max_ns.load(Ordering::Relaxed)),
                waiting: 0,
                lock_waits: self.lock_waits.load(Ordering::Relaxed),
                lock_wait_time: Duration::from_nanos(self.lock_wait_ns.load(Ordering::Relaxed)),
                deadlocks: self.deadlocks.load(Ordering::Relaxed),
                timeouts: self.timeouts.load(Ordering::Relaxed),
                overloaded: self.overloaded.load(Ordering::Relaxed),
            },
            commands,
            hot_pages,
            hot_keys,
            store,
            journal,
            feed,
            slow_commands: self.slow.recent(),
            slow_command_count: all.slow_runs,
            storm,
            callback_panics: self.callback_panics.load(Ordering::Relaxed),
        };
        (stats, crossed)
    }
}

/// Loser names, most frequent first.
fn sorted_losers(losers: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = losers.iter().map(|(n, c)| (n.clone(), *c)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(all(test, not(loom)))]
mod sizing_tests {
    use super::*;

    /// Counters get one shard per CPU, and sums stay exact whatever shard each
    /// thread counts in.
    #[test]
    fn counters_have_one_shard_per_cpu_and_add_up() {
        let telemetry = Telemetry::new(256, 8, 4, None, StormThresholds::default());
        assert_eq!(telemetry.all.shards.len(), 256);
        let c = telemetry.command("put");
        assert_eq!(c.shards.len(), NAME_SHARDS, "per-name counters are bounded");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.finish(Ending::Committed, Duration::from_nanos(10));
                        c.conflict(true);
                    }
                });
            }
        });
        let sum = c.sum();
        assert_eq!(
            (sum.runs, sum.commits, sum.conflicts, sum.retries),
            (8000, 8000, 8000, 8000)
        );
        assert_eq!(Counters::new(crate::sync::shards_for(2)).shards.len(), 2);
    }
}
