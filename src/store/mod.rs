//! The page-based MVCC store: pages, the B+tree over them, page versions,
//! snapshots, and reclamation of versions no snapshot can reach.
//!
//! Every page has a chain of immutable versions, newest first, each stamped with
//! the commit id that created it. A snapshot at commit `s` reads, on every page,
//! the newest version stamped `<= s`; so it sees exactly the commits `<= s`.
//! Inner nodes name children by [`PageId`], so rewriting a leaf never touches its
//! parent: commits on disjoint leaves install in parallel. The root is always
//! page 0; splits and collapses of the root rewrite page 0 in place.
//!
//! The store knows nothing about commands or the journal; `txn` drives commits
//! through [`Store::plan`] and [`Plan::install`].

mod apply;
mod arena;
mod build;
mod clock;
mod cursor;
mod interval;
mod newest;
mod overflow;
mod page;
mod reclaim;
mod sequence;
mod snapshot;
mod table;

pub(crate) use apply::LeafWrites;
pub(crate) use arena::PagePtr;
pub(crate) use build::Builder;
pub(crate) use clock::Clock;
#[cfg(loom)]
pub use clock::ClockModel;
pub(crate) use cursor::TreeRange;
pub(crate) use newest::PageRead;
pub(crate) use overflow::chain_len;
pub(crate) use page::{check_layout, Kind, ValRef};
pub(crate) use reclaim::PinSlot;
pub use snapshot::{Snapshot, SnapshotRange};
pub(crate) use table::PageSlot;

use crate::error::Result;
use crate::options::Options;
use crate::sync::{fence, thread_local, AtomicU64, CachePadded, Mutex, Ordering};
use arena::Arenas;
pub(crate) use arena::MemoryHome;
use interval::Reclaimer;
pub(crate) use page::Page;
pub(crate) use reclaim::Reading;
use reclaim::{Garbage, GarbageLists, Pins};
use sequence::Sequences;
use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::time::{Duration, Instant};
use table::PageTable;

/// Identifies a page of the store (a newtype: it never mixes with commit ids).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PageId(pub u64);

impl PageId {
    /// The id as a plain number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}

/// The root of the tree is always this page.
pub(crate) const ROOT: PageId = PageId(0);

/// A value read from the store: an owned copy of the bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Value(Vec<u8>);

impl Value {
    /// The bytes, as an owned vector.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value(v)
    }
}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl PartialEq<&[u8]> for Value {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if self.0.len() <= 64 => write!(f, "{s:?}"),
            _ => write!(f, "Value({} bytes)", self.0.len()),
        }
    }
}

/// Memory counters of the store, reported through `Engine::stats`.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StoreStats {
    /// Page ids in use (live pages of the tree).
    pub pages: u64,
    /// Arena pages handed out: live versions, old versions and overflow pages.
    pub page_buffers: u64,
    /// Bytes of address space mapped for pages.
    pub mapped_bytes: usize,
    /// Old versions and overflow chains waiting for snapshots to move on before they
    /// can be freed. Grows while a snapshot is held for long: watch it.
    pub pinned_versions: u64,
    /// Snapshots and transactions currently pinned.
    pub pinned_snapshots: usize,
    /// Commit id of the oldest pinned snapshot, if any.
    pub oldest_pinned_snapshot: Option<u64>,
    /// Commit id of the oldest live [`Snapshot`] handle (transactions not counted).
    pub oldest_snapshot: Option<u64>,
    /// How long the oldest live [`Snapshot`] handle has been held.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::opt_duration")
    )]
    pub oldest_snapshot_age: Option<Duration>,
    /// Bytes of superseded page versions that are still allocated because a
    /// snapshot older than the newest commit may read them, as of the last full
    /// reclamation pass (`Engine::stats` runs one). Approximate: counted in whole
    /// pages, and an old overflow chain counts as one page whatever its length.
    pub snapshot_pinned_bytes: u64,
    /// Page versions freed between snapshots by interval reclamation (a version no
    /// live snapshot can read, though an older snapshot is still held), since open.
    pub versions_unlinked: u64,
    /// Snapshots reported as held longer than `Options::snapshot_warn_age`: each
    /// snapshot counts once, when a reclamation pass or `Engine::stats` notices it.
    /// Each is also a `tracing` warning (docs/operations.md, "Logs and
    /// metrics"); watch this counter and `oldest_snapshot_age` as well.
    pub old_snapshot_warnings: u64,
}

pub(crate) struct Store {
    page_size: usize,
    max_value_len: usize,
    arena: Arenas,
    table: PageTable,
    pub(crate) clock: Clock,
    pins: Pins,
    garbage: GarbageLists,
    /// The reclamation lock: one full pass at a time, and the versions it unlinked.
    reclaimer: Mutex<Reclaimer>,
    /// While a full pass walks version chains: its horizon, above which the
    /// own-shard collectors free nothing (`u64::MAX` when no pass walks).
    walk_floor: CachePadded<AtomicU64>,
    /// Pin times of snapshots are measured from here.
    epoch: Instant,
    /// `Options::snapshot_warn_age`, in nanoseconds.
    warn_age_ns: Option<u64>,
    old_snapshot_warnings: AtomicU64,
    /// Versions unlinked by interval reclamation (`StoreStats::versions_unlinked`).
    unlinked: AtomicU64,
    /// `StoreStats::snapshot_pinned_bytes` as of the last full pass.
    pinned_bytes: AtomicU64,
    /// Serializes structure changes (splits, merges) among the commits that make them;
    /// commits that only rewrite leaves never take it.
    structure: Mutex<()>,
    /// In-memory counters of the sequences (`Tx::next_in_sequence`).
    pub(crate) sequences: Sequences,
}

impl Store {
    /// A store whose page memory is placed as `home` says.
    /// `cpus`: CPUs of the engine's topology, which size the per-thread
    /// structures (pin slots, garbage lists, page free lists).
    pub(crate) fn with_home(
        opts: &Options,
        home: std::sync::Arc<dyn MemoryHome>,
        cpus: usize,
    ) -> Result<Store> {
        opts.validate()?;
        let pin_slots = if cfg!(loom) {
            4
        } else {
            64.max(cpus.saturating_mul(4))
        };
        let shards = crate::sync::shards_for(cpus);
        let store = Store {
            page_size: opts.page_size,
            max_value_len: opts.max_value_len,
            arena: Arenas::new(opts.page_size, home, shards),
            table: PageTable::new(),
            clock: Clock::new(),
            pins: Pins::new(pin_slots),
            garbage: GarbageLists::new(shards),
            reclaimer: Mutex::new(Reclaimer::default()),
            walk_floor: CachePadded::new(AtomicU64::new(u64::MAX)),
            epoch: Instant::now(),
            warn_age_ns: opts
                .snapshot_warn_age
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            old_snapshot_warnings: AtomicU64::new(0),
            unlinked: AtomicU64::new(0),
            pinned_bytes: AtomicU64::new(0),
            structure: Mutex::new(()),
            sequences: Sequences::default(),
        };
        let root = store.table.allocate().expect("a new page table has room");
        debug_assert_eq!(root, ROOT);
        let buf = store.arena.alloc()?;
        // SAFETY: `buf` is a fresh page buffer we own; it is published below.
        unsafe {
            page::build_leaf(store.buf_mut(buf), &[]);
            page::set_version(buf, 0, std::ptr::null_mut());
        }
        store.table.slot(ROOT).publish(buf);
        Ok(store)
    }

    pub(crate) fn max_value_len(&self) -> usize {
        self.max_value_len
    }

    pub(crate) fn slot(&self, id: PageId) -> &PageSlot {
        self.table.slot(id)
    }

    /// # Safety
    /// `ptr` is a page version kept alive by the caller (pin, page lock or structure lock).
    pub(crate) unsafe fn page<'a>(&self, ptr: *const u8) -> Page<'a> {
        // SAFETY: forwarded to the caller.
        unsafe { Page::from_ptr(ptr, self.page_size) }
    }

    /// # Safety
    /// `ptr` is an unpublished page buffer owned by the caller.
    #[allow(clippy::mut_from_ref)]
    unsafe fn buf_mut<'a>(&self, ptr: *mut u8) -> &'a mut [u8] {
        // SAFETY: forwarded to the caller.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.page_size) }
    }

    /// The version of `id` a snapshot at `at` sees. The caller holds a pin `<= at`.
    // `newer` feeds only the chain check, which release builds leave out.
    #[cfg_attr(
        not(any(debug_assertions, loom)),
        allow(unused_variables, unused_assignments)
    )]
    pub(crate) fn version_at(&self, id: PageId, at: u64) -> PagePtr {
        let mut v = self.table.slot(id).head();
        let mut newer = u64::MAX;
        loop {
            debug_assert!(!v.is_null(), "{id} has no version visible at {at}");
            // SAFETY: versions newer than the caller's pin are not freed while it is held
            // (their superseding commit is newer still, above the horizon).
            let p = unsafe { self.page(v) };
            // A chain strictly descends in stamps; anything else is a freed and reused
            // version (a reclamation bug): fail loudly in tests instead of looping.
            #[cfg(any(debug_assertions, loom))]
            assert!(
                p.stamp() < newer,
                "{id}: version chain not descending at {at}: a reclaimed version was reached"
            );
            if p.stamp() <= at {
                return v;
            }
            newer = p.stamp();
            v = p.next_version();
            // Lets a loom model run interval reclamation between reading a link and
            // following it (plain memory is no scheduling point of its own).
            #[cfg(loom)]
            crate::sync::yield_now();
        }
    }

    /// `version_at` for `verify`: never asserts, never follows an id that was
    /// not handed out; the reason when `id` has no sane version visible at `at`.
    /// The caller holds a pin `<= at`.
    pub(crate) fn checked_version_at(&self, id: PageId, at: u64) -> Result<PagePtr, String> {
        if !self.table.is_allocated(id) {
            return Err("no such page was ever allocated".to_owned());
        }
        let mut v = self.table.slot(id).head();
        let mut newer = u64::MAX;
        while !v.is_null() {
            // SAFETY: as in `version_at`: the caller's pin keeps these versions.
            let p = unsafe { self.page(v) };
            if p.stamp() >= newer {
                return Err("its version chain does not descend in commit ids".to_owned());
            }
            if p.stamp() <= at {
                return Ok(v);
            }
            newer = p.stamp();
            v = p.next_version();
        }
        Err(format!("no version of it is visible at commit {at}"))
    }

    /// The page size: what `verify` checks page layouts against.
    pub(crate) fn page_size(&self) -> usize {
        self.page_size
    }

    /// The leaf whose range holds `key` at snapshot `at`, with the version seen.
    pub(crate) fn descend(&self, key: &[u8], at: u64) -> (PageId, PagePtr) {
        let mut id = ROOT;
        loop {
            let v = self.version_at(id, at);
            // SAFETY: pinned by the caller.
            let p = unsafe { self.page(v) };
            match p.kind() {
                Kind::Leaf => return (id, v),
                Kind::Inner => id = p.inner_child(p.inner_route(key)),
                Kind::Dead => unreachable!("a live inner node at {at} names a dead {id}"),
            }
        }
    }

    /// Looks `key` up at `at`; reports the leaf read through `visit`.
    pub(crate) fn get(
        &self,
        key: &[u8],
        at: u64,
        visit: impl FnOnce(PageId, u64),
    ) -> Option<Value> {
        let (id, v) = self.descend(key, at);
        // SAFETY: pinned by the caller.
        let p = unsafe { self.page(v) };
        visit(id, p.stamp());
        p.leaf_search(key).ok().map(|i| self.value(p.leaf_val(i)))
    }

    pub(crate) fn value(&self, v: ValRef<'_>) -> Value {
        match v {
            ValRef::Inline(bytes) => Value(bytes.to_vec()),
            ValRef::Overflow { head, len } => Value(overflow::read_chain(head, len)),
        }
    }

    /// How `value` will be stored under `key`: inline, or in an overflow chain
    /// written now (the caller owns it until a commit installs it, and frees it
    /// with `free_overflow` otherwise).
    pub(crate) fn stored_value<'v>(&self, key: &[u8], value: &'v [u8]) -> Result<ValRef<'v>> {
        if page::inline_entry_size(key.len(), value.len()) <= page::max_inline_entry(self.page_size)
        {
            return Ok(ValRef::Inline(value));
        }
        let head = overflow::write_chain(&self.arena, value)?;
        Ok(ValRef::Overflow {
            head,
            len: value.len(),
        })
    }

    /// The memory domain holding the newest version of the leaf where `key` lives
    /// (or would be inserted); `None` with a single domain.
    pub(crate) fn domain_of_key(&self, key: &[u8]) -> Option<usize> {
        let (slot, at) = self.pin();
        let (_, leaf) = self.descend(key, at);
        let domain = self.arena.domain_of(leaf);
        self.unpin(&slot);
        domain
    }

    /// Each page arena's mappings (address, length).
    pub(crate) fn arena_mappings(&self) -> Vec<Vec<(usize, usize)>> {
        self.arena.mappings()
    }

    /// Frees an overflow chain that was never installed.
    pub(crate) fn free_overflow(&self, head: usize) {
        overflow::free_chain(&self.arena, head);
    }

    /// Pins a transaction's snapshot at the newest visible commit (an unguarded
    /// pin: it may walk version chains at any time while held).
    pub(crate) fn pin(&self) -> (PinSlot, u64) {
        self.pins.pin(&self.clock, None)
    }

    /// Pins a snapshot handle at the newest visible commit (a guarded pin: it walks
    /// version chains only inside [`Store::reading`]).
    pub(crate) fn pin_snapshot(&self) -> (PinSlot, u64) {
        self.pins.pin(&self.clock, Some(self.now_ns()))
    }

    /// A reading section of the guarded pin `slot` (see `interval`).
    pub(crate) fn reading(&self, slot: &PinSlot) -> Reading<'_> {
        self.pins.enter(slot)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn unpin(&self, slot: &PinSlot) {
        self.pins.unpin(slot);
    }

    fn free(&self, g: Garbage) {
        match g {
            // SAFETY: the horizon passed the garbage's stamp: no snapshot reaches it.
            // or interval reclamation unlinked it and every reader that could be on
            // it has left.
            Garbage::Version(_, v) => unsafe { self.arena.free(v) },
            Garbage::Overflow(head) => overflow::free_chain(&self.arena, head),
            Garbage::Page(id, dead) => {
                self.table.release(id);
                // SAFETY: as above; the id was just unlinked from its dead marker.
                unsafe { self.arena.free(dead) };
            }
        }
    }

    /// Frees what no snapshot can reach any more. Cheap to call often: it does real
    /// work only every few dozen commits of this thread, on this thread's own
    /// garbage, and every thousand or so on everyone's (so the garbage of threads
    /// that stopped committing is freed too).
    pub(crate) fn maybe_collect(&self) {
        // A per-thread count: a shared one would be a cache line every commit writes.
        thread_local! {
            static COMMITS: Cell<u32> = Cell::new(0);
        }
        let n = COMMITS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if n.is_multiple_of(1024) {
            self.collect();
        } else if n.is_multiple_of(32) {
            self.collect_from(true);
        }
    }

    /// Frees every piece of garbage no snapshot can reach (below the horizon, and
    /// between pinned snapshots); returns how many. Waits for a pass in progress.
    pub(crate) fn collect(&self) -> u64 {
        let mut reclaimer = self.reclaimer.lock();
        self.full_pass(&mut reclaimer)
    }

    fn collect_from(&self, only_own: bool) -> u64 {
        if !only_own {
            // A pass already running does this work.
            return match self.reclaimer.try_lock() {
                Some(mut reclaimer) => self.full_pass(&mut reclaimer),
                None => 0,
            };
        }
        match self.pins.horizon(&self.clock) {
            // A full pass may be walking chains above its own horizon (see `interval`).
            Some(h) => {
                let h = h.min(self.walk_floor.load(Ordering::SeqCst));
                self.garbage.collect(h, true, |g| self.free(g))
            }
            None => 0,
        }
    }

    /// One full reclamation pass: the horizon rule over every shard, then interval
    /// reclamation between pinned snapshots, then the old-snapshot report.
    fn full_pass(&self, reclaimer: &mut Reclaimer) -> u64 {
        // Raised before the pins are scanned: an own-shard collector that misses it
        // scanned before us, so its horizon is at most ours.
        self.walk_floor.store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut freed = self.free_retired(reclaimer);
        if let Some(view) = self.pins.scan(&self.clock) {
            let h = view.horizon();
            self.walk_floor.store(h, Ordering::SeqCst);
            freed += self.garbage.collect(h, false, |g| self.free(g));
            freed += self.unlink_invisible(&view, reclaimer);
            self.walk_floor.store(u64::MAX, Ordering::SeqCst);
            let mut held = reclaimer.waiting();
            self.garbage.edit_each(|list| {
                held += list.iter().filter(|(c, _)| *c <= view.watermark).count() as u64;
            });
            self.pinned_bytes
                .store(held * self.page_size as u64, Ordering::Relaxed);
        } else {
            self.walk_floor.store(u64::MAX, Ordering::SeqCst);
        }
        self.notice_old_snapshots();
        freed
    }

    /// Counts every snapshot held past `Options::snapshot_warn_age` not yet
    /// reported; returns the oldest snapshot handle (its id and age).
    fn notice_old_snapshots(&self) -> Option<(u64, Duration)> {
        let now = self.now_ns();
        let warn_before = self.warn_age_ns.map(|age| now.saturating_sub(age));
        let oldest = self.pins.snapshots(warn_before, |at| {
            self.old_snapshot_warnings.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "shardstone",
                snapshot = at,
                warn_age_secs = self.warn_age_ns.map(|ns| Duration::from_nanos(ns).as_secs_f64()),
                "snapshot held longer than Options::snapshot_warn_age: old versions stay pinned"
            );
        })?;
        Some((
            oldest.at,
            Duration::from_nanos(now.saturating_sub(oldest.since_ns)),
        ))
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let (pinned_snapshots, oldest_pinned_snapshot) = self.pins.pinned();
        let oldest = self.notice_old_snapshots();
        StoreStats {
            pages: self.table.live_ids(),
            page_buffers: self.arena.pages_in_use(),
            mapped_bytes: self.arena.mapped_bytes(),
            pinned_versions: self.garbage.waiting() + self.reclaimer.lock().waiting(),
            pinned_snapshots,
            oldest_pinned_snapshot,
            oldest_snapshot: oldest.map(|(at, _)| at),
            oldest_snapshot_age: oldest.map(|(_, age)| age),
            snapshot_pinned_bytes: self.pinned_bytes.load(Ordering::Relaxed),
            versions_unlinked: self.unlinked.load(Ordering::Relaxed),
            old_snapshot_warnings: self.old_snapshot_warnings.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Page buffers and chains live in the arena's mappings, which unmap with it;
        // only the bookkeeping needs emptying.
        self.garbage.drain_all(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaves and their entry counts of the newest tree, walked from the root.
    fn leaf_counts(store: &Store) -> Vec<usize> {
        let at = store.clock.visible();
        let (mut stack, mut counts) = (vec![ROOT], Vec::new());
        while let Some(id) = stack.pop() {
            // SAFETY: no commit runs concurrently in this test; every version stays.
            let p = unsafe { store.page(store.version_at(id, at)) };
            match p.kind() {
                Kind::Inner => stack.extend((0..p.count()).map(|i| p.inner_child(i))),
                Kind::Leaf => counts.push(p.count()),
                Kind::Dead => panic!("the live tree names a dead {id}"),
            }
        }
        counts
    }

    /// Random-order batch loads must not leave slivers: the memory target depends
    /// on leaves being about two-thirds full.
    #[test]
    fn random_batch_load_fills_leaves() {
        let engine = crate::Engine::in_memory().unwrap();
        let n = 60_000u64;
        let mut order: Vec<u64> = (0..n).collect();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for batch in order.chunks(500) {
            engine
                .run("load", |tx| {
                    for &i in batch {
                        let mut key = *b"key:000000000000";
                        key[8..].copy_from_slice(&i.to_be_bytes());
                        tx.put(&key, &[7u8; 100])?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        let counts = leaf_counts(engine.store_for_tests());
        let total: usize = counts.iter().sum();
        assert_eq!(total, n as usize);
        // A full 4 KiB leaf holds 30 such entries.
        let mean = total as f64 / counts.len() as f64;
        assert!(mean >= 19.0, "mean {mean:.1} entries per leaf");
        let slivers = counts.iter().filter(|&&c| c < 4).count();
        assert!(
            slivers * 50 < counts.len(),
            "{slivers} of {} leaves hold < 4 entries",
            counts.len()
        );
    }

    /// Bulk build: every size from empty to a three-level tree of 1 KiB keys, read
    /// back in full, then changed through ordinary commits (splits and merges on a
    /// built tree).
    #[test]
    fn bulk_build_makes_a_tree_commits_can_change() {
        for (n, klen, vlen) in [
            (0usize, 8usize, 8usize),
            (1, 8, 8),
            (29, 16, 100),
            (5_000, 16, 100),
            (3_000, 1024, 10),
            (300, 16, 5_000),
        ] {
            let engine = crate::Engine::in_memory().unwrap();
            let store = engine.store_for_tests();
            let key = |i: usize| {
                let mut k = vec![b'k'; klen];
                k[klen - 8..].copy_from_slice(&(i as u64).to_be_bytes());
                k
            };
            let val = |i: usize| vec![(i % 251) as u8; vlen];
            let mut b = Builder::new(store, 7);
            for i in 0..n {
                b.push(&key(i), &val(i)).unwrap();
            }
            b.finish().unwrap();
            store.clock.resume(7);
            let counts = leaf_counts(store);
            assert_eq!(counts.iter().sum::<usize>(), n, "n={n} klen={klen}");
            let snap = engine.snapshot();
            let all: Vec<_> = snap.range(..).map(|r| r.unwrap()).collect();
            assert_eq!(all.len(), n);
            for (i, (k, v)) in all.iter().enumerate() {
                assert_eq!((k, &v[..]), (&key(i), &val(i)[..]), "entry {i} of {n}");
            }
            drop(snap);
            // Delete every other key, then grow again: merges and splits.
            engine
                .run("thin", |tx| {
                    for i in (0..n).step_by(2) {
                        tx.delete(&key(i))?;
                    }
                    Ok(())
                })
                .unwrap();
            engine
                .run("grow", |tx| {
                    for i in n..n + n / 2 {
                        tx.put(&key(i), &val(i))?;
                    }
                    Ok(())
                })
                .unwrap();
            let snap = engine.snapshot();
            let want: Vec<usize> = (0..n + n / 2).filter(|i| *i >= n || i % 2 == 1).collect();
            let got: Vec<_> = snap.range(..).map(|r| r.unwrap().0).collect();
            assert_eq!(got, want.iter().map(|&i| key(i)).collect::<Vec<_>>());
            for &i in want.iter().step_by(97) {
                assert_eq!(snap.get(&key(i)).unwrap().as_deref(), Some(&val(i)[..]));
            }
        }
    }
}
