//! Transactions: the read set, the write buffer, validation and commit.
//!
//! A transaction reads at one pinned snapshot. It records two things about what
//! it read: every leaf, with the version it saw (the page read set, which commit
//! checks first), and every key and key range it looked at, on which leaf (the
//! key read set, examined only for a leaf that changed). Writes are buffered
//! privately, so a command reads its own writes; each remembers the leaf it would
//! land on at the snapshot, a hint that commit re-checks. A blind write reads
//! nothing. `add` and `next_in_sequence` buffer merges that commit applies to the
//! newest value. [`commit`] says why all of this is serializable.

mod commit;
mod footprint;
mod keylock;
mod range;

pub(crate) use commit::{commit, Conflict, Log, Outcome};
pub use footprint::Footprint;
pub(crate) use keylock::{point, start_key, Holding, KeyLocks, Locking, Owner, WaitError};
pub use range::TxRange;

use crate::error::{Error, Result};
use crate::options::MAX_KEY_LEN;
use crate::store::{PageId, PagePtr, PageRead, PinSlot, Store, Value};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, ControlFlow, RangeBounds};

/// The position of a commit in the one total order of commits; the first commit is 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

/// The bounds of every key that starts with `prefix`: `[prefix, successor)`, the
/// successor being the prefix with trailing 0xFF bytes dropped and its last byte
/// raised by one; a prefix of 0xFF bytes only (or the empty one) has no end.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> Result<KeyBounds> {
    check_key(prefix)?;
    let hi = match prefix.iter().rposition(|&b| b != 0xFF) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            Bound::Excluded(end)
        }
        None => Bound::Unbounded,
    };
    Ok((Bound::Included(prefix.to_vec()), hi))
}

/// What a buffered write does to its key at commit.
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    Put(Vec<u8>),
    Delete,
    /// Adds to the newest value (an `i64` counter; missing is 0). Kept wide so
    /// that deltas summed inside one command cannot overflow before the base is known.
    Add(i128),
    /// Raises the newest value (a `u64` sequence; missing is 0) to at least this.
    AtLeast(u64),
}

impl Pending {
    /// Whether the value is only known at commit, against the newest version.
    pub(crate) fn is_merge(&self) -> bool {
        matches!(self, Pending::Add(_) | Pending::AtLeast(_))
    }
}

/// A buffered write: what it does, and the leaf it lands on at the snapshot with
/// that leaf's version stamp (a hint: commit re-checks where the key lives).
pub(crate) struct Write {
    pub op: Pending,
    pub leaf: PageId,
    pub stamp: u64,
}

/// A key read at the snapshot (present or absent), the leaf version it was read
/// in, and where its bytes are in `ReadSet::key_bytes`.
pub(crate) struct PointRead {
    pub page: PageId,
    pub version: PagePtr,
    at: u32,
    len: u32,
}

/// A key range a scan looked at (gaps included), and the leaves it read:
/// `ReadSet::pages[from..to]` (`to` is `usize::MAX` until the scan is dropped).
pub(crate) struct RangeRead {
    pub lo: Bound<Vec<u8>>,
    pub hi: Bound<Vec<u8>>,
    pub from: usize,
    pub to: usize,
}

/// Everything a transaction read: leaves (for the page check) and keys and ranges
/// (for the key check of a leaf that changed).
#[derive(Default)]
pub(crate) struct ReadSet {
    pub pages: Vec<PageRead>,
    /// Inline for the few keys most commands read.
    pub points: SmallVec<[PointRead; 2]>,
    key_bytes: SmallVec<[u8; 64]>,
    pub ranges: Vec<RangeRead>,
}

impl ReadSet {
    fn point(&mut self, page: PageRead, key: &[u8]) {
        self.pages.push(page);
        let at = self.key_bytes.len() as u32;
        self.key_bytes.extend_from_slice(key);
        self.points.push(PointRead {
            page: page.id,
            version: page.version,
            at,
            len: key.len() as u32,
        });
    }

    pub(crate) fn key(&self, p: &PointRead) -> &[u8] {
        &self.key_bytes[p.at as usize..(p.at + p.len) as usize]
    }
}

/// A counter's value: 8 bytes, little-endian.
fn counter(key: &[u8], v: &[u8]) -> Result<[u8; 8]> {
    v.try_into().map_err(|_| Error::NotACounter {
        key: key.to_vec(),
        len: v.len(),
    })
}

/// `base + delta` as a stored `i64` counter.
pub(crate) fn add_to(key: &[u8], base: Option<&[u8]>, delta: i128) -> Result<[u8; 8]> {
    let base = match base {
        Some(v) => i64::from_le_bytes(counter(key, v)?),
        None => 0,
    };
    i64::try_from(i128::from(base) + delta)
        .map(i64::to_le_bytes)
        .map_err(|_| Error::CounterOverflow { key: key.to_vec() })
}

/// `max(base, floor)` as a stored `u64` sequence value.
pub(crate) fn raise_to(key: &[u8], base: Option<&[u8]>, floor: u64) -> Result<[u8; 8]> {
    let base = match base {
        Some(v) => u64::from_le_bytes(counter(key, v)?),
        None => 0,
    };
    Ok(base.max(floor).to_le_bytes())
}

/// The view a command works through: reads at its snapshot, buffered writes.
///
/// Every method returns [`Result`], so `?` works inside a command.
pub struct Tx<'e> {
    store: &'e Store,
    pin: PinSlot,
    at: u64,
    reads: ReadSet,
    writes: BTreeMap<Vec<u8>, Write>,
    /// The leaf of the last lookup: a write to a key inside its key span lands
    /// there, without descending the tree again (read-modify-write).
    last_leaf: Option<(PageId, PagePtr)>,
    /// For an escalated command: the lock table it locks each key in before use.
    locking: Option<Locking<'e>>,
}

impl<'e> Tx<'e> {
    pub(crate) fn begin(store: &'e Store) -> Tx<'e> {
        Tx::begin_with(store, None)
    }

    /// A transaction that locks every key and range before it touches it.
    pub(crate) fn begin_with(store: &'e Store, locking: Option<Locking<'e>>) -> Tx<'e> {
        let (pin, at) = store.pin();
        Tx {
            store,
            pin,
            at,
            reads: ReadSet::default(),
            writes: BTreeMap::new(),
            last_leaf: None,
            locking,
        }
    }

    /// Locks `key` first, for an escalated command.
    fn lock_key(&mut self, key: &[u8]) -> Result<()> {
        if self.locking.is_none() {
            return Ok(());
        }
        self.lock_span(point(key))
    }

    fn lock_span(&mut self, span: KeyBounds) -> Result<()> {
        let Some(l) = &self.locking else {
            return Ok(());
        };
        l.lock(span)?;
        if self.reads.pages.is_empty() && self.writes.is_empty() {
            // Nothing read yet: read from here on at a snapshot taken after the
            // lock, which includes whatever the previous holder committed.
            self.store.unpin(&self.pin);
            (self.pin, self.at) = self.store.pin();
            self.last_leaf = None;
        }
        Ok(())
    }

    /// Every key and range this transaction read or wrote: an escalated command's
    /// lock list for its next attempt.
    pub(crate) fn footprint(&self) -> Vec<KeyBounds> {
        let mut out: Vec<KeyBounds> = self
            .reads
            .points
            .iter()
            .map(|p| point(self.reads.key(p)))
            .chain(self.writes.keys().map(|k| point(k)))
            .chain(
                self.reads
                    .ranges
                    .iter()
                    .map(|r| (r.lo.clone(), r.hi.clone())),
            )
            .collect();
        out.sort_by(|a, b| keylock::start_key(a).cmp(&keylock::start_key(b)));
        out.dedup();
        out
    }

    /// The commit id of the snapshot this transaction reads.
    pub fn snapshot_id(&self) -> CommitId {
        CommitId(self.at)
    }

    /// The value of `key`, including this transaction's own writes. The key joins
    /// the read set: the command conflicts if another commit changes it first.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        check_key(key)?;
        self.lock_key(key)?;
        if self.writes.contains_key(key) {
            return Ok(self.materialize(key)?.map(Value::from));
        }
        Ok(self.read(key))
    }

    /// Sets `key` to `value` when the command commits. A write of a key the command
    /// did not read conflicts with nothing.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        let max = self.store.max_value_len();
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        self.lock_key(key)?;
        self.buffer(key, Pending::Put(value.to_vec()));
        Ok(())
    }

    /// Removes `key` when the command commits; returns whether it existed (which
    /// reads it).
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        self.lock_key(key)?;
        let existed = if self.writes.contains_key(key) {
            self.materialize(key)?.is_some()
        } else {
            self.read(key).is_some()
        };
        self.buffer(key, Pending::Delete);
        Ok(existed)
    }

    /// Adds `delta` to the counter under `key` when the command commits: an `i64`
    /// stored as 8 bytes little-endian, a missing key counting as 0.
    ///
    /// The addition is merged at commit against the newest value, so commands
    /// adding to one counter never conflict over it, however hot it is. The
    /// command does not read the counter by adding to it; a `get` of it (before
    /// or after) is an ordinary read, and conflicts if another commit changes it.
    /// A value there that is not 8 bytes is [`Error::NotACounter`], and a sum
    /// outside `i64` is [`Error::CounterOverflow`]; either fails the command with
    /// nothing written.
    pub fn add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        check_key(key)?;
        self.lock_key(key)?;
        let delta = i128::from(delta);
        let Some(w) = self.writes.get_mut(key) else {
            self.buffer(key, Pending::Add(delta));
            return Ok(());
        };
        match &mut w.op {
            Pending::Add(d) => *d += delta,
            Pending::Put(v) => *v = add_to(key, Some(v), delta)?.to_vec(),
            Pending::Delete => w.op = Pending::Put(add_to(key, None, delta)?.to_vec()),
            Pending::AtLeast(_) => {
                let now = self.materialize(key)?;
                let v = add_to(key, now.as_deref(), delta)?;
                self.buffer(key, Pending::Put(v.to_vec()));
            }
        }
        Ok(())
    }

    /// The next id of the sequence stored under `key` (ids start at 1).
    ///
    /// Ids are unique and increasing for the life of the database and handing
    /// one out conflicts with nothing: the id is taken at once from an in-memory
    /// counter, not read from the snapshot, and the commit raises the stored value
    /// (a `u64`, 8 bytes little-endian) past it, merged against the newest value.
    /// As with PostgreSQL sequences, the ids of a command that aborts, fails or
    /// re-runs after a conflict are not handed out again, so committed ids can
    /// have gaps; after a crash the ids of commands that never committed may be
    /// handed out again (nothing that committed used them). A command that `get`s
    /// the key reads it as any other key.
    pub fn next_in_sequence(&mut self, key: &[u8]) -> Result<u64> {
        check_key(key)?;
        self.lock_key(key)?;
        let floor = match self.writes.get(key).map(|w| &w.op) {
            Some(Pending::Put(v)) => u64::from_le_bytes(counter(key, v)?),
            Some(Pending::Delete) => 0,
            Some(Pending::AtLeast(n)) => *n,
            Some(Pending::Add(_)) => {
                let v = self.materialize(key)?;
                self.buffer(key, Pending::Put(v.clone().unwrap_or_default()));
                match v {
                    Some(v) => u64::from_le_bytes(counter(key, &v)?),
                    None => 0,
                }
            }
            // The stored value only bounds the ids from below: read without
            // joining the read set.
            None => match self.store.get(key, self.at, |_, _| {}) {
                Some(v) => u64::from_le_bytes(counter(key, &v)?),
                None => 0,
            },
        };
        let id = self.store.sequences.take(key, floor)?;
        let after = id + 1; // `take` checked it
        match self.writes.get_mut(key).map(|w| &mut w.op) {
            Some(Pending::Put(v)) => *v = raise_to(key, Some(v), after)?.to_vec(),
            Some(op @ Pending::Delete) => *op = Pending::Put(after.to_le_bytes().to_vec()),
            Some(Pending::AtLeast(n)) => *n = (*n).max(after),
            Some(Pending::Add(_)) => unreachable!("materialized above"),
            None => self.buffer(key, Pending::AtLeast(after)),
        }
        Ok(id)
    }

    /// Every key and value in `range`, in key order, this transaction's writes
    /// included; `.rev()` walks it backwards. The range joins the read set, gaps
    /// included: a concurrent insert into the part of it the scan looked at is a
    /// conflict (no phantoms); an insert beside it is not.
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&mut self, range: R) -> TxRange<'_> {
        match bounds_of(&range) {
            Ok((lo, hi)) => self.range_of(lo, hi),
            Err(e) => TxRange::failed(e),
        }
    }

    /// Every key that starts with `prefix`, in key order, this transaction's
    /// writes included; `.rev()` walks it backwards. This is the range
    /// `[prefix, successor(prefix))` (unbounded above for a prefix of 0xFF bytes
    /// only; the empty prefix is every key), and it joins the read set as
    /// [`Tx::range`] does: a concurrent insert or delete of a key under `prefix`
    /// that the scan looked at is a conflict, a change outside it is not.
    ///
    /// ```
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| {
    ///     for k in [&b"user:1"[..], b"user:2", b"users", b"v"] { tx.put(k, b"")?; }
    ///     Ok(())
    /// })?;
    /// let keys = engine.run("list", |tx| {
    ///     tx.prefix(b"user:").map(|r| r.map(|(k, _)| k)).collect::<Result<Vec<_>, _>>()
    /// })?;
    /// assert_eq!(keys, vec![b"user:1".to_vec(), b"user:2".to_vec()]);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn prefix(&mut self, prefix: &[u8]) -> TxRange<'_> {
        match prefix_bounds(prefix) {
            Ok((lo, hi)) => self.range_of(lo, hi),
            Err(e) => TxRange::failed(e),
        }
    }

    /// Calls `f` with every key and value in `range`, in key order, this
    /// transaction's writes included, until `f` returns `Break`; returns that
    /// `Break`, or `Continue` once the range is exhausted.
    ///
    /// Cost: no allocation per item. Keys and inline values are borrowed from the
    /// leaf page the snapshot sees, buffered writes from the write buffer; a value
    /// stored in an overflow chain (larger than fits in a leaf) is assembled into
    /// one buffer that the scan reuses, so only the largest such value costs an
    /// allocation. The slices are valid only during the call (copy what you keep).
    /// [`Tx::range`] allocates a key and a value per item instead.
    ///
    /// Phantom protection is that of [`Tx::range`]: the whole range is recorded
    /// in the read set when the scan starts, and narrowed when it returns to the
    /// part looked at (up to the key where `f` broke off).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [b"a", b"b", b"c"] { tx.put(k, b"1")?; } Ok(()) })?;
    /// let first_two = engine.run("scan", |tx| {
    ///     let mut seen = Vec::new();
    ///     tx.scan(.., |k, _v| {
    ///         seen.push(k.to_vec());
    ///         if seen.len() == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    ///     })?;
    ///     Ok(seen)
    /// })?;
    /// assert_eq!(first_two, vec![b"a".to_vec(), b"b".to_vec()]);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan<'k, R, B, F>(&mut self, range: R, f: F) -> Result<ControlFlow<B>>
    where
        R: RangeBounds<&'k [u8]>,
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.range(range).visit(true, f)
    }

    /// [`Tx::scan`] in reverse key order.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [b"a", b"b", b"c"] { tx.put(k, b"1")?; } Ok(()) })?;
    /// let last = engine.run("last", |tx| {
    ///     let flow = tx.scan_rev(.., |k, _| ControlFlow::Break(k.to_vec()))?;
    ///     Ok(flow.break_value())
    /// })?;
    /// assert_eq!(last, Some(b"c".to_vec()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan_rev<'k, R, B, F>(&mut self, range: R, f: F) -> Result<ControlFlow<B>>
    where
        R: RangeBounds<&'k [u8]>,
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.range(range).visit(false, f)
    }

    /// [`Tx::scan`] over every key that starts with `prefix` (see [`Tx::prefix`]).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [&b"o:1"[..], b"o:2", b"p"] { tx.put(k, b"9")?; } Ok(()) })?;
    /// let total = engine.run("sum", |tx| {
    ///     let mut bytes = 0;
    ///     tx.scan_prefix(b"o:", |_, v| { bytes += v.len(); ControlFlow::<()>::Continue(()) })?;
    ///     Ok(bytes)
    /// })?;
    /// assert_eq!(total, 2);
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan_prefix<B, F>(&mut self, prefix: &[u8], f: F) -> Result<ControlFlow<B>>
    where
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.prefix(prefix).visit(true, f)
    }

    /// [`Tx::scan_prefix`] in reverse key order.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// let engine = shardstone::Engine::in_memory()?;
    /// engine.run("fill", |tx| { for k in [&b"o:1"[..], b"o:2", b"p"] { tx.put(k, b"")?; } Ok(()) })?;
    /// let newest = engine.run("newest", |tx| {
    ///     Ok(tx.scan_prefix_rev(b"o:", |k, _| ControlFlow::Break(k.to_vec()))?.break_value())
    /// })?;
    /// assert_eq!(newest, Some(b"o:2".to_vec()));
    /// # Ok::<(), shardstone::Error>(())
    /// ```
    pub fn scan_prefix_rev<B, F>(&mut self, prefix: &[u8], f: F) -> Result<ControlFlow<B>>
    where
        F: FnMut(&[u8], &[u8]) -> ControlFlow<B>,
    {
        self.prefix(prefix).visit(false, f)
    }

    /// The scan behind [`Tx::range`] and [`Tx::prefix`], over owned bounds.
    fn range_of(&mut self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> TxRange<'_> {
        if self.locking.is_some() {
            if let Err(e) = self.lock_span((lo.clone(), hi.clone())) {
                return TxRange::failed(e);
            }
        }
        // Counters and sequences in the range are read like any other key.
        let merges: Vec<Vec<u8>> = if range::is_empty(&lo, &hi) {
            Vec::new()
        } else {
            self.writes
                .range::<Vec<u8>, _>((lo.clone(), hi.clone()))
                .filter(|(_, w)| w.op.is_merge())
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in merges {
            match self.materialize(&key) {
                Ok(v) => self.buffer(&key, v.map_or(Pending::Delete, Pending::Put)),
                Err(e) => return TxRange::failed(e),
            }
        }
        TxRange::new(
            self.store,
            self.at,
            lo,
            hi,
            &self.writes,
            &mut self.reads.pages,
            &mut self.reads.ranges,
        )
    }

    /// Reads `key` at the snapshot; the key joins the read set.
    fn read(&mut self, key: &[u8]) -> Option<Value> {
        let (id, v) = self.store.descend(key, self.at);
        self.last_leaf = Some((id, v));
        // SAFETY: the version is reachable from our pinned snapshot.
        let page = unsafe { self.store.page(v) };
        self.reads.point(
            PageRead {
                id,
                stamp: page.stamp(),
                version: v,
            },
            key,
        );
        page.leaf_search(key)
            .ok()
            .map(|i| self.store.value(page.leaf_val(i)))
    }

    /// The value `key` has in this transaction, a buffered write applied; a merge
    /// reads the snapshot's value.
    fn materialize(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let op = match self.writes.get(key) {
            Some(w) => w.op.clone(),
            None => return Ok(self.read(key).map(Value::into_vec)),
        };
        Ok(match op {
            Pending::Put(v) => Some(v),
            Pending::Delete => None,
            Pending::Add(d) => {
                let base = self.read(key);
                Some(add_to(key, base.as_deref(), d)?.to_vec())
            }
            Pending::AtLeast(n) => {
                let base = self.read(key);
                Some(raise_to(key, base.as_deref(), n)?.to_vec())
            }
        })
    }

    /// Buffers `op` for `key`, replacing what was buffered.
    fn buffer(&mut self, key: &[u8], op: Pending) {
        if let Some(w) = self.writes.get_mut(key) {
            w.op = op;
            return;
        }
        let (leaf, stamp) = self.landing_leaf(key);
        self.writes.insert(key.to_vec(), Write { op, leaf, stamp });
    }

    /// The leaf `key` lands on at this snapshot, and its version's stamp.
    fn landing_leaf(&mut self, key: &[u8]) -> (PageId, u64) {
        if let Some((id, v)) = self.last_leaf {
            // SAFETY: reachable from our pinned snapshot.
            let page = unsafe { self.store.page(v) };
            let n = page.count();
            if n > 0 && page.leaf_key(0) <= key && key <= page.leaf_key(n - 1) {
                return (id, page.stamp());
            }
        }
        let (id, v) = self.store.descend(key, self.at);
        self.last_leaf = Some((id, v));
        // SAFETY: the version is reachable from our pinned snapshot.
        (id, unsafe { self.store.page(v) }.stamp())
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
            .field("pages_read", &self.reads.pages.len())
            .field("keys_read", &self.reads.points.len())
            .field("ranges_read", &self.reads.ranges.len())
            .field("writes", &self.writes.len())
            .finish()
    }
}
