//! Segments made ready ahead of need, off the commit path.
//!
//! A segment roll used to create its file, reserve its space (`posix_fallocate`
//! of a whole segment), fsync the directory and map it, all under the shard lock
//! while the committer that needed the room still held its page locks; and each
//! append faulted in the next chunk of the mapping (`MADV_POPULATE_WRITE`) under
//! the same lock. Every commit on those pages or that shard waited on the disk.
//!
//! Now a background thread per NUMA domain that has shards (a [`Preparer`]) does
//! that work: it keeps one *spare* per shard (created under the segment's final
//! name with the next sequence number, allocated, mapped and bound to the shard's
//! node, its first chunk faulted in, the directory fsynced) and faults in the
//! current segment's mapping ahead of the write position when a committer asks
//! ([`Slot::populate`]: a flag and a wake-up, no system call in the common case).
//! A roll takes the spare and writes its header into memory already mapped: a
//! pointer swap. Only when no spare is ready (the thread is behind, blocked, or
//! could not prepare one: a full disk) does the roll prepare a segment inline, as
//! it always did, with the same typed errors; it never waits for the thread.
//!
//! Invariants:
//! - sequence numbers are taken under the slot's lock, in increasing order; a
//!   segment becomes current only with a number above every current one before
//!   it, so a shard's frames stay in commit order across its files. A spare
//!   finished after an inline roll took a higher number is stale: the thread
//!   removes it and prepares another;
//! - a spare has no header and holds only zeros until a roll makes it current,
//!   so at a crash it is what recovery already calls an unwritten segment
//!   ("created, never written"): removed, never reported, holding nothing. A
//!   clean close removes spares itself;
//! - the thread never writes a mapped byte: it only advises (faults in) ranges of
//!   mappings it shares through an `Arc`, so a roll may retire a mapping while
//!   the thread still faults it in.
//!
//! Placement: the page cache of a file follows the task that faults it in, not
//! the mapping's `mbind` policy (which tmpfs honours). When the layout spans
//! several domains, each thread serves the shards of one domain and sets its
//! own memory policy to that domain's node, so the pages land where the
//! shard's committers (who faulted them in before) run.
//!
//! Whether the thread runs at all is the `Io`'s choice ([`Io::prepares_ahead`]):
//! test I/O that counts operations in order keeps them on the committing thread.

use super::io::Io;
use super::shard::segment_name;
use crate::error::{Error, Result};
use crate::numa::Layout;
use crate::sync::real;
use memmap2::MmapRaw;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How much of a mapping is faulted in at a time: one `madvise` per chunk
/// instead of one page fault per 4 KiB on the commit path.
pub(crate) const POPULATE_CHUNK: usize = 1 << 20;

/// A segment file ready to be made current: created, its space reserved, its
/// directory entry durable, mapped and bound; only zeros in it (no header).
pub(crate) struct Prepared {
    pub seq: u64,
    pub path: PathBuf,
    pub file: File,
    pub map: Arc<MmapRaw>,
    /// The mapping is faulted in up to here.
    pub populated: usize,
}

/// What preparing a segment of one shard needs.
pub(crate) struct Spec {
    pub index: usize,
    pub dir: PathBuf,
    pub io: Arc<dyn Io>,
    /// The NUMA layout and the shard's domain in it.
    pub home: (Arc<Layout>, usize),
}

impl Spec {
    fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    }

    /// Creates segment `seq` with `cap` bytes reserved, maps it, binds it to the
    /// shard's node, faults in its first chunk and makes its directory entry
    /// durable. On failure the file may remain; it holds only zeros, which
    /// recovery removes (and the next roll with its number replaces).
    pub(crate) fn prepare(&self, seq: u64, cap: u64) -> Result<Prepared> {
        let path = self.dir.join(segment_name(self.index, seq));
        let file = self
            .io
            .create(&path)
            .map_err(Self::io_err("create", &path))?;
        self.io
            .allocate(&file, cap)
            .map_err(Self::io_err("allocate", &path))?;
        let map = map_segment(&file, &path)?;
        // On tmpfs the binding places the pages; on disk file systems the page
        // cache follows the faulting thread (see the module docs).
        let (layout, domain) = &self.home;
        layout.bind_to_domain(map.as_mut_ptr(), map.len(), *domain);
        let populated = populate(&map, 0, POPULATE_CHUNK);
        self.io
            .sync_dir(&self.dir)
            .map_err(Self::io_err("fsync directory", &self.dir))?;
        Ok(Prepared {
            seq,
            path,
            file,
            map: Arc::new(map),
            populated,
        })
    }

    /// Grows a spare to `cap` bytes, for a record larger than a segment: reserves
    /// the space and maps the file again.
    pub(crate) fn grow(&self, p: Prepared, cap: u64) -> Result<Prepared> {
        self.io
            .allocate(&p.file, cap)
            .map_err(Self::io_err("allocate", &p.path))?;
        let map = map_segment(&p.file, &p.path)?;
        let (layout, domain) = &self.home;
        layout.bind_to_domain(map.as_mut_ptr(), map.len(), *domain);
        let populated = populate(&map, 0, POPULATE_CHUNK);
        Ok(Prepared {
            map: Arc::new(map),
            populated,
            ..p
        })
    }
}

fn map_segment(file: &File, path: &Path) -> Result<MmapRaw> {
    // `MmapRaw::map_raw` maps shared and writable; the engine holds the
    // directory's exclusive lock, so no other process maps or writes this file,
    // and it is never truncated while a roll or this module may still write or
    // advise its mapping (a clean close stops the threads first).
    MmapRaw::map_raw(file).map_err(|source| Error::Io {
        op: "mmap",
        path: path.to_owned(),
        source,
    })
}

/// Faults in `map[from..to]` (clamped); returns where the faulted range ends.
/// Best effort: before Linux 5.14 the advice fails and pages fault in on first
/// write instead, which is only slower.
pub(crate) fn populate(map: &MmapRaw, from: usize, to: usize) -> usize {
    let to = to.min(map.len());
    if to > from {
        let _ = map.advise_range(memmap2::Advice::PopulateWrite, from, to - from);
    }
    to.max(from)
}

/// Where a shard's spare stands.
enum Spare {
    /// None ready; the thread is to prepare one.
    Wanted,
    /// The thread is preparing one (its number is taken).
    Preparing,
    Ready(Prepared),
    /// The last try failed (a full disk); tried again after the next roll.
    Failed,
    /// No thread: every roll prepares inline.
    Off,
}

/// The current segment's mapping and how far the thread is asked to fault it in.
struct Populating {
    map: Arc<MmapRaw>,
    done: usize,
    want: usize,
}

struct SlotState {
    spare: Spare,
    /// The next segment number to take.
    next_seq: u64,
    /// The number of the newest segment made current: a spare below it is stale.
    current: Option<u64>,
    populating: Option<Populating>,
    /// Spares an inline roll went past: to be removed by the thread.
    stale: Vec<Prepared>,
}

/// One shard's side of the preparation: its spare, its segment numbers and the
/// population requests for its current segment. Shared by the shard (under its
/// group-commit lock) and its domain's thread; its own lock is held only for
/// field updates, never across I/O.
pub(crate) struct Slot {
    pub(crate) spec: Spec,
    segment_size: u64,
    state: real::Mutex<SlotState>,
    /// The thread that serves this shard (`None`: inline preparation only).
    worker: real::Mutex<Option<Arc<Worker>>>,
}

impl Slot {
    pub(crate) fn new(spec: Spec, next_seq: u64, segment_size: u64) -> Slot {
        Slot {
            spec,
            segment_size,
            state: real::Mutex::new(SlotState {
                spare: Spare::Off,
                next_seq,
                current: None,
                populating: None,
                stale: Vec::new(),
            }),
            worker: real::Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Every update under it is a single assignment: a panic elsewhere leaves
        // it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self) -> Option<Arc<Worker>> {
        self.worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn poke(&self) {
        if let Some(w) = self.worker() {
            w.poke();
        }
    }

    /// Whether a thread serves this slot (population is then its job).
    pub(crate) fn has_worker(&self) -> bool {
        self.worker().is_some()
    }

    /// Takes the ready spare, if any, and asks for the next one. After a failed
    /// try, asks again (once per roll).
    pub(crate) fn take_spare(&self) -> Option<Prepared> {
        let mut st = self.state();
        let taken = match std::mem::replace(&mut st.spare, Spare::Wanted) {
            Spare::Ready(p) => Some(p),
            Spare::Failed | Spare::Wanted => None,
            other @ (Spare::Preparing | Spare::Off) => {
                st.spare = other;
                return None;
            }
        };
        drop(st);
        self.poke();
        taken
    }

    /// Takes the next segment number, for a segment prepared inline.
    pub(crate) fn take_seq(&self) -> u64 {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        seq
    }

    /// Returns `seq`, taken by a roll that failed, if no number was taken
    /// since: the next roll reuses the name (and replaces the file).
    /// False if a later number was taken meanwhile (by the thread).
    pub(crate) fn give_back_seq(&self, seq: u64) -> bool {
        let mut st = self.state();
        let back = st.next_seq == seq + 1;
        if back {
            st.next_seq = seq;
        }
        back
    }

    /// Records that segment `seq`, mapped at `map` and faulted in up to
    /// `populated`, is now the shard's current one.
    pub(crate) fn made_current(&self, seq: u64, map: &Arc<MmapRaw>, populated: usize) {
        let mut st = self.state();
        debug_assert!(st.current.is_none_or(|c| c < seq), "segments in order");
        st.current = Some(seq);
        if matches!(&st.spare, Spare::Ready(p) if p.seq < seq) {
            // Finished while an inline roll prepared this one: out of order now.
            if let Spare::Ready(p) = std::mem::replace(&mut st.spare, Spare::Wanted) {
                st.stale.push(p);
            }
            drop(st);
            self.poke();
            st = self.state();
        }
        st.populating = Some(Populating {
            map: map.clone(),
            done: populated,
            want: populated,
        });
    }

    /// Asks the thread to fault the current segment in up to `want`.
    pub(crate) fn populate(&self, want: usize) {
        {
            let mut st = self.state();
            let Some(p) = st.populating.as_mut() else {
                return;
            };
            if want <= p.want {
                return;
            }
            p.want = want;
        }
        self.poke();
    }

    /// Forgets the current segment (closing): the thread holds no mapping of it.
    pub(crate) fn clear_current(&self) {
        self.state().populating = None;
    }

    /// Takes the spare and any stale ones for removal (closing; the thread is
    /// stopped).
    pub(crate) fn take_unused(&self) -> Vec<Prepared> {
        let mut st = self.state();
        let mut unused = std::mem::take(&mut st.stale);
        if let Spare::Ready(p) = std::mem::replace(&mut st.spare, Spare::Off) {
            unused.push(p);
        }
        unused
    }

    /// The thread's work on this slot, one step: faults in a requested range,
    /// else prepares a wanted spare. Returns whether it did anything.
    fn work(&self, stop: &AtomicBool) -> bool {
        let job = {
            let mut st = self.state();
            if let Some(p) = st.stale.pop() {
                Job::Discard(p)
            } else if let Some(p) = st.populating.as_mut().filter(|p| p.done < p.want) {
                Job::Populate(p.map.clone(), p.done, p.want)
            } else if matches!(st.spare, Spare::Wanted) {
                st.spare = Spare::Preparing;
                let seq = st.next_seq;
                st.next_seq += 1;
                Job::Prepare(seq)
            } else {
                return false;
            }
        };
        match job {
            Job::Discard(p) => {
                let seq = p.seq;
                if let Err(e) = self.discard(p) {
                    tracing::warn!(target: "shardstone", shard = self.spec.index, seq, error = %e,
                        "removing an unused journal segment failed; the next open removes it");
                }
            }
            Job::Populate(map, from, to) => {
                // A chunk at a time, so a roll between chunks is seen soon.
                let end = populate(&map, from, to.min(from + POPULATE_CHUNK));
                let mut st = self.state();
                if let Some(p) = st.populating.as_mut().filter(|p| Arc::ptr_eq(&p.map, &map)) {
                    p.done = p.done.max(end);
                }
            }
            Job::Prepare(seq) => {
                let prepared = self.spec.prepare(seq, self.segment_size);
                let mut st = self.state();
                match prepared {
                    Ok(p) if stop.load(Ordering::SeqCst) => {
                        st.spare = Spare::Ready(p);
                    }
                    Ok(p) if st.current.is_some_and(|c| c > p.seq) => {
                        // An inline roll went past it while it was prepared.
                        st.spare = Spare::Wanted;
                        st.stale.push(p);
                    }
                    Ok(p) => st.spare = Spare::Ready(p),
                    Err(e) => {
                        st.spare = Spare::Failed;
                        drop(st);
                        tracing::warn!(target: "shardstone", shard = self.spec.index, error = %e,
                            "preparing a journal segment ahead failed; the next roll prepares inline");
                        // Its number is not reused: remove what was created.
                        let path = self.spec.dir.join(segment_name(self.spec.index, seq));
                        if path.exists() {
                            if let Err(e) = self.spec.io.remove(&path) {
                                tracing::warn!(target: "shardstone", path = %path.display(), error = %e,
                                    "removing a segment whose preparation failed failed; the next open removes it");
                            }
                        }
                    }
                }
            }
        }
        true
    }

    /// Removes a spare nobody will use. A failure leaves a file of zeros that
    /// the next open's recovery removes; it is logged, nothing is lost.
    pub(crate) fn discard(&self, p: Prepared) -> Result<()> {
        let Prepared {
            path, map, file, ..
        } = p;
        drop(map);
        drop(file);
        self.spec.io.remove(&path).map_err(|source| Error::Io {
            op: "remove",
            path,
            source,
        })
    }
}

enum Job {
    Discard(Prepared),
    Populate(Arc<MmapRaw>, usize, usize),
    Prepare(u64),
}

/// One thread's wake-up: set by committers and rolls, cleared by the thread
/// before it looks for work, so no request is missed.
#[derive(Default)]
struct Worker {
    poked: real::Mutex<bool>,
    wake: real::Condvar,
    stop: AtomicBool,
}

impl Worker {
    fn poke(&self) {
        let mut poked = self.poked.lock().unwrap_or_else(|p| p.into_inner());
        if !*poked {
            *poked = true;
            self.wake.notify_one();
        }
    }

    /// Waits for a poke; false once stopped.
    fn wait(&self) -> bool {
        let mut poked = self.poked.lock().unwrap_or_else(|p| p.into_inner());
        while !*poked && !self.stop.load(Ordering::SeqCst) {
            poked = self.wake.wait(poked).unwrap_or_else(|p| p.into_inner());
        }
        *poked = false;
        !self.stop.load(Ordering::SeqCst)
    }

    fn run(&self, slots: &[Arc<Slot>], node: Option<usize>) {
        if let Some(node) = node {
            prefer_node(node);
        }
        while self.wait() {
            // Until a full pass finds nothing to do; a stop ends it between
            // steps (a step in progress finishes: a system call cannot be
            // abandoned).
            let mut busy = true;
            while busy && !self.stop.load(Ordering::SeqCst) {
                busy = false;
                for slot in slots {
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    busy |= slot.work(&self.stop);
                }
            }
        }
    }
}

/// Makes the calling thread's new pages come from `node` (`MPOL_PREFERRED`).
/// Best effort, like every binding: a refusal only costs distance.
fn prefer_node(node: usize) {
    const MPOL_PREFERRED: libc::c_long = 1;
    const BITS: usize = u64::BITS as usize;
    if node >= 16 * BITS {
        return;
    }
    let mut mask = [0u64; 16];
    mask[node / BITS] |= 1 << (node % BITS);
    // SAFETY: set_mempolicy reads `maxnode` bits from the mask, which is that
    // long; it affects only the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_PREFERRED,
            mask.as_ptr(),
            (16 * BITS) as libc::c_ulong,
        )
    };
    if r != 0 {
        tracing::debug!(target: "shardstone", node, error = %std::io::Error::last_os_error(),
            "the segment preparer could not prefer its node's memory");
    }
}

/// The background threads of one journal, one per NUMA domain that has shards;
/// stopped and joined by [`Preparer::stop`] or on drop.
pub(crate) struct Preparer {
    workers: Vec<(Arc<Worker>, real::thread::JoinHandle<()>)>,
    slots: Vec<Arc<Slot>>,
}

impl Preparer {
    /// Starts the threads for `slots` (each asks for its first spare at once).
    /// Fails only when the system has no thread to give; what started is then
    /// stopped again.
    pub(crate) fn start(slots: Vec<Arc<Slot>>, layout: &Layout) -> std::io::Result<Preparer> {
        let mut by_domain: Vec<(usize, Vec<Arc<Slot>>)> = Vec::new();
        for slot in &slots {
            let domain = slot.spec.home.1;
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, v)) => v.push(slot.clone()),
                None => by_domain.push((domain, vec![slot.clone()])),
            }
        }
        let mut p = Preparer {
            workers: Vec::new(),
            slots,
        };
        for (domain, served) in by_domain {
            let worker = Arc::new(Worker::default());
            for slot in &served {
                *slot.worker.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker.clone());
                slot.state().spare = Spare::Wanted;
            }
            let node = layout
                .is_multi_domain()
                .then(|| layout.plan().domain_nodes.get(domain).copied())
                .flatten();
            let w = worker.clone();
            let thread = real::thread::Builder::new()
                .name(format!("shardstone-segments-{domain}"))
                .spawn(move || w.run(&served, node))?;
            worker.poke();
            p.workers.push((worker, thread));
        }
        Ok(p)
    }

    /// Stops and joins the threads (a preparation in progress finishes first),
    /// then hands every shard back to inline preparation.
    pub(crate) fn stop(&mut self) {
        for (w, _) in &self.workers {
            w.stop.store(true, Ordering::SeqCst);
            let _g = w.poked.lock().unwrap_or_else(|p| p.into_inner());
            w.wake.notify_all();
        }
        for (_, thread) in self.workers.drain(..) {
            // A panic in the thread has nothing left to report here.
            let _ = thread.join();
        }
        for slot in &self.slots {
            *slot.worker.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let mut st = slot.state();
            if !matches!(st.spare, Spare::Ready(_)) {
                st.spare = Spare::Off;
            }
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.stop();
    }
}
