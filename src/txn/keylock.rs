//! Logical locks on keys and key ranges, held by escalated commands.
//!
//! A command that keeps losing conflicts is escalated: it re-runs pessimistically,
//! holding locks on the keys and ranges it read and wrote in its failed attempts
//! (its retrospective lock list, as in MOCC: Wang & Kimura, VLDB 2016), taken in
//! key order before it starts, and locking anything new it touches as it goes.
//! Nothing else is stopped: a commit that would write a key (or into a range)
//! another command holds is refused before it takes a commit id, and its command
//! waits for that key alone, then re-runs. So an escalated command cannot lose
//! again on what it holds.
//!
//! Waits are first-in first-out per overlapping span (a new request never jumps
//! a waiter it overlaps), checked for deadlock through the lock table on every
//! wake (a command that would close a cycle of waits gets [`Error::Deadlock`]),
//! and bounded by `Options::lock_wait` ([`Error::Timeout`]), which also ends
//! cycles the table cannot see (a command waiting on another thread through the
//! application). Nothing waits forever.
//!
//! The table is one mutex: it is touched only by escalated commands, and by
//! ordinary commits only while some escalated command holds locks (`active`
//! counts them; when it is zero a commit's check is one atomic load).

use super::KeyBounds;
use crate::error::{Error, Result};
use crate::sync::{AtomicUsize, Condvar, Mutex, Ordering};
use std::collections::VecDeque;
use std::ops::Bound;
use std::time::{Duration, Instant};

/// Who holds or wants a lock: one escalated command run. Never 0.
pub(crate) type Owner = u64;

fn starts_after_end(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    match (lo, hi) {
        (Bound::Unbounded, _) | (_, Bound::Unbounded) => false,
        (Bound::Included(l), Bound::Included(h)) => l > h,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
        | (Bound::Excluded(l), Bound::Included(h)) => l >= h,
    }
}

/// Whether two spans share a key.
pub(crate) fn overlap(a: &KeyBounds, b: &KeyBounds) -> bool {
    !starts_after_end(&a.0, &b.1) && !starts_after_end(&b.0, &a.1)
}

/// Whether `key` lies in `span`.
pub(crate) fn contains(span: &KeyBounds, key: &[u8]) -> bool {
    let point = (Bound::Included(key.to_vec()), Bound::Included(key.to_vec()));
    overlap(span, &point)
}

/// The key a span starts at, for ordering lock lists (unbounded first).
pub(crate) fn start_key(span: &KeyBounds) -> Option<&[u8]> {
    match &span.0 {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

/// A span covering exactly `key`.
pub(crate) fn point(key: &[u8]) -> KeyBounds {
    (Bound::Included(key.to_vec()), Bound::Included(key.to_vec()))
}

/// Whether `outer` covers all of `inner`.
fn covers(outer: &KeyBounds, inner: &KeyBounds) -> bool {
    let lo_ok = match (&outer.0, &inner.0) {
        (Bound::Unbounded, _) => true,
        (_, Bound::Unbounded) => false,
        (Bound::Included(o), Bound::Included(i) | Bound::Excluded(i)) => o <= i,
        (Bound::Excluded(o), Bound::Excluded(i)) => o <= i,
        (Bound::Excluded(o), Bound::Included(i)) => o < i,
    };
    let hi_ok = match (&outer.1, &inner.1) {
        (Bound::Unbounded, _) => true,
        (_, Bound::Unbounded) => false,
        (Bound::Included(o), Bound::Included(i) | Bound::Excluded(i)) => o >= i,
        (Bound::Excluded(o), Bound::Excluded(i)) => o >= i,
        (Bound::Excluded(o), Bound::Included(i)) => o > i,
    };
    lo_ok && hi_ok
}

struct Waiter {
    owner: Owner,
    ticket: u64,
    span: KeyBounds,
}

#[derive(Default)]
struct Table {
    held: Vec<(Owner, KeyBounds)>,
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
}

impl Table {
    /// Owners that `owner`'s request for `span` (ticket `ticket`) must wait for:
    /// other holders of an overlapping span, and earlier overlapping waiters.
    fn blockers(&self, owner: Owner, ticket: u64, span: &KeyBounds) -> Vec<Owner> {
        let mut out: Vec<Owner> = self
            .held
            .iter()
            .filter(|(o, s)| *o != owner && overlap(s, span))
            .map(|(o, _)| *o)
            .collect();
        out.extend(
            self.waiting
                .iter()
                .filter(|w| w.ticket < ticket && w.owner != owner && overlap(&w.span, span))
                .map(|w| w.owner),
        );
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the waits from `owner`'s request lead back to `owner`.
    fn closes_cycle(&self, owner: Owner, ticket: u64, span: &KeyBounds) -> bool {
        let mut seen = vec![owner];
        let mut stack = self.blockers(owner, ticket, span);
        while let Some(o) = stack.pop() {
            if o == owner {
                return true;
            }
            if seen.contains(&o) {
                continue;
            }
            seen.push(o);
            for w in self.waiting.iter().filter(|w| w.owner == o) {
                stack.extend(self.blockers(w.owner, w.ticket, &w.span));
            }
        }
        false
    }
}

/// The lock table of one engine.
pub(crate) struct KeyLocks {
    /// Owners holding at least one lock.
    active: AtomicUsize,
    table: Mutex<Table>,
    changed: Condvar,
    next_owner: AtomicUsize,
}

/// What a wait ended in, other than getting the lock.
pub(crate) enum WaitError {
    Deadlock,
    Timeout(Duration),
}

impl WaitError {
    pub(crate) fn into_error(self, command: &str, span: &KeyBounds) -> Error {
        let key = match &span.0 {
            Bound::Included(k) | Bound::Excluded(k) => k.clone(),
            Bound::Unbounded => Vec::new(),
        };
        match self {
            WaitError::Deadlock => Error::Deadlock {
                command: command.to_owned(),
                key,
            },
            WaitError::Timeout(waited) => Error::Timeout {
                command: command.to_owned(),
                key,
                waited,
            },
        }
    }
}

impl KeyLocks {
    pub(crate) fn new() -> Self {
        KeyLocks {
            active: AtomicUsize::new(0),
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
            next_owner: AtomicUsize::new(1),
        }
    }

    /// A fresh owner id for one escalated run.
    pub(crate) fn owner(&self) -> Owner {
        self.next_owner.fetch_add(1, Ordering::Relaxed) as Owner
    }

    /// Takes `span` for `owner`, waiting behind holders and earlier waiters of
    /// overlapping spans until `deadline`.
    pub(crate) fn acquire(
        &self,
        owner: Owner,
        span: KeyBounds,
        deadline: Instant,
    ) -> std::result::Result<(), WaitError> {
        let mut t = self.table.lock();
        if t.held.iter().any(|(o, s)| *o == owner && covers(s, &span)) {
            return Ok(());
        }
        let ticket = t.next_ticket;
        t.next_ticket += 1;
        let blocked = !t.blockers(owner, ticket, &span).is_empty();
        if !blocked {
            self.grant(&mut t, owner, span);
            return Ok(());
        }
        t.waiting.push_back(Waiter {
            owner,
            ticket,
            span: span.clone(),
        });
        let started = Instant::now();
        loop {
            if t.closes_cycle(owner, ticket, &span) {
                t.waiting.retain(|w| w.ticket != ticket);
                self.changed.notify_all();
                return Err(WaitError::Deadlock);
            }
            let now = Instant::now();
            if now >= deadline {
                t.waiting.retain(|w| w.ticket != ticket);
                self.changed.notify_all();
                return Err(WaitError::Timeout(now - started));
            }
            t = self.changed.wait_timeout(t, deadline - now);
            if t.blockers(owner, ticket, &span).is_empty() {
                t.waiting.retain(|w| w.ticket != ticket);
                self.grant(&mut t, owner, span);
                // Waiters behind this one re-check (the queue changed).
                self.changed.notify_all();
                return Ok(());
            }
        }
    }

    fn grant(&self, t: &mut Table, owner: Owner, span: KeyBounds) {
        if !t.held.iter().any(|(o, _)| *o == owner) {
            self.active.fetch_add(1, Ordering::SeqCst);
        }
        t.held.push((owner, span));
    }

    /// Releases everything `owner` holds.
    pub(crate) fn release_all(&self, owner: Owner) {
        let mut t = self.table.lock();
        let before = t.held.len();
        t.held.retain(|(o, _)| *o != owner);
        if t.held.len() != before {
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
        drop(t);
        // The broken variant loses the wakeup: a commit waiting in `wait_released`
        // for one of these keys sleeps on (until its timeout; forever under loom).
        #[cfg(not(shardstone_broken = "keylock"))]
        self.changed.notify_all();
    }

    /// Whether some owner holds locks (one atomic load: the commit path's check).
    pub(crate) fn any(&self) -> bool {
        self.active.load(Ordering::SeqCst) != 0
    }

    /// The first of `keys` that an owner other than `me` (0: none) holds.
    pub(crate) fn held_by_other<'k>(
        &self,
        me: Owner,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Option<Vec<u8>> {
        let t = self.table.lock();
        for key in keys {
            if t.held.iter().any(|(o, s)| *o != me && contains(s, key)) {
                return Some(key.to_vec());
            }
        }
        None
    }

    /// Waits until no owner other than `me` holds `key`, or until `deadline`.
    /// Waiting for a key does not queue for it: an ordinary command takes no lock.
    pub(crate) fn wait_released(
        &self,
        me: Owner,
        key: &[u8],
        deadline: Instant,
    ) -> std::result::Result<(), WaitError> {
        let started = Instant::now();
        let mut t = self.table.lock();
        loop {
            if !t.held.iter().any(|(o, s)| *o != me && contains(s, key)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout(now - started));
            }
            t = self.changed.wait_timeout(t, deadline - now);
        }
    }
}

/// Releases an owner's locks when its escalated run ends, however it ends.
pub(crate) struct Holding<'l> {
    pub locks: &'l KeyLocks,
    pub owner: Owner,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.locks.release_all(self.owner);
    }
}

/// The lock context of a transaction run by an escalated command: it locks each
/// key and range before touching it.
pub(crate) struct Locking<'l> {
    pub locks: &'l KeyLocks,
    pub owner: Owner,
    pub deadline: Instant,
    pub command: &'l str,
}

impl Locking<'_> {
    pub(crate) fn lock(&self, span: KeyBounds) -> Result<()> {
        self.locks
            .acquire(self.owner, span.clone(), self.deadline)
            .map_err(|e| e.into_error(self.command, &span))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn r(lo: &[u8], hi: &[u8]) -> KeyBounds {
        (Bound::Included(lo.to_vec()), Bound::Excluded(hi.to_vec()))
    }

    #[test]
    fn spans_overlap_as_key_ranges_do() {
        assert!(overlap(&point(b"b"), &r(b"a", b"c")));
        assert!(!overlap(&point(b"c"), &r(b"a", b"c")));
        assert!(overlap(&point(b"a"), &r(b"a", b"c")));
        assert!(!overlap(&r(b"a", b"b"), &r(b"b", b"c")));
        assert!(overlap(&(Bound::Unbounded, Bound::Unbounded), &point(b"x")));
        assert!(covers(&r(b"a", b"c"), &point(b"b")));
        assert!(!covers(&point(b"b"), &r(b"a", b"c")));
    }

    #[test]
    fn a_cycle_of_waits_is_a_deadlock_and_a_lone_wait_times_out() {
        let locks = std::sync::Arc::new(KeyLocks::new());
        let far = Instant::now() + Duration::from_secs(10);
        let (a, b) = (locks.owner(), locks.owner());
        assert!(locks.acquire(a, point(b"x"), far).is_ok());
        assert!(locks.acquire(b, point(b"y"), far).is_ok());
        let l2 = locks.clone();
        let t = std::thread::spawn(move || l2.acquire(b, point(b"x"), far));
        // Wait until b is queued behind a.
        while locks.table.lock().waiting.is_empty() {
            std::thread::yield_now();
        }
        assert!(matches!(
            locks.acquire(a, point(b"y"), far),
            Err(WaitError::Deadlock)
        ));
        locks.release_all(a);
        assert!(t.join().unwrap().is_ok());
        let soon = Instant::now() + Duration::from_millis(20);
        let c = locks.owner();
        assert!(matches!(
            locks.acquire(c, point(b"x"), soon),
            Err(WaitError::Timeout(_))
        ));
        locks.release_all(b);
        assert!(!locks.any());
    }
}
