//! Reclamation of old page versions: snapshot pins and garbage lists.
//!
//! A page version superseded by commit `c` can be reached only by snapshots older
//! than `c` (a snapshot at `s >= c` stops at the newer version). So the garbage of
//! commit `c` may be freed once the *horizon* — the oldest pinned snapshot, or the
//! watermark when none is pinned — is at least `c`. This is epoch-based reclamation
//! with commit ids as the epochs. Versions between two pinned snapshots that
//! neither can see are reclaimed earlier, by interval reclamation
//! (`super::interval`), which reads the pins this module registers.
//!
//! Pinning publishes `PENDING` before reading the watermark, and the horizon scan
//! gives up when it meets a `PENDING` slot; so a snapshot can never be pinned at a
//! commit older than a horizon that was already used to free memory.
//!
//! Pins live in slots, four per CPU at first; when every slot is taken, a pinner
//! adds a block of slots (each twice the last) with one compare-and-swap, so
//! pinning is lock-free however many threads pin at once (`Pins`).
//!
//! Two kinds of pin share the slots. A transaction's pin is *unguarded*: it may walk
//! version chains at any moment of its (short) life. A [`super::Snapshot`]'s pin is
//! *guarded*: it walks chains only inside a reading section ([`Pins::enter`]), which
//! counts itself in the slot's `reading` word; so a snapshot that is held but not
//! being read (a leaked one, say) keeps the versions it can see and nothing between
//! them.

use super::arena::PagePtr;
use super::clock::Clock;
use super::PageId;
use crate::sync::{
    fence, spin_hint, thread_shard, AtomicPtr, AtomicU64, Backoff, CachePadded, Mutex, Ordering,
};
use std::collections::VecDeque;

const FREE: u64 = u64::MAX;
const PENDING: u64 = u64::MAX - 1;
/// Set in a slot's value when the pin is a snapshot's (guarded). Commit ids stay
/// far below it.
const GUARDED: u64 = 1 << 62;
/// Set in a slot's `since` once the snapshot was reported as old.
const WARNED: u64 = 1 << 63;
/// The `reading` word: readers inside a section (low half), and how many times the
/// count fell back to zero (high half). A reader seen inside has left once the
/// count is zero or the high half moved on.
const READERS: u64 = (1 << 32) - 1;
const IDLE_EPOCH: u64 = 1 << 32;

/// One pin slot, alone on its cache line.
struct PinCell {
    /// `FREE`, `PENDING`, or the pinned commit id (with `GUARDED` for a snapshot).
    at: AtomicU64,
    /// Guarded pins: readers in a reading section; see `READERS`.
    reading: AtomicU64,
    /// Guarded pins: nanoseconds since the store's epoch when pinned, plus one
    /// (0: unknown), with `WARNED` once reported.
    since: AtomicU64,
}

impl PinCell {
    fn new() -> CachePadded<PinCell> {
        CachePadded::new(PinCell {
            at: AtomicU64::new(FREE),
            reading: AtomicU64::new(0),
            since: AtomicU64::new(0),
        })
    }
}

/// Blocks of slots beyond the first: extra block `k` (from 1) holds
/// `first << (k - 1)` slots, so the slot count doubles with each and a slot's
/// block follows from its index. With at least 64 first slots, 48 blocks are
/// more pins than memory could hold; loom models need no more than a few.
#[cfg(not(loom))]
const EXTRA_BLOCKS: usize = 48;
#[cfg(loom)]
const EXTRA_BLOCKS: usize = 3;

/// Slots of one extra block, allocated when every earlier slot was taken.
struct Block {
    cells: Box<[CachePadded<PinCell>]>,
}

/// Registered snapshot positions.
///
/// Every pin lives in a slot. The first `first` slots (four per CPU) are made
/// with the store; when all of them and every extra block so far are taken, a
/// pinner adds the next block (twice the size of the one before) with one
/// compare-and-swap. Blocks are freed only with the `Pins`, so a slot index
/// stays valid for the store's life and pinning never takes a lock, however
/// many threads pin at once.
///
/// The block pointers are read and written `SeqCst`, which keeps the pin
/// protocol's argument (see `horizon`) for slots of later blocks: a scan that
/// finds a block pointer null read it before the block was added, and the
/// pinner that uses the block read the pointer after that, so its fence comes
/// after the scan's and it reads the watermark after the scan did.
pub(crate) struct Pins {
    slots: Box<[CachePadded<PinCell>]>,
    extra: Box<[AtomicPtr<Block>]>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        for block in self.extra.iter() {
            let ptr = block.swap(std::ptr::null_mut(), Ordering::SeqCst);
            if !ptr.is_null() {
                // SAFETY: made by `Box::into_raw` in `add_block`, dropped once here.
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

/// Where a pin lives (its slot index), to release it.
#[derive(Debug)]
pub(crate) struct PinSlot(usize);

/// What one scan of the pins found: enough to decide which versions any current or
/// future snapshot can still read.
pub(crate) struct PinView {
    /// The watermark read before the scan: every pin the scan missed is at or above it.
    pub(crate) watermark: u64,
    /// Every pinned snapshot id below the watermark, ascending, duplicates kept.
    pub(crate) pinned: Vec<u64>,
}

impl PinView {
    /// The oldest snapshot that may still read page versions.
    pub(crate) fn horizon(&self) -> u64 {
        self.pinned.first().copied().unwrap_or(self.watermark)
    }

    /// Whether some pinned snapshot lies in `[from, to)`.
    pub(crate) fn any_in(&self, from: u64, to: u64) -> bool {
        let i = self.pinned.partition_point(|&s| s < from);
        self.pinned.get(i).is_some_and(|&s| s < to)
    }
}

/// A reader that may be walking version chains unlinked just before the check:
/// memory unlinked then is freed only once every blocker is `gone`.
#[derive(Debug)]
pub(crate) enum Blocker {
    /// A guarded slot whose `reading` word had readers inside.
    Reading { slot: usize, word: u64 },
    /// An unguarded pin (a transaction) below the unlinked versions.
    Pinned { slot: usize, value: u64 },
}

/// The oldest snapshot handle (guarded pin) and when it was pinned.
pub(crate) struct OldestSnapshot {
    pub(crate) at: u64,
    /// Nanoseconds since the store's epoch (0: unknown).
    pub(crate) since_ns: u64,
}

fn left(word_then: u64, word_now: u64) -> bool {
    word_now & READERS == 0 || word_now & !READERS != word_then & !READERS
}

fn enter_word(word: &AtomicU64) {
    word.fetch_add(1, Ordering::SeqCst);
    // Pairs with the fence the reclaimer puts between unlinking and reading this
    // word: either it sees this reader inside, or this reader sees the new links.
    fence(Ordering::SeqCst);
}

fn leave_word(word: &AtomicU64) {
    let mut now = word.load(Ordering::Relaxed);
    loop {
        let next = if now & READERS == 1 {
            (now & !READERS).wrapping_add(IDLE_EPOCH)
        } else {
            now - 1
        };
        // Release: the reclaimer that sees this reader gone may free what it read.
        match word.compare_exchange_weak(now, next, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => now = seen,
        }
    }
}

/// A reading section of a guarded pin; leaves it when dropped.
pub(crate) struct Reading<'p> {
    word: &'p AtomicU64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        leave_word(self.word);
    }
}

impl Pins {
    /// Pins with `slots` first slots (more are added as needed).
    pub(crate) fn new(slots: usize) -> Self {
        Pins {
            slots: (0..slots.max(1)).map(|_| PinCell::new()).collect(),
            extra: (0..EXTRA_BLOCKS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }

    /// The first slot index of extra block `k` (from 1), and its length.
    fn block_span(&self, k: usize) -> (usize, usize) {
        let first = self.slots.len();
        (first << (k - 1), first << (k - 1))
    }

    /// Every block that exists, in slot order, with its first slot index.
    /// Blocks are added in order, so the first missing one ends the list.
    fn blocks(&self) -> impl Iterator<Item = (usize, &[CachePadded<PinCell>])> {
        let extra = (1..=self.extra.len()).map_while(move |k| {
            let ptr = self.extra[k - 1].load(Ordering::SeqCst);
            // SAFETY: a non-null block lives until `Pins` is dropped.
            (!ptr.is_null()).then(|| (self.block_span(k).0, unsafe { &*(*ptr).cells }))
        });
        std::iter::once((0, &*self.slots)).chain(extra)
    }

    /// Every slot, with its index.
    fn cells(&self) -> impl Iterator<Item = (usize, &PinCell)> {
        self.blocks()
            .flat_map(|(base, cells)| cells.iter().enumerate().map(move |(i, c)| (base + i, &**c)))
    }

    /// The slot of index `idx`, which a pin was taken in (so its block exists).
    fn cell(&self, idx: usize) -> &PinCell {
        let first = self.slots.len();
        if idx < first {
            return &self.slots[idx];
        }
        // Extra block k covers [first << (k-1), first << k): k is the bit length of idx / first.
        let k = (usize::BITS - (idx / first).leading_zeros()) as usize;
        let (base, _) = self.block_span(k);
        let ptr = self.extra[k - 1].load(Ordering::SeqCst);
        debug_assert!(!ptr.is_null(), "slot {idx} was handed out from block {k}");
        // SAFETY: a slot is handed out only from a block that exists, and blocks
        // live until `Pins` is dropped.
        unsafe { &(*ptr).cells[idx - base] }
    }

    /// Extra block `k`, added now unless another pinner did it first.
    fn add_block(&self, k: usize) -> *mut Block {
        let (_, len) = self.block_span(k);
        let fresh = Box::into_raw(Box::new(Block {
            cells: (0..len).map(|_| PinCell::new()).collect(),
        }));
        match self.extra[k - 1].compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => fresh,
            Err(other) => {
                // SAFETY: `fresh` was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                other
            }
        }
    }

    /// Takes `cell` if it is free: publishes `PENDING`, fences, reads the
    /// watermark and pins it. Returns the pinned id.
    fn try_take(cell: &PinCell, clock: &Clock, since: Option<u64>) -> Option<u64> {
        if cell.at.load(Ordering::Relaxed) != FREE
            || cell
                .at
                .compare_exchange(FREE, PENDING, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        // Written before the pin is published below, so a reader of `at`
        // finds the matching `since`.
        if let Some(t) = since {
            cell.since
                .store(t.wrapping_add(1) & !WARNED, Ordering::Relaxed);
        }
        // Orders the PENDING store before the watermark load against the
        // reclaimer's fence (see `horizon`).
        fence(Ordering::SeqCst);
        let at = clock.visible();
        let flag = if since.is_some() { GUARDED } else { 0 };
        cell.at.store(at | flag, Ordering::SeqCst);
        Some(at)
    }

    /// Pins a snapshot at the current watermark and returns (slot, snapshot id).
    /// `since` is given for a snapshot handle (a guarded pin): when it was taken,
    /// in nanoseconds since the store's epoch.
    pub(crate) fn pin(&self, clock: &Clock, since: Option<u64>) -> (PinSlot, u64) {
        let n = self.slots.len();
        let start = thread_shard() % n;
        for i in 0..n {
            let idx = (start + i) % n;
            if let Some(at) = Self::try_take(&self.slots[idx], clock, since) {
                return (PinSlot(idx), at);
            }
        }
        // Every first slot is taken: the extra blocks, adding one when all are full.
        let mut backoff = Backoff::new();
        loop {
            for k in 1..=self.extra.len() {
                let mut ptr = self.extra[k - 1].load(Ordering::SeqCst);
                if ptr.is_null() {
                    ptr = self.add_block(k);
                }
                let (base, _) = self.block_span(k);
                // SAFETY: a non-null block lives until `Pins` is dropped.
                let cells = unsafe { &*(*ptr).cells };
                for (i, cell) in cells.iter().enumerate() {
                    if let Some(at) = Self::try_take(cell, clock, since) {
                        return (PinSlot(base + i), at);
                    }
                }
            }
            // Every block of every size is full (unreachable outside tiny loom
            // models): wait for a pin to be released.
            backoff.snooze();
        }
    }

    pub(crate) fn unpin(&self, slot: &PinSlot) {
        self.cell(slot.0).at.store(FREE, Ordering::SeqCst);
    }

    /// Enters a reading section of the guarded pin `slot`: until the returned guard
    /// drops, versions unlinked by interval reclamation are not freed under it.
    pub(crate) fn enter(&self, slot: &PinSlot) -> Reading<'_> {
        let word = &self.cell(slot.0).reading;
        enter_word(word);
        Reading { word }
    }

    /// Slots in use (first slots plus every extra block added so far).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.blocks().map(|(_, cells)| cells.len()).sum()
    }

    /// The value of a slot once no pin is half-taken in it, or `None` if one stays
    /// half-taken (it resolves within a few instructions; wait briefly).
    fn settled(cell: &PinCell) -> Option<u64> {
        let mut value = cell.at.load(Ordering::SeqCst);
        let mut tries = 0;
        while value == PENDING && tries < 64 {
            spin_hint();
            value = cell.at.load(Ordering::SeqCst);
            tries += 1;
        }
        (value != PENDING).then_some(value)
    }

    /// The oldest snapshot that may still read page versions, or `None` when a pin
    /// is being taken right now and the horizon cannot be known this instant.
    pub(crate) fn horizon(&self, clock: &Clock) -> Option<u64> {
        let mut min = clock.visible();
        // Pairs with the fence in `pin`: a pin whose PENDING this scan misses reads
        // the watermark after `min` was read, so it pins at `min` or later.
        fence(Ordering::SeqCst);
        // Deliberately wrong under `shardstone_broken = "pins"`, for the loom model to
        // catch: pinned snapshots are ignored.
        #[cfg(shardstone_broken = "pins")]
        return Some(min);
        #[cfg_attr(shardstone_broken = "pins", allow(unreachable_code))]
        for (_, cell) in self.cells() {
            // Any value seen once settled is safe to use: the pin it belongs to either
            // is counted here or read the watermark after `min` was read.
            match Self::settled(cell)? {
                FREE => {}
                at => min = min.min(at & !GUARDED),
            }
        }
        Some(min)
    }

    /// Every pin, as the horizon scan sees them (same protocol as `horizon`), or
    /// `None` when a pin is being taken right now.
    pub(crate) fn scan(&self, clock: &Clock) -> Option<PinView> {
        let watermark = clock.visible();
        // As in `horizon`.
        fence(Ordering::SeqCst);
        let mut pinned = Vec::new();
        // Deliberately wrong under `shardstone_broken = "pins"`: pins are ignored.
        #[cfg(not(shardstone_broken = "pins"))]
        for (_, cell) in self.cells() {
            match Self::settled(cell)? {
                FREE => {}
                at if at & !GUARDED < watermark => pinned.push(at & !GUARDED),
                _ => {}
            }
        }
        pinned.sort_unstable();
        Some(PinView { watermark, pinned })
    }

    /// The readers that may still be walking chains through versions stamped below
    /// `below` that were unlinked before this call (which the caller fences first).
    pub(crate) fn blockers(&self, below: u64) -> Vec<Blocker> {
        let mut out = Vec::new();
        for (slot, cell) in self.cells() {
            let value = cell.at.load(Ordering::SeqCst);
            if value >= PENDING {
                // Free, or a pin being taken now: it reads the watermark after the
                // unlinking and never walks below the versions it sees.
                continue;
            }
            if value & !GUARDED >= below {
                // Stops above every unlinked version.
                continue;
            }
            if value & GUARDED == 0 {
                out.push(Blocker::Pinned { slot, value });
                continue;
            }
            let word = cell.reading.load(Ordering::Acquire);
            if word & READERS != 0 {
                out.push(Blocker::Reading { slot, word });
            }
        }
        out
    }

    /// Whether the reader `b` stands for has left every chain it was walking.
    pub(crate) fn gone(&self, b: &Blocker) -> bool {
        match *b {
            Blocker::Reading { slot, word } => {
                left(word, self.cell(slot).reading.load(Ordering::Acquire))
            }
            // A new pin in the slot is at or above the watermark of the unlinking,
            // so a different value means the blocking pin was released.
            Blocker::Pinned { slot, value } => self.cell(slot).at.load(Ordering::SeqCst) != value,
        }
    }

    /// (number of pinned snapshots, oldest pinned snapshot id).
    pub(crate) fn pinned(&self) -> (usize, Option<u64>) {
        let mut count = 0;
        let mut oldest: Option<u64> = None;
        for (_, cell) in self.cells() {
            let at = cell.at.load(Ordering::Relaxed);
            if at < PENDING {
                let at = at & !GUARDED;
                count += 1;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        (count, oldest)
    }

    /// The oldest snapshot handle; and, through `warn`, every snapshot handle
    /// pinned before `warn_before` (nanoseconds since the store's epoch) that was
    /// not reported yet, each once.
    pub(crate) fn snapshots(
        &self,
        warn_before: Option<u64>,
        mut warn: impl FnMut(u64),
    ) -> Option<OldestSnapshot> {
        let mut oldest: Option<OldestSnapshot> = None;
        let mut consider = |at: u64, since: u64| {
            if oldest.as_ref().is_none_or(|o| at < o.at) {
                oldest = Some(OldestSnapshot {
                    at,
                    since_ns: (since & !WARNED).saturating_sub(1),
                });
            }
        };
        let old = |since: u64| {
            let t = since & !WARNED;
            since & WARNED == 0 && t != 0 && warn_before.is_some_and(|w| t - 1 < w)
        };
        for (_, cell) in self.cells() {
            let at = cell.at.load(Ordering::SeqCst);
            if at >= PENDING || at & GUARDED == 0 {
                continue;
            }
            let since = cell.since.load(Ordering::Relaxed);
            // The slot may have been repinned since `at` was read: then `since`
            // belongs to a newer snapshot, which only makes the report younger.
            consider(at & !GUARDED, since);
            if old(since)
                && cell
                    .since
                    .compare_exchange(since, since | WARNED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                warn(at & !GUARDED);
            }
        }
        oldest
    }
}

/// Memory a commit made unreachable for snapshots at or after its id.
pub(crate) enum Garbage {
    /// A page version superseded by a newer one, and its page.
    Version(PageId, PagePtr),
    /// An overflow chain whose value was overwritten or deleted.
    Overflow(usize),
    /// A freed page: its dead marker version, and the id to reuse.
    Page(PageId, PagePtr),
}

// SAFETY: garbage is plain addresses of memory owned by the store's arena.
unsafe impl Send for Garbage {}

/// Garbage of one shard, tagged with the commit that made it.
pub(crate) type GarbageList = VecDeque<(u64, Garbage)>;

/// Garbage waiting for the horizon to pass, sharded by committing thread so that
/// commits do not share a lock to hand it over.
pub(crate) struct GarbageLists {
    shards: Box<[CachePadded<Mutex<GarbageList>>]>,
}

impl GarbageLists {
    /// Lists with `shards` shards: one per CPU of the engine's topology
    /// (`sync::shards_for`), indexed by `sync::thread_shard`; one under loom.
    pub(crate) fn new(shards: usize) -> Self {
        let shards = if cfg!(loom) { 1 } else { shards.max(1) };
        GarbageLists {
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(VecDeque::new())))
                .collect(),
        }
    }

    /// Hands over the garbage of commit `stamp`.
    pub(crate) fn defer(&self, stamp: u64, items: impl IntoIterator<Item = Garbage>) {
        let mut shard = self.shards[thread_shard() % self.shards.len()].lock();
        shard.extend(items.into_iter().map(|g| (stamp, g)));
    }

    /// Frees, through `free`, every item whose stamp is at or below `horizon`.
    /// Shards busy with another thread are skipped this time.
    /// With `only_own`, just the calling thread's shard: its garbage was made on
    /// this core, so freeing it here keeps page memory core-local.
    pub(crate) fn collect(
        &self,
        horizon: u64,
        only_own: bool,
        mut free: impl FnMut(Garbage),
    ) -> u64 {
        let mut freed = 0;
        let mut ready = Vec::new();
        let (skip, take) = if only_own {
            (thread_shard() % self.shards.len(), 1)
        } else {
            (0, self.shards.len())
        };
        for shard in self.shards.iter().skip(skip).take(take) {
            let Some(mut list) = shard.try_lock() else {
                continue;
            };
            // Lists are nearly sorted (one thread's commits ascend); stop at the first
            // item still needed, a later call gets the rest.
            while list.front().is_some_and(|(stamp, _)| *stamp <= horizon) {
                ready.push(list.pop_front().expect("front exists").1);
            }
            drop(list);
            // Free outside the lock: a committer handing over garbage must not wait
            // behind a large overflow chain being freed.
            freed += ready.len() as u64;
            ready.drain(..).for_each(&mut free);
        }
        freed
    }

    /// Runs `f` over each shard's list in turn, under that shard's lock; `f` may
    /// remove items. Only one caller at a time (the reclamation lock).
    pub(crate) fn edit_each(&self, mut f: impl FnMut(&mut GarbageList)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock());
        }
    }

    /// Items waiting for the horizon: versions pinned by snapshots, mostly.
    pub(crate) fn waiting(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().len() as u64).sum()
    }

    /// Everything left, regardless of stamps (the engine is being dropped).
    pub(crate) fn drain_all(&self, mut free: impl FnMut(Garbage)) {
        for shard in self.shards.iter() {
            for (_, g) in shard.lock().drain(..) {
                free(g);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn advance(clock: &Clock) -> u64 {
        let id = clock.assign();
        clock.publish(id, clock.visible());
        id
    }

    /// Pins beyond the first slots go to added blocks; the horizon, the scan and
    /// the counts see them; unpinning frees them for reuse without new blocks.
    #[test]
    fn pins_beyond_the_first_slots_are_counted_and_released() {
        let clock = Clock::new();
        let pins = Pins::new(2);
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(pins.pin(&clock, None).0);
            advance(&clock);
        }
        // 2 first slots, then blocks of 2, 4, 8, 16: 32 slots hold 20 pins.
        assert_eq!(pins.capacity(), 32);
        assert_eq!(pins.pinned(), (20, Some(0)));
        assert_eq!(pins.horizon(&clock), Some(0));
        let view = pins.scan(&clock).expect("no pin half-taken");
        assert_eq!(view.pinned, (0..20).collect::<Vec<u64>>());
        // The oldest pin (in a first slot) leaves: the horizon moves to the next,
        // which lives in an added block.
        pins.unpin(&held.remove(0));
        assert_eq!(pins.horizon(&clock), Some(1));
        assert_eq!(pins.pinned(), (19, Some(1)));
        // A snapshot pin in an added block has a reading word of its own.
        let (snap, at) = pins.pin(&clock, Some(5));
        assert_eq!(at, 20);
        {
            let _reading = pins.enter(&snap);
            // Not a blocker for versions at or below its id...
            assert!(pins
                .blockers(20)
                .iter()
                .all(|b| matches!(b, Blocker::Pinned { .. })));
            // ...but one for versions above it, until the section ends.
            let blockers = pins.blockers(21);
            let reading: Vec<&Blocker> = blockers
                .iter()
                .filter(|b| matches!(b, Blocker::Reading { .. }))
                .collect();
            assert_eq!(reading.len(), 1);
            assert!(!pins.gone(reading[0]));
        }
        pins.unpin(&snap);
        for slot in held.drain(..) {
            pins.unpin(&slot);
        }
        assert_eq!(pins.pinned(), (0, None));
        assert_eq!(pins.horizon(&clock), Some(clock.visible()));
        // Slots are reused: pinning 20 again adds no block.
        let again: Vec<PinSlot> = (0..20).map(|_| pins.pin(&clock, None).0).collect();
        assert_eq!(pins.capacity(), 32);
        again.iter().for_each(|s| pins.unpin(s));
    }

    /// Many threads, far beyond the first slots, pin and unpin at once: every
    /// pin is seen while held, none is lost or doubled, and all are gone after.
    /// In lockstep rounds (every thread holds two pins at the barrier) and then
    /// free-running ones.
    #[test]
    fn many_threads_beyond_the_slots_pin_and_unpin() {
        let clock = Clock::new();
        let pins = Pins::new(2);
        let threads = 16;
        let barrier = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (pins, clock, barrier) = (&pins, &clock, &barrier);
                s.spawn(move || {
                    for r in 0..20u64 {
                        let (a, at) = pins.pin(clock, None);
                        let (b, _) = pins.pin(clock, Some(r));
                        if t == 0 {
                            advance(clock);
                        }
                        if barrier.wait().is_leader() {
                            assert_eq!(pins.pinned().0, 2 * threads, "round {r}");
                        }
                        // While held, the horizon never passes this pin.
                        let h = pins.horizon(clock).expect("no pin half-taken now");
                        assert!(h <= at, "thread {t}: horizon {h} passed pin {at}");
                        barrier.wait();
                        pins.unpin(&b);
                        pins.unpin(&a);
                        barrier.wait();
                    }
                    for _ in 0..200 {
                        let (a, at) = pins.pin(clock, None);
                        if let Some(h) = pins.horizon(clock) {
                            assert!(h <= at, "thread {t}: horizon {h} passed pin {at}");
                        }
                        pins.unpin(&a);
                    }
                });
            }
        });
        assert_eq!(pins.pinned(), (0, None));
        // 32 pins held at once fill 2+2+4+8+16 = 32 slots; free-running rounds
        // hold at most 16, though a pinner that raced past slots freed behind
        // it may add one more block.
        assert!(
            (32..=64).contains(&pins.capacity()),
            "{} slots",
            pins.capacity()
        );
    }

    #[test]
    fn garbage_lists_have_one_shard_per_cpu() {
        for cpus in [1, 2, 48, 256] {
            let lists = GarbageLists::new(crate::sync::shards_for(cpus));
            assert_eq!(lists.shards.len(), crate::sync::shards_for(cpus));
        }
        assert_eq!(
            GarbageLists::new(crate::sync::shards_for(256)).shards.len(),
            256
        );
    }
}
