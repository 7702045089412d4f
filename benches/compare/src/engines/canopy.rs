//! canopydb `begin_write_concurrent`: page-level optimistic concurrency under
//! snapshot isolation (write-write conflicts only); a commit that lost returns
//! `Error::WriteConflict` and the adapter re-runs the command. Reads use
//! `begin_read`.

use super::{
    engine_err, Command, Counters, Engine, Error, Query, Read, Result, RetryCount, Tier, Tx,
    CACHE_BYTES,
};
use crate::keys::{counter, is_item, key, value};
use canopydb::{Database, DbOptions, EnvOptions, Tree};
use std::path::Path;

const TREE: &[u8] = b"kv";

/// A canopydb environment and database in a directory, with one tree `kv`.
pub struct Canopy {
    db: Database,
    sync: bool,
    retries: RetryCount,
}

impl Canopy {
    /// Opens `dir` with the WAL on, no background WAL sync, a 1 GiB page cache
    /// (its default, stated explicitly); the tier picks the per-commit sync.
    pub fn open(dir: &Path, tier: Tier) -> Result<Canopy> {
        std::fs::create_dir_all(dir).map_err(engine_err)?;
        let mut env = EnvOptions::new(dir);
        env.page_cache_size = CACHE_BYTES;
        env.wal_background_sync_interval = None;
        let mut db_opts = DbOptions::new();
        db_opts.use_wal = true;
        db_opts.default_commit_sync = false;
        let db = Database::with_options(env, db_opts).map_err(engine_err)?;
        let tx = db.begin_write().map_err(engine_err)?;
        drop(tx.get_or_create_tree(TREE).map_err(engine_err)?);
        tx.commit().map_err(engine_err)?;
        Ok(Canopy {
            db,
            sync: tier == Tier::SyncEachCommit,
            retries: RetryCount::default(),
        })
    }
}

/// canopydb reports a lost optimistic commit as `WriteConflict`.
fn canopy_err(e: canopydb::Error) -> Error {
    match e {
        canopydb::Error::WriteConflict => Error::Conflict,
        e => engine_err(e),
    }
}

struct TreeTx<'a, 't>(&'a mut Tree<'t>);

impl Read for TreeTx<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.0.get(key).map_err(canopy_err)?;
        Ok(found.map(|v| counter(&v)))
    }
}

impl Tx for TreeTx<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.insert(key, value).map_err(canopy_err)
    }
}

impl Canopy {
    /// One attempt: `Err(Error::Conflict)` when it lost.
    fn attempt(&self, command: &mut Command<'_>) -> Result<()> {
        let tx = self.db.begin_write_concurrent().map_err(canopy_err)?;
        {
            let mut tree = tx
                .get_tree(TREE)
                .map_err(canopy_err)?
                .ok_or_else(|| Error::Engine("canopydb: tree `kv` missing".to_string()))?;
            command(&mut TreeTx(&mut tree))?;
        }
        tx.commit_with(self.sync).map(|_| ()).map_err(canopy_err)
    }
}

impl Engine for Canopy {
    fn run(&self, mut command: Command<'_>) -> Result<()> {
        loop {
            match self.attempt(&mut command) {
                Err(Error::Conflict) => self.retries.add(),
                done => return done,
            }
        }
    }

    fn read(&self, query: Query<'_>) -> Result<()> {
        let tx = self.db.begin_read().map_err(canopy_err)?;
        let tree = tx
            .get_tree(TREE)
            .map_err(canopy_err)?
            .ok_or_else(|| Error::Engine("canopydb: tree `kv` missing".to_string()))?;
        query(&mut ReadTree(&tree))
    }

    fn scan(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(canopy_err)?;
        let tree = tx
            .get_tree(TREE)
            .map_err(canopy_err)?
            .ok_or_else(|| Error::Engine("canopydb: tree `kv` missing".to_string()))?;
        let mut n = 0;
        for item in tree.iter().map_err(canopy_err)? {
            let (k, v) = item.map_err(canopy_err)?;
            n += u64::from(is_item(&k) && counter(&v) != u64::MAX);
        }
        Ok(n)
    }

    fn load(&self, items: std::ops::Range<u64>) -> Result<()> {
        // The bulk load runs alone: an exclusive (serializable) write transaction.
        let tx = self.db.begin_write().map_err(canopy_err)?;
        {
            let mut tree = tx.get_or_create_tree(TREE).map_err(canopy_err)?;
            for i in items {
                tree.insert(&key(i), &value(0, i)).map_err(canopy_err)?;
            }
        }
        tx.commit_with(false).map(|_| ()).map_err(canopy_err)
    }

    fn counters(&self) -> Counters {
        Counters::retries_only(self.retries.get())
    }

    fn settle(&self) -> Result<()> {
        self.db.checkpoint().map_err(canopy_err)
    }
}

struct ReadTree<'a, 't>(&'a Tree<'t>);

impl Read for ReadTree<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.0.get(key).map_err(canopy_err)?;
        Ok(found.map(|v| counter(&v)))
    }
}
