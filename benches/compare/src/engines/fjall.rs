//! fjall `OptimisticTxDatabase`: key-level optimistic concurrency, serializable;
//! a commit that lost returns `Conflict` and the adapter re-runs the command.
//! Reads use `read_tx` (a snapshot).

use super::{
    engine_err, Command, Counters, Engine, Error, Query, Read, Result, RetryCount, Tier, Tx,
    CACHE_BYTES,
};
use crate::keys::{counter, is_item};
use fjall::{
    KeyspaceCreateOptions, OptimisticTxDatabase, OptimisticTxKeyspace, PersistMode, Readable,
};
use std::path::Path;

/// A fjall database in a directory, with one keyspace `kv`.
pub struct Fjall {
    db: OptimisticTxDatabase,
    kv: OptimisticTxKeyspace,
    persist: PersistMode,
    retries: RetryCount,
}

impl Fjall {
    /// Opens `dir` with a 1 GiB block cache (as redb's and canopydb's caches).
    pub fn open(dir: &Path, tier: Tier) -> Result<Fjall> {
        let db = OptimisticTxDatabase::builder(dir)
            .cache_size(CACHE_BYTES as u64)
            .open()
            .map_err(engine_err)?;
        let kv = db
            .keyspace("kv", KeyspaceCreateOptions::default)
            .map_err(engine_err)?;
        let persist = match tier {
            Tier::NoSync => PersistMode::Buffer,
            Tier::SyncEachCommit => PersistMode::SyncData,
        };
        Ok(Fjall {
            db,
            kv,
            persist,
            retries: RetryCount::default(),
        })
    }
}

struct WriteTx<'a> {
    tx: &'a mut fjall::OptimisticWriteTx,
    kv: &'a OptimisticTxKeyspace,
}

impl Read for WriteTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.tx.get(self.kv, key).map_err(engine_err)?;
        Ok(found.map(|v| counter(&v[..])))
    }
}

impl Tx for WriteTx<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx.insert(self.kv, key, value);
        Ok(())
    }
}

struct SnapshotRead<'a> {
    snap: fjall::Snapshot,
    kv: &'a OptimisticTxKeyspace,
}

impl Read for SnapshotRead<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.snap.get(self.kv, key).map_err(engine_err)?;
        Ok(found.map(|v| counter(&v[..])))
    }
}

impl Engine for Fjall {
    fn run(&self, command: Command<'_>) -> Result<()> {
        loop {
            let mut tx = self
                .db
                .write_tx()
                .map_err(engine_err)?
                .durability(Some(self.persist));
            match command(&mut WriteTx {
                tx: &mut tx,
                kv: &self.kv,
            }) {
                Ok(()) => {}
                Err(Error::Conflict) => {
                    self.retries.add();
                    continue;
                }
                Err(e) => return Err(e),
            }
            match tx.commit().map_err(engine_err)? {
                Ok(()) => return Ok(()),
                Err(fjall::Conflict) => self.retries.add(),
            }
        }
    }

    fn read(&self, query: Query<'_>) -> Result<()> {
        query(&mut SnapshotRead {
            snap: self.db.read_tx(),
            kv: &self.kv,
        })
    }

    fn scan(&self) -> Result<u64> {
        let snap = self.db.read_tx();
        let mut n = 0;
        for guard in snap.iter(&self.kv) {
            let (k, v) = guard.into_inner().map_err(engine_err)?;
            n += u64::from(is_item(&k) && counter(&v) != u64::MAX);
        }
        Ok(n)
    }

    fn counters(&self) -> Counters {
        Counters::retries_only(self.retries.get())
    }

    fn settle(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).map_err(engine_err)
    }
}
