//! `shardstone backup DIR DEST`: a backup of a closed database (`Engine::backup`
//! on a read-only open). A database another process has open is backed up by
//! that process: the directory lock refuses this one (exit 5).

use super::{print_json, Done};
use crate::database::{dir_size, open_read_only};
use crate::exit::{Exit, Failure};
use crate::progress::Progress;
use serde_json::json;
use shardstone::Error;
use std::path::Path;

/// Backs `dir` up into `dest` and says at which commit.
pub fn run(dir: &Path, dest: &Path, json: bool) -> Result<Done, Failure> {
    let engine = open_read_only(dir)?;
    let before = dir_size(dest);
    let measure = || dir_size(dest).saturating_sub(before);
    let progress = Progress {
        label: format!("backing up {} into {}", dir.display(), dest.display()),
        bytes: Some((dir_size(dir), &measure)),
    };
    let info = progress
        .run(!json, || engine.backup(dest))
        .map_err(|e| match e {
            Error::NotADatabase { path } if path != dir => Failure::new(
                Exit::Other,
                format!(
                    "{}: holds files that are not a backup of {}: back up into a missing or empty \
                 directory, or into an earlier backup of this database",
                    path.display(),
                    dir.display()
                ),
            ),
            e => Failure::of(e, dir),
        })?;
    if json {
        print_json(&json!({
            "source": dir.to_string_lossy(),
            "dest": dest.to_string_lossy(),
            "commit": info.commit_id.get(),
            "hash": info.hash.to_string(),
            "checkpoint": info.checkpoint.get(),
            "oldest_restorable": info.oldest_restorable.get(),
            "bytes_copied": info.bytes_copied,
            "bytes_skipped": info.bytes_skipped,
            "files_copied": info.files_copied,
            "files_skipped": info.files_skipped,
        }));
    } else {
        println!(
            "backed up {} into {} at commit {} (chain hash {})",
            dir.display(),
            dest.display(),
            info.commit_id.get(),
            info.hash
        );
        println!(
            "checkpoint at commit {}; restorable from commit {} to {}",
            info.checkpoint.get(),
            info.oldest_restorable.get(),
            info.commit_id.get()
        );
        println!(
            "copied {} bytes in {} files, {} bytes in {} files already there",
            info.bytes_copied, info.files_copied, info.bytes_skipped, info.files_skipped
        );
    }
    Ok(Done::Ok)
}
