//! `Engine`: one open database. Wires the store and the command executor together.

use crate::command::{
    self, Affinity, CommandHandle, Executor, SlowCommand, Stats, StormSignal, Workers,
};
use crate::error::Result;
#[cfg(doc)]
use crate::feed::FeedControl;
use crate::feed::{self, Consumers, Feed};
#[cfg(doc)]
use crate::journal::FaultyIo;
use crate::journal::{
    AutoStats, ChainHash, CheckpointTarget, Checkpointer, CommitRecord, Io, Journal, Loader, OsIo,
    STOP_CHECK_ENTRIES,
};
use crate::numa::{Layout, Placement};
#[cfg(doc)]
use crate::options::Durability;
use crate::options::Options;
use crate::store::{Builder, Snapshot, Store};
use crate::sync::{Arc, Mutex};
use crate::txn::{CommitId, Tx};
use crate::Error;
use std::path::Path;
use std::time::{Duration, Instant};

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
    executor: std::sync::Arc<Executor>,
    journal: std::sync::Arc<Journal>,
    layout: std::sync::Arc<Layout>,
    workers: std::sync::Arc<Workers>,
    consumers: Consumers,
    /// Serializes `apply` on a follower.
    applying: Mutex<()>,
    /// The background checkpoint thread (`Options::auto_checkpoint`), if any;
    /// stopped before the journal closes.
    checkpointer: Option<Checkpointer>,
    closed: bool,
}

/// Writes a checkpoint of `store` into `journal` from a snapshot; gives up
/// with an error once `stop()` says so (checked every few entries).
fn write_checkpoint(
    store: &Arc<Store>,
    journal: &Journal,
    stop: &dyn Fn() -> bool,
) -> Result<CommitId> {
    let mark = journal.prepare_checkpoint()?;
    let snap = Snapshot::new(store.clone());
    let at = snap.commit_id().get();
    let mut n = 0u64;
    let entries = snap.range(..).map(|entry| {
        n += 1;
        if n.is_multiple_of(STOP_CHECK_ENTRIES) && stop() {
            return Err(Error::Unsupported(
                "checkpoint abandoned: the engine is closing",
            ));
        }
        entry
    });
    journal.checkpoint(at, mark, entries).map(CommitId)
}

/// What the background checkpoint thread works on.
struct AutoTarget {
    store: Arc<Store>,
    journal: std::sync::Arc<Journal>,
}

impl CheckpointTarget for AutoTarget {
    fn checkpoint_id(&self) -> u64 {
        self.journal.checkpoint_id()
    }
    fn since_checkpoint_bytes(&self) -> u64 {
        self.journal.since_checkpoint_bytes()
    }
    fn visible(&self) -> u64 {
        self.store.clock.visible()
    }
    fn stats(&self) -> &AutoStats {
        &self.journal.auto
    }
    fn checkpoint(&self, stop: &dyn Fn() -> bool) -> Result<u64> {
        write_checkpoint(&self.store, &self.journal, stop).map(|id| id.get())
    }
}

/// Builds the store from the recovered state (the checkpoint merged with the
/// journal after it), bottom-up in one pass.
struct StoreLoader<'s> {
    store: &'s Store,
    builder: Option<Builder<'s>>,
    last_id: u64,
}

impl Loader for StoreLoader<'_> {
    fn start(&mut self, last_id: u64) -> Result<()> {
        self.last_id = last_id;
        self.builder = Some(Builder::new(self.store, last_id));
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.builder
            .as_mut()
            .expect("start comes before put")
            .push(key, value)
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(builder) = self.builder.take() {
            builder.finish()?;
        }
        self.store.clock.resume(self.last_id);
        Ok(())
    }
}

impl Engine {
    /// Opens (or creates) the database in directory `dir` with default options:
    /// durable commits ([`Durability::Durable`]).
    ///
    /// Opening loads the newest checkpoint and replays the journal after it. A
    /// crash mid-append leaves a torn tail, which is cut off; any other damage is
    /// [`Error::Corrupt`], naming the file, the offset and the commit. The
    /// directory stays locked until the engine is dropped: a second open, from
    /// this process or another, is [`Error::Locked`].
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("shardstone-doc-open-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// {
    ///     let engine = shardstone::Engine::open(&dir)?;
    ///     engine.run("put", |tx| tx.put(b"k", b"v"))?;
    /// }
    /// let engine = shardstone::Engine::open(&dir)?;
    /// assert_eq!(engine.snapshot().get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # drop(engine);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Engine> {
        Engine::open_with(dir, Options::default())
    }

    /// Opens (or creates) the database in `dir`. See [`Engine::open`].
    pub fn open_with(dir: impl AsRef<Path>, opts: Options) -> Result<Engine> {
        Engine::open_with_io(dir, opts, std::sync::Arc::new(OsIo))
    }

    /// Opens the database in `dir` for reading only, sharing it with other
    /// read-only opens (never with a writer). Nothing on disk is changed, not even
    /// a torn tail; commands that write get [`Error::ReadOnly`].
    pub fn open_read_only(dir: impl AsRef<Path>, opts: Options) -> Result<Engine> {
        Engine::open_inner(dir.as_ref(), opts, std::sync::Arc::new(OsIo), true)
    }

    /// [`Engine::open_with`], doing every file operation of the journal and of
    /// checkpoints through `io`: for fault injection ([`FaultyIo`]) or
    /// instrumentation.
    pub fn open_with_io(
        dir: impl AsRef<Path>,
        opts: Options,
        io: std::sync::Arc<dyn Io>,
    ) -> Result<Engine> {
        Engine::open_inner(dir.as_ref(), opts, io, false)
    }

    fn open_inner(
        dir: &Path,
        opts: Options,
        io: std::sync::Arc<dyn Io>,
        read_only: bool,
    ) -> Result<Engine> {
        // Recovery's events (journal/mod.rs) happen inside it.
        let _open =
            tracing::info_span!(target: "shardstone", "open", dir = %dir.display(), read_only)
                .entered();
        opts.validate()?;
        let shards = if Journal::writes_files(&opts, read_only) {
            (opts.journal_shards > 0).then_some(opts.journal_shards)
        } else {
            Some(0)
        };
        let layout = Engine::layout(&opts, shards);
        let store = Arc::new(Store::with_home(&opts, layout.clone(), layout.cpu_count())?);
        let mut loader = StoreLoader {
            store: &store,
            builder: None,
            last_id: 0,
        };
        let (journal, last) = Journal::open(dir, &opts, io, read_only, layout.clone(), &mut loader)
            .inspect_err(|e| tracing::error!(target: "shardstone", error = %e, "open failed"))?;
        drop(loader);
        debug_assert_eq!(store.clock.visible(), last);
        // Versions replaced during the load are unreachable now.
        store.collect();
        let mut engine = Engine::assemble(store, journal, layout, &opts);
        if let (Some(policy), false) = (opts.auto_checkpoint, read_only) {
            let target = AutoTarget {
                store: engine.store.clone(),
                journal: engine.journal.clone(),
            };
            let thread = Checkpointer::start(policy, target).map_err(|source| Error::Io {
                op: "start the checkpoint thread",
                path: dir.to_owned(),
                source,
            })?;
            engine.checkpointer = Some(thread);
        }
        Ok(engine)
    }

    fn layout(opts: &Options, shards: Option<usize>) -> std::sync::Arc<Layout> {
        std::sync::Arc::new(Layout::new(
            &opts.numa,
            shards,
            opts.workers,
            opts.page_placement,
        ))
    }

    fn assemble(
        store: Arc<Store>,
        journal: Journal,
        layout: std::sync::Arc<Layout>,
        opts: &Options,
    ) -> Engine {
        Engine {
            store,
            executor: std::sync::Arc::new(Executor::new(opts, layout.shards())),
            journal: std::sync::Arc::new(journal),
            workers: std::sync::Arc::new(Workers::new(layout.clone())),
            layout,
            consumers: Consumers::default(),
            applying: Mutex::new(()),
            checkpointer: None,
            closed: false,
        }
    }

    /// A database that lives in memory only, with default options.
    pub fn in_memory() -> Result<Engine> {
        Engine::in_memory_with(Options::default())
    }

    /// A database that lives in memory only. It has no files, so
    /// `Options::durability` does not apply: commits are kept in memory only.
    pub fn in_memory_with(opts: Options) -> Result<Engine> {
        opts.validate()?;
        let layout = Engine::layout(&opts, Some(0));
        let store = Arc::new(Store::with_home(&opts, layout.clone(), layout.cpu_count())?);
        let journal = Journal::in_memory(&opts, layout.clone());
        Ok(Engine::assemble(store, journal, layout, &opts))
    }

    /// Runs the command `f` atomically and serializably, and returns its result.
    ///
    /// `f` may run more than once (after a conflict it re-runs on a fresh snapshot),
    /// so it must have no effects outside `tx`. Returning `Err` rolls everything
    /// back and returns that error. A panic in `f` rolls back and resumes on the
    /// caller; the engine stays usable. After `Options::max_conflicts` conflicts
    /// the command is escalated (see [`crate::Escalation`]): by default it re-runs
    /// holding locks on the keys it touched, so it cannot lose again on them, while
    /// commands on other keys go on. A command that would write a key an escalated
    /// command holds waits for that key, at most `Options::lock_wait`
    /// ([`Error::Timeout`]; [`Error::Deadlock`] when waits form a cycle). Calling
    /// `run` on the same engine from inside `f` is [`Error::NestedRun`].
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
        self.executor
            .run(&self.store, &self.journal, name, None, None, f)
    }

    /// [`Engine::run`], also returning the id of the commit the command made:
    /// `None` when it wrote nothing (a read-only command commits nothing and
    /// takes no id). The id is the one the journal and every feed record for
    /// this commit ([`CommitRecord::commit_id`]), whichever path the command
    /// took: optimistic, or escalated to the blocking queue. As with `run`, the
    /// commit is visible, and as durable as `Options::durability` asks, when this
    /// returns; hand the id to [`Engine::wait_for`] on a follower to read your
    /// own writes there.
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// let (n, id) = engine.run_with_id("put", |tx| {
    ///     tx.put(b"k", b"v")?;
    ///     Ok(1)
    /// })?;
    /// assert_eq!(n, 1);
    /// // The journal, and so every feed, records the same id.
    /// let rec = engine.subscribe(0)?.next().unwrap()?;
    /// assert_eq!(id, Some(rec.commit_id));
    /// // A read-only command commits nothing.
    /// let (v, none) = engine.run_with_id("get", |tx| tx.get(b"k"))?;
    /// assert_eq!((v.as_deref(), none), (Some(&b"v"[..]), None));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn run_with_id<T, F>(&self, name: &str, f: F) -> Result<(T, Option<CommitId>)>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        self.executor
            .run_with_id(&self.store, &self.journal, name, None, None, f)
    }

    /// Runs the command `f` on one of the engine's worker threads, pinned one per
    /// CPU, and returns at once with a handle to wait on. Otherwise as
    /// [`Engine::run`]: `f` may run more than once, and a panic in it rolls back
    /// and comes back as [`Error::Panicked`]. The command runs on the node of the
    /// CPU that submits it; see [`Engine::submit_to`] to choose.
    ///
    /// Workers start on the first submit (`Options::workers` of them, one per CPU
    /// by default). Dropping the engine runs every queued command first. A command
    /// must not wait on another submitted command: with every worker waiting,
    /// nothing would run.
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// let pending = engine.submit("put", |tx| tx.put(b"k", b"v"))?;
    /// pending.wait()?;
    /// assert_eq!(engine.snapshot().get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn submit<T, F>(&self, name: &str, f: F) -> Result<CommandHandle<T>>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit_to(name, Affinity::Any, f)
    }

    /// [`Engine::submit`] on the node `affinity` names: a node, or the node whose
    /// memory holds a key's page (route a tenant's commands by one of its keys).
    /// A node without CPUs in the topology is [`Error::UnknownNode`].
    ///
    /// ```
    /// use shardstone::{Affinity, Engine};
    /// let engine = Engine::in_memory()?;
    /// let node = engine.placement().shards.first().map_or(0, |s| s.node);
    /// engine.submit_to("put", Affinity::Node(node), |tx| tx.put(b"k", b"v"))?.wait()?;
    /// engine.submit_to("get", Affinity::Key(b"k".to_vec()), |tx| tx.get(b"k"))?.wait()?;
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn submit_to<T, F>(
        &self,
        name: &str,
        affinity: Affinity,
        mut f: F,
    ) -> Result<CommandHandle<T>>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit_job(name, affinity, move |executor, store, journal, name| {
            executor.run(store, journal, name, None, None, &mut f)
        })
    }

    /// [`Engine::submit`], whose handle gives the command's value together with
    /// the id of its commit, as [`Engine::run_with_id`] does (`None` for a
    /// command that wrote nothing).
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// let pending = engine.submit_with_id("put", |tx| tx.put(b"k", b"v"))?;
    /// let ((), id) = pending.wait()?;
    /// assert_eq!(id, Some(engine.commit_id()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn submit_with_id<T, F>(
        &self,
        name: &str,
        mut f: F,
    ) -> Result<CommandHandle<(T, Option<CommitId>)>>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit_job(
            name,
            Affinity::Any,
            move |executor, store, journal, name| {
                executor.run_with_id(store, journal, name, None, None, &mut f)
            },
        )
    }

    /// Queues `job` on a worker of the node `affinity` names; a panic in it
    /// comes back through the handle as [`Error::Panicked`].
    fn submit_job<R, J>(&self, name: &str, affinity: Affinity, job: J) -> Result<CommandHandle<R>>
    where
        J: FnOnce(&Executor, &Store, &Journal, &str) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let domain =
            match &affinity {
                Affinity::Any => None,
                Affinity::Node(node) => Some(self.layout.domain_of_node(*node).ok_or_else(
                    || Error::UnknownNode {
                        node: *node,
                        nodes: self.layout.plan().domain_nodes.clone(),
                    },
                )?),
                Affinity::Key(key) => {
                    if key.len() > crate::MAX_KEY_LEN {
                        return Err(Error::KeyTooLarge {
                            len: key.len(),
                            max: crate::MAX_KEY_LEN,
                        });
                    }
                    self.store.domain_of_key(key)
                }
            };
        let (handle, complete) = command::handle();
        let (store, journal, executor) = (
            self.store.clone(),
            self.journal.clone(),
            self.executor.clone(),
        );
        let name = name.to_owned();
        self.workers.submit(
            domain,
            Box::new(move || {
                let run = std::panic::AssertUnwindSafe(|| job(&executor, &store, &journal, &name));
                let result = std::panic::catch_unwind(run).unwrap_or_else(|p| {
                    Err(Error::Panicked {
                        message: command::panic_message(&*p),
                        command: name.clone(),
                    })
                });
                complete(result);
            }),
        )?;
        Ok(handle)
    }

    /// Where the engine's journal shards, workers and page arenas live: shard →
    /// CPU → node, worker → CPU, arena → node, and any binding the operating
    /// system refused. See `docs/numa.md`.
    pub fn placement(&self) -> Placement {
        let mut p = self.layout.placement();
        p.workers_started = self.workers.started();
        for (place, (memory, segment)) in p.shards.iter_mut().zip(self.journal.shard_memory()) {
            place.memory = memory;
            place.segment = segment;
        }
        for (arena, mappings) in p.arenas.iter_mut().zip(self.store.arena_mappings()) {
            arena.mappings = mappings;
        }
        p
    }

    /// Runs the command `f` escalated from the start, without optimistic
    /// attempts: for a command that must not lose (a long scan, a bulk rewrite).
    /// Under [`crate::Escalation::KeyLocks`] (the default) it locks each key and
    /// range as it first touches it and commits holding them; commands on other
    /// keys go on meanwhile, and commands that write a key it holds wait for that
    /// key. If it still loses (another commit changed a key between its snapshot
    /// and its lock), it re-runs holding everything it touched; after a few such
    /// runs it runs alone. Under `StopTheWorld` it runs alone with exclusive commit
    /// rights. Counted as an escalation. Otherwise as [`Engine::run`].
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run_blocking("rebuild", |tx| tx.put(b"k", b"v"))?;
    /// assert_eq!(engine.stats().escalations, 1);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn run_blocking<T, F>(&self, name: &str, f: F) -> Result<T>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        self.executor
            .run(&self.store, &self.journal, name, Some(0), None, f)
    }

    /// As [`Engine::run`], with a deadline on everything the command may wait for:
    /// admission to the blocking queue if it escalates ([`Error::Overloaded`] when
    /// the queue is full or the deadline passes), keys held by escalated commands
    /// and exclusive commit rights ([`Error::Timeout`]). The command itself is not
    /// interrupted: a deadline bounds waiting, not work.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let engine = shardstone::Engine::in_memory()?;
    /// let deadline = Instant::now() + Duration::from_millis(100);
    /// engine.run_with_deadline("put", deadline, |tx| tx.put(b"k", b"v"))?;
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn run_with_deadline<T, F>(&self, name: &str, deadline: Instant, f: F) -> Result<T>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T>,
    {
        self.executor
            .run(&self.store, &self.journal, name, None, Some(deadline), f)
    }

    /// A read-only view at the newest commit. Never blocks writers, never conflicts.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.store.clone())
    }

    /// The newest commit id visible to snapshots (0 before the first commit).
    pub fn commit_id(&self) -> CommitId {
        CommitId(self.store.clock.visible())
    }

    /// Waits until commit `id` is visible here, at most `timeout`: true once it
    /// is (at once if it already was), false when the time ran out first.
    ///
    /// Visible is acknowledged: under [`Durability::Durable`] a commit becomes
    /// visible only once its journal record is synced, so `true` means `id` and
    /// every commit before it are as durable as `Options::durability` asks. On a
    /// follower the commits arrive through [`Engine::apply`], so this is how a
    /// reader waits for a follower to catch up with a commit id the leader
    /// returned ([`Engine::run_with_id`]). When a record at or before `id`
    /// failed to persist (a failed write or sync), `id` never becomes visible:
    /// [`Error::Halted`], at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shardstone::{Engine, Options};
    /// let leader = Engine::in_memory()?;
    /// let follower = Engine::in_memory_follower(Options::default())?;
    /// let ((), id) = leader.run_with_id("put", |tx| tx.put(b"k", b"v"))?;
    /// let id = id.expect("a write commits");
    /// assert!(!follower.wait_for(id, Duration::from_millis(1))?);
    /// for rec in leader.subscribe(0)?.take(1) {
    ///     follower.apply(&rec?)?;
    /// }
    /// assert!(follower.wait_for(id, Duration::from_secs(10))?);
    /// assert_eq!(follower.snapshot().get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn wait_for(&self, id: impl Into<CommitId>, timeout: Duration) -> Result<bool> {
        // A commit's installer wakes waiters, but the watermark may pass `id`
        // later (another commit's sync): waits are sliced so none is missed for long.
        const SLICE: Duration = Duration::from_millis(10);
        let id = id.into().get();
        let deadline = Instant::now().checked_add(timeout);
        let clock = &self.store.clock;
        loop {
            if clock.visible() >= id {
                return Ok(true);
            }
            if clock.is_halted_at(id) {
                // A record at or before `id` failed to persist: never visible.
                return Err(self.journal.halted_error());
            }
            self.journal.check_writable(true).or_else(|e| match e {
                Error::ReadOnly => Ok(()),
                e => Err(e),
            })?;
            let slice = match deadline {
                None => SLICE,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    (d - now).min(SLICE)
                }
            };
            if self.journal.signal.is_closed() {
                // Closing: nothing more becomes visible; do not spin until the deadline.
                return Ok(clock.visible() >= id);
            }
            self.journal.signal.wait(slice, || clock.visible() >= id);
        }
    }

    /// The newest visible commit and its hash-chain hash: `(0, ChainHash::genesis())`
    /// before the first commit. Two engines with the same pair hold the same history.
    pub fn last_commit(&self) -> (CommitId, ChainHash) {
        loop {
            let id = self.store.clock.visible();
            // `None` only when the chain ran a whole ring past `id` meanwhile.
            if let Some(hash) = self.journal.hash_at(id) {
                return (CommitId(id), hash);
            }
        }
    }

    /// Writes a checkpoint: a durable image of the store at the newest commit,
    /// taken from a snapshot while commands keep running. Then deletes the previous
    /// checkpoint and the journal segments the new one makes unnecessary. Returns
    /// the checkpoint's commit id. Opening replays only the journal after it.
    ///
    /// A durable engine also checkpoints on its own, in the background, as
    /// `Options::auto_checkpoint` says.
    pub fn checkpoint(&self) -> Result<CommitId> {
        write_checkpoint(&self.store, &self.journal, &|| false)
    }

    /// Backs the database up into `dest` while commands keep running: a
    /// checkpoint from a snapshot, the journal after it up to the last commit
    /// (and, for [`crate::restore`], the older checkpoints kept by
    /// [`Options::pitr_retention`] with the journal after them). `dest` then
    /// opens with [`Engine::open`] as the database at [`BackupInfo::commit_id`].
    ///
    /// `dest` is created if missing; it must be empty or an earlier backup of
    /// this database (otherwise [`Error::NotADatabase`]). Into an earlier
    /// backup, only what changed is written: its checkpoint serves again while
    /// this engine has not checkpointed past it, and journal segments already
    /// there are skipped ([`BackupInfo::bytes_skipped`]). Every file is written
    /// under a temporary name, fsynced and renamed, the manifest last: an
    /// interrupted backup opens as an earlier state of this database or not at
    /// all. Checkpoints wait while a backup copies; commands do not.
    ///
    /// [`BackupInfo`]: crate::BackupInfo
    /// [`BackupInfo::commit_id`]: crate::BackupInfo::commit_id
    /// [`BackupInfo::bytes_skipped`]: crate::BackupInfo::bytes_skipped
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<crate::BackupInfo> {
        crate::backup::backup(self, &self.journal, dest.as_ref())
    }

    /// Every commit after `from`, in commit order: history first (from the
    /// journal files, or the in-memory window), then live commits as they become
    /// visible. See [`Feed`]. `from` may be at most the last commit (a feed from
    /// it waits for the next one); beyond it is [`Error::AheadOfLastCommit`],
    /// on a leader and on a follower alike.
    pub fn subscribe(&self, from: impl Into<CommitId>) -> Result<Feed> {
        Feed::new(
            self.store.clone(),
            self.journal.clone(),
            &self.consumers,
            from.into().get(),
            None,
        )
    }

    /// [`Engine::subscribe`] as the named consumer `name`, which holds a retention
    /// mark (like a replication slot): checkpoints keep the journal from its last
    /// [`Feed::ack`] on, up to `Options::retention_limit_bytes`, and across
    /// restarts. [`Engine::consumer_position`] says where it was. A `from` beyond
    /// the last commit is [`Error::AheadOfLastCommit`], and leaves the hold as it was.
    pub fn subscribe_as(&self, name: &str, from: impl Into<CommitId>) -> Result<Feed> {
        if name.is_empty() || name.contains(['\t', '\n', '\r']) {
            return Err(Error::InvalidOptions {
                option: "consumer name",
                reason: format!("{name:?} must be non-empty, without tabs or line breaks"),
            });
        }
        Feed::new(
            self.store.clone(),
            self.journal.clone(),
            &self.consumers,
            from.into().get(),
            Some(name),
        )
    }

    /// The last commit the named consumer acknowledged (its hold is just after
    /// it), including one recorded before a restart; `None` if there is no such
    /// consumer or its hold lapsed.
    pub fn consumer_position(&self, name: &str) -> Option<CommitId> {
        let hold = self.journal.hold_of(name)?;
        if hold.lapsed.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some(CommitId(
            hold.needed
                .load(std::sync::atomic::Ordering::SeqCst)
                .saturating_sub(1),
        ))
    }

    /// Verifies the engine without stopping it: the B+tree of a snapshot (key
    /// order, separator keys, every page reached once, page layouts, overflow
    /// chains), then its directory's files as [`crate::verify_dir`] does, and
    /// their hash chain against this engine's. Runs on a snapshot and reads
    /// files only: writers are never blocked, nothing is written. Damage is in
    /// the report's findings; see docs/operations.md, "Verifying a database".
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("put", |tx| tx.put(b"k", b"v"))?;
    /// let report = engine.verify()?;
    /// assert!(report.ok, "{report}");
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn verify(&self) -> Result<crate::VerifyReport> {
        let last = self.last_commit();
        let snapshot = self.snapshot();
        let journal = &self.journal;
        crate::verify::verify_engine(&snapshot, journal.dir(), last, &|id| journal.known_hash(id))
    }

    /// [`crate::stat_dir`] for this engine's directory, with the last commit
    /// and consumer positions as the engine knows them now.
    /// `Error::Unsupported` for an in-memory engine.
    pub fn stat(&self) -> Result<crate::DirStat> {
        let dir = self
            .journal
            .dir()
            .ok_or(Error::Unsupported("stat of an in-memory engine"))?;
        let last = self.last_commit();
        let checkpoint = self.journal.stats().checkpoint;
        let consumers = self
            .stats()
            .feed
            .iter()
            .filter_map(|c| {
                let name = c.name.clone()?;
                let position = self.consumer_position(&name)?;
                Some((name, position))
            })
            .collect();
        let hash = self
            .journal
            .known_hash(checkpoint)
            .unwrap_or(ChainHash::genesis());
        let store = self.stats().store;
        let live = crate::verify::LiveStat {
            pages: store.pages,
            oldest_snapshot: store
                .oldest_snapshot
                .map(CommitId)
                .zip(store.oldest_snapshot_age),
            placement: self.placement().shards,
        };
        crate::verify::stat_engine(dir, last, (checkpoint, hash), consumers, live)
    }

    /// Drops the named consumer's retention hold; false if it had none.
    pub fn release_consumer(&self, name: &str) -> bool {
        self.journal.release(name)
    }

    /// Pauses every feed of the named consumer (see [`FeedControl`]).
    pub fn pause_consumer(&self, name: &str) -> Result<()> {
        match self.consumers.set_paused(&self.journal, name, true) {
            true => Ok(()),
            false => Err(Error::UnknownConsumer(name.to_owned())),
        }
    }

    /// Resumes every feed of the named consumer.
    pub fn resume_consumer(&self, name: &str) -> Result<()> {
        match self.consumers.set_paused(&self.journal, name, false) {
            true => Ok(()),
            false => Err(Error::UnknownConsumer(name.to_owned())),
        }
    }

    /// Opens (or creates) the database in `dir` as a follower: it serves snapshots,
    /// changes only through [`Engine::apply`], and `run` on it returns
    /// [`Error::ReadOnly`] for commands that write.
    pub fn open_follower(dir: impl AsRef<Path>, opts: Options) -> Result<Engine> {
        let engine = Engine::open_with(dir, opts)?;
        engine.journal.set_follower(true);
        Ok(engine)
    }

    /// An in-memory follower. See [`Engine::open_follower`].
    pub fn in_memory_follower(opts: Options) -> Result<Engine> {
        let engine = Engine::in_memory_with(opts)?;
        engine.journal.set_follower(true);
        Ok(engine)
    }

    /// On a follower: applies the leader's record atomically, if and only if it is
    /// the next commit (`commit_id == last + 1`, else [`Error::Gap`]) and continues
    /// this engine's history (`prev_hash` equals our chain hash and the record
    /// hashes to its `hash`, else [`Error::Fork`]). Nothing is applied on an error.
    ///
    /// On an engine that is not (or no longer) a follower it is
    /// [`Error::Unsupported`]. Whether it is a follower is checked under the same
    /// lock [`Engine::promote`] takes, so a promotion either waits for an `apply`
    /// that passed the check or makes it fail with nothing applied.
    pub fn apply(&self, rec: &CommitRecord) -> Result<()> {
        feed::apply_point(feed::ApplyPoint::BeforeLock);
        let _one = self.applying.lock();
        if !self.journal.is_follower() {
            return Err(Error::Unsupported(
                "apply is for followers (Engine::open_follower); a leader commits with run",
            ));
        }
        feed::apply(&self.store, &self.journal, rec)
    }

    /// Makes a follower a leader at its last commit: `run` writes from now on and
    /// `apply` is refused. No-op on a leader. Waits for an `apply` in progress.
    pub fn promote(&self) {
        let _one = self.applying.lock();
        self.journal.set_follower(false);
    }

    /// Whether this engine is a follower.
    pub fn is_follower(&self) -> bool {
        self.journal.is_follower()
    }

    /// Closes the engine cleanly: syncs every journal shard, records the final
    /// watermark and trims the segment files. Dropping the engine does the same
    /// but cannot report a failure.
    pub fn close(mut self) -> Result<()> {
        if self.workers.is_own_worker() {
            // `self` drops on return, which closes once this command is done.
            return Err(Error::Unsupported(
                "close() from a command on the engine's own worker would wait for that \
                 command; the engine closes when dropped there instead",
            ));
        }
        self.closed = true;
        // Stopped first: no checkpoint runs while the journal closes.
        self.checkpointer.take();
        self.workers.stop();
        self.journal.close(self.store.clock.visible())
    }

    /// Counters: commits, conflicts, retries, escalations, the blocking queue,
    /// per-command figures, the most conflicted pages, and store memory.
    pub fn stats(&self) -> Stats {
        // Free what is already unreachable, so `pinned_versions` counts only what
        // snapshots really hold.
        self.store.collect();
        let telemetry = &self.executor.telemetry;
        let (mut stats, crossed) = telemetry.snapshot(
            self.store.clock.visible(),
            self.store.stats(),
            self.journal.stats(),
            self.consumers.stats(&self.store, &self.journal),
        );
        stats.blocking_queue.waiting = self.executor.admission_waiting() as u64;
        if let Some(signal) = crossed {
            telemetry.fire_storm(&signal);
        }
        stats
    }

    /// Registers `f` to be called with every command run that takes longer
    /// than `Options::slow_command` (retries and blocking-queue waits
    /// included), replacing any earlier callback. The same runs are listed in
    /// `Stats::slow_commands`.
    ///
    /// `f` is called on the thread that ran the command, after the run has
    /// finished and before `run` returns to its caller, with no engine lock
    /// held: it may read stats or run commands, but it delays that caller. A
    /// panic in `f` is caught and counted in `Stats::callback_panics`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// let opts = shardstone::Options {
    ///     slow_command: Some(Duration::from_millis(10)),
    ///     ..Default::default()
    /// };
    /// let engine = shardstone::Engine::in_memory_with(opts)?;
    /// let seen = Arc::new(AtomicU32::new(0));
    /// let counter = seen.clone();
    /// engine.on_slow_command(move |slow| {
    ///     assert_eq!(slow.name, "report");
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// engine.run("report", |tx| {
    ///     std::thread::sleep(Duration::from_millis(50));
    ///     tx.put(b"k", b"v")
    /// })?;
    /// assert_eq!(seen.load(Ordering::Relaxed), 1);
    /// assert_eq!(engine.stats().slow_commands[0].name, "report");
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn on_slow_command(&self, f: impl Fn(&SlowCommand) + Send + Sync + 'static) {
        self.executor
            .telemetry
            .slow
            .hook
            .set(std::sync::Arc::new(f));
    }

    /// Registers `f` to be called when the engine crosses into a retry storm
    /// (the thresholds of `Options::storm`), replacing any earlier callback.
    /// Edge-triggered: called once per crossing, and again only after the
    /// signal has been seen below the thresholds in between. `Stats::storm`
    /// shows the same figures at any time.
    ///
    /// `f` is called, with no engine lock held, on the thread whose run or
    /// `Engine::stats` call took the sample that crossed. A panic in `f` is
    /// caught and counted in `Stats::callback_panics`.
    pub fn on_storm(&self, f: impl Fn(&StormSignal) + Send + Sync + 'static) {
        self.executor.telemetry.on_storm.set(std::sync::Arc::new(f));
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

impl Drop for Engine {
    fn drop(&mut self) {
        // Stops and joins the background checkpoint thread: it abandons a
        // checkpoint in progress, so this is prompt.
        self.checkpointer.take();
        if self.workers.is_own_worker() {
            // The last owner was a command on one of this engine's workers. That
            // worker cannot wait for itself: another thread stops the workers
            // (each finishes what is queued, this one its current command first),
            // then closes the journal.
            let (workers, journal, store) = (
                self.workers.clone(),
                self.journal.clone(),
                self.store.clone(),
            );
            let close = move || {
                workers.stop();
                let _ = journal.close(store.clock.visible());
            };
            let spawned = std::thread::Builder::new()
                .name("shardstone-close".to_owned())
                .spawn(close);
            if spawned.is_err() {
                // No thread to spare: close now. Commands still queued on this
                // worker's node then run after the close mark.
                self.workers.stop();
                let _ = self.journal.close(self.store.clock.visible());
            }
            return;
        }
        self.workers.stop();
        if !self.closed {
            // Every acknowledged commit is already as durable as its level asked;
            // a failure here only loses the clean-close mark.
            let _ = self.journal.close(self.store.clock.visible());
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("commit_id", &self.store.clock.visible())
            .finish()
    }
}
