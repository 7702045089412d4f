//! Commit: lock, validate, take a commit id, install.
//!
//! The protocol, for a transaction with snapshot `s`:
//! 1. lock every page of the read set, in page-id order: shared for pages only
//!    read, exclusive for the leaves its writes land on (ordered locking: no
//!    deadlock between committers);
//! 2. validate: each page's newest version is still the one seen at `s`; if not,
//!    the commit is a conflict and nothing was taken (no commit id, no memory);
//! 3. plan the new versions (allocation happens here, so it may fail cleanly);
//! 4. take the commit id `c` — while every lock is still held — and append the
//!    commit's journal record to the shard of this CPU;
//! 5. install the versions stamped `c`, release the locks;
//! 6. wait until the record is as durable as the journal's level asks, then
//!    publish `c`: a commit becomes visible only once it is durable, so nothing
//!    can read (and build on) a commit a crash would take back.
//!
//! Why this is serializable in commit-id order: from step 1 to step 5 no other
//! commit can change a page this one read or wrote, so at the instant `c` is taken
//! everything it read is current, as if it ran alone at that instant; two commits
//! that touch a common page take their ids in the order they held its lock. The
//! leaves of the read set cover every key the command looked at, including the
//! gaps a scan saw empty, so the page check also excludes phantoms.
//!
//! Commits on disjoint pages share no lock and no cache line except the commit-id
//! counter, so they validate and install in parallel.

use super::Tx;
use crate::error::Result;
use crate::journal::{Frame, Journal, Ticket};
use crate::store::{Kind, LeafWrites, PageId, Store, ValRef};
use std::collections::BTreeMap;

/// What happened to a commit attempt.
pub(crate) enum Outcome {
    /// Installed; `restructured` when it split, merged or removed pages.
    Committed { restructured: bool },
    /// Nothing to write: the snapshot was its serialization point.
    ReadOnly,
    /// A page read at the snapshot had changed; nothing was installed.
    Conflict(Conflict),
}

/// The pages that failed validation, for telemetry and for waiting before a retry.
pub(crate) struct Conflict {
    /// Every page of the read set that changed (up to `MAX_REPORTED`), so that the
    /// hot-page table does not blame only the lowest page id.
    pub pages: Vec<ChangedPage>,
    /// Newest stamp among them: a retry must see at least this commit.
    pub newer: u64,
}

/// One page that changed under a transaction.
pub(crate) struct ChangedPage {
    pub page: PageId,
    /// First and last key of the page's newest version (empty for inner/dead pages).
    pub first_key: Vec<u8>,
    pub last_key: Vec<u8>,
}

const MAX_REPORTED: usize = 8;

/// A key and its new value (`None` deletes).
type KeyWrite<'a> = (&'a [u8], Option<ValRef<'a>>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Shared,
    Exclusive,
}

struct Locks<'s> {
    store: &'s Store,
    held: Vec<(PageId, Mode)>,
}

impl Drop for Locks<'_> {
    fn drop(&mut self) {
        for &(id, mode) in &self.held {
            let slot = self.store.slot(id);
            match mode {
                Mode::Shared => slot.unlock_shared(),
                Mode::Exclusive => slot.unlock_exclusive(),
            }
        }
    }
}

/// Where a commit's record goes: into `journal`, as a commit of `command`.
pub(crate) struct Log<'a> {
    pub journal: &'a Journal,
    pub command: &'a str,
    /// A follower applying its leader's record (allowed on a follower).
    pub apply: bool,
}

/// Publishes a taken commit id: by `finish`, or when dropped during a panic (the
/// record still reaches the chain, so neither ids nor the chain have gaps).
struct Publish<'s> {
    store: &'s Store,
    journal: &'s Journal,
    id: u64,
    seen: u64,
    /// Until the frame goes to the chain.
    frame: Option<Frame>,
    done: bool,
}

impl Publish<'_> {
    /// Makes the commit durable per the journal's level, then visible. Returns the
    /// watermark value seen while publishing.
    fn finish(mut self, ticket: Ticket) -> Result<u64> {
        self.done = true;
        if let Some(frame) = self.frame.take() {
            self.journal.hand_to_chain(self.id, frame);
        }
        if let Err(e) = self.journal.wait(ticket) {
            // Not durable: it must never become visible, nor anything after it.
            self.store.clock.halt(self.id);
            return Err(e);
        }
        self.store
            .clock
            .publish(self.id, self.seen)
            .ok_or_else(|| self.journal.halted_error())
    }
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(frame) = self.frame.take() {
                self.journal.hand_to_chain(self.id, frame);
            }
            self.store.clock.publish(self.id, self.seen);
        }
    }
}

/// Overflow chains written for a commit: freed unless the commit installs them
/// (a conflict, an error, or a panic before install).
struct Chains<'s> {
    store: &'s Store,
    heads: Vec<usize>,
    installed: bool,
}

impl Drop for Chains<'_> {
    fn drop(&mut self) {
        if !self.installed {
            for &head in &self.heads {
                self.store.free_overflow(head);
            }
        }
    }
}

/// Validates and installs `tx`, and logs it to `log`. Read-only transactions
/// return at once.
pub(crate) fn commit(mut tx: Tx<'_>, log: Log<'_>) -> Result<Outcome> {
    if tx.is_read_only() {
        return Ok(Outcome::ReadOnly);
    }
    let store = tx.store;
    // The record is encoded before any lock is taken; the commit id is filled in
    // when it is taken.
    let journal = log.journal;
    journal.check_writable(log.apply)?;
    let ops = tx
        .writes
        .iter()
        .map(|(k, w)| (k.as_slice(), w.value.as_deref()));
    let mut frame = Frame::commit(log.command, ops)?;
    // Writes grouped by the leaf they land on; each group stays in key order.
    // Overflow chains for large values are written here, before any lock is taken,
    // so a big value does not hold pages locked while it is copied.
    let mut chains = Chains {
        store,
        heads: Vec::new(),
        installed: false,
    };
    let mut by_leaf: BTreeMap<PageId, Vec<KeyWrite<'_>>> = BTreeMap::new();
    for (key, w) in &tx.writes {
        let value = match &w.value {
            Some(v) => {
                let stored = store.stored_value(key, v)?;
                if let ValRef::Overflow { head, .. } = stored {
                    chains.heads.push(head);
                }
                Some(stored)
            }
            None => None,
        };
        by_leaf
            .entry(w.leaf)
            .or_default()
            .push((key.as_slice(), value));
    }
    tx.reads.sort_unstable();
    tx.reads.dedup();
    debug_assert!(
        tx.reads.windows(2).all(|w| w[0].0 != w[1].0),
        "one version per page in a snapshot"
    );

    let mut locks = Locks {
        store,
        held: Vec::with_capacity(tx.reads.len()),
    };
    for &(id, _) in &tx.reads {
        let mode = if by_leaf.contains_key(&id) {
            Mode::Exclusive
        } else {
            Mode::Shared
        };
        let slot = store.slot(id);
        match mode {
            Mode::Shared => slot.lock_shared(),
            Mode::Exclusive => slot.lock_exclusive(),
        }
        locks.held.push((id, mode));
    }

    let mut edits = Vec::with_capacity(by_leaf.len());
    let mut conflict: Option<Conflict> = None;
    for &(id, seen) in &tx.reads {
        let head = store.slot(id).head();
        // SAFETY: we hold this page's lock; its newest version stays allocated.
        let page = unsafe { store.page(head) };
        // Deliberately wrong under `shardstone_broken = "validation"`, for the loom
        // model to catch: nothing is ever found changed.
        let changed = page.stamp() != seen && !cfg!(shardstone_broken = "validation");
        if changed {
            let c = conflict.get_or_insert_with(|| Conflict {
                pages: Vec::new(),
                newer: 0,
            });
            c.newer = c.newer.max(page.stamp());
            if c.pages.len() < MAX_REPORTED {
                let (first_key, last_key) = if page.kind() == Kind::Leaf && page.count() > 0 {
                    (
                        page.leaf_key(0).to_vec(),
                        page.leaf_key(page.count() - 1).to_vec(),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                c.pages.push(ChangedPage {
                    page: id,
                    first_key,
                    last_key,
                });
            }
            continue;
        }
        if let Some(writes) = by_leaf.remove(&id) {
            edits.push(LeafWrites {
                page: id,
                head,
                writes,
            });
        }
    }
    if let Some(c) = conflict {
        return Ok(Outcome::Conflict(c));
    }
    debug_assert!(by_leaf.is_empty(), "every written leaf is in the read set");

    let held: Vec<PageId> = locks.held.iter().map(|(id, _)| *id).collect();
    let plan = store.plan(&edits, &|id| held.binary_search(&id).is_ok())?;
    let restructured = plan.restructured;
    let durable = store.clock.visible();
    let ticket = journal.append(&mut frame, durable, || store.clock.assign())?;
    let id = ticket.id();
    // Ids have no gaps: once taken, `id` is published even if something below panics.
    let publish = Publish {
        store,
        journal,
        id,
        seen: tx.at,
        frame: Some(frame),
        done: false,
    };
    // Deliberately wrong under `shardstone_broken = "visibility"`, for the loom
    // model to catch: the commit becomes visible before its pages are installed.
    #[cfg(shardstone_broken = "visibility")]
    let seen = publish.finish(ticket)?;
    plan.install(id);
    chains.installed = true;
    drop(locks);
    #[cfg(not(shardstone_broken = "visibility"))]
    let seen = publish.finish(ticket)?;
    // `run` returns only when its commit is visible: a snapshot taken next on this
    // thread sees it (earlier ids may still be installing on other threads).
    journal.signal.notify();
    if !store.clock.wait_visible_from(id, seen) {
        return Err(journal.halted_error());
    }
    store.maybe_collect();
    Ok(Outcome::Committed { restructured })
}
