//! Snapshots: consistent read-only views as of one commit id.
//!
//! A snapshot pins its commit id for its whole life, which keeps every page version
//! it can reach from being reclaimed; it never takes a lock that a writer waits on,
//! and it never conflicts.

use super::cursor::TreeRange;
use super::{PinSlot, Store, Value};
use crate::error::Result;
use crate::sync::Arc;
use crate::txn::{bounds_of, check_key, prefix_bounds, KeyBounds};
use std::ops::{ControlFlow, RangeBounds};

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
        self.range_of(bounds_of(&range))
    }

    /// Every key that starts with `prefix`, in key order; `.rev()` walks it
    /// backwards. This is the range `[prefix, successor(prefix))`, unbounded
    /// above for a prefix of 0xFF bytes only; the empty prefix is every key.
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| {
    ///     for k in [&b"user:1"[..], b"user:2", b"users"] { tx.put(k, b"")?; }
    ///     Ok(())
    /// })?;
    /// let snap = engine.snapshot();
    /// let keys: Vec<Vec<u8>> = snap.prefix(b"user:").rev().map(|r| r.map(|(k, _)| k)).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, vec![b"user:2".to_vec(), b"user:1".to_vec()]);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn prefix(&self, prefix: &[u8]) -> SnapshotRange<'_> {
        self.range_of(prefix_bounds(prefix))
    }

    /// Calls `f` with every key and value in `range`, in key order, until `f`
    /// returns `Break`; returns that `Break`, or `Continue` once the range is
    /// exhausted. An oversized bound is an error before `f` is called.
    ///
    /// Cost: no allocation per item. Keys and inline values are borrowed straight
    /// from the leaf pages this snapshot sees (its pin keeps them); a value stored
    /// in an overflow chain (larger than fits in a leaf) is assembled into one
    /// buffer that the scan reuses, so only the largest such value costs an
    /// allocation. The slices are valid only during the call: copy what you keep.
    /// Each step of the walk runs inside a short reading section, as an
    /// iterator step does; `f` itself runs outside it, so a slow visitor holds up
    /// no reclamation beyond what the snapshot itself keeps. [`Snapshot::range`]
    /// is the owned form: a key and a value allocated per item, usable as an
    /// `Iterator`.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [b"a", b"b", b"c"] { tx.put(k, b"xy")?; } Ok(()) })?;
    /// let snap = engine.snapshot();
    /// let mut bytes = 0;
    /// snap.scan(b"b".as_slice().., |k, v| {
    ///     bytes += k.len() + v.len();
    ///     ControlFlow::<()>::Continue(())
    /// })?;
    /// assert_eq!(bytes, 6);
    /// // Stop early and hand a value out.
    /// let found = snap.scan(.., |k, _| if k > &b"a"[..] { ControlFlow::Break(k.to_vec()) } else { ControlFlow::Continue(()) })?;
    /// assert_eq!(found, ControlFlow::Break(b"b".to_vec()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan<'k, R, B, F>(&self, range: R, f: F) -> Result<ControlFlow<B>>
    where
        R: RangeBounds<&'k [u8]>,
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.visit(bounds_of(&range)?, true, f)
    }

    /// [`Snapshot::scan`] in reverse key order.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [b"a", b"b", b"c"] { tx.put(k, b"")?; } Ok(()) })?;
    /// let last = engine.snapshot().scan_rev(..b"c".as_slice(), |k, _| ControlFlow::Break(k.to_vec()))?;
    /// assert_eq!(last.break_value(), Some(b"b".to_vec()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan_rev<'k, R, B, F>(&self, range: R, f: F) -> Result<ControlFlow<B>>
    where
        R: RangeBounds<&'k [u8]>,
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.visit(bounds_of(&range)?, false, f)
    }

    /// [`Snapshot::scan`] over every key that starts with `prefix` (see
    /// [`Snapshot::prefix`]).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [&b"o:1"[..], b"o:2", b"p"] { tx.put(k, b"")?; } Ok(()) })?;
    /// let mut n = 0;
    /// engine.snapshot().scan_prefix(b"o:", |_, _| { n += 1; ControlFlow::<()>::Continue(()) })?;
    /// assert_eq!(n, 2);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan_prefix<B, F>(&self, prefix: &[u8], f: F) -> Result<ControlFlow<B>>
    where
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.visit(prefix_bounds(prefix)?, true, f)
    }

    /// [`Snapshot::scan_prefix`] in reverse key order.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [&b"o:1"[..], b"o:2", b"p"] { tx.put(k, b"")?; } Ok(()) })?;
    /// let newest = engine.snapshot().scan_prefix_rev(b"o:", |k, _| ControlFlow::Break(k.to_vec()))?;
    /// assert_eq!(newest.break_value(), Some(b"o:2".to_vec()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan_prefix_rev<B, F>(&self, prefix: &[u8], f: F) -> Result<ControlFlow<B>>
    where
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.visit(prefix_bounds(prefix)?, false, f)
    }

    fn range_of(&self, bounds: Result<KeyBounds>) -> SnapshotRange<'_> {
        match bounds {
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

    /// The walk behind the `scan` methods.
    fn visit<B>(
        &self,
        (lo, hi): KeyBounds,
        forward: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>> {
        let mut tree = TreeRange::new(&self.store, self.at, lo, hi, None);
        let mut buf = Vec::new();
        loop {
            // Chains are walked inside a reading section; the entry it yields lies
            // in a leaf version this snapshot sees, which the pin keeps after the
            // section ends, so `f` runs outside it.
            let entry = {
                let _reading = self.store.reading(&self.pin);
                if forward {
                    tree.next_ref()
                } else {
                    tree.next_back_ref()
                }
            };
            let Some((k, v)) = entry else {
                return Ok(ControlFlow::Continue(()));
            };
            if let ControlFlow::Break(b) = f(k, TreeRange::value_bytes(v, &mut buf)) {
                return Ok(ControlFlow::Break(b));
            }
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
