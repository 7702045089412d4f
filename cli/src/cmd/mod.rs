//! One file per command, and what their outputs share.

pub mod backup;
pub mod journal;
pub mod metrics;
pub mod restore;
pub mod stat;
pub mod verify;

use crate::exit::Exit;
use serde_json::{json, Value};
use shardstone::{ChainHash, CommitId};

/// How a command that did not fail ended.
pub enum Done {
    /// Exit 0.
    Ok,
    /// Its output is written and says what is wrong: exit with this code
    /// (`verify` finding damage).
    Reported(Exit),
}

/// A commit and its chain hash, for JSON (`null` when unknown).
pub fn point(p: Option<(CommitId, ChainHash)>) -> Value {
    match p {
        Some((id, hash)) => json!({ "commit": id.get(), "hash": hash.to_string() }),
        None => Value::Null,
    }
}

/// Writes `value` pretty-printed on stdout.
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("shardstone: cannot write JSON: {e}"),
    }
}
