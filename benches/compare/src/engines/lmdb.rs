//! LMDB through `heed`: one writer at a time (`write_txn` waits on LMDB's
//! writer mutex), so commands never conflict and never retry; readers never
//! wait (`read_txn`, a snapshot of the B+tree read in place from the map).
//!
//! LMDB is the reference for the read path: a `get` is one descent of the
//! copy-on-write B+tree through the memory map, no copy (the value is a slice
//! of the map until the read transaction ends), no lock.
//!
//! The tier picks the environment's flags (they apply to every commit):
//! `Tier::NoSync` opens with `MDB_NOSYNC` (a commit writes its dirty pages and
//! the meta page to the file with `pwrite`, no fsync: a crash of the OS may
//! lose recent commits, a crash of the process loses none); `Tier::SyncEachCommit`
//! opens with no sync flag, LMDB's default (each commit fdatasyncs its data
//! pages, then writes and fdatasyncs the meta page: two syncs per commit, and
//! no group commit, since commits are serialized). The middle setting,
//! `MDB_NOMETASYNC` (data synced, the meta page's sync left to the next commit),
//! is not used: it matches neither tier.

use super::{engine_err, Command, Counters, Engine, Query, Read, Result, Tier, Tx};
use crate::keys::{counter, is_item};
use heed::types::Bytes;
use heed::{CommitOrAbort, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn};
use std::path::Path;

/// Address space reserved for the map: LMDB's file grows only as pages are
/// used, so this is a ceiling (W7's orders and copy-on-write garbage
/// included), not a cost.
const MAP_BYTES: usize = 64 << 30;

/// The database handle: raw bytes both ways, valid as long as its environment.
type Database = heed::Database<'static, Bytes, Bytes>;

/// Reader slots: more than any thread count the harness runs (126 by default).
const MAX_READERS: u32 = 1024;

/// An LMDB environment in a directory (`data.mdb`, `lock.mdb`), with one
/// named database `kv`.
pub struct Lmdb {
    env: Env,
    db: Database,
}

impl Lmdb {
    /// Opens (or creates) the environment in `dir` with the tier's flags.
    pub fn open(dir: &Path, tier: Tier) -> Result<Lmdb> {
        std::fs::create_dir_all(dir).map_err(engine_err)?;
        let mut opts = EnvOpenOptions::new();
        opts.map_size(MAP_BYTES).max_dbs(1).max_readers(MAX_READERS);
        if tier == Tier::NoSync {
            // SAFETY: `MDB_NOSYNC` only gives up durability across an OS crash
            // (the map stays consistent for this process and the next open
            // after a clean exit); `settle` syncs explicitly.
            unsafe {
                opts.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: the environment's files are only ever opened by this
        // harness, by one process at a time (the parent runs its children one
        // after another), and never modified behind LMDB's back.
        let env = unsafe { opts.open(dir) }.map_err(engine_err)?;
        let wtxn = env.write_txn().map_err(engine_err)?;
        let db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, Some("kv"))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .map_err(engine_err)?
            .unwrap_commit();
        Ok(Lmdb { env, db })
    }
}

struct WriteTxn<'a, 'e> {
    txn: &'a mut RwTxn<'e>,
    db: Database,
}

impl Read for WriteTxn<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.db.get(self.txn, key).map_err(engine_err)?;
        Ok(found.map(counter))
    }
}

impl Tx for WriteTxn<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.put(self.txn, key, value).map_err(engine_err)
    }
}

struct ReadTxn<'e> {
    txn: RoTxn<'e, heed::WithTls>,
    db: Database,
}

impl Read for ReadTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.db.get(&self.txn, key).map_err(engine_err)?;
        Ok(found.map(counter))
    }
}

impl Engine for Lmdb {
    fn run(&self, command: Command<'_>) -> Result<()> {
        // A command's error drops (aborts) the transaction: nothing of it stays.
        let mut txn = self.env.write_txn().map_err(engine_err)?;
        command(&mut WriteTxn {
            txn: &mut txn,
            db: self.db,
        })?;
        txn.commit().map_err(engine_err)
    }

    fn read(&self, query: Query<'_>) -> Result<()> {
        let txn = self.env.read_txn().map_err(engine_err)?;
        query(&mut ReadTxn { txn, db: self.db })
    }

    fn scan(&self) -> Result<u64> {
        let txn = self.env.read_txn().map_err(engine_err)?;
        let mut n = 0;
        for item in self.db.iter(&txn).map_err(engine_err)? {
            let (k, v) = item.map_err(engine_err)?;
            n += u64::from(is_item(k) && counter(v) != u64::MAX);
        }
        Ok(n)
    }

    fn counters(&self) -> Counters {
        // One writer at a time: no conflicts, no retries.
        Counters::default()
    }

    fn settle(&self) -> Result<()> {
        // `mdb_env_sync(force = 1)`: fsyncs what `MDB_NOSYNC` commits left unsynced.
        self.env.force_sync().map_err(engine_err)
    }
}
