//! Applying a commit's writes to the tree: leaf rewrites, splits, merges.
//!
//! A commit hands [`Store::plan`] the leaves it holds exclusively, each with its
//! sorted writes. Planning builds every new page version into fresh buffers
//! (allocation can fail here, before a commit id exists, so a failed commit leaves
//! no gap). Most commits only rewrite leaves; a commit whose leaves overflow,
//! empty or underflow also takes the structure lock and edits inner nodes.
//! [`Plan::install`] then stamps the buffers with the commit id and links them in:
//! it cannot fail.
//!
//! Structure invariants kept here:
//! - a leaf's key range changes only with a new version of it, except that it may
//!   grow when an empty neighbour is removed (no key enters it that way), so a
//!   transaction that validated a leaf's version has validated its key range;
//! - inner nodes change only under the structure lock, and their versions are stamped
//!   with commit ids taken under it, so their chains stay ordered;
//! - a sibling leaf joins a merge only through `try_lock`, so the structure lock is
//!   never held while waiting for a page lock (no deadlock with leaf commits).

use super::arena::PagePtr;
use super::page::{self, InnerNode, Kind, LeafEntry, ValRef, HEADER};
use super::reclaim::Garbage;
use super::{PageId, Store, ROOT};
use crate::error::Result;
use crate::sync::MutexGuard;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The writes of one commit that land on one leaf, which the committer holds
/// exclusively and has validated.
pub(crate) struct LeafWrites<'w> {
    pub page: PageId,
    pub head: PagePtr,
    /// Sorted by key, one entry per key; `None` deletes. Large values arrive as
    /// overflow chains the committer wrote before taking any lock.
    pub writes: Vec<(&'w [u8], Option<ValRef<'w>>)>,
}

enum Install {
    Version(PagePtr),
    /// The page is freed by this commit; the buffer is its dead marker.
    Dead(PagePtr),
}

/// Everything a commit will install, built and allocated but not yet visible.
pub(crate) struct Plan<'s> {
    store: &'s Store,
    installs: BTreeMap<PageId, Install>,
    fresh: Vec<PageId>,
    old_chains: Vec<usize>,
    extra_locks: Vec<PageId>,
    spare: Vec<PagePtr>,
    structure: Option<MutexGuard<'s, ()>>,
    installed: bool,
    /// Whether this commit split, merged or removed pages.
    pub(crate) restructured: bool,
}

enum Change {
    Split(Vec<(Vec<u8>, PageId)>),
    Empty,
    Underfull,
}

struct Structural {
    page: PageId,
    route_key: Vec<u8>,
    change: Change,
}

/// Inner nodes being edited under the structure lock, with their parents.
#[derive(Default)]
struct Work {
    nodes: HashMap<PageId, InnerNode>,
    parent: HashMap<PageId, PageId>,
    depth: HashMap<PageId, usize>,
    tried: HashSet<PageId>,
}

impl Work {
    /// Edited nodes whose recorded parent is `id`.
    fn children_of(&self, id: PageId) -> Vec<PageId> {
        self.parent
            .iter()
            .filter(|(_, p)| **p == id)
            .map(|(c, _)| *c)
            .collect()
    }
}

impl Store {
    /// Builds the new versions for `edits`. `locked` says whether the committer
    /// holds a page's lock (such pages never join a merge).
    pub(crate) fn plan<'s>(
        &'s self,
        edits: &[LeafWrites<'_>],
        locked: &dyn Fn(PageId) -> bool,
    ) -> Result<Plan<'s>> {
        let mut plan = Plan {
            store: self,
            installs: BTreeMap::new(),
            fresh: Vec::new(),
            old_chains: Vec::new(),
            extra_locks: Vec::new(),
            spare: Vec::new(),
            structure: None,
            installed: false,
            restructured: false,
        };
        let p = self.page_size;
        let mut structural = Vec::new();
        for edit in edits {
            // SAFETY: the committer holds this leaf's exclusive lock; its head stays.
            let old = unsafe { self.page(edit.head) };
            debug_assert_eq!(old.kind(), Kind::Leaf);
            if let Some(buf) = self.patch_in_place(&old, &edit.writes, &mut plan)? {
                plan.installs.insert(edit.page, Install::Version(buf));
                continue;
            }
            let entries = self.merge_writes(&old, &edit.writes, &mut plan)?;
            let size = page::leaf_size(&entries);
            let is_root = edit.page == ROOT;
            if size <= p {
                if entries.is_empty() && !is_root {
                    structural.push(Structural {
                        page: edit.page,
                        route_key: old.leaf_key(0).to_vec(),
                        change: Change::Empty,
                    });
                    continue;
                }
                let buf = self.new_leaf(&mut plan, &entries)?;
                plan.installs.insert(edit.page, Install::Version(buf));
                if size < p / 4 && !is_root {
                    structural.push(Structural {
                        page: edit.page,
                        route_key: old.leaf_key(0).to_vec(),
                        change: Change::Underfull,
                    });
                }
                continue;
            }
            let append = old.count() > 0
                && edit
                    .writes
                    .iter()
                    .all(|(k, v)| v.is_some() && *k > old.leaf_key(old.count() - 1));
            let pieces = split_leaf(&entries, p, append);
            let mut seps = Vec::new();
            for (i, range) in pieces.iter().enumerate() {
                let buf = self.new_leaf(&mut plan, &entries[range.clone()])?;
                if i == 0 {
                    plan.installs.insert(edit.page, Install::Version(buf));
                } else {
                    let id = self.fresh_page(&mut plan)?;
                    plan.installs.insert(id, Install::Version(buf));
                    seps.push((entries[range.start].key.to_vec(), id));
                }
            }
            let route_key = if old.count() > 0 {
                old.leaf_key(0).to_vec()
            } else {
                Vec::new()
            };
            structural.push(Structural {
                page: edit.page,
                route_key,
                change: Change::Split(seps),
            });
        }
        if !structural.is_empty() {
            plan.structure = Some(self.structure.lock());
            plan.restructured = true;
            self.restructure(&mut plan, structural, locked)?;
        }
        Ok(plan)
    }

    /// The common update: every write replaces an existing inline value with one of
    /// the same length. Then the new version is the old bytes with values patched,
    /// one copy instead of a re-encode. `None` when the writes are not of that kind.
    fn patch_in_place(
        &self,
        old: &page::Page<'_>,
        writes: &[(&[u8], Option<ValRef<'_>>)],
        plan: &mut Plan<'_>,
    ) -> Result<Option<PagePtr>> {
        let mut spans = [(0usize, 0usize, &[][..]); 8];
        if writes.len() > spans.len() {
            return Ok(None);
        }
        for (span, (key, value)) in spans.iter_mut().zip(writes) {
            let Some(ValRef::Inline(v)) = *value else {
                return Ok(None);
            };
            let Ok(i) = old.leaf_search(key) else {
                return Ok(None);
            };
            match old.inline_value_span(i) {
                Some((at, len)) if len == v.len() => *span = (at, len, v),
                _ => return Ok(None),
            }
        }
        let buf = self.new_buffer(plan)?;
        let src = old.used_bytes();
        // SAFETY: a fresh buffer owned by the plan, not yet published.
        let dst = unsafe { self.buf_mut(buf) };
        // The stamp and link are written at install (`set_version`).
        dst[page::LINK_END..page::LINK_END + src.len()].copy_from_slice(src);
        for &(at, len, v) in &spans[..writes.len()] {
            dst[at..at + len].copy_from_slice(v);
        }
        Ok(Some(Self::claim(plan, buf)))
    }

    /// The entries of `old` with `writes` applied, in key order.
    fn merge_writes<'a>(
        &self,
        old: &page::Page<'a>,
        writes: &[(&'a [u8], Option<ValRef<'a>>)],
        plan: &mut Plan<'_>,
    ) -> Result<Vec<LeafEntry<'a>>> {
        let n = old.count();
        let mut out = Vec::with_capacity(n + writes.len());
        let (mut i, mut j) = (0, 0);
        while i < n || j < writes.len() {
            let ord = match (i < n, j < writes.len()) {
                (true, true) => old.leaf_key(i).cmp(writes[j].0),
                (true, false) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            if ord == std::cmp::Ordering::Less {
                out.push(old.leaf_entry(i));
                i += 1;
                continue;
            }
            if ord == std::cmp::Ordering::Equal {
                if let ValRef::Overflow { head, .. } = old.leaf_val(i) {
                    plan.old_chains.push(head);
                }
                i += 1;
            }
            let (key, value) = writes[j];
            j += 1;
            if let Some(val) = value {
                out.push(LeafEntry { key, val });
            }
        }
        Ok(out)
    }

    fn new_buffer(&self, plan: &mut Plan<'_>) -> Result<PagePtr> {
        let buf = self.arena.alloc()?;
        // Tracked as spare until it is given a role, so an error frees it.
        plan.spare.push(buf);
        Ok(buf)
    }

    /// Takes `buf` back out of the spare list: it now has a role in the plan.
    fn claim(plan: &mut Plan<'_>, buf: PagePtr) -> PagePtr {
        if let Some(i) = plan.spare.iter().rposition(|&b| b == buf) {
            plan.spare.swap_remove(i);
        }
        buf
    }

    fn new_leaf(&self, plan: &mut Plan<'_>, entries: &[LeafEntry<'_>]) -> Result<PagePtr> {
        let buf = self.new_buffer(plan)?;
        // SAFETY: a fresh buffer owned by the plan, not yet published.
        page::build_leaf(unsafe { self.buf_mut(buf) }, entries);
        Ok(Self::claim(plan, buf))
    }

    fn new_inner(&self, plan: &mut Plan<'_>, node: &InnerNode) -> Result<PagePtr> {
        let buf = self.new_buffer(plan)?;
        // SAFETY: as in `new_leaf`.
        node.encode(unsafe { self.buf_mut(buf) });
        Ok(Self::claim(plan, buf))
    }

    fn kill(&self, plan: &mut Plan<'_>, id: PageId) -> Result<()> {
        let buf = self.new_buffer(plan)?;
        // SAFETY: as in `new_leaf`.
        page::build_dead(unsafe { self.buf_mut(buf) });
        let buf = Self::claim(plan, buf);
        match plan.installs.insert(id, Install::Dead(buf)) {
            Some(Install::Version(b)) | Some(Install::Dead(b)) => plan.spare.push(b),
            None => {}
        }
        Ok(())
    }

    fn fresh_page(&self, plan: &mut Plan<'_>) -> Result<PageId> {
        let id = self.table.allocate().ok_or(crate::Error::OutOfMemory {
            requested: self.page_size,
            source: std::io::Error::other("page table is full"),
        })?;
        plan.fresh.push(id);
        Ok(id)
    }

    /// The newest content of inner node `id`, as edited so far by this plan.
    fn inner_of(&self, work: &Work, id: PageId) -> InnerNode {
        if let Some(n) = work.nodes.get(&id) {
            return n.clone();
        }
        // SAFETY: inner nodes change only under the structure lock, which we hold.
        let p = unsafe { self.page(self.table.slot(id).head()) };
        debug_assert_eq!(p.kind(), Kind::Inner);
        InnerNode::decode(&p)
    }

    fn load<'w>(&self, work: &'w mut Work, id: PageId) -> &'w mut InnerNode {
        if !work.nodes.contains_key(&id) {
            let node = self.inner_of(work, id);
            work.nodes.insert(id, node);
        }
        work.nodes.get_mut(&id).expect("just loaded")
    }

    /// The child of inner node `id` whose range holds `key`, as edited so far.
    fn child_toward(&self, work: &Work, id: PageId, key: &[u8]) -> PageId {
        if let Some(n) = work.nodes.get(&id) {
            return n.children[n.route(key)];
        }
        // SAFETY: inner nodes change only under the structure lock, which we hold.
        let p = unsafe { self.page(self.table.slot(id).head()) };
        debug_assert_eq!(p.kind(), Kind::Inner);
        p.inner_child(p.inner_route(key))
    }

    /// Records the path from the root to `target` (routing by `key`); returns its parent.
    fn parent_of(&self, work: &mut Work, key: &[u8], target: PageId) -> Option<PageId> {
        let mut id = ROOT;
        let mut depth = 0;
        let mut parent = None;
        while id != target {
            work.depth.insert(id, depth);
            if let Some(p) = parent {
                work.parent.insert(id, p);
            }
            parent = Some(id);
            id = self.child_toward(work, id, key);
            depth += 1;
        }
        parent
    }

    fn restructure(
        &self,
        plan: &mut Plan<'_>,
        edits: Vec<Structural>,
        locked: &dyn Fn(PageId) -> bool,
    ) -> Result<()> {
        let p = self.page_size;
        let mut work = Work::default();
        for edit in edits {
            let parent = self.parent_of(&mut work, &edit.route_key, edit.page);
            match (edit.change, parent) {
                (Change::Split(seps), None) => {
                    // The root leaf split: its pieces move to fresh pages under a new inner root.
                    let first = self.fresh_page(plan)?;
                    let Some(Install::Version(buf)) = plan.installs.remove(&ROOT) else {
                        unreachable!("a split root has its first piece planned")
                    };
                    plan.installs.insert(first, Install::Version(buf));
                    let mut node = InnerNode {
                        children: vec![first],
                        keys: vec![Vec::new()],
                    };
                    for (k, id) in seps {
                        node.children.push(id);
                        node.keys.push(k);
                    }
                    work.nodes.insert(ROOT, node);
                    work.depth.insert(ROOT, 0);
                }
                (Change::Split(seps), Some(parent)) => {
                    let node = self.load(&mut work, parent);
                    let at = position(node, edit.page) + 1;
                    for (i, (k, id)) in seps.into_iter().enumerate() {
                        node.children.insert(at + i, id);
                        node.keys.insert(at + i, k);
                    }
                }
                (Change::Empty, Some(parent)) => {
                    self.remove_child(&mut work, parent, edit.page);
                    self.kill(plan, edit.page)?;
                }
                (Change::Underfull, Some(parent)) => {
                    self.merge_leaf(plan, &mut work, parent, edit.page, locked)?
                }
                (_, None) => {
                    unreachable!("only the root has no parent, and the root never underflows")
                }
            }
        }
        // Fix inner nodes bottom-up until every one fits and the root is not a chain.
        while let Some(id) = self.next_fix(&work, p) {
            let node = work.nodes.get(&id).expect("listed").clone();
            if node.children.is_empty() {
                work.nodes.remove(&id);
                if id == ROOT {
                    // Everything was deleted: the root becomes an empty leaf again.
                    let buf = self.new_leaf(plan, &[])?;
                    plan.installs.insert(ROOT, Install::Version(buf));
                } else {
                    let parent = work.parent[&id];
                    self.remove_child(&mut work, parent, id);
                    self.kill(plan, id)?;
                }
            } else if node.size() > p {
                self.split_inner(plan, &mut work, id, node)?;
            } else if id == ROOT {
                self.collapse_root(plan, &mut work, node.children[0], locked)?;
            } else {
                work.tried.insert(id);
                self.merge_inner(plan, &mut work, id)?;
            }
        }
        for (id, node) in std::mem::take(&mut work.nodes) {
            let buf = self.new_inner(plan, &node)?;
            if let Some(Install::Version(old) | Install::Dead(old)) =
                plan.installs.insert(id, Install::Version(buf))
            {
                plan.spare.push(old);
            }
        }
        Ok(())
    }

    /// The deepest edited inner node that still needs a fix (ties broken by page id,
    /// so a given history restructures the same way every run).
    fn next_fix(&self, work: &Work, p: usize) -> Option<PageId> {
        work.nodes
            .iter()
            .filter(|(id, n)| {
                n.children.is_empty()
                    || n.size() > p
                    || (**id == ROOT && n.children.len() == 1 && !work.tried.contains(id))
                    || (**id != ROOT && n.size() < p / 4 && !work.tried.contains(id))
            })
            .max_by_key(|(id, _)| (work.depth.get(id).copied().unwrap_or(0), **id != ROOT, **id))
            .map(|(id, _)| *id)
    }

    fn remove_child(&self, work: &mut Work, parent: PageId, child: PageId) {
        let node = self.load(work, parent);
        let at = position(node, child);
        node.children.remove(at);
        node.keys.remove(at);
        if at == 0 {
            // The new first child inherits the parent's low bound.
            if let Some(k) = node.keys.first_mut() {
                k.clear();
            }
        }
    }

    fn merge_leaf(
        &self,
        plan: &mut Plan<'_>,
        work: &mut Work,
        parent: PageId,
        leaf: PageId,
        locked: &dyn Fn(PageId) -> bool,
    ) -> Result<()> {
        let node = self.load(work, parent).clone();
        let at = position(&node, leaf);
        let mut candidates = Vec::new();
        if at + 1 < node.children.len() {
            candidates.push(at + 1);
        }
        if at > 0 {
            candidates.push(at - 1);
        }
        let Some(Install::Version(ours)) = plan.installs.get(&leaf) else {
            return Ok(());
        };
        let ours = *ours;
        for si in candidates {
            let sib = node.children[si];
            if locked(sib)
                || plan.installs.contains_key(&sib)
                || !self.table.slot(sib).try_lock_exclusive()
            {
                continue;
            }
            // SAFETY: we hold the sibling's exclusive lock; `ours` is our own buffer.
            let (sp, op) = unsafe { (self.page(self.table.slot(sib).head()), self.page(ours)) };
            debug_assert_eq!(sp.kind(), Kind::Leaf);
            if sp.used() + op.used() - HEADER > self.page_size * 3 / 4 {
                // Not merging: let the sibling's own committers in at once.
                self.table.slot(sib).unlock_exclusive();
                continue;
            }
            plan.extra_locks.push(sib);
            let (left, right, lp, rp) = if si > at {
                (leaf, sib, op, sp)
            } else {
                (sib, leaf, sp, op)
            };
            let entries: Vec<LeafEntry<'_>> = (0..lp.count())
                .map(|i| lp.leaf_entry(i))
                .chain((0..rp.count()).map(|i| rp.leaf_entry(i)))
                .collect();
            let buf = self.new_leaf(plan, &entries)?;
            if let Some(Install::Version(old) | Install::Dead(old)) =
                plan.installs.insert(left, Install::Version(buf))
            {
                plan.spare.push(old);
            }
            self.kill(plan, right)?;
            self.remove_child(work, parent, right);
            return Ok(());
        }
        Ok(())
    }

    fn split_inner(
        &self,
        plan: &mut Plan<'_>,
        work: &mut Work,
        id: PageId,
        node: InnerNode,
    ) -> Result<()> {
        let p = self.page_size;
        let sizes: Vec<usize> = node
            .keys
            .iter()
            .map(|k| page::inner_entry_size(k.len()))
            .collect();
        let total: usize = sizes.iter().sum();
        let pieces = (total.div_ceil(p - HEADER)).max(2);
        let target = total.div_ceil(pieces);
        let mut cuts = vec![0];
        let mut cur = 0;
        for (i, s) in sizes.iter().enumerate() {
            if cur > 0 && cur + s > target && i + 1 < sizes.len() {
                cuts.push(i);
                cur = 0;
            }
            cur += s;
        }
        cuts.push(sizes.len());
        let depth = work.depth.get(&id).copied().unwrap_or(0);
        let mut parts = Vec::new();
        for w in cuts.windows(2) {
            let mut part = InnerNode {
                children: node.children[w[0]..w[1]].to_vec(),
                keys: node.keys[w[0]..w[1]].to_vec(),
            };
            let low = std::mem::take(&mut part.keys[0]);
            parts.push((low, part));
        }
        let mut ids = Vec::new();
        if id == ROOT {
            // The root keeps page 0: its pieces move to fresh pages one level down.
            for d in work.depth.values_mut() {
                *d += 1;
            }
            let mut root = InnerNode::default();
            for (low, part) in parts {
                let pid = self.fresh_page(plan)?;
                root.children.push(pid);
                root.keys.push(low);
                ids.push(pid);
                work.nodes.insert(pid, part);
                work.parent.insert(pid, ROOT);
                work.depth.insert(pid, depth + 1);
            }
            work.nodes.insert(ROOT, root);
            work.depth.insert(ROOT, 0);
        } else {
            let parent = work.parent[&id];
            let mut first = true;
            let mut new = Vec::new();
            for (low, part) in parts {
                let pid = if first { id } else { self.fresh_page(plan)? };
                if !first {
                    new.push((low, pid));
                }
                first = false;
                ids.push(pid);
                work.nodes.insert(pid, part);
                work.parent.insert(pid, parent);
                work.depth.insert(pid, depth);
            }
            let pnode = self.load(work, parent);
            let at = position(pnode, id) + 1;
            for (i, (k, pid)) in new.into_iter().enumerate() {
                pnode.children.insert(at + i, pid);
                pnode.keys.insert(at + i, k);
            }
        }
        // Edited nodes below moved to whichever piece now holds them.
        for child in work.children_of(id) {
            if let Some(owner) = ids
                .iter()
                .find(|pid| work.nodes[*pid].children.contains(&child))
            {
                work.parent.insert(child, *owner);
            }
        }
        Ok(())
    }

    fn merge_inner(&self, plan: &mut Plan<'_>, work: &mut Work, id: PageId) -> Result<()> {
        let Some(&parent) = work.parent.get(&id) else {
            return Ok(());
        };
        let pnode = self.load(work, parent).clone();
        let at = position(&pnode, id);
        let si = if at + 1 < pnode.children.len() {
            at + 1
        } else if at > 0 {
            at - 1
        } else {
            return Ok(());
        };
        let sib = pnode.children[si];
        let (li, ri) = if si > at { (at, si) } else { (si, at) };
        let (left, right) = (pnode.children[li], pnode.children[ri]);
        let ln = self.inner_of(work, left);
        let rn = self.inner_of(work, right);
        if ln.children.is_empty() || rn.children.is_empty() {
            // An emptied sibling is removed by its own fix; merging it would be wrong.
            return Ok(());
        }
        let sep = &pnode.keys[ri];
        let merged_size = ln.size() + rn.size() - HEADER + sep.len();
        if merged_size > self.page_size * 3 / 4 {
            return Ok(());
        }
        let mut merged = ln;
        merged.children.extend_from_slice(&rn.children);
        merged.keys.push(sep.clone());
        merged.keys.extend_from_slice(&rn.keys[1..]);
        let depth = work.depth.get(&id).copied().unwrap_or(0);
        work.nodes.remove(&right);
        work.nodes.insert(left, merged);
        work.parent.insert(left, parent);
        work.parent.insert(sib, parent);
        work.depth.insert(left, depth);
        for child in work.children_of(right) {
            work.parent.insert(child, left);
        }
        self.kill(plan, right)?;
        self.remove_child(work, parent, right);
        Ok(())
    }

    /// The root has one child: pull the child's content up into page 0.
    fn collapse_root(
        &self,
        plan: &mut Plan<'_>,
        work: &mut Work,
        child: PageId,
        locked: &dyn Fn(PageId) -> bool,
    ) -> Result<()> {
        work.tried.insert(ROOT);
        if let Some(node) = work.nodes.remove(&child) {
            return self.collapse_into_inner(plan, work, child, node);
        }
        let planned = match plan.installs.get(&child) {
            Some(Install::Version(b)) => Some(*b),
            Some(Install::Dead(_)) => return Ok(()),
            None => None,
        };
        let source = match planned {
            Some(b) => b,
            None => {
                // SAFETY: read under the structure lock; leaves are checked by kind below
                // and only copied while we hold their lock.
                let head = self.table.slot(child).head();
                let kind = unsafe { self.page(head) }.kind();
                if kind == Kind::Inner {
                    let node = self.inner_of(work, child);
                    return self.collapse_into_inner(plan, work, child, node);
                }
                if locked(child) || !self.table.slot(child).try_lock_exclusive() {
                    return Ok(());
                }
                plan.extra_locks.push(child);
                self.table.slot(child).head()
            }
        };
        let buf = self.new_buffer(plan)?;
        // SAFETY: `source` is our own planned buffer or a head we hold locked; `buf` is fresh.
        unsafe {
            std::ptr::copy_nonoverlapping(
                source.add(HEADER),
                buf.add(HEADER),
                self.page_size - HEADER,
            )
        };
        // SAFETY: same buffer; copy the kind/count/used fields too (stamp and next are set at install).
        unsafe { std::ptr::copy_nonoverlapping(source.add(16), buf.add(16), HEADER - 16) };
        let buf = Self::claim(plan, buf);
        work.nodes.remove(&ROOT);
        plan.installs.insert(ROOT, Install::Version(buf));
        self.kill(plan, child)
    }

    fn collapse_into_inner(
        &self,
        plan: &mut Plan<'_>,
        work: &mut Work,
        child: PageId,
        node: InnerNode,
    ) -> Result<()> {
        for d in work.depth.values_mut() {
            *d = d.saturating_sub(1);
        }
        for c in work.children_of(child) {
            work.parent.insert(c, ROOT);
        }
        work.nodes.insert(ROOT, node);
        work.depth.insert(ROOT, 0);
        work.tried.remove(&ROOT);
        self.kill(plan, child)
    }
}

fn position(node: &InnerNode, child: PageId) -> usize {
    node.children
        .iter()
        .position(|c| *c == child)
        .expect("the parent names its child")
}

/// Index ranges of `entries` for the pieces of an overflowing leaf. An append
/// (every write beyond the old last key) fills left pieces almost full, so
/// sequential loads pack pages densely; otherwise pieces are even.
fn split_leaf(
    entries: &[LeafEntry<'_>],
    page_size: usize,
    append: bool,
) -> Vec<std::ops::Range<usize>> {
    let cap = page_size - HEADER;
    let total: usize = entries.iter().map(LeafEntry::size).sum();
    let target = if append {
        cap * 15 / 16
    } else {
        total.div_ceil(total.div_ceil(cap).max(2))
    };
    let mut pieces = Vec::new();
    let (mut start, mut cur) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        // Cut once a piece reaches the target (rounding up, so no sliver is left
        // over at the end), and always before it would overflow the page.
        if cur > 0 && (cur >= target || cur + e.size() > cap) {
            pieces.push(start..i);
            start = i;
            cur = 0;
        }
        cur += e.size();
    }
    pieces.push(start..entries.len());
    debug_assert!(pieces.len() >= 2, "an overflowing leaf splits");
    pieces
}

impl Plan<'_> {
    /// Links every planned version in, stamped `stamp`, and hands the replaced
    /// versions to reclamation. Cannot fail.
    pub(crate) fn install(mut self, stamp: u64) {
        let store = self.store;
        let mut garbage = Vec::with_capacity(self.installs.len() + self.old_chains.len());
        for (id, inst) in std::mem::take(&mut self.installs) {
            let slot = store.table.slot(id);
            let old = slot.head();
            let buf = match inst {
                Install::Version(b) => b,
                Install::Dead(b) => {
                    garbage.push(Garbage::Page(id, b));
                    b
                }
            };
            // SAFETY: `buf` is ours and unpublished until the store below.
            unsafe { page::set_version(buf, stamp, old) };
            slot.publish(buf);
            if !old.is_null() {
                garbage.push(Garbage::Version(id, old));
            }
        }
        garbage.extend(self.old_chains.drain(..).map(Garbage::Overflow));
        store.garbage.defer(stamp, garbage);
        self.fresh.clear();
        self.installed = true;
    }
}

impl Drop for Plan<'_> {
    fn drop(&mut self) {
        let store = self.store;
        for id in self.extra_locks.drain(..) {
            store.table.slot(id).unlock_exclusive();
        }
        for buf in self.spare.drain(..) {
            // SAFETY: spare buffers were never published.
            unsafe { store.arena.free(buf) };
        }
        if self.installed {
            return;
        }
        // Abandoned (an allocation failed): give back everything the plan took.
        for (_, inst) in std::mem::take(&mut self.installs) {
            let (Install::Version(b) | Install::Dead(b)) = inst;
            // SAFETY: never published.
            unsafe { store.arena.free(b) };
        }
        for id in self.fresh.drain(..) {
            store.table.release(id);
        }
    }
}
