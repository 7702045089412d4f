//! Read-only inspection of a database directory, for `verify` and `stat`.
//!
//! It takes no lock and writes nothing, not even the manifest: it reads the
//! manifest, the checkpoint, the `consumers` file and the segments with the
//! same parsers `open` uses (`manifest.rs`, `checkpoint.rs`, `recovery.rs` in
//! its read-only salvage mode), so a directory another process has open can be
//! inspected, and every finding is the typed error a strict `open` returns.

use super::checkpoint::{self, Checkpoint};
use super::io::{Io, OsIo};
use super::manifest::{self, Manifest};
use super::record::ChainHash;
use super::recovery::{self, Rules};
use super::shard::parse_segment_name;
use crate::error::{Error, Result};
use crate::txn::CommitId;
use std::path::{Path, PathBuf};

/// Which file a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Area {
    Manifest,
    Checkpoint,
    Journal,
    Consumers,
    /// The checkpoints kept in `pitr/` and the journal that continues them.
    Pitr,
}

/// What reading a directory found.
#[derive(Default)]
pub(crate) struct DirCheck {
    pub findings: Vec<(Area, Error)>,
    /// The manifest's promised point and checkpoint, when it could be read.
    pub promised: Option<(u64, ChainHash)>,
    pub manifest_checkpoint: Option<(u64, ChainHash)>,
    /// The newest checkpoint's header (its commit id and chain hash), when valid.
    pub checkpoint: Option<(u64, ChainHash)>,
    /// Its entries, when every block verified (`load_checkpoint` only).
    pub checkpoint_entries: Option<u64>,
    pub checkpoint_bytes: u64,
    /// Where the verified hash chain ends (`None`: no point to start it from).
    pub chain: Option<(u64, ChainHash)>,
    /// Commits replayed from the journal (after the checkpoint).
    pub records: u64,
    /// Bytes of frames read from the segments that remain.
    pub journal_bytes: u64,
    pub segments: u64,
    /// Named consumers and the oldest commit each still needs.
    pub consumers: Vec<(String, u64)>,
    /// Checkpoints in `pitr/` whose header (and, with `load_checkpoint`, every
    /// block) verified and whose journal reaches the newest checkpoint.
    pub pitr_checkpoints: u64,
    /// The oldest commit a restore from this directory can reach: the oldest
    /// such `pitr/` checkpoint, else the newest checkpoint.
    pub restorable_from: Option<u64>,
}

fn corrupt(path: PathBuf, commit: Option<u64>, reason: String) -> Error {
    Error::Corrupt {
        path,
        offset: 0,
        commit_id: commit.map(CommitId),
        reason,
    }
}

/// Fails only when `dir` cannot be looked at as a directory.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::NotADirectory {
            path: dir.to_owned(),
        }),
        Err(source) => Err(Error::Io {
            op: "open database directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The commit ids of the checkpoint files in `dir`, ascending.
pub(crate) fn checkpoint_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| checkpoint::parse_checkpoint_name(e.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    ids
}

/// The commit id of a checkpoint file's name.
pub(crate) fn checkpoint_id_of(name: &str) -> Option<u64> {
    checkpoint::parse_checkpoint_name(name)
}

/// The name of a checkpoint file.
pub(crate) fn checkpoint_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(checkpoint::checkpoint_name(id))
}

/// `(shard, segment number)` of a segment file name.
pub(crate) fn segment_of(name: &str) -> Option<(usize, u64)> {
    parse_segment_name(name)
}

/// Reads everything in `dir` that recovery reads, verifying each checksum,
/// the commit order and the hash chain; with `load_checkpoint`, every block
/// and entry of the checkpoint too.
pub(crate) fn check_dir(
    dir: &Path,
    max_value_len: usize,
    load_checkpoint: bool,
) -> Result<DirCheck> {
    ensure_dir(dir)?;
    let mut out = DirCheck::default();
    let manifest: Option<Manifest> = match manifest::read(dir) {
        Ok(m) => m,
        Err(e) => {
            out.findings.push((Area::Manifest, e));
            None
        }
    };
    let manifest_damaged = !out.findings.is_empty();
    out.promised = manifest.as_ref().map(|m| m.promised);
    out.manifest_checkpoint = manifest.as_ref().map(|m| m.checkpoint);

    let newest = checkpoint_ids(dir).pop();
    if let Some(m) = manifest
        .as_ref()
        .filter(|m| m.checkpoint.0 > 0 && newest.is_none_or(|id| id < m.checkpoint.0))
    {
        out.findings.push((
            Area::Checkpoint,
            corrupt(
                checkpoint_path(dir, m.checkpoint.0),
                Some(m.checkpoint.0),
                format!(
                    "the checkpoint at commit {} is missing (the manifest names it)",
                    m.checkpoint.0
                ),
            ),
        ));
    }
    // Where the chain starts: the checkpoint's header, else what the manifest
    // says the checkpoint was, else the beginning.
    let mut start = manifest
        .as_ref()
        .map_or((0, ChainHash::genesis()), |m| m.checkpoint);
    let mut start_known = newest.is_none() || manifest.is_some();
    if let Some(id) = newest {
        let path = checkpoint_path(dir, id);
        out.checkpoint_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        match Checkpoint::open(&path) {
            Err(e) => out.findings.push((Area::Checkpoint, e)),
            Ok(c) if c.id != id => out.findings.push((
                Area::Checkpoint,
                corrupt(
                    path.clone(),
                    None,
                    format!("the file name says commit {id}, the header {}", c.id),
                ),
            )),
            Ok(c) => {
                out.checkpoint = Some((c.id, c.hash));
                if let Some(m) = manifest.as_ref().filter(|m| m.checkpoint.0 == c.id) {
                    if m.checkpoint.1 != c.hash {
                        out.findings.push((
                            Area::Checkpoint,
                            corrupt(
                                path.clone(),
                                Some(c.id),
                                format!(
                                    "hash chain mismatch: the checkpoint says commit {} hashes to {}, the manifest {}",
                                    c.id, c.hash, m.checkpoint.1
                                ),
                            ),
                        ));
                    }
                }
                if manifest.is_none() || c.id >= start.0 {
                    start = (c.id, c.hash);
                    start_known = true;
                }
                if load_checkpoint {
                    match c.load(max_value_len, |_, _| Ok(())) {
                        Ok(n) => out.checkpoint_entries = Some(n),
                        Err(e) => out.findings.push((Area::Checkpoint, e)),
                    }
                }
            }
        }
    }

    let jdir = dir.join("journal");
    let boot = OsIo.boot_id();
    let rules = Rules {
        start,
        manifest: manifest.as_ref(),
        same_boot: boot.is_some() && manifest.as_ref().is_some_and(|m| m.boot == boot),
        read_only: true,
        salvage: true,
        max_value_len,
    };
    let mut frames_found = 0;
    if jdir.is_dir() {
        match recovery::recover(&jdir, &OsIo, &rules, |_, _| Ok(())) {
            Ok(r) => {
                out.records = r.report.replayed;
                out.segments = r.segments.len() as u64;
                out.journal_bytes = r.segments.iter().map(|s| s.used()).sum();
                frames_found = r.frames_found;
                out.findings
                    .extend(r.errors.into_iter().map(|e| (Area::Journal, e)));
                out.chain = start_known.then_some((r.last_id, r.last_hash));
            }
            Err(e) => out.findings.push((Area::Journal, e)),
        }
    } else {
        if let Some(m) = manifest.as_ref().filter(|m| m.promised.0 > start.0) {
            out.findings.push((
                Area::Journal,
                corrupt(
                    jdir.clone(),
                    Some(start.0.saturating_add(1)),
                    format!(
                        "the journal directory is missing, but commits up to {} were promised durable",
                        m.promised.0
                    ),
                ),
            ));
        }
        out.chain = start_known.then_some(start);
    }
    if manifest.is_none() && !manifest_damaged && (newest.is_some() || frames_found > 0) {
        out.findings.insert(
            0,
            (
                Area::Manifest,
                corrupt(
                    manifest::path(dir),
                    None,
                    "the manifest is missing, but the directory holds a checkpoint or journal: \
                     what was promised durable cannot be checked"
                        .to_owned(),
                ),
            ),
        );
    }
    if let Some(newest) = out.checkpoint {
        out.restorable_from = Some(newest.0);
        check_pitr(dir, newest, max_value_len, load_checkpoint, &mut out);
    }
    match super::read_consumers(dir) {
        Ok(c) => out.consumers = c,
        Err(e) => out.findings.push((Area::Consumers, e)),
    }
    Ok(out)
}

/// Checks the checkpoints kept for point-in-time restore: each one's header
/// (and blocks, with `load_checkpoint`), and that the journal chains from it,
/// commit by commit, to the newest checkpoint and reaches that checkpoint's
/// hash. Retention keeps that journal (`pitr.rs`, its invariant), removing a
/// `pitr/` checkpoint durably before the segments it needs, so a break is
/// damage, never a crash in between.
fn check_pitr(
    dir: &Path,
    newest: (u64, ChainHash),
    max_value_len: usize,
    load_checkpoint: bool,
    out: &mut DirCheck,
) {
    let listed = match super::pitr::listed(&dir.join(super::reader::PITR_DIR)) {
        Ok(l) => l,
        Err(e) => return out.findings.push((Area::Pitr, e)),
    };
    let jdir = dir.join("journal");
    // Newest first: the oldest intact one ends up in `restorable_from`.
    for (id, path, _) in listed {
        let c = match Checkpoint::open(&path) {
            Ok(c) if c.id == id => c,
            Ok(c) => {
                let why = format!("the file name says commit {id}, the header {}", c.id);
                out.findings.push((Area::Pitr, corrupt(path, None, why)));
                continue;
            }
            Err(e) => {
                out.findings.push((Area::Pitr, e));
                continue;
            }
        };
        if load_checkpoint {
            if let Err(e) = c.load(max_value_len, |_, _| Ok(())) {
                out.findings.push((Area::Pitr, e));
                continue;
            }
        }
        if c.id >= newest.0 {
            continue;
        }
        match chain_between(&jdir, (c.id, c.hash), newest.0) {
            Err(e) => out.findings.push((Area::Pitr, e)),
            Ok(Err(missing)) => out.findings.push((
                Area::Pitr,
                corrupt(
                    jdir.clone(),
                    Some(missing),
                    format!(
                        "the journal kept for point-in-time restore from the checkpoint at \
                         commit {} (pitr/) breaks at commit {missing}: restores from that \
                         checkpoint reach commit {} at most",
                        c.id,
                        missing - 1
                    ),
                ),
            )),
            Ok(Ok(hash)) if hash != newest.1 => out.findings.push((
                Area::Pitr,
                corrupt(
                    jdir.clone(),
                    Some(newest.0),
                    format!(
                        "hash chain mismatch: the journal kept for point-in-time restore, \
                         replayed from the checkpoint at commit {} (pitr/), gives commit {} \
                         the hash {hash}, the newest checkpoint {}",
                        c.id, newest.0, newest.1
                    ),
                ),
            )),
            Ok(Ok(_)) => {
                out.pitr_checkpoints += 1;
                out.restorable_from = Some(c.id);
            }
        }
    }
}

/// Chains the journal in `jdir` from `from` up to commit `to`: the hash at
/// `to`, or `Err(id)` for the first commit that is missing or cannot be
/// chained.
fn chain_between(jdir: &Path, from: (u64, ChainHash), to: u64) -> Result<Result<ChainHash, u64>> {
    let mut history = super::history::History::open(jdir, vec![from], from.0, to, None)?;
    let mut at = from;
    while at.0 < to {
        match history.next() {
            Some(r) if r.id == at.0 + 1 && r.prev_hash == at.1 => at = (r.id, r.hash),
            _ => return Ok(Err(at.0 + 1)),
        }
    }
    Ok(Ok(at.1))
}
