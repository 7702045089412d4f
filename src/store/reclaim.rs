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
//! Two kinds of pin share the slots. A transaction's pin is *unguarded*: it may walk
//! version chains at any moment of its (short) life. A [`super::Snapshot`]'s pin is
//! *guarded*: it walks chains only inside a reading section ([`Pins::enter`]), which
//! counts itself in the slot's `reading` word; so a snapshot that is held but not
//! being read (a leaked one, say) keeps the versions it can see and nothing between
//! them.

use super::arena::PagePtr;
use super::clock::Clock;
use super::PageId;
use crate::sync::{fence, spin_hint, thread_shard, AtomicU64, CachePadded, Mutex, Ordering};
use std::collections::{BTreeMap, VecDeque};

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
#[cfg(not(loom))]
const GARBAGE_SHARDS: usize = 32;
#[cfg(loom)]
const GARBAGE_SHARDS: usize = 1;

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

/// Pins beyond the slot count at one commit id: rare, kept under a mutex.
#[derive(Default)]
struct OverflowPins {
    /// Transactions (unguarded pins).
    unguarded: usize,
    /// Snapshots: when each was pinned, as `PinCell::since`.
    snapshots: Vec<u64>,
}

/// Registered snapshot positions.
pub(crate) struct Pins {
    slots: Box<[CachePadded<PinCell>]>,
    /// Pins beyond the slot count: rare, kept correct by the mutex.
    overflow: Mutex<BTreeMap<u64, OverflowPins>>,
    /// The `reading` word shared by every guarded overflow pin.
    overflow_reading: CachePadded<AtomicU64>,
}

/// Where a pin lives, to release it.
#[derive(Debug)]
pub(crate) enum PinSlot {
    Slot(usize),
    /// `since` is the snapshot's pin time for a guarded pin, `None` for a transaction.
    Overflow {
        at: u64,
        since: Option<u64>,
    },
}

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
    /// The guarded overflow pins had readers inside.
    OverflowReading { word: u64 },
    /// An unguarded pin (a transaction) below the unlinked versions.
    Pinned { slot: usize, value: u64 },
    /// Unguarded overflow pins below this id.
    OverflowPinnedBelow(u64),
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
    pub(crate) fn new(slots: usize) -> Self {
        Pins {
            slots: (0..slots.max(1))
                .map(|_| {
                    CachePadded::new(PinCell {
                        at: AtomicU64::new(FREE),
                        reading: AtomicU64::new(0),
                        since: AtomicU64::new(0),
                    })
                })
                .collect(),
            overflow: Mutex::new(BTreeMap::new()),
            overflow_reading: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Pins a snapshot at the current watermark and returns (slot, snapshot id).
    /// `since` is given for a snapshot handle (a guarded pin): when it was taken,
    /// in nanoseconds since the store's epoch.
    pub(crate) fn pin(&self, clock: &Clock, since: Option<u64>) -> (PinSlot, u64) {
        let n = self.slots.len();
        let start = thread_shard() % n;
        for i in 0..n {
            let idx = (start + i) % n;
            let cell = &self.slots[idx];
            if cell.at.load(Ordering::Relaxed) == FREE
                && cell
                    .at
                    .compare_exchange(FREE, PENDING, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
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
                return (PinSlot::Slot(idx), at);
            }
        }
        let mut overflow = self.overflow.lock();
        let at = clock.visible();
        let entry = overflow.entry(at).or_default();
        match since {
            Some(t) => entry.snapshots.push(t.wrapping_add(1) & !WARNED),
            None => entry.unguarded += 1,
        }
        (PinSlot::Overflow { at, since }, at)
    }

    pub(crate) fn unpin(&self, slot: &PinSlot) {
        match *slot {
            PinSlot::Slot(idx) => self.slots[idx].at.store(FREE, Ordering::SeqCst),
            PinSlot::Overflow { at, since } => {
                let mut overflow = self.overflow.lock();
                if let Some(entry) = overflow.get_mut(&at) {
                    match since {
                        Some(t) => {
                            let t = t.wrapping_add(1) & !WARNED;
                            if let Some(i) = entry.snapshots.iter().position(|s| s & !WARNED == t) {
                                entry.snapshots.swap_remove(i);
                            }
                        }
                        None => entry.unguarded = entry.unguarded.saturating_sub(1),
                    }
                    if entry.unguarded == 0 && entry.snapshots.is_empty() {
                        overflow.remove(&at);
                    }
                }
            }
        }
    }

    /// Enters a reading section of the guarded pin `slot`: until the returned guard
    /// drops, versions unlinked by interval reclamation are not freed under it.
    pub(crate) fn enter(&self, slot: &PinSlot) -> Reading<'_> {
        let word = match *slot {
            PinSlot::Slot(idx) => &self.slots[idx].reading,
            PinSlot::Overflow { .. } => &*self.overflow_reading,
        };
        enter_word(word);
        Reading { word }
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
        for cell in self.slots.iter() {
            // Any value seen once settled is safe to use: the pin it belongs to either
            // is counted here or read the watermark after `min` was read.
            match Self::settled(cell)? {
                FREE => {}
                at => min = min.min(at & !GUARDED),
            }
        }
        if let Some((&at, _)) = self.overflow.lock().iter().next() {
            min = min.min(at);
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
        {
            for cell in self.slots.iter() {
                match Self::settled(cell)? {
                    FREE => {}
                    at if at & !GUARDED < watermark => pinned.push(at & !GUARDED),
                    _ => {}
                }
            }
            for (&at, pins) in self.overflow.lock().iter() {
                if at < watermark {
                    let n = pins.unguarded + pins.snapshots.len();
                    pinned.extend(std::iter::repeat_n(at, n));
                }
            }
        }
        pinned.sort_unstable();
        Some(PinView { watermark, pinned })
    }

    /// The readers that may still be walking chains through versions stamped below
    /// `below` that were unlinked before this call (which the caller fences first).
    pub(crate) fn blockers(&self, below: u64) -> Vec<Blocker> {
        let mut out = Vec::new();
        for (slot, cell) in self.slots.iter().enumerate() {
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
        let overflow = self.overflow.lock();
        if overflow.range(..below).any(|(_, pins)| pins.unguarded > 0) {
            out.push(Blocker::OverflowPinnedBelow(below));
        }
        if overflow.range(..below).next().is_some() {
            let word = self.overflow_reading.load(Ordering::Acquire);
            if word & READERS != 0 {
                out.push(Blocker::OverflowReading { word });
            }
        }
        out
    }

    /// Whether the reader `b` stands for has left every chain it was walking.
    pub(crate) fn gone(&self, b: &Blocker) -> bool {
        match *b {
            Blocker::Reading { slot, word } => {
                left(word, self.slots[slot].reading.load(Ordering::Acquire))
            }
            Blocker::OverflowReading { word } => {
                left(word, self.overflow_reading.load(Ordering::Acquire))
            }
            // A new pin in the slot is at or above the watermark of the unlinking,
            // so a different value means the blocking pin was released.
            Blocker::Pinned { slot, value } => self.slots[slot].at.load(Ordering::SeqCst) != value,
            Blocker::OverflowPinnedBelow(below) => !self
                .overflow
                .lock()
                .range(..below)
                .any(|(_, pins)| pins.unguarded > 0),
        }
    }

    /// (number of pinned snapshots, oldest pinned snapshot id).
    pub(crate) fn pinned(&self) -> (usize, Option<u64>) {
        let mut count = 0;
        let mut oldest: Option<u64> = None;
        for cell in self.slots.iter() {
            let at = cell.at.load(Ordering::Relaxed);
            if at < PENDING {
                let at = at & !GUARDED;
                count += 1;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        let overflow = self.overflow.lock();
        for (&at, pins) in overflow.iter() {
            count += pins.unguarded + pins.snapshots.len();
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
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
        for cell in self.slots.iter() {
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
        let mut overflow = self.overflow.lock();
        for (&at, pins) in overflow.iter_mut() {
            for since in pins.snapshots.iter_mut() {
                consider(at, *since);
                if old(*since) {
                    *since |= WARNED;
                    warn(at);
                }
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
    pub(crate) fn new() -> Self {
        GarbageLists {
            shards: (0..GARBAGE_SHARDS)
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
