//! shardstone: a transactional key-value engine for many-core, multi-socket servers.
//!
//! Application code runs inside the engine as **commands**: closures executed
//! atomically and serializably over a page-based MVCC store. Commands that touch
//! disjoint pages commit in parallel; commands that share a page conflict only when
//! a key one of them read (or a range it scanned) was changed by the other. A
//! command that loses a conflict re-runs on a fresh snapshot, and one that keeps
//! losing is escalated to a blocking queue where it is guaranteed to finish.
//!
//! ```
//! use shardstone::{Engine, Error, Result};
//!
//! fn decode(v: &[u8]) -> u64 { u64::from_le_bytes(v.try_into().unwrap()) }
//! fn encode(n: u64) -> [u8; 8] { n.to_le_bytes() }
//!
//! let engine = Engine::in_memory()?;
//!
//! // A command: atomic, serializable, re-run on conflict.
//! let balance = engine.run("deposit", |tx| {
//!     let old = tx.get(b"acct:7")?.map(|v| decode(&v)).unwrap_or(0);
//!     tx.put(b"acct:7", &encode(old + 10))?;
//!     Ok(old + 10)
//! })?;
//! assert_eq!(balance, 10);
//!
//! // Returning an error rolls the command back.
//! let refused: Result<()> = engine.run("withdraw", |tx| {
//!     tx.put(b"acct:7", &encode(0))?;
//!     Err(Error::abort("insufficient funds"))
//! });
//! assert!(refused.is_err());
//!
//! // Snapshots read without blocking or conflicting.
//! let snap = engine.snapshot();
//! assert_eq!(snap.get(b"acct:7")?.map(|v| decode(&v)), Some(10));
//! for item in snap.range(b"acct:".as_slice()..b"acct;".as_slice()) {
//!     let (key, value) = item?;
//!     assert_eq!((key.as_slice(), decode(&value)), (&b"acct:7"[..], 10));
//! }
//!
//! // Counters and sequences merge at commit: commands adding to one counter, or
//! // taking ids from one sequence, never conflict.
//! let order = engine.run("order", |tx| {
//!     let id = tx.next_in_sequence(b"seq:orders")?;
//!     tx.put(format!("order:{id:012}").as_bytes(), b"2 widgets")?;
//!     tx.add(b"orders:count", 1)?;
//!     Ok(id)
//! })?;
//! assert_eq!(order, 1);
//! let count = engine.snapshot().get(b"orders:count")?.map(|v| i64::from_le_bytes(v[..].try_into().unwrap()));
//! assert_eq!(count, Some(1));
//!
//! let stats = engine.stats();
//! assert_eq!((stats.commits, stats.errors), (2, 1));
//! # Ok::<(), Error>(())
//! ```
//!
//! See `docs/architecture.md` for the page, version and validation design.
//!
//! **Logs and metrics.** The engine emits `tracing` events (target `shardstone`)
//! and prints nothing itself: install a subscriber to see them.
//! [`Stats::to_prometheus`] renders the statistics for a Prometheus scrape; the
//! `serde` cargo feature makes [`Stats`] `Serialize`. `docs/operations.md`, "Logs
//! and metrics", lists the events and the metrics.

#![deny(missing_docs)]
// Thread-locals go through `sync::thread_local!`, which is loom's under `cfg(loom)`;
// loom's macro takes no `const { .. }` initializers.
#![allow(clippy::missing_const_for_thread_local)]

mod backup;
mod command;
mod engine;
mod error;
mod feed;
mod journal;
pub mod numa;
mod options;
#[cfg(feature = "serde")]
mod serialize;
mod store;
mod sync;
mod txn;
mod verify;

pub use backup::{restore, BackupInfo, RestoreInfo, RestoreTo};
pub use command::{
    Affinity, BlockingQueueStats, CommandHandle, CommandStats, HotKey, HotPage, RunEnding,
    SlowCommand, Stats, StormSignal, OTHER_COMMANDS, SLOW_COMMANDS_KEPT,
};
pub use engine::Engine;
pub use error::{Error, Result};
pub use feed::{ConsumerStats, Feed, FeedControl, StateDigest};
pub use journal::{
    ChainHash, CommitRecord, Fate, FaultKind, FaultyIo, Filter, Io, JournalEntry, JournalReader,
    JournalStats, Op, OsIo, PowerLossIo, Records, RecoveryReport, Salvage, Search, MAX_COMMIT_ID,
};
pub use options::{
    AutoCheckpoint, Durability, Escalation, Options, Retention, StormThresholds, MAX_KEY_LEN,
};

/// The group-commit protocol, exposed to the loom models only (its file work is
/// passed in, so a model runs it with a simulated disk).
#[cfg(loom)]
#[doc(hidden)]
pub use journal::{Group, Waited};
/// The visibility clock, exposed to the loom models only.
#[cfg(loom)]
#[doc(hidden)]
pub use store::ClockModel;
pub use store::{PageId, Snapshot, SnapshotRange, StoreStats, Value};
pub use txn::{CommitId, Footprint, Tx, TxRange};
pub use verify::{
    stat_dir, verify_dir, CheckpointStat, ConsumerPosition, DirStat, Finding, FindingKind,
    VerifyReport,
};
