//! `shardstone stat DIR`: what a database directory holds (`shardstone::stat_dir`).

use super::{point, print_json, Done};
use crate::database::shape;
use crate::exit::Failure;
use serde_json::json;
use std::path::Path;

/// Prints the directory's sizes, last commit, shards, checkpoint, consumers and
/// problems. Damage does not fail it (it is listed under `problems`).
pub fn run(dir: &Path, json: bool) -> Result<Done, Failure> {
    shape(dir)?;
    let stat = shardstone::stat_dir(dir).map_err(|e| Failure::of(e, dir))?;
    if json {
        print_json(&json!({
            "path": stat.path.to_string_lossy(),
            "in_use": stat.in_use,
            "bytes": {
                "total": stat.total_bytes,
                "allocated": stat.allocated_bytes,
                "manifest": stat.manifest_bytes,
                "checkpoint": stat.checkpoint_bytes,
                "journal": stat.journal_bytes,
                "journal_allocated": stat.journal_allocated_bytes,
                "other": stat.other_bytes,
            },
            "last_commit": point(stat.last_commit),
            "promised": point(stat.promised),
            "shards": stat.shards,
            "segments_per_shard": stat
                .segments_per_shard
                .iter()
                .map(|(shard, n)| (shard.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "checkpoint": stat.checkpoint.as_ref().map(|c| json!({
                "commit": c.commit.get(),
                "hash": c.hash.map(|h| h.to_string()),
                "bytes": c.bytes,
                "age_seconds": c.age.map(|a| a.as_secs_f64()),
                "keys": c.keys,
            })),
            "kept_checkpoints": stat.kept_checkpoints.iter().map(|c| c.get()).collect::<Vec<_>>(),
            "records_after_checkpoint": stat.records_after_checkpoint,
            "pages": stat.pages,
            "oldest_snapshot": stat.oldest_snapshot.map(|(id, age)| json!({
                "commit": id.get(),
                "age_seconds": age.as_secs_f64(),
            })),
            "consumers": stat.consumers.iter().map(|c| json!({
                "name": c.name,
                "position": c.position.get(),
                "lag": c.lag,
            })).collect::<Vec<_>>(),
            "salvage_dirs": stat
                .salvage_dirs
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>(),
            "problems": stat.problems,
        }));
    } else {
        print!("{stat}");
        if !stat.problems.is_empty() {
            println!(
                "run `shardstone verify {}` for what is damaged and what can be trusted",
                dir.display()
            );
        }
    }
    Ok(Done::Ok)
}
