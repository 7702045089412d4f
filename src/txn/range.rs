//! Range scans inside a transaction: the snapshot's entries merged with the
//! transaction's own buffered writes, in either direction.

use super::Write;
use crate::error::{Error, Result};
use crate::store::{PageId, Store, TreeRange, Value};
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
}

impl<'t> TxRange<'t> {
    pub(crate) fn new(
        store: &'t Store,
        at: u64,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        writes: &'t std::collections::BTreeMap<Vec<u8>, Write>,
        reads: &'t mut Vec<(PageId, u64)>,
    ) -> Self {
        let empty = matches!((&lo, &hi), (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) if l > h)
            || matches!((&lo, &hi), (Bound::Excluded(l), Bound::Excluded(h)) if l == h);
        let wrange = if empty {
            None
        } else {
            Some(writes.range::<Vec<u8>, _>((lo.clone(), hi.clone())))
        };
        TxRange {
            tree: Some(TreeRange::new(store, at, lo, hi, Some(reads))),
            writes: wrange,
            front_tree: None,
            back_tree: None,
            front_write: None,
            back_write: None,
            error: None,
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

fn buffered(w: Buffered<'_>) -> Option<Entry> {
    w.1.value
        .as_ref()
        .map(|v| (w.0.clone(), Value::from(v.clone())))
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
