//! Reclamation of old page versions: snapshot pins and garbage lists.
//!
//! A page version superseded by commit `c` can be reached only by snapshots older
//! than `c` (a snapshot at `s >= c` stops at the newer version). So the garbage of
//! commit `c` may be freed once the *horizon* — the oldest pinned snapshot, or the
//! watermark when none is pinned — is at least `c`. This is epoch-based reclamation
//! with commit ids as the epochs.
//!
//! Pinning publishes `PENDING` before reading the watermark, and the horizon scan
//! gives up when it meets a `PENDING` slot; so a snapshot can never be pinned at a
//! commit older than a horizon that was already used to free memory.

use super::arena::PagePtr;
use super::clock::Clock;
use super::PageId;
use crate::sync::{fence, spin_hint, thread_shard, AtomicU64, CachePadded, Mutex, Ordering};
use std::collections::{BTreeMap, VecDeque};

const FREE: u64 = u64::MAX;
const PENDING: u64 = u64::MAX - 1;
#[cfg(not(loom))]
const GARBAGE_SHARDS: usize = 32;
#[cfg(loom)]
const GARBAGE_SHARDS: usize = 1;

/// Registered snapshot positions.
pub(crate) struct Pins {
    slots: Box<[CachePadded<AtomicU64>]>,
    /// Pins beyond the slot count: rare, kept correct by the mutex.
    overflow: Mutex<BTreeMap<u64, usize>>,
}

/// Where a pin lives, to release it.
#[derive(Debug)]
pub(crate) enum PinSlot {
    Slot(usize),
    Overflow(u64),
}

impl Pins {
    pub(crate) fn new(slots: usize) -> Self {
        Pins {
            slots: (0..slots.max(1))
                .map(|_| CachePadded::new(AtomicU64::new(FREE)))
                .collect(),
            overflow: Mutex::new(BTreeMap::new()),
        }
    }

    /// Pins a snapshot at the current watermark and returns (slot, snapshot id).
    pub(crate) fn pin(&self, clock: &Clock) -> (PinSlot, u64) {
        let n = self.slots.len();
        let start = thread_shard() % n;
        for i in 0..n {
            let idx = (start + i) % n;
            let slot = &self.slots[idx];
            if slot.load(Ordering::Relaxed) == FREE
                && slot
                    .compare_exchange(FREE, PENDING, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                // Orders the PENDING store before the watermark load against the
                // reclaimer's fence (see `horizon`).
                fence(Ordering::SeqCst);
                let at = clock.visible();
                slot.store(at, Ordering::SeqCst);
                return (PinSlot::Slot(idx), at);
            }
        }
        let mut overflow = self.overflow.lock();
        let at = clock.visible();
        *overflow.entry(at).or_insert(0) += 1;
        (PinSlot::Overflow(at), at)
    }

    pub(crate) fn unpin(&self, slot: &PinSlot) {
        match *slot {
            PinSlot::Slot(idx) => self.slots[idx].store(FREE, Ordering::SeqCst),
            PinSlot::Overflow(at) => {
                let mut overflow = self.overflow.lock();
                if let Some(count) = overflow.get_mut(&at) {
                    *count -= 1;
                    if *count == 0 {
                        overflow.remove(&at);
                    }
                }
            }
        }
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
        for slot in self.slots.iter() {
            let mut value = slot.load(Ordering::SeqCst);
            // A pin in progress resolves within a few instructions; wait briefly. Any
            // value seen afterwards is safe to use: the pin it belongs to either is
            // counted here or read the watermark after `min` was read.
            let mut tries = 0;
            while value == PENDING && tries < 64 {
                spin_hint();
                value = slot.load(Ordering::SeqCst);
                tries += 1;
            }
            match value {
                FREE => {}
                PENDING => return None,
                at => min = min.min(at),
            }
        }
        if let Some((&at, _)) = self.overflow.lock().iter().next() {
            min = min.min(at);
        }
        Some(min)
    }

    /// (number of pinned snapshots, oldest pinned snapshot id).
    pub(crate) fn pinned(&self) -> (usize, Option<u64>) {
        let mut count = 0;
        let mut oldest: Option<u64> = None;
        for slot in self.slots.iter() {
            let at = slot.load(Ordering::Relaxed);
            if at < PENDING {
                count += 1;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        let overflow = self.overflow.lock();
        for (&at, &n) in overflow.iter() {
            count += n;
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        (count, oldest)
    }
}

/// Memory a commit made unreachable for snapshots at or after its id.
pub(crate) enum Garbage {
    /// A page version superseded by a newer one.
    Version(PagePtr),
    /// An overflow chain whose value was overwritten or deleted.
    Overflow(usize),
    /// A freed page: its dead marker version, and the id to reuse.
    Page(PageId, PagePtr),
}

// SAFETY: garbage is plain addresses of memory owned by the store's arena.
unsafe impl Send for Garbage {}

/// Garbage waiting for the horizon to pass, sharded by committing thread so that
/// commits do not share a lock to hand it over.
/// Garbage of one shard, tagged with the commit that made it.
type GarbageList = VecDeque<(u64, Garbage)>;

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
