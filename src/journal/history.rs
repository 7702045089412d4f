//! Reading old commits back from the journal files, in commit order, for feed
//! consumers that fell behind the in-memory window.
//!
//! The shards are merged by commit id as in recovery. A record's chain hash needs
//! its predecessor's: the reader starts from a point whose hash it knows — the
//! genesis before commit 1, the checkpoint, a retention hold's point, or a
//! frame's anchor naming the commit just before it — and hashes forward. Frames
//! it cannot chain (their predecessor was deleted) are skipped.
//! Segments still being appended to are read up to their first incomplete frame.
//!
//! Why holds carry a point: a frame's anchor is the chain head when it was
//! appended, which under concurrent commits is often further back than the
//! commit just before it. A checkpoint deletes every segment up to a hold's
//! acknowledged commit P, so the record after P can only be chained from P's
//! hash, which the consumer knew when it acknowledged P: the hold stores it (and
//! the `consumers` file persists it), and the reader starts from it. Keeping
//! P's segment instead would not do: P's own hash needs its predecessor's.
//!
//! The reader is registered with the journal (`ReaderGuard`) while it lives:
//! a clean close does not trim a segment that it may map at full length.

use super::chain::Retained;
use super::record::{parse_frame, ChainHash, Parsed, FRAME_HEADER, KIND_MARK};
use super::shard::{parse_segment_name, SEGMENT_HEADER};
use super::ReaderGuard;
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment's bytes: mapped (a reader the engine registered, so no close trims
/// the file under it), or read into memory (`JournalReader`, which no engine
/// knows of: a mapping of a file that a close then trims would fault).
enum SegmentBytes {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Read(v) => v,
        }
    }
}

struct ShardFiles {
    index: usize,
    /// Segment number and bytes, in order.
    maps: Vec<(u64, SegmentBytes)>,
    segment: usize,
    offset: usize,
}

/// A commit frame found in a shard: its id, anchor and where it lies.
#[derive(Clone, Copy)]
struct Found {
    id: u64,
    anchor: (u64, ChainHash),
    segment: usize,
    at: usize,
    len: usize,
}

impl ShardFiles {
    /// Finds the next commit frame and moves past it.
    fn advance(&mut self) -> Option<Found> {
        loop {
            let (_, map) = self.maps.get(self.segment)?;
            if self.offset >= map.len() {
                if self.segment + 1 == self.maps.len() {
                    return None;
                }
                self.segment += 1;
                self.offset = SEGMENT_HEADER;
                continue;
            }
            let at = self.offset;
            match parse_frame(&map[at..]) {
                Parsed::Frame(f) => {
                    self.offset += f.stride;
                    if f.kind == KIND_MARK || f.body.len() < 8 {
                        continue;
                    }
                    return Some(Found {
                        id: u64::from_le_bytes(f.body[..8].try_into().expect("8 bytes")),
                        anchor: f.anchor,
                        segment: self.segment,
                        at,
                        len: FRAME_HEADER + f.body.len(),
                    });
                }
                // Zeros or an incomplete frame: the segment ends here, for now if
                // it is the last one (`History::extend` looks again).
                Parsed::End | Parsed::Bad => {
                    if self.segment + 1 == self.maps.len() {
                        return None;
                    }
                    self.segment += 1;
                    self.offset = SEGMENT_HEADER;
                }
            }
        }
    }

    fn bytes(&self, f: &Found) -> &[u8] {
        debug_assert!(f.segment < self.maps.len());
        &self.maps[f.segment].1[f.at..f.at + f.len]
    }
}

/// Commits after `from` and up to `upto`, read from the segment files in `dir`.
pub(crate) struct History {
    dir: PathBuf,
    shards: Vec<ShardFiles>,
    /// The next frame of each shard, smallest id first: (id, shard).
    heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
    next: Vec<Option<Found>>,
    /// The last commit whose hash is known, and that hash.
    known: Option<(u64, ChainHash)>,
    /// Commits whose chain hash is known (the genesis, the checkpoint, holds'
    /// points): the next commit after one chains from it.
    points: BTreeMap<u64, ChainHash>,
    from: u64,
    /// Visible when opened: frames up to it are whole. Later ones may still be
    /// being written (a shard that meets one leaves the merge), so the reader
    /// stops here.
    upto: u64,
    /// `None`: the files are read, not mapped (see `SegmentBytes`).
    _reader: Option<ReaderGuard>,
}

impl History {
    /// Opens every segment in `dir`; `points` are commits whose chain hash is
    /// known (the newest checkpoint's, the retention holds').
    pub(crate) fn open(
        dir: &Path,
        points: Vec<(u64, ChainHash)>,
        from: u64,
        upto: u64,
        reader: Option<ReaderGuard>,
    ) -> Result<History> {
        let mut points: BTreeMap<u64, ChainHash> = points.into_iter().collect();
        points.insert(0, ChainHash::genesis());
        let mut h = History {
            dir: dir.to_owned(),
            shards: Vec::new(),
            heap: BinaryHeap::new(),
            next: Vec::new(),
            known: None,
            points,
            from,
            upto,
            _reader: reader,
        };
        h.extend(upto)?;
        Ok(h)
    }

    /// A reader of a journal that has no files: it yields nothing.
    pub(crate) fn empty() -> History {
        History {
            dir: PathBuf::new(),
            shards: Vec::new(),
            heap: BinaryHeap::new(),
            next: Vec::new(),
            known: None,
            points: BTreeMap::new(),
            from: 0,
            upto: 0,
            _reader: None,
        }
    }

    /// Reads on up to `upto` (visible now): maps segments created since, and looks
    /// again at shards that had reached the end of what was written.
    pub(crate) fn extend(&mut self, upto: u64) -> Result<()> {
        self.upto = upto;
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        let dir = self.dir.clone();
        let mut found: Vec<(usize, u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io("read directory", &dir))? {
            let entry = entry.map_err(io("read directory", &dir))?;
            let name = entry.file_name();
            if let Some((shard, seq)) = name.to_str().and_then(parse_segment_name) {
                found.push((shard, seq, entry.path()));
            }
        }
        found.sort_by_key(|(shard, seq, _)| (*shard, *seq));
        for (shard, seq, path) in found {
            let i = match self.shards.iter().position(|s| s.index == shard) {
                Some(i) => i,
                None => {
                    self.shards.push(ShardFiles {
                        index: shard,
                        maps: Vec::new(),
                        segment: 0,
                        offset: SEGMENT_HEADER,
                    });
                    self.next.push(None);
                    self.shards.len() - 1
                }
            };
            let files = &mut self.shards[i];
            if files.maps.last().is_some_and(|(last, _)| seq <= *last) {
                continue;
            }
            // A checkpoint may delete a segment between the listing and here.
            let Some(file) = super::io::open_regular_if_exists(&path)? else {
                continue;
            };
            if file.metadata().map_err(io("stat", &path))?.len() <= SEGMENT_HEADER as u64 {
                continue;
            }
            // A segment prepared ahead of need has no header yet, only zeros:
            // not in use. Read past, the shard's current segment would look
            // finished; the next `extend` looks at it again.
            let mut head = [0u8; 8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
                .map_err(io("read", &path))?;
            if head == [0; 8] {
                continue;
            }
            let bytes = if self._reader.is_some() {
                // SAFETY: read-only map of a file this engine only appends to, and
                // does not trim while this reader is registered; bytes not yet
                // written read as zeros, which parse as the end.
                SegmentBytes::Mapped(unsafe { Mmap::map(&file) }.map_err(io("mmap", &path))?)
            } else {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io("read", &path))?;
                SegmentBytes::Read(bytes)
            };
            files.maps.push((seq, bytes));
        }
        for i in 0..self.shards.len() {
            if self.next[i].is_none() {
                self.next[i] = self.shards[i].advance();
                if let Some(f) = &self.next[i] {
                    self.heap.push(std::cmp::Reverse((f.id, i)));
                }
            }
        }
        Ok(())
    }

    /// The next commit after `from` that can be chained, or `None` at the end of
    /// what the files hold.
    pub(crate) fn next(&mut self) -> Option<Retained> {
        while let Some(&std::cmp::Reverse((id, i))) = self.heap.peek() {
            if id > self.upto {
                return None;
            }
            self.heap.pop();
            let found = self.next[i].take().expect("a queued shard has a frame");
            let frame = self.shards[i].bytes(&found).to_vec();
            let anchor = found.anchor;
            self.next[i] = self.shards[i].advance();
            if let Some(f) = &self.next[i] {
                self.heap.push(std::cmp::Reverse((f.id, i)));
            }
            // Ids and anchors come from the files: compared with checked
            // arithmetic, so a damaged one cannot overflow.
            let follows = |before: u64| before.checked_add(1) == Some(id);
            let prev = match self.known {
                Some((k, h)) if follows(k) => h,
                Some((k, _)) if id <= k => continue,
                _ if id
                    .checked_sub(1)
                    .is_some_and(|p| self.points.contains_key(&p)) =>
                {
                    self.points[&(id - 1)]
                }
                _ if follows(anchor.0) => anchor.1,
                // Its predecessor is gone: this one cannot be chained.
                _ => {
                    self.known = None;
                    continue;
                }
            };
            let hash = prev.next(&frame[FRAME_HEADER..]);
            self.known = Some((id, hash));
            if id <= self.from {
                continue;
            }
            return Some(Retained {
                id,
                prev_hash: prev,
                hash,
                frame: Arc::new(frame),
                total_bytes: 0,
            });
        }
        None
    }
}
