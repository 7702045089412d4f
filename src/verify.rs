//! Verify and stat: what a database holds and whether it can be trusted,
//! without changing anything.
//!
//! [`Engine::verify`](crate::Engine::verify) checks a live engine: the B+tree of
//! one snapshot (writers go on), then the files of its directory.
//! [`verify_dir`] and [`stat_dir`] read a closed directory, or one another
//! process has open: they take no lock and write nothing (not even the
//! manifest). The files are read with the parsers `open` uses
//! (`journal/inspect.rs`), so a finding is exactly what a strict open would
//! refuse, with its file, offset and commit. Nothing here panics on damage.

use crate::error::{Error, Result};
use crate::journal::inspect::{self, Area, DirCheck};
use crate::journal::ChainHash;
use crate::options::MAX_KEY_LEN;
use crate::store::{chain_len, check_layout, Kind, PageId, Snapshot, Store, ValRef};
use crate::txn::CommitId;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What kind of damage a [`Finding`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// The manifest is unreadable, fails its checksum, or is missing beside data.
    Manifest,
    /// The checkpoint named by the manifest is gone.
    CheckpointMissing,
    /// A checkpoint header or block fails its checksum, is cut short, or holds
    /// entries that are not sane.
    CheckpointDamaged,
    /// The checkpoint's commit and chain hash disagree with the manifest or
    /// with the journal's chain.
    CheckpointMismatch,
    /// A segment the manifest lists is gone, or ends before the commits it lists.
    SegmentMissing,
    /// A segment's header or frame fails its checksum, or holds invalid bytes
    /// followed by promised commits.
    SegmentDamaged,
    /// The journal directory is gone while commits after the checkpoint were promised.
    JournalMissing,
    /// Commit ids are missing, repeated or out of order.
    CommitOrder,
    /// The hash chain recomputed over the records disagrees with an anchor, the
    /// manifest, or the live engine's chain.
    ChainMismatch,
    /// A record with valid checksums that is not a well-formed commit.
    MalformedRecord,
    /// The `consumers` file is damaged.
    Consumers,
    /// Keys out of order, within a leaf or across leaves.
    KeyOrder,
    /// A key outside the bounds its parent's separator keys give it.
    SeparatorBound,
    /// A page reached twice from the root.
    PageReachedTwice,
    /// A freed page reached from the root.
    DeadPageReachable,
    /// A page with no readable version, or whose layout (`used`, counts,
    /// offsets) is not self-consistent.
    PageLayout,
    /// An overflow chain that is unreadable or not the length its leaf says.
    OverflowChain,
    /// The journal kept for point-in-time restore does not continue a
    /// checkpoint in `pitr/` to the newest checkpoint: restores from that
    /// checkpoint stop where it breaks.
    PitrJournal,
    /// A file could not be read at all (permissions, a failing device, a file
    /// that was removed while it was read).
    Unreadable,
}

/// One problem verify found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// What is wrong.
    pub what: FindingKind,
    /// The damaged file, where one is to blame.
    pub file: Option<PathBuf>,
    /// The byte offset in `file` where the damage starts (or the frame or block
    /// that holds it begins).
    pub offset: Option<u64>,
    /// The page, for tree findings.
    pub page: Option<PageId>,
    /// The commit concerned, where known.
    pub commit: Option<CommitId>,
    /// What was found, in words.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.what)?;
        if let Some(file) = &self.file {
            write!(f, " in {}", file.display())?;
        }
        if let Some(offset) = self.offset {
            write!(f, " at byte {offset}")?;
        }
        if let Some(page) = self.page {
            write!(f, " ({page})")?;
        }
        if let Some(commit) = self.commit {
            write!(f, " (commit {})", commit.get())?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What [`Engine::verify`](crate::Engine::verify) or [`verify_dir`] found, and
/// what can still be trusted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyReport {
    /// No finding.
    pub ok: bool,
    /// Every problem found, in the order found.
    pub findings: Vec<Finding>,
    /// The last commit whose hash chain verifies from the checkpoint through the
    /// journal, with its chain hash: every commit up to it is intact. `None` when
    /// there is no trusted point to start the chain from.
    pub intact_up_to: Option<(CommitId, ChainHash)>,
    /// The checkpoint's commit and chain hash, when its header is valid.
    pub checkpoint: Option<(CommitId, ChainHash)>,
    /// The commit the manifest says was promised durable.
    pub promised: Option<(CommitId, ChainHash)>,
    /// The live engine's `last_commit()` when verify began (live verify only).
    pub last_commit: Option<(CommitId, ChainHash)>,
    /// The snapshot whose tree was checked (live verify only). A closed
    /// directory holds no tree: the checkpoint and journal it is rebuilt from
    /// are checked entry by entry instead (`tree_checked` is false).
    pub snapshot: Option<CommitId>,
    /// The oldest commit a point-in-time restore from this directory can
    /// reach: the oldest checkpoint kept in `pitr/` whose journal verified up
    /// to the newest checkpoint, else the newest checkpoint itself.
    pub restorable_from: Option<CommitId>,
    /// Checkpoints in `pitr/` verified, each with the journal after it.
    pub pitr_checkpoints: u64,
    /// Whether a B+tree was walked.
    pub tree_checked: bool,
    /// Tree pages (leaves and inner nodes) checked.
    pub pages: u64,
    /// Overflow pages checked.
    pub overflow_pages: u64,
    /// Keys checked in the tree.
    pub keys: u64,
    /// Checkpoint entries read and verified.
    pub checkpoint_entries: u64,
    /// Journal records (commits after the checkpoint) verified and chained.
    pub records: u64,
    /// Bytes read from files: checkpoint and journal frames.
    pub bytes: u64,
    /// Journal segments read.
    pub segments: u64,
    /// The directory was open by an engine while it was read.
    pub in_use: bool,
    /// How long verify took.
    pub duration: Duration,
}

impl VerifyReport {
    fn new() -> VerifyReport {
        VerifyReport {
            ok: true,
            findings: Vec::new(),
            intact_up_to: None,
            checkpoint: None,
            promised: None,
            last_commit: None,
            snapshot: None,
            restorable_from: None,
            pitr_checkpoints: 0,
            tree_checked: false,
            pages: 0,
            overflow_pages: 0,
            keys: 0,
            checkpoint_entries: 0,
            records: 0,
            bytes: 0,
            segments: 0,
            in_use: false,
            duration: Duration::ZERO,
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            writeln!(f, "ok: no damage found")?;
        } else {
            writeln!(f, "DAMAGED: {} finding(s)", self.findings.len())?;
            for finding in &self.findings {
                writeln!(f, "  - {finding}")?;
            }
        }
        match &self.intact_up_to {
            Some((id, hash)) => {
                writeln!(f, "intact up to commit {} (chain hash {hash})", id.get())?
            }
            None => writeln!(f, "intact up to: unknown (no trusted start for the chain)")?,
        }
        if let Some((id, hash)) = &self.checkpoint {
            writeln!(f, "checkpoint: commit {} (chain hash {hash})", id.get())?;
        }
        if let Some((id, _)) = &self.promised {
            writeln!(f, "promised durable (manifest): commit {}", id.get())?;
        }
        if let Some(id) = self.restorable_from {
            writeln!(
                f,
                "restorable from: commit {} ({} older checkpoint(s) kept for point-in-time restore)",
                id.get(),
                self.pitr_checkpoints
            )?;
        }
        if let Some((id, _)) = &self.last_commit {
            writeln!(f, "live engine at: commit {}", id.get())?;
        }
        if let Some(at) = self.snapshot {
            writeln!(
                f,
                "tree at commit {}: {} pages, {} overflow pages, {} keys",
                at.get(),
                self.pages,
                self.overflow_pages,
                self.keys
            )?;
        } else {
            writeln!(
                f,
                "tree: covered by replay (checkpoint entries and journal records checked)"
            )?;
        }
        write!(
            f,
            "checked {} checkpoint entries, {} journal records in {} segments, {} bytes in {:.3?}",
            self.checkpoint_entries, self.records, self.segments, self.bytes, self.duration
        )?;
        if self.in_use {
            write!(f, " (the directory was in use)")?;
        }
        Ok(())
    }
}

/// Values up to this are accepted: the largest `Options::max_value_len` allows,
/// so a database written with a large limit verifies.
const VERIFY_MAX_VALUE: usize = 1 << 30;

/// Verifies the database in `dir` without opening it: read-only, without the
/// directory lock, writing nothing. Works on a closed directory and on one an
/// engine (in this process or another) has open. Every checksum, the commit
/// order, the hash chain against the anchors and the manifest, the checkpoint
/// against the manifest; see docs/operations.md, "Verifying a database".
///
/// Damage is reported as findings in the report; `Err` only when `dir` is not
/// a readable directory.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("shardstone-doc-verify-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let engine = shardstone::Engine::open(&dir)?;
/// engine.run("put", |tx| tx.put(b"k", b"v"))?;
/// engine.close()?;
/// let report = shardstone::verify_dir(&dir)?;
/// assert!(report.ok, "{report}");
/// assert_eq!(report.intact_up_to.map(|(id, _)| id.get()), Some(1));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), shardstone::Error>(())
/// ```
pub fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let dir = dir.as_ref();
    let began = Instant::now();
    let in_use = lock_holder_alive(dir);
    let mut report = VerifyReport::new();
    report.in_use = in_use;
    check_files(dir, &mut report, in_use, None)?;
    finish(&mut report, began);
    Ok(report)
}

/// Verifies a live engine: the B+tree of a snapshot, then its files.
pub(crate) fn verify_engine(
    snapshot: &Snapshot,
    dir: Option<&Path>,
    last_commit: (CommitId, ChainHash),
    known_hash: &dyn Fn(u64) -> Option<ChainHash>,
) -> Result<VerifyReport> {
    let began = Instant::now();
    let mut report = VerifyReport::new();
    report.last_commit = Some(last_commit);
    report.snapshot = Some(snapshot.commit_id());
    report.tree_checked = true;
    snapshot.with_store(|store, at| {
        let mut walk = TreeWalk {
            store,
            at,
            seen: HashSet::new(),
            prev: None,
            report: &mut report,
        };
        walk.page(crate::store::ROOT, None, None, 0);
    });
    match dir {
        Some(dir) => {
            report.in_use = true;
            check_files(dir, &mut report, true, Some(known_hash))?;
        }
        None => report.intact_up_to = Some(last_commit),
    }
    finish(&mut report, began);
    Ok(report)
}

fn finish(report: &mut VerifyReport, began: Instant) {
    report.ok = report.findings.is_empty();
    report.duration = began.elapsed();
}

/// Whether an engine holds `dir/LOCK`: looked up in `/proc/locks` (the flock
/// locks of every process, by inode), never by taking the lock. Where
/// `/proc/locks` cannot be read, whether the pid written in `LOCK` is running.
fn lock_holder_alive(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let lock = dir.join("LOCK");
    let Ok(meta) = std::fs::symlink_metadata(&lock) else {
        return false;
    };
    if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:123456 0 EOF`
        return locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&"FLOCK")
                && fields
                    .iter()
                    .find(|f| f.matches(':').count() == 2)
                    .and_then(|f| f.rsplit(':').next())
                    .and_then(|ino| ino.parse::<u64>().ok())
                    == Some(meta.ino())
        });
    }
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return false;
    };
    text.trim()
        .parse::<u32>()
        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Reads the files of `dir` into `report`. A directory in use changes while it
/// is read (a checkpoint deletes files, frames land in shards already read): a
/// finding there is confirmed by reading again before it is reported.
fn check_files(
    dir: &Path,
    report: &mut VerifyReport,
    in_use: bool,
    known_hash: Option<&dyn Fn(u64) -> Option<ChainHash>>,
) -> Result<()> {
    let attempts = if in_use { 4 } else { 1 };
    let mut check = DirCheck::default();
    let mut live = Vec::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(20 << attempt));
        }
        check = inspect::check_dir(dir, VERIFY_MAX_VALUE, true)?;
        live = known_hash.map_or_else(Vec::new, |known| against_engine(&check, known));
        if check.findings.is_empty() && live.is_empty() {
            break;
        }
    }
    report.promised = check.promised.map(|(id, h)| (CommitId(id), h));
    report.checkpoint = check.checkpoint.map(|(id, h)| (CommitId(id), h));
    report.checkpoint_entries = check.checkpoint_entries.unwrap_or(0);
    report.records = check.records;
    report.restorable_from = check.restorable_from.map(CommitId);
    report.pitr_checkpoints = check.pitr_checkpoints;
    report.segments = check.segments;
    report.bytes = check.journal_bytes
        + if check.checkpoint_entries.is_some() {
            check.checkpoint_bytes
        } else {
            0
        };
    report.findings.extend(
        check
            .findings
            .into_iter()
            .map(|(area, e)| finding_of(area, e)),
    );
    let trusted_chain = !live.iter().any(|f| f.what == FindingKind::ChainMismatch);
    report.findings.extend(live);
    report.intact_up_to = check
        .chain
        .filter(|_| trusted_chain)
        .map(|(id, h)| (CommitId(id), h));
    Ok(())
}

/// The files' chain against the live engine's, where it still knows the hash.
fn against_engine(check: &DirCheck, known: &dyn Fn(u64) -> Option<ChainHash>) -> Vec<Finding> {
    let mut out = Vec::new();
    let points = [
        (
            check.checkpoint,
            FindingKind::CheckpointMismatch,
            "checkpoint",
        ),
        (check.chain, FindingKind::ChainMismatch, "journal"),
    ];
    for (point, what, name) in points {
        let Some((id, hash)) = point else { continue };
        if let Some(engine) = known(id).filter(|h| *h != hash) {
            out.push(Finding {
                what,
                file: None,
                offset: None,
                page: None,
                commit: Some(CommitId(id)),
                detail: format!(
                    "hash chain mismatch: the {name} says commit {id} hashes to {hash}, the running engine {engine}"
                ),
            });
        }
    }
    out
}

/// A finding from the typed error a strict open returns.
fn finding_of(area: Area, e: Error) -> Finding {
    match e {
        Error::Corrupt {
            path,
            offset,
            commit_id,
            reason,
        } => {
            let what = match area {
                Area::Manifest => FindingKind::Manifest,
                Area::Consumers => FindingKind::Consumers,
                Area::Checkpoint if reason.contains("is missing") => FindingKind::CheckpointMissing,
                Area::Checkpoint if reason.contains("hash chain mismatch") => {
                    FindingKind::CheckpointMismatch
                }
                Area::Checkpoint => FindingKind::CheckpointDamaged,
                Area::Journal => journal_kind(&path, &reason),
                Area::Pitr if path.is_dir() => FindingKind::PitrJournal,
                Area::Pitr => FindingKind::CheckpointDamaged,
            };
            Finding {
                what,
                file: Some(path),
                offset: Some(offset),
                page: None,
                commit: commit_id,
                detail: reason,
            }
        }
        other => {
            let file = match &other {
                Error::Io { path, .. } | Error::NotADirectory { path } => Some(path.clone()),
                _ => None,
            };
            Finding {
                what: FindingKind::Unreadable,
                file,
                offset: None,
                page: None,
                commit: None,
                detail: other.to_string(),
            }
        }
    }
}

fn journal_kind(path: &Path, reason: &str) -> FindingKind {
    if reason.contains("hash chain mismatch") || reason.contains("anchor names") {
        FindingKind::ChainMismatch
    } else if reason.contains("journal directory is missing") {
        FindingKind::JournalMissing
    } else if reason.contains("the segment is missing")
        || reason.contains("but the manifest lists it")
    {
        FindingKind::SegmentMissing
    } else if reason.contains("not a well-formed commit") || reason.contains("malformed") {
        FindingKind::MalformedRecord
    } else if reason.contains("appears twice")
        || reason.contains("follows commit")
        || (reason.contains("is missing from every shard") && path.is_dir())
    {
        FindingKind::CommitOrder
    } else {
        FindingKind::SegmentDamaged
    }
}

/// Walks the tree of one snapshot from the root, checking every page once.
struct TreeWalk<'a> {
    store: &'a Store,
    at: u64,
    seen: HashSet<u64>,
    /// The last key seen, in walk order: keys ascend across leaves.
    prev: Option<Vec<u8>>,
    report: &'a mut VerifyReport,
}

/// Deeper than any tree of 2^64 pages with at least two children per node.
const MAX_DEPTH: usize = 64;

impl TreeWalk<'_> {
    fn find(&mut self, what: FindingKind, id: PageId, detail: String) {
        self.report.findings.push(Finding {
            what,
            file: None,
            offset: None,
            page: Some(id),
            commit: Some(CommitId(self.at)),
            detail,
        });
    }

    /// Checks page `id`, whose keys must lie in `lo..hi` (unbounded: `None`).
    fn page(&mut self, id: PageId, lo: Option<&[u8]>, hi: Option<&[u8]>, depth: usize) {
        if depth > MAX_DEPTH {
            return self.find(
                FindingKind::PageLayout,
                id,
                format!("the tree is deeper than {MAX_DEPTH} levels here"),
            );
        }
        if !self.seen.insert(id.0) {
            return self.find(
                FindingKind::PageReachedTwice,
                id,
                "the page is reached from the root more than once".to_owned(),
            );
        }
        let v = match self.store.checked_version_at(id, self.at) {
            Ok(v) => v,
            Err(why) => return self.find(FindingKind::PageLayout, id, why),
        };
        // SAFETY: the snapshot's pin and reading section (`Snapshot::with_store`)
        // keep every version visible at `at` allocated.
        let p = unsafe { self.store.page(v) };
        if let Err(why) = check_layout(&p, self.store.page_size()) {
            return self.find(FindingKind::PageLayout, id, why);
        }
        self.report.pages += 1;
        match p.kind() {
            Kind::Dead => self.find(
                FindingKind::DeadPageReachable,
                id,
                "a freed page is reachable from the root".to_owned(),
            ),
            Kind::Leaf => {
                for i in 0..p.count() {
                    let key = p.leaf_key(i);
                    self.report.keys += 1;
                    self.key_in_bounds(id, key, lo, hi);
                    if key.len() > MAX_KEY_LEN {
                        self.find(
                            FindingKind::PageLayout,
                            id,
                            format!("entry {i}: a key of {} bytes", key.len()),
                        );
                    }
                    if let Some(prev) = &self.prev {
                        if prev.as_slice() >= key {
                            self.find(
                                FindingKind::KeyOrder,
                                id,
                                format!(
                                    "entry {i}: key {} does not follow the previous key {}",
                                    show(key),
                                    show(prev)
                                ),
                            );
                        }
                    }
                    self.prev = Some(key.to_vec());
                    if let ValRef::Overflow { head, len } = p.leaf_val(i) {
                        self.overflow(id, i, head, len);
                    }
                }
            }
            Kind::Inner => {
                let n = p.count();
                if !p.inner_key(0).is_empty() {
                    self.find(
                        FindingKind::SeparatorBound,
                        id,
                        "the first separator key is not empty".to_owned(),
                    );
                }
                for i in 1..n {
                    let key = p.inner_key(i);
                    self.key_in_bounds(id, key, lo, hi);
                    if i > 1 && p.inner_key(i - 1) >= key {
                        self.find(
                            FindingKind::SeparatorBound,
                            id,
                            format!("separator {i} ({}) does not ascend", show(key)),
                        );
                    }
                }
                for i in 0..n {
                    let child_lo = if i == 0 { lo } else { Some(p.inner_key(i)) };
                    let child_hi = if i + 1 < n {
                        Some(p.inner_key(i + 1))
                    } else {
                        hi
                    };
                    self.page(p.inner_child(i), child_lo, child_hi, depth + 1);
                }
            }
        }
    }

    fn key_in_bounds(&mut self, id: PageId, key: &[u8], lo: Option<&[u8]>, hi: Option<&[u8]>) {
        let below = lo.is_some_and(|lo| key < lo);
        let above = hi.is_some_and(|hi| key >= hi);
        if below || above {
            self.find(
                FindingKind::SeparatorBound,
                id,
                format!(
                    "key {} lies outside the range {}..{} its parent gives the page",
                    show(key),
                    lo.map_or("(start)".to_owned(), |k| show(k).to_string()),
                    hi.map_or("(end)".to_owned(), |k| show(k).to_string()),
                ),
            );
        }
    }

    fn overflow(&mut self, id: PageId, entry: usize, head: usize, len: usize) {
        let page_size = self.store.page_size();
        if head == 0 {
            return self.find(
                FindingKind::OverflowChain,
                id,
                format!("entry {entry}: an overflow value of {len} bytes with no chain"),
            );
        }
        // A chain page holds a little less than a page: a generous bound.
        let max_pages = len / (page_size / 2) + 2;
        match chain_len(head, max_pages, page_size) {
            Ok((got, pages)) => {
                self.report.overflow_pages += pages as u64;
                if got != len {
                    self.find(
                        FindingKind::OverflowChain,
                        id,
                        format!("entry {entry}: the chain holds {got} bytes, the leaf says {len}"),
                    );
                }
            }
            Err(why) => self.find(
                FindingKind::OverflowChain,
                id,
                format!("entry {entry}: {why}"),
            ),
        }
    }
}

/// A key for a finding: text when printable, else hex; shortened.
fn show(key: &[u8]) -> String {
    let s: String = if key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(key).into_owned()
    } else {
        key.iter().map(|b| format!("{b:02x}")).collect()
    };
    if s.len() > 64 {
        format!("{}..({} bytes)", &s[..64], key.len())
    } else {
        s
    }
}

/// The newest checkpoint of a directory, as [`stat_dir`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointStat {
    /// The commit it is an image of.
    pub commit: CommitId,
    /// Its chain hash, when its header is valid.
    pub hash: Option<ChainHash>,
    /// Its size in bytes.
    pub bytes: u64,
    /// How long ago it was written (its file's modification time).
    pub age: Option<Duration>,
    /// The keys it holds, as its header says.
    pub keys: Option<u64>,
}

/// A named feed consumer, as the `consumers` file (or the live engine) records it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerPosition {
    /// Its name (`Engine::subscribe_as`).
    pub name: String,
    /// The last commit it acknowledged: the journal after it is retained for it.
    pub position: CommitId,
    /// Commits it is behind the last commit.
    pub lag: u64,
}

/// What a database directory holds: [`stat_dir`], [`Engine::stat`](crate::Engine::stat).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DirStat {
    /// The directory.
    pub path: PathBuf,
    /// Bytes of every file (apparent sizes), and on disk (allocated blocks):
    /// segments are preallocated, so the two differ.
    pub total_bytes: u64,
    /// Bytes allocated on disk for every file.
    pub allocated_bytes: u64,
    /// The manifest's size.
    pub manifest_bytes: u64,
    /// Checkpoint files (leftover `*.ckpt.tmp` included).
    pub checkpoint_bytes: u64,
    /// Journal segments (apparent size).
    pub journal_bytes: u64,
    /// Journal segments, allocated on disk.
    pub journal_allocated_bytes: u64,
    /// Everything else: `LOCK`, `consumers`, salvage copies, unknown files.
    pub other_bytes: u64,
    /// The last commit in the journal with its chain hash (recomputed from the
    /// checkpoint over the journal; the live engine's own for `Engine::stat`).
    pub last_commit: Option<(CommitId, ChainHash)>,
    /// What the manifest says was promised durable.
    pub promised: Option<(CommitId, ChainHash)>,
    /// Shards with segment files.
    pub shards: usize,
    /// Segment files per shard.
    pub segments_per_shard: BTreeMap<usize, usize>,
    /// The newest checkpoint.
    pub checkpoint: Option<CheckpointStat>,
    /// The older checkpoints kept in `pitr/` for point-in-time restore, oldest
    /// first (their bytes count in `checkpoint_bytes`): restores reach back to
    /// the oldest (`verify_dir` checks the journal from each).
    pub kept_checkpoints: Vec<CommitId>,
    /// Journal records after the newest checkpoint: what opening replays.
    pub records_after_checkpoint: u64,
    /// Pages of the B+tree (live engine only: a closed directory holds no
    /// pages, it is rebuilt from the checkpoint and journal when opened).
    pub pages: Option<u64>,
    /// The oldest snapshot still held and its age (live engine only).
    pub oldest_snapshot: Option<(CommitId, Duration)>,
    /// Where each journal shard runs and keeps its memory (live engine only:
    /// placement is decided when an engine opens).
    pub placement: Vec<crate::numa::ShardPlacement>,
    /// Named consumers and their lag behind `last_commit`.
    pub consumers: Vec<ConsumerPosition>,
    /// `salvage-*` directories (copies a salvage open made).
    pub salvage_dirs: Vec<PathBuf>,
    /// An engine had the directory open.
    pub in_use: bool,
    /// What could not be read, in words (stat does not fail on damage; run
    /// `verify_dir` for the details).
    pub problems: Vec<String>,
}

impl fmt::Display for DirStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "database: {}{}",
            self.path.display(),
            if self.in_use { " (in use)" } else { "" }
        )?;
        writeln!(
            f,
            "size: {} bytes ({} allocated): checkpoint {}, journal {} ({} allocated), manifest {}, other {}",
            self.total_bytes,
            self.allocated_bytes,
            self.checkpoint_bytes,
            self.journal_bytes,
            self.journal_allocated_bytes,
            self.manifest_bytes,
            self.other_bytes
        )?;
        match &self.last_commit {
            Some((id, hash)) => writeln!(f, "last commit: {} (chain hash {hash})", id.get())?,
            None => writeln!(f, "last commit: unknown")?,
        }
        if let Some((id, _)) = &self.promised {
            writeln!(f, "promised durable: {}", id.get())?;
        }
        writeln!(f, "shards: {}", self.shards)?;
        for (shard, n) in &self.segments_per_shard {
            writeln!(f, "  shard {shard}: {n} segment(s)")?;
        }
        match &self.checkpoint {
            Some(c) => writeln!(
                f,
                "checkpoint: commit {}, {} bytes, age {}",
                c.commit.get(),
                c.bytes,
                c.age.map_or("unknown".to_owned(), |a| format!("{:.0?}", a))
            )?,
            None => writeln!(f, "checkpoint: none")?,
        }
        if let Some(c) = &self.checkpoint {
            if let Some(keys) = c.keys {
                writeln!(
                    f,
                    "  {keys} keys; {} journal records after it",
                    self.records_after_checkpoint
                )?;
            }
        }
        if let Some(oldest) = self.kept_checkpoints.first() {
            writeln!(
                f,
                "kept for point-in-time restore: {} older checkpoint(s), from commit {}",
                self.kept_checkpoints.len(),
                oldest.get()
            )?;
        }
        if let Some(pages) = self.pages {
            writeln!(f, "pages: {pages}")?;
        }
        match self.oldest_snapshot {
            Some((id, age)) => writeln!(f, "oldest snapshot: commit {}, held {age:.0?}", id.get())?,
            None if self.pages.is_some() => writeln!(f, "oldest snapshot: none held")?,
            None => {}
        }
        for p in &self.placement {
            writeln!(f, "  shard {} on cpu {}, node {}", p.shard, p.cpu, p.node)?;
        }
        for c in &self.consumers {
            writeln!(
                f,
                "consumer {}: at {}, {} behind",
                c.name,
                c.position.get(),
                c.lag
            )?;
        }
        for s in &self.salvage_dirs {
            writeln!(f, "salvage copy: {}", s.display())?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        Ok(())
    }
}

/// Sizes, last commit, shards, checkpoint, consumers and salvage copies of the
/// database in `dir`: read-only, without the directory lock. Damage does not
/// make it fail (it is listed in `problems`); `Err` only when `dir` is not a
/// readable directory.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("shardstone-doc-stat-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let engine = shardstone::Engine::open(&dir)?;
/// engine.run("put", |tx| tx.put(b"k", b"v"))?;
/// let stat = shardstone::stat_dir(&dir)?;
/// assert_eq!(stat.last_commit, Some(engine.last_commit()));
/// # drop(engine);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), shardstone::Error>(())
/// ```
pub fn stat_dir(dir: impl AsRef<Path>) -> Result<DirStat> {
    let dir = dir.as_ref();
    let mut stat = stat_files(dir)?;
    let check = inspect::check_dir(dir, VERIFY_MAX_VALUE, false)?;
    stat.problems.extend(
        check
            .findings
            .into_iter()
            .map(|(area, e)| finding_of(area, e).to_string()),
    );
    stat.promised = check.promised.map(|(id, h)| (CommitId(id), h));
    stat.last_commit = check.chain.map(|(id, h)| (CommitId(id), h));
    stat.records_after_checkpoint = check.records;
    if let (Some(c), Some((id, hash))) = (stat.checkpoint.as_mut(), check.checkpoint) {
        if c.commit.get() == id {
            c.hash = Some(hash);
        }
    }
    let last = stat.last_commit.map_or(0, |(id, _)| id.get());
    stat.consumers = check
        .consumers
        .into_iter()
        .map(|(name, needed)| {
            let position = needed.saturating_sub(1);
            ConsumerPosition {
                name,
                position: CommitId(position),
                lag: last.saturating_sub(position),
            }
        })
        .collect();
    Ok(stat)
}

/// Stat of a live engine's directory: the files as `stat_dir` sees them, the
/// commit and consumers as the engine knows them.
pub(crate) fn stat_engine(
    dir: &Path,
    last_commit: (CommitId, ChainHash),
    checkpoint: (u64, ChainHash),
    consumers: Vec<(String, CommitId)>,
    live: LiveStat,
) -> Result<DirStat> {
    let mut stat = stat_files(dir)?;
    stat.in_use = true;
    stat.last_commit = Some(last_commit);
    stat.records_after_checkpoint = last_commit.0.get().saturating_sub(checkpoint.0);
    stat.pages = Some(live.pages);
    stat.oldest_snapshot = live.oldest_snapshot;
    stat.placement = live.placement;
    if let Some(c) = stat
        .checkpoint
        .as_mut()
        .filter(|c| c.commit.get() == checkpoint.0)
    {
        c.hash = Some(checkpoint.1);
    }
    stat.consumers = consumers
        .into_iter()
        .map(|(name, position)| ConsumerPosition {
            name,
            position,
            lag: last_commit.0.get().saturating_sub(position.get()),
        })
        .collect();
    Ok(stat)
}

/// What only an open engine knows, for [`stat_engine`].
pub(crate) struct LiveStat {
    pub pages: u64,
    pub oldest_snapshot: Option<(CommitId, Duration)>,
    pub placement: Vec<crate::numa::ShardPlacement>,
}

/// The file-level part of a stat: sizes, shards, segments, the checkpoint file.
fn stat_files(dir: &Path) -> Result<DirStat> {
    use std::os::unix::fs::MetadataExt;
    inspect::ensure_dir(dir)?;
    let mut stat = DirStat {
        path: dir.to_owned(),
        total_bytes: 0,
        allocated_bytes: 0,
        manifest_bytes: 0,
        checkpoint_bytes: 0,
        journal_bytes: 0,
        journal_allocated_bytes: 0,
        other_bytes: 0,
        last_commit: None,
        promised: None,
        shards: 0,
        segments_per_shard: BTreeMap::new(),
        checkpoint: None,
        kept_checkpoints: Vec::new(),
        records_after_checkpoint: 0,
        pages: None,
        oldest_snapshot: None,
        placement: Vec::new(),
        consumers: Vec::new(),
        salvage_dirs: Vec::new(),
        in_use: lock_holder_alive(dir),
        problems: Vec::new(),
    };
    // Sizes of the files of one directory level, without following links.
    fn files(path: &Path, problems: &mut Vec<String>) -> Vec<(String, std::fs::Metadata)> {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_owned();
                    Some((name, std::fs::symlink_metadata(e.path()).ok()?))
                })
                .collect(),
            Err(e) => {
                problems.push(format!("cannot list {}: {e}", path.display()));
                Vec::new()
            }
        }
    }
    let mut problems = Vec::new();
    let newest = inspect::checkpoint_ids(dir).pop();
    for (name, meta) in files(dir, &mut problems) {
        let (len, alloc) = (meta.len(), meta.blocks() * 512);
        if meta.is_dir() {
            if name.starts_with("salvage-") {
                stat.salvage_dirs.push(dir.join(&name));
                let (l, a) = files(&dir.join(&name), &mut problems)
                    .iter()
                    .fold((0, 0), |(l, a), (_, m)| (l + m.len(), a + m.blocks() * 512));
                stat.other_bytes += l;
                stat.total_bytes += l;
                stat.allocated_bytes += a;
            }
            continue;
        }
        stat.total_bytes += len;
        stat.allocated_bytes += alloc;
        if name == "manifest" {
            stat.manifest_bytes += len;
        } else if name.starts_with("checkpoint-") && name.contains(".ckpt") {
            stat.checkpoint_bytes += len;
            if newest.is_some_and(|id| {
                inspect::checkpoint_path(dir, id).file_name() == Some(name.as_ref())
            }) {
                stat.checkpoint = Some(CheckpointStat {
                    commit: CommitId(newest.unwrap_or(0)),
                    hash: None,
                    bytes: len,
                    age: meta
                        .modified()
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok()),
                    keys: crate::journal::checkpoint_keys(&dir.join(&name)),
                });
            }
        } else {
            stat.other_bytes += len;
        }
    }
    let pitr = dir.join(crate::journal::PITR_DIR);
    if pitr.is_dir() {
        for (name, meta) in files(&pitr, &mut problems) {
            stat.total_bytes += meta.len();
            stat.allocated_bytes += meta.blocks() * 512;
            match inspect::checkpoint_id_of(&name) {
                Some(id) if meta.is_file() => {
                    stat.checkpoint_bytes += meta.len();
                    stat.kept_checkpoints.push(CommitId(id));
                }
                _ => stat.other_bytes += meta.len(),
            }
        }
        stat.kept_checkpoints.sort();
    }
    for (name, meta) in files(&dir.join("journal"), &mut problems) {
        let (len, alloc) = (meta.len(), meta.blocks() * 512);
        stat.total_bytes += len;
        stat.allocated_bytes += alloc;
        if let Some((shard, _)) = meta.is_file().then(|| inspect::segment_of(&name)).flatten() {
            stat.journal_bytes += len;
            stat.journal_allocated_bytes += alloc;
            *stat.segments_per_shard.entry(shard).or_default() += 1;
        } else {
            stat.other_bytes += len;
        }
    }
    stat.salvage_dirs.sort();
    stat.shards = stat.segments_per_shard.len();
    if !dir.join("journal").is_dir() {
        problems.retain(|p| !p.contains("journal"));
    }
    stat.problems = problems;
    Ok(stat)
}
