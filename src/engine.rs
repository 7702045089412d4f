//! `Engine`: one open database. Wires the store and the command executor together.

use crate::command::{Executor, Stats};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::store::{Snapshot, Store};
use crate::sync::Arc;
use crate::txn::{CommitId, Tx};
use std::path::Path;

/// One open database: the page store plus the command executor.
///
/// `Engine` is `Send + Sync`; share it between threads by reference or in an `Arc`.
///
/// ```
/// use shardstone::Engine;
/// let engine = Engine::in_memory()?;
/// std::thread::scope(|s| {
///     for t in 0..2u8 {
///         let engine = &engine;
///         s.spawn(move || engine.run("write", |tx| tx.put(&[t], b"x")).unwrap());
///     }
/// });
/// assert_eq!(engine.stats().commits, 2);
/// # Ok::<(), shardstone::Error>(())
/// ```
pub struct Engine {
    store: Arc<Store>,
    executor: Executor,
}

impl Engine {
    /// Opens (or creates) a durable database in `dir` with default options.
    ///
    /// Durable storage arrives with the journal; until then this returns
    /// [`Error::Unsupported`] rather than pretending to persist anything.
    pub fn open(dir: impl AsRef<Path>) -> Result<Engine> {
        Engine::open_with(dir, Options::default())
    }

    /// Opens (or creates) a durable database in `dir`. See [`Engine::open`].
    pub fn open_with(dir: impl AsRef<Path>, opts: Options) -> Result<Engine> {
        opts.validate()?;
        let _ = dir.as_ref();
        Err(Error::Unsupported("durable engines (Engine::open) need the journal, which is not built yet; use Engine::in_memory"))
    }

    /// A database that lives in memory only, with default options.
    pub fn in_memory() -> Result<Engine> {
        Engine::in_memory_with(Options::default())
    }

    /// A database that lives in memory only.
    pub fn in_memory_with(opts: Options) -> Result<Engine> {
        let store = Arc::new(Store::new(&opts)?);
        Ok(Engine {
            store,
            executor: Executor::new(opts.max_conflicts, opts.hot_pages_tracked),
        })
    }

    /// Runs the command `f` atomically and serializably, and returns its result.
    ///
    /// `f` may run more than once (after a conflict it re-runs on a fresh snapshot),
    /// so it must have no effects outside `tx`. Returning `Err` rolls everything
    /// back and returns that error. A panic in `f` rolls back and resumes on the
    /// caller; the engine stays usable. After `Options::max_conflicts` conflicts
    /// the command is escalated to the blocking queue, where it is guaranteed to
    /// commit. Calling `run` on the same engine from inside `f` is
    /// [`Error::NestedRun`].
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// let n = engine.run("incr", |tx| {
    ///     let n = tx.get(b"n")?.map_or(0, |v| v[0]) + 1;
    ///     tx.put(b"n", &[n])?;
    ///     Ok(n)
    /// })?;
    /// assert_eq!(n, 1);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn run<T, F>(&self, name: &str, f: F) -> Result<T>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        self.executor.run(&self.store, name, f)
    }

    /// A read-only view at the newest commit. Never blocks writers, never conflicts.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.store.clone())
    }

    /// The newest commit id visible to snapshots (0 before the first commit).
    pub fn commit_id(&self) -> CommitId {
        CommitId(self.store.clock.visible())
    }

    /// Counters: commits, conflicts, retries, escalations, the blocking queue,
    /// per-command figures, the most conflicted pages, and store memory.
    pub fn stats(&self) -> Stats {
        // Free what is already unreachable, so `pinned_versions` counts only what
        // snapshots really hold.
        self.store.collect();
        self.executor
            .telemetry
            .snapshot(self.store.clock.visible(), self.store.stats())
    }

    #[cfg(test)]
    pub(crate) fn store_for_tests(&self) -> &Store {
        &self.store
    }

    /// Frees every old page version no snapshot can reach any more, now, instead of
    /// waiting for later commits to do it; returns how many pieces were freed.
    pub fn collect_garbage(&self) -> u64 {
        self.store.collect()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("commit_id", &self.store.clock.visible())
            .finish()
    }
}
