//! Point-in-time retention: what a checkpoint keeps so that any commit from an
//! older checkpoint on can be restored (`Options::pitr_retention`).
//!
//! A checkpoint that replaces the previous one moves it into `pitr/` instead of
//! deleting it, keeps the newest `checkpoints - 1` there (dropping those past
//! `max_age`, and the oldest while the journal they keep exceeds `max_bytes`),
//! and deletes only the journal segments every kept checkpoint covers. Open
//! reads only the newest checkpoint (in the directory itself): `pitr/` is
//! ignored by recovery, read by backups and `JournalReader`.
//!
//! Invariant: for every checkpoint in `pitr/`, every commit after it is in the
//! journal (the segments deleted end at or before the oldest of them).

use super::checkpoint::{checkpoint_name, parse_checkpoint_name};
use super::io::Io;
use super::reader::PITR_DIR;
use crate::error::{Error, Result};
use crate::options::Retention;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Creates `dir/pitr` if it is missing, durably.
pub(crate) fn ensure_dir(dir: &Path, io: &dyn Io) -> Result<PathBuf> {
    let pitr = dir.join(PITR_DIR);
    if !pitr.is_dir() {
        io.create_dir(&pitr)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io_err("create directory", &pitr))?;
        io.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    Ok(pitr)
}

/// The checkpoints in `pitr`: (commit id, path, when written), newest first.
pub(crate) fn listed(pitr: &Path) -> Result<Vec<(u64, PathBuf, Option<SystemTime>)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(pitr) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_err("read directory", pitr)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", pitr))?;
        let Some(id) = entry.file_name().to_str().and_then(parse_checkpoint_name) else {
            continue;
        };
        let written = entry.metadata().ok().and_then(|m| m.modified().ok());
        found.push((id, entry.path(), written));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// The checkpoint at `previous` was replaced by the one at `at`: moves it into
/// `pitr/` (or deletes it, when only the newest is kept), drops the kept ones
/// `retention` no longer allows, and returns the last commit the journal may be
/// trimmed to: the oldest kept checkpoint, or `at`. `segments` are the retired
/// segments as (last commit, bytes written), to measure what each keeps.
pub(crate) fn retire_checkpoint(
    dir: &Path,
    io: &dyn Io,
    previous: u64,
    at: u64,
    retention: &Retention,
    segments: &[(u64, u64)],
) -> Result<u64> {
    let old = dir.join(checkpoint_name(previous));
    let pitr = dir.join(PITR_DIR);
    if retention.checkpoints <= 1 {
        if previous > 0 {
            io.remove(&old).map_err(io_err("remove", &old))?;
        }
    } else if previous > 0 {
        let pitr = ensure_dir(dir, io)?;
        let to = pitr.join(checkpoint_name(previous));
        io.rename(&old, &to).map_err(io_err("rename", &old))?;
        io.sync_dir(&pitr)
            .map_err(io_err("fsync directory", &pitr))?;
        io.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    let kept_bytes = |base: u64| -> u64 {
        segments
            .iter()
            .filter(|(last, _)| *last > base && *last <= at)
            .map(|(_, used)| used)
            .sum()
    };
    let now = SystemTime::now();
    let mut keep = Vec::new();
    let mut drop = Vec::new();
    for (i, (id, path, written)) in listed(&pitr)?.into_iter().enumerate() {
        let too_old = retention.max_age.is_some_and(|max| {
            written.is_some_and(|w| now.duration_since(w).is_ok_and(|age| age > max))
        });
        if id >= at || i + 1 >= retention.checkpoints || too_old {
            drop.push(path);
        } else {
            keep.push((id, path));
        }
    }
    // Newest first: the oldest go first while they keep too much journal.
    while keep
        .last()
        .is_some_and(|(id, _)| kept_bytes(*id) > retention.max_bytes)
    {
        drop.push(keep.pop().expect("not empty").1);
    }
    for path in &drop {
        io.remove(path).map_err(io_err("remove", path))?;
    }
    if !drop.is_empty() {
        io.sync_dir(&pitr)
            .map_err(io_err("fsync directory", &pitr))?;
    }
    Ok(keep.last().map_or(at, |(id, _)| *id))
}
