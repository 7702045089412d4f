//! redb: one write transaction at a time (`begin_write` waits for the previous
//! one), so commands never conflict and never retry; reads use `begin_read`.

use super::{engine_err, Command, Counters, Engine, Query, Read, Result, Tier, Tx, CACHE_BYTES};
use crate::keys::{counter, is_item, key, value};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// A redb database file `redb.db` inside a directory.
pub struct Redb {
    db: redb::Database,
    durability: Durability,
}

impl Redb {
    /// Opens `dir/redb.db` with a 1 GiB cache (its default, stated explicitly).
    pub fn open(dir: &Path, tier: Tier) -> Result<Redb> {
        std::fs::create_dir_all(dir).map_err(engine_err)?;
        let db = redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("redb.db"))
            .map_err(engine_err)?;
        let durability = match tier {
            Tier::NoSync => Durability::None,
            Tier::SyncEachCommit => Durability::Immediate,
        };
        Ok(Redb { db, durability })
    }

    fn write(&self, durability: Durability, body: Command<'_>) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(engine_err)?;
        tx.set_durability(durability).map_err(engine_err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(engine_err)?;
            body(&mut WriteTable(&mut table))?;
        }
        tx.commit().map_err(engine_err)
    }
}

struct WriteTable<'a, 't>(&'a mut redb::Table<'t, &'static [u8], &'static [u8]>);

impl Read for WriteTable<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.0.get(key).map_err(engine_err)?;
        Ok(found.map(|v| counter(v.value())))
    }
}

impl Tx for WriteTable<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.insert(key, value).map(|_| ()).map_err(engine_err)
    }
}

struct ReadTable(redb::ReadOnlyTable<&'static [u8], &'static [u8]>);

impl Read for ReadTable {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let found = self.0.get(key).map_err(engine_err)?;
        Ok(found.map(|v| counter(v.value())))
    }
}

impl Engine for Redb {
    fn run(&self, command: Command<'_>) -> Result<()> {
        self.write(self.durability, command)
    }

    fn read(&self, query: Query<'_>) -> Result<()> {
        let tx = self.db.begin_read().map_err(engine_err)?;
        let table = tx.open_table(TABLE).map_err(engine_err)?;
        query(&mut ReadTable(table))
    }

    fn scan(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(engine_err)?;
        let table = tx.open_table(TABLE).map_err(engine_err)?;
        let mut n = 0;
        for item in table.iter().map_err(engine_err)? {
            let (k, v) = item.map_err(engine_err)?;
            n += u64::from(is_item(k.value()) && counter(v.value()) != u64::MAX);
        }
        Ok(n)
    }

    fn load(&self, items: std::ops::Range<u64>) -> Result<()> {
        self.write(self.durability, &mut |tx| {
            for i in items.clone() {
                tx.put(&key(i), &value(0, i))?;
            }
            Ok(())
        })
    }

    fn counters(&self) -> Counters {
        Counters::default()
    }

    fn settle(&self) -> Result<()> {
        // A durable commit persists the non-durable ones before it.
        self.write(Durability::Immediate, &mut |_| Ok(()))
    }
}
