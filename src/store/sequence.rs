//! Sequences: ids handed out inside commands without a read dependency.
//!
//! A sequence lives under a key of the store, as an 8-byte little-endian `u64`:
//! the lowest id it has not handed to a committed command. Handing out an id is
//! not transactional (as in PostgreSQL): the id is taken from an in-memory counter
//! at once, so two commands running together never get the same one and never
//! conflict over it, and a command that aborts or re-runs leaves a gap. The
//! command's commit raises the stored value to at least its highest id plus one,
//! merged against the newest value, so after a restart (or on a follower that
//! replayed the journal) every id a committed command used stays behind.

use crate::error::{Error, Result};
use crate::sync::Mutex;
use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct Sequences {
    /// Per sequence key: the next id to hand out in this process.
    next: Mutex<HashMap<Vec<u8>, u64>>,
}

impl Sequences {
    /// The next id of the sequence under `key`; `floor` is the stored value the
    /// caller's snapshot sees (ids below it may have been committed). Ids start at 1.
    pub(crate) fn take(&self, key: &[u8], floor: u64) -> Result<u64> {
        let mut next = self.next.lock();
        let slot = match next.get_mut(key) {
            Some(slot) => slot,
            None => next.entry(key.to_vec()).or_insert(0),
        };
        let id = (*slot).max(floor).max(1);
        let after = id
            .checked_add(1)
            .ok_or_else(|| Error::CounterOverflow { key: key.to_vec() })?;
        *slot = after;
        Ok(id)
    }
}
