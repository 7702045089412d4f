//! Reading old commits back from the journal files, in commit order, for feed
//! consumers that fell behind the in-memory window.
//!
//! The shards are merged by commit id as in recovery. A record's chain hash needs
//! its predecessor's: the reader starts from a point whose hash it knows — the
//! genesis before commit 1, the checkpoint, or a frame's anchor naming the commit
//! just before it — and hashes forward. Frames it cannot chain (their predecessor
//! was deleted) are skipped; the first commit it can give is `oldest`.
//! Segments still being appended to are read up to their first incomplete frame.

use super::chain::Retained;
use super::record::{parse_frame, ChainHash, Parsed, FRAME_HEADER, KIND_MARK};
use super::shard::{parse_segment_name, SEGMENT_HEADER};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct ShardFiles {
    maps: Vec<(PathBuf, Mmap)>,
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
                // Zeros or an incomplete frame: this segment ends here for now.
                Parsed::End | Parsed::Bad => {
                    self.segment += 1;
                    self.offset = SEGMENT_HEADER;
                }
            }
        }
    }

    fn bytes(&self, f: &Found) -> &[u8] {
        &self.maps[f.segment].1[f.at..f.at + f.len]
    }
}

/// Commits after `from` and up to `upto`, read from the segment files in `dir`.
pub(crate) struct History {
    shards: Vec<ShardFiles>,
    /// The next frame of each shard, smallest id first: (id, shard).
    heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
    next: Vec<Option<Found>>,
    /// The last commit whose hash is known, and that hash.
    known: Option<(u64, ChainHash)>,
    checkpoint: (u64, ChainHash),
    from: u64,
    /// Visible when opened: frames up to it are whole. Later ones may still be
    /// being written (a shard that meets one leaves the merge), so the reader
    /// stops here.
    upto: u64,
}

impl History {
    /// Opens every segment in `dir`; `checkpoint` is the newest checkpoint's point
    /// (a place where the chain hash is known).
    pub(crate) fn open(
        dir: &Path,
        checkpoint: (u64, ChainHash),
        from: u64,
        upto: u64,
    ) -> Result<History> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        let mut by_shard: HashMap<usize, Vec<(u64, PathBuf)>> = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(io("read directory", dir))? {
            let entry = entry.map_err(io("read directory", dir))?;
            let name = entry.file_name();
            if let Some((shard, seq)) = name.to_str().and_then(parse_segment_name) {
                by_shard.entry(shard).or_default().push((seq, entry.path()));
            }
        }
        let mut shards = Vec::new();
        for (_, mut segs) in by_shard {
            segs.sort_by_key(|(seq, _)| *seq);
            let mut maps = Vec::new();
            for (_, path) in segs {
                // A checkpoint may delete a segment between the listing and here.
                let Ok(file) = File::open(&path) else {
                    continue;
                };
                if file.metadata().map_err(io("stat", &path))?.len() <= SEGMENT_HEADER as u64 {
                    continue;
                }
                // SAFETY: read-only map of a file this engine only appends to; bytes
                // not yet written read as zeros, which parse as the end.
                let map = unsafe { Mmap::map(&file) }.map_err(io("mmap", &path))?;
                maps.push((path, map));
            }
            shards.push(ShardFiles {
                maps,
                segment: 0,
                offset: SEGMENT_HEADER,
            });
        }
        let mut heap = BinaryHeap::new();
        let next: Vec<Option<Found>> = shards.iter_mut().map(ShardFiles::advance).collect();
        for (i, f) in next.iter().enumerate() {
            if let Some(f) = f {
                heap.push(std::cmp::Reverse((f.id, i)));
            }
        }
        Ok(History {
            shards,
            heap,
            next,
            known: None,
            checkpoint,
            from,
            upto,
        })
    }

    /// The next commit after `from` that can be chained, or `None` at the end of
    /// what the files hold.
    pub(crate) fn next(&mut self) -> Option<Retained> {
        while let Some(std::cmp::Reverse((id, i))) = self.heap.pop() {
            if id > self.upto {
                self.heap.clear();
                return None;
            }
            let found = self.next[i].take().expect("a queued shard has a frame");
            let frame = self.shards[i].bytes(&found).to_vec();
            let anchor = found.anchor;
            self.next[i] = self.shards[i].advance();
            if let Some(f) = &self.next[i] {
                self.heap.push(std::cmp::Reverse((f.id, i)));
            }
            let prev = match self.known {
                Some((k, h)) if k + 1 == id => h,
                Some((k, _)) if id <= k => continue,
                _ if id == 1 => ChainHash::genesis(),
                _ if id == self.checkpoint.0 + 1 => self.checkpoint.1,
                _ if anchor.0 + 1 == id => anchor.1,
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
