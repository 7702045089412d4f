//! Recovery: every shard's segments, verified and merged back into commit order.
//!
//! Each shard is read up to its first frame that is not valid (its stop point).
//! What follows a stop point is a torn tail — the crash interrupted an append, or
//! preallocated zeros — unless a valid frame after it proves that acknowledged
//! data lies beyond: then the damage is reported, never skipped.
//!
//! "Acknowledged" is read off the frames themselves: each carries the visibility
//! watermark when it was made, and a clean close writes a mark with the final one.
//! Every commit `<=` the largest watermark seen was acknowledged, so
//! - a valid frame after a stop point with an id `<=` it, or any mark after one,
//!   means the stop point is damage;
//! - a commit id missing from every shard at or below it is damage (a gap);
//! - above it, the first missing id is where the crash cut the order: the frames
//!   after it were never acknowledged, and are removed so their ids can be reused.
//!
//! The replay also recomputes the hash chain and checks it against every anchor
//! the frames carry.

use super::io::Io;
use super::record::{
    parse_frame, parse_verified_frame, BodyView, ChainHash, OpView, Parsed, KIND_MARK,
};
use super::shard::{parse_segment_name, SEGMENT_HEADER, SEGMENT_MAGIC, SEGMENT_VERSION};
use crate::error::{Error, Result};
use crate::txn::CommitId;
use memmap2::Mmap;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A segment file as recovery found it.
pub(crate) struct SegmentFile {
    pub shard: usize,
    pub seq: u64,
    pub path: PathBuf,
    map: Option<Mmap>,
    /// Highest commit id in it (0: none).
    pub last_id: u64,
    /// End of its last valid frame (where zeros or damage begin).
    end: usize,
}

impl SegmentFile {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Where a shard's valid frames end.
#[derive(Clone, Copy)]
struct Stop {
    segment: usize,
    offset: usize,
}

struct ShardLog {
    segments: Vec<SegmentFile>,
    /// The first invalid position, if the shard does not end cleanly at EOF.
    stop: Option<Stop>,
    /// A valid frame found after the stop point: (its id, or 0 for a mark).
    after_stop: Option<u64>,
}

/// The result of reading the journal.
pub(crate) struct Recovered {
    pub last_id: u64,
    pub last_hash: ChainHash,
    pub replayed: u64,
    /// Segments that remain, oldest first within each shard, with their last ids.
    pub segments: Vec<SegmentFile>,
    /// One past the highest segment number seen, for every shard.
    pub next_seq: u64,
}

fn corrupt(path: &Path, offset: u64, commit: Option<u64>, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset,
        commit_id: commit.map(CommitId),
        reason: reason.into(),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Lists and maps the segment files of `dir`, grouped by shard, in order.
fn list(dir: &Path) -> Result<Vec<ShardLog>> {
    let mut by_shard: HashMap<usize, Vec<(u64, PathBuf)>> = HashMap::new();
    let entries = std::fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some((shard, seq)) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        by_shard.entry(shard).or_default().push((seq, entry.path()));
    }
    let mut shards: Vec<(usize, Vec<(u64, PathBuf)>)> = by_shard.into_iter().collect();
    shards.sort_by_key(|(s, _)| *s);
    let mut logs = Vec::with_capacity(shards.len());
    for (shard, mut segs) in shards {
        segs.sort_by_key(|(seq, _)| *seq);
        let mut segments = Vec::with_capacity(segs.len());
        for (seq, path) in segs {
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            // SAFETY: the directory lock keeps writers out; the map is read-only.
            let map = if len == 0 {
                None
            } else {
                Some(unsafe { Mmap::map(&file) }.map_err(io_err("mmap", &path))?)
            };
            segments.push(SegmentFile {
                shard,
                seq,
                path,
                map,
                last_id: 0,
                end: 0,
            });
        }
        logs.push(ShardLog {
            segments,
            stop: None,
            after_stop: None,
        });
    }
    Ok(logs)
}

fn check_header(seg: &SegmentFile) -> Result<()> {
    let b = seg.bytes();
    let bad = |reason: &str| Err(corrupt(&seg.path, 0, None, reason));
    if b.len() < SEGMENT_HEADER {
        return bad("segment header is cut short");
    }
    if &b[0..8] != SEGMENT_MAGIC {
        return bad("not a shardstone journal segment (bad magic)");
    }
    let crc = u32::from_le_bytes(b[60..64].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[..60]) != crc {
        return bad("segment header checksum mismatch");
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return bad(&format!(
            "segment format version {version} is not supported"
        ));
    }
    let shard = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    if (shard, seq) != (seg.shard, seg.seq) {
        return bad("segment header names another shard or segment than its file name");
    }
    Ok(())
}

/// First pass over one shard: verifies every frame, finds the stop point and
/// whether anything valid follows it; returns the largest watermark seen.
fn scan(log: &mut ShardLog) -> Result<u64> {
    let mut acked = 0u64;
    let mut last = 0u64;
    for si in 0..log.segments.len() {
        let seg = &log.segments[si];
        if si + 1 == log.segments.len() && seg.bytes().iter().all(|&b| b == 0) {
            // Created, never written (a crash right after creating it).
            continue;
        }
        check_header(seg)?;
        let b = seg.bytes();
        // Past this, the segment holds only (preallocated) zeros.
        let written = b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        let mut off = SEGMENT_HEADER;
        let mut seg_last = 0;
        while off < b.len() {
            match parse_frame(&b[off..]) {
                Parsed::Frame(f) => {
                    acked = acked.max(f.durable);
                    if log.stop.is_some() {
                        if log.after_stop.is_none() {
                            log.after_stop = Some(if f.kind == KIND_MARK {
                                0
                            } else {
                                frame_id(f.body)
                            });
                        }
                    } else if f.kind != KIND_MARK {
                        let id = frame_id(f.body);
                        if id <= last {
                            return Err(corrupt(
                                &seg.path,
                                off as u64,
                                Some(id),
                                format!("commit {id} follows commit {last} in one shard"),
                            ));
                        }
                        last = id;
                        seg_last = id;
                    }
                    off += f.stride;
                }
                Parsed::End if off >= written => {
                    // The unused, preallocated rest of the segment.
                    break;
                }
                Parsed::End | Parsed::Bad => {
                    if log.stop.is_none() {
                        log.stop = Some(Stop {
                            segment: si,
                            offset: off,
                        });
                    }
                    // Look for anything valid further on (8-byte aligned).
                    off += 8;
                }
            }
        }
        let end = match log.stop {
            Some(stop) if stop.segment == si => stop.offset,
            Some(_) => 0,
            None => off.min(b.len()),
        };
        let seg = &mut log.segments[si];
        seg.last_id = seg_last;
        seg.end = end;
    }
    Ok(acked)
}

fn frame_id(body: &[u8]) -> u64 {
    body.get(0..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Reads the journal in `dir`, replays every commit after `start` through
/// `apply(id, ops)` in commit order, and (unless `read_only`) cuts torn tails and
/// unacknowledged frames off the files.
pub(crate) fn recover(
    dir: &Path,
    io: &dyn Io,
    start: (u64, ChainHash),
    read_only: bool,
    mut apply: impl FnMut(u64, &BodyView<'_>) -> Result<()>,
) -> Result<Recovered> {
    let mut logs = list(dir)?;
    let mut acked = 0u64;
    for log in &mut logs {
        acked = acked.max(scan(log)?);
    }
    for log in &logs {
        if let (Some(stop), Some(after)) = (log.stop, log.after_stop) {
            if after == 0 || after <= acked {
                let seg = &log.segments[stop.segment];
                let what = if after == 0 {
                    "a clean-close mark".to_owned()
                } else {
                    format!("acknowledged commit {after}")
                };
                return Err(corrupt(
                    &seg.path,
                    stop.offset as u64,
                    None,
                    format!("invalid bytes, followed by {what}"),
                ));
            }
        }
    }

    // Merge: one cursor per shard, smallest commit id first.
    struct Cursor {
        segment: usize,
        offset: usize,
    }
    let mut cursors: Vec<Cursor> = logs
        .iter()
        .map(|_| Cursor {
            segment: 0,
            offset: SEGMENT_HEADER,
        })
        .collect();
    // Advances a shard's cursor to its next commit frame before its stop point.
    let next_frame = |log: &ShardLog, c: &mut Cursor| -> Option<(u64, usize, usize)> {
        loop {
            let seg = log.segments.get(c.segment)?;
            if let Some(stop) = log.stop {
                if (c.segment, c.offset) >= (stop.segment, stop.offset) {
                    return None;
                }
            }
            let b = seg.bytes();
            if c.offset >= b.len() {
                c.segment += 1;
                c.offset = SEGMENT_HEADER;
                continue;
            }
            let Parsed::Frame(f) = parse_verified_frame(&b[c.offset..]) else {
                // Zeros to the end of the segment (a stop point returned above).
                c.segment += 1;
                c.offset = SEGMENT_HEADER;
                continue;
            };
            let at = c.offset;
            c.offset += f.stride;
            if f.kind != KIND_MARK {
                return Some((frame_id(f.body), c.segment, at));
            }
        }
    };
    let mut heap = BinaryHeap::new();
    for (i, log) in logs.iter().enumerate() {
        if let Some((id, seg, at)) = next_frame(log, &mut cursors[i]) {
            heap.push(std::cmp::Reverse((id, i, seg, at)));
        }
    }

    let (mut last_id, mut hash) = start;
    // Recent chain hashes, to check anchors against.
    const RECENT: u64 = 1 << 16;
    // Indexed by `id mod RECENT`; each slot says which id it holds.
    let mut recent = vec![(u64::MAX, ChainHash([0; 32])); RECENT as usize];
    recent[(last_id % RECENT) as usize] = (last_id, hash);
    let mut replayed = 0u64;
    // Where each shard's frames stop counting: the first unacknowledged one.
    let mut cut: Vec<Option<(usize, usize)>> = vec![None; logs.len()];
    while let Some(std::cmp::Reverse((id, i, seg, at))) = heap.pop() {
        let log = &logs[i];
        let path = &log.segments[seg].path;
        if id <= last_id && id <= start.0 {
            // Covered by the checkpoint.
        } else if id <= last_id {
            return Err(corrupt(
                path,
                at as u64,
                Some(id),
                format!("commit {id} appears twice in the journal"),
            ));
        } else if id > last_id + 1 {
            let missing = last_id + 1;
            if missing <= acked {
                return Err(corrupt(
                    dir,
                    0,
                    Some(missing),
                    format!(
                        "commit {missing} is missing from every shard, but commits up to {acked} were acknowledged"
                    ),
                ));
            }
            // The crash cut the order here: this frame and everything after it
            // in every shard was never acknowledged.
            cut[i] = Some((seg, at));
            for std::cmp::Reverse((_, j, s, a)) in heap.drain() {
                cut[j] = Some((s, a));
            }
            break;
        } else {
            let Parsed::Frame(f) = parse_verified_frame(&log.segments[seg].bytes()[at..]) else {
                unreachable!("the scan verified this frame");
            };
            let (anchor, anchor_hash) = f.anchor;
            if anchor >= id {
                return Err(corrupt(
                    path,
                    at as u64,
                    Some(id),
                    format!("anchor names commit {anchor}, which is not before it"),
                ));
            }
            let (held, expected) = &recent[(anchor % RECENT) as usize];
            if *held == anchor && *expected != anchor_hash {
                return Err(corrupt(
                    path,
                    at as u64,
                    Some(id),
                    format!(
                        "hash chain mismatch: the frame says commit {anchor} hashes to {anchor_hash}, replay computed {expected}"
                    ),
                ));
            }
            let body = BodyView::parse(f.body).ok_or_else(|| {
                corrupt(path, at as u64, Some(id), "the record body is malformed")
            })?;
            debug_assert_eq!(body.commit_id, id);
            hash = hash.next(f.body);
            last_id = id;
            recent[(id % RECENT) as usize] = (id, hash);
            apply(id, &body)?;
            replayed += 1;
        }
        if let Some((nid, nseg, nat)) = next_frame(log, &mut cursors[i]) {
            heap.push(std::cmp::Reverse((nid, i, nseg, nat)));
        }
    }
    if acked > last_id {
        let path = dir.to_owned();
        return Err(corrupt(
            &path,
            0,
            Some(last_id + 1),
            format!("commits up to {acked} were acknowledged, but the journal ends at {last_id}"),
        ));
    }

    let next_seq = logs
        .iter()
        .flat_map(|l| l.segments.iter().map(|s| s.seq + 1))
        .max()
        .unwrap_or(0);
    let mut segments = Vec::new();
    for (i, log) in logs.into_iter().enumerate() {
        // Cut at the first unacknowledged frame, else at the stop point, else
        // trim the preallocated zeros off the last segment.
        let last = log.segments.len().saturating_sub(1);
        let cut_at = cut[i].or(log.stop.map(|s| (s.segment, s.offset))).or(log
            .segments
            .last()
            .map(|s| (last, s.end.max(SEGMENT_HEADER))));
        for (si, mut seg) in log.segments.into_iter().enumerate() {
            let Some((cs, co)) = cut_at else {
                segments.push(seg);
                continue;
            };
            if read_only || si < cs {
                segments.push(seg);
                continue;
            }
            let len = seg.bytes().len();
            seg.map = None;
            if si > cs || co <= SEGMENT_HEADER {
                io.remove(&seg.path).map_err(io_err("remove", &seg.path))?;
                continue;
            }
            if co < len {
                let file = File::options()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err("open", &seg.path))?;
                io.truncate(&file, co as u64)
                    .and_then(|()| io.sync(&file))
                    .map_err(io_err("truncate", &seg.path))?;
            }
            segments.push(seg);
        }
    }
    if !read_only {
        io.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    Ok(Recovered {
        last_id,
        last_hash: hash,
        replayed,
        segments,
        next_seq,
    })
}

/// What replay does with one op, for callers that apply records to a store.
pub(crate) fn for_each_op<'a>(
    body: &'a BodyView<'a>,
    mut f: impl FnMut(&'a [u8], Option<&'a [u8]>) -> Result<()>,
) -> Result<()> {
    for op in body.ops() {
        match op {
            OpView::Put(k, v) => f(k, Some(v))?,
            OpView::Delete(k) => f(k, None)?,
        }
    }
    Ok(())
}
