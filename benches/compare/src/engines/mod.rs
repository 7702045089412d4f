//! The engines under comparison, each behind the same two traits: [`Engine::run`]
//! (a read-write transaction re-run on its engine's conflict error, retries
//! counted) and [`Engine::read`] (a read-only snapshot). The workloads see only
//! these traits, so every engine runs byte-for-byte the same commands.
//!
//! Durability is chosen per run with a [`Tier`] and set equal for all engines;
//! [`Tier::describe`] states exactly what each engine does in it.

mod canopy;
mod fjall;
mod redb;
mod shardstone;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// What can go wrong inside a command.
#[derive(Debug)]
pub enum Error {
    /// The engine refused the commit (or an operation) because of a concurrent
    /// transaction: the adapter re-runs the command.
    Conflict,
    /// The engine gave up on the command with one of its documented outcomes
    /// (a lock wait that timed out or would deadlock, admission refused): the
    /// command is counted as refused and the thread goes on with the next one.
    // The `base-api` build's shardstone has no such errors.
    #[cfg_attr(feature = "base-api", allow(dead_code))]
    Refused(Refusal),
    /// Anything else, with the engine's message: the run stops.
    Engine(String),
}

/// A documented way for an engine to give up on a command (shardstone's
/// `Error::Timeout`, `Error::Deadlock`, `Error::Overloaded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "base-api", allow(dead_code))]
pub enum Refusal {
    /// A lock wait reached its limit.
    Timeout,
    /// A lock wait would have closed a cycle of waits.
    Deadlock,
    /// Admission to the blocking queue was refused.
    Overloaded,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conflict => f.write_str("write conflict"),
            Error::Refused(r) => write!(f, "refused by the engine: {r:?}"),
            Error::Engine(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an engine's own error, keeping its message.
pub(crate) fn engine_err(e: impl fmt::Display) -> Error {
    Error::Engine(e.to_string())
}

/// Reads inside a transaction or snapshot.
pub trait Read {
    /// The counter in `key`'s value (its first 8 bytes); `None` when absent.
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>>;
}

/// Reads and writes inside a read-write transaction.
pub trait Tx: Read {
    /// Sets `key` to `value` when the transaction commits.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Adds `delta` to the counter under `key` (8 bytes little-endian, missing
    /// = 0). By default a read-modify-write, the closest equivalent an engine
    /// without merge operators has: it conflicts with every concurrent adder.
    fn add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        let now = self.get(key)?.unwrap_or(0) as i64;
        let sum = now
            .checked_add(delta)
            .ok_or_else(|| Error::Engine("counter overflow".to_string()))?;
        self.put(key, &sum.to_le_bytes())
    }

    /// The next id (from 1) of the sequence under `key`. By default a
    /// read-modify-write of a max-id counter: it conflicts with every
    /// concurrent caller, but hands out no gaps.
    fn next_id(&mut self, key: &[u8]) -> Result<u64> {
        let id = self.get(key)?.unwrap_or(0) + 1;
        self.put(key, &id.to_le_bytes())?;
        Ok(id)
    }
}

/// A command body: it may run several times, so it must have no other effects.
pub type Command<'a> = &'a mut dyn FnMut(&mut dyn Tx) -> Result<()>;
/// A read-only body.
pub type Query<'a> = &'a mut dyn FnMut(&mut dyn Read) -> Result<()>;

/// One open database of one engine.
pub trait Engine: Send + Sync {
    /// Runs `command` in a read-write transaction and commits it, re-running it
    /// from the start on each conflict, until it commits or fails otherwise.
    fn run(&self, command: Command<'_>) -> Result<()>;

    /// Runs `query` on a read-only snapshot.
    fn read(&self, query: Query<'_>) -> Result<()>;

    /// Reads every key once, in order (warms the engine's caches); returns the
    /// count of preloaded items among them ([`crate::keys::is_item`]).
    fn scan(&self) -> Result<u64>;

    /// Inserts items `items` in one transaction (the bulk load).
    fn load(&self, items: std::ops::Range<u64>) -> Result<()>;

    /// Conflicts, re-runs and escalations so far.
    fn counters(&self) -> Counters;

    /// Commands in the engine's blocking queue right now (waiting or running
    /// escalated); `None` for engines without one. Sampled during a cell.
    fn queue_depth(&self) -> Option<u64> {
        None
    }

    /// Makes everything committed so far survive a reopen and keeps the next
    /// open fast (a checkpoint, or a durable commit). Not timed.
    fn settle(&self) -> Result<()>;
}

/// Counters every engine reports in the same terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commits refused for a conflict (shardstone's `Stats::conflicts`; for the
    /// peers, which re-run every refused commit, the same as `retries`).
    pub conflicts: u64,
    /// Times a command was re-run after a conflict.
    pub retries: u64,
    /// Commands that went to an exclusive path after repeated conflicts
    /// (shardstone's blocking queue; the others have no such path).
    pub escalations: u64,
    /// Commits that found a page they used changed but no key they read
    /// changed, and went through (shardstone's `Stats::page_changes_resolved`);
    /// `None` where the engine does not count them (the peers, shardstone
    /// before key-precise validation).
    pub page_changes_resolved: Option<u64>,
    /// Waits for a key an escalated command held (shardstone's
    /// `blocking_queue.lock_waits`; 0 elsewhere and in the `base-api` build).
    pub lock_waits: u64,
    /// Total time of those waits, in nanoseconds.
    pub lock_wait_ns: u64,
    /// Lock waits that ended in a timeout.
    pub timeouts: u64,
    /// Lock waits that ended in a deadlock error.
    pub deadlocks: u64,
}

/// The retry counter of the peer adapters: one relaxed add per conflict.
#[derive(Default)]
pub(crate) struct RetryCount(AtomicU64);

impl RetryCount {
    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How durable a commit is when it returns: the same for every engine in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tier {
    /// No fsync per commit (W1–W4).
    NoSync,
    /// An fsync (fdatasync) before each commit returns; concurrent commits may
    /// share one where the engine groups them (W5).
    SyncEachCommit,
}

impl Tier {
    /// Its name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Tier::NoSync => "no-sync",
            Tier::SyncEachCommit => "sync-each-commit",
        }
    }

    /// Exactly what each engine is configured to do in this tier.
    pub fn describe(self) -> &'static str {
        match self {
            Tier::NoSync => {
                "no fsync per commit: shardstone `Durability::Buffered` (record written to the \
                 OS through a shared mapping); redb `Durability::None` (commit kept in memory, \
                 not written until a later durable commit); fjall `PersistMode::Buffer` per \
                 transaction (journal written to the OS); canopydb `commit_with(false)` \
                 (WAL written to the OS, background WAL sync off)"
            }
            Tier::SyncEachCommit => {
                "fsync every commit: shardstone `Durability::Durable` (fdatasync, group commit \
                 per journal shard); redb `Durability::Immediate`; fjall `PersistMode::SyncData` \
                 per transaction; canopydb `commit_with(true)` (WAL fsync, its group commit)"
            }
        }
    }
}

/// The engines this harness knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// shardstone: commands with optimistic validation (page-level detection,
    /// key-level decision), escalation that locks only the keys it touched
    /// (`Escalation::KeyLocks`, the default).
    Shardstone,
    /// shardstone with Bedrock's escalation policy (`Escalation::StopTheWorld`:
    /// an escalated command stops every other writer). Not in the default set;
    /// named on the command line to measure the two policies side by side.
    ShardstoneBedrock,
    /// redb: one writer at a time.
    Redb,
    /// fjall `OptimisticTxDatabase`: key-level optimistic, serializable.
    Fjall,
    /// canopydb `begin_write_concurrent`: page-level optimistic, snapshot isolation.
    Canopydb,
}

impl Kind {
    /// Every engine, shardstone's variants first.
    pub const ALL: [Kind; 5] = [
        Kind::Shardstone,
        Kind::ShardstoneBedrock,
        Kind::Redb,
        Kind::Fjall,
        Kind::Canopydb,
    ];

    /// The engines a run compares when `--engines` is not given.
    pub const DEFAULT: [Kind; 4] = [Kind::Shardstone, Kind::Redb, Kind::Fjall, Kind::Canopydb];

    /// Whether it is shardstone (under either escalation policy), not a peer.
    pub fn is_shardstone(self) -> bool {
        matches!(self, Kind::Shardstone | Kind::ShardstoneBedrock)
    }

    /// Its name on the command line, in tables and charts.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Shardstone => "shardstone",
            Kind::ShardstoneBedrock => "shardstone-bedrock",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::Canopydb => "canopydb",
        }
    }

    /// Parses [`Kind::name`].
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Opens (or creates) this engine's database in `dir`.
    pub fn open(self, dir: &Path, tier: Tier) -> Result<Box<dyn Engine>> {
        Ok(match self {
            Kind::Shardstone => Box::new(shardstone::Shardstone::open(dir, tier, false)?),
            Kind::ShardstoneBedrock => Box::new(shardstone::Shardstone::open(dir, tier, true)?),
            Kind::Redb => Box::new(redb::Redb::open(dir, tier)?),
            Kind::Fjall => Box::new(fjall::Fjall::open(dir, tier)?),
            Kind::Canopydb => Box::new(canopy::Canopy::open(dir, tier)?),
        })
    }
}

/// Cache given to the engines that have one (redb's and canopydb's default):
/// larger than the data set, so no engine reads from the file system in a cell.
pub(crate) const CACHE_BYTES: usize = 1 << 30;
