//! Range scans inside a transaction: the snapshot's entries merged with the
//! transaction's own buffered writes, in either direction.

use super::{Pending, RangeRead, Write};
use crate::error::{Error, Result};
use crate::store::{PageRead, Store, TreeRange, Value};
use std::collections::btree_map;
use std::ops::Bound;

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
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
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
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => {
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
