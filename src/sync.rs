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

/// A small per-thread index used to pick a shard of a sharded structure
/// (counters, garbage lists, page free lists) without a shared cache line.
pub(crate) fn thread_shard() -> usize {
    #[cfg(not(loom))]
    {
        use std::cell::Cell;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        SHARD.with(|s| {
            let v = s.get();
            if v != usize::MAX {
                return v;
            }
            let v = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(v);
            v
        })
    }
    #[cfg(loom)]
    {
        // Under loom every thread may share one shard: the protocols do not rely
        // on shard separation for correctness, only for speed.
        0
    }
}
