//! Ordered range scans at a snapshot, forward and reverse.
//!
//! A scan walks the tree at one snapshot with a stack of inner nodes per end. It
//! records every leaf it reads, including the leaf that ends the scan, so a
//! transaction's read set covers the whole key range it looked at: an insert into
//! that range by a concurrent commit rewrites one of those leaves and is caught as
//! a conflict (no phantoms).

use super::overflow;
use super::page::{Kind, Page, ValRef};
use super::{PageId, PagePtr, PageRead, Store, Value, ROOT};
use std::ops::Bound;

#[derive(Default)]
struct End {
    started: bool,
    /// Inner nodes from the root down, with the child index taken at each.
    stack: Vec<(PagePtr, usize)>,
    leaf: PagePtr,
    /// Forward: next entry to yield. Reverse: one past the next entry to yield.
    pos: usize,
    /// Last key yielded from this end, to stop when the two ends meet.
    last: Option<Vec<u8>>,
}

/// A double-ended scan of the tree over `[lo, hi]` at snapshot `at`.
pub(crate) struct TreeRange<'s> {
    store: &'s Store,
    at: u64,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: End,
    back: End,
    done: bool,
    /// Where each leaf read goes, with the stamp of the version seen: a
    /// transaction's read set, written at once so that leaking the iterator
    /// (`mem::forget`) cannot hide a read from validation.
    reads: Option<&'s mut Vec<PageRead>>,
}

/// Owned (start, end) bounds of a key range.
pub(crate) type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn after_hi(key: &[u8], hi: &Bound<Vec<u8>>) -> bool {
    match hi {
        Bound::Included(h) => key > h.as_slice(),
        Bound::Excluded(h) => key >= h.as_slice(),
        Bound::Unbounded => false,
    }
}

fn before_lo(key: &[u8], lo: &Bound<Vec<u8>>) -> bool {
    match lo {
        Bound::Included(l) => key < l.as_slice(),
        Bound::Excluded(l) => key <= l.as_slice(),
        Bound::Unbounded => false,
    }
}

impl<'s> TreeRange<'s> {
    /// The caller keeps a snapshot at `at` pinned for the life of the scan.
    pub(crate) fn new(
        store: &'s Store,
        at: u64,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        reads: Option<&'s mut Vec<PageRead>>,
    ) -> Self {
        TreeRange {
            store,
            at,
            lo,
            hi,
            front: End::default(),
            back: End::default(),
            done: false,
            reads,
        }
    }

    fn page(&self, v: PagePtr) -> Page<'s> {
        // SAFETY: the caller of `new` keeps the snapshot pinned while we scan.
        unsafe { self.store.page(v) }
    }

    fn visit(&mut self, id: PageId, v: PagePtr) {
        let stamp = self.page(v).stamp();
        if let Some(reads) = &mut self.reads {
            reads.push(PageRead {
                id,
                stamp,
                version: v,
            });
        }
    }

    /// Descends from `id` to a leaf, choosing the child with `pick` at each inner node.
    fn descend(&mut self, mut id: PageId, forward: bool, pick: &dyn Fn(&Page<'s>) -> usize) {
        loop {
            let v = self.store.version_at(id, self.at);
            let p = self.page(v);
            match p.kind() {
                Kind::Inner => {
                    let i = pick(&p);
                    let end = if forward {
                        &mut self.front
                    } else {
                        &mut self.back
                    };
                    end.stack.push((v, i));
                    id = p.inner_child(i);
                }
                Kind::Leaf => {
                    self.visit(id, v);
                    let end = if forward {
                        &mut self.front
                    } else {
                        &mut self.back
                    };
                    end.leaf = v;
                    return;
                }
                Kind::Dead => unreachable!("a live inner node names a dead {id}"),
            }
        }
    }

    fn start_front(&mut self) {
        self.front.started = true;
        let lo = self.lo.clone();
        match &lo {
            Bound::Unbounded => self.descend(ROOT, true, &|_| 0),
            Bound::Included(k) | Bound::Excluded(k) => {
                self.descend(ROOT, true, &|p| p.inner_route(k))
            }
        }
        let leaf = self.page(self.front.leaf);
        self.front.pos = match &lo {
            Bound::Unbounded => 0,
            Bound::Included(k) => leaf.leaf_search(k).unwrap_or_else(|i| i),
            Bound::Excluded(k) => leaf.leaf_search(k).map_or_else(|i| i, |i| i + 1),
        };
    }

    fn start_back(&mut self) {
        self.back.started = true;
        let hi = self.hi.clone();
        match &hi {
            Bound::Unbounded => self.descend(ROOT, false, &|p| p.count() - 1),
            Bound::Included(k) | Bound::Excluded(k) => {
                self.descend(ROOT, false, &|p| p.inner_route(k))
            }
        }
        let leaf = self.page(self.back.leaf);
        self.back.pos = match &hi {
            Bound::Unbounded => leaf.count(),
            Bound::Included(k) => leaf.leaf_search(k).map_or_else(|i| i, |i| i + 1),
            Bound::Excluded(k) => leaf.leaf_search(k).unwrap_or_else(|i| i),
        };
    }

    /// Moves the front end to the next leaf; false when the range is exhausted.
    fn next_leaf(&mut self) -> bool {
        loop {
            let Some(&(v, i)) = self.front.stack.last() else {
                return false;
            };
            let p = self.page(v);
            if i + 1 < p.count() {
                // The next subtree starts at this key; past `hi` it cannot hold anything.
                if after_hi(p.inner_key(i + 1), &self.hi) {
                    return false;
                }
                self.front.stack.last_mut().expect("non-empty").1 = i + 1;
                self.descend(p.inner_child(i + 1), true, &|_| 0);
                self.front.pos = 0;
                return true;
            }
            self.front.stack.pop();
        }
    }

    /// Moves the back end to the previous leaf; false when the range is exhausted.
    fn prev_leaf(&mut self) -> bool {
        loop {
            let Some(&(v, i)) = self.back.stack.last() else {
                return false;
            };
            let p = self.page(v);
            if i > 0 {
                // Everything left of this subtree is below its low key.
                let low = p.inner_key(i);
                let needed = match &self.lo {
                    Bound::Unbounded => true,
                    Bound::Included(l) | Bound::Excluded(l) => low > l.as_slice(),
                };
                if !needed {
                    return false;
                }
                self.back.stack.last_mut().expect("non-empty").1 = i - 1;
                self.descend(p.inner_child(i - 1), false, &|p| p.count() - 1);
                self.back.pos = self.page(self.back.leaf).count();
                return true;
            }
            self.back.stack.pop();
        }
    }

    /// How many leaves the read set holds so far (this scan's included).
    pub(crate) fn reads_len(&self) -> usize {
        self.reads.as_ref().map_or(0, |r| r.len())
    }

    /// The parts of `[lo, hi]` this scan has looked at: all of it once it ran to
    /// its end, else from `lo` to the last key taken from the front and from the
    /// last key taken from the back to `hi` (each end inclusive).
    pub(crate) fn observed(&self) -> Vec<Bounds> {
        if self.done {
            return vec![(self.lo.clone(), self.hi.clone())];
        }
        let mut out = Vec::new();
        if let Some(f) = &self.front.last {
            out.push((self.lo.clone(), Bound::Included(f.clone())));
        }
        if let Some(b) = &self.back.last {
            out.push((Bound::Included(b.clone()), self.hi.clone()));
        }
        out
    }

    /// The next entry from the front, copied out.
    pub(crate) fn next_entry(&mut self) -> Option<(Vec<u8>, Value)> {
        let (k, v) = self.next_ref()?;
        Some((k.to_vec(), self.store.value(v)))
    }

    /// The next entry from the back, copied out.
    pub(crate) fn next_back_entry(&mut self) -> Option<(Vec<u8>, Value)> {
        let (k, v) = self.next_back_ref()?;
        Some((k.to_vec(), self.store.value(v)))
    }

    /// The next entry from the front, borrowed from its leaf: valid while the
    /// snapshot at `at` stays pinned (the leaf version it lies in is one the
    /// snapshot sees, which reclamation keeps for the pin's life).
    pub(crate) fn next_ref(&mut self) -> Option<(&'s [u8], ValRef<'s>)> {
        if self.done {
            return None;
        }
        if !self.front.started {
            self.start_front();
        }
        loop {
            let leaf = self.page(self.front.leaf);
            if self.front.pos < leaf.count() {
                let key = leaf.leaf_key(self.front.pos);
                let met = self.back.last.as_deref().is_some_and(|b| key >= b);
                if met || after_hi(key, &self.hi) {
                    self.done = true;
                    return None;
                }
                self.front.pos += 1;
                let last = self.front.last.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(key);
                return Some((key, leaf.leaf_val(self.front.pos - 1)));
            }
            if !self.next_leaf() {
                self.done = true;
                return None;
            }
        }
    }

    /// The next entry from the back, borrowed from its leaf (see `next_ref`).
    pub(crate) fn next_back_ref(&mut self) -> Option<(&'s [u8], ValRef<'s>)> {
        if self.done {
            return None;
        }
        if !self.back.started {
            self.start_back();
        }
        loop {
            let leaf = self.page(self.back.leaf);
            if self.back.pos > 0 {
                let key = leaf.leaf_key(self.back.pos - 1);
                let met = self.front.last.as_deref().is_some_and(|f| key <= f);
                if met || before_lo(key, &self.lo) {
                    self.done = true;
                    return None;
                }
                self.back.pos -= 1;
                let last = self.back.last.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(key);
                return Some((key, leaf.leaf_val(self.back.pos)));
            }
            if !self.prev_leaf() {
                self.done = true;
                return None;
            }
        }
    }
}

impl TreeRange<'_> {
    /// The bytes of a stored value: borrowed from its leaf when inline, else
    /// assembled from its overflow chain into `buf` (one buffer reused per scan).
    pub(crate) fn value_bytes<'v>(v: ValRef<'v>, buf: &'v mut Vec<u8>) -> &'v [u8] {
        match v {
            ValRef::Inline(bytes) => bytes,
            ValRef::Overflow { head, len } => {
                overflow::read_chain_into(head, len, buf);
                buf
            }
        }
    }
}
