//! Damaged files: bytes flipped in, and files truncated at, every region of the
//! journal segments and of the checkpoint. Opening must either recover exactly
//! what the rules allow or fail with `Error::Corrupt` naming the damage; never
//! panic, never silently drop an acknowledged commit.
//!
//! The rules (src/journal/recovery.rs): every frame records the watermark of
//! acknowledged commits when it was made, and a clean close writes a mark with
//! the final one. A commit at or below the largest watermark found was
//! acknowledged: losing it is damage, reported as `Corrupt`; above it, the
//! first missing commit is where a crash cut the order (a torn tail), and the
//! commits from there on are dropped.
//!
//! - After a clean close every commit was acknowledged, and each shard's mark
//!   says so; so an open that succeeds must give the full state at the last
//!   commit, with its chain hash. Some damage costs nothing (a padding byte, the
//!   unused part of the checkpoint's header block, a mark when the other
//!   shard's mark still vouches for everything): those open with the full state.
//!   Everything else must be `Corrupt`, naming the damaged file (at or before
//!   the damaged byte), or, for a commit missing from the journal, the journal
//!   directory.
//! - After a crash (no marks), the tests predict the outcome exactly from the
//!   frames left intact: `Corrupt` when a commit at or below the largest
//!   surviving watermark is lost, otherwise the replay of the commits before the
//!   first lost one (state and chain hash). The recovered engine then takes the
//!   next commit id, and a second reopen agrees: the unacknowledged frames that
//!   were cut off are gone for good.
//!
//! The on-disk formats are documented in src/journal/record.rs (frames),
//! src/journal/shard.rs (segment header) and src/journal/checkpoint.rs; the tests
//! walk frames by their length fields only, to choose where to damage them.

mod common;

use common::{
    copy_db, cpus_for_shards, enc, panic_text, par_map, pin, scan, Entries, Rng, TempDir,
};
use shardstone::{ChainHash, CommitId, Durability, Engine, Error, Options};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 2;
const SEGMENT_SIZE: usize = 64 * 1024;
const SEGMENT_HEADER: usize = 64;
const FRAME_HEADER: usize = 64;
const KIND_COMMIT: u8 = 1;
const KIND_MARK: u8 = 2;
const CKPT_BLOCK: usize = 64 * 1024;
/// Magic, version, block size, commit id, chain hash, entries, blocks, crc.
const CKPT_HEADER: usize = 80;

fn opts() -> Options {
    Options {
        durability: Durability::Durable,
        journal_shards: SHARDS,
        segment_size: SEGMENT_SIZE as u64,
        ..Default::default()
    }
}

#[track_caller]
fn assert_no_violations(what: &str, bad: &[String], cases: usize) {
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(40).map(String::as_str).collect();
        panic!(
            "{what}: {} of {cases} mutations broke a promise; the first {}:\n  {}",
            bad.len(),
            shown.len(),
            shown.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// Journal shards by CPU.

// ---------------------------------------------------------------------------
// Reading the files, to know where to damage them.

#[derive(Clone, Copy, Debug)]
struct FrameInfo {
    start: usize,
    /// Length without padding.
    len: usize,
    /// Length with padding.
    stride: usize,
    kind: u8,
    /// Commit id (0 for a mark).
    id: u64,
    /// The acknowledged watermark the frame records.
    durable: u64,
}

impl FrameInfo {
    fn end(&self) -> usize {
        self.start + self.len
    }
    fn describe(&self) -> String {
        if self.kind == KIND_MARK {
            format!("the mark at {}", self.start)
        } else {
            format!("frame of commit {} at {}", self.id, self.start)
        }
    }
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Walks the frames of an undamaged segment by their length fields.
fn parse_frames(b: &[u8]) -> Vec<FrameInfo> {
    let mut frames = Vec::new();
    let mut off = SEGMENT_HEADER;
    while off + FRAME_HEADER <= b.len() {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
        if len < FRAME_HEADER || off + len > b.len() {
            break;
        }
        let kind = b[off + 8];
        assert!(
            kind == KIND_COMMIT || kind == KIND_MARK,
            "kind {kind} at {off}"
        );
        frames.push(FrameInfo {
            start: off,
            len,
            stride: len.next_multiple_of(8),
            kind,
            id: if kind == KIND_COMMIT {
                word(b, off + FRAME_HEADER)
            } else {
                0
            },
            durable: word(b, off + 16),
        });
        off += len.next_multiple_of(8);
    }
    frames
}

#[derive(Clone, Debug)]
struct Segment {
    /// Relative to the database directory: `journal/s0001-0000000003.log`.
    rel: String,
    shard: usize,
    seq: u64,
    len: usize,
    frames: Vec<FrameInfo>,
}

impl Segment {
    /// Where the frames end (the preallocated zeros of a full segment follow).
    fn frames_end(&self) -> usize {
        self.frames
            .last()
            .map_or(SEGMENT_HEADER, |f| f.start + f.stride)
    }
}

/// Every segment of the database in `dir`, by shard then sequence number.
fn segments(dir: &Path) -> Vec<Segment> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join("journal")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(rest) = name.strip_prefix('s').and_then(|r| r.strip_suffix(".log")) else {
            continue;
        };
        let (shard, seq) = rest.split_once('-').unwrap();
        let bytes = std::fs::read(dir.join("journal").join(&name)).unwrap();
        out.push(Segment {
            rel: format!("journal/{name}"),
            shard: shard.parse().unwrap(),
            seq: seq.parse().unwrap(),
            len: bytes.len(),
            frames: parse_frames(&bytes),
        });
    }
    out.sort_by_key(|s| (s.shard, s.seq));
    out
}

/// The last segment of each shard that has one.
fn last_segments(segs: &[Segment]) -> Vec<&Segment> {
    let shards: BTreeSet<usize> = segs.iter().map(|s| s.shard).collect();
    shards
        .into_iter()
        .map(|shard| segs.iter().rev().find(|s| s.shard == shard).unwrap())
        .collect()
}

fn checkpoint_file(dir: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ckpt"))
        .collect();
    assert_eq!(names.len(), 1, "one checkpoint: {names:?}");
    names[0].clone()
}

// ---------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Damage {
    /// `byte ^= mask` at this offset.
    Flip { at: usize, mask: u8 },
    /// The file is cut to this length.
    Truncate { at: usize },
    /// The file's bytes from `at` are replaced by this many bytes copied from
    /// `from` (a torn write of a copy of an earlier frame).
    Partial { at: usize, from: usize, len: usize },
}

impl Damage {
    /// The first byte the damage changes.
    fn first_byte(&self) -> usize {
        match *self {
            Damage::Flip { at, .. } | Damage::Truncate { at } | Damage::Partial { at, .. } => at,
        }
    }
}

#[derive(Clone, Debug)]
struct Mutation {
    /// The damaged file, relative to the database directory.
    rel: String,
    damage: Damage,
    /// Which region of the file it hits, in words.
    region: String,
}

impl std::fmt::Display for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.damage {
            Damage::Flip { at, mask } => write!(f, "byte {at} ^ {mask:#04x}")?,
            Damage::Truncate { at } => write!(f, "truncate to {at} bytes")?,
            Damage::Partial { at, from, len } => {
                write!(f, "{len} bytes from {from} written at {at}")?
            }
        }
        write!(f, " of {} ({})", self.rel, self.region)
    }
}

fn apply(dir: &Path, m: &Mutation) {
    let path = dir.join(&m.rel);
    let mut bytes = std::fs::read(&path).unwrap();
    match m.damage {
        Damage::Flip { at, mask } => bytes[at] ^= mask,
        Damage::Truncate { at } => bytes.truncate(at),
        Damage::Partial { at, from, len } => {
            let copy = bytes[from..from + len].to_vec();
            bytes[at..at + len].copy_from_slice(&copy);
        }
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Collects mutations, once per (damage) per file.
struct Plan<'a> {
    rel: &'a str,
    len: usize,
    seen: BTreeSet<Damage>,
    out: Vec<Mutation>,
}

impl<'a> Plan<'a> {
    fn new(rel: &'a str, len: usize) -> Plan<'a> {
        Plan {
            rel,
            len,
            seen: BTreeSet::new(),
            out: Vec::new(),
        }
    }
    fn flip(&mut self, at: usize, mask: u8, region: &str) {
        if at < self.len {
            self.add(Damage::Flip { at, mask }, region);
        }
    }
    fn cut(&mut self, at: usize, region: &str) {
        if at < self.len {
            self.add(Damage::Truncate { at }, region);
        }
    }
    fn add(&mut self, damage: Damage, region: &str) {
        if self.seen.insert(damage) {
            self.out.push(Mutation {
                rel: self.rel.to_owned(),
                damage,
                region: region.to_owned(),
            });
        }
    }
}

/// Frames to damage: all of a short list; else the first and last few and a
/// stride through the middle.
fn sample(frames: &[FrameInfo], ends: usize, middle: usize) -> Vec<FrameInfo> {
    if frames.len() <= 2 * ends + middle {
        return frames.to_vec();
    }
    let stride = (frames.len() - 2 * ends).div_ceil(middle);
    let mut picked: Vec<FrameInfo> = frames[..ends].to_vec();
    picked.extend(frames[ends..frames.len() - ends].iter().step_by(stride));
    picked.extend_from_slice(&frames[frames.len() - ends..]);
    picked
}

/// Every region of a segment: each byte of its header, the header fields, body,
/// last byte and padding of a sample of frames (all frames of short segments,
/// always the last ones, the mark included), and the preallocated zeros after
/// the frames. Flips of 0x01 everywhere, of 0xff at some places; truncations at
/// each frame boundary and inside every region.
fn segment_mutations(seg: &Segment, ends: usize, middle: usize) -> Vec<Mutation> {
    let mut p = Plan::new(&seg.rel, seg.len);
    for at in 0..SEGMENT_HEADER {
        p.flip(at, 0x01, "segment header");
    }
    for at in [0, 8, 12, 16, 60, 63] {
        p.flip(at, 0xff, "segment header");
    }
    for at in [0, 1, 8, 32, 63] {
        p.cut(at, "segment header");
    }
    for f in sample(&seg.frames, ends, middle) {
        let hdr = format!("{}, header", f.describe());
        for d in [0, 1, 3, 4, 7, 8, 9, 15, 16, 23, 24, 31, 32, 47, 63] {
            p.flip(f.start + d, 0x01, &hdr);
        }
        p.flip(f.start, 0xff, &hdr);
        p.flip(f.start + 8, 0xff, &hdr);
        p.cut(f.start, &format!("{}, its start", f.describe()));
        p.cut(f.start + 1, &hdr);
        p.cut(f.start + 63, &hdr);
        if f.len > FRAME_HEADER {
            let body = format!("{}, body", f.describe());
            for at in [
                f.start + 64,
                f.start + 71,
                f.start + 72,
                f.start + (FRAME_HEADER + f.len) / 2,
            ] {
                p.flip(at, 0x01, &body);
            }
            p.cut(f.start + FRAME_HEADER, &body);
            p.cut(f.start + (FRAME_HEADER + f.len) / 2, &body);
        }
        let last = format!("{}, last byte", f.describe());
        p.flip(f.end() - 1, 0x01, &last);
        p.flip(f.end() - 1, 0xff, &last);
        p.cut(f.end() - 1, &last);
        if f.stride > f.len {
            let pad = format!("{}, padding", f.describe());
            p.flip(f.end(), 0x01, &pad);
            p.flip(f.start + f.stride - 1, 0xff, &pad);
            p.cut(f.end(), &pad);
        }
    }
    let end = seg.frames_end();
    if end < seg.len {
        for at in [
            end,
            end + 1,
            end + 63,
            end + 64,
            (end + seg.len) / 2,
            seg.len - 1,
        ] {
            p.flip(at, 0x01, "zeros after the frames");
        }
        for at in [end, end + 1, seg.len - 1] {
            p.cut(at, "zeros after the frames");
        }
    }
    p.cut(seg.len - 1, "the last byte");
    p.out
}

/// Every region of the checkpoint: each byte of the header fields, the unused
/// rest of the header block, and each data block's checksum, length, first
/// entry, middle and last byte; truncations in each.
fn checkpoint_mutations(rel: &str, bytes: &[u8]) -> Vec<Mutation> {
    let len = bytes.len();
    let blocks = word(bytes, 64) as usize;
    let mut p = Plan::new(rel, len);
    for at in 0..CKPT_HEADER {
        p.flip(at, 0x01, "checkpoint header");
    }
    for at in [0, 8, 12, 16, 24, 56, 64, 76, 79] {
        p.flip(at, 0xff, "checkpoint header");
    }
    for at in [0, 1, 16, 40, 79] {
        p.cut(at, "checkpoint header");
    }
    for at in [CKPT_HEADER, CKPT_HEADER + 1, 4096, CKPT_BLOCK - 1] {
        p.flip(at, 0x01, "unused rest of the header block");
        p.cut(at, "unused rest of the header block");
    }
    assert!(blocks >= 2, "the checkpoint spans {blocks} data blocks");
    for b in 1..=blocks {
        let start = b * CKPT_BLOCK;
        let end = ((b + 1) * CKPT_BLOCK).min(len);
        let region = format!("data block {b} of {blocks}");
        for d in 0..8 {
            p.flip(start + d, 0x01, &format!("{region}, checksum and length"));
        }
        for at in [start, start + 4, start + 7] {
            p.flip(at, 0xff, &format!("{region}, checksum and length"));
        }
        for at in [
            start + 8,
            start + 9,
            start + 14,
            start + 100,
            (start + end) / 2,
        ] {
            p.flip(at, 0x01, &format!("{region}, payload"));
        }
        p.flip(end - 1, 0x01, &format!("{region}, last byte"));
        p.flip(end - 1, 0xff, &format!("{region}, last byte"));
        for at in [
            start,
            start + 1,
            start + 7,
            start + 8,
            start + 100,
            (start + end) / 2,
        ] {
            p.cut(at, &region);
        }
        p.cut(end - 1, &format!("{region}, last byte"));
    }
    p.out
}

// ---------------------------------------------------------------------------
// Opening a damaged copy.

/// What opening a damaged copy gave.
enum Opened {
    /// Its state and last commit, and what a commit after the open, a clean
    /// close and a second open gave (the commit's id, the second open's state
    /// and last commit), or why that failed.
    Ok {
        state: Entries,
        last: (CommitId, ChainHash),
        then: Result<(u64, Entries, (CommitId, ChainHash)), String>,
    },
    Err(Error),
    Panicked(String),
}

/// Opens `dir`, never letting a panic out. On success, also commits once,
/// closes, reopens and reads everything again.
fn open_damaged(dir: &Path) -> Opened {
    let result = std::panic::catch_unwind(|| {
        let engine = Engine::open_with(dir, opts())?;
        let state = scan(&engine.snapshot());
        let last = engine.last_commit();
        let then = (|| -> shardstone::Result<_> {
            engine.run("after", |tx| tx.put(b"after-the-damage", b"1"))?;
            let id = engine.commit_id().get();
            engine.close()?;
            let engine = Engine::open_with(dir, opts())?;
            Ok((id, scan(&engine.snapshot()), engine.last_commit()))
        })()
        .map_err(|e| e.to_string());
        Ok::<_, Error>((state, last, then))
    });
    match result {
        Ok(Ok((state, last, then))) => Opened::Ok { state, last, then },
        Ok(Err(e)) => Opened::Err(e),
        Err(p) => Opened::Panicked(panic_text(p)),
    }
}

/// Checks the commit after a successful open: it takes id `last + 1`, and the
/// second open holds `state` plus that commit.
fn check_then(
    then: &Result<(u64, Entries, (CommitId, ChainHash)), String>,
    state: &Entries,
    last: u64,
) -> Option<String> {
    match then {
        Err(e) => Some(format!(
            "after the open, a commit, a close and a reopen failed: {e}"
        )),
        Ok((id, _, _)) if *id != last + 1 => Some(format!(
            "after the open at commit {last}, the next commit took id {id}"
        )),
        Ok((id, again, (again_last, _))) => {
            let mut want = state.clone();
            want.push((b"after-the-damage".to_vec(), b"1".to_vec()));
            want.sort();
            (*again != want || again_last.get() != *id).then(|| {
                format!(
                    "the reopen after the next commit holds {} entries up to commit {}, expected {} up to {id}",
                    again.len(),
                    again_last.get(),
                    want.len()
                )
            })
        }
    }
}

/// Checks that a `Corrupt` error names the damage: the damaged file, at or
/// before the first byte changed (for a truncation of a checkpoint, at or
/// before the block holding it), or, for a segment, the journal directory (a
/// commit missing from the journal).
fn check_corrupt(dir: &Path, m: &Mutation, e: &Error) -> Option<String> {
    let Error::Corrupt { path, offset, .. } = e else {
        return Some(format!("failed with an error other than Corrupt: {e}"));
    };
    let damaged = dir.join(&m.rel);
    if *path == damaged {
        let mut limit = m.damage.first_byte() as u64;
        if m.rel.ends_with(".ckpt") {
            limit = limit.next_multiple_of(CKPT_BLOCK as u64);
        }
        return (*offset > limit)
            .then(|| format!("the error names byte {offset}, after the damage: {e}"));
    }
    if m.rel.starts_with("journal/") && *path == dir.join("journal") {
        return None;
    }
    Some(format!("the error names another file: {e}"))
}

// ---------------------------------------------------------------------------
// A database closed cleanly.

struct CleanDb {
    dir: TempDir,
    state: Entries,
    last: (CommitId, ChainHash),
    checkpoint: u64,
}

/// Two threads, each pinned to its own journal shard, run 250 commands each:
/// puts of their own keys (values from empty to 5 KB), overwrites and deletes
/// of shared keys. Thread 0 takes a checkpoint midway. Then a clean close.
fn build_clean_db(cpus: &[usize], seed: u64) -> CleanDb {
    let dir = TempDir::new("clean");
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    let checkpoint = AtomicU64::new(0);
    std::thread::scope(|s| {
        for (t, &cpu) in cpus.iter().enumerate() {
            let (engine, checkpoint) = (&engine, &checkpoint);
            s.spawn(move || {
                pin(cpu);
                let mut rng = Rng::new(seed * 100 + t as u64);
                for j in 0..250u64 {
                    if t == 0 && j == 120 {
                        let at = engine.checkpoint().unwrap();
                        checkpoint.store(at.get(), Ordering::SeqCst);
                    }
                    let own = format!("t{t}-{j:04}").into_bytes();
                    let value = match rng.below(10) {
                        0..=2 => rng.bytes_between(1500, 3000),
                        3 => rng.bytes_between(4000, 5000),
                        4 => Vec::new(),
                        _ => rng.bytes_between(1, 200),
                    };
                    let shared = format!("shared-{:02}", rng.below(20)).into_bytes();
                    let delete = rng.chance(1, 3);
                    engine
                        .run("mixed", |tx| {
                            tx.put(&own, &value)?;
                            if delete {
                                tx.delete(&shared)?;
                            } else {
                                tx.put(&shared, &enc(j))?;
                            }
                            Ok(())
                        })
                        .unwrap();
                }
            });
        }
    });
    let state = scan(&engine.snapshot());
    let last = engine.last_commit();
    assert_eq!(last.0.get(), 500);
    engine.close().unwrap();
    CleanDb {
        dir,
        state,
        last,
        checkpoint: checkpoint.load(Ordering::SeqCst),
    }
}

/// Whether the clean database has what the test relies on: both shards hold
/// commits after the checkpoint, each shard's last segment ends with a mark
/// (there was room for one), and some shard has a full segment before it.
fn clean_db_is_usable(segs: &[Segment]) -> bool {
    let last = last_segments(segs);
    last.len() == SHARDS
        && last
            .iter()
            .all(|s| s.frames.last().is_some_and(|f| f.kind == KIND_MARK))
        && segs.len() > SHARDS
}

/// Flips and truncations in every region of every segment and of the
/// checkpoint of a cleanly closed database. After a clean close everything was
/// acknowledged, so an open that succeeds must give the full state; any other
/// outcome must be `Corrupt` naming the damage.
#[test]
fn damage_to_a_cleanly_closed_database_is_reported_or_harmless() {
    let Some(cpus) = cpus_for_shards(&opts()) else {
        eprintln!("skipped: needs a CPU for each of {SHARDS} journal shards");
        return;
    };
    let (db, segs) = (1..=5)
        .map(|seed| {
            let db = build_clean_db(&cpus, seed);
            let segs = segments(db.dir.path());
            (db, segs)
        })
        .find(|(_, segs)| clean_db_is_usable(segs))
        .expect("a database whose shards both end with a mark");
    let ckpt_rel = checkpoint_file(db.dir.path());
    let ckpt_bytes = std::fs::read(db.dir.path().join(&ckpt_rel)).unwrap();
    assert_eq!(word(&ckpt_bytes, 16), db.checkpoint);

    let mut mutations = Vec::new();
    for seg in &segs {
        mutations.extend(segment_mutations(seg, 4, 10));
    }
    mutations.extend(checkpoint_mutations(&ckpt_rel, &ckpt_bytes));

    let started = std::time::Instant::now();
    let outcomes = par_map(&mutations, 1, |m| {
        let copy = TempDir::new("mutant");
        copy_db(db.dir.path(), copy.path());
        apply(copy.path(), m);
        let opened = open_damaged(copy.path());
        let verdict = match &opened {
            Opened::Panicked(p) => Err(format!("panicked: {p}")),
            Opened::Ok { state, last, then } => {
                if *state != db.state || *last != db.last {
                    Err(format!(
                        "opened with {} entries up to commit {}, but the full state is {} entries up to commit {}: acknowledged commits were dropped silently",
                        state.len(),
                        last.0.get(),
                        db.state.len(),
                        db.last.0.get()
                    ))
                } else {
                    check_then(then, state, last.0.get()).map_or(Ok("ok"), Err)
                }
            }
            Opened::Err(e) => match check_corrupt(copy.path(), m, e) {
                None if matches!(e, Error::Corrupt { path, .. } if *path == copy.path().join(&m.rel)) => {
                    Ok("corrupt: names the file")
                }
                None => Ok("corrupt: names the journal directory"),
                Some(why) => Err(why),
            },
        };
        verdict.map_err(|why| format!("{m}: {why}"))
    });
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for o in outcomes {
        match o {
            Ok(kind) => *tally.entry(kind).or_default() += 1,
            Err(why) => bad.push(why),
        }
    }
    eprintln!(
        "{} segments ({:?}), checkpoint at {} of {} bytes: {} mutations in {:?}: {tally:?}, {} broken",
        segs.len(),
        segs.iter()
            .map(|s| (s.rel.as_str(), s.len, s.frames.len()))
            .collect::<Vec<_>>(),
        db.checkpoint,
        ckpt_bytes.len(),
        mutations.len(),
        started.elapsed(),
        bad.len()
    );
    assert_no_violations("damage after a clean close", &bad, mutations.len());
    // Both kinds of outcome happened: the test reached harmless and harmful
    // damage alike.
    assert!(tally.get("ok").is_some_and(|&n| n > 0), "{tally:?}");
    assert!(
        tally.get("corrupt: names the file").is_some_and(|&n| n > 0),
        "{tally:?}"
    );
}

// ---------------------------------------------------------------------------
// A database left by a crash.

const CRASH_COMMANDS: usize = 200;

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut rng = Rng::new(1000 + i as u64);
    if i.is_multiple_of(3) {
        rng.bytes_between(1500, 3000)
    } else {
        rng.bytes_between(0, 150)
    }
}

/// The state after the first `p` commands of the crash database: command `i`
/// (commit `i + 1`) puts `key(i)`, sets `count` to `i + 1`, and every seventh
/// deletes the key of three commands before.
fn prefix_state(p: usize) -> Entries {
    let mut m = BTreeMap::new();
    for i in 0..p {
        m.insert(key(i), value(i));
        m.insert(b"count".to_vec(), enc(i as u64 + 1).to_vec());
        if i % 7 == 3 {
            m.remove(&key(i - 3));
        }
    }
    m.into_iter().collect()
}

struct CrashDb {
    dir: TempDir,
    /// `hashes[p]`: the last commit after `p` commands.
    hashes: Vec<(CommitId, ChainHash)>,
}

/// One thread runs the commands in order, hopping between the shards' CPUs at
/// random, so both shards hold interleaved commits and commit ids are command
/// numbers. Then the files are made to look as a crash leaves them: the
/// clean-close marks are removed, each shard's last segment is zero-filled
/// to its preallocated size, and the manifest is the one written on open.
fn build_crash_db(cpus: &[usize]) -> CrashDb {
    let dir = TempDir::new("crash");
    let hashes = std::thread::scope(|s| {
        s.spawn(|| {
            let engine = Engine::open_with(dir.path(), opts()).unwrap();
            // The manifest as the session leaves it until a clean close: what a
            // crash leaves behind.
            let manifest = std::fs::read(dir.path().join("manifest")).unwrap();
            let mut rng = Rng::new(77);
            let mut hashes = vec![engine.last_commit()];
            for i in 0..CRASH_COMMANDS {
                pin(cpus[rng.index(cpus.len())]);
                engine
                    .run("cmd", |tx| {
                        tx.put(&key(i), &value(i))?;
                        tx.put(b"count", &enc(i as u64 + 1))?;
                        if i % 7 == 3 {
                            tx.delete(&key(i - 3))?;
                        }
                        Ok(())
                    })
                    .unwrap();
                hashes.push(engine.last_commit());
                assert_eq!(engine.commit_id().get(), i as u64 + 1);
            }
            assert_eq!(scan(&engine.snapshot()), prefix_state(CRASH_COMMANDS));
            engine.close().unwrap();
            std::fs::write(dir.path().join("manifest"), manifest).unwrap();
            hashes
        })
        .join()
        .unwrap()
    });
    let segs = segments(dir.path());
    for seg in last_segments(&segs) {
        let path = dir.path().join(&seg.rel);
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(mark) = seg.frames.last().filter(|f| f.kind == KIND_MARK) {
            bytes.truncate(mark.start);
        }
        bytes.resize(bytes.len().max(SEGMENT_SIZE), 0);
        std::fs::write(&path, bytes).unwrap();
    }
    CrashDb { dir, hashes }
}

/// A mutation of the crash database, with the outcome the rules predict.
struct Predicted {
    m: Mutation,
    /// `Ok(p)`: opens with the first `p` commits; `Err(())`: `Corrupt`.
    expect: Result<usize, ()>,
}

/// Predicts the outcome of damaging the last segment `seg` at `damage`: the
/// frames it hits are lost (a truncation loses every frame it cuts into or off);
/// the largest watermark among the frames left, in every shard, says which
/// commits were acknowledged.
fn predict(all: &[Segment], seg: &Segment, damage: Damage) -> Result<usize, ()> {
    let hits = |f: &FrameInfo| match damage {
        Damage::Flip { at, .. } => (f.start..f.end()).contains(&at),
        Damage::Truncate { at } => f.end() > at,
        Damage::Partial { at, len, .. } => f.start < at + len && at < f.end(),
    };
    match damage {
        // A damaged header is damage, whatever follows (an empty file is a
        // segment created and never written, though).
        Damage::Flip { at, .. } if at < SEGMENT_HEADER => return Err(()),
        Damage::Truncate { at } if at > 0 && at < SEGMENT_HEADER => return Err(()),
        _ => {}
    }
    let mut lost = u64::MAX;
    let mut acked = 0;
    for s in all {
        for f in &s.frames {
            if s.rel == seg.rel && hits(f) {
                lost = lost.min(f.id);
            } else {
                acked = acked.max(f.durable);
            }
        }
    }
    if lost <= acked {
        Err(())
    } else {
        Ok((lost - 1).min(CRASH_COMMANDS as u64) as usize)
    }
}

/// Damage to the end of the journal of a database left by a crash (no marks):
/// a torn last frame is cut and the rest opens; damage that a later frame's
/// watermark proves acknowledged is `Corrupt`. Each outcome is predicted, and
/// each recovered state is checked against the replay of the same prefix.
#[test]
fn a_torn_tail_after_a_crash_is_cut_and_acknowledged_damage_is_reported() {
    let Some(cpus) = cpus_for_shards(&opts()) else {
        eprintln!("skipped: needs a CPU for each of {SHARDS} journal shards");
        return;
    };
    let db = build_crash_db(&cpus);
    let segs = segments(db.dir.path());
    // One thread: every frame records the commit before it as acknowledged.
    for s in &segs {
        for f in &s.frames {
            assert_eq!((f.kind, f.durable), (KIND_COMMIT, f.id - 1), "{}", s.rel);
        }
    }
    let n = CRASH_COMMANDS;
    // Undamaged, (a copy of) the crash image opens with every commit.
    let copy = TempDir::new("crash-undamaged");
    copy_db(db.dir.path(), copy.path());
    match open_damaged(copy.path()) {
        Opened::Ok { state, last, then } => {
            assert_eq!((&state, last), (&prefix_state(n), db.hashes[n]));
            assert_eq!(check_then(&then, &state, n as u64), None);
        }
        Opened::Err(e) => panic!("the crash image does not open: {e}"),
        Opened::Panicked(p) => panic!("the crash image panics: {p}"),
    }

    let mut cases = Vec::new();
    for seg in last_segments(&segs) {
        let frames = &seg.frames;
        let mut p = Plan::new(&seg.rel, seg.len);
        for at in [0, 32] {
            p.cut(at, "segment header");
        }
        p.flip(20, 0x01, "segment header");
        for f in sample(frames, 6, 12) {
            let what = f.describe();
            p.cut(f.start, &format!("{what}, its start"));
            p.cut(f.start + 1, &format!("{what}, header"));
            p.cut(f.start + FRAME_HEADER, &format!("{what}, body"));
            p.cut(f.end() - 1, &format!("{what}, last byte"));
            p.flip(f.start + 4, 0x01, &format!("{what}, checksum"));
            p.flip(f.start + 16, 0x01, &format!("{what}, watermark"));
            p.flip(f.start + FRAME_HEADER, 0x01, &format!("{what}, commit id"));
            p.flip(f.end() - 1, 0xff, &format!("{what}, last byte"));
        }
        let end = seg.frames_end();
        let last = frames.last().expect("a frame");
        // A torn append after the last frame: the first half of a copy of it.
        p.add(
            Damage::Partial {
                at: end,
                from: last.start,
                len: last.len / 2,
            },
            "a torn frame after the last one",
        );
        p.flip(end + 3, 0x01, "zeros after the frames");
        p.flip(end + 200, 0x01, "zeros after the frames");
        p.cut(end, "the end of the frames (no mark)");
        for m in p.out {
            let expect = predict(&segs, seg, m.damage);
            cases.push(Predicted { m, expect });
        }
    }
    let torn = cases.iter().filter(|c| c.expect.is_ok()).count();
    assert!(
        torn > 0 && torn < cases.len(),
        "both outcomes are predicted"
    );

    let bad: Vec<String> = par_map(&cases, 1, |c| {
        let copy = TempDir::new("crash-mutant");
        copy_db(db.dir.path(), copy.path());
        apply(copy.path(), &c.m);
        let why = match (open_damaged(copy.path()), c.expect) {
            (Opened::Panicked(p), _) => Some(format!("panicked: {p}")),
            (Opened::Ok { state, last, then }, Ok(p)) => {
                if state != prefix_state(p) || last != db.hashes[p] {
                    Some(format!(
                        "opened at commit {} with {} entries; the replay of the first {p} commits has {} entries",
                        last.0.get(),
                        state.len(),
                        prefix_state(p).len()
                    ))
                } else {
                    check_then(&then, &state, p as u64)
                }
            }
            (Opened::Ok { last, state, .. }, Err(())) => Some(format!(
                "opened at commit {} with {} entries, but the damage hit an acknowledged commit: expected Corrupt",
                last.0.get(),
                state.len()
            )),
            (Opened::Err(e), Ok(p)) => Some(format!(
                "expected a torn tail cut after commit {p}, got: {e}"
            )),
            (Opened::Err(e), Err(())) => check_corrupt(copy.path(), &c.m, &e),
        };
        why.map(|w| format!("{}: {w}", c.m))
    })
    .into_iter()
    .flatten()
    .collect();
    assert_no_violations("damage after a crash", &bad, cases.len());
}

/// A power loss right after a segment roll can leave the new segment all zeros:
/// the roll syncs the directory (the file exists, preallocated), but the header
/// written through the mapping reaches the disk only with the first commit's
/// fdatasync, which never returned. Nothing in it was acknowledged, so it is a
/// torn tail like any other, and the database opens with every commit.
#[test]
fn a_segment_left_all_zeros_by_a_crash_during_a_roll_is_a_torn_tail() {
    let Some(cpus) = cpus_for_shards(&opts()) else {
        eprintln!("skipped: needs a CPU for each of {SHARDS} journal shards");
        return;
    };
    let db = build_crash_db(&cpus);
    let segs = segments(db.dir.path());
    let n = CRASH_COMMANDS;
    let mut bad = Vec::new();
    for seg in last_segments(&segs) {
        let name = format!("journal/s{:04}-{:010}.log", seg.shard, seg.seq + 1);
        for (what, header) in [("all zeros", false), ("a header, then zeros", true)] {
            let copy = TempDir::new("zero-segment");
            copy_db(db.dir.path(), copy.path());
            let mut bytes = vec![0u8; SEGMENT_SIZE];
            if header {
                // The shard's real header, with the next sequence number and
                // its checksum redone (the control: recovery accepts this).
                let first = std::fs::read(copy.path().join(&seg.rel)).unwrap();
                assert_eq!(crc32c(&first[..60]).to_le_bytes(), first[60..64]);
                bytes[..SEGMENT_HEADER].copy_from_slice(&first[..SEGMENT_HEADER]);
                bytes[16..24].copy_from_slice(&(seg.seq + 1).to_le_bytes());
                let crc = crc32c(&bytes[..60]);
                bytes[60..64].copy_from_slice(&crc.to_le_bytes());
            }
            std::fs::write(copy.path().join(&name), &bytes).unwrap();
            match open_damaged(copy.path()) {
                Opened::Ok { state, last, then } => {
                    if state != prefix_state(n) || last != db.hashes[n] {
                        bad.push(format!(
                            "{name} ({what}): opened at commit {} with {} entries",
                            last.0.get(),
                            state.len()
                        ));
                    } else if let Some(why) = check_then(&then, &state, n as u64) {
                        bad.push(format!("{name} ({what}): {why}"));
                    }
                }
                Opened::Err(e) => bad.push(format!("{name} ({what}): the open failed: {e}")),
                Opened::Panicked(p) => bad.push(format!("{name} ({what}): panicked: {p}")),
            }
        }
    }
    assert_no_violations("a new segment left empty by a crash", &bad, 2 * SHARDS);
}

/// CRC-32C (Castagnoli), bitwise: enough to write a segment header.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A flip that turns a frame's commit id into the id of the next frame of the
/// same shard (its checksum recomputed, so the frame reads as whole) makes one id
/// appear twice. The damaged frame comes first in the file, so the error must
/// name it (or a byte before it), never the intact frame after it.
#[test]
fn a_commit_id_damaged_into_the_next_ones_is_blamed_where_it_is() {
    let Some(cpus) = cpus_for_shards(&opts()) else {
        eprintln!("skipped: needs a CPU for each of {SHARDS} journal shards");
        return;
    };
    let db = build_clean_db(&cpus, 1);
    let segs = segments(db.dir.path());
    let mut tried = 0;
    for seg in &segs {
        for pair in seg.frames.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.kind != KIND_COMMIT || b.kind != KIND_COMMIT || b.id != a.id + 1 {
                continue;
            }
            if a.id <= db.checkpoint || tried >= 3 {
                continue;
            }
            tried += 1;
            let copy = TempDir::new("dup-id");
            copy_db(db.dir.path(), copy.path());
            let path = copy.path().join(&seg.rel);
            let mut bytes = std::fs::read(&path).unwrap();
            let id_at = a.start + FRAME_HEADER;
            bytes[id_at..id_at + 8].copy_from_slice(&b.id.to_le_bytes());
            let crc_input: Vec<u8> = bytes[a.start..a.start + 4]
                .iter()
                .chain(&bytes[a.start + 8..a.end()])
                .copied()
                .collect();
            let crc = crc32c(&crc_input);
            bytes[a.start + 4..a.start + 8].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, bytes).unwrap();
            let m = Mutation {
                rel: seg.rel.clone(),
                damage: Damage::Flip {
                    at: id_at,
                    mask: (a.id ^ b.id) as u8,
                },
                region: format!("commit id of {}", a.describe()),
            };
            match open_damaged(copy.path()) {
                Opened::Err(e) => {
                    if let Some(why) = check_corrupt(copy.path(), &m, &e) {
                        panic!("{m}: {why}");
                    }
                }
                Opened::Ok { .. } => panic!("{m}: opened as if nothing were wrong"),
                Opened::Panicked(p) => panic!("{m}: panicked: {p}"),
            }
        }
    }
    assert!(
        tried > 0,
        "no two consecutive commits in one segment after the checkpoint"
    );
}
