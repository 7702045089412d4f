//! `shardstone verify DIR`: every checksum, the commit order, the hash chain and
//! the checkpoint (`shardstone::verify_dir`); exit 3 when anything is damaged.

use super::{point, print_json, Done};
use crate::database::{dir_size, shape};
use crate::exit::{Exit, Failure};
use crate::progress::Progress;
use serde_json::json;
use std::path::Path;

/// Verifies the database in `dir`, read-only and without its lock.
pub fn run(dir: &Path, json: bool) -> Result<Done, Failure> {
    // A directory with database files but no manifest is verified: the
    // missing manifest is one of its findings.
    shape(dir)?;
    let progress = Progress {
        label: format!("verifying {} ({} bytes)", dir.display(), dir_size(dir)),
        bytes: None,
    };
    let report = progress
        .run(!json, || shardstone::verify_dir(dir))
        .map_err(|e| Failure::of(e, dir))?;
    if json {
        print_json(&json!({
            "path": dir.to_string_lossy(),
            "ok": report.ok,
            "findings": report.findings.iter().map(|f| json!({
                "what": format!("{:?}", f.what),
                "file": f.file.as_ref().map(|p| p.to_string_lossy()),
                "offset": f.offset,
                "page": f.page.map(|p| p.get()),
                "commit": f.commit.map(|c| c.get()),
                "detail": f.detail,
            })).collect::<Vec<_>>(),
            "intact_up_to": point(report.intact_up_to),
            "checkpoint": point(report.checkpoint),
            "promised": point(report.promised),
            "restorable_from": report.restorable_from.map(|c| c.get()),
            "pitr_checkpoints": report.pitr_checkpoints,
            "tree_checked": report.tree_checked,
            "checkpoint_entries": report.checkpoint_entries,
            "records": report.records,
            "segments": report.segments,
            "bytes": report.bytes,
            "in_use": report.in_use,
            "duration_seconds": report.duration.as_secs_f64(),
        }));
    } else {
        println!("{report}");
        if !report.ok {
            println!(
                "see docs/operations.md, \"Verifying a database\": restore the damaged part from a \
                 backup (`shardstone restore BACKUP --to-commit N DEST`), or open with \
                 `Options::salvage` to keep the intact prefix"
            );
        }
    }
    Ok(if report.ok {
        Done::Ok
    } else {
        Done::Reported(Exit::Damaged)
    })
}
