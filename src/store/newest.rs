//! The newest tree, as a committer reads it while it holds page locks.
//!
//! A transaction reads at its snapshot; its commit checks what it read against the
//! newest installed state of the same keys. The keys may have moved since the
//! snapshot (a split, a merge, an emptied leaf removed), so the committer asks
//! where they live now. An answer is only trusted for a leaf the committer holds
//! locked *before* asking: a leaf's key range shrinks only with a new version of
//! it, made by a commit that holds its lock and installs every page of the change
//! (parents included) before releasing it. So a locked leaf that the newest inner
//! nodes route a key to holds that key for as long as the lock is held. A leaf it
//! does not hold is only a hint: the committer locks it and asks again.
//!
//! Reading heads is safe for a committer: a transaction's pin keeps every version
//! newer than its snapshot allocated until it ends (see `interval`). A descent that
//! meets a page mid-install (a fresh page not yet published, a page just freed) is
//! repeated under the structure lock, which every restructuring commit holds from
//! planning until its install is complete.

use super::arena::PagePtr;
use super::page::{Kind, Page};
use super::{PageId, Store, ROOT};
use std::ops::Bound;

/// One leaf a transaction read, with the version it saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageRead {
    pub id: PageId,
    pub stamp: u64,
    pub version: PagePtr,
}

/// Deeper than any tree of `PageId`s can be: a descent that goes further is
/// reading a page mid-change, and starts over under the structure lock.
const MAX_DEPTH: usize = 64;

fn after_hi(key: &[u8], hi: &Bound<Vec<u8>>) -> bool {
    match hi {
        Bound::Included(h) => key > h.as_slice(),
        Bound::Excluded(h) => key >= h.as_slice(),
        Bound::Unbounded => false,
    }
}

impl Store {
    /// The newest version of `id`.
    ///
    /// # Safety
    /// The caller holds a transaction pin (which keeps every version newer than
    /// its snapshot allocated), `id`'s lock, or the structure lock.
    pub(crate) unsafe fn head_page<'a>(&self, id: PageId) -> Option<Page<'a>> {
        let v = self.slot(id).head();
        if v.is_null() {
            return None;
        }
        // SAFETY: forwarded to the caller.
        Some(unsafe { self.page(v) })
    }

    /// The leaf the newest inner nodes route `key` to (see the module docs for
    /// when the answer can be trusted). The caller holds a transaction pin.
    pub(crate) fn newest_leaf(&self, key: &[u8]) -> Option<PageId> {
        if let Some(id) = self.try_newest_leaf(key) {
            return Some(id);
        }
        let _whole = self.structure.lock();
        self.try_newest_leaf(key)
    }

    fn try_newest_leaf(&self, key: &[u8]) -> Option<PageId> {
        let mut id = ROOT;
        for _ in 0..MAX_DEPTH {
            // SAFETY: the caller's pin keeps newer versions allocated.
            let p = unsafe { self.head_page(id) }?;
            match p.kind() {
                Kind::Leaf => return Some(id),
                Kind::Inner if p.count() > 0 => id = p.inner_child(p.inner_route(key)),
                _ => return None,
            }
        }
        None
    }

    /// The leaves the newest inner nodes route some key of `[lo, hi]` to, in key
    /// order (trusted as `newest_leaf` is). The caller holds a transaction pin.
    pub(crate) fn newest_leaves(
        &self,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
    ) -> Option<Vec<PageId>> {
        let mut out = Vec::new();
        if self.walk_newest(ROOT, lo, hi, 0, &mut out) {
            return Some(out);
        }
        let _whole = self.structure.lock();
        out.clear();
        self.walk_newest(ROOT, lo, hi, 0, &mut out).then_some(out)
    }

    fn walk_newest(
        &self,
        id: PageId,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        depth: usize,
        out: &mut Vec<PageId>,
    ) -> bool {
        if depth >= MAX_DEPTH {
            return false;
        }
        // SAFETY: the caller's pin keeps newer versions allocated.
        let Some(p) = (unsafe { self.head_page(id) }) else {
            return false;
        };
        match p.kind() {
            Kind::Leaf => {
                out.push(id);
                true
            }
            Kind::Inner if p.count() > 0 => {
                let first = match lo {
                    Bound::Unbounded => 0,
                    Bound::Included(k) | Bound::Excluded(k) => p.inner_route(k),
                };
                for i in first..p.count() {
                    if i > first && after_hi(p.inner_key(i), hi) {
                        break;
                    }
                    if !self.walk_newest(p.inner_child(i), lo, hi, depth + 1, out) {
                        return false;
                    }
                }
                true
            }
            _ => false,
        }
    }
}
