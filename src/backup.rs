//! Online backups and point-in-time restores, through the public API.
//!
//! [`crate::Engine::backup`] copies a running database into a directory that
//! opens as a database at the backup's commit; [`restore`] makes a new
//! database from a backup as of any commit it can reach. The files and their
//! crash safety are the journal's (`journal/copy.rs`); this module wires them
//! to the engine and checks the result by opening it.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::journal::{ChainHash, Journal};
use crate::numa::Numa;
use crate::options::Options;
use crate::txn::CommitId;
use std::path::{Path, PathBuf};

/// What [`crate::Engine::backup`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup's commit: opening it gives the database as of this commit.
    pub commit_id: CommitId,
    /// The chain hash at `commit_id` (the source's `last_commit()` then).
    pub hash: ChainHash,
    /// The commit of the checkpoint opening starts from (the journal after it
    /// is replayed).
    pub checkpoint: CommitId,
    /// The oldest commit [`restore`] can restore from this backup.
    pub oldest_restorable: CommitId,
    /// Bytes written into the destination.
    pub bytes_copied: u64,
    /// Bytes already in the destination, identical, and not written again (an
    /// incremental backup).
    pub bytes_skipped: u64,
    /// Files written.
    pub files_copied: u64,
    /// Files already in place.
    pub files_skipped: u64,
}

/// Which commit [`restore`] restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTo {
    /// The newest commit the backup holds.
    Latest,
    /// Exactly this commit: from the backup's oldest restorable commit to its
    /// newest.
    Commit(CommitId),
    /// The database as it was at this time: every commit up to the one before
    /// the first commit made after it ([`crate::JournalReader::last_before`]).
    /// Commit times are the source's wall clock, to a few milliseconds. A time
    /// before the oldest restorable commit is [`Error::Truncated`] (or the
    /// empty database, when the backup's journal starts at the first commit).
    Time(std::time::SystemTime),
}

/// What [`restore`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreInfo {
    /// The restored database's last commit.
    pub commit_id: CommitId,
    /// Its chain hash: the source's at that commit.
    pub hash: ChainHash,
    /// The checkpoint it starts from; opening replays the journal after it.
    pub checkpoint: CommitId,
    /// The new database directory.
    pub path: PathBuf,
}

pub(crate) fn backup(engine: &Engine, journal: &Journal, dest: &Path) -> Result<BackupInfo> {
    let mut session = journal.begin_backup(dest)?;
    if session.needs_checkpoint() {
        let snap = engine.snapshot();
        session.write_checkpoint(snap.commit_id().get(), snap.range(..))?;
    }
    let (id, hash) = engine.last_commit();
    let done = session.finish((id.get(), hash))?;
    Ok(BackupInfo {
        commit_id: CommitId(done.point.0),
        hash: done.point.1,
        checkpoint: CommitId(done.checkpoint.0),
        oldest_restorable: CommitId(done.oldest),
        bytes_copied: done.copied.bytes,
        bytes_skipped: done.copied.skipped_bytes,
        files_copied: done.copied.files,
        files_skipped: done.copied.skipped_files,
    })
}

/// Makes a new database in `dest` from the backup (or database directory, closed)
/// `backup`, as of the commit `to`: the newest checkpoint at or before it plus
/// the journal up to it. The result is opened (read-only) before it is put in
/// place, and its last commit and chain hash checked; it opens with
/// [`Engine::open`] as it is.
///
/// `dest` must not exist: otherwise [`Error::DestinationExists`], and nothing
/// is written. The database is built in `.<name>.restoring` beside it and
/// renamed into place, so a crash never leaves a half-restored `dest`. A
/// commit before the oldest the backup can reach is [`Error::Truncated`], one
/// past its newest [`Error::AheadOfLastCommit`].
///
/// ```
/// use shardstone::{restore, Engine, RestoreTo};
/// let base = std::env::temp_dir().join(format!("shardstone-doc-restore-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&base);
/// let engine = Engine::open(base.join("db"))?;
/// engine.run("put", |tx| tx.put(b"k", b"1"))?;
/// engine.run("put", |tx| tx.put(b"k", b"2"))?;
/// let info = engine.backup(base.join("backup"))?;
/// assert_eq!(info.commit_id.get(), 2);
///
/// let restored = restore(base.join("backup"), base.join("at-1"), RestoreTo::Commit(1.into()))?;
/// assert_eq!(restored.commit_id.get(), 1);
/// let old = Engine::open(base.join("at-1"))?;
/// assert_eq!(old.snapshot().get(b"k")?.as_deref(), Some(&b"1"[..]));
/// # drop((engine, old));
/// # std::fs::remove_dir_all(&base).unwrap();
/// # Ok::<(), shardstone::Error>(())
/// ```
pub fn restore(
    backup: impl AsRef<Path>,
    dest: impl AsRef<Path>,
    to: RestoreTo,
) -> Result<RestoreInfo> {
    let (backup, dest) = (backup.as_ref(), dest.as_ref());
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(Error::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let name = dest
        .file_name()
        .ok_or(Error::Unsupported("a restore destination needs a name"))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{}.restoring", name.to_string_lossy()));
    if std::fs::symlink_metadata(&tmp).is_ok() {
        // A restore that did not finish: its name is ours.
        std::fs::remove_dir_all(&tmp).map_err(|source| Error::Io {
            op: "remove",
            path: tmp.clone(),
            source,
        })?;
    }
    let result = (|| {
        let to = match to {
            RestoreTo::Latest => None,
            RestoreTo::Commit(id) => Some(id.get()),
            RestoreTo::Time(at) => Some(
                crate::JournalReader::open(backup)?
                    .last_before(at)?
                    .map_or(0, CommitId::get),
            ),
        };
        let done = crate::journal::restore_files(backup, &tmp, to)?;
        // Open it before it is put in place: recovery checks every checksum,
        // the chain and the manifest's promise.
        let opts = Options {
            numa: Numa::Off,
            ..Options::default()
        };
        let check = Engine::open_read_only(&tmp, opts)?;
        let last = check.last_commit();
        drop(check);
        if last != (CommitId(done.point.0), done.point.1) {
            return Err(Error::Corrupt {
                path: tmp.clone(),
                offset: 0,
                commit_id: Some(CommitId(done.point.0)),
                reason: format!(
                    "the restored database opened at {} instead of {}",
                    last.0, done.point.0
                ),
            });
        }
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(Error::DestinationExists {
                path: dest.to_owned(),
            });
        }
        std::fs::rename(&tmp, dest).map_err(|source| Error::Io {
            op: "rename",
            path: tmp.clone(),
            source,
        })?;
        std::fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::Io {
                op: "fsync directory",
                path: parent.clone(),
                source,
            })?;
        Ok(RestoreInfo {
            commit_id: CommitId(done.point.0),
            hash: done.point.1,
            checkpoint: CommitId(done.base),
            path: dest.to_owned(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
