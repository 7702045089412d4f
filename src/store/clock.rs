//! Commit ids and the visibility watermark.
//!
//! Commit ids are taken by committers in parallel (one `fetch_add`), while they
//! hold the locks of every page they read or write, so the id order is a valid
//! serialization order. Installs then finish out of order; the watermark
//! `visible` advances only over a gap-free prefix of finished commits, and a
//! snapshot is always taken at `visible`. So a snapshot sees every commit up to
//! its id entirely, and nothing after it. This is the sequencer the journal's
//! hash chain and the feed's publish watermark advance over, in commit order,
//! without re-serializing commits.
//!
//! In `Durable` mode a commit is visible only once its journal record is also
//! synced. A commit marks itself installed together with the journal shard its
//! record went to; whether that shard's sync covers it is asked of the journal
//! (a predicate passed in: the shard's `synced` watermark). So the watermark is
//! advanced by whoever completes the last condition of the next id: its installer,
//! or any thread that finished a sync covering it (the group-commit flusher, or a
//! committer that helped a stalled shard with `wait_visible_helping`). No commit
//! waits for another commit's thread to come back from its fsync wait.

use crate::sync::{fence, AtomicU32, AtomicU64, Backoff, CachePadded, Ordering};

/// `Mark::shard` of a commit whose visibility needs no sync (no journal, or a
/// level below `Durable`).
const NO_SHARD: u32 = u32::MAX;

#[cfg(not(loom))]
const RING: usize = 4096;
#[cfg(loom)]
const RING: usize = 4;

/// Where commit `id` marks itself done: consecutive ids land on different cache
/// lines (a bijection on `id mod RING`), so concurrent committers do not write the
/// same line.
fn slot(id: u64) -> usize {
    crate::sync::spread(id, RING)
}

/// A commit's marks, on one cache line (the shard is written with the done mark at
/// no extra line's cost).
struct Mark {
    /// `== c` once commit `c` is installed.
    done: AtomicU64,
    /// The journal shard that must sync commit `c` before it may become visible
    /// (`NO_SHARD`: none), written before `done`.
    shard: AtomicU32,
}

/// The two counters every commit writes sit on cache lines of their own: sharing a
/// line with each other, or with the store's read-mostly fields, made every page
/// access of every other core miss.
pub(crate) struct Clock {
    /// Last commit id handed out.
    assigned: CachePadded<AtomicU64>,
    /// Every commit id `<= visible` is fully installed.
    visible: CachePadded<AtomicU64>,
    /// `marks[slot(c)]`: commit `c`'s marks.
    marks: Box<[Mark]>,
    /// The lowest commit id whose record failed to persist (`u64::MAX` while none
    /// has): the watermark never reaches it, so nothing at or after it is ever
    /// visible. Commits below it still become visible once durable.
    halted_at: AtomicU64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            assigned: CachePadded::new(AtomicU64::new(0)),
            visible: CachePadded::new(AtomicU64::new(0)),
            marks: (0..RING)
                .map(|_| Mark {
                    done: AtomicU64::new(u64::MAX),
                    shard: AtomicU32::new(NO_SHARD),
                })
                .collect(),
            halted_at: AtomicU64::new(u64::MAX),
        }
    }

    /// The newest commit id a snapshot may be taken at.
    pub(crate) fn visible(&self) -> u64 {
        self.visible.load(Ordering::SeqCst)
    }

    /// The commit id the next `assign` will hand out, if nobody takes one first.
    pub(crate) fn next_id(&self) -> u64 {
        self.assigned.load(Ordering::SeqCst) + 1
    }

    /// Takes the next commit id. The caller must `publish` it: ids have no gaps.
    pub(crate) fn assign(&self) -> u64 {
        self.assigned.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Marks commit `id` installed and advances the watermark; the form for
    /// commits whose visibility needs no sync (tests).
    #[cfg(test)]
    pub(crate) fn publish(&self, id: u64, seen: u64) -> Option<u64> {
        self.publish_on(id, seen, None, &|_, _| true)
    }

    /// Marks commit `id` installed and advances the watermark over every
    /// contiguous id that is installed and, where it names a shard, durable by
    /// `durable(shard, id)`. `shard` is the journal shard whose sync `id` needs
    /// before it may become visible (`None`: it needs none). Returns the last
    /// watermark value it saw, or `None` when the clock was halted at or below `id`
    /// before `id` could be marked.
    ///
    /// `seen` is a watermark value the caller already read (its snapshot): when
    /// `id` is within the ring of it, the watermark need not be read to make room.
    pub(crate) fn publish_on(
        &self,
        id: u64,
        seen: u64,
        shard: Option<usize>,
        durable: &dyn Fn(usize, u64) -> bool,
    ) -> Option<u64> {
        // At most RING commits may be between assignment and visibility: commit
        // `id` reuses the slots of `id - RING`, which must be consumed first.
        // Waiting here, outside every lock, only waits on older commits.
        if id - seen.min(id) >= RING as u64 {
            let mut backoff = Backoff::new();
            while id - self.visible() > RING as u64 - 1 {
                if self.is_halted_at(id) {
                    return None;
                }
                backoff.snooze();
            }
        }
        let s = shard.map_or(NO_SHARD, |s| s as u32);
        let mark = &self.marks[slot(id)];
        mark.shard.store(s, Ordering::SeqCst);
        mark.done.store(id, Ordering::SeqCst);
        // The store of the mark, then the loads of `advance`: a store-then-load
        // order that SeqCst accesses alone do not give under loom (nor, for the
        // other committer's view, on weak hardware): two publishers could each
        // miss the other's mark and leave the watermark behind both.
        fence(Ordering::SeqCst);
        Some(self.advance(durable))
    }

    /// Advances the watermark over every contiguous id that is installed and
    /// durable (see `publish_on`); returns the last watermark value seen. Whoever
    /// completes a condition of an id calls this after: its installer, and any
    /// thread whose sync covered it.
    pub(crate) fn advance(&self, durable: &dyn Fn(usize, u64) -> bool) -> u64 {
        let mut v = self.visible.load(Ordering::SeqCst);
        loop {
            let next = v + 1;
            if !self.ready(next, durable) {
                return v;
            }
            // Losing this race means another committer advanced it; look again.
            v = match self
                .visible
                .compare_exchange(v, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => next,
                Err(now) => now,
            };
        }
    }

    /// Whether `next` (just above the watermark, so its slots are its own once it
    /// is marked) may become visible.
    fn ready(&self, next: u64, durable: &dyn Fn(usize, u64) -> bool) -> bool {
        let mark = &self.marks[slot(next)];
        if mark.done.load(Ordering::SeqCst) != next {
            return false;
        }
        let shard = mark.shard.load(Ordering::SeqCst);
        // Deliberately wrong under `shardstone_broken = "durable"`, for the loom
        // model to catch: an installed commit is visible before its sync.
        if cfg!(shardstone_broken = "durable") {
            return true;
        }
        shard == NO_SHARD || durable(shard as usize, next)
    }

    /// The commit just above the watermark when it is installed but waits for
    /// its shard's sync: `(id, shard)`, so a waiter can run that sync itself
    /// rather than wait for another thread to be scheduled.
    pub(crate) fn blocker(&self, durable: &dyn Fn(usize, u64) -> bool) -> Option<(u64, usize)> {
        let next = self.visible() + 1;
        let mark = &self.marks[slot(next)];
        if mark.done.load(Ordering::SeqCst) != next {
            return None;
        }
        let shard = mark.shard.load(Ordering::SeqCst);
        // The slots are `next`'s until the watermark passes it: re-check that it
        // did not while they were read.
        if shard == NO_SHARD || self.visible() >= next || durable(shard as usize, next) {
            return None;
        }
        Some((next, shard as usize))
    }

    /// Stops the watermark for good below `id`, a commit the journal failed to
    /// persist: `id` is never published, so neither it nor any later commit ever
    /// becomes visible, and their waiters return false. Commits below `id` are
    /// unaffected: each is either durable (and is published, so the watermark
    /// still reaches it) or failed too (and halts the clock lower).
    pub(crate) fn halt(&self, id: u64) {
        self.halted_at.fetch_min(id, Ordering::SeqCst);
    }

    /// Whether commit `id` can never become visible.
    pub(crate) fn is_halted_at(&self, id: u64) -> bool {
        self.halted_at.load(Ordering::SeqCst) <= id
    }

    /// Waits until commit `id` is visible to new snapshots; `seen` is a watermark
    /// value already read (from `publish`), which often makes the wait free.
    /// Returns false when the clock was halted at or below `id`.
    #[cfg(test)]
    pub(crate) fn wait_visible_from(&self, id: u64, seen: u64) -> bool {
        if seen >= id {
            return true;
        }
        self.wait_visible(id)
    }

    /// Waits until commit `id` is visible to new snapshots; false when it never
    /// will be (the clock was halted at or below `id`). A halt above `id` does not
    /// end the wait: `id` and every commit before it were durable or panicked, and
    /// both are published.
    pub(crate) fn wait_visible(&self, id: u64) -> bool {
        let mut backoff = Backoff::new();
        while self.visible() < id {
            if self.is_halted_at(id) {
                return false;
            }
            backoff.snooze();
        }
        true
    }

    /// Waits until commit `id` is visible, like `wait_visible_from`, but never
    /// for another thread to be scheduled once the commits below `id` are
    /// installed: when the next commit is installed and waits only on its shard's
    /// sync, this thread runs `sync(id, shard)` itself (the group commit of that
    /// shard: a sync in progress is joined, else one is made), then advances the
    /// watermark. A failed sync halts the clock at the commit it could not make
    /// durable. Returns false when the clock was halted at or below `id`.
    pub(crate) fn wait_visible_helping<E>(
        &self,
        id: u64,
        seen: u64,
        durable: &dyn Fn(usize, u64) -> bool,
        mut sync: impl FnMut(u64, usize) -> Result<(), E>,
    ) -> bool {
        if seen >= id {
            return true;
        }
        let mut backoff = Backoff::new();
        loop {
            let v = self.advance(durable);
            if v >= id {
                return true;
            }
            if self.is_halted_at(id) {
                return false;
            }
            // Deliberately wrong under `shardstone_broken = "helping"`, for the loom
            // model to catch: a waiter never syncs for a stalled predecessor.
            let help = !cfg!(shardstone_broken = "helping");
            match self.blocker(durable) {
                Some((next, shard)) if next <= id && help => {
                    if sync(next, shard).is_err() {
                        // `next` is not durable and never will be.
                        self.halt(next);
                    }
                }
                _ => backoff.snooze(),
            }
        }
    }

    /// Restarts the clock after recovery: `id` is the last recovered commit, fully
    /// visible. Only while no transaction runs.
    pub(crate) fn resume(&self, id: u64) {
        self.assigned.store(id, Ordering::SeqCst);
        self.visible.store(id, Ordering::SeqCst);
    }
}

/// The clock, exposed to the loom models only (`loom-tests/tests/durable_publish.rs`).
#[cfg(loom)]
#[doc(hidden)]
#[derive(Default)]
pub struct ClockModel(Clock);

#[cfg(loom)]
impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(loom)]
#[allow(missing_docs)]
impl ClockModel {
    pub fn assign(&self) -> u64 {
        self.0.assign()
    }
    pub fn visible(&self) -> u64 {
        self.0.visible()
    }
    pub fn publish_on(
        &self,
        id: u64,
        shard: Option<usize>,
        durable: &dyn Fn(usize, u64) -> bool,
    ) -> Option<u64> {
        self.0.publish_on(id, 0, shard, durable)
    }
    pub fn advance(&self, durable: &dyn Fn(usize, u64) -> bool) -> u64 {
        self.0.advance(durable)
    }
    pub fn halt(&self, id: u64) {
        self.0.halt(id)
    }
    pub fn wait_visible_helping<E>(
        &self,
        id: u64,
        durable: &dyn Fn(usize, u64) -> bool,
        sync: impl FnMut(u64, usize) -> Result<(), E>,
    ) -> bool {
        self.0.wait_visible_helping(id, 0, durable, sync)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Clock;

    /// A failed commit stops the watermark below itself only: a commit before it
    /// that was durable still becomes visible, and its waiter is not told it
    /// failed (the race CI's concurrent-fsync test caught: a durable commit
    /// reported `Halted`, then made visible by a lower commit publishing).
    #[test]
    fn a_halt_stops_the_watermark_at_the_failed_commit_only() {
        let clock = Clock::new();
        for _ in 0..4 {
            clock.assign();
        }
        // 3 failed to persist; 2 is durable but publishes after the halt; 1
        // publishes last, and carries the watermark over 2.
        clock.halt(3);
        assert_eq!(clock.publish(2, 0), Some(0));
        assert_eq!(clock.publish(4, 0), Some(0));
        assert_eq!(clock.publish(1, 0), Some(2));
        assert_eq!(clock.visible(), 2);
        assert!(clock.wait_visible(2));
        assert!(!clock.wait_visible(3));
        assert!(!clock.wait_visible_from(4, 2));
        // A later failure above the stop does not move it.
        clock.halt(5);
        assert!(!clock.wait_visible(3));
        assert!(clock.wait_visible(1));
    }
}
