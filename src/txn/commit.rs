//! Commit: lock, validate, take a commit id, install.
//!
//! The protocol, for a transaction with snapshot `s`:
//! 1. lock, in page-id order, every leaf it read (shared) and every leaf its
//!    writes land on (exclusive). Ordered locking: no deadlock between committers;
//! 2. validate. The page check is the fast path: a leaf whose newest version is
//!    the one seen at `s` needs nothing more. For a leaf that changed, the key
//!    check decides: each key read from it (present or absent) must have the same
//!    value now as at `s`, and each range scanned over it the same entries (so no
//!    key entered a gap). "Now" is read in the leaf that holds the key in the
//!    newest tree; when that is a leaf the commit does not hold (a split or merge
//!    moved the key), the commit adds it to its locks, releases everything and
//!    locks again in order (a few rounds at most, then it gives up as a conflict).
//!    A write needs no check at all: it lands on whatever leaf holds its key now,
//!    found the same way when its leaf changed since `s`. A merge (`add`,
//!    `next_in_sequence`) is computed here against that leaf's newest value;
//! 3. plan the new versions (allocation happens here, so it may fail cleanly);
//! 4. take the commit id `c` — while every lock is still held — and append the
//!    commit's journal record to the shard of this CPU;
//! 5. install the versions stamped `c`, release the locks;
//! 6. mark `c` installed, wait until the record is as durable as the journal's
//!    level asks, then wait for `c` to be visible: the watermark passes a commit
//!    only once it is installed and (in `Durable` mode) its shard's sync covered
//!    it, so nothing can read (and build on) a commit a crash would take back.
//!    Whoever completes a sync advances the watermark (see `store/clock.rs`).
//!
//! Why this is serializable in commit-id order. At the instant `c` is taken, the
//! commit holds the lock of every leaf that holds a key it read or a range it
//! scanned (trusted because the leaf was locked before the newest tree was asked:
//! a leaf loses keys only through a new version made under its lock, see
//! `store::newest`). Every commit with a smaller id that wrote those keys took its
//! id under the same locks, so it installed before this commit locked them, and
//! the key check compared against its result; every commit with a larger id that
//! writes them locks them after this one releases. So the values this command
//! read at `s` are exactly the values after commit `c - 1`: it computed what it
//! would have computed running alone at `c`. Its writes do not depend on the rest
//! of the leaf (blind writes and merges are applied to the newest version, under
//! the exclusive lock), so commits that only share a leaf order freely. Equal
//! values are enough: a key changed and changed back reads the same, and
//! serializability is about what was read, not how often it changed. A scan's
//! gaps are checked as part of its entries, which excludes phantoms.
//!
//! Commits on disjoint pages share no lock and no cache line except the commit-id
//! counter, so they validate and install in parallel.

use super::{add_to, raise_to, KeyLocks, Owner, Pending, Tx};
use crate::error::Result;
use crate::journal::{Frame, Journal, Ticket};
use crate::store::{Kind, LeafWrites, PageId, PageRead, Store, TreeRange, ValRef};
use smallvec::SmallVec;
use std::ops::Bound;

/// What happened to a commit attempt.
pub(crate) enum Outcome {
    /// Installed as commit `id`; `restructured` when it split, merged or removed
    /// pages; `resolved` when a leaf it used had changed since its snapshot and
    /// the key check let it commit anyway (a re-run saved).
    Committed {
        id: u64,
        restructured: bool,
        resolved: bool,
    },
    /// Nothing to write: the snapshot was its serialization point.
    ReadOnly,
    /// A key or range read at the snapshot had changed; nothing was installed.
    Conflict(Conflict),
    /// It would write `key`, which an escalated command holds: nothing was
    /// installed; the command waits for the key and re-runs.
    Blocked { key: Vec<u8> },
}

/// What failed validation, for telemetry and for waiting before a retry.
pub(crate) struct Conflict {
    /// The changed leaves where keys it read had changed (up to `MAX_REPORTED`).
    pub pages: Vec<ChangedPage>,
    /// The keys (first = last) and scanned ranges that had changed (up to `MAX_REPORTED`).
    pub keys: Vec<(Vec<u8>, Vec<u8>)>,
    /// Newest stamp among the changed leaves: a retry must see at least this commit.
    pub newer: u64,
    /// Every key and range the attempt read or wrote: what an escalated re-run locks.
    pub footprint: Vec<super::KeyBounds>,
}

/// One page that changed under a transaction.
pub(crate) struct ChangedPage {
    pub page: PageId,
    /// First and last key of the page's newest version (empty for inner/dead pages).
    pub first_key: Vec<u8>,
    pub last_key: Vec<u8>,
}

const MAX_REPORTED: usize = 8;

/// A key and its new value (`None` deletes).
type KeyWrite<'a> = (&'a [u8], Option<ValRef<'a>>);

/// Lock rounds before a commit whose keys keep moving gives up as a conflict.
const MAX_ROUNDS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Shared,
    Exclusive,
}

struct Locks<'s> {
    store: &'s Store,
    held: Vec<(PageId, Mode)>,
}

impl Locks<'_> {
    /// Locks `want` (sorted by page id, one entry per page) in order.
    fn take<'s>(store: &'s Store, want: &[(PageId, Mode)]) -> Locks<'s> {
        let mut locks = Locks {
            store,
            held: Vec::with_capacity(want.len()),
        };
        for &(id, mode) in want {
            let slot = store.slot(id);
            match mode {
                Mode::Shared => slot.lock_shared(),
                Mode::Exclusive => slot.lock_exclusive(),
            }
            locks.held.push((id, mode));
        }
        locks
    }

    fn holds(&self, id: PageId) -> bool {
        self.held.binary_search_by_key(&id, |h| h.0).is_ok()
    }

    fn holds_exclusive(&self, id: PageId) -> bool {
        matches!(self.held.binary_search_by_key(&id, |h| h.0), Ok(i) if self.held[i].1 == Mode::Exclusive)
    }
}

impl Drop for Locks<'_> {
    fn drop(&mut self) {
        for &(id, mode) in &self.held {
            let slot = self.store.slot(id);
            match mode {
                Mode::Shared => slot.unlock_shared(),
                Mode::Exclusive => slot.unlock_exclusive(),
            }
        }
    }
}

/// The leaves a commit locks; most commits lock a handful, kept inline.
type Want = SmallVec<[(PageId, Mode); 8]>;

/// Sorts `want` by page id, keeping the stronger mode of a page named twice.
fn normalize(want: &mut Want) {
    want.sort_unstable();
    // After sorting, the strongest mode of a page is its last entry.
    want.reverse();
    want.dedup_by_key(|w| w.0);
    want.reverse();
}

/// Where a commit's record goes: into `journal`, as a commit of `command`.
pub(crate) struct Log<'a> {
    pub journal: &'a Journal,
    pub command: &'a str,
    /// A follower applying its leader's record (allowed on a follower).
    pub apply: bool,
    /// The key lock table, and who this commit runs for (0: an ordinary command).
    pub locks: Option<(&'a KeyLocks, Owner)>,
}

/// Publishes a taken commit id: by `finish`, or when dropped during a panic (the
/// record still reaches the chain, so neither ids nor the chain have gaps).
struct Publish<'s> {
    store: &'s Store,
    journal: &'s Journal,
    id: u64,
    seen: u64,
    /// The journal shard whose sync the commit needs (`Durable` mode only).
    shard: Option<usize>,
    /// Until the frame goes to the chain.
    frame: Option<Frame>,
    done: bool,
}

impl Publish<'_> {
    /// Marks the commit installed, makes it durable per the journal's level, and
    /// advances the watermark over it if its predecessors are ready. Returns the
    /// watermark value seen while publishing.
    ///
    /// In `Durable` mode the install mark goes first and names the commit's
    /// shard: the clock then lets it become visible once that shard's sync
    /// covers it, whoever ran that sync, so a later commit never waits for this
    /// thread to come back from its fsync wait.
    fn finish(mut self, ticket: Ticket) -> Result<u64> {
        self.done = true;
        if let Some(frame) = self.frame.take() {
            self.journal.hand_to_chain(self.id, frame);
        }
        let journal = self.journal;
        let durable = |shard: usize, id: u64| journal.is_durable(shard, id);
        let seen = self
            .store
            .clock
            .publish_on(self.id, self.seen, ticket.shard(), &durable)
            .ok_or_else(|| journal.halted_error())?;
        if ticket.shard().is_none() {
            return Ok(seen);
        }
        if let Err(e) = journal.wait(ticket) {
            // Not durable: it must never become visible, nor anything after it
            // (its shard's sync never covers it, so the watermark stops below it).
            self.store.clock.halt(self.id);
            return Err(e);
        }
        Ok(self.store.clock.advance(&durable))
    }

    /// Waits until the commit is visible, running a stalled predecessor's
    /// shard sync itself where that is all the watermark waits for.
    fn wait_visible(store: &Store, journal: &Journal, id: u64, seen: u64) -> bool {
        let durable = |shard: usize, id: u64| journal.is_durable(shard, id);
        store
            .clock
            .wait_visible_helping(id, seen, &durable, |next, shard| {
                journal.sync_for(shard, next)
            })
    }
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(frame) = self.frame.take() {
                self.journal.hand_to_chain(self.id, frame);
            }
            // Its record was appended: in `Durable` mode it becomes visible once a
            // sync of its shard covers it (a later commit's, or a waiter's help).
            let journal = self.journal;
            let durable = |shard: usize, id: u64| journal.is_durable(shard, id);
            self.store
                .clock
                .publish_on(self.id, self.seen, self.shard, &durable);
        }
    }
}

/// Overflow chains written for a commit: freed unless the commit installs them
/// (a conflict, an error, or a panic before install).
struct Chains<'s> {
    store: &'s Store,
    heads: Vec<usize>,
    installed: bool,
}

impl Chains<'_> {
    fn stored<'v>(&mut self, key: &[u8], value: &'v [u8]) -> Result<ValRef<'v>> {
        let stored = self.store.stored_value(key, value)?;
        if let ValRef::Overflow { head, .. } = stored {
            self.heads.push(head);
        }
        Ok(stored)
    }
}

impl Drop for Chains<'_> {
    fn drop(&mut self) {
        if !self.installed {
            for &head in &self.heads {
                self.store.free_overflow(head);
            }
        }
    }
}

/// Whether two stored values are the same bytes.
fn same_value(store: &Store, a: Option<ValRef<'_>>, b: Option<ValRef<'_>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(ValRef::Inline(x)), Some(ValRef::Inline(y))) => x == y,
        (
            Some(x @ ValRef::Overflow { head: hx, len: lx }),
            Some(y @ ValRef::Overflow { head: hy, len: ly }),
        ) => lx == ly && (hx == hy || store.value(x) == store.value(y)),
        _ => false,
    }
}

/// The value of `key` in the newest version of the leaf `id` (held locked).
fn newest_value<'a>(store: &Store, id: PageId, key: &[u8]) -> Option<ValRef<'a>> {
    // SAFETY: the caller holds `id`'s lock; its newest version stays.
    let page = unsafe { store.head_page(id) }?;
    page.leaf_search(key).ok().map(|i| page.leaf_val(i))
}

/// What the key check found.
enum Check {
    /// Every key and range read from the changed leaves is as it was.
    Same,
    /// These keys or ranges changed.
    Changed(Vec<(Vec<u8>, Vec<u8>)>, Vec<PageId>),
    /// Some of them live now in leaves not locked: lock these too and look again.
    Relock(Vec<(PageId, Mode)>),
}

fn first_last(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> (Vec<u8>, Vec<u8>) {
    let end = |b: &Bound<Vec<u8>>| match b {
        Bound::Included(k) | Bound::Excluded(k) => k.clone(),
        Bound::Unbounded => Vec::new(),
    };
    (end(lo), end(hi))
}

/// The key check of every key and range `tx` read from the leaves in `changed`
/// (sorted), against the newest tree, under `locks`.
fn check_keys(tx: &Tx<'_>, changed: &[PageId], locks: &Locks<'_>) -> Check {
    let store = tx.store;
    let is_changed = |id: PageId| changed.binary_search(&id).is_ok();
    let mut relock = Vec::new();
    let mut keys = Vec::new();
    let mut pages = Vec::new();
    for p in &tx.reads.points {
        if !is_changed(p.page) {
            continue;
        }
        let key = tx.reads.key(p);
        let Some(now) = store.newest_leaf(key) else {
            // Cannot happen under the structure lock; be safe: a conflict.
            debug_assert!(false, "no leaf routes a key in the newest tree");
            keys.push((key.to_vec(), key.to_vec()));
            pages.push(p.page);
            continue;
        };
        if !locks.holds(now) {
            relock.push((now, Mode::Shared));
            continue;
        }
        // SAFETY: the version seen at the snapshot stays while the snapshot is pinned.
        let seen = unsafe { store.page(p.version) };
        let then = seen.leaf_search(key).ok().map(|i| seen.leaf_val(i));
        let same = same_value(store, then, newest_value(store, now, key))
            || cfg!(shardstone_broken = "keys");
        if !same {
            if keys.len() < MAX_REPORTED {
                keys.push((key.to_vec(), key.to_vec()));
            }
            pages.push(p.page);
        }
    }
    for r in &tx.reads.ranges {
        let to = r.to.min(tx.reads.pages.len());
        let Some(suspect) = tx.reads.pages[r.from.min(to)..to]
            .iter()
            .find(|p| is_changed(p.id))
        else {
            continue;
        };
        let Some(leaves) = store.newest_leaves(&r.lo, &r.hi) else {
            debug_assert!(false, "no leaves route a range in the newest tree");
            keys.push(first_last(&r.lo, &r.hi));
            pages.push(suspect.id);
            continue;
        };
        let missing: Vec<_> = leaves.iter().filter(|id| !locks.holds(**id)).collect();
        if !missing.is_empty() {
            relock.extend(missing.into_iter().map(|id| (*id, Mode::Shared)));
            continue;
        }
        let same = same_range(tx, &r.lo, &r.hi, &leaves) || cfg!(shardstone_broken = "keys");
        if !same {
            if keys.len() < MAX_REPORTED {
                keys.push(first_last(&r.lo, &r.hi));
            }
            pages.push(suspect.id);
        }
    }
    if !keys.is_empty() {
        return Check::Changed(keys, pages);
    }
    if !relock.is_empty() {
        return Check::Relock(relock);
    }
    Check::Same
}

/// Whether `[lo, hi]` holds the same entries at the snapshot and in the newest
/// versions of `leaves` (every leaf that holds a key of it now, in key order, locked).
fn same_range(tx: &Tx<'_>, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, leaves: &[PageId]) -> bool {
    let store = tx.store;
    let mut then = TreeRange::new(store, tx.at, lo.clone(), hi.clone(), None);
    let in_range = |k: &[u8]| {
        let above = match lo {
            Bound::Included(l) => k >= l.as_slice(),
            Bound::Excluded(l) => k > l.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match hi {
            Bound::Included(h) => k <= h.as_slice(),
            Bound::Excluded(h) => k < h.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    };
    for &id in leaves {
        // SAFETY: held locked by the caller.
        let Some(page) = (unsafe { store.head_page(id) }) else {
            return false;
        };
        if page.kind() != Kind::Leaf {
            return false;
        }
        for i in 0..page.count() {
            let key = page.leaf_key(i);
            if !in_range(key) {
                continue;
            }
            match then.next_entry() {
                Some((k, v)) if k == key && store.value(page.leaf_val(i)) == v => {}
                _ => return false,
            }
        }
    }
    then.next_entry().is_none()
}

/// Validates and installs `tx`, and logs it to `log`. Read-only transactions
/// return at once.
pub(crate) fn commit(mut tx: Tx<'_>, log: Log<'_>) -> Result<Outcome> {
    if tx.is_read_only() {
        return Ok(Outcome::ReadOnly);
    }
    let store = tx.store;
    let journal = log.journal;
    journal.check_writable(log.apply)?;
    let merges = tx.writes.values().any(|w| w.op.is_merge());
    // The record is encoded before any lock is taken (the commit id is filled in
    // when it is taken), unless a merge's value is only known under the locks.
    fn plain(op: &Pending) -> Option<&[u8]> {
        match op {
            Pending::Put(v) => Some(v.as_slice()),
            _ => None,
        }
    }
    let mut frame = if merges {
        None
    } else {
        let ops = tx.writes.iter().map(|(k, w)| (k.as_slice(), plain(&w.op)));
        Some(Frame::commit(log.command, ops)?)
    };
    // Overflow chains for large values are written here, before any lock is taken,
    // so a big value does not hold pages locked while it is copied.
    let mut chains = Chains {
        store,
        heads: Vec::new(),
        installed: false,
    };
    // Merged values (computed under the locks), declared first: `stored` borrows them.
    let mut merged: Vec<(usize, [u8; 8])> = Vec::new();
    let mut stored: SmallVec<[Option<ValRef<'_>>; 4]> = SmallVec::with_capacity(tx.writes.len());
    for (key, w) in &tx.writes {
        stored.push(match &w.op {
            Pending::Put(v) => Some(chains.stored(key, v)?),
            _ => None,
        });
    }

    // The leaves to lock, and where each write lands (a hint until checked).
    let mut want: Want = tx
        .reads
        .pages
        .iter()
        .map(|p| (p.id, Mode::Shared))
        .chain(tx.writes.values().map(|w| (w.leaf, Mode::Exclusive)))
        .collect();
    normalize(&mut want);
    let mut landing: SmallVec<[PageId; 4]> = tx.writes.values().map(|w| w.leaf).collect();
    // The leaves read, one entry each. Ranges index `pages` by position, so it is
    // only sorted in place when there are none.
    let mut copied: Vec<PageRead>;
    let seen: &[PageRead] = if tx.reads.ranges.is_empty() {
        tx.reads.pages.sort_unstable_by_key(|p| p.id);
        tx.reads.pages.dedup_by_key(|p| p.id);
        &tx.reads.pages
    } else {
        copied = tx.reads.pages.clone();
        copied.sort_unstable_by_key(|p| p.id);
        copied.dedup_by_key(|p| p.id);
        &copied
    };

    let mut resolved = false;
    let mut round = 0;
    let locks = loop {
        round += 1;
        let locks = Locks::take(store, &want);
        // A key an escalated command holds is not written under it. Checked with
        // the leaves locked: an escalated command that locks a key after this
        // check loses to this commit at most once (its re-run holds the key first).
        if let Some((keys, me)) = log.locks {
            if keys.any() {
                if let Some(key) = keys.held_by_other(me, tx.writes.keys().map(Vec::as_slice)) {
                    return Ok(Outcome::Blocked { key });
                }
            }
        }
        let mut more: Vec<(PageId, Mode)> = Vec::new();
        // Writes: a leaf unchanged since the snapshot still holds the key; else
        // ask the newest tree (trusted only for a leaf already held exclusively).
        let mut unchanged: Option<PageId> = None;
        for (i, (key, w)) in tx.writes.iter().enumerate() {
            let leaf = landing[i];
            if unchanged == Some(leaf) {
                continue;
            }
            if leaf == w.leaf {
                // SAFETY: held exclusively.
                let head = unsafe { store.head_page(leaf) };
                if head.is_some_and(|p| p.stamp() == w.stamp && p.kind() == Kind::Leaf) {
                    unchanged = Some(leaf);
                    continue;
                }
            }
            resolved = true;
            match store.newest_leaf(key) {
                Some(now) if locks.holds_exclusive(now) => landing[i] = now,
                Some(now) => {
                    landing[i] = now;
                    more.push((now, Mode::Exclusive));
                }
                None => {
                    debug_assert!(false, "no leaf routes a key in the newest tree");
                    more.push((leaf, Mode::Exclusive));
                }
            }
        }
        // Reads: the page check, then the key check of the leaves that changed.
        let mut changed: Vec<PageId> = Vec::new();
        let mut newer = 0;
        for p in seen {
            // SAFETY: held (shared or exclusive); its newest version stays.
            let stamp = unsafe { store.head_page(p.id) }.map_or(u64::MAX, |h| h.stamp());
            // Deliberately wrong under `shardstone_broken = "validation"`, for the
            // loom model to catch: nothing is ever found changed.
            if stamp != p.stamp && !cfg!(shardstone_broken = "validation") {
                changed.push(p.id);
                newer = newer.max(stamp);
            }
        }
        if !changed.is_empty() {
            resolved = true;
            match check_keys(&tx, &changed, &locks) {
                Check::Same => {}
                Check::Changed(keys, pages) => {
                    return Ok(Outcome::Conflict(conflict(&tx, pages, keys, newer)));
                }
                Check::Relock(extra) => more.extend(extra),
            }
        }
        if more.is_empty() {
            break locks;
        }
        if round == MAX_ROUNDS {
            // The keys kept moving between rounds: give up as a conflict on the
            // leaves that changed; the re-run reads the newest tree.
            let pages = if changed.is_empty() {
                landing.to_vec()
            } else {
                changed
            };
            let keys = tx
                .writes
                .keys()
                .take(MAX_REPORTED)
                .map(|k| (k.clone(), k.clone()))
                .collect();
            return Ok(Outcome::Conflict(conflict(&tx, pages, keys, newer)));
        }
        drop(locks);
        want.extend(more);
        normalize(&mut want);
    };

    // Merges, computed against the newest value of the leaf each lands on.
    for (i, (key, w)) in tx.writes.iter().enumerate() {
        let base = |store| {
            newest_value(store, landing[i], key).map(|v| match v {
                ValRef::Inline(b) => b.to_vec(),
                v @ ValRef::Overflow { .. } => store.value(v).into_vec(),
            })
        };
        match w.op {
            Pending::Add(d) => merged.push((i, add_to(key, base(store).as_deref(), d)?)),
            Pending::AtLeast(n) => merged.push((i, raise_to(key, base(store).as_deref(), n)?)),
            _ => {}
        }
    }
    for (i, bytes) in &merged {
        let key = tx.writes.keys().nth(*i).expect("merge index is a write");
        stored[*i] = Some(chains.stored(key, bytes)?);
    }
    if frame.is_none() {
        let mut m = merged.iter().peekable();
        let ops: Vec<(&[u8], Option<&[u8]>)> = tx
            .writes
            .iter()
            .enumerate()
            .map(|(i, (k, w))| {
                let v = match &w.op {
                    Pending::Put(v) => Some(v.as_slice()),
                    Pending::Delete => None,
                    Pending::Add(_) | Pending::AtLeast(_) => {
                        let (j, bytes) = m.next().expect("one merged value per merge");
                        debug_assert_eq!(*j, i);
                        Some(&bytes[..])
                    }
                };
                (k.as_slice(), v)
            })
            .collect();
        frame = Some(Frame::commit(log.command, ops.into_iter())?);
    }
    let mut frame = frame.expect("encoded above");

    // Writes grouped by the leaf they land on, in page order; each group stays in
    // key order. Most commits write one or a few leaves: a short list beats a map.
    let mut edits: Vec<LeafWrites<'_>> = Vec::new();
    // Past a few leaves, an index (writes come in key order, so a leaf's writes
    // are mostly adjacent; a relocated write may come back to an earlier leaf).
    let mut index: std::collections::HashMap<PageId, usize> = std::collections::HashMap::new();
    for (i, key) in tx.writes.keys().enumerate() {
        let page = landing[i];
        let write: KeyWrite<'_> = (key.as_slice(), stored[i]);
        let at = match edits.last() {
            Some(e) if e.page == page => Some(edits.len() - 1),
            _ if edits.len() <= 8 => edits.iter().position(|e| e.page == page),
            _ => {
                if index.is_empty() {
                    index.extend(edits.iter().enumerate().map(|(j, e)| (e.page, j)));
                }
                index.get(&page).copied()
            }
        };
        match at {
            Some(j) => edits[j].writes.push(write),
            None => {
                if !index.is_empty() {
                    index.insert(page, edits.len());
                }
                debug_assert!(
                    locks.holds_exclusive(page),
                    "{page} written without its lock"
                );
                edits.push(LeafWrites {
                    page,
                    head: store.slot(page).head(),
                    writes: vec![write],
                });
            }
        }
    }
    edits.sort_unstable_by_key(|e| e.page);

    let held: Vec<PageId> = locks.held.iter().map(|(id, _)| *id).collect();
    let plan = store.plan(&edits, &|id| held.binary_search(&id).is_ok())?;
    let restructured = plan.restructured;
    let durable = store.clock.visible();
    let ticket = journal.append(&mut frame, durable, || store.clock.assign())?;
    let id = ticket.id();
    // Ids have no gaps: once taken, `id` is published even if something below panics.
    let publish = Publish {
        store,
        journal,
        id,
        seen: tx.at,
        shard: ticket.shard(),
        frame: Some(frame),
        done: false,
    };
    // Deliberately wrong under `shardstone_broken = "visibility"`, for the loom
    // model to catch: the commit becomes visible before its pages are installed.
    #[cfg(shardstone_broken = "visibility")]
    let seen = publish.finish(ticket)?;
    plan.install(id);
    chains.installed = true;
    drop(locks);
    #[cfg(not(shardstone_broken = "visibility"))]
    let seen = publish.finish(ticket)?;
    // `run` returns only when its commit is visible: a snapshot taken next on this
    // thread sees it (earlier ids may still be installing on other threads).
    journal.signal.notify();
    if !Publish::wait_visible(store, journal, id, seen) {
        return Err(journal.halted_error());
    }
    store.maybe_collect();
    Ok(Outcome::Committed {
        id,
        restructured,
        resolved,
    })
}

/// A conflict report on `pages` (the changed leaves, deduplicated here) for `keys`.
fn conflict(
    tx: &Tx<'_>,
    mut pages: Vec<PageId>,
    keys: Vec<(Vec<u8>, Vec<u8>)>,
    newer: u64,
) -> Conflict {
    let store = tx.store;
    pages.sort_unstable();
    pages.dedup();
    let pages = pages
        .into_iter()
        .take(MAX_REPORTED)
        .map(|page| {
            // SAFETY: the committer still holds its pin (and the page's lock).
            let head = unsafe { store.head_page(page) };
            let (first_key, last_key) = match head {
                Some(p) if p.kind() == Kind::Leaf && p.count() > 0 => {
                    (p.leaf_key(0).to_vec(), p.leaf_key(p.count() - 1).to_vec())
                }
                _ => (Vec::new(), Vec::new()),
            };
            ChangedPage {
                page,
                first_key,
                last_key,
            }
        })
        .collect();
    Conflict {
        pages,
        keys,
        newer,
        footprint: tx.footprint(),
    }
}
