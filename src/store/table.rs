//! The page table: page id → the newest version of that page, and its commit lock.
//!
//! Inner nodes refer to children by page id, so a commit that rewrites a leaf
//! swings one pointer here instead of copying the path to the root; that is what
//! lets commits on disjoint leaves install in parallel.
//!
//! Invariant: a slot's `head` chain is ordered by stamp, newest first, because a new
//! version is only linked in while holding the slot's exclusive lock (leaves) or
//! the structure lock (inner nodes), and commit ids are taken while holding them.

use super::arena::PagePtr;
use super::PageId;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Backoff, Mutex, Ordering};

#[cfg(not(loom))]
const SEGMENT: usize = 1024;
#[cfg(not(loom))]
const SEGMENTS: usize = 1 << 16;
#[cfg(loom)]
const SEGMENT: usize = 8;
#[cfg(loom)]
const SEGMENTS: usize = 8;

const EXCLUSIVE: u32 = 1 << 31;
/// A writer is waiting: new shared lockers wait too (writer preference).
const WRITER_WAITING: u32 = 1 << 30;

/// One page's newest version and its commit lock (a reader-writer spin lock held
/// only for the few microseconds of a commit's validate-and-install).
pub(crate) struct PageSlot {
    lock: AtomicU32,
    head: AtomicPtr<u8>,
}

impl PageSlot {
    fn new() -> Self {
        PageSlot {
            lock: AtomicU32::new(0),
            head: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The newest published version.
    pub(crate) fn head(&self) -> PagePtr {
        self.head.load(Ordering::Acquire)
    }

    /// Publishes `version` as the newest. Caller holds the exclusive lock or the
    /// structure lock and has already linked `version` to the previous head.
    pub(crate) fn publish(&self, version: PagePtr) {
        self.head.store(version, Ordering::Release);
    }

    /// Takes the lock exclusively. A writer that has to wait raises `WRITER_WAITING`,
    /// which holds off new shared lockers until a writer gets in: readers of a
    /// hot page cannot starve the commits that write it.
    pub(crate) fn lock_exclusive(&self) {
        let mut backoff = Backoff::new();
        loop {
            let v = self.lock.load(Ordering::Relaxed);
            if v & !WRITER_WAITING == 0
                && self
                    .lock
                    .compare_exchange_weak(v, EXCLUSIVE, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            if v & WRITER_WAITING == 0 {
                self.lock.fetch_or(WRITER_WAITING, Ordering::SeqCst);
            }
            backoff.snooze();
        }
    }

    pub(crate) fn try_lock_exclusive(&self) -> bool {
        let v = self.lock.load(Ordering::Relaxed);
        v & !WRITER_WAITING == 0
            && self
                .lock
                .compare_exchange(v, EXCLUSIVE, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn unlock_exclusive(&self) {
        debug_assert_eq!(
            self.lock.load(Ordering::Relaxed) & !WRITER_WAITING,
            EXCLUSIVE
        );
        // A writer waiting meanwhile may have raised its flag: keep it.
        self.lock.fetch_and(!EXCLUSIVE, Ordering::SeqCst);
    }

    pub(crate) fn lock_shared(&self) {
        let mut backoff = Backoff::new();
        loop {
            let v = self.lock.load(Ordering::Relaxed);
            if v & (EXCLUSIVE | WRITER_WAITING) == 0
                && self
                    .lock
                    .compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            backoff.snooze();
        }
    }

    pub(crate) fn unlock_shared(&self) {
        let prev = self.lock.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(
            prev & !(EXCLUSIVE | WRITER_WAITING) > 0,
            "shared unlock without a shared lock"
        );
    }
}

struct Segment {
    slots: Box<[PageSlot]>,
}

pub(crate) struct PageTable {
    dir: Box<[AtomicPtr<Segment>]>,
    next_id: AtomicU64,
    free_ids: Mutex<Vec<u64>>,
}

impl PageTable {
    pub(crate) fn new() -> Self {
        PageTable {
            dir: (0..SEGMENTS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            next_id: AtomicU64::new(0),
            free_ids: Mutex::new(Vec::new()),
        }
    }

    /// A page id with an empty slot (no versions). Ids freed by `release` are reused.
    pub(crate) fn allocate(&self) -> Option<PageId> {
        if let Some(id) = self.free_ids.lock().pop() {
            return Some(PageId(id));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seg = (id as usize) / SEGMENT;
        if seg >= SEGMENTS {
            self.next_id.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self.dir[seg].load(Ordering::Acquire).is_null() {
            let fresh = Box::into_raw(Box::new(Segment {
                slots: (0..SEGMENT).map(|_| PageSlot::new()).collect(),
            }));
            if self.dir[seg]
                .compare_exchange(
                    std::ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                // SAFETY: `fresh` was never published; we still own it.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
        Some(PageId(id))
    }

    /// Makes `id` available again. Caller guarantees no snapshot or commit can reach it.
    pub(crate) fn release(&self, id: PageId) {
        self.slot(id)
            .head
            .store(std::ptr::null_mut(), Ordering::Release);
        self.free_ids.lock().push(id.0);
    }

    pub(crate) fn slot(&self, id: PageId) -> &PageSlot {
        let seg = self.dir[(id.0 as usize) / SEGMENT].load(Ordering::Acquire);
        debug_assert!(!seg.is_null(), "page {id:?} was never allocated");
        // SAFETY: segments are allocated before any id inside them is handed out and
        // freed only when the table drops; ids reach here only after `allocate`.
        unsafe { &(*seg).slots[(id.0 as usize) % SEGMENT] }
    }

    /// Whether `id` was ever handed out (its slot exists): `verify` asks
    /// before it follows an id read from a page.
    pub(crate) fn is_allocated(&self, id: PageId) -> bool {
        id.0 < self.next_id.load(Ordering::Acquire)
            && (id.0 as usize) / SEGMENT < SEGMENTS
            && !self.dir[(id.0 as usize) / SEGMENT]
                .load(Ordering::Acquire)
                .is_null()
    }

    /// Page ids handed out and not released.
    pub(crate) fn live_ids(&self) -> u64 {
        self.next_id
            .load(Ordering::Relaxed)
            .saturating_sub(self.free_ids.lock().len() as u64)
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        for seg in self.dir.iter() {
            let s = seg.load(Ordering::Acquire);
            if !s.is_null() {
                // SAFETY: we are the last owner; each segment was boxed in `allocate`.
                drop(unsafe { Box::from_raw(s) });
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// A writer waiting on a page read-locked by a committer goes before a reader
    /// that comes after it.
    #[test]
    fn a_waiting_writer_goes_before_later_readers() {
        let slot = Arc::new(PageSlot::new());
        let order = Arc::new(StdMutex::new(Vec::new()));
        slot.lock_shared();
        let writer = {
            let (slot, order) = (slot.clone(), order.clone());
            std::thread::spawn(move || {
                slot.lock_exclusive();
                order.lock().unwrap().push("writer");
                slot.unlock_exclusive();
            })
        };
        while slot.lock.load(Ordering::SeqCst) & WRITER_WAITING == 0 {
            std::thread::yield_now();
        }
        let reader = {
            let (slot, order) = (slot.clone(), order.clone());
            std::thread::spawn(move || {
                slot.lock_shared();
                order.lock().unwrap().push("reader");
                slot.unlock_shared();
            })
        };
        slot.unlock_shared();
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["writer", "reader"]);
        assert_eq!(slot.lock.load(Ordering::SeqCst), 0);
    }
}
