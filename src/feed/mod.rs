//! The replication feed: every commit after a given id, in exact commit order,
//! history first and then live, to any number of consumers.
//!
//! A record is delivered only once it is visible — every earlier commit is
//! visible too — so a consumer never sees a gap or a reordering (the visible
//! watermark is the publish watermark). Records come from the chain's in-memory
//! window of hashed commits; a consumer further behind reads the journal files
//! (`journal::History`), then rejoins the window. Consumers only read: a slow or
//! paused one falls behind and never holds up a commit.
//!
//! A named consumer holds a retention mark: checkpoints keep the journal from its
//! last `ack` on, up to `Options::retention_limit_bytes`; past that the hold lapses
//! and the consumer gets `Error::Truncated` once what it needs is deleted. The
//! hold also records the chain hash of the acknowledged commit (the feed knows
//! it), so that history can be chained from there whatever the next record's
//! anchor: a held consumer always resumes right after its last `ack`.

mod digest;
mod follower;

pub use digest::StateDigest;
pub(crate) use follower::{apply, apply_point, ApplyPoint};

use crate::error::{Error, Result};
use crate::journal::{BodyView, CommitRecord, History, Hold, Journal, Retained, FRAME_HEADER};
use crate::store::Store;
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};
use crate::txn::CommitId;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What every feed shares with the engine: the consumers, for stats and for
/// pausing by name.
#[derive(Default)]
pub(crate) struct Consumers {
    list: Mutex<Vec<Weak<ControlState>>>,
}

impl Consumers {
    fn register(&self, state: &Arc<ControlState>) {
        let mut list = self.list.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(state));
    }

    fn live(&self) -> Vec<Arc<ControlState>> {
        self.list.lock().iter().filter_map(Weak::upgrade).collect()
    }

    /// Pauses or resumes every attached feed named `name`; false if none is.
    pub(crate) fn set_paused(&self, journal: &Journal, name: &str, paused: bool) -> bool {
        let mut found = false;
        for c in self.live() {
            if c.name.as_deref() == Some(name) {
                c.paused.store(paused, Ordering::SeqCst);
                found = true;
            }
        }
        journal.signal.wake();
        found
    }

    /// Lag of every attached feed, for `Stats::feed`.
    pub(crate) fn stats(&self, store: &Store, journal: &Journal) -> Vec<ConsumerStats> {
        let visible = store.clock.visible();
        let tail = journal.chain().tail.lock();
        let bytes_at = |id: u64| tail.get(id).map(|r| r.total_bytes);
        let span = tail.span();
        let avg = match (span, tail.records.back(), tail.records.front()) {
            (Some((a, b)), Some(back), Some(front)) if b > a => {
                (back.total_bytes - front.total_bytes) / (b - a)
            }
            _ => 0,
        };
        let end = bytes_at(visible);
        self.live()
            .iter()
            .map(|c| {
                let position = c.position.load(Ordering::SeqCst);
                let lag_commits = visible.saturating_sub(position);
                let lag_bytes = match (end, bytes_at(position)) {
                    (Some(e), Some(p)) => e.saturating_sub(p),
                    _ => lag_commits * avg,
                };
                ConsumerStats {
                    name: c.name.clone(),
                    position: CommitId(position),
                    lag_commits,
                    lag_bytes,
                    paused: c.paused.load(Ordering::SeqCst),
                }
            })
            .collect()
    }
}

/// One feed consumer in `Stats::feed`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ConsumerStats {
    /// The name of a named consumer (`Engine::subscribe_as`).
    pub name: Option<String>,
    /// The last commit delivered to it.
    pub position: CommitId,
    /// Visible commits it has not been given yet.
    pub lag_commits: u64,
    /// Record bytes it has not been given yet (estimated from the window's mean
    /// record size when it is behind the in-memory window).
    pub lag_bytes: u64,
    /// Whether it is paused.
    pub paused: bool,
}

struct ControlState {
    name: Option<String>,
    paused: AtomicBool,
    position: AtomicU64,
}

/// Pauses and resumes a [`Feed`] from any thread. A paused feed delivers nothing
/// and keeps its position (and its retention hold); commits go on. The handle
/// does not keep a dropped feed alive: then it does nothing.
#[derive(Clone)]
pub struct FeedControl {
    state: Weak<ControlState>,
    journal: Arc<Journal>,
}

impl FeedControl {
    fn set(&self, paused: bool) {
        if let Some(state) = self.state.upgrade() {
            state.paused.store(paused, Ordering::SeqCst);
            self.journal.signal.wake();
        }
    }

    /// Stops deliveries until `resume`.
    pub fn pause(&self) {
        self.set(true);
    }

    /// Lets deliveries go on from where they stopped.
    pub fn resume(&self) {
        self.set(false);
    }

    /// Whether the feed is paused (false once it is dropped).
    pub fn is_paused(&self) -> bool {
        self.state
            .upgrade()
            .is_some_and(|s| s.paused.load(Ordering::SeqCst))
    }
}

impl std::fmt::Debug for FeedControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedControl")
            .field("name", &self.state.upgrade().and_then(|s| s.name.clone()))
            .field("paused", &self.is_paused())
            .finish()
    }
}

/// Every commit after a starting id, in commit order, with no gaps and no
/// duplicates: history first, then live commits as they become visible.
///
/// As an `Iterator`, `next` blocks for the next commit and returns `None` once the
/// engine is closed and everything visible was delivered. [`Feed::recv_timeout`]
/// and [`Feed::try_next`] wait less.
///
/// ```
/// let engine = shardstone::Engine::in_memory()?;
/// engine.run("a", |tx| tx.put(b"a", b"1"))?;
/// let mut feed = engine.subscribe(0)?;
/// engine.run("b", |tx| tx.put(b"b", b"2"))?;
/// let first = feed.next().unwrap()?;
/// let second = feed.next().unwrap()?;
/// assert_eq!((first.commit_id.get(), second.commit_id.get()), (1, 2));
/// assert_eq!(second.prev_hash, first.hash);
/// assert_eq!(second.hash, engine.last_commit().1);
/// # Ok::<(), shardstone::Error>(())
/// ```
pub struct Feed {
    store: crate::sync::Arc<Store>,
    journal: Arc<Journal>,
    /// The last commit delivered.
    position: u64,
    state: Arc<ControlState>,
    hold: Option<Arc<Hold>>,
    history: Option<History>,
    /// The chain hash of `position`, when known.
    position_hash: Option<crate::journal::ChainHash>,
}

impl Feed {
    pub(crate) fn new(
        store: crate::sync::Arc<Store>,
        journal: Arc<Journal>,
        consumers: &Consumers,
        from: u64,
        name: Option<&str>,
    ) -> Result<Feed> {
        // Checked before anything is registered: a refused call leaves no consumer
        // and does not move a hold. `from <= last` also keeps `from + 1` in range.
        let last = store.clock.visible();
        let needed = match from.checked_add(1) {
            Some(needed) if from <= last => needed,
            _ => {
                return Err(Error::AheadOfLastCommit {
                    requested: CommitId(from),
                    last: CommitId(last),
                })
            }
        };
        // Every visible commit was handed to the chain: this only hashes.
        journal.chain().advance_to(from);
        let position_hash = journal.known_hash(from);
        let hold = name.map(|n| journal.hold(n, needed, position_hash.map(|h| (from, h))));
        let state = Arc::new(ControlState {
            name: name.map(str::to_owned),
            paused: AtomicBool::new(false),
            position: AtomicU64::new(from),
        });
        consumers.register(&state);
        Ok(Feed {
            store,
            state,
            journal,
            position: from,
            hold,
            history: None,
            position_hash,
        })
    }

    /// The last commit delivered (the starting id before the first).
    pub fn position(&self) -> CommitId {
        CommitId(self.position)
    }

    /// A handle that pauses and resumes this feed from another thread.
    pub fn control(&self) -> FeedControl {
        FeedControl {
            state: Arc::downgrade(&self.state),
            journal: self.journal.clone(),
        }
    }

    /// For a named consumer: everything up to `id` is processed, so the journal
    /// before it need not be kept for this consumer any more.
    pub fn ack(&self, id: impl Into<CommitId>) {
        if let Some(hold) = &self.hold {
            let id = id.into().get().min(self.position);
            let hash = match id == self.position {
                true => self.position_hash,
                false => self.journal.known_hash(id),
            };
            hold.ack(id, hash);
        }
    }

    /// The next commit, waiting at most `timeout`; `Ok(None)` if none came (or the
    /// feed is paused, or the engine closed).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<CommitRecord>> {
        self.next_before(Some(Instant::now() + timeout))
    }

    /// The next commit if one is ready now.
    pub fn try_next(&mut self) -> Result<Option<CommitRecord>> {
        self.next_before(Some(Instant::now()))
    }

    /// The next record, waiting until `deadline` (forever for `None`).
    fn next_before(&mut self, deadline: Option<Instant>) -> Result<Option<CommitRecord>> {
        let mut reopened = false;
        let mut extended = false;
        loop {
            let want = self.position.saturating_add(1);
            let visible = self.store.clock.visible();
            // Deliberately wrong under `shardstone_broken = "watermark"`, for the loom
            // model to catch: records are delivered once hashed, before they are
            // visible.
            #[cfg(shardstone_broken = "watermark")]
            let visible = self.journal.chain().head().0.max(visible);
            let paused = self.state.paused.load(Ordering::SeqCst);
            if want > visible || paused {
                if self.journal.signal.is_closed() {
                    return Ok(None);
                }
                self.journal.check_writable(true).or_else(|e| match e {
                    Error::ReadOnly => Ok(()),
                    e => Err(e),
                })?;
                let wait = match deadline {
                    None => Duration::from_millis(100),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            return Ok(None);
                        }
                        d - now
                    }
                };
                let (store, state) = (&self.store, &self.state);
                if paused {
                    // Commits do not wake a paused feed: it would cost each of them
                    // a wake-up for nothing.
                    self.journal
                        .signal
                        .wait_unpaused(wait, || !state.paused.load(Ordering::SeqCst));
                } else {
                    self.journal
                        .signal
                        .wait(wait, || store.clock.visible() >= want);
                }
                continue;
            }
            if self.history.is_none() {
                if let Some(r) = self.window_record(want, visible) {
                    return self.deliver(r).map(Some);
                }
                if reopened {
                    return Err(self.truncated());
                }
                match self.journal.history(self.position, visible)? {
                    Some(h) => {
                        self.history = Some(h);
                        reopened = true;
                    }
                    None => return Err(self.truncated()),
                }
            }
            let history = self.history.as_mut().expect("opened above");
            match history.next() {
                Some(r) if r.id == want => return self.deliver(r).map(Some),
                Some(r) => {
                    self.history = None;
                    let oldest = self.oldest_in_files(r.id, visible)?;
                    return Err(self.truncated_at(oldest));
                }
                // The files are read up to what was visible when they were opened
                // or last extended: back in the window, or read on.
                None => {
                    if let Some(r) = self.window_record(want, visible) {
                        self.history = None;
                        return self.deliver(r).map(Some);
                    }
                    if extended {
                        self.history = None;
                        return Err(self.truncated());
                    }
                    if let Some(h) = self.history.as_mut() {
                        h.extend(visible)?;
                    }
                    extended = true;
                }
            }
        }
    }

    /// Commit `want` from the in-memory window, hashing up to `visible` first if
    /// the window does not reach it yet.
    fn window_record(&self, want: u64, visible: u64) -> Option<Retained> {
        let chain = self.journal.chain();
        {
            let tail = chain.tail.lock();
            if let Some(r) = tail.get(want) {
                return Some(r.clone());
            }
            if tail.span().is_some_and(|(first, _)| want < first) {
                return None;
            }
        }
        chain.advance_to(visible);
        chain.tail.lock().get(want).cloned()
    }

    /// The first commit from which the journal files hold every commit up to
    /// `visible`: the start of their last run of consecutive commits, at or
    /// after `first` (the first they can give). Segments are deleted shard by
    /// shard, so below it one shard's commits may be gone and another's kept.
    fn oldest_in_files(&self, first: u64, visible: u64) -> Result<u64> {
        let Some(mut history) = self.journal.history(first.saturating_sub(1), visible)? else {
            return Ok(first);
        };
        let (mut start, mut prev) = (first, first.saturating_sub(1));
        while let Some(r) = history.next() {
            if Some(r.id) != prev.checked_add(1) {
                start = r.id;
            }
            prev = r.id;
        }
        Ok(start)
    }

    fn truncated(&self) -> Error {
        let oldest = {
            let tail = self.journal.chain().tail.lock();
            tail.span().map_or(
                self.store.clock.visible().saturating_add(1),
                |(first, _)| first,
            )
        };
        self.truncated_at(oldest)
    }

    /// `Error::Truncated`: the commits this feed needs next are gone. Traced,
    /// since a consumer that falls this far behind needs an operator.
    fn truncated_at(&self, oldest: u64) -> Error {
        tracing::warn!(
            target: "shardstone",
            consumer = self.state.name.as_deref(),
            position = self.position,
            oldest_available = oldest,
            "feed consumer truncated: the journal it needs next is gone"
        );
        Error::Truncated {
            oldest_available: CommitId(oldest),
        }
    }

    fn deliver(&mut self, r: Retained) -> Result<CommitRecord> {
        let body = BodyView::parse(&r.frame[FRAME_HEADER..]).ok_or(Error::InvalidRecord {
            commit_id: Some(CommitId(r.id)),
            reason: "the journal record does not decode".to_owned(),
        })?;
        self.position = r.id;
        self.position_hash = Some(r.hash);
        self.state.position.store(r.id, Ordering::SeqCst);
        Ok(body.to_record(r.prev_hash, r.hash))
    }
}

impl Iterator for Feed {
    type Item = Result<CommitRecord>;

    /// Blocks for the next commit; `None` once the engine is closed and every
    /// visible commit was delivered.
    fn next(&mut self) -> Option<Result<CommitRecord>> {
        loop {
            match self.next_before(None) {
                Ok(Some(r)) => return Some(Ok(r)),
                Err(e) => return Some(Err(e)),
                Ok(None) => {
                    if self.journal.signal.is_closed()
                        && self.position >= self.store.clock.visible()
                    {
                        return None;
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("position", &self.position)
            .field("name", &self.state.name)
            .finish()
    }
}
