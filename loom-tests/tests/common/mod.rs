//! Pieces the loom models share.

#![allow(dead_code)] // each model uses a different part of it

use shardstone::{Result, Tx};

/// The body of the models' counter command: reads `n`, writes `n + 1`.
pub fn add_one(tx: &mut Tx<'_>) -> Result<()> {
    let n = tx
        .get(b"n")?
        .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()));
    tx.put(b"n", &(n + 1).to_le_bytes())
}
