//! The journal: one logical redo record per commit, appended to the shard of the
//! committing CPU, hash-chained in commit order, made durable by group commit,
//! and replayed on open after the newest checkpoint.
//!
//! Invariants:
//! - the frames of one shard are in commit-id order (the id is taken under the
//!   shard lock), so recovery merges shards with one cursor each;
//! - a commit becomes visible only after its record is as durable as
//!   [`Durability`] asks, so the visible watermark is also the acknowledged one,
//!   and every frame records the watermark it saw (recovery uses it to tell a
//!   torn tail from damage);
//! - the hash chain is computed after the fact, over contiguous ids, by whichever
//!   committer finds the chain lock free: appends never wait on it;
//! - after a failed write or sync nothing more is acknowledged (the engine halts).
//!
//! Files in a database directory:
//! ```text
//! LOCK                                    flock, holder's pid
//! checkpoint-<commit id, 20 digits>.ckpt  the newest checkpoint
//! journal/s<shard>-<segment>.log          journal segments
//! ```

mod auto;
mod chain;
mod checkpoint;
mod copy;
mod group;
mod history;
pub(crate) mod inspect;
mod io;
mod lock;
mod manifest;
mod pitr;
mod power;
mod prepare;
mod reader;
mod record;
mod recovery;
mod shard;

pub(crate) use auto::{AutoStats, Checkpointer, Target as CheckpointTarget, STOP_CHECK_ENTRIES};
pub(crate) use chain::Retained;
pub(crate) use copy::restore as restore_files;
#[cfg(loom)]
pub use group::{Group, Waited};
pub(crate) use history::History;
pub use io::{FaultKind, FaultyIo, Io, OsIo};
pub use power::{Fate, PowerLossIo};
pub(crate) use reader::PITR_DIR;
pub use reader::{Filter, JournalEntry, JournalReader, Records, Search};
pub(crate) use record::{BodyView, Frame, FRAME_HEADER};
pub use record::{ChainHash, CommitRecord, Op, MAX_COMMIT_ID};
pub use recovery::{RecoveryReport, Salvage};

use crate::error::{Error, Result};
use crate::numa::{Layout, NodeBox};
use crate::options::{Durability, Options};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use chain::Chain;
use checkpoint::Checkpoint;
use lock::DirLock;
use shard::Shard;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Receives the recovered state: the store side of `open`.
pub(crate) trait Loader {
    /// Loading begins; the state loaded is as of commit `last_id`.
    fn start(&mut self, last_id: u64) -> Result<()>;
    /// The next entry of the recovered state, in strictly ascending key order.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Everything was put.
    fn finish(&mut self) -> Result<()>;
}

/// The writes replayed from the journal, copied out of the segments in commit
/// order, then reduced to the last write of each key, in key order.
#[derive(Default)]
struct Replayed {
    bytes: Vec<u8>,
    ops: Vec<ReplayedOp>,
}

struct ReplayedOp {
    /// The key's first 16 bytes, big-endian (zero-padded): most comparisons of
    /// the sort end here, without touching the key bytes.
    prefix: u128,
    /// Position in commit order, which decides between writes of one key.
    seq: usize,
    key: (usize, usize),
    /// `None`: a delete.
    value: Option<(usize, usize)>,
}

impl Replayed {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        let k = (self.bytes.len(), key.len());
        self.bytes.extend_from_slice(key);
        let value = value.map(|v| {
            let at = self.bytes.len();
            self.bytes.extend_from_slice(v);
            (at, v.len())
        });
        let mut p = [0u8; 16];
        let n = key.len().min(16);
        p[..n].copy_from_slice(&key[..n]);
        self.ops.push(ReplayedOp {
            prefix: u128::from_be_bytes(p),
            seq: self.ops.len(),
            key: k,
            value,
        });
    }

    fn key(&self, op: &ReplayedOp) -> &[u8] {
        &self.bytes[op.key.0..op.key.0 + op.key.1]
    }

    fn value(&self, op: &ReplayedOp) -> Option<&[u8]> {
        op.value.map(|(at, len)| &self.bytes[at..at + len])
    }

    /// Puts every reduced write from `*next` on whose key is below `bound` (all
    /// of them for `None`), skipping deletes; advances `*next` past them.
    fn put_below(
        &self,
        next: &mut usize,
        bound: Option<&[u8]>,
        loader: &mut dyn Loader,
    ) -> Result<()> {
        while let Some(op) = self.ops.get(*next) {
            if bound.is_some_and(|b| self.key(op) >= b) {
                break;
            }
            if let Some(v) = self.value(op) {
                loader.put(self.key(op), v)?;
            }
            *next += 1;
        }
        Ok(())
    }

    /// Sorts by key, keeping only the last write of each key (in commit order).
    fn reduce(&mut self) {
        let mut ops = std::mem::take(&mut self.ops);
        ops.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| self.key(a).cmp(self.key(b)))
                .then(a.seq.cmp(&b.seq))
        });
        let mut out: Vec<ReplayedOp> = Vec::with_capacity(ops.len());
        for op in ops {
            match out.last_mut() {
                Some(last) if self.key(last) == self.key(&op) => *last = op,
                _ => out.push(op),
            }
        }
        self.ops = out;
    }
}

/// Where a commit's record went, to wait on its durability.
pub(crate) struct Ticket {
    id: u64,
    shard: Option<usize>,
}

impl Ticket {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The shard whose sync the commit needs before it may become visible
    /// (`None` below `Durable`).
    pub(crate) fn shard(&self) -> Option<usize> {
        self.shard
    }
}

/// A journal segment that is no longer appended to: deletable once a checkpoint
/// covers `last_id` and no retention hold needs it.
struct Retired {
    shard: usize,
    seq: u64,
    path: PathBuf,
    /// The last commit in it (0: none).
    last_id: u64,
    /// Bytes written to it (header and frames): what it costs a retention hold,
    /// whatever size the file was preallocated to.
    used: u64,
}

impl Retired {
    fn listed(&self) -> manifest::Listed {
        manifest::Listed {
            shard: self.shard,
            seq: self.seq,
            last: self.last_id,
        }
    }
}

/// Journal counters, in `Stats::journal`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct JournalStats {
    /// Shards appended to (0 for in-memory engines and `Durability::None`).
    pub shards: usize,
    /// fdatasync calls made by group commit.
    pub syncs: u64,
    /// Commit id of the newest checkpoint (0: none).
    pub checkpoint: u64,
    /// Commits replayed from the journal when the engine was opened.
    pub replayed: u64,
    /// What recovery found, cut off and (with `Options::salvage`) gave up when
    /// the engine was opened.
    pub recovery: RecoveryReport,
    /// Journal segments written and not yet deleted by a checkpoint.
    pub segments: usize,
    /// Commits whose committer was running on another NUMA node than its shard's
    /// when the append finished (it migrated, or its node has no shard): remote
    /// memory writes on the commit path. Counted only with more than one node.
    pub remote_appends: u64,
    /// Journal bytes appended since the newest checkpoint began (in this
    /// session): what `AutoCheckpoint::bytes` is compared with.
    pub since_checkpoint_bytes: u64,
    /// Checkpoints the background thread wrote (`Options::auto_checkpoint`).
    pub auto_checkpoints: u64,
    /// Background checkpoints that failed. Each is retried later, after a
    /// backoff (1 s, doubling up to 5 min); the engine keeps running.
    pub auto_checkpoint_failures: u64,
    /// Commit id of the newest background checkpoint (0: none yet).
    pub last_auto_checkpoint: u64,
    /// When the newest background checkpoint was written.
    pub last_auto_checkpoint_time: Option<std::time::SystemTime>,
    /// The error of the last background checkpoint if it failed; `None` once
    /// one succeeds again.
    pub last_auto_checkpoint_error: Option<String>,
}

pub(crate) struct Journal {
    durability: Durability,
    read_only: bool,
    dir: Option<PathBuf>,
    io: Arc<dyn Io>,
    shards: Box<[NodeBox<Shard>]>,
    /// Where shards live and which one a CPU appends to.
    layout: Arc<Layout>,
    chain: Arc<Chain>,
    /// Hashes the chain off the commit path (none under loom, for read-only
    /// journals, or when its thread could not start). Dropping it joins the
    /// thread, which holds its own `Arc` of the chain.
    #[cfg(not(loom))]
    _sequencer: Option<chain::Sequencer>,
    halted: AtomicBool,
    cause: Mutex<Option<String>>,
    retired: Arc<Mutex<Vec<Retired>>>,
    /// Retention holds: the oldest commit each named consumer still needs. The
    /// feed registers them; checkpoints never delete past the lowest, unless a hold
    /// would keep more than `retention_limit` bytes (then it lapses).
    holds: Mutex<BTreeMap<String, Arc<Hold>>>,
    retention_limit: u64,
    /// What checkpoints keep for point-in-time restore (`pitr.rs`).
    pitr: crate::options::Retention,
    checkpointing: Mutex<()>,
    checkpoint: AtomicU64,
    /// Bytes the shards had appended when the newest checkpoint began.
    checkpoint_mark: AtomicU64,
    /// Bytes of the journal found on open after the checkpoint, until the next
    /// checkpoint covers them.
    carried: AtomicU64,
    /// What background checkpoints did.
    pub(crate) auto: AutoStats,
    /// The newest checkpoint's commit and chain hash: where history can start.
    checkpoint_point: Mutex<(u64, ChainHash)>,
    /// `History` readers alive: a close does not trim segments they map.
    readers: Arc<Readers>,
    /// Wakes feed consumers waiting for new commits.
    pub(crate) signal: Signal,
    /// A follower: changes only through `apply`.
    follower: AtomicBool,
    /// What recovery did on open.
    report: RecoveryReport,
    /// The boot this session runs in, recorded in the manifest.
    boot: Option<[u8; 16]>,
    /// The newest point the manifest promises durable.
    promised: Mutex<(u64, ChainHash)>,
    syncs: Arc<AtomicU64>,
    /// The threads that prepare segments ahead of the shards' rolls (`None`:
    /// rolls prepare inline, see `Io::prepares_ahead`); stopped on close or drop.
    preparer: Mutex<Option<prepare::Preparer>>,
    _lock: Option<DirLock>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Before the shards and the directory lock go: no preparation runs on.
        if let Some(mut preparer) = self.preparer.lock().take() {
            preparer.stop();
        }
    }
}

/// A named consumer's retention mark.
pub(crate) struct Hold {
    /// The oldest commit id the consumer still needs.
    pub needed: AtomicU64,
    /// Set when the hold was dropped for keeping too much journal.
    pub lapsed: AtomicBool,
    /// A commit at or before `needed - 1` and its chain hash: where history can
    /// start chaining when this consumer resumes, whatever the next record's
    /// anchor. Moves forward only (with `Feed::ack`), and never past `needed - 1`.
    pub point: Mutex<Option<(u64, ChainHash)>>,
}

impl Hold {
    fn new(needed: u64, point: Option<(u64, ChainHash)>) -> Hold {
        Hold {
            needed: AtomicU64::new(needed),
            lapsed: AtomicBool::new(false),
            point: Mutex::new(point),
        }
    }

    /// Records that the consumer acknowledged `id`, whose chain hash is `hash`.
    /// `needed` moves first: a checkpoint that reads both in between keeps more,
    /// never less.
    pub(crate) fn ack(&self, id: u64, hash: Option<ChainHash>) {
        self.needed
            .fetch_max(id.saturating_add(1), Ordering::SeqCst);
        if let Some(hash) = hash {
            let mut point = self.point.lock();
            if point.is_none_or(|(k, _)| k < id) {
                *point = Some((id, hash));
            }
        }
    }

    /// What a checkpoint saves for this hold: (needed, point).
    fn saved(&self) -> (u64, Option<(u64, ChainHash)>) {
        let needed = self.needed.load(Ordering::SeqCst);
        (needed, *self.point.lock())
    }
}

/// The last commit a saved hold lets a checkpoint delete: segments whose last
/// commit is at or below it go. With a point, it is the point (history chains
/// on from its hash); without one, the commit before `needed`.
fn hold_floor((needed, point): (u64, Option<(u64, ChainHash)>)) -> u64 {
    let before = needed.saturating_sub(1);
    point.map_or(before, |(k, _)| k.min(before))
}

/// Live `History` readers of a journal, counted under a mutex: a clean close
/// trims the current segments only while there are none, and holds the mutex
/// across the trim, so no reader maps a segment at a length it is about to lose.
#[derive(Default)]
pub(crate) struct Readers {
    count: Mutex<usize>,
}

/// One registered `History` reader; unregisters when dropped.
pub(crate) struct ReaderGuard {
    readers: Arc<Readers>,
}

impl ReaderGuard {
    fn register(readers: &Arc<Readers>) -> ReaderGuard {
        *readers.count.lock() += 1;
        ReaderGuard {
            readers: readers.clone(),
        }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        *self.readers.count.lock() -= 1;
    }
}

/// Wakes threads waiting for commits to become visible, without costing commits
/// anything while nobody waits: a committer only reads `waiters`.
pub(crate) struct Signal {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
    /// Paused feeds wait here: commits do not wake them, only pause, resume and
    /// close do.
    paused: Condvar,
    closed: AtomicBool,
}

impl Signal {
    fn new() -> Signal {
        Signal {
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
            paused: Condvar::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Called after a commit became visible.
    pub(crate) fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.cond.notify_all();
        }
    }

    /// Waits until `ready()` holds, the engine closes, or `timeout` passes; returns
    /// `ready()`. The waiter is counted before `ready` is checked under the lock,
    /// so a commit that lands in between either is seen or notifies.
    pub(crate) fn wait(&self, timeout: std::time::Duration, ready: impl Fn() -> bool) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.lock.lock();
        let result = loop {
            if ready() {
                break true;
            }
            let now = std::time::Instant::now();
            if now >= deadline || self.closed.load(Ordering::SeqCst) {
                break false;
            }
            g = self.cond.wait_timeout(g, deadline - now);
        };
        drop(g);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Waits, without being woken by commits, until `ready()` holds, the engine
    /// closes, or `timeout` passes: for paused feeds.
    pub(crate) fn wait_unpaused(&self, timeout: std::time::Duration, ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.lock.lock();
        loop {
            let now = std::time::Instant::now();
            if ready() || now >= deadline || self.closed.load(Ordering::SeqCst) {
                return;
            }
            g = self.paused.wait_timeout(g, deadline - now);
        }
    }

    /// The engine is closing: waiters return.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _g = self.lock.lock();
        self.cond.notify_all();
        self.paused.notify_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Wakes every waiter (a consumer was paused or resumed).
    pub(crate) fn wake(&self) {
        let _g = self.lock.lock();
        self.cond.notify_all();
        self.paused.notify_all();
    }
}

const HOLDS_FILE: &str = "consumers";

/// The recovery event of an open (inside the engine's `open` span): what was
/// replayed and cut, and, after a salvage open, what was given up.
fn trace_recovery(report: &RecoveryReport, checkpoint: u64, last_commit: u64, segments: usize) {
    tracing::info!(
        target: "shardstone",
        checkpoint,
        last_commit,
        replayed = report.replayed,
        promised = report.promised,
        dropped_commits = report.dropped_commits,
        dropped_bytes = report.dropped_bytes,
        removed_segments = report.removed_segments,
        segments,
        salvaged = report.salvage.is_some(),
        "recovered"
    );
    if let Some(s) = &report.salvage {
        tracing::warn!(
            target: "shardstone",
            kept_through = s.kept_through,
            lost_promised = s.lost_promised,
            findings = ?s.findings,
            set_aside = ?s.set_aside,
            "salvage open gave up part of the database"
        );
    }
}

/// Reads the retention holds recorded at the last checkpoint or close.
fn load_holds(dir: &Path) -> Result<BTreeMap<String, Arc<Hold>>> {
    let path = dir.join(HOLDS_FILE);
    let Some(mut file) = io::open_regular_if_exists(&path)? else {
        return Ok(BTreeMap::new());
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io_err("read", &path))?;
    let bad = |reason: &str| Error::Corrupt {
        path: path.clone(),
        offset: 0,
        commit_id: None,
        reason: reason.to_owned(),
    };
    let (body, crc) = text
        .rsplit_once("crc32c ")
        .ok_or_else(|| bad("the consumers file has no checksum line"))?;
    if crc.trim().parse::<u32>().ok() != Some(crc32c::crc32c(body.as_bytes())) {
        return Err(bad("the consumers file checksum does not match"));
    }
    let mut holds = BTreeMap::new();
    for line in body.lines() {
        // `name \t needed`, then (since holds carry their point) `\t id \t hash`.
        let fields: Vec<&str> = line.split('\t').collect();
        let (name, needed, point) = match fields[..] {
            [name, needed] => (name, needed, None),
            [name, needed, id, hash] => (name, needed, Some((id, hash))),
            _ => return Err(bad("a consumers line has neither 2 nor 4 fields")),
        };
        let needed: u64 = needed
            .parse()
            .ok()
            .filter(|&n| n <= MAX_COMMIT_ID.saturating_add(1))
            .ok_or_else(|| bad("a consumers line has no commit id in range"))?;
        let point = match point {
            None => None,
            Some((id, hash)) => {
                let id: u64 = id
                    .parse()
                    .ok()
                    .filter(|&id| id <= MAX_COMMIT_ID)
                    .ok_or_else(|| bad("a consumers line has a bad point commit id"))?;
                let hash =
                    parse_hash(hash).ok_or_else(|| bad("a consumers line has a bad hash"))?;
                Some((id, hash))
            }
        };
        holds.insert(name.to_owned(), Arc::new(Hold::new(needed, point)));
    }
    Ok(holds)
}

/// The named consumers in the `consumers` file of `dir` and the oldest commit
/// each still needs, read without the directory lock (for `stat` and `verify`).
/// The keys the checkpoint file at `path` holds, by its header (`None` when
/// the header does not verify).
pub(crate) fn checkpoint_keys(path: &Path) -> Option<u64> {
    Checkpoint::open(path).ok().map(|c| c.entries())
}

pub(crate) fn read_consumers(dir: &Path) -> Result<Vec<(String, u64)>> {
    Ok(load_holds(dir)?
        .into_iter()
        .map(|(name, hold)| (name, hold.needed.load(Ordering::Relaxed)))
        .collect())
}

/// A chain hash written as 64 hex digits.
fn parse_hash(hex: &str) -> Option<ChainHash> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(ChainHash(h))
}

/// A hold as saved: the oldest commit needed and the known point before it.
type SavedHold = (u64, Option<(u64, ChainHash)>);

/// Records the retention holds durably (temporary file, fsync, rename). A line
/// is `name \t needed`, followed by `\t point id \t point hash` when the hold
/// knows the chain hash of a commit before `needed`.
fn save_holds(dir: &Path, io: &dyn Io, holds: &BTreeMap<String, SavedHold>) -> Result<()> {
    let path = dir.join(HOLDS_FILE);
    if holds.is_empty() && !path.exists() {
        return Ok(());
    }
    let mut body = String::new();
    for (name, (needed, point)) in holds {
        match point {
            Some((id, hash)) => body.push_str(&format!("{name}\t{needed}\t{id}\t{hash}\n")),
            None => body.push_str(&format!("{name}\t{needed}\n")),
        }
    }
    let text = format!("{body}crc32c {}\n", crc32c::crc32c(body.as_bytes()));
    manifest::replace_file(dir, io, HOLDS_FILE, text.as_bytes())
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Creates `dir` and any missing parent, each made durable by an fsync of the
/// directory that holds it: a power cut after the first commit cannot lose the
/// database's directory entry. A path that exists and is not a directory is
/// [`Error::NotADirectory`].
fn create_dirs(io: &dyn Io, dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::NotADirectory {
                path: dir.to_owned(),
            })
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) => {}
        Err(source) => {
            return Err(Error::Io {
                op: "stat",
                path: dir.to_owned(),
                source,
            })
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    create_dirs(io, &parent)?;
    match io.create_dir(dir) {
        Ok(()) => {}
        // Created by someone else in between: fine if it is a directory.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::NotADirectory {
                path: parent.clone(),
            })
        }
        Err(source) => {
            return Err(Error::Io {
                op: "create directory",
                path: dir.to_owned(),
                source,
            })
        }
    }
    io.sync_dir(&parent)
        .map_err(io_err("fsync directory", &parent))
}

impl Journal {
    /// Starts the chain's sequencer thread (see `chain.rs`); a journal that
    /// never takes commits (read-only) has none.
    #[cfg_attr(loom, allow(unused_mut))]
    fn with_sequencer(mut self) -> Journal {
        #[cfg(not(loom))]
        if !self.read_only {
            self._sequencer = chain::Sequencer::start(&self.chain);
        }
        self
    }

    /// The journal of an in-memory engine: no files; records feed the chain only.
    pub(crate) fn in_memory(opts: &Options, layout: Arc<Layout>) -> Journal {
        let journal = Journal {
            durability: Durability::None,
            read_only: false,
            dir: None,
            io: Arc::new(OsIo),
            shards: Box::new([]),
            layout,
            #[cfg(not(loom))]
            _sequencer: None,
            chain: Arc::new(Chain::new(0, ChainHash::genesis(), opts.feed_window_bytes)),
            halted: AtomicBool::new(false),
            cause: Mutex::new(None),
            retired: Arc::new(Mutex::new(Vec::new())),
            holds: Mutex::new(BTreeMap::new()),
            retention_limit: opts.retention_limit_bytes,
            pitr: opts.pitr_retention.clone(),
            checkpointing: Mutex::new(()),
            checkpoint: AtomicU64::new(0),
            checkpoint_mark: AtomicU64::new(0),
            carried: AtomicU64::new(0),
            auto: AutoStats::default(),
            checkpoint_point: Mutex::new((0, ChainHash::genesis())),
            readers: Arc::new(Readers::default()),
            signal: Signal::new(),
            follower: AtomicBool::new(false),
            report: RecoveryReport::default(),
            boot: None,
            promised: Mutex::new((0, ChainHash::genesis())),
            syncs: Arc::new(AtomicU64::new(0)),
            preparer: Mutex::new(None),
            _lock: None,
        };
        journal.with_sequencer()
    }

    /// Opens the journal in `dir` (creating it), locks the directory, loads the
    /// newest checkpoint and replays every commit after it into `loader`. Returns
    /// the journal and the last recovered commit id.
    pub(crate) fn open(
        dir: &Path,
        opts: &Options,
        io: Arc<dyn Io>,
        read_only: bool,
        layout: Arc<Layout>,
        loader: &mut dyn Loader,
    ) -> Result<(Journal, u64)> {
        if read_only {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::NotADirectory {
                        path: dir.to_owned(),
                    })
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "open database directory",
                        path: dir.to_owned(),
                        source,
                    })
                }
            }
        } else {
            create_dirs(&*io, dir)?;
        }
        let lock = DirLock::acquire(dir, !read_only)?;
        let jdir = dir.join("journal");
        let manifest = manifest::read(dir)?;
        // A new database gets its journal directory now; an existing one only
        // after recovery, so that a deleted journal is reported, not replaced.
        if !read_only && manifest.is_none() {
            create_dirs(&*io, &jdir)?;
        }
        let boot = io.boot_id();
        let same_boot = boot.is_some() && manifest.as_ref().is_some_and(|m| m.boot == boot);

        // The newest checkpoint; older ones and leftovers of interrupted
        // checkpoints go.
        let mut ids = Vec::new();
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".ckpt.tmp") {
                stale.push(entry.path());
            } else if let Some(id) = checkpoint::parse_checkpoint_name(name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let newest = ids.pop();
        stale.extend(
            ids.iter()
                .map(|&id| dir.join(checkpoint::checkpoint_name(id))),
        );
        let mut start = (0, ChainHash::genesis());
        let mut ckpt = None;
        // The checkpoint the manifest names, when no checkpoint at or after it
        // is here: the journal may still hold everything (checked below).
        let missing_checkpoint = manifest
            .as_ref()
            .filter(|m| m.checkpoint.0 > 0 && newest.is_none_or(|id| id < m.checkpoint.0))
            .map(|m| {
                let path = dir.join(checkpoint::checkpoint_name(m.checkpoint.0));
                Error::Corrupt {
                    path,
                    offset: 0,
                    commit_id: Some(crate::CommitId(m.checkpoint.0)),
                    reason: format!(
                        "the checkpoint at commit {} is missing (the manifest names it)",
                        m.checkpoint.0
                    ),
                }
            });
        if let Some(id) = newest {
            let c = Checkpoint::open(&dir.join(checkpoint::checkpoint_name(id)))?;
            if c.id != id {
                return Err(Error::Corrupt {
                    path: c.path.clone(),
                    offset: 0,
                    commit_id: None,
                    reason: format!("the file name says commit {id}, the header {}", c.id),
                });
            }
            start = (id, c.hash);
            ckpt = Some(c);
        }
        if !read_only {
            for path in stale {
                io.remove(&path).map_err(io_err("remove", &path))?;
            }
        }

        // The journal after the checkpoint, verified and reduced to the last write
        // of each key; then the checkpoint and it, merged in key order, build the
        // store in one pass.
        let mut replayed = Replayed::default();
        if let Some(m) = manifest
            .as_ref()
            .filter(|m| m.checkpoint.0 == start.0 && start.0 > 0)
        {
            if m.checkpoint.1 != start.1 {
                return Err(Error::Corrupt {
                    path: dir.join(checkpoint::checkpoint_name(start.0)),
                    offset: 0,
                    commit_id: Some(crate::CommitId(start.0)),
                    reason: "the checkpoint's chain hash is not the one the manifest recorded"
                        .to_owned(),
                });
            }
        }
        let rules = recovery::Rules {
            start,
            manifest: manifest.as_ref(),
            same_boot,
            read_only,
            salvage: opts.salvage,
            max_value_len: opts.max_value_len,
        };
        let recovered = if jdir.is_dir() {
            recovery::recover(&jdir, &*io, &rules, |_, body: &BodyView<'_>| {
                recovery::for_each_op(body, |k, v| {
                    replayed.push(k, v);
                    Ok(())
                })
            })
        } else if let Some(m) = manifest.as_ref().filter(|m| m.promised.0 > start.0) {
            let e = Error::Corrupt {
                path: jdir.clone(),
                offset: 0,
                commit_id: Some(crate::CommitId(start.0.saturating_add(1))),
                reason: format!(
                    "the journal directory is missing, but commits up to {} were promised durable",
                    m.promised.0
                ),
            };
            if opts.salvage {
                Ok(recovery::Recovered::nothing(
                    start,
                    m.promised.0,
                    e.to_string(),
                ))
            } else {
                Err(e)
            }
        } else {
            Ok(recovery::Recovered::nothing(start, 0, String::new()))
        };
        let recovered = match (recovered, missing_checkpoint) {
            (Err(_), Some(missing)) if !opts.salvage => return Err(missing),
            (r, missing) => {
                let mut r = r?;
                if let (Some(missing), Some(s)) = (missing, r.report.salvage.as_mut()) {
                    s.findings.insert(0, missing.to_string());
                }
                r
            }
        };
        // Data with no manifest: not written by this version, or the manifest
        // was deleted. What was promised cannot be known.
        let mut report = recovered.report;
        if manifest.is_none() && (ckpt.is_some() || recovered.frames_found > 0) {
            let e = Error::Corrupt {
                path: manifest::path(dir),
                offset: 0,
                commit_id: None,
                reason: "the manifest is missing, but the directory holds a checkpoint or \
                         journal: what was promised durable cannot be checked (open with \
                         Options::salvage to take what is there)"
                    .to_owned(),
            };
            if !opts.salvage {
                return Err(e);
            }
            report
                .salvage
                .get_or_insert_with(|| recovery::Salvage {
                    kept_through: recovered.last_id,
                    ..recovery::Salvage::default()
                })
                .findings
                .insert(0, e.to_string());
        }
        let last_id = recovered.last_id;
        let last_hash = recovered.last_hash;
        let next_seq = recovered.next_seq;
        let segments = recovered.segments;
        let promised = (last_id, last_hash);
        if !read_only {
            create_dirs(&*io, &jdir)?;
            manifest::write(
                dir,
                &*io,
                &manifest::Manifest {
                    clean: false,
                    boot,
                    checkpoint: start,
                    promised,
                    segments: segments.iter().map(|s| s.listed()).collect(),
                },
            )?;
        }
        loader.start(last_id)?;
        replayed.reduce();
        let mut next = 0;
        let ops = &replayed.ops;
        if let Some(c) = &ckpt {
            let path = c.path.clone();
            c.load(opts.max_value_len, |k, v| {
                replayed.put_below(&mut next, Some(k), loader)?;
                match ops.get(next) {
                    // The journal rewrote or deleted this key after the checkpoint.
                    Some(op) if replayed.key(op) == k => {
                        if let Some(v) = replayed.value(op) {
                            loader.put(k, v)?;
                        }
                        next += 1;
                        Ok(())
                    }
                    _ => loader.put(k, v),
                }
                .map_err(|e| Error::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    commit_id: Some(crate::CommitId(start.0)),
                    reason: format!("an entry cannot be loaded: {e}"),
                })
            })?;
        }
        replayed.put_below(&mut next, None, loader)?;
        loader.finish()?;
        drop(replayed);
        trace_recovery(&report, start.0, last_id, segments.len());
        let retired: Vec<Retired> = segments
            .into_iter()
            .map(|s| Retired {
                shard: s.shard,
                seq: s.seq,
                used: s.used(),
                path: s.path,
                last_id: s.last_id,
            })
            .collect();
        // The journal the checkpoint does not cover counts toward the next one.
        let carried = retired
            .iter()
            .filter(|s| s.last_id > start.0)
            .map(|s| s.used)
            .sum();
        let retired = Arc::new(Mutex::new(retired));
        debug_assert_eq!(
            Journal::writes_files(opts, read_only),
            !layout.plan().placement.shards.is_empty()
        );
        let syncs = Arc::new(AtomicU64::new(0));
        let shards = (0..layout.plan().placement.shards.len())
            .map(|i| {
                let domain = layout.plan().shard_domain[i];
                let shard = Shard::new(
                    i,
                    &jdir,
                    next_seq,
                    opts.segment_size,
                    io.clone(),
                    retired.clone(),
                    syncs.clone(),
                    (layout.clone(), domain),
                    opts.durability == Durability::Durable,
                );
                NodeBox::new(shard, &layout, domain)
            })
            .collect::<Box<[NodeBox<Shard>]>>();
        let preparer = if io.prepares_ahead() && !read_only && !shards.is_empty() {
            let slots = shards.iter().map(|s| s.slot().clone()).collect();
            let started = prepare::Preparer::start(slots, &layout).map_err(|source| Error::Io {
                op: "start the segment preparer thread",
                path: jdir.clone(),
                source,
            })?;
            Some(started)
        } else {
            None
        };
        let journal = Journal {
            durability: opts.durability,
            read_only,
            dir: Some(dir.to_owned()),
            io,
            shards,
            layout,
            #[cfg(not(loom))]
            _sequencer: None,
            chain: Arc::new(Chain::new(last_id, last_hash, opts.feed_window_bytes)),
            halted: AtomicBool::new(false),
            cause: Mutex::new(None),
            retired,
            holds: Mutex::new(load_holds(dir)?),
            retention_limit: opts.retention_limit_bytes,
            pitr: opts.pitr_retention.clone(),
            checkpointing: Mutex::new(()),
            checkpoint: AtomicU64::new(start.0),
            checkpoint_mark: AtomicU64::new(0),
            carried: AtomicU64::new(carried),
            auto: AutoStats::default(),
            checkpoint_point: Mutex::new(start),
            readers: Arc::new(Readers::default()),
            signal: Signal::new(),
            follower: AtomicBool::new(false),
            report,
            boot,
            promised: Mutex::new(promised),
            syncs,
            preparer: Mutex::new(preparer),
            _lock: Some(lock),
        };
        Ok((journal.with_sequencer(), last_id))
    }

    /// Refuses a write before any work is done: read-only or halted engines, and
    /// followers unless the write is an `apply`.
    pub(crate) fn check_writable(&self, apply: bool) -> Result<()> {
        if self.read_only || (self.follower.load(Ordering::SeqCst) && !apply) {
            return Err(Error::ReadOnly);
        }
        if self.halted.load(Ordering::SeqCst) {
            return Err(self.halted_error());
        }
        Ok(())
    }

    pub(crate) fn halted_error(&self) -> Error {
        Error::Halted {
            cause: self
                .cause
                .lock()
                .clone()
                .unwrap_or_else(|| "an earlier journal failure".to_owned()),
        }
    }

    fn halt(&self, e: &Error) {
        let mut cause = self.cause.lock();
        if cause.is_none() {
            *cause = Some(e.to_string());
            tracing::error!(target: "shardstone", error = %e, "journal halted: nothing more is acknowledged");
        }
        self.halted.store(true, Ordering::SeqCst);
    }

    /// Takes the commit id (through `assign`) and appends `frame` with it to the
    /// shard of this CPU. `durable` is the visible watermark the caller just read.
    pub(crate) fn append(
        &self,
        frame: &mut Frame,
        durable: u64,
        assign: impl FnOnce() -> u64,
    ) -> Result<Ticket> {
        if self.shards.is_empty() {
            let id = assign();
            frame.set_id(id);
            return Ok(Ticket { id, shard: None });
        }
        let anchor = self.chain.head();
        let synced = self.durability == Durability::Durable;
        let seal = |f: &mut Frame, id: u64| {
            if synced {
                f.set_synced();
            }
            f.set_time(record::now_ms());
            f.seal(id, durable, anchor)
        };
        let shard = self.layout.plan().shard_for_cpu(crate::sync::current_cpu());
        match self.shards[shard].append(frame, assign, seal) {
            Ok(id) => {
                if self.layout.is_multi_domain()
                    && self.layout.current_domain() != self.layout.plan().shard_domain[shard]
                {
                    self.shards[shard].count_remote_append();
                }
                Ok(Ticket {
                    id,
                    shard: (self.durability == Durability::Durable).then_some(shard),
                })
            }
            // Nothing was taken (no id, nothing written): the commit fails alone,
            // and a later one may succeed once the disk has room again.
            Err(e) => {
                if !matches!(e, Error::Halted { .. }) {
                    tracing::warn!(target: "shardstone", shard, error = %e, "journal append failed; the commit fails alone");
                }
                Err(e)
            }
        }
    }

    /// Gives a committed frame to the hash chain.
    pub(crate) fn hand_to_chain(&self, id: u64, frame: Frame) {
        self.chain.push(id, frame.bytes);
    }

    /// Waits until the ticket's record is as durable as the level asks.
    pub(crate) fn wait(&self, ticket: Ticket) -> Result<()> {
        let Some(shard) = ticket.shard else {
            return Ok(());
        };
        self.shards[shard]
            .wait_durable(ticket.id)
            .inspect_err(|e| self.halt(e))
    }

    /// Whether commit `id`, appended to `shard`, is covered by a completed sync
    /// of that shard: the clock's condition for making it visible in `Durable`
    /// mode.
    pub(crate) fn is_durable(&self, shard: usize, id: u64) -> bool {
        self.shards[shard].synced() >= id
    }

    /// Makes commit `id` (appended to `shard`) durable on behalf of its
    /// committer: a commit waiting for visibility runs its predecessor's group
    /// commit rather than wait for that committer's thread to be scheduled.
    pub(crate) fn sync_for(&self, shard: usize, id: u64) -> Result<()> {
        self.wait(Ticket {
            id,
            shard: Some(shard),
        })
    }

    /// The chain hash of commit `id`, if it is recent enough to be known.
    pub(crate) fn hash_at(&self, id: u64) -> Option<ChainHash> {
        self.chain.hash_at(id)
    }

    /// Starts a checkpoint: retires every shard's current segment, so that the
    /// checkpoint about to be taken can delete them. Then call `checkpoint`.
    /// Returns the journal bytes appended so far, for `checkpoint`.
    pub(crate) fn prepare_checkpoint(&self) -> Result<u64> {
        // A checkpoint is not a write: followers take them too.
        self.check_writable(true)?;
        let mark = self.written();
        for shard in self.shards.iter() {
            shard.roll_if_used()?;
        }
        Ok(mark)
    }

    /// Frame bytes appended to every shard since the engine opened.
    fn written(&self) -> u64 {
        self.shards.iter().map(|s| s.written()).sum()
    }

    /// Journal bytes appended since the newest checkpoint began (its snapshot
    /// was taken after that, so this counts at least what it does not cover).
    pub(crate) fn since_checkpoint_bytes(&self) -> u64 {
        let carried = self.carried.load(Ordering::SeqCst);
        self.written()
            .saturating_sub(self.checkpoint_mark.load(Ordering::SeqCst))
            .saturating_add(carried)
    }

    /// The newest checkpoint's commit id (0: none).
    pub(crate) fn checkpoint_id(&self) -> u64 {
        self.checkpoint.load(Ordering::SeqCst)
    }

    /// Writes a checkpoint at the snapshot `at`, whose entries `entries` yields in
    /// key order, then deletes the checkpoint before it and every journal segment
    /// it makes unnecessary (down to the lowest retention hold). Traced: its
    /// start, its end (bytes, duration) or its failure. `mark` is what
    /// `prepare_checkpoint` returned.
    pub(crate) fn checkpoint<V: AsRef<[u8]>>(
        &self,
        at: u64,
        mark: u64,
        entries: impl Iterator<Item = Result<(Vec<u8>, V)>>,
    ) -> Result<u64> {
        let started = std::time::Instant::now();
        // Which engine, for processes that open several.
        let dir = self
            .dir
            .as_deref()
            .map_or_else(String::new, |d| d.display().to_string());
        tracing::debug!(target: "shardstone", dir = %dir, commit_id = at, "checkpoint started");
        match self.write_checkpoint(at, mark, entries) {
            Ok(done) if done < at => {
                tracing::debug!(
                    target: "shardstone",
                    dir = %dir,
                    commit_id = at,
                    newest = done,
                    "checkpoint skipped: a newer one exists"
                );
                Ok(done)
            }
            Ok(done) => {
                let bytes = self
                    .dir
                    .as_ref()
                    .and_then(|d| std::fs::metadata(d.join(checkpoint::checkpoint_name(done))).ok())
                    .map_or(0, |m| m.len());
                tracing::info!(
                    target: "shardstone",
                    dir = %dir,
                    commit_id = done,
                    bytes,
                    duration_secs = started.elapsed().as_secs_f64(),
                    retired_segments = self.retired.lock().len(),
                    "checkpoint written"
                );
                Ok(done)
            }
            Err(e) => {
                tracing::error!(
                    target: "shardstone",
                    dir = %dir,
                    commit_id = at,
                    error = %e,
                    "checkpoint failed"
                );
                Err(e)
            }
        }
    }

    fn write_checkpoint<V: AsRef<[u8]>>(
        &self,
        at: u64,
        mark: u64,
        entries: impl Iterator<Item = Result<(Vec<u8>, V)>>,
    ) -> Result<u64> {
        let Some(dir) = &self.dir else {
            return Err(Error::Unsupported(
                "an in-memory engine has no directory to checkpoint into",
            ));
        };
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let _one = self.checkpointing.lock();
        let previous = self.checkpoint.load(Ordering::SeqCst);
        if at <= previous {
            // The newest checkpoint covers this snapshot, so it also covers what
            // was appended before `mark` and became visible by then.
            self.checkpoint_mark.fetch_max(mark, Ordering::SeqCst);
            return Ok(previous);
        }
        let hash = self.hash_at(at).ok_or(Error::Unsupported(
            "the chain moved too far past the checkpoint's snapshot; retry",
        ))?;
        checkpoint::write(dir, &*self.io, at, hash, entries)?;
        self.checkpoint.store(at, Ordering::SeqCst);
        self.checkpoint_mark.fetch_max(mark, Ordering::SeqCst);
        self.carried.store(0, Ordering::SeqCst);
        *self.checkpoint_point.lock() = (at, hash);
        // The previous checkpoint goes to `pitr/` or away; the journal back to
        // the oldest checkpoint kept there stays (point-in-time restore).
        let pitr_floor = {
            let segments: Vec<(u64, u64)> = self
                .retired
                .lock()
                .iter()
                .map(|s| (s.last_id, s.used))
                .collect();
            pitr::retire_checkpoint(dir, &*self.io, previous, at, &self.pitr, &segments)?
        };
        // The positions are read once: what is saved is what bounds the deletion
        // (an `ack` in between must not let segments go that the saved hold needs).
        let saved: BTreeMap<String, SavedHold> = {
            let mut holds = self.holds.lock();
            let retired = self.retired.lock();
            let mut saved = BTreeMap::new();
            // A hold that would keep more than the limit lapses: its consumer gets
            // `Truncated` instead of the disk filling up. What it keeps is counted
            // in bytes written, not in the segments' preallocated sizes.
            holds.retain(|name, hold| {
                let s = hold.saved();
                let floor = hold_floor(s);
                let kept: u64 = retired
                    .iter()
                    .filter(|seg| seg.last_id > floor && seg.last_id <= at)
                    .map(|seg| seg.used)
                    .sum();
                let keep = kept <= self.retention_limit;
                if keep {
                    tracing::debug!(target: "shardstone", consumer = %name, needed = s.0, kept_bytes = kept, limit = self.retention_limit, "retention hold keeps journal");
                    saved.insert(name.clone(), s);
                } else {
                    tracing::warn!(target: "shardstone", consumer = %name, needed = s.0, kept_bytes = kept, limit = self.retention_limit, "retention hold lapsed: it would keep more journal than Options::retention_limit_bytes; the consumer will get Error::Truncated");
                    hold.lapsed.store(true, Ordering::SeqCst);
                }
                keep
            });
            saved
        };
        save_holds(dir, &*self.io, &saved)?;
        let floor = saved
            .values()
            .map(|&s| hold_floor(s))
            .min()
            .unwrap_or(u64::MAX)
            .min(at)
            .min(pitr_floor);
        let listed = {
            let mut retired = self.retired.lock();
            let mut result = Ok(());
            retired.retain(|seg| {
                if seg.last_id > floor || result.is_err() {
                    return true;
                }
                match self.io.remove(&seg.path) {
                    Ok(()) => false,
                    Err(e) => {
                        result = Err(io_err("remove", &seg.path)(e));
                        true
                    }
                }
            });
            result?;
            retired.iter().map(Retired::listed).collect()
        };
        let promised = {
            let mut p = self.promised.lock();
            if at > p.0 {
                *p = (at, hash);
            }
            *p
        };
        manifest::write(
            dir,
            &*self.io,
            &manifest::Manifest {
                clean: false,
                boot: self.boot,
                checkpoint: (at, hash),
                promised,
                segments: listed,
            },
        )?;
        Ok(at)
    }

    /// A clean close: writes each shard's final watermark and syncs and trims it.
    pub(crate) fn close(&self, visible: u64) -> Result<()> {
        self.signal.close();
        // Stopped first (a preparation in progress finishes): nothing maps,
        // faults in or creates segment files while they are trimmed.
        if let Some(mut preparer) = self.preparer.lock().take() {
            preparer.stop();
        }
        if self.halted.load(Ordering::SeqCst) {
            return Err(self.halted_error());
        }
        // Unused spares: files of zeros, in no manifest; removed so that a
        // clean close leaves only segments that hold something.
        for shard in self.shards.iter() {
            shard.discard_spares()?;
        }
        if let (Some(dir), false) = (&self.dir, self.read_only) {
            let saved: BTreeMap<String, SavedHold> = self
                .holds
                .lock()
                .iter()
                .map(|(n, h)| (n.clone(), h.saved()))
                .collect();
            save_holds(dir, &*self.io, &saved)?;
        }
        let anchor = self.chain.head();
        let mut result = Ok(());
        let mut current = Vec::new();
        {
            // Held across the trims: no reader registers (and maps a segment at
            // its preallocated length) in between. A feed that outlives the engine
            // may still map the current segments: they are left untrimmed then,
            // for the next open's recovery to cut (reading past a file's end
            // through a mapping is SIGBUS).
            let readers = self.readers.count.lock();
            let trim = *readers == 0;
            for shard in self.shards.iter() {
                match shard.close(|f| f.seal(0, visible, anchor), trim) {
                    Ok(listed) => current.extend(listed),
                    Err(e) => {
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
            }
        }
        result?;
        if self.durability != Durability::Durable && !self.read_only {
            // Retired segments were not kept open for a flush (only `Durable`
            // does): the manifest below promises them, so sync them by path.
            let paths: Vec<PathBuf> = self.retired.lock().iter().map(|s| s.path.clone()).collect();
            for path in paths {
                let file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
                self.io.sync(&file).map_err(io_err("fdatasync", &path))?;
            }
        }
        let (Some(dir), false) = (&self.dir, self.read_only) else {
            return Ok(());
        };
        // Everything journaled is on disk now: the manifest promises it.
        let promised = {
            let mut p = self.promised.lock();
            if !self.shards.is_empty() && visible > p.0 {
                self.chain.advance_to(visible);
                if let Some(hash) = self.chain.hash_at(visible) {
                    *p = (visible, hash);
                }
            }
            *p
        };
        let mut segments: Vec<manifest::Listed> =
            self.retired.lock().iter().map(Retired::listed).collect();
        segments.extend(current);
        manifest::write(
            dir,
            &*self.io,
            &manifest::Manifest {
                clean: true,
                boot: self.boot,
                checkpoint: *self.checkpoint_point.lock(),
                promised,
                segments,
            },
        )
    }

    /// The hash chain, with the in-memory window of hashed commits.
    /// The database directory (`None` in memory).
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub(crate) fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The command name of commit `id`, if it is hashed and still in the
    /// in-memory window (telemetry's attribution of conflicts to winners).
    pub(crate) fn command_of(&self, id: u64) -> Option<String> {
        let name = |frame: &[u8]| {
            let body = frame.get(FRAME_HEADER..)?;
            // The body starts with the commit id (8 bytes) and the name's length (2).
            let len = u16::from_le_bytes(body.get(8..10)?.try_into().ok()?) as usize;
            let name = body.get(10..10 + len)?;
            Some(String::from_utf8_lossy(name).into_owned())
        };
        self.chain.frame_of(id, name)
    }

    /// A reader of the commits after `from` in the journal files; `None` for an
    /// engine without journal files.
    /// `upto` must be visible: frames up to it are whole on disk.
    pub(crate) fn history(&self, from: u64, upto: u64) -> Result<Option<History>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let jdir = dir.join("journal");
        if !jdir.is_dir() {
            return Ok(None);
        }
        // Every point whose hash is known: the checkpoint's and each hold's (a
        // consumer resumes right after its hold's point).
        let mut points = vec![*self.checkpoint_point.lock()];
        points.extend(self.holds.lock().values().filter_map(|h| *h.point.lock()));
        let reader = ReaderGuard::register(&self.readers);
        History::open(&jdir, points, from, upto, Some(reader)).map(Some)
    }

    /// The chain hash of commit `id` if it can be known without reading the
    /// journal: genesis, the in-memory chain, the checkpoint, or a hold's point.
    pub(crate) fn known_hash(&self, id: u64) -> Option<ChainHash> {
        if id == 0 {
            return Some(ChainHash::genesis());
        }
        if id <= self.chain.head().0 {
            if let Some(hash) = self.chain.hash_at(id) {
                return Some(hash);
            }
        }
        let checkpoint = *self.checkpoint_point.lock();
        if checkpoint.0 == id {
            return Some(checkpoint.1);
        }
        self.holds
            .lock()
            .values()
            .filter_map(|h| *h.point.lock())
            .find(|p| p.0 == id)
            .map(|p| p.1)
    }

    /// Registers (or moves) the retention hold `name`: commits from `needed` on
    /// are kept. `point` is the commit before `needed` with its hash, if known.
    pub(crate) fn hold(
        &self,
        name: &str,
        needed: u64,
        point: Option<(u64, ChainHash)>,
    ) -> Arc<Hold> {
        let mut holds = self.holds.lock();
        let hold = holds
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Hold::new(needed, point)));
        hold.needed.store(needed, Ordering::SeqCst);
        let mut p = hold.point.lock();
        // Without a new point, an old one still serves if it is not past the
        // new position.
        *p = point.or(p.filter(|(k, _)| *k < needed));
        drop(p);
        hold.clone()
    }

    /// The hold `name`, if there is one (also one recorded before a restart).
    pub(crate) fn hold_of(&self, name: &str) -> Option<Arc<Hold>> {
        self.holds.lock().get(name).cloned()
    }

    /// Drops the hold `name`; false if there was none.
    pub(crate) fn release(&self, name: &str) -> bool {
        self.holds.lock().remove(name).is_some()
    }

    pub(crate) fn is_follower(&self) -> bool {
        self.follower.load(Ordering::SeqCst)
    }

    pub(crate) fn set_follower(&self, follower: bool) {
        self.follower.store(follower, Ordering::SeqCst);
    }

    /// Whether a journal opened with these settings writes files (has shards).
    pub(crate) fn writes_files(opts: &Options, read_only: bool) -> bool {
        !read_only && opts.durability != Durability::None
    }

    /// Per shard: the address of its state and its current segment mapping.
    pub(crate) fn shard_memory(&self) -> Vec<(usize, Option<(usize, usize)>)> {
        self.shards
            .iter()
            .map(|s| (s.addr() as usize, s.segment_range()))
            .collect()
    }

    pub(crate) fn stats(&self) -> JournalStats {
        // Not one expression: a roll takes a shard's lock and then `retired`,
        // so `retired` must not be held while a shard's lock is taken.
        let retired = self.retired.lock().len();
        let current = self.shards.iter().filter(|s| s.has_segment()).count();
        let auto = self.auto.read();
        JournalStats {
            shards: self.shards.len(),
            syncs: self.syncs.load(Ordering::Relaxed),
            checkpoint: self.checkpoint.load(Ordering::Relaxed),
            replayed: self.report.replayed,
            recovery: self.report.clone(),
            segments: retired + current,
            remote_appends: self.shards.iter().map(|s| s.remote_appends()).sum(),
            since_checkpoint_bytes: self.since_checkpoint_bytes(),
            auto_checkpoints: auto.done,
            auto_checkpoint_failures: auto.failures,
            last_auto_checkpoint: auto.last.map_or(0, |(id, _)| id),
            last_auto_checkpoint_time: auto.last.map(|(_, t)| t),
            last_auto_checkpoint_error: auto.last_error,
        }
    }
}
