//! Transactions: the read set, the write buffer, validation and commit.
//!
//! A transaction reads at one pinned snapshot and records every leaf it reads —
//! the leaf of each `get`, the leaf each write lands on, every leaf a range scan
//! covers — with the version it saw. Writes are buffered privately, so a command
//! reads its own writes. [`commit`] validates the read set at page granularity
//! and installs the new versions; see `commit.rs` for why that is serializable.

mod commit;
mod range;

pub(crate) use commit::{commit, Log, Outcome};
pub use range::TxRange;

use crate::error::{Error, Result};
use crate::options::MAX_KEY_LEN;
use crate::store::{PageId, PagePtr, PinSlot, Store, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, RangeBounds};

/// The position of a commit in the one total order of commits; the first commit is 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct CommitId(pub(crate) u64);

impl CommitId {
    /// The id as a plain number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for CommitId {
    fn from(v: u64) -> Self {
        CommitId(v)
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "commit {}", self.0)
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Owned (start, end) bounds of a key range.
pub(crate) type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Owned bounds of a user range, with oversized keys rejected.
pub(crate) fn bounds_of<'k, R: RangeBounds<&'k [u8]>>(range: &R) -> Result<KeyBounds> {
    let own = |b: Bound<&&[u8]>| -> Result<Bound<Vec<u8>>> {
        Ok(match b {
            Bound::Included(k) => {
                check_key(k)?;
                Bound::Included(k.to_vec())
            }
            Bound::Excluded(k) => {
                check_key(k)?;
                Bound::Excluded(k.to_vec())
            }
            Bound::Unbounded => Bound::Unbounded,
        })
    };
    Ok((own(range.start_bound())?, own(range.end_bound())?))
}

/// A buffered write: the value (`None` deletes) and the leaf it lands on.
pub(crate) struct Write {
    pub value: Option<Vec<u8>>,
    pub leaf: PageId,
}

/// The view a command works through: reads at its snapshot, buffered writes.
///
/// Every method returns [`Result`], so `?` works inside a command.
pub struct Tx<'e> {
    store: &'e Store,
    pin: PinSlot,
    at: u64,
    reads: Vec<(PageId, u64)>,
    writes: BTreeMap<Vec<u8>, Write>,
    /// The leaf of the last lookup: a write to a key inside its key span lands
    /// there, without descending the tree again (read-modify-write).
    last_leaf: Option<(PageId, PagePtr)>,
}

impl<'e> Tx<'e> {
    pub(crate) fn begin(store: &'e Store) -> Tx<'e> {
        let (pin, at) = store.pin();
        Tx {
            store,
            pin,
            at,
            reads: Vec::new(),
            writes: BTreeMap::new(),
            last_leaf: None,
        }
    }

    /// The commit id of the snapshot this transaction reads.
    pub fn snapshot_id(&self) -> CommitId {
        CommitId(self.at)
    }

    /// The value of `key`, including this transaction's own writes.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        check_key(key)?;
        if let Some(w) = self.writes.get(key) {
            return Ok(w.value.clone().map(Value::from));
        }
        let reads = &mut self.reads;
        Ok(self
            .store
            .get(key, self.at, |id, stamp| reads.push((id, stamp))))
    }

    /// Sets `key` to `value` when the command commits.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        let max = self.store.max_value_len();
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        let leaf = self.landing_leaf(key);
        self.writes.insert(
            key.to_vec(),
            Write {
                value: Some(value.to_vec()),
                leaf,
            },
        );
        Ok(())
    }

    /// Removes `key` when the command commits; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        let existed = match self.writes.get(key) {
            Some(w) => w.value.is_some(),
            None => {
                let reads = &mut self.reads;
                self.store
                    .get(key, self.at, |id, stamp| reads.push((id, stamp)))
                    .is_some()
            }
        };
        let leaf = self.landing_leaf(key);
        self.writes
            .insert(key.to_vec(), Write { value: None, leaf });
        Ok(existed)
    }

    /// Every key and value in `range`, in key order, this transaction's writes
    /// included; `.rev()` walks it backwards. The leaves it covers join the read
    /// set, so a concurrent insert into the range is a conflict (no phantoms).
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&mut self, range: R) -> TxRange<'_> {
        match bounds_of(&range) {
            Ok((lo, hi)) => {
                TxRange::new(self.store, self.at, lo, hi, &self.writes, &mut self.reads)
            }
            Err(e) => TxRange::failed(e),
        }
    }

    /// The leaf `key` lands on at this snapshot; it joins the read set.
    fn landing_leaf(&mut self, key: &[u8]) -> PageId {
        if let Some(w) = self.writes.get(key) {
            return w.leaf;
        }
        if let Some((id, v)) = self.last_leaf {
            // SAFETY: reachable from our pinned snapshot.
            let page = unsafe { self.store.page(v) };
            let n = page.count();
            if n > 0 && page.leaf_key(0) <= key && key <= page.leaf_key(n - 1) {
                return id;
            }
        }
        let (id, v) = self.store.descend(key, self.at);
        self.last_leaf = Some((id, v));
        // SAFETY: the version is reachable from our pinned snapshot.
        let stamp = unsafe { self.store.page(v) }.stamp();
        self.reads.push((id, stamp));
        id
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        self.store.unpin(&self.pin);
    }
}

impl fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("snapshot", &self.at)
            .field("pages_read", &self.reads.len())
            .field("writes", &self.writes.len())
            .finish()
    }
}
