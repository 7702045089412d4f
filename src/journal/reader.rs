//! `JournalReader`: the commits a database directory's journal holds, read
//! without an engine: no lock is taken and nothing is written, so it works on a
//! closed directory, on a backup, and on a directory a live engine has open.
//!
//! It is the feed's history reader (`history.rs`: the shards merged by commit
//! id, each record chained from a point whose hash is known) over the files
//! read into memory instead of mapped (a live engine may trim a segment on
//! close; a mapping past a file's new end would fault). The points it chains
//! from are every one the directory records: the genesis, the manifest's
//! checkpoint and promised point, every checkpoint's header (the newest and
//! the older ones kept for point-in-time restore in `pitr/`), and the feed
//! consumers' points.
//!
//! Invariant: the records it yields are consecutive. It starts at the oldest
//! commit it can chain and stops at the first missing id: on a live directory,
//! a frame still being written (or written and not yet acknowledged) ends what
//! it shows; frames a crash left beyond a gap are never shown as if they
//! followed.
//!
//! Each record comes with its commit time when its frame recorded one (frames
//! of versions before times were recorded have none). Times come from the wall
//! clock when each commit took its id, so they may step back when the clock
//! is set back; a search by time takes the records whose time is in range, and
//! [`JournalReader::last_before`] the last commit before the first one past a
//! time, as PostgreSQL's recovery target does.

use super::checkpoint::{parse_checkpoint_name, Checkpoint};
use super::history::History;
use super::record::{frame_time, BodyView, ChainHash, FRAME_HEADER};
use super::{load_holds, manifest};
use crate::error::{Error, Result};
use crate::journal::{CommitRecord, Op};
use crate::txn::CommitId;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The subdirectory of a database (and of a backup) that holds the older
/// checkpoints kept for point-in-time restore.
pub(crate) const PITR_DIR: &str = "pitr";

/// Reads the commits in a database directory's journal, in commit order,
/// without opening the database: no lock, no writes.
///
/// ```
/// use shardstone::{Engine, Filter, JournalReader};
/// let dir = std::env::temp_dir().join(format!("shardstone-doc-reader-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let engine = Engine::open(&dir)?;
/// engine.run("open-account", |tx| tx.put(b"acct:7", b"0"))?;
/// engine.run("deposit", |tx| tx.put(b"acct:7", b"10"))?;
/// engine.run("deposit", |tx| tx.put(b"acct:8", b"5"))?;
///
/// // The engine may keep running: the reader takes no lock.
/// let reader = JournalReader::open(&dir)?;
/// let hits: Vec<u64> = reader
///     .search(&Filter { key: Some(b"acct:7".to_vec()), ..Default::default() })?
///     .map(|r| r.map(|r| r.commit_id.get()))
///     .collect::<shardstone::Result<_>>()?;
/// assert_eq!(hits, [1, 2]);
/// assert_eq!(reader.get(3)?.unwrap().command, "deposit");
/// # drop(engine);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), shardstone::Error>(())
/// ```
pub struct JournalReader {
    dir: PathBuf,
    points: Vec<(u64, ChainHash)>,
}

/// What [`JournalReader::search`] looks for: a record matches when it passes
/// every condition that is set (`Filter::default()` matches every record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Some put or delete of the record is of exactly this key.
    pub key: Option<Vec<u8>>,
    /// Some put or delete of the record is of a key that starts with this.
    pub prefix: Option<Vec<u8>>,
    /// The record was made by the command of exactly this name.
    pub command: Option<String>,
    /// Its commit id is at least this (inclusive).
    pub from: Option<CommitId>,
    /// Its commit id is at most this (inclusive).
    pub to: Option<CommitId>,
    /// Its commit time is at or after this (a record without a time fails).
    pub since: Option<SystemTime>,
    /// Its commit time is at or before this (a record without a time fails).
    pub until: Option<SystemTime>,
}

/// One record of the journal with the time its commit was made.
///
/// It dereferences to its [`CommitRecord`], so `entry.commit_id` and
/// `entry.ops` read as on a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// The record, as the feed gives it.
    pub record: CommitRecord,
    /// When the commit took its id, by the wall clock of the machine that made
    /// it (to a few milliseconds); `None` for records written before times
    /// were recorded.
    pub time: Option<SystemTime>,
}

impl std::ops::Deref for JournalEntry {
    type Target = CommitRecord;

    fn deref(&self) -> &CommitRecord {
        &self.record
    }
}

impl Filter {
    /// Whether `entry` passes every condition that is set.
    pub fn matches(&self, entry: &JournalEntry) -> bool {
        let op_key = |op: &Op| match op {
            Op::Put { key, .. } | Op::Delete { key } => key.clone(),
        };
        let rec = &entry.record;
        let time_ok = |bound: Option<SystemTime>, ok: fn(&SystemTime, &SystemTime) -> bool| {
            bound.is_none_or(|b| entry.time.is_some_and(|t| ok(&t, &b)))
        };
        time_ok(self.since, |t, b| t >= b)
            && time_ok(self.until, |t, b| t <= b)
            && self.from.is_none_or(|f| rec.commit_id >= f)
            && self.to.is_none_or(|t| rec.commit_id <= t)
            && self.command.as_deref().is_none_or(|c| rec.command == c)
            && self
                .key
                .as_deref()
                .is_none_or(|k| rec.ops.iter().any(|op| op_key(op) == k))
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| rec.ops.iter().any(|op| op_key(op).starts_with(p)))
    }
}

/// The records of a journal in commit order: consecutive ids, from the oldest
/// that can be chained (or the one after `from`) to the first missing one.
pub struct Records {
    history: History,
    last: Option<u64>,
    to: u64,
}

impl Iterator for Records {
    type Item = Result<JournalEntry>;

    fn next(&mut self) -> Option<Result<JournalEntry>> {
        let r = self.history.next()?;
        if r.id > self.to || self.last.is_some_and(|l| l.checked_add(1) != Some(r.id)) {
            // A gap: what follows does not continue what was shown.
            self.to = 0;
            return None;
        }
        self.last = Some(r.id);
        Some(
            BodyView::parse(&r.frame[FRAME_HEADER..])
                .map(|body| JournalEntry {
                    record: body.to_record(r.prev_hash, r.hash),
                    time: frame_time(&r.frame),
                })
                .ok_or(Error::InvalidRecord {
                    commit_id: Some(CommitId(r.id)),
                    reason: "the journal record does not decode".to_owned(),
                }),
        )
    }
}

/// The records of a journal that pass a [`Filter`], in commit order.
pub struct Search {
    records: Records,
    filter: Filter,
}

impl Iterator for Search {
    type Item = Result<JournalEntry>;

    fn next(&mut self) -> Option<Result<JournalEntry>> {
        loop {
            match self.records.next()? {
                Ok(rec) if !self.filter.matches(&rec) => continue,
                other => return Some(other),
            }
        }
    }
}

impl JournalReader {
    /// Opens the journal of the database directory `dir` (closed, a backup, or
    /// open in a live engine) for reading. Takes no lock and writes nothing.
    /// A directory without a manifest is [`Error::NotADatabase`].
    pub fn open(dir: impl AsRef<Path>) -> Result<JournalReader> {
        let dir = dir.as_ref().to_owned();
        let Some(m) = manifest::read(&dir)? else {
            return Err(Error::NotADatabase { path: dir });
        };
        let mut points = vec![m.checkpoint, m.promised];
        points.extend(
            checkpoints(&dir)?
                .into_iter()
                .map(|(_, id, hash)| (id, hash)),
        );
        points.extend(load_holds(&dir)?.values().filter_map(|h| *h.point.lock()));
        Ok(JournalReader { dir, points })
    }

    /// Every record it can read, in commit order.
    pub fn records(&self) -> Result<Records> {
        self.between(0, u64::MAX)
    }

    /// The records after `from` (as [`crate::Engine::subscribe`] counts), in
    /// commit order.
    pub fn tail(&self, from: impl Into<CommitId>) -> Result<Records> {
        self.between(from.into().get(), u64::MAX)
    }

    /// The record of commit `id`, if the journal holds it.
    pub fn get(&self, id: impl Into<CommitId>) -> Result<Option<JournalEntry>> {
        let id = id.into().get();
        let Some(before) = id.checked_sub(1) else {
            return Ok(None);
        };
        self.between(before, id)?.next().transpose()
    }

    /// The records that pass `filter`, in commit order.
    pub fn search(&self, filter: &Filter) -> Result<Search> {
        let from = filter.from.map_or(0, |f| f.get().saturating_sub(1));
        let to = filter.to.map_or(u64::MAX, CommitId::get);
        Ok(Search {
            records: self.between(from, to)?,
            filter: filter.clone(),
        })
    }

    /// The commit to restore to for the point in time `at`: the one before the
    /// first record whose time is after `at` (so a clock set back later does
    /// not pull in commits made after `at`). `Ok(None)` when even the first
    /// record it can read is after `at`. A record without a time before the
    /// answer is found is [`Error::NoCommitTime`].
    pub fn last_before(&self, at: SystemTime) -> Result<Option<CommitId>> {
        let mut last = None;
        for entry in self.records()? {
            let entry = entry?;
            match entry.time {
                None => {
                    return Err(Error::NoCommitTime {
                        commit_id: entry.commit_id,
                    })
                }
                Some(t) if t > at => break,
                Some(_) => last = Some(entry.commit_id),
            }
        }
        Ok(last)
    }

    /// The first and last commit ids it can read (`None`: no records).
    pub fn bounds(&self) -> Result<Option<(CommitId, CommitId)>> {
        let mut first = None;
        let mut last = None;
        for rec in self.records()? {
            let id = rec?.commit_id;
            first.get_or_insert(id);
            last = Some(id);
        }
        Ok(first.zip(last))
    }

    /// Records after `from` up to `to`.
    fn between(&self, from: u64, to: u64) -> Result<Records> {
        let jdir = self.dir.join("journal");
        let history = History::open(&jdir, self.points.clone(), from, u64::MAX, None);
        let history = match history {
            // A database without a journal (`Durability::None`): no records.
            Err(Error::Io { ref source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && !jdir.exists() =>
            {
                History::empty()
            }
            other => other?,
        };
        Ok(Records {
            history,
            last: None,
            to,
        })
    }
}

/// The checkpoints in `dir` and in its `pitr/`, with their headers' commit id
/// and chain hash, oldest first. A file whose header does not verify is left
/// out (the engine's open reports a damaged newest checkpoint).
pub(crate) fn checkpoints(dir: &Path) -> Result<Vec<(PathBuf, u64, ChainHash)>> {
    let mut found = Vec::new();
    for d in [dir.to_owned(), dir.join(PITR_DIR)] {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    op: "read directory",
                    path: d,
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_checkpoint_name) else {
                continue;
            };
            if let Ok(c) = Checkpoint::open(&entry.path()) {
                if c.id == id {
                    found.push((c.path.clone(), c.id, c.hash));
                }
            }
        }
    }
    found.sort_by_key(|(_, id, _)| *id);
    found.dedup_by_key(|(_, id, _)| *id);
    Ok(found)
}
