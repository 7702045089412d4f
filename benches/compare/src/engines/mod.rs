//! The engines under comparison, each behind the same two traits: [`Engine::run`]
//! (a read-write transaction re-run on its engine's conflict error, retries
//! counted) and [`Engine::read`] (a read-only snapshot). The workloads see only
//! these traits, so every engine runs byte-for-byte the same commands.
//!
//! Durability is chosen per run with a [`Tier`] and set equal for all engines;
//! [`Tier::describe`] states exactly what each engine does in it.

mod canopy;
mod fjall;
mod lmdb;
mod redb;
#[cfg(feature = "rocksdb")]
mod rocks;
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

    /// Inserts items `items` in one transaction (the bulk load): by default one
    /// [`Engine::run`] that puts them all.
    fn load(&self, items: std::ops::Range<u64>) -> Result<()> {
        self.run(&mut |tx| {
            for i in items.clone() {
                tx.put(&crate::keys::key(i), &crate::keys::value(0, i))?;
            }
            Ok(())
        })
    }

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

impl Counters {
    /// The counters of a peer that re-runs every refused commit and has no
    /// other path: each retry is one conflict.
    pub fn retries_only(retries: u64) -> Counters {
        Counters {
            conflicts: retries,
            retries,
            ..Counters::default()
        }
    }

    /// The counts of two engines together (the sharing tax's engines of one
    /// thread each); `page_changes_resolved` only where both count it.
    pub fn plus(self, other: Counters) -> Counters {
        Counters {
            conflicts: self.conflicts + other.conflicts,
            retries: self.retries + other.retries,
            escalations: self.escalations + other.escalations,
            page_changes_resolved: self
                .page_changes_resolved
                .zip(other.page_changes_resolved)
                .map(|(a, b)| a + b),
            lock_waits: self.lock_waits + other.lock_waits,
            lock_wait_ns: self.lock_wait_ns + other.lock_wait_ns,
            timeouts: self.timeouts + other.timeouts,
            deadlocks: self.deadlocks + other.deadlocks,
        }
    }
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
                 (WAL written to the OS, background WAL sync off); LMDB `MDB_NOSYNC` (dirty \
                 pages and meta page written to the OS, no fsync); RocksDB (feature \
                 `rocksdb`) `WriteOptions::set_sync(false)`, WAL on (WAL record written to \
                 the OS)"
            }
            Tier::SyncEachCommit => {
                "fsync every commit: shardstone `Durability::Durable` (fdatasync, group commit \
                 per journal shard); redb `Durability::Immediate`; fjall `PersistMode::SyncData` \
                 per transaction; canopydb `commit_with(true)` (WAL fsync, its group commit); \
                 LMDB default flags (fdatasync of the data pages, then of the meta page: two \
                 per commit, no group commit, commits are serialized); RocksDB (feature \
                 `rocksdb`) `WriteOptions::set_sync(true)`, WAL on (WAL fdatasync, shared by \
                 the commits of one write group)"
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
    /// LMDB through heed: one writer at a time, readers never wait.
    Lmdb,
    /// RocksDB `OptimisticTransactionDB`: key-level optimistic, every read
    /// tracked (serializable). Only in a build with the `rocksdb` feature.
    Rocksdb,
}

impl Kind {
    /// Every engine, shardstone's variants first.
    pub const ALL: [Kind; 7] = [
        Kind::Shardstone,
        Kind::ShardstoneBedrock,
        Kind::Redb,
        Kind::Fjall,
        Kind::Canopydb,
        Kind::Lmdb,
        Kind::Rocksdb,
    ];

    /// The engines a run compares when `--engines` is not given: every peer
    /// this build has (RocksDB with the `rocksdb` feature only).
    #[cfg(not(feature = "rocksdb"))]
    pub const DEFAULT: &'static [Kind] = &[
        Kind::Shardstone,
        Kind::Redb,
        Kind::Fjall,
        Kind::Canopydb,
        Kind::Lmdb,
    ];
    /// The engines a run compares when `--engines` is not given: every peer
    /// this build has (RocksDB with the `rocksdb` feature only).
    #[cfg(feature = "rocksdb")]
    pub const DEFAULT: &'static [Kind] = &[
        Kind::Shardstone,
        Kind::Redb,
        Kind::Fjall,
        Kind::Canopydb,
        Kind::Lmdb,
        Kind::Rocksdb,
    ];

    /// Whether this build can open it (RocksDB needs the `rocksdb` feature).
    pub fn built(self) -> bool {
        self != Kind::Rocksdb || cfg!(feature = "rocksdb")
    }

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
            Kind::Lmdb => "lmdb",
            Kind::Rocksdb => "rocksdb",
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
            Kind::Lmdb => Box::new(lmdb::Lmdb::open(dir, tier)?),
            #[cfg(feature = "rocksdb")]
            Kind::Rocksdb => Box::new(rocks::Rocks::open(dir, tier)?),
            #[cfg(not(feature = "rocksdb"))]
            Kind::Rocksdb => {
                return Err(Error::Engine(
                    "rocksdb: this harness was built without the `rocksdb` feature".to_string(),
                ))
            }
        })
    }
}

/// Cache given to the engines that have one (redb's and canopydb's default):
/// larger than the data set, so no engine reads from the file system in a cell.
pub(crate) const CACHE_BYTES: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{key, value};
    use std::path::PathBuf;

    /// A fresh directory under the temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "shardstone-compare-test-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read(engine: &dyn Engine, i: u64) -> Option<u64> {
        let mut found = None;
        engine
            .read(&mut |r| {
                found = r.get(&key(i))?;
                Ok(())
            })
            .expect("read");
        found
    }

    /// What every adapter must do: load, scan, commit, abort on a command's
    /// error, add, hand out ids, and keep it all across a settle and a reopen
    /// in the other tier.
    fn contract(kind: Kind) {
        let dir = TempDir::new(kind.name());
        let engine = kind.open(&dir.0, Tier::NoSync).expect("open");
        engine.load(0..100).expect("load");
        assert_eq!(engine.scan().expect("scan"), 100);
        assert_eq!(read(&*engine, 7), Some(0));
        assert_eq!(read(&*engine, 100), None);

        engine
            .run(&mut |tx| {
                let n = tx.get(&key(7))?.unwrap_or(0);
                tx.put(&key(7), &value(n + 5, 7))
            })
            .expect("rmw");
        assert_eq!(read(&*engine, 7), Some(5));

        let refused = engine.run(&mut |tx| {
            tx.put(&key(8), &value(99, 8))?;
            Err(Error::Engine("the command gives up".to_string()))
        });
        assert!(matches!(refused, Err(Error::Engine(m)) if m == "the command gives up"));
        assert_eq!(
            read(&*engine, 8),
            Some(0),
            "an aborted command left a write"
        );

        let mut ids = Vec::new();
        for _ in 0..3 {
            engine
                .run(&mut |tx| {
                    tx.add(b"count", 2)?;
                    let id = tx.next_id(b"seq")?;
                    ids.push(id);
                    Ok(())
                })
                .expect("add and next_id");
        }
        assert_eq!(ids, [1, 2, 3]);
        let mut count = None;
        engine
            .read(&mut |r| {
                count = r.get(b"count")?;
                Ok(())
            })
            .expect("read count");
        assert_eq!(count, Some(6));
        assert_eq!(engine.counters().retries, 0);
        engine.settle().expect("settle");
        drop(engine);

        let engine = kind.open(&dir.0, Tier::SyncEachCommit).expect("reopen");
        assert_eq!(engine.scan().expect("scan"), 100);
        assert_eq!(read(&*engine, 7), Some(5));
        engine
            .run(&mut |tx| tx.put(&key(9), &value(1, 9)))
            .expect("durable commit");
        assert_eq!(read(&*engine, 9), Some(1));
    }

    #[test]
    fn lmdb_keeps_the_adapter_contract() {
        contract(Kind::Lmdb);
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocksdb_keeps_the_adapter_contract() {
        contract(Kind::Rocksdb);
    }

    /// A commit that lost to another on a key it read is re-run, counted, and
    /// its re-run sees the winner's write (no lost update).
    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocksdb_conflicts_are_retried() {
        let dir = TempDir::new("rocksdb-conflict");
        let engine = Kind::Rocksdb.open(&dir.0, Tier::NoSync).expect("open");
        engine.load(0..10).expect("load");
        let mut attempts = 0;
        engine
            .run(&mut |tx| {
                attempts += 1;
                let n = tx.get(&key(3))?.unwrap_or(0);
                if attempts == 1 {
                    // Another transaction commits to the key after this one read it.
                    engine.run(&mut |other| other.put(&key(3), &value(n + 10, 3)))?;
                }
                tx.put(&key(3), &value(n + 1, 3))
            })
            .expect("run");
        assert_eq!(attempts, 2);
        assert_eq!(read(&*engine, 3), Some(11));
        let c = engine.counters();
        assert_eq!((c.conflicts, c.retries), (1, 1));
    }

    #[cfg(not(feature = "rocksdb"))]
    #[test]
    fn rocksdb_without_its_feature_is_a_typed_error() {
        let dir = TempDir::new("rocksdb-absent");
        match Kind::Rocksdb.open(&dir.0, Tier::NoSync) {
            Err(Error::Engine(m)) => assert!(m.contains("`rocksdb` feature"), "{m}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened without the feature"),
        }
    }
}
