//! Group commit: the protocol by which a shard's committers share fsyncs.
//!
//! Appenders record the highest commit id appended (`appended`) under the lock.
//! A committer that needs its record on disk becomes the flusher if nobody is
//! flushing: it notes `target = appended` *before* it syncs, syncs outside the
//! lock, then marks everything up to `target` synced. Others wait for the flush in
//! progress and look again. The invariant: `synced` never exceeds what a completed
//! sync covered, because a sync covers everything written before it started and
//! `target` was read before it started. After a failed sync nothing more is ever
//! acknowledged (the kernel may have dropped the dirty pages).
//!
//! `synced` is also published as an atomic: in `Durable` mode the visibility
//! watermark (`store/clock.rs`) reads it to know whether a commit's record is on
//! disk, and the flusher that raised it advances the watermark when it returns.
//!
//! The file work (`prepare`, `sync`) is passed in, so the protocol runs as it is
//! under loom (`loom-tests/tests/group_commit.rs`) with a simulated disk.

use crate::sync::{AtomicU64, Condvar, Mutex, MutexGuard, Ordering};
use std::fmt::Display;

/// A shard's group-commit state around the shard's own file state `S`.
pub struct Group<S> {
    state: Mutex<GroupState<S>>,
    flushed: Condvar,
    /// `GroupState::synced`, readable without the lock: the clock asks it whether
    /// a commit of this shard may become visible. Raised only after a completed
    /// sync that covers it, never after a failed one.
    synced: AtomicU64,
}

/// What the group lock protects.
pub struct GroupState<S> {
    /// Highest commit id appended.
    pub appended: u64,
    /// Highest commit id known to be on disk.
    synced: u64,
    flushing: bool,
    /// The first failed sync; nothing is acknowledged after it.
    failed: Option<String>,
    /// The owner's state (segments, files).
    pub files: S,
}

impl<S> GroupState<S> {
    /// The failure that stopped the group, if any.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

/// Why `wait_durable` failed.
#[derive(Debug)]
pub enum Waited<E> {
    /// This call's sync failed.
    Failed(E),
    /// An earlier sync failed; nothing more is acknowledged.
    Earlier(String),
}

impl<S> Group<S> {
    /// A group with nothing appended yet.
    pub fn new(files: S) -> Group<S> {
        Group {
            state: Mutex::new(GroupState {
                appended: 0,
                synced: 0,
                flushing: false,
                failed: None,
                files,
            }),
            flushed: Condvar::new(),
            synced: AtomicU64::new(0),
        }
    }

    /// The highest commit id known to be on disk (every id of this group up to
    /// it is covered by a completed sync).
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// The group lock: appenders take it to append and raise `appended`.
    pub fn lock(&self) -> MutexGuard<'_, GroupState<S>> {
        self.state.lock()
    }

    /// Returns once commit `id` (already appended) is covered by a completed sync.
    /// As the flusher, `prepare` runs under the lock (it picks the files to sync)
    /// and `sync` runs outside it.
    pub fn wait_durable<J, E: Display>(
        &self,
        id: u64,
        mut prepare: impl FnMut(&mut S) -> J,
        mut sync: impl FnMut(J) -> Result<(), E>,
    ) -> Result<(), Waited<E>> {
        let mut st = self.state.lock();
        loop {
            if st.synced >= id {
                return Ok(());
            }
            if let Some(cause) = &st.failed {
                return Err(Waited::Earlier(cause.clone()));
            }
            if st.flushing {
                st = self.flushed.wait(st);
                continue;
            }
            st.flushing = true;
            // What the sync will cover: everything appended before it starts.
            #[cfg(not(shardstone_broken = "group_commit"))]
            let target = st.appended;
            let job = prepare(&mut st.files);
            drop(st);
            let result = sync(job);
            st = self.state.lock();
            // Deliberately wrong, for the loom model to catch: counts what was
            // appended during the sync as covered by it.
            #[cfg(shardstone_broken = "group_commit")]
            let target = st.appended;
            st.flushing = false;
            match result {
                Ok(()) => {
                    st.synced = st.synced.max(target);
                    self.synced.store(st.synced, Ordering::SeqCst);
                }
                Err(e) => {
                    st.failed = Some(e.to_string());
                    self.flushed.notify_all();
                    return Err(Waited::Failed(e));
                }
            }
            self.flushed.notify_all();
        }
    }
}
