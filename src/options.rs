//! Engine configuration.

use crate::error::{Error, Result};
use crate::numa::{Numa, PagePlacement};
use std::time::Duration;

/// Longest key the engine accepts, in bytes. Longer keys are [`Error::KeyTooLarge`].
pub const MAX_KEY_LEN: usize = 1024;

/// The largest `Options::max_command_names` accepted: about 400 MiB of counters.
const MAX_COMMAND_NAMES_LIMIT: usize = 100_000;

/// Settings for [`crate::Engine::open_with`] and [`crate::Engine::in_memory_with`].
///
/// ```
/// let opts = shardstone::Options { page_size: 16 * 1024, max_conflicts: 5, ..Default::default() };
/// let engine = shardstone::Engine::in_memory_with(opts)?;
/// # Ok::<(), shardstone::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// Size of a page in bytes: a power of two from 4 KiB to 64 KiB. The page is the
    /// unit of conflict detection: a commit looks at the keys of a page it read only
    /// when that page changed, and conflicts only if a key it read did.
    pub page_size: usize,
    /// How many conflicts a command may lose before it is escalated (see
    /// [`Escalation`]), after which it is guaranteed to commit. Bedrock uses 3.
    pub max_conflicts: u32,
    /// What an escalated command does (default [`Escalation::KeyLocks`]).
    pub escalation: Escalation,
    /// The longest a command waits for a key an escalated command holds, or for
    /// exclusive commit rights, before it gets [`Error::Timeout`] (default 10 s).
    pub lock_wait: Duration,
    /// Escalated commands that may run at once; more wait in arrival order
    /// (default 64).
    pub max_escalated: usize,
    /// Escalated commands that may wait for admission; past it a command with a
    /// deadline is turned away at once with [`Error::Overloaded`] (default 1024).
    pub max_queued: usize,
    /// Longest value accepted by `put`, in bytes (default 16 MiB, at most 1 GiB).
    /// Values larger than about a quarter page live in overflow pages.
    pub max_value_len: usize,
    /// How many of the most-conflicted pages `Engine::stats` keeps and reports.
    pub hot_pages_tracked: usize,
    /// How many distinct command names get counters of their own in
    /// `Stats::commands` (default 1,000, at most 100,000; 0 counts every command
    /// under one entry). Runs of every later name are counted together under
    /// [`crate::OTHER_COMMANDS`], so names made from user input cannot grow
    /// memory; each name costs about 4 KiB of counters.
    pub max_command_names: usize,
    /// When `run` returns, relative to the commit's journal record. In-memory
    /// engines have no files, so for them every level behaves as `None`.
    pub durability: Durability,
    /// Journal shards: 0 (the default) gives one per CPU. A commit appends to the
    /// shard of the CPU it runs on.
    pub journal_shards: usize,
    /// Size of a journal segment file in bytes (default 64 MiB). A record larger
    /// than this gets a segment of its own size.
    pub segment_size: u64,
    /// Bytes of the newest commits kept in memory for feed consumers (default 64
    /// MiB). A consumer further behind reads the journal files; an in-memory engine
    /// has no files, so for it this is all the history a new subscription can get.
    pub feed_window_bytes: usize,
    /// Journal bytes a named consumer's retention hold may keep from deletion
    /// (default 1 GiB). A consumer that falls further behind loses its hold and
    /// gets `Error::Truncated` once what it needs is gone.
    pub retention_limit_bytes: u64,
    /// How the engine uses the machine's NUMA nodes: `Auto` (the default)
    /// discovers them, pins workers and binds shard and page memory to nodes;
    /// `Off` does none of it. See `docs/numa.md`.
    pub numa: Numa,
    /// Where page memory comes from: `Local` (the default: the node of the CPU that
    /// allocates) or `Interleave` (spread over every node). Only with `numa` on.
    pub page_placement: PagePlacement,
    /// Worker threads for [`crate::Engine::submit`], pinned one per CPU: 0 (the
    /// default) gives one per CPU of the topology. They start on the first submit.
    pub workers: usize,
    /// Open a damaged database anyway (off by default). Where a strict open
    /// returns [`Error::Corrupt`] because something promised durable is missing,
    /// cut or out of chain, a salvage open keeps the longest intact prefix of
    /// the commit order, copies the segment files it cuts into a `salvage-<id>`
    /// directory beside the journal first, and reports what it gave up in
    /// `stats().journal.recovery.salvage`. A damaged checkpoint cannot be
    /// salvaged. See docs/operations.md.
    pub salvage: bool,
    /// A [`crate::Snapshot`] held longer than this is reported once, in
    /// `Stats::store.old_snapshot_warnings` (default 60 s; `None`: never). A held
    /// snapshot keeps every page version it can read; see
    /// `Stats::store.snapshot_pinned_bytes` for what that costs.
    pub snapshot_warn_age: Option<Duration>,
    /// A command run (retries and blocking-queue waits included) that takes longer
    /// than this is a slow command: it is listed in `Stats::slow_commands` and
    /// passed to the callback of `Engine::on_slow_command` (default 1 s; `None`:
    /// never). See docs/operations.md.
    pub slow_command: Option<Duration>,
    /// When the engine reports a retry storm: `Stats::storm`, and the callback of
    /// `Engine::on_storm`. See [`StormThresholds`].
    pub storm: StormThresholds,
    /// How much journal checkpoints keep for point-in-time restore (default:
    /// back to the checkpoint before the newest, at most 1 GiB of journal). See
    /// [`Retention`].
    pub pitr_retention: Retention,
    /// When the engine writes checkpoints on its own, from a background thread
    /// (default: after 256 MiB of journal or 10 minutes, see [`AutoCheckpoint`];
    /// `None`: only [`crate::Engine::checkpoint`] writes them). In-memory engines
    /// and read-only opens have no background checkpoints.
    pub auto_checkpoint: Option<AutoCheckpoint>,
}

/// What a checkpoint keeps for point-in-time restore ([`crate::restore`]): the
/// older checkpoints (moved into `pitr/` of the database directory instead of
/// being deleted) and the journal after the oldest of them. A backup
/// ([`crate::Engine::backup`]) carries them, so any commit from the oldest kept
/// checkpoint on can be restored. Retention holds of feed consumers are kept
/// besides this, as before.
///
/// ```
/// use std::time::Duration;
/// let opts = shardstone::Options {
///     pitr_retention: shardstone::Retention { checkpoints: 3, max_age: Some(Duration::from_secs(86_400)), ..Default::default() },
///     ..Default::default()
/// };
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Checkpoints kept, the newest included (default 2: the journal reaches
    /// back to the checkpoint before the newest). 1 keeps only the newest, as
    /// before point-in-time restore existed: the journal before it is deleted.
    pub checkpoints: usize,
    /// The most journal bytes (written, not preallocated) the older checkpoints
    /// may keep (default 1 GiB): the oldest ones are dropped until it fits.
    pub max_bytes: u64,
    /// Older checkpoints written longer ago than this are dropped, with the
    /// journal only they needed (default `None`: no age limit).
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            checkpoints: 2,
            max_bytes: 1 << 30,
            max_age: None,
        }
    }
}

/// The thresholds of automatic checkpoints (`Options::auto_checkpoint`): a
/// background thread checkpoints when either is passed, which bounds both the
/// journal kept on disk and what the next open replays.
///
/// ```
/// use std::time::Duration;
/// let opts = shardstone::Options {
///     auto_checkpoint: Some(shardstone::AutoCheckpoint {
///         bytes: 64 << 20,
///         interval: Duration::from_secs(60),
///     }),
///     ..Default::default()
/// };
/// let engine = shardstone::Engine::in_memory_with(opts)?;
/// assert_eq!(engine.stats().journal.auto_checkpoints, 0);
/// # Ok::<(), shardstone::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoCheckpoint {
    /// Journal bytes appended since the newest checkpoint began that start the
    /// next one (default 256 MiB; at least 1). Compared with
    /// `Stats::journal.since_checkpoint_bytes` (always 0 under
    /// [`Durability::None`], which writes no journal).
    pub bytes: u64,
    /// Age of the newest checkpoint that starts the next one, if anything was
    /// committed after it (default 10 minutes; at least 1 ms).
    pub interval: Duration,
}

impl Default for AutoCheckpoint {
    fn default() -> Self {
        AutoCheckpoint {
            bytes: 256 << 20,
            interval: Duration::from_secs(600),
        }
    }
}

/// The thresholds of the storm signal: retry amplification (attempts per commit)
/// and escalations per second, measured over a sliding window.
///
/// The engine is in a storm while, over the last `window`, at least
/// `min_attempts` attempts were made and either figure reached its threshold.
/// ```
/// use std::time::Duration;
/// let opts = shardstone::Options {
///     storm: shardstone::StormThresholds { attempts_per_commit: 1.5, ..Default::default() },
///     slow_command: Some(Duration::from_millis(250)),
///     ..Default::default()
/// };
/// let engine = shardstone::Engine::in_memory_with(opts)?;
/// assert!(!engine.stats().storm.storming);
/// # Ok::<(), shardstone::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct StormThresholds {
    /// The sliding window the figures are measured over (default 10 s; at least
    /// 10 ms). It advances in steps of a tenth of itself.
    pub window: Duration,
    /// Attempts per commit that mean a storm (default 2.0: on average every
    /// commit lost one conflict first). A healthy engine stays near 1.0.
    pub attempts_per_commit: f64,
    /// Escalations to the blocking queue per second that mean a storm (default 50).
    pub escalations_per_second: f64,
    /// Fewest attempts in the window for a storm (default 100), so that a quiet
    /// engine's few conflicts do not count as one.
    pub min_attempts: u64,
}

impl Default for StormThresholds {
    fn default() -> Self {
        StormThresholds {
            window: Duration::from_secs(10),
            attempts_per_commit: 2.0,
            escalations_per_second: 50.0,
            min_attempts: 100,
        }
    }
}

/// What a command that lost `Options::max_conflicts` conflicts does next.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Escalation {
    /// It re-runs holding locks on the keys and ranges it read and wrote in its
    /// failed attempts, and on anything new it touches; commands on other keys go
    /// on, commands that want a held key wait for that key only. After a few
    /// locked attempts that still lose (it kept touching new keys), it runs alone
    /// as under `StopTheWorld`.
    #[default]
    KeyLocks,
    /// Bedrock's policy: it waits its turn in the blocking queue, then stops
    /// every other writer until it has committed. Kept to measure against.
    StopTheWorld,
}

/// How durable a commit is when `run` returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// Journal records are kept in memory only (they still feed the hash chain);
    /// only checkpoints reach the disk. A restart loses every commit after the
    /// last checkpoint.
    None,
    /// The record is written to the operating system (a shared file mapping)
    /// before `run` returns, without an fsync: it survives the process crashing,
    /// not the machine losing power.
    Buffered,
    /// `run` returns only after the record is on disk (fdatasync). Concurrent
    /// commits on a shard share one fsync (group commit).
    #[default]
    Durable,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size: 4096,
            max_conflicts: 3,
            escalation: Escalation::KeyLocks,
            lock_wait: Duration::from_secs(10),
            max_escalated: 64,
            max_queued: 1024,
            max_value_len: 16 << 20,
            hot_pages_tracked: 64,
            max_command_names: 1000,
            durability: Durability::Durable,
            journal_shards: 0,
            segment_size: 64 << 20,
            feed_window_bytes: 64 << 20,
            retention_limit_bytes: 1 << 30,
            numa: Numa::Auto,
            page_placement: PagePlacement::Local,
            workers: 0,
            salvage: false,
            snapshot_warn_age: Some(Duration::from_secs(60)),
            slow_command: Some(Duration::from_secs(1)),
            storm: StormThresholds::default(),
            pitr_retention: Retention::default(),
            auto_checkpoint: Some(AutoCheckpoint::default()),
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.page_size.is_power_of_two() || !(4096..=65536).contains(&self.page_size) {
            return Err(Error::InvalidOptions {
                option: "page_size",
                reason: format!(
                    "{} is not a power of two from 4096 to 65536",
                    self.page_size
                ),
            });
        }
        if self.max_value_len > 1 << 30 {
            return Err(Error::InvalidOptions {
                option: "max_value_len",
                reason: format!("{} exceeds the 1 GiB ceiling", self.max_value_len),
            });
        }
        if self.journal_shards > 4096 {
            return Err(Error::InvalidOptions {
                option: "journal_shards",
                reason: format!("{} exceeds the limit of 4096", self.journal_shards),
            });
        }
        if self.workers > 4096 {
            return Err(Error::InvalidOptions {
                option: "workers",
                reason: format!("{} exceeds the limit of 4096", self.workers),
            });
        }
        if self.max_command_names > MAX_COMMAND_NAMES_LIMIT {
            return Err(Error::InvalidOptions {
                option: "max_command_names",
                reason: format!(
                    "{} exceeds the limit of {MAX_COMMAND_NAMES_LIMIT} (each name costs about 4 KiB)",
                    self.max_command_names
                ),
            });
        }
        if self.max_escalated == 0 {
            return Err(Error::InvalidOptions {
                option: "max_escalated",
                reason: "0 would never admit an escalated command".to_owned(),
            });
        }
        if self.storm.window < Duration::from_millis(10)
            || self.storm.window > Duration::from_secs(3600)
        {
            return Err(Error::InvalidOptions {
                option: "storm.window",
                reason: format!("{:?} is not between 10 ms and 1 hour", self.storm.window),
            });
        }
        for (option, v) in [
            ("storm.attempts_per_commit", self.storm.attempts_per_commit),
            (
                "storm.escalations_per_second",
                self.storm.escalations_per_second,
            ),
        ] {
            if v.is_nan() || v < 0.0 {
                return Err(Error::InvalidOptions {
                    option,
                    reason: format!("{v} is not a number of at least 0"),
                });
            }
        }
        if let Some(auto) = &self.auto_checkpoint {
            if auto.bytes == 0 {
                return Err(Error::InvalidOptions {
                    option: "auto_checkpoint.bytes",
                    reason: "0 would checkpoint without end; use None to disable".to_owned(),
                });
            }
            if auto.interval < Duration::from_millis(1) {
                return Err(Error::InvalidOptions {
                    option: "auto_checkpoint.interval",
                    reason: format!("{:?} is below 1 ms", auto.interval),
                });
            }
        }
        if !(1 << 16..=1 << 40).contains(&self.segment_size) {
            return Err(Error::InvalidOptions {
                option: "segment_size",
                reason: format!("{} is not between 64 KiB and 1 TiB", self.segment_size),
            });
        }
        if self.pitr_retention.checkpoints == 0 {
            return Err(Error::InvalidOptions {
                option: "pitr_retention.checkpoints",
                reason: "0: the newest checkpoint is always kept (1 keeps only it)".to_owned(),
            });
        }
        Ok(())
    }
}
