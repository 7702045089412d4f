//! Snapshots: consistent read-only views as of one commit id.
//!
//! A snapshot pins its commit id for its whole life, which keeps every page version
//! it can reach from being reclaimed; it never takes a lock that a writer waits on,
//! and it never conflicts.

use super::cursor::TreeRange;
use super::{PinSlot, Store, Value};
use crate::error::Result;
use crate::sync::Arc;
use crate::txn::{bounds_of, check_key};
use std::ops::RangeBounds;

/// A consistent read-only view of the store as of one commit.
///
/// ```
/// let engine = shardstone::Engine::in_memory()?;
/// engine.run("seed", |tx| tx.put(b"k", b"v1"))?;
/// let snap = engine.snapshot();
/// engine.run("update", |tx| tx.put(b"k", b"v2"))?;
/// assert_eq!(snap.get(b"k")?.as_deref(), Some(&b"v1"[..])); // still the old state
/// assert_eq!(engine.snapshot().get(b"k")?.as_deref(), Some(&b"v2"[..]));
/// # Ok::<(), shardstone::Error>(())
/// ```
pub struct Snapshot {
    store: Arc<Store>,
    pin: PinSlot,
    at: u64,
}

impl Snapshot {
    pub(crate) fn new(store: Arc<Store>) -> Snapshot {
        let (pin, at) = store.pin_snapshot();
        Snapshot { store, pin, at }
    }

    /// The commit id this snapshot reflects: it sees every commit up to and including it.
    pub fn commit_id(&self) -> crate::CommitId {
        crate::CommitId(self.at)
    }

    /// The value of `key` in this snapshot.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        check_key(key)?;
        // Chains are walked only inside a reading section: a snapshot held but not
        // read keeps no version it cannot see (see `store::interval`).
        let _reading = self.store.reading(&self.pin);
        Ok(self.store.get(key, self.at, |_, _| {}))
    }

    /// Every key and value in `range`, in key order; `.rev()` walks it backwards.
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [b"a", b"b", b"c"] { tx.put(k, b"")?; } Ok(()) })?;
    /// let snap = engine.snapshot();
    /// let keys: Vec<Vec<u8>> = snap.range(b"b".as_slice()..).map(|r| r.map(|(k, _)| k)).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
    /// let last = snap.range(..).rev().next().transpose()?;
    /// assert_eq!(last.map(|(k, _)| k), Some(b"c".to_vec()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&self, range: R) -> SnapshotRange<'_> {
        match bounds_of(&range) {
            Ok((lo, hi)) => SnapshotRange {
                snapshot: self,
                inner: Some(TreeRange::new(&self.store, self.at, lo, hi, None)),
                error: None,
            },
            Err(e) => SnapshotRange {
                snapshot: self,
                inner: None,
                error: Some(e),
            },
        }
    }
}

impl Snapshot {
    /// Runs `f` over the store at this snapshot's commit, inside one reading
    /// section (which keeps every version the snapshot sees; writers go on):
    /// for `verify`, which walks the whole tree.
    pub(crate) fn with_store<R>(&self, f: impl FnOnce(&Store, u64) -> R) -> R {
        let _reading = self.store.reading(&self.pin);
        f(&self.store, self.at)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.store.unpin(&self.pin);
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("commit_id", &self.at)
            .finish()
    }
}

/// Iterator over a range of a [`Snapshot`]; yields `Result<(key, value)>`.
pub struct SnapshotRange<'s> {
    snapshot: &'s Snapshot,
    inner: Option<TreeRange<'s>>,
    /// A bad bound (an oversized key) is reported as the first item.
    error: Option<crate::Error>,
}

impl Iterator for SnapshotRange<'_> {
    type Item = Result<(Vec<u8>, Value)>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        // Between steps the scan holds only versions its snapshot sees, which the
        // pin keeps; each step walks chains inside a reading section.
        let _reading = self.snapshot.store.reading(&self.snapshot.pin);
        self.inner.as_mut()?.next_entry().map(Ok)
    }
}

impl DoubleEndedIterator for SnapshotRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        let _reading = self.snapshot.store.reading(&self.snapshot.pin);
        self.inner.as_mut()?.next_back_entry().map(Ok)
    }
}
