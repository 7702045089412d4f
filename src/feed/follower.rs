//! Followers: engines that change only by applying their leader's records, each
//! one if and only if it continues their own history.

use crate::error::{Error, Result};
use crate::journal::{CommitRecord, Frame, Journal, Op, FRAME_HEADER};
use crate::store::Store;
use crate::txn::{commit, CommitId, Log, Outcome, Tx};

/// Applies `rec` atomically if `rec.commit_id` is the next id and `rec.prev_hash`
/// is our chain hash; the caller serializes applies.
pub(crate) fn apply(store: &Store, journal: &Journal, rec: &CommitRecord) -> Result<()> {
    let last = store.clock.visible();
    let id = rec.commit_id.get();
    if id != last + 1 {
        return Err(Error::Gap {
            expected: CommitId(last + 1),
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
    if rec.ops.is_empty() {
        return Err(invalid("a commit record has at least one op"));
    }
    fn key(op: &Op) -> &[u8] {
        match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
    if rec.ops.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
        return Err(invalid("ops are not in strictly ascending key order"));
    }
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
    };
    match commit(tx, log)? {
        Outcome::Committed { .. } => {
            debug_assert_eq!(journal.hash_at(id), Some(rec.hash));
            Ok(())
        }
        Outcome::ReadOnly | Outcome::Conflict(_) => Err(invalid(
            "the record could not be installed (nothing else may write a follower)",
        )),
    }
}
