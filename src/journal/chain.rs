//! The hash chain, computed after the fact in commit order.
//!
//! Committers append their records to shards in parallel and hand each record to
//! the chain's ring at slot `id mod RING`. Whoever holds the chain lock hashes the
//! ring forward over contiguous ids; a committer only ever `try_lock`s it, so
//! hashing never makes one commit wait for another. The invariant: `state.id` is
//! the last hashed commit and `state.hash` its chain hash; every commit `<= id` was
//! hashed exactly once, in id order.

use super::record::{ChainHash, FRAME_HEADER};
use crate::sync::{AtomicU64, Backoff, Mutex, Ordering};
use std::collections::VecDeque;
use std::sync::Arc;

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
        };
        chain.publish_head(id, &hash);
        chain
    }

    /// Hands commit `id`'s frame to the chain, then hashes whatever is ready if no
    /// one else is doing so.
    pub(crate) fn push(&self, id: u64, frame: Vec<u8>) {
        let slot = &self.ring[id as usize % RING];
        let mut backoff = Backoff::new();
        loop {
            {
                let mut s = slot.lock();
                if s.is_none() {
                    *s = Some((id, frame));
                    break;
                }
            }
            // The slot still holds commit `id - RING`: hash it out of the way.
            self.advance_blocking(id - RING as u64);
            backoff.snooze();
        }
        self.try_advance();
    }

    /// Hashes forward if the chain lock is free. Re-checks after unlocking, so a
    /// frame pushed while the holder was finishing is not left behind.
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

    fn ready(&self, id: u64) -> bool {
        matches!(&*self.ring[id as usize % RING].lock(), Some((i, _)) if *i == id)
    }

    /// Hashes every contiguous ready frame up to `to`.
    fn advance_locked(&self, st: &mut State, to: u64) {
        let start = st.id;
        let mut hashed = Vec::new();
        let mut total = self.total_bytes.load(Ordering::Relaxed);
        while st.id < to {
            let next = st.id + 1;
            let frame = {
                let mut s = self.ring[next as usize % RING].lock();
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
