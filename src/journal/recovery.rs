//! Recovery: every shard's segments, verified and merged back into commit order,
//! held to what the database promised.
//!
//! What recovery is entitled to find is the *promised* point: the larger of the
//! manifest's (written durably on open, after each checkpoint and on a clean
//! close, see `manifest.rs`) and the largest binding watermark a frame carries.
//! A watermark binds when it counts only fsynced commits (`Durable` frames and
//! clean-close marks), or when the boot that wrote the journal is still running
//! (a process crash keeps the page cache, so `Buffered` acknowledgements hold).
//!
//! Each shard is read up to its first frame that is not valid (its stop point).
//! Then:
//! - beyond the promised point, anything may be missing or torn: a stop point is
//!   a torn tail, and the first commit id missing from every shard is where the
//!   crash cut the order; what follows is cut off (and counted in the report) so
//!   that its ids can be reused;
//! - a segment whose header never reached the disk and that holds no valid
//!   frame (empty, cut short, zero-filled) held nothing promised: it is removed;
//! - anything promised that is missing, cut, damaged or out of chain is
//!   `Error::Corrupt` naming the file, the offset and the commit: a stop point
//!   followed by a promised commit or a clean-close mark; a promised commit
//!   missing from every shard; a segment the manifest lists that is gone or
//!   ends before the last commit it listed; a chain hash that disagrees with an
//!   anchor or with the manifest.
//!
//! With `salvage`, every such finding is recorded instead and replay stops at
//! the last commit before the first of them: the longest intact prefix of the
//! commit order. The files it cuts are copied aside first.

use super::io::{data_end, open_regular, Io};
use super::manifest::{Listed, Manifest};
use super::record::{
    check_commit_id, parse_frame, parse_verified_frame, BodyView, ChainHash, OpView, Parsed,
    KIND_MARK, MAX_COMMIT_ID,
};
use super::shard::{
    parse_segment_name, segment_name, SEGMENT_HEADER, SEGMENT_MAGIC, SEGMENT_VERSION,
};
use crate::error::{Error, Result};
use crate::txn::CommitId;
use memmap2::Mmap;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// What recovery found, dropped and gave up when the engine was opened: in
/// `Stats::journal.recovery`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RecoveryReport {
    /// Commits replayed from the journal (after the checkpoint).
    pub replayed: u64,
    /// The point the database had promised as durable: recovery had to find
    /// every commit up to it.
    pub promised: u64,
    /// Commits found beyond the cut of a crash (never acknowledged as durable,
    /// or acknowledged `Buffered` before a reboot), removed.
    pub dropped_commits: u64,
    /// Bytes of torn or unacknowledged frames cut off the segments.
    pub dropped_bytes: u64,
    /// Segment files removed because nothing promised was ever written to them
    /// (created just before a crash).
    pub removed_segments: u64,
    /// Set when the database was opened with `Options::salvage` and recovery had
    /// to give something up.
    pub salvage: Option<Salvage>,
}

/// What a salvage open gave up (see `Options::salvage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Salvage {
    /// The last commit kept: everything up to it is intact and chained.
    pub kept_through: u64,
    /// Commits up to `promised` (in the report) that were lost: at least
    /// `promised - kept_through`, when positive.
    pub lost_promised: u64,
    /// What a strict open would have reported, in the order found.
    pub findings: Vec<String>,
    /// Where the segment files salvage cut or removed were copied first.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::serialize::opt_path")
    )]
    pub set_aside: Option<PathBuf>,
}

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
    /// End of the bytes written to it (past this: zeros).
    written: usize,
    /// End of its data extents (past this: holes, which read as zeros): what
    /// is scanned, so that a sparse file costs what was written to it.
    data: usize,
    /// Its header is not valid and it holds no valid frame: created, never
    /// written (or written and never synced).
    unwritten: bool,
}

impl SegmentFile {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Bytes of it in use: up to the end of its last valid frame.
    pub(crate) fn used(&self) -> u64 {
        self.end.max(SEGMENT_HEADER) as u64
    }

    pub(crate) fn listed(&self) -> Listed {
        Listed {
            shard: self.shard,
            seq: self.seq,
            last: self.last_id,
        }
    }
}

/// Where a shard's valid frames end.
#[derive(Clone, Copy)]
struct Stop {
    segment: usize,
    offset: usize,
}

struct ShardLog {
    shard: usize,
    segments: Vec<SegmentFile>,
    /// The first invalid position, if the shard does not end cleanly at EOF.
    stop: Option<Stop>,
    /// The first valid frame found after the stop point: (its id, or 0 for a
    /// mark; its segment and offset).
    after_stop: Option<(u64, usize, usize)>,
    /// Why the stop point is one, when it is not simply invalid bytes.
    stop_reason: Option<String>,
}

/// How recovery is to read the journal.
pub(crate) struct Rules<'a> {
    /// The checkpoint replay starts from.
    pub start: (u64, ChainHash),
    pub manifest: Option<&'a Manifest>,
    /// The boot that wrote the journal is still running: `Buffered` watermarks bind.
    pub same_boot: bool,
    pub read_only: bool,
    pub salvage: bool,
    /// `Options::max_value_len`: replayed records are held to it.
    pub max_value_len: usize,
}

/// The result of reading the journal.
pub(crate) struct Recovered {
    pub last_id: u64,
    pub last_hash: ChainHash,
    /// Segments that remain, oldest first within each shard, with their last ids.
    pub segments: Vec<SegmentFile>,
    /// One past the highest segment number seen, for every shard.
    pub next_seq: u64,
    /// Valid commit frames found, before any cut.
    pub frames_found: u64,
    pub report: RecoveryReport,
    /// Every finding of a salvage read, as the typed error a strict read
    /// returns (the file, offset and commit): what `verify` reports.
    pub errors: Vec<Error>,
}

impl Recovered {
    /// No journal to read: the state is the checkpoint's. A `finding` (not
    /// empty) is what a salvage open gave up.
    pub(crate) fn nothing(start: (u64, ChainHash), promised: u64, finding: String) -> Recovered {
        Recovered {
            last_id: start.0,
            last_hash: start.1,
            segments: Vec::new(),
            next_seq: 0,
            frames_found: 0,
            errors: Vec::new(),
            report: RecoveryReport {
                promised: promised.max(start.0),
                salvage: (!finding.is_empty()).then(|| Salvage {
                    kept_through: start.0,
                    lost_promised: promised.saturating_sub(start.0),
                    findings: vec![finding],
                    set_aside: None,
                }),
                ..RecoveryReport::default()
            },
        }
    }
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

/// Strict recovery stops at the first finding; salvage records it and goes on.
struct Findings {
    salvage: bool,
    found: Vec<String>,
    errors: Vec<Error>,
}

impl Findings {
    fn report(&mut self, e: Error) -> Result<()> {
        if !self.salvage {
            return Err(e);
        }
        self.found.push(e.to_string());
        self.errors.push(e);
        Ok(())
    }
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
            let file = open_regular(&path)?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            let data = usize::try_from(data_end(&file, len)).unwrap_or(usize::MAX);
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
                written: 0,
                data,
                unwritten: false,
            });
        }
        logs.push(ShardLog {
            shard,
            segments,
            stop: None,
            after_stop: None,
            stop_reason: None,
        });
    }
    Ok(logs)
}

/// Why a segment's header is not valid, if it is not.
fn header_problem(seg: &SegmentFile) -> Option<String> {
    let b = seg.bytes();
    if b.len() < SEGMENT_HEADER {
        return Some("segment header is cut short".to_owned());
    }
    if &b[0..8] != SEGMENT_MAGIC {
        return Some("not a shardstone journal segment (bad magic)".to_owned());
    }
    let crc = u32::from_le_bytes(b[60..64].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[..60]) != crc {
        return Some("segment header checksum mismatch".to_owned());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return Some(format!("segment format version {version} is not supported"));
    }
    let shard = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    if (shard, seq) != (seg.shard, seg.seq) {
        return Some("segment header names another shard or segment than its file name".to_owned());
    }
    None
}

/// Whether any valid frame lies in `b` past the header position.
fn holds_a_frame(b: &[u8]) -> bool {
    let mut off = SEGMENT_HEADER;
    while off < b.len() {
        if let Parsed::Frame(_) = parse_frame(&b[off..]) {
            return true;
        }
        off += 8;
    }
    false
}

/// First pass over one shard: verifies every frame, finds the stop point and
/// the first binding frame after it; returns the largest binding watermark and
/// the number of commit frames before the stop.
fn scan(
    log: &mut ShardLog,
    start: u64,
    same_boot: bool,
    findings: &mut Findings,
) -> Result<(u64, u64)> {
    let mut acked = 0u64;
    let mut last = 0u64;
    // Segment and offset of the frame that set `last`.
    let mut last_at: Option<(usize, usize)> = None;
    let mut frames = 0u64;
    for si in 0..log.segments.len() {
        let seg = &log.segments[si];
        let b = seg.bytes();
        // Past this, the segment holds only (preallocated) zeros. Only its data
        // extents are looked at: holes read as zeros.
        let data = &b[..seg.data.min(b.len())];
        let written = data.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
        if let Some(problem) = header_problem(seg) {
            if !holds_a_frame(data) {
                // Created, never written or never synced: it held nothing.
                let seg = &mut log.segments[si];
                seg.unwritten = true;
                seg.written = written;
                continue;
            }
            // Frames whose segment header was lost (never synced, or damaged):
            // the shard stops here, and what follows is judged like any torn
            // tail: damage if it holds anything promised.
            if log.stop.is_none() {
                log.stop = Some(Stop {
                    segment: si,
                    offset: 0,
                });
                log.stop_reason = Some(problem);
            }
        }
        let mut off = SEGMENT_HEADER;
        let mut seg_last = 0;
        while off < b.len() {
            match parse_frame(&b[off..]) {
                Parsed::Frame(f) => {
                    if log.stop.is_none() {
                        // Ids a frame may name: a commit id in range, a
                        // watermark that leaves room to count on.
                        let bad = if f.kind != KIND_MARK {
                            check_commit_id(frame_id(f.body)).err()
                        } else {
                            None
                        }
                        .or_else(|| {
                            (f.durable > MAX_COMMIT_ID || f.anchor.0 > MAX_COMMIT_ID).then(|| {
                                format!(
                                    "the frame's watermark ({}) or anchor ({}) is beyond the largest commit id accepted ({MAX_COMMIT_ID})",
                                    f.durable, f.anchor.0
                                )
                            })
                        });
                        if let Some(reason) = bad {
                            findings.report(corrupt(&seg.path, off as u64, None, reason))?;
                            log.stop = Some(Stop {
                                segment: si,
                                offset: off,
                            });
                            log.stop_reason = Some("a frame naming an impossible id".to_owned());
                            off += f.stride;
                            continue;
                        }
                    }
                    if f.kind == KIND_MARK || f.synced || same_boot {
                        acked = acked.max(f.durable);
                    }
                    if log.stop.is_some()
                        && f.kind != KIND_MARK
                        && frame_id(f.body) <= start.saturating_add(1)
                    {
                        // The invalid bytes before this frame held only commits
                        // the checkpoint covers (a `Buffered` tail that never
                        // reached the disk, the checkpoint did): not a stop.
                        log.stop = None;
                        log.after_stop = None;
                        log.stop_reason = None;
                    }
                    if log.stop.is_some() {
                        if log.after_stop.is_none() {
                            let id = if f.kind == KIND_MARK {
                                0
                            } else {
                                frame_id(f.body)
                            };
                            log.after_stop = Some((id, si, off));
                        }
                    } else if f.kind != KIND_MARK {
                        let id = frame_id(f.body);
                        if id <= last {
                            // One of the two frames is damaged, and a damaged id can
                            // be the earlier one: name it when it is in this segment
                            // (the first point where the shard stops making sense),
                            // else the journal directory.
                            let (blamed, at) = match last_at {
                                Some((s, a)) if s == si => (seg.path.as_path(), a),
                                Some(_) => (seg.path.parent().unwrap_or(&seg.path), 0),
                                None => (seg.path.as_path(), off),
                            };
                            findings.report(corrupt(
                                blamed,
                                at as u64,
                                Some(id),
                                format!(
                                    "commit {id} follows commit {last} in one shard (at byte {off} of {})",
                                    seg.path.display()
                                ),
                            ))?;
                            log.stop = Some(Stop {
                                segment: si,
                                offset: off,
                            });
                        } else {
                            last = id;
                            last_at = Some((si, off));
                            seg_last = id;
                            frames += 1;
                        }
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
            Some(_) => SEGMENT_HEADER,
            None => off.min(b.len()),
        };
        let seg = &mut log.segments[si];
        seg.last_id = seg_last;
        seg.end = end;
        seg.written = written;
    }
    Ok((acked, frames))
}

fn frame_id(body: &[u8]) -> u64 {
    body.get(0..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// The best guess at where promised commit `missing` should have been: a
/// shard's stop point, else an unwritten segment, else the journal directory.
fn blame(dir: &Path, logs: &[ShardLog], missing: u64, promised: u64) -> Error {
    let reason = format!(
        "commit {missing} is missing from every shard, but commits up to {promised} were promised durable"
    );
    for log in logs {
        if let Some(stop) = log.stop {
            let seg = &log.segments[stop.segment];
            return corrupt(
                &seg.path,
                stop.offset as u64,
                Some(missing),
                format!("{reason}; this shard's frames stop here (damaged or cut)"),
            );
        }
    }
    for log in logs {
        if let Some(seg) = log.segments.iter().find(|s| s.unwritten) {
            return corrupt(
                &seg.path,
                0,
                Some(missing),
                format!("{reason}; this segment has no valid header"),
            );
        }
    }
    corrupt(dir, 0, Some(missing), reason)
}

/// Checks the segments the manifest lists against the files: each one that
/// held commits after the checkpoint must be there, holding them all.
fn check_listed(
    dir: &Path,
    logs: &[ShardLog],
    rules: &Rules<'_>,
    findings: &mut Findings,
) -> Result<()> {
    let Some(m) = rules.manifest else {
        return Ok(());
    };
    for l in m.segments.iter().filter(|l| l.last > rules.start.0) {
        let found = logs
            .iter()
            .filter(|log| log.shard == l.shard)
            .flat_map(|log| log.segments.iter())
            .find(|s| s.seq == l.seq);
        match found {
            None => {
                let path = dir.join(segment_name(l.shard, l.seq));
                findings.report(corrupt(
                    &path,
                    0,
                    Some(l.last),
                    format!(
                        "the segment is missing; the manifest lists it as holding commits up to {}",
                        l.last
                    ),
                ))?;
            }
            Some(s) if s.last_id < l.last => {
                let what = if s.unwritten {
                    "it has no valid header and no readable frame".to_owned()
                } else {
                    format!(
                        "its frames end after commit {} at byte {}",
                        s.last_id, s.end
                    )
                };
                findings.report(corrupt(
                    &s.path,
                    s.end as u64,
                    Some(s.last_id.saturating_add(1)),
                    format!(
                        "{what}, but the manifest lists it as holding commits up to {}",
                        l.last
                    ),
                ))?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads the journal in `dir`, replays every commit after `rules.start` through
/// `apply(id, ops)` in commit order, and (unless read-only) cuts torn tails and
/// unacknowledged frames off the files, removes segments that never held
/// anything, and syncs what remains.
pub(crate) fn recover(
    dir: &Path,
    io: &dyn Io,
    rules: &Rules<'_>,
    mut apply: impl FnMut(u64, &BodyView<'_>) -> Result<()>,
) -> Result<Recovered> {
    let start = rules.start;
    let mut findings = Findings {
        salvage: rules.salvage,
        found: Vec::new(),
        errors: Vec::new(),
    };
    let mut logs = list(dir)?;
    let mut acked = 0u64;
    let mut frames_found = 0u64;
    for log in &mut logs {
        let (a, n) = scan(log, start.0, rules.same_boot, &mut findings)?;
        acked = acked.max(a);
        frames_found += n;
    }
    let promised_manifest = rules.manifest.map_or(0, |m| m.promised.0);
    let promised = acked.max(promised_manifest);
    for log in &logs {
        if let (Some(stop), Some((after, _, _))) = (log.stop, log.after_stop) {
            if after == 0 || after <= promised {
                let seg = &log.segments[stop.segment];
                let what = if after == 0 {
                    "a clean-close mark".to_owned()
                } else {
                    format!("commit {after}, which was promised durable")
                };
                let damage = log
                    .stop_reason
                    .clone()
                    .unwrap_or_else(|| "invalid bytes".to_owned());
                findings.report(corrupt(
                    &seg.path,
                    stop.offset as u64,
                    (after > 0).then_some(after),
                    format!("{damage}, followed by {what}"),
                ))?;
            }
        }
    }
    check_listed(dir, &logs, rules, &mut findings)?;

    // Merge: one cursor per shard, smallest commit id first.
    struct Cursor {
        segment: usize,
        offset: usize,
        /// Past a hole the scan found harmless: verify every frame again.
        verify: bool,
    }
    let mut cursors: Vec<Cursor> = logs
        .iter()
        .map(|_| Cursor {
            segment: 0,
            offset: SEGMENT_HEADER,
            verify: false,
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
            if seg.unwritten || c.offset >= b.len() {
                c.segment += 1;
                c.offset = SEGMENT_HEADER;
                c.verify = false;
                continue;
            }
            let parsed = if c.verify {
                parse_frame(&b[c.offset..])
            } else {
                parse_verified_frame(&b[c.offset..])
            };
            let Parsed::Frame(f) = parsed else {
                if c.offset >= seg.written {
                    // Zeros to the end of the segment.
                    c.segment += 1;
                    c.offset = SEGMENT_HEADER;
                    c.verify = false;
                } else {
                    // A hole the scan found harmless: look past it.
                    c.offset += 8;
                    c.verify = true;
                }
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
    if let Some(m) = rules.manifest {
        if m.promised.0 == start.0 && m.promised.1 != start.1 {
            findings.report(corrupt(
                dir,
                0,
                Some(start.0),
                format!(
                    "hash chain mismatch: the manifest says commit {} hashes to {}, the checkpoint says {}",
                    start.0, m.promised.1, start.1
                ),
            ))?;
        }
    }
    let mut replayed = 0u64;
    let mut covered = 0u64;
    // Where each shard's frames stop counting: the first one not kept.
    let mut cut: Vec<Option<(usize, usize)>> = vec![None; logs.len()];
    // The last commit kept in each segment.
    let mut kept_last: Vec<Vec<u64>> = logs.iter().map(|l| vec![0; l.segments.len()]).collect();
    // The end of each shard's last kept frame: where a salvage cuts it.
    let mut kept_end: Vec<Option<(usize, usize)>> = vec![None; logs.len()];
    let stride_at = |log: &ShardLog, seg: usize, at: usize| match parse_verified_frame(
        &log.segments[seg].bytes()[at..],
    ) {
        Parsed::Frame(f) => f.stride,
        _ => 0,
    };
    // Where the last replayed frame was: shard, segment, offset.
    let mut last_kept: Option<(usize, usize, usize)> = None;
    'merge: while let Some(std::cmp::Reverse((id, i, seg, at))) = heap.pop() {
        let log = &logs[i];
        let path = &log.segments[seg].path;
        let mut finding = None;
        if id <= last_id && id <= start.0 {
            // Covered by the checkpoint.
            covered += 1;
            kept_last[i][seg] = id;
            kept_end[i] = Some((seg, at + stride_at(log, seg, at)));
        } else if id <= last_id {
            // One of the two frames is damaged. In one shard, the earlier is where
            // the journal stops making sense (a damaged id can precede the real
            // one); across shards nothing tells which, so the directory is named.
            let (blamed, offset) = match last_kept {
                Some((j, s, a)) if id == last_id && j == i => {
                    (logs[j].segments[s].path.as_path(), a)
                }
                Some((j, s, _)) if id == last_id => {
                    (logs[j].segments[s].path.parent().unwrap_or(path), 0)
                }
                _ => (path.as_path(), at),
            };
            finding = Some(corrupt(
                blamed,
                offset as u64,
                Some(id),
                format!(
                    "commit {id} appears twice in the journal (again in {} at byte {at})",
                    path.display()
                ),
            ));
        } else if id > last_id.saturating_add(1) {
            let missing = last_id.saturating_add(1);
            if missing <= promised {
                finding = Some(blame(dir, &logs, missing, promised));
            } else {
                // The crash cut the order here: this frame and everything after
                // it in every shard was never promised.
                cut[i] = Some((seg, at));
                for std::cmp::Reverse((_, j, s, a)) in heap.drain() {
                    cut[j] = Some((s, a));
                }
                break 'merge;
            }
        } else {
            let Parsed::Frame(f) = parse_verified_frame(&log.segments[seg].bytes()[at..]) else {
                unreachable!("the scan verified this frame");
            };
            let (anchor, anchor_hash) = f.anchor;
            let body = BodyView::parse(f.body);
            let (held, expected) = &recent[(anchor % RECENT) as usize];
            let next = hash.next(f.body);
            if anchor >= id {
                finding = Some(corrupt(
                    path,
                    at as u64,
                    Some(id),
                    format!("anchor names commit {anchor}, which is not before it"),
                ));
            } else if *held == anchor && *expected != anchor_hash {
                finding = Some(corrupt(
                    path,
                    at as u64,
                    Some(id),
                    format!(
                        "hash chain mismatch: the frame says commit {anchor} hashes to {anchor_hash}, replay computed {expected}"
                    ),
                ));
            } else if body.is_none() {
                finding = Some(corrupt(
                    path,
                    at as u64,
                    Some(id),
                    "the record body is malformed",
                ));
            } else if let Some(Err(why)) = body.as_ref().map(|b| b.validate(rules.max_value_len)) {
                finding = Some(corrupt(
                    path,
                    at as u64,
                    Some(id),
                    format!("the record is not a well-formed commit: {why}"),
                ));
            } else if let Some(m) = rules.manifest.filter(|m| m.promised.0 == id) {
                if m.promised.1 != next {
                    finding = Some(corrupt(
                        path,
                        at as u64,
                        Some(id),
                        format!(
                            "hash chain mismatch: the manifest says commit {id} hashes to {}, replay computed {next}",
                            m.promised.1
                        ),
                    ));
                }
            }
            if finding.is_none() {
                let body = body.expect("checked above");
                debug_assert_eq!(body.commit_id, id);
                hash = next;
                last_id = id;
                recent[(id % RECENT) as usize] = (id, hash);
                apply(id, &body)?;
                replayed += 1;
                last_kept = Some((i, seg, at));
                kept_last[i][seg] = id;
                kept_end[i] = Some((seg, at + f.stride));
            }
        }
        if let Some(e) = finding {
            findings.report(e)?;
            // Salvage: keep what came before this frame, in every shard.
            cut[i] = Some((seg, at));
            for std::cmp::Reverse((_, j, s, a)) in heap.drain() {
                cut[j] = Some((s, a));
            }
            break 'merge;
        }
        if let Some((nid, nseg, nat)) = next_frame(log, &mut cursors[i]) {
            heap.push(std::cmp::Reverse((nid, i, nseg, nat)));
        }
    }
    if promised > last_id {
        findings.report(blame(dir, &logs, last_id.saturating_add(1), promised))?;
    }

    let next_seq = logs
        .iter()
        .flat_map(|l| l.segments.iter().map(|s| s.seq.saturating_add(1)))
        .max()
        .unwrap_or(0);
    let salvaging = !findings.found.is_empty();
    let set_aside = if salvaging && !rules.read_only {
        Some(set_aside(dir, &logs, last_id)?)
    } else {
        None
    };
    let mut report = RecoveryReport {
        replayed,
        promised,
        dropped_commits: frames_found.saturating_sub(replayed + covered),
        ..RecoveryReport::default()
    };
    let mut segments = Vec::new();
    for (i, log) in logs.into_iter().enumerate() {
        // Cut at the first frame not kept, else at the stop point, else trim
        // the preallocated zeros off the last segment.
        // A salvage cuts every shard right after its last kept frame: a mark
        // after it would vouch for commits that are gone.
        let last = log.segments.len().saturating_sub(1);
        let cut_at = if salvaging {
            Some(kept_end[i].unwrap_or((0, SEGMENT_HEADER)))
        } else {
            cut[i].or(log.stop.map(|s| (s.segment, s.offset))).or(log
                .segments
                .last()
                .map(|s| (last, s.end.max(SEGMENT_HEADER))))
        };
        for (si, mut seg) in log.segments.into_iter().enumerate() {
            seg.last_id = kept_last[i][si];
            if seg.unwritten {
                report.removed_segments += 1;
                if !rules.read_only {
                    seg.map = None;
                    io.remove(&seg.path).map_err(io_err("remove", &seg.path))?;
                }
                continue;
            }
            let Some((cs, co)) = cut_at else {
                segments.push(seg);
                continue;
            };
            if si < cs {
                segments.push(seg);
                continue;
            }
            let written = seg.written.max(SEGMENT_HEADER);
            if si > cs || co <= SEGMENT_HEADER {
                report.dropped_bytes += (written - SEGMENT_HEADER) as u64;
                if rules.read_only {
                    segments.push(seg);
                    continue;
                }
                seg.map = None;
                io.remove(&seg.path).map_err(io_err("remove", &seg.path))?;
                continue;
            }
            report.dropped_bytes += written.saturating_sub(co) as u64;
            seg.end = seg.end.min(co);
            let len = seg.bytes().len();
            if rules.read_only {
                segments.push(seg);
                continue;
            }
            seg.map = None;
            let file = File::options()
                .write(true)
                .open(&seg.path)
                .map_err(io_err("open", &seg.path))?;
            if co < len {
                io.truncate(&file, co as u64)
                    .map_err(io_err("truncate", &seg.path))?;
            }
            segments.push(seg);
        }
    }
    if !rules.read_only {
        // What stays is promised from now on: it must be on disk (a `Buffered`
        // session may have left it in the page cache only).
        for seg in &segments {
            let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            io.sync(&file).map_err(io_err("fdatasync", &seg.path))?;
        }
        io.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    let errors = std::mem::take(&mut findings.errors);
    if salvaging {
        report.salvage = Some(Salvage {
            kept_through: last_id,
            lost_promised: promised.saturating_sub(last_id),
            findings: findings.found,
            set_aside,
        });
    }
    Ok(Recovered {
        last_id,
        last_hash: hash,
        segments,
        next_seq,
        frames_found,
        report,
        errors,
    })
}

/// Copies every segment file into `dir/../salvage-<last kept commit>/` before a
/// salvage cuts them, so nothing it gives up is destroyed.
fn set_aside(dir: &Path, logs: &[ShardLog], kept: u64) -> Result<PathBuf> {
    let parent = dir.parent().unwrap_or(dir);
    let mut aside = parent.join(format!("salvage-{kept}"));
    let mut n = 1;
    while aside.exists() {
        aside = parent.join(format!("salvage-{kept}.{n}"));
        n += 1;
    }
    std::fs::create_dir(&aside).map_err(io_err("create directory", &aside))?;
    for seg in logs.iter().flat_map(|l| l.segments.iter()) {
        let to = aside.join(seg.path.file_name().unwrap_or_default());
        std::fs::copy(&seg.path, &to).map_err(io_err("copy", &seg.path))?;
    }
    Ok(aside)
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
