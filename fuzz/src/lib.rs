//! What the fuzz targets and the seed program share: the options and the small
//! database every file target starts from, a scratch directory reused across
//! iterations, and the checksum fix-ups that let a mutated file get past its
//! crc32c to the parsing behind it.
//!
//! Each file target opens every input twice when the fix-up changes it: once as
//! given (the checksum paths) and once with its checksums recomputed (the
//! decoding behind them). A valid seed needs no fix-up, so it runs once.

use shardstone::numa::Numa;
use shardstone::{CommitRecord, Engine, Options, Result};
use std::path::{Path, PathBuf};

/// Options of every engine the targets open: no NUMA pinning, one shard, the
/// smallest segments, no background checkpoint thread, so that an iteration
/// does little besides parsing.
pub fn options() -> Options {
    Options {
        numa: Numa::Off,
        auto_checkpoint: None,
        journal_shards: 1,
        workers: 1,
        segment_size: 1 << 16,
        feed_window_bytes: 1 << 20,
        ..Options::default()
    }
}

/// The file name of the first segment of shard 0.
pub const SEGMENT: &str = "s0000-0000000000.log";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest";
/// The consumers (retention holds) file's name.
pub const CONSUMERS: &str = "consumers";
/// Checkpoint block size (`src/journal/checkpoint.rs`).
pub const CKPT_BLOCK: usize = 64 * 1024;
/// Checkpoint header length, crc included.
pub const CKPT_HEADER: usize = 8 + 4 + 4 + 8 + 32 + 8 + 8 + 4;

/// `checkpoint-<id, 20 digits>.ckpt`.
pub fn checkpoint_name(id: u64) -> String {
    format!("checkpoint-{id:020}.ckpt")
}

/// A directory of this process under /dev/shm (or the temp dir), emptied by
/// [`Scratch::reset`] for each iteration and removed when the process exits.
pub struct Scratch {
    root: PathBuf,
}

impl Scratch {
    /// The scratch directory `name` of this process.
    pub fn new(name: &str) -> Scratch {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_owned()
        } else {
            std::env::temp_dir()
        };
        let root = base.join(format!("shardstone-fuzz-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create the scratch directory");
        remove_at_exit(&root);
        Scratch { root }
    }

    /// `root/sub`, emptied and recreated.
    pub fn reset(&self, sub: &str) -> PathBuf {
        let dir = self.root.join(sub);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch subdirectory");
        dir
    }

    /// `root/sub`, as it is.
    pub fn path(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }
}

static AT_EXIT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_scratch() {
    if let Ok(dirs) = AT_EXIT.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// libFuzzer ends a run with `exit()`: remove the scratch then. A crash leaves
/// it behind, which helps reproduce.
fn remove_at_exit(dir: &Path) {
    let mut dirs = AT_EXIT.lock().expect("scratch list");
    if dirs.is_empty() {
        // SAFETY: registers a plain `extern "C" fn()` that touches only a static.
        unsafe { libc::atexit(remove_scratch) };
    }
    dirs.push(dir.to_owned());
}

/// Builds the seed database in `dir` (which must be empty): commits before and
/// after a checkpoint, a delete, a value in overflow pages, a named consumer
/// holding part of the journal, and a clean close. Deterministic.
pub fn build_database(dir: &Path) -> Result<()> {
    let engine = Engine::open_with(dir, options())?;
    let put = |i: u32, len: usize| {
        engine.run("put", |tx| {
            tx.put(
                format!("key:{i:03}").as_bytes(),
                &vec![b'a' + (i % 26) as u8; len],
            )
        })
    };
    for i in 0..6 {
        put(i, 8 + i as usize)?;
    }
    engine.run("pair", |tx| {
        tx.put(b"acct:1", &10u64.to_le_bytes())?;
        tx.put(b"acct:2", &20u64.to_le_bytes())
    })?;
    // A consumer that read (and acknowledged) the first three commits.
    let mut feed = engine.subscribe_as("backup", 0)?;
    for _ in 0..3 {
        if let Some(rec) = feed.try_next()? {
            feed.ack(rec.commit_id);
        }
    }
    engine.checkpoint()?;
    put(100, 3000)?; // larger than a quarter page: overflow pages
    engine.run("remove", |tx| tx.delete(b"key:001").map(|_| ()))?;
    engine.run("empty", |_| Ok(()))?;
    put(101, 0)?;
    drop(feed);
    engine.close()
}

/// Builds a database with no checkpoint: its first segment holds every commit
/// from commit 1, so it opens beside a manifest for an empty database.
pub fn build_journal_only(dir: &Path) -> Result<()> {
    let engine = Engine::open_with(dir, options())?;
    for i in 0..5u32 {
        engine.run("put", |tx| {
            tx.put(format!("j:{i}").as_bytes(), &[i as u8; 5])
        })?;
    }
    engine.run("remove", |tx| tx.delete(b"j:2").map(|_| ()))?;
    engine.close()
}

/// Every commit of the database in `dir`, as the feed gives them.
pub fn records(dir: &Path) -> Result<Vec<CommitRecord>> {
    let engine = Engine::open_read_only(dir, options())?;
    let mut feed = engine.subscribe(0)?;
    let mut out = Vec::new();
    while let Some(rec) = feed.try_next()? {
        out.push(rec);
    }
    Ok(out)
}

/// Reads everything an opened engine can give: every key and value through a
/// snapshot, point reads of the keys found, the feed from commit 0 up to the
/// last commit, and the stats. Errors are fine; panics are what the targets find.
pub fn read_everything(engine: &Engine) {
    let snap = engine.snapshot();
    let mut keys = Vec::new();
    for item in snap.range::<std::ops::RangeFull>(..) {
        match item {
            Ok((k, v)) => {
                std::hint::black_box(&v[..]);
                keys.push(k);
            }
            Err(_) => break,
        }
    }
    for k in &keys {
        let _ = snap.get(k);
    }
    let (last, _) = engine.last_commit();
    if let Ok(mut feed) = engine.subscribe(0) {
        // try_next never blocks; the feed must not run past what was recovered.
        while let Ok(Some(rec)) = feed.try_next() {
            assert!(
                rec.commit_id <= last,
                "the feed gave a commit past the last"
            );
            if rec.commit_id >= last {
                break;
            }
        }
    }
    std::hint::black_box(engine.stats());
}

/// Opens `dir` read-only, then (on a copy of nothing: the same files) for
/// writing with `salvage` as asked, reading everything each time it opens.
pub fn open_and_read(dir: &Path, read_only: bool, salvage: bool) -> Result<()> {
    let opts = Options {
        salvage,
        ..options()
    };
    let engine = if read_only {
        Engine::open_read_only(dir, opts)?
    } else {
        Engine::open_with(dir, opts)?
    };
    read_everything(&engine);
    engine.close()
}

/// The input as given, then with its checksums recomputed by `fix` if that
/// changes it.
pub fn variants(data: &[u8], fix: impl Fn(&mut Vec<u8>)) -> Vec<Vec<u8>> {
    let mut fixed = data.to_vec();
    fix(&mut fixed);
    if fixed == data {
        vec![fixed]
    } else {
        vec![data.to_vec(), fixed]
    }
}

/// Recomputes the crc32c of every frame of a segment file that has a plausible
/// length (`src/journal/record.rs`: over bytes 0..4, then 8..len; frames are
/// 8-byte aligned).
pub fn fix_segment(b: &mut [u8]) {
    let mut at = 0;
    while at + 64 <= b.len() {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        if len < 64 || len > b.len() - at {
            break;
        }
        let f = &b[at..at + len];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&f[0..4]), &f[8..]);
        b[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at += len.div_ceil(8) * 8;
    }
}

/// Recomputes the manifest's trailing crc32c.
pub fn fix_manifest(b: &mut [u8]) {
    if b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32c::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Rewrites the consumers file's checksum line (`crc32c <decimal>\n`) to match
/// its body, adding one if there is none.
pub fn fix_consumers(b: &mut Vec<u8>) {
    let needle = b"crc32c ";
    let body_len = b
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap_or(b.len());
    b.truncate(body_len);
    let crc = crc32c::crc32c(b);
    b.extend_from_slice(format!("crc32c {crc}\n").as_bytes());
}

/// Recomputes a checkpoint file's header crc and the crc of every data block
/// whose `used` length fits (`src/journal/checkpoint.rs`).
pub fn fix_checkpoint(b: &mut [u8]) {
    if b.len() >= CKPT_HEADER {
        let crc = crc32c::crc32c(&b[..CKPT_HEADER - 4]);
        b[CKPT_HEADER - 4..CKPT_HEADER].copy_from_slice(&crc.to_le_bytes());
    }
    let mut at = CKPT_BLOCK;
    while at + 8 <= b.len() {
        let end = (at + CKPT_BLOCK).min(b.len());
        let used = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        if used > 0 && at + 8 + used <= end {
            let crc = crc32c::crc32c(&b[at + 4..at + 8 + used]);
            b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
        at += CKPT_BLOCK;
    }
}

/// A checkpoint file without the zero padding of its header block, which would
/// make every input at least 64 KiB: the header, then the data blocks.
pub fn compact_checkpoint(file: &[u8]) -> Vec<u8> {
    if file.len() < CKPT_BLOCK {
        return file.to_vec();
    }
    let mut out = file[..CKPT_HEADER].to_vec();
    out.extend_from_slice(&file[CKPT_BLOCK..]);
    out
}

/// The inverse of [`compact_checkpoint`]: inputs longer than a header get
/// their header block padded with zeros to a whole block.
pub fn expand_checkpoint(input: &[u8]) -> Vec<u8> {
    if input.len() <= CKPT_HEADER {
        return input.to_vec();
    }
    let mut out = input[..CKPT_HEADER].to_vec();
    out.resize(CKPT_BLOCK, 0);
    out.extend_from_slice(&input[CKPT_HEADER..]);
    out
}

/// The commit id and chain hash of a checkpoint header, if it is long enough.
pub fn checkpoint_header(file: &[u8]) -> Option<(u64, [u8; 32])> {
    (file.len() >= 56).then(|| {
        (
            u64::from_le_bytes(file[16..24].try_into().unwrap()),
            file[24..56].try_into().unwrap(),
        )
    })
}

/// A manifest (`src/journal/manifest.rs`, version 1) written by a clean close.
pub fn manifest_bytes(
    checkpoint: (u64, [u8; 32]),
    promised: (u64, [u8; 32]),
    segments: &[(u32, u64, u64)],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"SSTNMNFT");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // clean; no boot id
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&checkpoint.0.to_le_bytes());
    b.extend_from_slice(&checkpoint.1);
    b.extend_from_slice(&promised.0.to_le_bytes());
    b.extend_from_slice(&promised.1);
    b.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for &(shard, seq, last) in segments {
        b.extend_from_slice(&shard.to_le_bytes());
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&last.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The manifest of an empty database: nothing promised, no checkpoint.
pub fn empty_manifest() -> Vec<u8> {
    let genesis = shardstone::ChainHash::genesis().0;
    manifest_bytes((0, genesis), (0, genesis), &[])
}

/// Splits a follower input into encoded records: each is a u16 length
/// (little-endian) and that many bytes; a short tail is the last record.
pub fn split_records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let len = len.min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// The inverse of [`split_records`].
pub fn join_records(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = u16::try_from(r.len()).expect("a seed record under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Makes an encoded record continue a follower at `(last, hash)`: its commit id
/// becomes `last + 1`, its `prev_hash` `hash`, and its `hash` the chain hash
/// over its body (`BLAKE3(prev || body)`), so that `apply` goes past the
/// checks a fuzzer cannot forge to the ops behind them.
pub fn chain_onto(rec: &mut [u8], last: u64, hash: &[u8; 32]) {
    if rec.len() < 72 {
        return;
    }
    rec[64..72].copy_from_slice(&(last + 1).to_le_bytes());
    rec[0..32].copy_from_slice(hash);
    let mut h = blake3::Hasher::new();
    h.update(hash);
    h.update(&rec[64..]);
    let next = *h.finalize().as_bytes();
    rec[32..64].copy_from_slice(&next);
}

/// The seed database ([`build_database`]), built once per process and kept in
/// memory, copied into the scratch directory for each iteration.
pub struct Template {
    scratch: Scratch,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Template {
    /// Builds the seed database in the scratch directory `name`.
    pub fn new(name: &str) -> Template {
        let scratch = Scratch::new(name);
        let dir = scratch.reset("template");
        build_database(&dir).expect("build the seed database");
        let mut files = Vec::new();
        collect_files(&dir, Path::new(""), &mut files);
        Template { scratch, files }
    }

    /// The seed database in a fresh directory, with `rel` (relative to its
    /// root) holding `bytes`.
    pub fn copy_with(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let dir = self.scratch.reset("db");
        for (path, content) in &self.files {
            if path != Path::new(rel) {
                write_file(&dir.join(path), content);
            }
        }
        write_file(&dir.join(rel), bytes);
        dir
    }

    /// The seed database's files: path relative to its root, and content.
    pub fn files(&self) -> &[(PathBuf, Vec<u8>)] {
        &self.files
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create a directory");
    }
    std::fs::write(path, bytes).expect("write a database file");
}

/// Every regular file under `dir/rel` except the lock file, in name order.
pub fn collect_files(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))
        .expect("read a directory")
        .map(|e| e.expect("a directory entry").file_name())
        .collect();
    entries.sort();
    for name in entries {
        let rel = rel.join(&name);
        let path = dir.join(&rel);
        if path.is_dir() {
            collect_files(dir, &rel, out);
        } else if name != "LOCK" {
            out.push((rel, std::fs::read(&path).expect("read a database file")));
        }
    }
}
