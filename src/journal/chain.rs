//! The hash chain, computed after the fact in commit order.
//!
//! Committers append their records to shards in parallel and hand each record to
//! the chain's ring at slot `id mod RING`; that is all a committer does for the
//! chain. The sequencer, a thread of its own ([`Sequencer`]), hashes the ring
//! forward over contiguous ids under the chain lock and appends the results to
//! the feed's tail, so no committer hashes another's record or waits for the
//! chain lock. Whoever needs a hash sooner helps under the same lock: a feed
//! reading past what is hashed (`advance_to`), `last_commit` and checkpoints
//! (`hash_at`), and a committer that finds the ring full (the sequencer is
//! behind, or was never started). The invariant: `state.id` is the last hashed
//! commit and `state.hash` its chain hash; every commit `<= id` was hashed
//! exactly once, in id order.
//!
//! Under loom there is no sequencer thread (it parks with a timeout, which loom
//! does not model): committers `try_lock` and hash what is ready after each push,
//! as the sequencer would, so the models still race hashing with publication.

use super::record::{ChainHash, FRAME_HEADER};
use crate::sync::{AtomicU64, Backoff, Mutex, Ordering};
use std::collections::VecDeque;
use std::sync::Arc;
#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
const RING: usize = 8192;
#[cfg(loom)]
const RING: usize = 4;

struct State {
    /// Last hashed commit id and its hash.
    id: u64,
    hash: ChainHash,
    /// Hashes of the last `RING` commits, at `id mod RING`, for `hash_at`.
    recent: Box<[(u64, ChainHash)]>,
}

/// A ring slot: a commit id and its frame, waiting to be hashed.
type Slot = Mutex<Option<(u64, Vec<u8>)>>;

/// A hashed commit kept for the feed.
#[derive(Clone)]
pub(crate) struct Retained {
    pub id: u64,
    pub prev_hash: ChainHash,
    pub hash: ChainHash,
    /// The whole frame; the record body starts at `FRAME_HEADER`.
    pub frame: Arc<Vec<u8>>,
    /// Record bytes hashed since the engine started, this one included.
    pub total_bytes: u64,
}

/// The newest hashed commits, oldest first, up to a byte budget: the in-memory
/// journal live feed consumers read from.
pub(crate) struct Tail {
    pub records: VecDeque<Retained>,
    bytes: usize,
    limit: usize,
}

impl Tail {
    /// The retained commit `id`, if it is in the window.
    pub(crate) fn get(&self, id: u64) -> Option<&Retained> {
        let first = self.records.front()?.id;
        self.records
            .get(usize::try_from(id.checked_sub(first)?).ok()?)
    }

    /// Oldest and newest retained commit ids.
    pub(crate) fn span(&self) -> Option<(u64, u64)> {
        Some((self.records.front()?.id, self.records.back()?.id))
    }
}

pub(crate) struct Chain {
    /// Frames waiting to be hashed, at `id mod RING`.
    ring: Box<[Slot]>,
    state: Mutex<State>,
    /// A seqlock copy of (id, hash) of the state, for anchors: read on every
    /// commit, so it must not take the lock.
    seq: AtomicU64,
    head_id: AtomicU64,
    head_hash: [AtomicU64; 4],
    /// Hashed commits for the feed; appended to in commit order by the hasher.
    pub(crate) tail: Mutex<Tail>,
    /// Record bytes hashed so far (for the feed's lag in bytes).
    total_bytes: AtomicU64,
    /// The sequencer thread, to wake when the ring fills up.
    #[cfg(not(loom))]
    sequencer: std::sync::OnceLock<std::thread::Thread>,
}

impl Chain {
    /// A chain whose last hashed commit is `id`, with hash `hash`, keeping up to
    /// `window` bytes of hashed commits for the feed.
    pub(crate) fn new(id: u64, hash: ChainHash, window: usize) -> Chain {
        let mut recent = vec![(u64::MAX, ChainHash([0; 32])); RING].into_boxed_slice();
        recent[id as usize % RING] = (id, hash);
        let chain = Chain {
            ring: (0..RING).map(|_| Mutex::new(None)).collect(),
            state: Mutex::new(State { id, hash, recent }),
            seq: AtomicU64::new(0),
            head_id: AtomicU64::new(0),
            head_hash: std::array::from_fn(|_| AtomicU64::new(0)),
            tail: Mutex::new(Tail {
                records: VecDeque::new(),
                bytes: 0,
                limit: window,
            }),
            total_bytes: AtomicU64::new(0),
            #[cfg(not(loom))]
            sequencer: std::sync::OnceLock::new(),
        };
        chain.publish_head(id, &hash);
        chain
    }

    /// Hands commit `id`'s frame to the chain. The sequencer hashes it.
    pub(crate) fn push(&self, id: u64, frame: Vec<u8>) {
        let slot = &self.slot(id);
        let mut backoff = Backoff::new();
        loop {
            {
                let mut s = slot.lock();
                if s.is_none() {
                    *s = Some((id, frame));
                    break;
                }
            }
            // The slot still holds commit `id - RING`: the sequencer is a whole
            // ring behind. Wake it, and hash that commit out of the way here.
            self.wake();
            self.advance_blocking(id - RING as u64);
            backoff.snooze();
        }
        #[cfg(loom)]
        self.try_advance();
        #[cfg(not(loom))]
        if id.saturating_sub(self.head_id.load(Ordering::Relaxed)) >= (RING / 2) as u64 {
            self.wake();
        }
    }

    /// `f` of commit `id`'s frame, hashed (in the feed's window) or still
    /// waiting in the ring; `None` when it is in neither. Takes the chain lock,
    /// so a frame between the two (taken from the ring by a pass that has not
    /// reached the window yet) is not missed: for rare lookups only.
    pub(crate) fn frame_of<T>(&self, id: u64, f: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let _st = self.state.lock();
        if let Some(r) = self.tail.lock().get(id) {
            return f(&r.frame);
        }
        match &*self.slot(id).lock() {
            Some((i, frame)) if *i == id => f(frame),
            _ => None,
        }
    }

    /// Commit `id`'s ring slot. Consecutive ids land on different cache lines
    /// (`sync::spread`, as the clock's done marks): the committers of
    /// consecutive commits, which push at about the same time, do not write
    /// one line.
    fn slot(&self, id: u64) -> &Slot {
        &self.ring[crate::sync::spread(id, RING)]
    }

    /// Wakes the sequencer, if there is one.
    fn wake(&self) {
        #[cfg(not(loom))]
        if let Some(t) = self.sequencer.get() {
            t.unpark();
        }
    }

    /// Hashes every ready frame, waiting for the chain lock: the sequencer's
    /// step. Returns how many commits it hashed.
    #[cfg(not(loom))]
    fn drain(&self) -> u64 {
        let mut st = self.state.lock();
        let before = st.id;
        self.advance_locked(&mut st, u64::MAX);
        st.id - before
    }

    /// Hashes forward if the chain lock is free. Re-checks after unlocking, so a
    /// frame pushed while the holder was finishing is not left behind.
    #[cfg(loom)]
    fn try_advance(&self) {
        loop {
            let Some(mut st) = self.state.try_lock() else {
                return;
            };
            self.advance_locked(&mut st, u64::MAX);
            let next = st.id + 1;
            drop(st);
            if !self.ready(next) {
                return;
            }
        }
    }

    #[cfg(loom)]
    fn ready(&self, id: u64) -> bool {
        matches!(&*self.slot(id).lock(), Some((i, _)) if *i == id)
    }

    /// Hashes every contiguous ready frame up to `to`.
    fn advance_locked(&self, st: &mut State, to: u64) {
        let start = st.id;
        let mut hashed = Vec::new();
        let mut total = self.total_bytes.load(Ordering::Relaxed);
        while st.id < to {
            let next = st.id + 1;
            let frame = {
                let mut s = self.slot(next).lock();
                match &*s {
                    Some((i, _)) if *i == next => s.take().map(|(_, f)| f),
                    _ => None,
                }
            };
            let Some(frame) = frame else { break };
            let prev_hash = st.hash;
            st.hash = st.hash.next(&frame[FRAME_HEADER..]);
            st.id = next;
            st.recent[next as usize % RING] = (next, st.hash);
            total += (frame.len() - FRAME_HEADER) as u64;
            hashed.push(Retained {
                id: next,
                prev_hash,
                hash: st.hash,
                frame: Arc::new(frame),
                total_bytes: total,
            });
        }
        if st.id != start {
            self.total_bytes.store(total, Ordering::Relaxed);
            self.publish_head(st.id, &st.hash);
            // Still under the state lock, so the tail is appended in commit order.
            let mut tail = self.tail.lock();
            for r in hashed {
                tail.bytes += r.frame.len();
                tail.records.push_back(r);
            }
            while tail.bytes > tail.limit && tail.records.len() > 1 {
                let old = tail.records.pop_front().expect("more than one record");
                tail.bytes -= old.frame.len();
            }
        }
    }

    /// Hashes everything pushed up to `id` (which every commit `<= id` must be),
    /// so that the tail holds it unless the window already moved past it.
    pub(crate) fn advance_to(&self, id: u64) {
        self.advance_blocking(id);
    }

    /// Waits until commit `id` is hashed, hashing it (and what precedes it) here.
    /// Every commit `<= id` must have been pushed or be about to be.
    fn advance_blocking(&self, id: u64) {
        let mut backoff = Backoff::new();
        loop {
            {
                let mut st = self.state.lock();
                self.advance_locked(&mut st, id);
                if st.id >= id {
                    return;
                }
            }
            backoff.snooze();
        }
    }

    /// The chain hash of commit `id`, which must be pushed already (or be about to
    /// be); `None` when the chain has moved more than `RING` commits past it.
    pub(crate) fn hash_at(&self, id: u64) -> Option<ChainHash> {
        let mut backoff = Backoff::new();
        loop {
            {
                let mut st = self.state.lock();
                self.advance_locked(&mut st, id);
                if st.id >= id {
                    let (at, hash) = st.recent[id as usize % RING];
                    return (at == id).then_some(hash);
                }
            }
            backoff.snooze();
        }
    }

    /// The newest hashed point of the chain, without locking: what a new frame
    /// carries as its anchor.
    pub(crate) fn head(&self) -> (u64, ChainHash) {
        loop {
            let s1 = self.seq.load(Ordering::SeqCst);
            if s1 % 2 == 1 {
                crate::sync::spin_hint();
                continue;
            }
            let id = self.head_id.load(Ordering::SeqCst);
            let mut hash = [0u8; 32];
            for (i, w) in self.head_hash.iter().enumerate() {
                hash[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::SeqCst).to_le_bytes());
            }
            if self.seq.load(Ordering::SeqCst) == s1 {
                return (id, ChainHash(hash));
            }
        }
    }

    /// Called with the state lock held (or before sharing), so there is one writer.
    fn publish_head(&self, id: u64, hash: &ChainHash) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.head_id.store(id, Ordering::SeqCst);
        for (i, w) in self.head_hash.iter().enumerate() {
            let word = u64::from_le_bytes(hash.0[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            w.store(word, Ordering::SeqCst);
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
    }
}

/// The thread that hashes the chain forward (see the module docs). It hashes
/// whatever is ready, then looks again after [`Sequencer::POLL`] (at once after
/// a full batch), and only once a second after [`Sequencer::IDLE`] empty passes; a
/// committer wakes it only when the ring is half full, so the commit path
/// makes no system call for it. Dropping it stops and joins the thread, after
/// a last pass.
#[cfg(not(loom))]
pub(crate) struct Sequencer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[cfg(not(loom))]
impl Sequencer {
    /// How long the sequencer waits between passes while commits come.
    const POLL: Duration = Duration::from_millis(1);
    /// Idle passes (each `POLL` apart) after which it looks once a second only.
    const IDLE: u32 = 1_000;
    /// A pass that hashed fewer commits than this waits `POLL` before the
    /// next, so that hashing goes in batches rather than a spin on the ring.
    const BATCH: u64 = 64;

    /// Starts the sequencer of `chain`. `None` when the thread cannot be
    /// started: then readers and full rings hash instead, as under loom.
    pub(crate) fn start(chain: &Arc<Chain>) -> Option<Sequencer> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (chain.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("shardstone-chain".to_owned())
            .spawn(move || {
                let mut idle = 0u32;
                while !s.load(Ordering::Acquire) {
                    match c.drain() {
                        n if n >= Self::BATCH => {
                            idle = 0;
                            continue;
                        }
                        0 => idle = idle.saturating_add(1),
                        _ => idle = 0,
                    }
                    if idle < Self::IDLE {
                        std::thread::park_timeout(Self::POLL);
                    } else {
                        // Nothing for a second: until a full ring or a stop wakes it.
                        // Readers hash for themselves meanwhile.
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                }
                c.drain();
            });
        match handle {
            Ok(handle) => {
                let _ = chain.sequencer.set(handle.thread().clone());
                Some(Sequencer {
                    stop,
                    handle: Some(handle),
                })
            }
            Err(e) => {
                tracing::warn!(target: "shardstone", error = %e, "cannot start the chain sequencer thread; committers hash instead");
                None
            }
        }
    }
}

#[cfg(not(loom))]
impl Drop for Sequencer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::journal::record::Frame;

    fn frame(id: u64) -> Vec<u8> {
        let key = id.to_be_bytes();
        let mut f = Frame::commit("t", [(&key[..], Some(&b"v"[..]))].into_iter()).unwrap();
        f.seal(id, 0, (0, ChainHash::genesis()));
        f.bytes
    }

    /// Committers only hand frames over; the sequencer hashes them, and stops
    /// (after a last pass) when dropped.
    #[test]
    fn pushes_do_not_hash_and_the_sequencer_does() {
        let chain = Arc::new(Chain::new(0, ChainHash::genesis(), 1 << 20));
        let mut expect = ChainHash::genesis();
        for id in 1..=100u64 {
            let f = frame(id);
            expect = expect.next(&f[FRAME_HEADER..]);
            chain.push(id, f);
        }
        assert_eq!(chain.head().0, 0, "a push hashed on the commit path");
        let sequencer = Sequencer::start(&chain).expect("the thread starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while chain.head().0 < 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sequencer never hashed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(chain.head(), (100, expect));
        assert_eq!(chain.tail.lock().span(), Some((1, 100)));
        // Pushed after it stopped: nobody hashes until a reader asks.
        drop(sequencer);
        chain.push(101, frame(101));
        assert_eq!(chain.head().0, 100);
        assert!(chain.hash_at(101).is_some());
        assert_eq!(chain.head().0, 101);
    }

    #[test]
    fn out_of_order_pushes_hash_in_order() {
        let chain = Chain::new(0, ChainHash::genesis(), 1 << 20);
        let mut expect = ChainHash::genesis();
        let frames: Vec<Vec<u8>> = (1..=100).map(frame).collect();
        for f in &frames {
            expect = expect.next(&f[FRAME_HEADER..]);
        }
        // Push in a scrambled order: evens descending, then odds.
        for id in (1..=100u64).rev().filter(|i| i % 2 == 0) {
            chain.push(id, frames[id as usize - 1].clone());
        }
        assert_eq!(chain.head().0, 0, "nothing is hashed past a missing commit");
        for id in (1..=100u64).filter(|i| i % 2 == 1) {
            chain.push(id, frames[id as usize - 1].clone());
        }
        assert_eq!(chain.hash_at(100), Some(expect));
        assert_eq!(chain.head(), (100, expect));
    }
}
