//! Interval reclamation: freeing the versions *between* pinned snapshots.
//!
//! Version `v` of a page is valid over `[v.stamp, c)`, `c` the stamp of the version
//! that superseded it. The horizon rule (`super::reclaim`) frees `v` once every
//! pin is at or above `c`, so one forgotten snapshot keeps every later version of
//! every page it could read. Here `v` is freed as soon as no pinned snapshot lies
//! in `[v.stamp, c)` and `c` is visible (every future snapshot is at or above the
//! watermark, so it reads a newer version): memory behind any number of old
//! snapshots stays O(snapshots × pages they see), as in HyPer's interval garbage
//! collection (Böttcher et al., VLDB 2019). The newest version of a page, and every
//! version newer than the watermark, is never touched.
//!
//! Safety argument, in three parts.
//!
//! 1. *What is unlinked is invisible.* A full pass reads the watermark `W`, fences,
//!    and scans the pins (`Pins::scan`, the horizon's protocol): every pin it misses
//!    is at `W` or later and reads a version at or above the one visible at `W`,
//!    which the pass keeps. Every pinned snapshot `s` below `W` is in the scan, and
//!    the version it reads (the newest with stamp `<= s`) contains `s` in its
//!    interval, so it is kept. Unlinking only removes versions no reader stops at,
//!    so what every reader sees is unchanged.
//! 2. *Walking is safe.* Passes run one at a time (the reclamation lock), and while
//!    one walks chains it publishes its horizon `h` as the *walk floor*: the
//!    own-shard horizon collectors free nothing above it, and a collector that
//!    computed its horizon before the floor went up scanned pins before this pass
//!    did, so its horizon is at most `h`. The pass walks only from the head down to
//!    the version visible at `h`, all of it above what anyone frees.
//! 3. *Freeing waits for readers in flight.* A reader walking a chain may stand on
//!    a version just unlinked (it read the old link). Unlinked versions are freed
//!    only after each reader that could be walking through them has left: a
//!    snapshot handle walks only inside a reading section, counted in its pin slot
//!    (`Pins::enter`), so the pass waits for the sections that were open when it
//!    looked (after a fence that pairs with the one on entry: a section entered
//!    later sees the new links). A transaction's pin is not guarded, so the pass
//!    waits for the transaction to end if it is older than an unlinked version.
//!    Readers at or above every unlinked stamp never walk through one.
//!
//! Links of published versions are rewritten only here and read atomically
//! (`page::set_next`, `Page::next_version`); nothing else in a published version
//! changes. Overflow chains and dead pages still wait for the horizon.

use super::page;
use super::reclaim::{Blocker, Garbage, PinView};
use super::{PageId, PagePtr, Store};
use crate::sync::{fence, Ordering};
use std::collections::{BTreeSet, HashSet};

/// Versions unlinked together, waiting for the readers that might be on them.
pub(crate) struct Retired {
    versions: Vec<Garbage>,
    blockers: Vec<Blocker>,
}

/// What the reclamation lock guards: the unlinked versions not yet freed.
#[derive(Default)]
pub(crate) struct Reclaimer {
    retired: Vec<Retired>,
}

impl Reclaimer {
    /// Versions unlinked and not yet freed.
    pub(crate) fn waiting(&self) -> u64 {
        self.retired.iter().map(|r| r.versions.len() as u64).sum()
    }
}

impl Store {
    /// Frees the batches of unlinked versions whose readers have all left.
    pub(crate) fn free_retired(&self, reclaimer: &mut Reclaimer) -> u64 {
        let mut freed = 0;
        reclaimer.retired.retain_mut(|batch| {
            batch.blockers.retain(|b| !self.pins.gone(b));
            if !batch.blockers.is_empty() {
                return true;
            }
            freed += batch.versions.len() as u64;
            batch.versions.drain(..).for_each(|g| self.free(g));
            false
        });
        freed
    }

    /// Unlinks every version that no snapshot of `view` (and no future one) can
    /// read, frees them when no reader can be on them, and retires the rest.
    /// Returns how many were freed now. Caller holds the reclamation lock and has
    /// published `view.horizon()` as the walk floor.
    pub(crate) fn unlink_invisible(&self, view: &PinView, reclaimer: &mut Reclaimer) -> u64 {
        let (w, h) = (view.watermark, view.horizon());
        if h >= w {
            // No pin below the watermark: the horizon rule frees everything.
            return 0;
        }
        let mut pages = BTreeSet::new();
        self.garbage.edit_each(|list| {
            for (c, g) in list.iter() {
                if let Garbage::Version(id, _) = g {
                    if *c > h && *c <= w {
                        pages.insert(*id);
                    }
                }
            }
        });
        let mut unlinked = HashSet::new();
        let mut top = 0;
        for id in pages {
            self.unlink_page(id, view, &mut unlinked, &mut top);
        }
        if unlinked.is_empty() {
            return 0;
        }
        let mut batch = Vec::with_capacity(unlinked.len());
        self.garbage.edit_each(|list| {
            if !list.iter().any(
                |(_, g)| matches!(g, Garbage::Version(_, v) if unlinked.contains(&(*v as usize))),
            ) {
                return;
            }
            for (c, g) in std::mem::take(list) {
                match g {
                    Garbage::Version(_, v) if unlinked.contains(&(v as usize)) => batch.push(g),
                    g => list.push_back((c, g)),
                }
            }
        });
        debug_assert_eq!(
            batch.len(),
            unlinked.len(),
            "every unlinked version was waiting in a garbage list"
        );
        self.unlinked
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Pairs with the fence in `Pins::enter`: a reading section this misses
        // started after the links above were rewritten.
        fence(Ordering::SeqCst);
        let blockers = self.pins.blockers(top + 1);
        // Deliberately wrong under `shardstone_broken = "interval"`, for the loom model
        // to catch: unlinked versions are freed without waiting for readers.
        #[cfg(shardstone_broken = "interval")]
        let blockers: Vec<Blocker> = {
            drop(blockers);
            Vec::new()
        };
        if blockers.is_empty() {
            let n = batch.len() as u64;
            batch.into_iter().for_each(|g| self.free(g));
            return n;
        }
        reclaimer.retired.push(Retired {
            versions: batch,
            blockers,
        });
        0
    }

    /// Walks page `id`'s chain from the version visible at the watermark down to
    /// the one visible at the horizon, linking each kept version to the next kept
    /// one. Unlinked versions go to `unlinked`; `top` becomes the highest stamp of
    /// them.
    fn unlink_page(
        &self,
        id: PageId,
        view: &PinView,
        unlinked: &mut HashSet<usize>,
        top: &mut u64,
    ) {
        let (w, h) = (view.watermark, view.horizon());
        let mut kept: PagePtr = self.table.slot(id).head();
        if kept.is_null() {
            return;
        }
        // SAFETY (every `page` below): the versions from the head down to the one
        // visible at `h` stay allocated while we hold the reclamation lock with the
        // walk floor at `h` (module docs, part 2); unlinked ones are freed only after
        // this walk.
        let mut kept_page = unsafe { self.page(kept) };
        while kept_page.stamp() > w {
            kept = kept_page.next_version();
            if kept.is_null() {
                return;
            }
            // SAFETY: as above.
            kept_page = unsafe { self.page(kept) };
        }
        let mut upper = kept_page.stamp();
        let mut cur = kept_page.next_version();
        while upper > h && !cur.is_null() {
            // SAFETY: as above.
            let p = unsafe { self.page(cur) };
            let stamp = p.stamp();
            let next = p.next_version();
            if view.any_in(stamp, upper) {
                if kept_page.next_version() != cur {
                    // SAFETY: we are the only relinker; `cur` is older, allocated, and
                    // what every reader passing `kept` is looking for (module docs).
                    unsafe { page::set_next(kept, cur) };
                }
                kept = cur;
                kept_page = p;
            } else {
                unlinked.insert(cur as usize);
                *top = (*top).max(stamp);
            }
            upper = stamp;
            cur = next;
        }
        if kept_page.next_version() != cur {
            // SAFETY: as above; `cur` is the version below the last one examined.
            unsafe { page::set_next(kept, cur) };
        }
    }
}
