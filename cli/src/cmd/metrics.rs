//! `shardstone metrics DIR` and `shardstone digest DIR`: what a read-only open of
//! a closed database shows (a running engine's figures are `Engine::stats()`
//! and `Snapshot::state_digest()` in its own process).

use super::{print_json, Done};
use crate::database::open_read_only;
use crate::exit::{Exit, Failure};
use serde_json::json;
use std::path::Path;

/// The engine's `Stats` after opening: Prometheus text, or JSON.
pub fn run(dir: &Path, json: bool) -> Result<Done, Failure> {
    let engine = open_read_only(dir)?;
    let stats = engine.stats();
    if json {
        let value = serde_json::to_value(&stats)
            .map_err(|e| Failure::new(Exit::Other, format!("cannot write JSON: {e}")))?;
        print_json(&value);
    } else {
        print!("{}", stats.to_prometheus());
    }
    Ok(Done::Ok)
}

/// The state digest at the last commit, with the commit and its chain hash.
pub fn digest(dir: &Path, json: bool) -> Result<Done, Failure> {
    let engine = open_read_only(dir)?;
    let snapshot = engine.snapshot();
    let (commit, hash) = engine.last_commit();
    debug_assert_eq!(snapshot.commit_id(), commit);
    let digest = snapshot.state_digest().map_err(|e| Failure::of(e, dir))?;
    if json {
        print_json(&json!({
            "commit": commit.get(),
            "hash": hash.to_string(),
            "digest": digest.to_string(),
            "entries": digest.entries,
        }));
    } else {
        println!("commit {} (chain hash {hash})", commit.get());
        println!("state digest {digest} over {} entries", digest.entries);
    }
    Ok(Done::Ok)
}
