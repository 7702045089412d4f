//! Followers: engines that change only by applying their leader's records, each
//! one if and only if it continues their own history.

use crate::error::{Error, Result};
use crate::journal::{ChainHash, CommitRecord, Frame, Journal, Op, FRAME_HEADER};
use crate::store::Store;
use crate::txn::{commit, CommitId, Log, Outcome, Tx};

/// Where `Engine::apply` may be held by a test, to force one interleaving with
/// `Engine::promote` and `Engine::run` instead of hoping for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApplyPoint {
    /// Entered `apply`, before the apply lock is taken.
    BeforeLock,
    /// Under the apply lock, every check passed, before the record is installed.
    Checked,
}

/// A test's pause hook: called at each `ApplyPoint` of `apply` on its thread.
#[cfg(all(test, not(loom)))]
type PauseHook = Box<dyn FnMut(ApplyPoint)>;

#[cfg(all(test, not(loom)))]
std::thread_local! {
    /// The calling thread's pause hook (tests only): other threads, and other
    /// tests, never see it.
    static HOOK: std::cell::RefCell<Option<PauseHook>> = std::cell::RefCell::new(None);
}

/// Calls the calling thread's test hook, if one is set; nothing outside tests.
#[inline(always)]
pub(crate) fn apply_point(point: ApplyPoint) {
    #[cfg(all(test, not(loom)))]
    HOOK.with(|h| {
        if let Some(f) = h.borrow_mut().as_mut() {
            f(point);
        }
    });
    #[cfg(not(all(test, not(loom))))]
    let _ = point;
}

/// Applies `rec` atomically if `rec.commit_id` is the next id and `rec.prev_hash`
/// is our chain hash; the caller serializes applies.
pub(crate) fn apply(store: &Store, journal: &Journal, rec: &CommitRecord) -> Result<()> {
    // The one validation of everything read (ids, op count, key order and
    // limits), before any arithmetic on the record's id.
    rec.validate(store.max_value_len())?;
    let last = store.clock.visible();
    let id = rec.commit_id.get();
    let expected = last.checked_add(1).ok_or_else(|| Error::InvalidRecord {
        commit_id: Some(rec.commit_id),
        reason: "this engine's commit ids are exhausted".to_owned(),
    })?;
    if id != expected {
        return Err(Error::Gap {
            expected: CommitId(expected),
            got: rec.commit_id,
        });
    }
    let ours = journal
        .hash_at(last)
        .expect("nothing else commits on a follower, so its last hash is recent");
    if rec.prev_hash != ours {
        return Err(Error::Fork {
            commit_id: CommitId(last),
            ours,
            theirs: rec.prev_hash,
        });
    }
    let invalid = |reason: &str| Error::InvalidRecord {
        commit_id: Some(rec.commit_id),
        reason: reason.to_owned(),
    };
    // The record must hash to what it claims, or applying it would fork us.
    let ops = rec.ops.iter().map(|op| match op {
        Op::Put { key, value } => (key.as_slice(), Some(value.as_slice())),
        Op::Delete { key } => (key.as_slice(), None),
    });
    let mut frame = Frame::commit(&rec.command, ops)?;
    frame.set_id(id);
    let computed = rec.prev_hash.next(&frame.bytes[FRAME_HEADER..]);
    if computed != rec.hash {
        return Err(Error::Fork {
            commit_id: rec.commit_id,
            ours: computed,
            theirs: rec.hash,
        });
    }
    apply_point(ApplyPoint::Checked);
    // The caller holds the apply lock and saw a follower, so nothing else takes
    // commit ids; should that ever not hold, refuse before anything is written
    // rather than commit the record under another id.
    let next = store.clock.next_id();
    if next != id {
        return Err(Error::Gap {
            expected: CommitId(next),
            got: rec.commit_id,
        });
    }
    let mut tx = Tx::begin(store);
    for op in &rec.ops {
        match op {
            Op::Put { key, value } => tx.put(key, value)?,
            Op::Delete { key } => {
                tx.delete(key)?;
            }
        }
    }
    let log = Log {
        journal,
        command: &rec.command,
        apply: true,
        locks: None,
    };
    match commit(tx, log)? {
        Outcome::Committed { .. } => match journal.hash_at(id) {
            Some(hash) if hash == rec.hash => Ok(()),
            // Checked in release builds too: an `Ok` must mean the record is our
            // commit `id`.
            ours => Err(Error::Fork {
                commit_id: rec.commit_id,
                ours: ours.unwrap_or_else(ChainHash::genesis),
                theirs: rec.hash,
            }),
        },
        Outcome::ReadOnly | Outcome::Conflict(_) | Outcome::Blocked { .. } => Err(invalid(
            "the record could not be installed (nothing else may write a follower)",
        )),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Issue 20.5: `apply` racing `promote`. Each test holds `apply` at one
    //! point (`ApplyPoint`) while the other thread promotes and writes, so the
    //! interleaving is forced, not hoped for.

    use super::{ApplyPoint, HOOK};
    use crate::{CommitRecord, Engine, Error, Options};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// The leader's first `n` records.
    fn leader_records(n: usize) -> Vec<CommitRecord> {
        let leader = Engine::in_memory().unwrap();
        for i in 0..n as u8 {
            leader.run("lead", |tx| tx.put(&[i], b"leader")).unwrap();
        }
        leader
            .subscribe(0)
            .unwrap()
            .take(n)
            .map(|r| r.unwrap())
            .collect()
    }

    /// Applies `rec` on another thread, which stops at `point` until told to go
    /// on: returns (reached, go on, the thread).
    fn apply_held_at<'s>(
        s: &'s std::thread::Scope<'s, '_>,
        follower: &'s Engine,
        rec: &'s CommitRecord,
        point: ApplyPoint,
    ) -> (
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
        std::thread::ScopedJoinHandle<'s, crate::Result<()>>,
    ) {
        let (reached_tx, reached) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let thread = s.spawn(move || {
            HOOK.with(|h| {
                *h.borrow_mut() = Some(Box::new(move |p| {
                    if p == point {
                        reached_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                    }
                }))
            });
            let r = follower.apply(rec);
            HOOK.with(|h| *h.borrow_mut() = None);
            r
        });
        (reached, go, thread)
    }

    #[test]
    fn an_apply_that_waits_for_the_lock_while_a_promotion_writes_applies_nothing() {
        let recs = leader_records(3);
        let follower = Engine::in_memory_follower(Options::default()).unwrap();
        for rec in &recs[..2] {
            follower.apply(rec).unwrap();
        }
        std::thread::scope(|s| {
            let (reached, go, applying) =
                apply_held_at(s, &follower, &recs[2], ApplyPoint::BeforeLock);
            reached.recv().unwrap();
            // While `apply` is on its way to the lock: promote, and commit 3
            // locally (the id the leader's record claims).
            follower.promote();
            follower.run("local", |tx| tx.put(b"local", b"1")).unwrap();
            let local = follower.last_commit();
            assert_eq!(local.0.get(), 3);
            go.send(()).unwrap();
            let r = applying.join().unwrap();
            assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
            // Nothing of the leader's record went in.
            assert_eq!(follower.last_commit(), local);
            assert_ne!(local.1, recs[2].hash);
            assert_eq!(follower.snapshot().get(&[2]).unwrap(), None);
        });
    }

    #[test]
    fn a_promotion_waits_for_an_apply_that_passed_its_checks() {
        let recs = leader_records(3);
        let follower = Engine::in_memory_follower(Options::default()).unwrap();
        for rec in &recs[..2] {
            follower.apply(rec).unwrap();
        }
        let promoted = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (reached, go, applying) =
                apply_held_at(s, &follower, &recs[2], ApplyPoint::Checked);
            reached.recv().unwrap();
            let promoting = s.spawn(|| {
                follower.promote();
                promoted.store(true, Ordering::SeqCst);
            });
            // `apply` holds the lock: the promotion cannot finish, the engine is
            // still a follower, and a local write is refused.
            std::thread::sleep(Duration::from_millis(50));
            assert!(!promoted.load(Ordering::SeqCst));
            assert!(follower.is_follower());
            let w = follower.run("local", |tx| tx.put(b"local", b"1"));
            assert!(matches!(w, Err(Error::ReadOnly)), "{w:?}");
            go.send(()).unwrap();
            applying.join().unwrap().unwrap();
            promoting.join().unwrap();
        });
        assert_eq!(follower.last_commit(), (recs[2].commit_id, recs[2].hash));
        assert!(!follower.is_follower());
        follower.run("local", |tx| tx.put(b"local", b"1")).unwrap();
        assert_eq!(follower.commit_id().get(), 4);
    }
}
