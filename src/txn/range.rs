//! Range scans inside a transaction: the snapshot's entries merged with the
//! transaction's own buffered writes, in either direction.

use super::{Pending, RangeRead, Write};
use crate::error::{Error, Result};
use crate::store::{PageRead, Store, TreeRange, ValRef, Value};
use std::cmp::Ordering;
use std::collections::btree_map;
use std::ops::{Bound, ControlFlow};

type Entry = (Vec<u8>, Value);
type Buffered<'t> = (&'t Vec<u8>, &'t Write);

/// Iterator over a range of a [`super::Tx`]; yields `Result<(key, value)>`.
pub struct TxRange<'t> {
    tree: Option<TreeRange<'t>>,
    writes: Option<btree_map::Range<'t, Vec<u8>, Write>>,
    front_tree: Option<Entry>,
    back_tree: Option<Entry>,
    front_write: Option<Buffered<'t>>,
    back_write: Option<Buffered<'t>>,
    error: Option<Error>,
    /// Where this scan's range was recorded, to narrow it to what was looked at.
    recorded: Option<(&'t mut Vec<RangeRead>, usize)>,
}

impl<'t> TxRange<'t> {
    pub(crate) fn new(
        store: &'t Store,
        at: u64,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        writes: &'t std::collections::BTreeMap<Vec<u8>, Write>,
        pages: &'t mut Vec<PageRead>,
        ranges: &'t mut Vec<RangeRead>,
    ) -> Self {
        let wrange = if is_empty(&lo, &hi) {
            None
        } else {
            Some(writes.range::<Vec<u8>, _>((lo.clone(), hi.clone())))
        };
        // The whole range is recorded now, and narrowed when the scan is dropped:
        // a scan leaked with `mem::forget` is validated over all of it.
        let slot = ranges.len();
        ranges.push(RangeRead {
            lo: lo.clone(),
            hi: hi.clone(),
            from: pages.len(),
            to: usize::MAX,
        });
        TxRange {
            tree: Some(TreeRange::new(store, at, lo, hi, Some(pages))),
            writes: wrange,
            front_tree: None,
            back_tree: None,
            front_write: None,
            back_write: None,
            error: None,
            recorded: Some((ranges, slot)),
        }
    }

    pub(crate) fn failed(e: Error) -> Self {
        TxRange {
            tree: None,
            writes: None,
            front_tree: None,
            back_tree: None,
            front_write: None,
            back_write: None,
            error: Some(e),
            recorded: None,
        }
    }

    /// Calls `f` with each entry, borrowed, from the front (`forward`) or the
    /// back, until it breaks: the visitor behind `Tx::scan`. Entries of the tree
    /// are borrowed from their leaves (pinned by the transaction's snapshot),
    /// overflow values assembled into one reused buffer, buffered writes borrowed
    /// from the write buffer. The range stays recorded, and is narrowed on drop.
    pub(crate) fn visit<B>(
        mut self,
        forward: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        debug_assert!(
            self.front_tree.is_none() && self.back_tree.is_none(),
            "a visit starts on a fresh scan"
        );
        let mut buf = Vec::new();
        let mut tree: Option<(&'t [u8], ValRef<'t>)> = None;
        let mut write: Option<Buffered<'t>> = None;
        loop {
            if tree.is_none() {
                tree = self.tree.as_mut().and_then(|t| {
                    if forward {
                        t.next_ref()
                    } else {
                        t.next_back_ref()
                    }
                });
            }
            if write.is_none() {
                write =
                    self.writes.as_mut().and_then(
                        |w| {
                            if forward {
                                w.next()
                            } else {
                                w.next_back()
                            }
                        },
                    );
            }
            let take_tree = match (&tree, &write) {
                (None, None) => return Ok(ControlFlow::Continue(())),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(t), Some(w)) => match t.0.cmp(w.0.as_slice()) {
                    Ordering::Less => forward,
                    Ordering::Greater => !forward,
                    Ordering::Equal => {
                        // Our own write shadows the snapshot's entry.
                        tree = None;
                        false
                    }
                },
            };
            let flow = if take_tree {
                let (k, v) = tree.take().expect("chosen above");
                f(k, TreeRange::value_bytes(v, &mut buf))
            } else {
                let (k, w) = write.take().expect("chosen above");
                match &w.op {
                    Pending::Put(v) => f(k, v),
                    Pending::Delete => continue,
                    Pending::Add(_) | Pending::AtLeast(_) => {
                        unreachable!("`Tx::range` reads the merges in its range before scanning")
                    }
                }
            };
            if let ControlFlow::Break(b) = flow {
                return Ok(ControlFlow::Break(b));
            }
        }
    }

    fn fill_front(&mut self) {
        if self.front_tree.is_none() {
            self.front_tree = self
                .tree
                .as_mut()
                .and_then(TreeRange::next_entry)
                .or_else(|| self.back_tree.take());
        }
        if self.front_write.is_none() {
            self.front_write = self
                .writes
                .as_mut()
                .and_then(Iterator::next)
                .or_else(|| self.back_write.take());
        }
    }

    fn fill_back(&mut self) {
        if self.back_tree.is_none() {
            self.back_tree = self
                .tree
                .as_mut()
                .and_then(TreeRange::next_back_entry)
                .or_else(|| self.front_tree.take());
        }
        if self.back_write.is_none() {
            self.back_write = self
                .writes
                .as_mut()
                .and_then(DoubleEndedIterator::next_back)
                .or_else(|| self.front_write.take());
        }
    }
}

/// Whether no key lies in `[lo, hi]` in a way `BTreeMap::range` would reject.
pub(super) fn is_empty(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    matches!((lo, hi), (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) if l > h)
        || matches!((lo, hi), (Bound::Excluded(l), Bound::Excluded(h)) if l == h)
}

fn buffered(w: Buffered<'_>) -> Option<Entry> {
    match &w.1.op {
        Pending::Put(v) => Some((w.0.clone(), Value::from(v.clone()))),
        Pending::Delete => None,
        Pending::Add(_) | Pending::AtLeast(_) => {
            unreachable!("`Tx::range` reads the merges in its range before scanning")
        }
    }
}

impl Drop for TxRange<'_> {
    fn drop(&mut self) {
        let (Some((ranges, slot)), Some(tree)) = (self.recorded.take(), &self.tree) else {
            return;
        };
        let to = tree.reads_len();
        let mut parts = tree.observed().into_iter();
        let r = &mut ranges[slot];
        r.to = to;
        match parts.next() {
            Some((lo, hi)) => (r.lo, r.hi) = (lo, hi),
            None => {
                // Nothing looked at: an empty range checks nothing.
                r.from = to;
                (r.lo, r.hi) = (Bound::Excluded(Vec::new()), Bound::Excluded(Vec::new()));
            }
        }
        let from = r.from;
        for (lo, hi) in parts {
            ranges.push(RangeRead { lo, hi, from, to });
        }
    }
}

impl Iterator for TxRange<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        loop {
            self.fill_front();
            let take_tree = match (&self.front_tree, &self.front_write) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(t), Some(w)) => match t.0.cmp(w.0) {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    Ordering::Equal => {
                        // Our own write shadows the snapshot's entry.
                        self.front_tree = None;
                        false
                    }
                },
            };
            if take_tree {
                return self.front_tree.take().map(Ok);
            }
            if let Some(entry) = self.front_write.take().and_then(buffered) {
                return Some(Ok(entry));
            }
        }
    }
}

impl DoubleEndedIterator for TxRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        loop {
            self.fill_back();
            let take_tree = match (&self.back_tree, &self.back_write) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(t), Some(w)) => match t.0.cmp(w.0) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal => {
                        self.back_tree = None;
                        false
                    }
                },
            };
            if take_tree {
                return self.back_tree.take().map(Ok);
            }
            if let Some(entry) = self.back_write.take().and_then(buffered) {
                return Some(Ok(entry));
            }
        }
    }
}
