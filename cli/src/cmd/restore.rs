//! `shardstone restore BACKUP (--to-commit N | --to-time T | --latest) DEST`: a
//! new database as of a chosen commit or time (`shardstone::restore`). It never overwrites: DEST
//! must not exist.

use super::{print_json, Done};
use crate::database::{dir_size, require_database};
use crate::exit::{Exit, Failure};
use crate::progress::Progress;
use serde_json::json;
use shardstone::{Error, RestoreTo};
use std::path::{Path, PathBuf};

/// The arguments of `shardstone restore`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("point").required(true).args(["to_commit", "to_time", "latest"])))]
pub struct Args {
    /// The backup (from `shardstone backup` or `Engine::backup`), or a closed database.
    backup: PathBuf,
    /// The new database directory: must not exist.
    dest: PathBuf,
    /// Restore exactly this commit (from the backup's oldest restorable commit
    /// to its newest; `shardstone journal search` finds it).
    #[arg(long, value_name = "N")]
    to_commit: Option<u64>,
    /// Restore the database as it was at this time (RFC 3339, e.g.
    /// 2026-12-07T03:00:00Z; without a zone it is UTC): every commit before
    /// the first one made after it.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse)]
    to_time: Option<std::time::SystemTime>,
    /// Restore the newest commit the backup holds.
    #[arg(long)]
    latest: bool,
}

/// Restores `args.backup` into `args.dest`.
pub fn run(args: &Args, json: bool) -> Result<Done, Failure> {
    let (backup, dest) = (args.backup.as_path(), args.dest.as_path());
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(destination_exists(dest));
    }
    require_database(backup)?;
    let to = match (args.to_commit, args.to_time) {
        (Some(n), _) => RestoreTo::Commit(n.into()),
        (None, Some(t)) => RestoreTo::Time(t),
        (None, None) => RestoreTo::Latest,
    };
    let asked = match args.to_time {
        Some(t) => format!("the time {}", crate::time::show(Some(t))),
        None => format!("commit {}", args.to_commit.unwrap_or(0)),
    };
    let building = building_dir(dest);
    let measure = || dir_size(&building);
    let progress = Progress {
        label: format!("restoring {} into {}", backup.display(), dest.display()),
        bytes: Some((dir_size(backup), &measure)),
    };
    let info = progress
        .run(!json, || shardstone::restore(backup, dest, to))
        .map_err(|e| match e {
            Error::DestinationExists { path } => destination_exists(&path),
            Error::Truncated { oldest_available } => Failure::new(
                Exit::Other,
                format!(
                    "{}: cannot restore {asked}: the oldest commit this backup can restore is {}",
                    backup.display(),
                    oldest_available.get()
                ),
            ),
            Error::AheadOfLastCommit { last, .. } => Failure::new(
                Exit::Other,
                format!(
                    "{}: cannot restore {asked}: the newest commit this backup holds is {}",
                    backup.display(),
                    last.get()
                ),
            ),
            e => Failure::of(e, backup),
        })?;
    if json {
        print_json(&json!({
            "backup": backup.to_string_lossy(),
            "dest": info.path.to_string_lossy(),
            "commit": info.commit_id.get(),
            "hash": info.hash.to_string(),
            "checkpoint": info.checkpoint.get(),
        }));
    } else {
        println!(
            "restored {} into {} at commit {} (chain hash {})",
            backup.display(),
            info.path.display(),
            info.commit_id.get(),
            info.hash
        );
        println!(
            "it starts from the checkpoint at commit {} and replays the journal after it; \
             it opens with Engine::open as it is",
            info.checkpoint.get()
        );
    }
    Ok(Done::Ok)
}

fn destination_exists(dest: &Path) -> Failure {
    Failure::new(
        Exit::Other,
        format!(
            "{}: already exists; a restore never overwrites anything: give a new directory",
            dest.display()
        ),
    )
}

/// Where `shardstone::restore` builds the database before renaming it into place.
fn building_dir(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}.restoring"))
}
