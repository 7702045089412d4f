//! RocksDB `OptimisticTransactionDB` (the `rocksdb` cargo feature): key-level
//! optimistic concurrency. A command's reads are `get_for_update` (each key
//! read is tracked) and its writes `put` (tracked too); at commit RocksDB
//! checks that no tracked key was written by another transaction since this
//! one read or wrote it, and otherwise refuses the commit with `Busy` (or
//! `TryAgain` when the memtable history it checks against is too short): the
//! adapter re-runs the command and counts a retry. Every read being tracked,
//! commands are serializable, as fjall's. Reads outside commands use a
//! snapshot (`DB::snapshot`).
//!
//! The tier picks the `WriteOptions` of every commit: `Tier::NoSync` leaves
//! `sync` off with the WAL on (the commit's WAL record is written to the OS,
//! no fsync); `Tier::SyncEachCommit` sets `sync` (the WAL is fdatasynced,
//! RocksDB's default `use_fsync = false`, before the commit returns; commits
//! that join one write group share that sync: its group commit). The WAL is
//! never disabled.

use super::{
    engine_err, Command, Counters, Engine, Error, Query, Read, Result, RetryCount, Tier, Tx,
    CACHE_BYTES,
};
use crate::keys::{counter, is_item, key, value};
use rocksdb::{
    BlockBasedOptions, Cache, ErrorKind, IteratorMode, OptimisticTransactionDB,
    OptimisticTransactionOptions, Options, Transaction, WriteOptions,
};
use std::path::Path;

/// Memtable history kept for commit validation (the size of one default
/// memtable): a commit whose reads are older than the oldest memtable kept
/// gets `TryAgain`.
const HISTORY_BYTES: i64 = 64 << 20;

/// A RocksDB optimistic-transaction database in a directory (default column
/// family only).
pub struct Rocks {
    db: OptimisticTransactionDB,
    write: WriteOptions,
    retries: RetryCount,
}

impl Rocks {
    /// Opens (or creates) `dir` with a 1 GiB LRU block cache (as redb's,
    /// fjall's and canopydb's caches) and otherwise RocksDB's defaults (64 MiB
    /// memtables, level compaction, Snappy when the library has it); the tier
    /// picks the commits' `WriteOptions`.
    pub fn open(dir: &Path, tier: Tier) -> Result<Rocks> {
        let cache = Cache::new_lru_cache(CACHE_BYTES).map_err(engine_err)?;
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_max_write_buffer_size_to_maintain(HISTORY_BYTES);
        let db = OptimisticTransactionDB::open(&opts, dir).map_err(engine_err)?;
        let mut write = WriteOptions::default();
        write.set_sync(tier == Tier::SyncEachCommit);
        Ok(Rocks {
            db,
            write,
            retries: RetryCount::default(),
        })
    }
}

/// RocksDB reports a lost optimistic commit as `Busy` (a tracked key changed)
/// or `TryAgain` (validation could not be done against the memtable history).
fn rocks_err(e: rocksdb::Error) -> Error {
    match e.kind() {
        ErrorKind::Busy | ErrorKind::TryAgain => Error::Conflict,
        _ => engine_err(e),
    }
}

struct TxnTx<'a, 'db>(&'a Transaction<'db, OptimisticTransactionDB>);

impl Read for TxnTx<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        // `exclusive` means nothing to an optimistic transaction: the key is tracked.
        let found = self.0.get_pinned_for_update(key, true).map_err(rocks_err)?;
        Ok(found.map(|v| counter(&v)))
    }
}

impl Tx for TxnTx<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.put(key, value).map_err(rocks_err)
    }
}

struct SnapshotRead<'a>(rocksdb::SnapshotWithThreadMode<'a, OptimisticTransactionDB>);

impl Read for SnapshotRead<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.0.get_pinned(key).map_err(rocks_err)?;
        Ok(found.map(|v| counter(&v)))
    }
}

impl Rocks {
    /// One attempt: `Err(Error::Conflict)` when it lost.
    fn attempt(&self, command: &mut Command<'_>) -> Result<()> {
        let txn = self
            .db
            .transaction_opt(&self.write, &OptimisticTransactionOptions::default());
        // On a command's error the transaction is dropped: rolled back.
        command(&mut TxnTx(&txn))?;
        txn.commit().map_err(rocks_err)
    }
}

impl Engine for Rocks {
    fn run(&self, mut command: Command<'_>) -> Result<()> {
        loop {
            match self.attempt(&mut command) {
                Err(Error::Conflict) => self.retries.add(),
                done => return done,
            }
        }
    }

    fn read(&self, query: Query<'_>) -> Result<()> {
        query(&mut SnapshotRead(self.db.snapshot()))
    }

    fn scan(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item.map_err(rocks_err)?;
            n += u64::from(is_item(&k) && counter(&v) != u64::MAX);
        }
        Ok(n)
    }

    fn counters(&self) -> Counters {
        Counters::retries_only(self.retries.get())
    }

    fn settle(&self) -> Result<()> {
        // Memtables to SST files (the next open replays no WAL), then the WAL
        // synced for anything written since.
        self.db.flush().map_err(engine_err)?;
        self.db.flush_wal(true).map_err(engine_err)
    }
}
