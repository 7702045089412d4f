//! One facade over the concurrency primitives the engine's protocols use.
//!
//! Every atomic, lock, thread and `Arc` in the commit, snapshot, escalation and
//! reclamation protocols comes from here. Under `cfg(loom)` they are loom's types,
//! so the models in `loom-tests/` explore the crate's real code, not a copy of it.
//! Outside loom they are `std` atomics and `parking_lot` locks.
//!
//! Nothing else in the crate names `std::sync` or `parking_lot` directly.

pub(crate) use crossbeam_utils::CachePadded;

/// Locks and threads for work that no loom model explores and that waits in
/// real time (the background checkpointer, `journal/auto.rs`): `std`'s, also
/// under `cfg(loom)`.
pub(crate) mod real {
    pub(crate) use std::sync::{Condvar, Mutex};
    pub(crate) use std::thread;
}

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use std::sync::Arc;
    pub(crate) use std::thread::yield_now;

    /// A mutex whose `lock` returns the guard directly (no poisoning: a panicking
    /// command never holds an engine lock across user code).
    #[derive(Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(parking_lot::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    /// A condition variable paired with [`Mutex`].
    #[derive(Default)]
    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(parking_lot::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }
        pub(crate) fn wait_timeout<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            self.0.wait_for(&mut guard, timeout);
            guard
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
    }

    /// Busy-wait hint used inside bounded spin loops before yielding.
    #[inline]
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// The CPU this thread is running on right now (0 where unknown).
    pub(crate) fn current_cpu() -> usize {
        // SAFETY: sched_getcpu takes no arguments and only reads the CPU number.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).unwrap_or(0)
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::thread::yield_now;

    /// loom's mutex behind the same interface as the production one.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex::new(T::default())
        }
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }

    /// Under loom a spin must yield so the model can schedule the other thread.
    #[inline]
    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }

    /// loom's condition variable behind the production interface.
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).expect("loom mutexes do not poison here")
        }
        /// loom has no clock: a timed wait is a plain wait.
        pub(crate) fn wait_timeout<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            _timeout: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            self.wait(guard)
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
    }

    /// Under loom every thread runs on "CPU 0".
    pub(crate) fn current_cpu() -> usize {
        0
    }
}

pub(crate) use imp::*;

#[cfg(loom)]
pub(crate) use loom::thread_local;
#[cfg(not(loom))]
pub(crate) use std::thread_local;

/// Spin briefly, then yield: the wait used by the short critical sections of the
/// commit protocol (page locks, the visibility watermark).
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { step: 0 }
    }

    pub(crate) fn snooze(&mut self) {
        if self.step < 6 && !cfg!(loom) {
            for _ in 0..(1u32 << self.step) {
                spin_hint();
            }
        } else {
            yield_now();
        }
        self.step = self.step.saturating_add(1);
    }
}

/// CPUs the system is configured with (at least 1): `sched_getcpu` values are
/// below it.
pub(crate) fn cpu_count() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// How many shards a per-thread structure (stats counters, garbage lists, the
/// commit gate's counters, page free lists) gets on a machine with `cpus` CPUs:
/// one per CPU, rounded up to a power of two (2 CPUs: 2 shards, 96: 128, 256:
/// 256). Thread indices are dense (see [`thread_shard`]), so while no more
/// threads are alive than there are CPUs, no two threads share a shard.
pub(crate) fn shards_for(cpus: usize) -> usize {
    cpus.clamp(1, MAX_SHARDS).next_power_of_two()
}

/// Upper bound of [`shards_for`]: beyond it a machine's threads share shards
/// rather than every command name's counters growing without bound.
const MAX_SHARDS: usize = 4096;

/// The calling thread's index, used to pick its shard of a sharded structure
/// (`thread_shard() % shards`).
///
/// Indices are dense and recycled: a thread takes the lowest index no live
/// thread holds and gives it back when it exits. So a server that spawns
/// short-lived threads keeps its indices below the number of live threads, and
/// with at most [`shards_for`]`(cpus)` live threads each has a shard of its own.
/// A thread index rather than `current_cpu()`: it costs one thread-local read
/// (no `sched_getcpu`), and a thread keeps its line when the scheduler moves
/// it, so a thread's garbage list stays in its commit order and its free list
/// stays the one it filled.
pub(crate) fn thread_shard() -> usize {
    #[cfg(not(loom))]
    {
        use std::cell::Cell;
        thread_local! {
            static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
            static LEASE: ThreadIndex = ThreadIndex::take();
        }
        let v = SHARD.with(Cell::get);
        if v != usize::MAX {
            return v;
        }
        // First call on this thread: take an index, held until the thread exits.
        // During thread teardown (LEASE already gone) fall back to a fresh index.
        let v = LEASE
            .try_with(|l| l.0)
            .unwrap_or_else(|_| ThreadIndex::take().leak());
        SHARD.with(|s| s.set(v));
        v
    }
    #[cfg(loom)]
    {
        // Under loom every thread may share one shard: the protocols do not rely
        // on shard separation for correctness, only for speed.
        0
    }
}

/// A thread's index, returned to the free set when the thread exits.
#[cfg(not(loom))]
struct ThreadIndex(usize);

#[cfg(not(loom))]
static FREE_INDICES: std::sync::Mutex<std::collections::BTreeSet<usize>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
#[cfg(not(loom))]
static NEXT_INDEX: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(not(loom))]
impl ThreadIndex {
    /// The lowest index no live thread holds (taken once per thread, not on a
    /// hot path: a plain mutex is fine).
    fn take() -> ThreadIndex {
        let mut free = FREE_INDICES.lock().unwrap_or_else(|p| p.into_inner());
        match free.pop_first() {
            Some(i) => ThreadIndex(i),
            None => ThreadIndex(NEXT_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// Keeps the index forever (a thread already past its thread-locals).
    fn leak(self) -> usize {
        let i = self.0;
        std::mem::forget(self);
        i
    }
}

#[cfg(not(loom))]
impl Drop for ThreadIndex {
    fn drop(&mut self) {
        FREE_INDICES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.0);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn shard_counts_follow_the_cpu_count() {
        assert_eq!(shards_for(0), 1);
        assert_eq!(shards_for(1), 1);
        assert_eq!(shards_for(2), 2);
        assert_eq!(shards_for(3), 4);
        assert_eq!(shards_for(96), 128);
        assert_eq!(shards_for(256), 256);
        assert_eq!(shards_for(1 << 20), MAX_SHARDS);
    }

    /// Indices of exited threads are reused: threads started one after another
    /// never climb past the number alive at once (other tests' threads aside,
    /// which is why the bound is loose but fixed).
    #[test]
    fn thread_indices_are_recycled() {
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen.push(std::thread::spawn(thread_shard).join().expect("thread ran"));
        }
        let max = seen.iter().copied().max().expect("200 indices");
        assert!(max < 128, "indices climbed to {max}: not recycled");
        // Two threads alive together never share an index.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    let i = thread_shard();
                    b.wait();
                    i
                })
            })
            .collect();
        let mut ids: Vec<usize> = handles
            .into_iter()
            .map(|h| h.join().expect("ran"))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 8);
    }
}

/// Position of `id` in a ring of `ring` entries such that consecutive ids are
/// `ring / 8` entries apart (a bijection on `id mod ring`): entries of up to
/// 64 bytes written by consecutive commits never share a cache line.
pub(crate) fn spread(id: u64, ring: usize) -> usize {
    const SPREAD: usize = 8;
    let i = (id as usize) % ring;
    if !ring.is_multiple_of(SPREAD) {
        return i;
    }
    (i % SPREAD) * (ring / SPREAD) + i / SPREAD
}
