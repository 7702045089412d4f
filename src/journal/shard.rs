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
use super::record::{Frame, FRAME_HEADER};
use super::Retired;
use crate::error::{Error, Result};
use crate::numa::Layout;
use crate::sync::{AtomicU64, Mutex, Ordering};
use memmap2::MmapMut;
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
    map: MmapMut,
    /// Bytes written, header included.
    len: usize,
    /// The mapping is faulted in up to here.
    populated: usize,
    /// The last commit appended to it (0: none yet).
    last_id: u64,
}

/// How much of a segment's mapping is faulted in at a time, ahead of the appends:
/// one `madvise` per chunk instead of one page fault per 4 KiB on the commit path.
const POPULATE_CHUNK: usize = 1 << 20;

impl Segment {
    /// Faults in the next chunk of the mapping once appends come near its end.
    fn populate_ahead(&mut self) {
        if self.len + POPULATE_CHUNK / 4 < self.populated || self.populated >= self.map.len() {
            return;
        }
        let end = (self.populated + POPULATE_CHUNK).min(self.map.len());
        // Best effort: before Linux 5.14 this fails and pages fault in on first write.
        let _ = self.map.advise_range(
            memmap2::Advice::PopulateWrite,
            self.populated,
            end - self.populated,
        );
        self.populated = end;
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
    next_seq: u64,
}

type State = GroupState<Files>;

pub(crate) struct Shard {
    index: usize,
    dir: PathBuf,
    segment_size: u64,
    io: Arc<dyn Io>,
    group: Group<Files>,
    retired: Arc<Mutex<Vec<Retired>>>,
    syncs: Arc<AtomicU64>,
    /// The NUMA layout and this shard's domain in it: segment mappings are bound
    /// to that node before they are first touched.
    home: (Arc<Layout>, usize),
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
        Shard {
            index,
            dir: dir.to_owned(),
            segment_size,
            io,
            group: Group::new(Files {
                current: None,
                unsynced: Vec::new(),
                next_seq,
            }),
            retired,
            syncs,
            home,
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
            .is_some_and(|s| s.len + stride <= s.map.len());
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
        seg.map[seg.len..seg.len + len].copy_from_slice(&frame.bytes[..len]);
        seg.len += stride;
        seg.last_id = id;
        self.written.fetch_add(stride as u64, Ordering::Relaxed);
        seg.populate_ahead();
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

    /// Starts a new segment with room for at least `stride` bytes of frame.
    fn roll(&self, st: &mut State, stride: usize) -> Result<()> {
        let seq = st.files.next_seq;
        let path = self.dir.join(segment_name(self.index, seq));
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        let cap = self.segment_size.max((SEGMENT_HEADER + stride) as u64);
        let file = self.io.create(&path).map_err(io_err("create", &path))?;
        self.io
            .allocate(&file, cap)
            .map_err(io_err("allocate", &path))?;
        // SAFETY: the engine holds the directory's exclusive lock, so no other
        // process maps or writes this file; we never truncate it while mapped.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(io_err("mmap", &path))?;
        // On tmpfs the binding places the pages; on disk file systems the page
        // cache follows the faulting thread, which is a committer of this shard,
        // running on its node (`populate_ahead`).
        let (layout, domain) = &self.home;
        layout.bind_to_domain(map.as_mut_ptr(), map.len(), *domain);
        map[..SEGMENT_HEADER].copy_from_slice(&segment_header(self.index, seq));
        self.io
            .sync_dir(&self.dir)
            .map_err(io_err("fsync directory", &self.dir))?;
        st.files.next_seq = seq + 1;
        if let Some(old) = st.files.current.take() {
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
        st.files.current = Some(Segment {
            seq,
            path,
            file: Arc::new(file),
            map,
            len: SEGMENT_HEADER,
            populated: 0,
            last_id: 0,
        });
        Ok(())
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
        if seg.len + FRAME_HEADER <= seg.map.len() {
            let mut frame = Frame::mark();
            frame.set_synced();
            let len = seal(&mut frame);
            seg.map[seg.len..seg.len + len].copy_from_slice(&frame.bytes[..len]);
            seg.len += len.next_multiple_of(8);
        }
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

    /// Whether the shard has a segment file open.
    pub(crate) fn has_segment(&self) -> bool {
        self.group.lock().files.current.is_some()
    }
}
