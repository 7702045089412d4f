//! The files of online backups and point-in-time restores.
//!
//! A backup directory is a database directory: a checkpoint, the journal, a
//! manifest that promises the backup's commit, and in `pitr/` the older
//! checkpoints it can also be restored from. Segments are copied cut right
//! after their last frame at or before the backup's commit (frames up to a
//! visible commit are whole; what follows may still be being written), so the
//! copy holds exactly the history up to that commit.
//!
//! Crash safety: every file is written under a temporary name, fsynced and
//! renamed, and the manifest is written last. A backup interrupted before its
//! first manifest does not open (no manifest: `Corrupt`); one interrupted
//! during a later backup opens at its previous commit or at a later one of the
//! same history, never as something else. Checkpoints are blocked (not
//! commands) while a backup copies, so no file it needs is deleted under it.

use super::checkpoint::{self, checkpoint_name};
use super::history::History;
use super::io::{open_regular_if_exists, Io};
use super::lock::DirLock;
use super::manifest::{self, Listed, Manifest};
use super::reader::{self, PITR_DIR};
use super::record::{parse_frame, ChainHash, Parsed, KIND_MARK};
use super::shard::{parse_segment_name, SEGMENT_HEADER};
use super::{create_dirs, pitr, Journal};
use crate::error::{Error, Result};
use crate::options::Durability;
use crate::sync::MutexGuard;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Bytes and files a backup wrote, and those it found already in place.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Copied {
    pub bytes: u64,
    pub files: u64,
    pub skipped_bytes: u64,
    pub skipped_files: u64,
}

/// What a finished backup holds.
pub(crate) struct BackedUp {
    pub point: (u64, ChainHash),
    pub checkpoint: (u64, ChainHash),
    /// The oldest commit it can be restored to.
    pub oldest: u64,
    pub copied: Copied,
}

/// Where a segment's copy up to commit `limit` ends: after its last commit
/// frame at or before `limit` (marks after it are left out: their watermark may
/// promise more). `None`: it holds no such frame. Returns (end, last commit).
fn cut(bytes: &[u8], limit: u64) -> Option<(usize, u64)> {
    let mut off = SEGMENT_HEADER;
    let mut found = None;
    while off < bytes.len() {
        let Parsed::Frame(f) = parse_frame(&bytes[off..]) else {
            break;
        };
        if f.kind != KIND_MARK && f.body.len() >= 8 {
            let id = u64::from_le_bytes(f.body[..8].try_into().expect("8 bytes"));
            if id > limit {
                break;
            }
            found = Some((off + f.stride, id));
        }
        off += f.stride;
    }
    found.map(|(end, id)| (end.min(bytes.len()), id))
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    let Some(mut file) = open_regular_if_exists(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err("read", path))?;
    Ok(Some(bytes))
}

/// Writes `bytes` as `dir/name` unless that file already holds exactly them.
fn put_file(io: &dyn Io, dir: &Path, name: &str, bytes: &[u8], copied: &mut Copied) -> Result<()> {
    let path = dir.join(name);
    let same = std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64)
        && read(&path)?.is_some_and(|b| b == bytes);
    if same {
        copied.skipped_bytes += bytes.len() as u64;
        copied.skipped_files += 1;
        return Ok(());
    }
    manifest::replace_file(dir, io, name, bytes)?;
    copied.bytes += bytes.len() as u64;
    copied.files += 1;
    Ok(())
}

/// Copies the (immutable) checkpoint file `src` into `dir` unless a file of its
/// name and size is there: temporary name, fsync, rename, directory fsync.
fn put_checkpoint(io: &dyn Io, src: &Path, dir: &Path, copied: &mut Copied) -> Result<()> {
    let name = src.file_name().expect("a checkpoint file name");
    let to = dir.join(name);
    let len = std::fs::metadata(src).map_err(io_err("stat", src))?.len();
    if std::fs::metadata(&to).is_ok_and(|m| m.len() == len) {
        copied.skipped_bytes += len;
        copied.skipped_files += 1;
        return Ok(());
    }
    let tmp = dir.join(format!("{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut from = std::fs::File::open(src).map_err(io_err("open", src))?;
        let mut file = io.create(&tmp).map_err(io_err("create", &tmp))?;
        std::io::copy(&mut from, &mut file).map_err(io_err("copy", &tmp))?;
        io.sync(&file).map_err(io_err("fsync", &tmp))?;
        io.rename(&tmp, &to).map_err(io_err("rename", &tmp))?;
        io.sync_dir(dir).map_err(io_err("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    copied.bytes += len;
    copied.files += 1;
    Ok(())
}

/// What `chain_run` found: the start of the last run of consecutive ids
/// (`u64::MAX`: none), the last id and its hash, the hash of the wanted id.
type Run = (u64, Option<(u64, ChainHash)>, Option<ChainHash>);

/// The chainable commits of `jdir` from `points` on (see `Run`).
fn chain_run(jdir: &Path, points: Vec<(u64, ChainHash)>, want: u64) -> Result<Run> {
    if !jdir.is_dir() {
        return Ok((u64::MAX, None, None));
    }
    let mut history = History::open(jdir, points, 0, u64::MAX, None)?;
    let mut start = u64::MAX;
    let mut last: Option<(u64, ChainHash)> = None;
    let mut wanted = None;
    while let Some(r) = history.next() {
        if last.is_none_or(|(l, _)| l.checked_add(1) != Some(r.id)) {
            start = r.id;
        }
        if r.id == want {
            wanted = Some(r.hash);
        }
        last = Some((r.id, r.hash));
    }
    Ok((start, last, wanted))
}

/// One backup in progress: checkpoints of the source are held off, the
/// destination is locked.
pub(crate) struct BackupSession<'a> {
    journal: &'a Journal,
    _one: MutexGuard<'a, ()>,
    _lock: DirLock,
    src: PathBuf,
    dest: PathBuf,
    checkpoint: Option<(u64, ChainHash)>,
    copied: Copied,
}

impl Journal {
    /// Starts a backup into `dest` (created if missing; else empty or an earlier
    /// backup of this database).
    pub(crate) fn begin_backup(&self, dest: &Path) -> Result<BackupSession<'_>> {
        let Some(src) = self.dir.clone() else {
            return Err(Error::Unsupported(
                "an in-memory engine has no files to back up",
            ));
        };
        create_dirs(&*self.io, dest)?;
        let lock = DirLock::acquire(dest, true)?;
        let old = manifest::read(dest)?;
        if old.is_none() {
            let stray = std::fs::read_dir(dest)
                .map_err(io_err("read directory", dest))?
                .flatten()
                .any(|e| e.file_name() != "LOCK");
            if stray {
                return Err(Error::NotADatabase {
                    path: dest.to_owned(),
                });
            }
        }
        let one = self.checkpointing.lock();
        // The destination's checkpoint serves again while the source still has
        // the whole journal after it (it has not checkpointed past it).
        let reuse = old.as_ref().map(|m| m.checkpoint).filter(|&(id, hash)| {
            self.durability != Durability::None
                && id >= self.checkpoint.load(crate::sync::Ordering::SeqCst)
                && checkpoint::Checkpoint::open(&dest.join(checkpoint_name(id)))
                    .is_ok_and(|c| c.id == id && c.hash == hash)
        });
        Ok(BackupSession {
            journal: self,
            _one: one,
            _lock: lock,
            src,
            dest: dest.to_owned(),
            checkpoint: reuse,
            copied: Copied::default(),
        })
    }
}

impl BackupSession<'_> {
    /// Whether the destination needs a new checkpoint (`write_checkpoint`).
    pub(crate) fn needs_checkpoint(&self) -> bool {
        self.checkpoint.is_none()
    }

    /// Writes the checkpoint at the snapshot `at` into the destination; the one
    /// there before moves to its `pitr/`.
    pub(crate) fn write_checkpoint<V: AsRef<[u8]>>(
        &mut self,
        at: u64,
        entries: impl Iterator<Item = Result<(Vec<u8>, V)>>,
    ) -> Result<()> {
        let io = &*self.journal.io;
        let hash = self.journal.hash_at(at).ok_or(Error::Unsupported(
            "the chain moved too far past the backup's snapshot; retry",
        ))?;
        let path = checkpoint::write(&self.dest, io, at, hash, entries)?;
        self.copied.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
        self.copied.files += 1;
        for (old, id, _) in reader::checkpoints(&self.dest)? {
            if id != at && old.parent() == Some(self.dest.as_path()) {
                let pitr = pitr::ensure_dir(&self.dest, io)?;
                let to = pitr.join(checkpoint_name(id));
                io.rename(&old, &to).map_err(io_err("rename", &old))?;
                io.sync_dir(&pitr)
                    .map_err(io_err("fsync directory", &pitr))?;
                io.sync_dir(&self.dest)
                    .map_err(io_err("fsync directory", &self.dest))?;
            }
        }
        self.checkpoint = Some((at, hash));
        Ok(())
    }

    /// Copies the journal up to `point` (visible: its frames are whole), and the
    /// older checkpoints, then writes the manifest that promises `point`.
    pub(crate) fn finish(mut self, point: (u64, ChainHash)) -> Result<BackedUp> {
        let io = &*self.journal.io;
        let checkpoint = self.checkpoint.expect("a checkpoint was written or reused");
        let point = if self.journal.durability == Durability::None || point.0 < checkpoint.0 {
            checkpoint
        } else {
            point
        };
        // The backup's own checkpoint comes on top of the source's: it keeps
        // as many older ones as the source does, with the newest of them.
        let keep_bases = match self.journal.pitr.checkpoints {
            1 => 0,
            n => n,
        };
        // The source's checkpoints older than the backup's: restore points.
        if keep_bases > 0 {
            let pitr_dir = pitr::ensure_dir(&self.dest, io)?;
            let mut older: Vec<_> = reader::checkpoints(&self.src)?
                .into_iter()
                .filter(|(_, id, _)| *id < checkpoint.0)
                .collect();
            older.reverse();
            for (path, _, _) in older.iter().take(keep_bases) {
                put_checkpoint(io, path, &pitr_dir, &mut self.copied)?;
            }
        }
        // The journal up to the point.
        let sjdir = self.src.join("journal");
        let djdir = self.dest.join("journal");
        create_dirs(io, &djdir)?;
        let mut listed: BTreeMap<(usize, u64), u64> = BTreeMap::new();
        if point.0 > 0 && sjdir.is_dir() {
            for entry in std::fs::read_dir(&sjdir).map_err(io_err("read directory", &sjdir))? {
                let entry = entry.map_err(io_err("read directory", &sjdir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some((shard, seq)) = parse_segment_name(name) else {
                    continue;
                };
                let Some(bytes) = read(&entry.path())? else {
                    continue;
                };
                let Some((end, last)) = cut(&bytes, point.0) else {
                    continue;
                };
                put_file(io, &djdir, name, &bytes[..end], &mut self.copied)?;
                listed.insert((shard, seq), last);
            }
        }
        // Segments only the destination has (the source trimmed them since an
        // earlier backup): kept if whole up to the point, else stale.
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(&djdir).map_err(io_err("read directory", &djdir))? {
            let entry = entry.map_err(io_err("read directory", &djdir))?;
            let name = entry.file_name();
            let Some((shard, seq)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            if listed.contains_key(&(shard, seq)) {
                continue;
            }
            match read(&entry.path())?.and_then(|b| cut(&b, point.0).filter(|c| c.0 == b.len())) {
                Some((_, last)) => {
                    listed.insert((shard, seq), last);
                }
                None => stale.push(entry.path()),
            }
        }
        for path in &stale {
            io.remove(path).map_err(io_err("remove", path))?;
        }
        // The copy must chain from its checkpoint to the point, with the hash
        // the source has there: else it is another history (or damaged).
        let bases = reader::checkpoints(&self.dest)?;
        let mut points: Vec<(u64, ChainHash)> = bases.iter().map(|b| (b.1, b.2)).collect();
        points.push(checkpoint);
        let (start, last, _) = chain_run(&djdir, points, 0)?;
        if point.0 > checkpoint.0 && (last != Some(point) || start > checkpoint.0.saturating_add(1))
        {
            return Err(Error::Corrupt {
                path: self.dest.clone(),
                offset: 0,
                commit_id: Some(crate::CommitId(point.0)),
                reason: "the backup's journal does not chain from its checkpoint to the \
                         source's commit: the destination holds another database's \
                         backup, or a damaged one; back up into a new directory"
                    .to_owned(),
            });
        }
        // Restore points: the checkpoint, and the newest older ones whose
        // journal is whole up to it.
        let mut kept: Vec<u64> = bases
            .iter()
            .map(|b| b.1)
            .filter(|&id| id < checkpoint.0 && (start == u64::MAX || id.saturating_add(1) >= start))
            .collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        if start == 1 {
            // The journal from the first commit on: the empty database is a
            // restore point too (without a file).
            kept.push(0);
        }
        kept.truncate(keep_bases);
        let oldest = kept.last().copied().unwrap_or(checkpoint.0);
        let segments: Vec<Listed> = listed
            .iter()
            .filter(|(_, &last)| last > oldest)
            .map(|(&(shard, seq), &last)| Listed { shard, seq, last })
            .collect();
        manifest::write(
            &self.dest,
            io,
            &Manifest {
                clean: true,
                boot: None,
                checkpoint,
                promised: point,
                segments,
            },
        )?;
        // What no restore point needs any more.
        let pitr_dir = self.dest.join(PITR_DIR);
        for (id, path, _) in pitr::listed(&pitr_dir)? {
            if !kept.contains(&id) {
                io.remove(&path).map_err(io_err("remove", &path))?;
            }
        }
        for (&(shard, seq), &last) in &listed {
            if last <= oldest {
                let path = djdir.join(super::shard::segment_name(shard, seq));
                io.remove(&path).map_err(io_err("remove", &path))?;
            }
        }
        io.sync_dir(&djdir)
            .map_err(io_err("fsync directory", &djdir))?;
        Ok(BackedUp {
            point,
            checkpoint,
            oldest,
            copied: self.copied,
        })
    }
}

/// What a restore wrote.
pub(crate) struct Restored {
    pub point: (u64, ChainHash),
    pub base: u64,
}

/// Writes into the new directory `into` the database of `backup` as of commit
/// `to` (`None`: its newest): the newest checkpoint at or before it, the
/// journal cut right after it, and a manifest promising it.
pub(crate) fn restore(backup: &Path, into: &Path, to: Option<u64>) -> Result<Restored> {
    let io = super::OsIo;
    let _lock = DirLock::acquire(backup, false)?;
    let Some(m) = manifest::read(backup)? else {
        return Err(Error::NotADatabase {
            path: backup.to_owned(),
        });
    };
    let bases = reader::checkpoints(backup)?;
    let mut points: Vec<(u64, ChainHash)> = bases.iter().map(|b| (b.1, b.2)).collect();
    points.push(m.checkpoint);
    let jdir = backup.join("journal");
    let (start, last, wanted) = chain_run(&jdir, points, to.unwrap_or(0))?;
    let mut bases = bases;
    if start == 1 {
        // The journal from the first commit on: the empty database is a base.
        bases.insert(0, (PathBuf::new(), 0, ChainHash::genesis()));
    }
    // A base serves when the journal after it is whole (or it is the last).
    let usable: Vec<&(PathBuf, u64, ChainHash)> = bases
        .iter()
        .filter(|b| {
            start == u64::MAX || b.1.saturating_add(1) >= start || last.is_none_or(|l| b.1 >= l.0)
        })
        .collect();
    let Some(oldest) = usable.first().map(|b| b.1) else {
        return Err(Error::Corrupt {
            path: backup.to_owned(),
            offset: 0,
            commit_id: None,
            reason: "the backup holds no checkpoint its journal continues".to_owned(),
        });
    };
    let newest = usable
        .iter()
        .map(|b| b.1)
        .chain(last.map(|l| l.0))
        .max()
        .unwrap_or(oldest);
    let n = to.unwrap_or(newest);
    if n < oldest {
        return Err(Error::Truncated {
            oldest_available: crate::CommitId(oldest),
        });
    }
    if n > newest {
        return Err(Error::AheadOfLastCommit {
            requested: crate::CommitId(n),
            last: crate::CommitId(newest),
        });
    }
    let base = usable
        .iter()
        .rev()
        .find(|b| b.1 <= n)
        .expect("the oldest is at or before n");
    let hash = if base.1 == n {
        base.2
    } else if to.is_none() {
        last.expect("n is past the base").1
    } else {
        wanted.ok_or_else(|| Error::Corrupt {
            path: jdir.clone(),
            offset: 0,
            commit_id: Some(crate::CommitId(n)),
            reason: "the commit is not in the backup's journal".to_owned(),
        })?
    };
    create_dirs(&io, into)?;
    let ijdir = into.join("journal");
    create_dirs(&io, &ijdir)?;
    let mut copied = Copied::default();
    if base.1 > 0 {
        put_checkpoint(&io, &base.0, into, &mut copied)?;
    }
    let mut segments = Vec::new();
    if jdir.is_dir() && n > base.1 {
        for entry in std::fs::read_dir(&jdir).map_err(io_err("read directory", &jdir))? {
            let entry = entry.map_err(io_err("read directory", &jdir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((shard, seq)) = parse_segment_name(name) else {
                continue;
            };
            let Some(bytes) = read(&entry.path())? else {
                continue;
            };
            let Some((end, last)) = cut(&bytes, n) else {
                continue;
            };
            if last <= base.1 {
                continue;
            }
            put_file(&io, &ijdir, name, &bytes[..end], &mut copied)?;
            segments.push(Listed { shard, seq, last });
        }
    }
    io.sync_dir(&ijdir)
        .map_err(io_err("fsync directory", &ijdir))?;
    manifest::write(
        into,
        &io,
        &Manifest {
            clean: true,
            boot: None,
            checkpoint: (base.1, base.2),
            promised: (n, hash),
            segments,
        },
    )?;
    Ok(Restored {
        point: (n, hash),
        base: base.1,
    })
}
