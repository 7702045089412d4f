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

use crate::sync::{fence, AtomicU64, Backoff, CachePadded, Ordering};

#[cfg(not(loom))]
const RING: usize = 4096;
#[cfg(loom)]
const RING: usize = 4;

/// Where commit `id` marks itself done: consecutive ids land on different cache
/// lines (a bijection on `id mod RING`), so concurrent committers do not write the
/// same line.
fn slot(id: u64) -> usize {
    const SPREAD: usize = 8;
    let i = (id as usize) % RING;
    if !RING.is_multiple_of(SPREAD) {
        return i;
    }
    (i % SPREAD) * (RING / SPREAD) + i / SPREAD
}

/// The two counters every commit writes sit on cache lines of their own: sharing a
/// line with each other, or with the store's read-mostly fields, made every page
/// access of every other core miss.
pub(crate) struct Clock {
    /// Last commit id handed out.
    assigned: CachePadded<AtomicU64>,
    /// Every commit id `<= visible` is fully installed.
    visible: CachePadded<AtomicU64>,
    /// `done[slot(c)] == c` once commit `c` is installed.
    done: Box<[AtomicU64]>,
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
            done: (0..RING).map(|_| AtomicU64::new(u64::MAX)).collect(),
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

    /// Marks commit `id` installed and advances the watermark over every
    /// contiguous installed id. Returns the last watermark value it saw, or `None`
    /// when the clock was halted at or below `id` before `id` could be published.
    ///
    /// `seen` is a watermark value the caller already read (its snapshot): when
    /// `id` is within the ring of it, the watermark need not be read to make room.
    pub(crate) fn publish(&self, id: u64, seen: u64) -> Option<u64> {
        // At most RING commits may be between assignment and visibility: commit
        // `id` reuses the done slot of `id - RING`, which must be consumed first.
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
        self.done[slot(id)].store(id, Ordering::SeqCst);
        fence(Ordering::SeqCst); // EXPERIMENT
        let mut v = self.visible.load(Ordering::SeqCst);
        loop {
            let next = v + 1;
            if self.done[slot(next)].load(Ordering::SeqCst) != next {
                return Some(v);
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

    /// Stops the watermark for good below `id`, a commit the journal failed to
    /// persist: `id` is never published, so neither it nor any later commit ever
    /// becomes visible, and their waiters return false. Commits below `id` are
    /// unaffected: each is either durable (and is published, so the watermark
    /// still reaches it) or failed too (and halts the clock lower).
    pub(crate) fn halt(&self, id: u64) {
        self.halted_at.fetch_min(id, Ordering::SeqCst);
    }

    /// Whether commit `id` can never become visible.
    fn is_halted_at(&self, id: u64) -> bool {
        self.halted_at.load(Ordering::SeqCst) <= id
    }

    /// Waits until commit `id` is visible to new snapshots; `seen` is a watermark
    /// value already read (from `publish`), which often makes the wait free.
    /// Returns false when the clock was halted at or below `id`.
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

    /// Restarts the clock after recovery: `id` is the last recovered commit, fully
    /// visible. Only while no transaction runs.
    pub(crate) fn resume(&self, id: u64) {
        self.assigned.store(id, Ordering::SeqCst);
        self.visible.store(id, Ordering::SeqCst);
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
