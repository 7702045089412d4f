//! Bulk build: a whole tree from one sorted stream of entries, bottom-up.
//!
//! Opening a database produces its state as one sorted stream (the checkpoint
//! merged with the journal replayed after it). Inserting that stream through the
//! commit path would copy a leaf per batch of writes; building leaves densely,
//! then each inner level over the one below, writes every page exactly once.
//! Only for a fresh store that nothing else can see yet.

use super::page::{self, InnerNode, LeafEntry, ValRef, HEADER};
use super::{PageId, PagePtr, Store, ROOT};
use crate::error::Result;

/// Fill of a built page, as a fraction of its usable bytes: the same density the
/// append heuristic of splits gives, leaving room for a few inserts.
const FILL_NUM: usize = 15;
const FILL_DEN: usize = 16;

/// One entry of the leaf being filled: its key and value, in `Builder::scratch`.
struct Pending {
    key: (usize, usize),
    val: PendingVal,
}

enum PendingVal {
    Inline(usize, usize),
    Overflow { head: usize, len: usize },
}

/// Builds the tree of a fresh store from entries pushed in strictly ascending key
/// order. `finish` installs it with every page stamped `stamp`.
pub(crate) struct Builder<'s> {
    store: &'s Store,
    stamp: u64,
    scratch: Vec<u8>,
    leaf: Vec<Pending>,
    leaf_bytes: usize,
    /// Built pages per level (0: leaves), each with the lowest key under it.
    levels: Vec<Vec<(PageId, Vec<u8>)>>,
    last_key: Option<Vec<u8>>,
}

impl<'s> Builder<'s> {
    pub(crate) fn new(store: &'s Store, stamp: u64) -> Builder<'s> {
        Builder {
            store,
            stamp,
            scratch: Vec::new(),
            leaf: Vec::new(),
            leaf_bytes: HEADER,
            levels: vec![Vec::new()],
            last_key: None,
        }
    }

    fn target(&self) -> usize {
        HEADER + (self.store.page_size - HEADER) * FILL_NUM / FILL_DEN
    }

    /// Adds the next entry; keys must ascend strictly.
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        debug_assert!(
            self.last_key.as_deref().is_none_or(|k| k < key),
            "bulk build input is sorted and unique"
        );
        let stored = self.store.stored_value(key, value)?;
        let size = LeafEntry { key, val: stored }.size();
        if !self.leaf.is_empty() && self.leaf_bytes + size > self.target() {
            self.flush_leaf()?;
        }
        let k = (self.scratch.len(), key.len());
        self.scratch.extend_from_slice(key);
        let val = match stored {
            ValRef::Inline(v) => {
                let at = self.scratch.len();
                self.scratch.extend_from_slice(v);
                PendingVal::Inline(at, v.len())
            }
            ValRef::Overflow { head, len } => PendingVal::Overflow { head, len },
        };
        self.leaf.push(Pending { key: k, val });
        self.leaf_bytes += size;
        if cfg!(debug_assertions) {
            self.last_key = Some(key.to_vec());
        }
        Ok(())
    }

    /// The entries of the leaf being filled.
    fn entries(&self) -> Vec<LeafEntry<'_>> {
        let scratch = &self.scratch;
        self.leaf
            .iter()
            .map(|p| LeafEntry {
                key: &scratch[p.key.0..p.key.0 + p.key.1],
                val: match p.val {
                    PendingVal::Inline(at, len) => ValRef::Inline(&scratch[at..at + len]),
                    PendingVal::Overflow { head, len } => ValRef::Overflow { head, len },
                },
            })
            .collect()
    }

    fn flush_leaf(&mut self) -> Result<()> {
        let entries = self.entries();
        let low = entries.first().map_or(Vec::new(), |e| e.key.to_vec());
        let buf = self.store.arena.alloc()?;
        // SAFETY: a fresh buffer we own until it is published below.
        page::build_leaf(unsafe { self.store.buf_mut(buf) }, &entries);
        drop(entries);
        let id = self.publish_new(buf)?;
        self.levels[0].push((id, low));
        self.leaf.clear();
        self.scratch.clear();
        self.leaf_bytes = HEADER;
        Ok(())
    }

    /// Gives `buf` a fresh page id and makes it that page's only version.
    fn publish_new(&self, buf: PagePtr) -> Result<PageId> {
        let Some(id) = self.store.table.allocate() else {
            // SAFETY: `buf` was never published.
            unsafe { self.store.arena.free(buf) };
            return Err(crate::Error::OutOfMemory {
                requested: self.store.page_size,
                source: std::io::Error::other("page table is full"),
            });
        };
        // SAFETY: unpublished buffer we own.
        unsafe { page::set_version(buf, self.stamp, std::ptr::null_mut()) };
        self.store.table.slot(id).publish(buf);
        Ok(id)
    }

    /// Builds the inner levels and makes the top node the root. Returns the number
    /// of leaves built.
    pub(crate) fn finish(mut self) -> Result<usize> {
        let store = self.store;
        if self.levels[0].is_empty() {
            // Everything fits one leaf (or nothing at all): it becomes the root.
            let entries = self.entries();
            let buf = store.arena.alloc()?;
            // SAFETY: fresh, unpublished.
            page::build_leaf(unsafe { store.buf_mut(buf) }, &entries);
            self.replace_root(buf);
            return Ok(1);
        }
        if !self.leaf.is_empty() {
            self.flush_leaf()?;
        }
        let leaves = self.levels[0].len();
        let target = self.target();
        loop {
            let below = self.levels.last().expect("at least the leaf level");
            debug_assert!(below.len() >= 2, "a level of one page is the root");
            // Group the children into nodes, sized as if every key were stored
            // (the first key of a node is stored empty, so this over-estimates).
            let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
            let mut bytes = HEADER;
            for (i, (_, key)) in below.iter().enumerate() {
                let size = page::inner_entry_size(key.len());
                let group = groups.last_mut().expect("one group at least");
                if group.len() >= 2 && bytes + size > target {
                    groups.push(Vec::new());
                    bytes = HEADER;
                }
                groups.last_mut().expect("just pushed").push(i);
                bytes += size;
            }
            // No node with a single child: a page holds at least three entries,
            // so the node before can spare one.
            if groups.len() > 1 && groups[groups.len() - 1].len() == 1 {
                let n = groups.len();
                let moved = groups[n - 2].pop().expect("groups hold two or more");
                groups.last_mut().expect("two groups").insert(0, moved);
            }
            let nodes: Vec<(InnerNode, Vec<u8>)> = groups
                .iter()
                .map(|g| {
                    let node = InnerNode {
                        children: g.iter().map(|&i| below[i].0).collect(),
                        keys: g
                            .iter()
                            .enumerate()
                            .map(|(j, &i)| {
                                if j == 0 {
                                    Vec::new()
                                } else {
                                    below[i].1.clone()
                                }
                            })
                            .collect(),
                    };
                    (node, below[g[0]].1.clone())
                })
                .collect();
            if nodes.len() == 1 {
                // The top: it becomes the root.
                let buf = store.arena.alloc()?;
                // SAFETY: fresh, unpublished.
                nodes[0].0.encode(unsafe { store.buf_mut(buf) });
                self.replace_root(buf);
                return Ok(leaves);
            }
            let mut above = Vec::with_capacity(nodes.len());
            for (node, low) in &nodes {
                above.push((self.build_inner(node)?, low.clone()));
            }
            self.levels.push(above);
        }
    }

    fn build_inner(&self, node: &InnerNode) -> Result<PageId> {
        let buf = self.store.arena.alloc()?;
        // SAFETY: fresh, unpublished.
        node.encode(unsafe { self.store.buf_mut(buf) });
        self.publish_new(buf)
    }

    /// Installs `buf` as the root's only version, freeing the empty root a fresh
    /// store starts with (nothing can see it: the store is not shared yet).
    fn replace_root(&self, buf: PagePtr) {
        let slot = self.store.table.slot(ROOT);
        let old = slot.head();
        // SAFETY: unpublished buffer we own.
        unsafe { page::set_version(buf, self.stamp, std::ptr::null_mut()) };
        slot.publish(buf);
        // SAFETY: the old root was the fresh store's empty leaf; no snapshot or
        // transaction exists yet, so nothing can reach it.
        unsafe { self.store.arena.free(old) };
    }
}
