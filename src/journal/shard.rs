//! One journal shard: append-only segment files written through a shared mapping,
//! and group commit.
//!
//! A commit appends to the shard of the CPU it runs on. The shard's mutex covers
//! taking the commit id and copying the frame into the mapping, so the frames of a
//! shard are in commit-id order on disk and only the newest one can be torn by a
//! crash. No lock is shared by all shards.
//!
//! Group commit: a committer that needs its frame on disk either becomes the
//! shard's flusher (it syncs everything appended so far, outside the lock) or waits
//! for the flush in progress and then looks again; one fdatasync covers every frame
//! appended before it started.
//!
//! Why a mapping and not `pwrite`: a `Buffered` commit then costs a `memcpy` into
//! the page cache instead of a system call (benches/journal.rs measures both).
//! Segments are preallocated, so the mapping never meets a full disk on write.

use super::group::{Group, GroupState, Waited};
use super::io::Io;
use super::manifest::Listed;
use super::prepare::{populate, Prepared, Slot, Spec, POPULATE_CHUNK};
use super::record::{Frame, FRAME_HEADER};
use super::Retired;
use crate::error::{Error, Result};
use crate::numa::Layout;
use crate::sync::{AtomicU64, Mutex, Ordering};
use memmap2::MmapRaw;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SSTNJRNL";
pub(crate) const SEGMENT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER: usize = 64;

/// `s0003-0000000012.log`: shard 3, segment 12.
pub(crate) fn segment_name(shard: usize, seq: u64) -> String {
    format!("s{shard:04}-{seq:010}.log")
}

/// Parses a segment file name back into (shard, seq).
pub(crate) fn parse_segment_name(name: &str) -> Option<(usize, u64)> {
    let rest = name.strip_prefix('s')?.strip_suffix(".log")?;
    let (shard, seq) = rest.split_once('-')?;
    if shard.len() != 4 || seq.len() != 10 {
        return None;
    }
    Some((shard.parse().ok()?, seq.parse().ok()?))
}

pub(crate) fn segment_header(shard: usize, seq: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(shard as u32).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Shared with the preparer thread, which only faults it in.
    map: Arc<MmapRaw>,
    /// Bytes written, header included.
    len: usize,
    /// Population of the mapping is asked for (or done, inline) up to here.
    populated: usize,
    /// The last commit appended to it (0: none yet).
    last_id: u64,
}

impl Segment {
    fn from_prepared(p: Prepared) -> Segment {
        Segment {
            seq: p.seq,
            path: p.path,
            file: Arc::new(p.file),
            map: p.map,
            len: 0,
            populated: p.populated,
            last_id: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.map.len()
    }

    /// Copies `bytes` into the mapping at `len` and moves `len` on by `stride`.
    fn write(&mut self, bytes: &[u8], stride: usize) {
        assert!(
            self.len + bytes.len().max(stride) <= self.map.len(),
            "room was made before writing"
        );
        // SAFETY: in bounds (checked above). Only the holder of the shard's
        // group-commit lock, which owns this `Segment`, writes to the mapping;
        // the preparer thread only advises it, and readers map the file
        // separately and read only what the visible watermark covers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += stride;
    }

    /// Keeps the mapping faulted in ahead of the appends: asks the preparer
    /// thread when there is one (off the commit path), else faults the next
    /// chunk in here.
    fn populate_ahead(&mut self, slot: &Slot) {
        if self.len + POPULATE_CHUNK / 4 < self.populated || self.populated >= self.map.len() {
            return;
        }
        if slot.has_worker() {
            // Two chunks ahead: the thread has a chunk of appends to do it in.
            self.populated = (self.len + 2 * POPULATE_CHUNK).min(self.map.len());
            slot.populate(self.populated);
        } else {
            self.populated = populate(&self.map, self.populated, self.populated + POPULATE_CHUNK);
        }
    }
}

/// A segment file and its path, for error messages.
type Named = (Arc<File>, PathBuf);

/// What a flush syncs: the full segments not yet synced, then the current one.
type SyncJob = (Vec<Named>, Option<Named>);

/// The shard's files, under the group-commit lock.
struct Files {
    current: Option<Segment>,
    /// Files of full segments that may hold frames not yet synced.
    unsynced: Vec<Named>,
}

type State = GroupState<Files>;

pub(crate) struct Shard {
    index: usize,
    segment_size: u64,
    io: Arc<dyn Io>,
    /// Spares, segment numbers and population, shared with the preparer thread.
    slot: Arc<Slot>,
    group: Group<Files>,
    retired: Arc<Mutex<Vec<Retired>>>,
    syncs: Arc<AtomicU64>,
    remote_appends: AtomicU64,
    /// Frame bytes appended this session (what automatic checkpoints measure the
    /// journal by). Written under the shard lock; read without it.
    written: AtomicU64,
    /// `Durability::Durable`: a retired segment's file stays open until the next
    /// flush syncs it. Otherwise nothing waits to sync it, so it is closed at
    /// the roll (a checkpoint can then free its disk space), and a clean close
    /// syncs retired segments by path.
    keeps_unsynced: bool,
}

impl Shard {
    #[allow(clippy::too_many_arguments)] // each is a distinct part of the journal
    pub(crate) fn new(
        index: usize,
        dir: &Path,
        next_seq: u64,
        segment_size: u64,
        io: Arc<dyn Io>,
        retired: Arc<Mutex<Vec<Retired>>>,
        syncs: Arc<AtomicU64>,
        home: (Arc<Layout>, usize),
        keeps_unsynced: bool,
    ) -> Shard {
        let spec = Spec {
            index,
            dir: dir.to_owned(),
            io: io.clone(),
            home,
        };
        Shard {
            index,
            segment_size,
            io,
            slot: Arc::new(Slot::new(spec, next_seq, segment_size)),
            group: Group::new(Files {
                current: None,
                unsynced: Vec::new(),
            }),
            retired,
            syncs,
            remote_appends: AtomicU64::new(0),
            written: AtomicU64::new(0),
            keeps_unsynced,
        }
    }

    pub(crate) fn count_remote_append(&self) {
        self.remote_appends.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn remote_appends(&self) -> u64 {
        self.remote_appends.load(Ordering::Relaxed)
    }

    /// Frame bytes appended to this shard since the engine opened.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn halted(cause: &str) -> Error {
        Error::Halted {
            cause: cause.to_owned(),
        }
    }

    /// Takes a commit id with `assign` and appends `frame` sealed with it, all under
    /// the shard lock. Room is made before the id is taken, so a failure here takes
    /// no id. `seal` fills in the id-dependent fields.
    pub(crate) fn append(
        &self,
        frame: &mut Frame,
        assign: impl FnOnce() -> u64,
        seal: impl FnOnce(&mut Frame, u64) -> usize,
    ) -> Result<u64> {
        let mut st = self.group.lock();
        if let Some(cause) = st.failed() {
            return Err(Self::halted(cause));
        }
        let stride = frame.bytes.len().next_multiple_of(8);
        let room = st
            .files
            .current
            .as_ref()
            .is_some_and(|s| s.len + stride <= s.capacity());
        if !room {
            self.roll(&mut st, stride)?;
        }
        let id = assign();
        let len = seal(frame, id);
        let seg = st
            .files
            .current
            .as_mut()
            .expect("a segment with room was made above");
        seg.write(&frame.bytes[..len], stride);
        seg.last_id = id;
        self.written.fetch_add(stride as u64, Ordering::Relaxed);
        seg.populate_ahead(&self.slot);
        debug_assert!(id > st.appended, "frames of a shard are in commit order");
        st.appended = id;
        Ok(id)
    }

    /// Retires the current segment if it holds any frame, so that a checkpoint
    /// that follows can delete it.
    pub(crate) fn roll_if_used(&self) -> Result<()> {
        let mut st = self.group.lock();
        let used = st
            .files
            .current
            .as_ref()
            .is_some_and(|s| s.len > SEGMENT_HEADER);
        if st.failed().is_some() || !used {
            return Ok(());
        }
        self.roll(&mut st, 0)
    }

    /// Makes a new segment current, with room for at least `stride` bytes of
    /// frame: the spare the preparer thread made ready when there is one (a
    /// header written into mapped memory and a pointer swap), else one prepared
    /// here, as before the thread existed. Never waits for the thread.
    fn roll(&self, st: &mut State, stride: usize) -> Result<()> {
        let need = (SEGMENT_HEADER + stride) as u64;
        let cap = self.segment_size.max(need);
        let spec = &self.slot.spec;
        let prepared = match self.slot.take_spare() {
            Some(p) if (p.map.len() as u64) < need => spec.grow(p, cap)?,
            Some(p) => p,
            None => {
                let seq = self.slot.take_seq();
                spec.prepare(seq, cap).inspect_err(|_| {
                    if !self.slot.give_back_seq(seq) {
                        // The thread took a later number: nothing will reuse this
                        // name. Best effort; the next open removes a leftover.
                        let path = spec.dir.join(segment_name(self.index, seq));
                        if path.exists() {
                            if let Err(e) = self.io.remove(&path) {
                                tracing::warn!(target: "shardstone", path = %path.display(), error = %e,
                                    "removing a segment whose roll failed failed");
                            }
                        }
                    }
                })?
            }
        };
        let mut seg = Segment::from_prepared(prepared);
        seg.write(&segment_header(self.index, seg.seq), SEGMENT_HEADER);
        self.slot.made_current(seg.seq, &seg.map, seg.populated);
        if let Some(old) = st.files.current.replace(seg) {
            self.retired.lock().push(Retired {
                shard: self.index,
                seq: old.seq,
                path: old.path.clone(),
                last_id: old.last_id,
                used: old.len as u64,
            });
            if self.keeps_unsynced {
                st.files.unsynced.push((old.file, old.path));
            }
        }
        Ok(())
    }

    /// The highest commit id of this shard known to be on disk.
    pub(crate) fn synced(&self) -> u64 {
        self.group.synced()
    }

    /// Returns once commit `id` (appended to this shard) is on disk, sharing the
    /// fdatasync with every commit appended before it started.
    pub(crate) fn wait_durable(&self, id: u64) -> Result<()> {
        let prepare = |files: &mut Files| {
            let unsynced = std::mem::take(&mut files.unsynced);
            let current = files
                .current
                .as_ref()
                .map(|s| (s.file.clone(), s.path.clone()));
            (unsynced, current)
        };
        let sync = |(unsynced, current): SyncJob| {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            let failed = |path: PathBuf| {
                move |source| Error::Io {
                    op: "fdatasync",
                    path,
                    source,
                }
            };
            for (f, path) in &unsynced {
                self.io.sync(f).map_err(failed(path.clone()))?;
            }
            match &current {
                Some((f, path)) => self.io.sync(f).map_err(failed(path.clone())),
                None => Ok(()),
            }
        };
        // A failed fsync may have dropped the dirty pages: the group stops
        // acknowledging anything from then on.
        self.group
            .wait_durable(id, prepare, sync)
            .map_err(|w| match w {
                Waited::Failed(e) => {
                    tracing::error!(target: "shardstone", shard = self.index, error = %e, "journal fsync failed");
                    e
                }
                Waited::Earlier(cause) => Self::halted(&cause),
            })
    }

    /// A clean close: syncs everything appended, then writes a mark (sealed by
    /// `seal`: the final watermark) after it, trims the current segment to its
    /// used length (if `trim`: no reader maps it), unmaps and syncs it. The mark
    /// is written only once every frame before it is durable, so a mark found
    /// after damage proves the damage hit synced frames. Returns the current
    /// segment, for the manifest.
    pub(crate) fn close(
        &self,
        seal: impl FnOnce(&mut Frame) -> usize,
        trim: bool,
    ) -> Result<Option<Listed>> {
        let appended = self.group.lock().appended;
        if appended > 0 {
            self.wait_durable(appended)?;
        }
        let mut st = self.group.lock();
        if let Some(cause) = st.failed() {
            return Err(Self::halted(cause));
        }
        let Some(mut seg) = st.files.current.take() else {
            return Ok(None);
        };
        if seg.len + FRAME_HEADER <= seg.capacity() {
            let mut frame = Frame::mark();
            frame.set_synced();
            let len = seal(&mut frame);
            seg.write(&frame.bytes[..len], len.next_multiple_of(8));
        }
        // The preparer thread is stopped; this drops its handle on the mapping.
        self.slot.clear_current();
        let listed = Listed {
            shard: self.index,
            seq: seg.seq,
            last: seg.last_id,
        };
        let Segment {
            path,
            file,
            map,
            len,
            ..
        } = seg;
        map.flush().map_err(|source| Error::Io {
            op: "msync",
            path: path.clone(),
            source,
        })?;
        // The last handle on the mapping: unmapped before the trim below.
        debug_assert_eq!(Arc::strong_count(&map), 1);
        drop(map);
        let trimmed = if trim {
            self.io.truncate(&file, len as u64)
        } else {
            Ok(())
        };
        trimmed
            .and_then(|()| self.io.sync(&file))
            .map_err(|source| Error::Io {
                op: "trim segment",
                path,
                source,
            })?;
        Ok(Some(listed))
    }

    /// The current segment's mapping (address, length).
    pub(crate) fn segment_range(&self) -> Option<(usize, usize)> {
        let st = self.group.lock();
        let seg = st.files.current.as_ref()?;
        Some((seg.map.as_ptr() as usize, seg.map.len()))
    }

    /// The shard's side of segment preparation, for the preparer thread.
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Removes the shard's unused spare segments (closing, once the preparer
    /// thread is stopped).
    pub(crate) fn discard_spares(&self) -> Result<()> {
        for p in self.slot.take_unused() {
            self.slot.discard(p)?;
        }
        Ok(())
    }

    /// Whether the shard has a segment file open.
    pub(crate) fn has_segment(&self) -> bool {
        self.group.lock().files.current.is_some()
    }
}
