//! What one attempt of a transaction touched, for slow-command reports.
//!
//! Taken only when a run is already slow, so it may allocate and sort.

use super::Tx;
use crate::store::PageId;

/// What one attempt of a command touched: the figures of a slow-command report
/// (`SlowCommand::last_attempt`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Footprint {
    /// Distinct leaf pages read, or that a write lands on.
    pub pages: usize,
    /// Keys read (present or absent), counting repeats.
    pub keys_read: usize,
    /// Key ranges scanned.
    pub ranges_read: usize,
    /// Distinct keys written (puts, deletes, adds).
    pub keys_written: usize,
    /// A few of the keys: written keys first, then keys read, in key order
    /// within each, at most `SAMPLE_KEYS` of them.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::hex_list")
    )]
    pub sample_keys: Vec<Vec<u8>>,
}

/// How many keys a footprint names.
pub(crate) const SAMPLE_KEYS: usize = 4;

impl Tx<'_> {
    /// What this transaction has touched so far.
    pub(crate) fn touched(&self) -> Footprint {
        let mut pages: Vec<PageId> = self.reads.pages.iter().map(|p| p.id).collect();
        pages.extend(self.writes.values().map(|w| w.leaf));
        pages.sort_unstable();
        pages.dedup();
        let mut sample_keys: Vec<Vec<u8>> = self.writes.keys().take(SAMPLE_KEYS).cloned().collect();
        if sample_keys.len() < SAMPLE_KEYS {
            let mut read: Vec<&[u8]> = self
                .reads
                .points
                .iter()
                .map(|p| self.reads.key(p))
                .collect();
            read.sort_unstable();
            read.dedup();
            for k in read {
                if sample_keys.len() == SAMPLE_KEYS {
                    break;
                }
                if !self.writes.contains_key(k) {
                    sample_keys.push(k.to_vec());
                }
            }
        }
        Footprint {
            pages: pages.len(),
            keys_read: self.reads.points.len(),
            ranges_read: self.reads.ranges.len(),
            keys_written: self.writes.len(),
            sample_keys,
        }
    }
}
