//! shardstone: commands through `Engine::run` (its own retries and escalation),
//! reads through `Engine::snapshot`. Conflicts, retries and escalations come
//! from `Engine::stats`, the counters an operator would read.
//!
//! `Tx::add` and `Tx::next_id` are shardstone's `tx.add` and
//! `tx.next_in_sequence` (merged at commit, no read dependency). With the
//! `base-api` feature the adapter builds against shardstone from before they
//! existed (commit c0dc136, page-level validation): both fall back to the
//! trait's read-modify-write, and `page_changes_resolved` is not reported.
//!
//! Two engines of the harness are this adapter: `shardstone` (the default
//! `Escalation::KeyLocks`) and `shardstone-bedrock` (`Escalation::StopTheWorld`,
//! Bedrock's blocking queue). shardstone's `Error::Timeout`, `Deadlock` and
//! `Overloaded` are documented outcomes of a command, not failures of the run:
//! they come back as [`Error::Refused`] and the cell counts them. The
//! `base-api` build predates both the policies and those errors; there,
//! `shardstone-bedrock` is the same engine as `shardstone` (whose only policy
//! then was the stop-the-world one).

use super::{engine_err, Command, Counters, Engine, Error, Query, Read, Result, Tier, Tx};
use crate::keys::{counter, is_item, key, value};
use shardstone::{Durability, Options};
use std::path::Path;

/// A shardstone database opened from a directory.
pub struct Shardstone {
    engine: shardstone::Engine,
}

impl Shardstone {
    /// Opens `dir` with the tier's durability and otherwise default options
    /// (4 KiB pages, escalation after 3 conflicts, one journal shard per CPU),
    /// escalating as Bedrock does (stop the world) when `bedrock`.
    pub fn open(dir: &Path, tier: Tier, bedrock: bool) -> Result<Shardstone> {
        let durability = match tier {
            Tier::NoSync => Durability::Buffered,
            Tier::SyncEachCommit => Durability::Durable,
        };
        #[cfg(not(feature = "base-api"))]
        let escalation = if bedrock {
            shardstone::Escalation::StopTheWorld
        } else {
            shardstone::Escalation::KeyLocks
        };
        #[cfg(feature = "base-api")]
        let _ = bedrock;
        let opts = Options {
            durability,
            #[cfg(not(feature = "base-api"))]
            escalation,
            ..Default::default()
        };
        let engine = shardstone::Engine::open_with(dir, opts).map_err(engine_err)?;
        Ok(Shardstone { engine })
    }
}

/// The adapter's view of a running command.
struct CommandTx<'a, 'e>(&'a mut shardstone::Tx<'e>);

impl Read for CommandTx<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.0.get(key).map_err(engine_err)?.map(|v| counter(&v)))
    }
}

impl Tx for CommandTx<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.put(key, value).map_err(engine_err)
    }

    #[cfg(not(feature = "base-api"))]
    fn add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        self.0.add(key, delta).map_err(engine_err)
    }

    #[cfg(not(feature = "base-api"))]
    fn next_id(&mut self, key: &[u8]) -> Result<u64> {
        self.0.next_in_sequence(key).map_err(engine_err)
    }
}

struct SnapshotRead(shardstone::Snapshot);

impl Read for SnapshotRead {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.0.get(key).map_err(engine_err)?.map(|v| counter(&v)))
    }
}

/// A command's own error travels through shardstone as an abort.
fn into_shardstone(e: Error) -> shardstone::Error {
    shardstone::Error::abort(e.to_string())
}

/// shardstone's error from `run`: its documented refusals apart, the rest as is.
fn from_shardstone(e: shardstone::Error) -> Error {
    #[cfg(not(feature = "base-api"))]
    match e {
        shardstone::Error::Timeout { .. } => return Error::Refused(super::Refusal::Timeout),
        shardstone::Error::Deadlock { .. } => return Error::Refused(super::Refusal::Deadlock),
        shardstone::Error::Overloaded { .. } => return Error::Refused(super::Refusal::Overloaded),
        _ => {}
    }
    engine_err(e)
}

/// The blocking queue's lock waits, timeouts and deadlocks (none before the
/// key-lock escalation: the `base-api` build).
fn lock_waits(stats: &shardstone::Stats) -> Counters {
    #[cfg(not(feature = "base-api"))]
    let queue = &stats.blocking_queue;
    #[cfg(not(feature = "base-api"))]
    return Counters {
        lock_waits: queue.lock_waits,
        lock_wait_ns: u64::try_from(queue.lock_wait_time.as_nanos()).unwrap_or(u64::MAX),
        timeouts: queue.timeouts,
        deadlocks: queue.deadlocks,
        ..Counters::default()
    };
    #[cfg(feature = "base-api")]
    {
        let _ = stats;
        Counters::default()
    }
}

impl Engine for Shardstone {
    fn run(&self, command: Command<'_>) -> Result<()> {
        self.engine
            .run("command", |tx| {
                command(&mut CommandTx(tx)).map_err(into_shardstone)
            })
            .map_err(from_shardstone)
    }

    fn read(&self, query: Query<'_>) -> Result<()> {
        query(&mut SnapshotRead(self.engine.snapshot()))
    }

    fn scan(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.engine.snapshot().range(..) {
            let (k, v) = item.map_err(engine_err)?;
            n += u64::from(is_item(&k) && counter(&v) != u64::MAX);
        }
        Ok(n)
    }

    fn load(&self, items: std::ops::Range<u64>) -> Result<()> {
        self.engine
            .run("load", |tx| {
                for i in items.clone() {
                    tx.put(&key(i), &value(0, i))?;
                }
                Ok(())
            })
            .map_err(engine_err)
    }

    fn counters(&self) -> Counters {
        let stats = self.engine.stats();
        Counters {
            conflicts: stats.conflicts,
            retries: stats.retries,
            escalations: stats.escalations,
            #[cfg(not(feature = "base-api"))]
            page_changes_resolved: Some(stats.page_changes_resolved),
            #[cfg(feature = "base-api")]
            page_changes_resolved: None,
            ..lock_waits(&stats)
        }
    }

    fn queue_depth(&self) -> Option<u64> {
        Some(self.engine.stats().blocking_queue.depth)
    }

    fn settle(&self) -> Result<()> {
        self.engine.checkpoint().map(|_| ()).map_err(engine_err)
    }
}
