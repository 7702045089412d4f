//! Hostile files (issue 19): every checksum is valid, the bytes are not
//! well-formed. A checksum proves the bytes are the ones written, not that what
//! was written was sane, or written by us. Opening such a database, or applying
//! such a record, must be a typed error: never a panic, a hang, a wrapped id or
//! a wrong read.
//!
//! The files are forged here byte by byte, after the formats documented in
//! src/journal/record.rs (frames), src/journal/shard.rs (segment header),
//! src/journal/checkpoint.rs and src/journal/manifest.rs. Frames are anchored
//! at the genesis hash (anchor 0) and carry no binding watermark; the manifest
//! promises the checkpoint's commit only, so the chain and the watermarks are
//! all in order and only the content is wrong. `a_forged_database_opens` checks
//! the forge itself: well-formed content opens and reads back.

mod common;

use common::TempDir;
use shardstone::{ChainHash, CommitRecord, Engine, Error, Op, Options};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- the forge

type ForgedOp<'a> = (&'a [u8], Option<&'a [u8]>);

/// A record body: commit id | name len u16 | name | op count u32 | ops.
fn body(id: u64, ops: &[ForgedOp<'_>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&5u16.to_le_bytes());
    b.extend_from_slice(b"forge");
    b.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (k, v) in ops {
        b.push(if v.is_some() { 1 } else { 2 });
        b.extend_from_slice(&(k.len() as u16).to_le_bytes());
        let v = v.unwrap_or(&[]);
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    b
}

/// A commit frame anchored at the genesis hash, no binding watermark, valid crc.
fn commit_frame(id: u64, ops: &[ForgedOp<'_>]) -> Vec<u8> {
    let body = body(id, ops);
    let mut f = vec![0u8; 64];
    f[8] = 1; // commit
    f[32..64].copy_from_slice(&ChainHash::genesis().0);
    f.extend_from_slice(&body);
    let len = f.len() as u32;
    f[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&f[0..4]);
    let crc = crc32c::crc32c_append(crc, &f[8..]);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f
}

fn segment_path(dir: &Path, shard: u32, seq: u64) -> PathBuf {
    dir.join("journal")
        .join(format!("s{shard:04}-{seq:010}.log"))
}

/// Writes segment `seq` of shard 0 holding `frames` (each padded to 8 bytes).
fn write_segment(dir: &Path, seq: u64, frames: &[Vec<u8>]) -> PathBuf {
    let mut s = vec![0u8; 64];
    s[0..8].copy_from_slice(b"SSTNJRNL");
    s[8..12].copy_from_slice(&1u32.to_le_bytes());
    s[12..16].copy_from_slice(&0u32.to_le_bytes());
    s[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&s[..60]);
    s[60..64].copy_from_slice(&crc.to_le_bytes());
    for f in frames {
        s.extend_from_slice(f);
        s.resize(s.len().next_multiple_of(8), 0);
    }
    std::fs::create_dir_all(dir.join("journal")).unwrap();
    let path = segment_path(dir, 0, seq);
    std::fs::write(&path, &s).unwrap();
    path
}

/// Writes a manifest: the checkpoint the journal continues, the promised point
/// (the same), and no segments listed.
fn write_manifest(dir: &Path, checkpoint: (u64, ChainHash)) {
    let mut b = Vec::new();
    b.extend_from_slice(b"SSTNMNFT");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags: not clean, no boot id
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&checkpoint.0.to_le_bytes());
    b.extend_from_slice(&checkpoint.1 .0);
    b.extend_from_slice(&checkpoint.0.to_le_bytes());
    b.extend_from_slice(&checkpoint.1 .0);
    b.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("manifest"), &b).unwrap();
}

fn checkpoint_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("checkpoint-{id:020}.ckpt"))
}

/// The checkpoint's chain hash in these tests (any value: the manifest agrees).
const CKPT_HASH: ChainHash = ChainHash([7; 32]);

/// Writes the checkpoint at `id` holding `entries` as given (one data block),
/// and a manifest that names it.
fn write_checkpoint(dir: &Path, id: u64, entries: &[(&[u8], &[u8])]) -> PathBuf {
    const BLOCK: usize = 64 * 1024;
    let mut payload = Vec::new();
    for (k, v) in entries {
        payload.extend_from_slice(&(k.len() as u16).to_le_bytes());
        payload.extend_from_slice(&(v.len() as u32).to_le_bytes());
        payload.extend_from_slice(k);
        payload.extend_from_slice(v);
    }
    assert!(payload.len() <= BLOCK - 8, "one block is enough here");
    let mut f = vec![0u8; BLOCK];
    f[0..8].copy_from_slice(b"SSTNCKPT");
    f[8..12].copy_from_slice(&1u32.to_le_bytes());
    f[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    f[16..24].copy_from_slice(&id.to_le_bytes());
    f[24..56].copy_from_slice(&CKPT_HASH.0);
    f[56..64].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    let blocks: u64 = if payload.is_empty() { 0 } else { 1 };
    f[64..72].copy_from_slice(&blocks.to_le_bytes());
    let crc = crc32c::crc32c(&f[..72]);
    f[72..76].copy_from_slice(&crc.to_le_bytes());
    if !payload.is_empty() {
        let mut block = vec![0u8; 8];
        block[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        block.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&block[4..]);
        block[0..4].copy_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(&block);
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = checkpoint_path(dir, id);
    std::fs::write(&path, &f).unwrap();
    write_manifest(dir, (id, CKPT_HASH));
    path
}

/// Runs `f` on a thread of its own and fails the test if it does not finish
/// within `limit` (a hang is a failure, not a stuck test run). The thread is
/// left behind; the test binary exits without it.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // It panicked: report its panic.
            match thread.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!("a thread that finished sent its result"),
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not finish within {limit:?} (a hang)")
        }
    }
}

/// The open modes a hostile directory is tried with.
#[derive(Clone, Copy, Debug)]
enum Mode {
    ReadOnly,
    ReadWrite,
    Follower,
}

const MODES: [Mode; 3] = [Mode::ReadOnly, Mode::ReadWrite, Mode::Follower];

fn open(dir: &Path, mode: Mode, opts: Options) -> shardstone::Result<Engine> {
    let dir = dir.to_owned();
    within(Duration::from_secs(20), move || match mode {
        Mode::ReadOnly => Engine::open_read_only(&dir, opts),
        Mode::ReadWrite => Engine::open_with(&dir, opts),
        Mode::Follower => Engine::open_follower(&dir, opts),
    })
}

/// Asserts `r` is `Corrupt` naming `path` and, when given, commit `id`; returns
/// the reason.
#[track_caller]
fn assert_corrupt(r: shardstone::Result<Engine>, path: &Path, id: Option<u64>) -> String {
    match r {
        Err(Error::Corrupt {
            path: p,
            commit_id,
            reason,
            ..
        }) => {
            assert_eq!(p, path, "the damaged file is named ({reason})");
            if let Some(id) = id {
                assert_eq!(commit_id.map(|c| c.get()), Some(id), "{reason}");
            }
            reason
        }
        Err(e) => panic!("expected Corrupt naming {}, got {e}", path.display()),
        Ok(_) => panic!(
            "expected Corrupt naming {}, the open succeeded",
            path.display()
        ),
    }
}

/// A journal of `frames` in one segment after an empty start (no checkpoint).
fn journal_of(name: &str, frames: &[Vec<u8>]) -> (TempDir, PathBuf) {
    let dir = TempDir::new(name);
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    let seg = write_segment(dir.path(), 0, frames);
    (dir, seg)
}

// ---------------------------------------------------------------- the forge works

#[test]
fn a_forged_database_opens() {
    let (dir, _) = journal_of(
        "forge",
        &[
            commit_frame(1, &[(b"a", Some(b"1")), (b"b", Some(b"2"))]),
            commit_frame(2, &[(b"a", None)]),
        ],
    );
    let engine = open(dir.path(), Mode::ReadOnly, Options::default()).unwrap();
    assert_eq!(engine.last_commit().0.get(), 2);
    let snap = engine.snapshot();
    assert_eq!(snap.get(b"a").unwrap().as_deref(), None);
    assert_eq!(snap.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    drop(engine);

    let dir = TempDir::new("forge-ckpt");
    write_checkpoint(dir.path(), 5, &[(b"a", b"1"), (b"b", b"2")]);
    for mode in MODES {
        let engine = open(dir.path(), mode, Options::default()).unwrap();
        assert_eq!(engine.last_commit().0.get(), 5, "{mode:?}");
        let snap = engine.snapshot();
        assert_eq!(snap.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    }
}

// ---------------------------------------------------------------- finding 1

#[test]
fn a_journal_key_longer_than_a_page_is_corrupt() {
    let key = vec![b'k'; 5000];
    let (dir, seg) = journal_of("long-key", &[commit_frame(1, &[(&key, Some(b"v"))])]);
    for mode in MODES {
        let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &seg, Some(1));
        assert!(reason.contains("key"), "{mode:?}: {reason}");
    }
}

// ---------------------------------------------------------------- finding 2

#[test]
fn checkpoint_entries_out_of_order_are_corrupt() {
    for (name, entries) in [
        ("descending", [(&b"b"[..], &b"2"[..]), (b"a", b"1")]),
        ("duplicate", [(&b"a"[..], &b"1"[..]), (b"a", b"2")]),
    ] {
        let dir = TempDir::new(name);
        let path = write_checkpoint(dir.path(), 5, &entries);
        for mode in MODES {
            let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &path, Some(5));
            assert!(reason.contains("order"), "{name} {mode:?}: {reason}");
        }
    }
}

#[test]
fn checkpoint_entries_over_the_limits_are_corrupt() {
    let long_key = vec![b'k'; shardstone::MAX_KEY_LEN + 1];
    let dir = TempDir::new("ckpt-long-key");
    let path = write_checkpoint(dir.path(), 5, &[(&long_key, b"1")]);
    for mode in MODES {
        assert_corrupt(open(dir.path(), mode, Options::default()), &path, Some(5));
    }
    let dir = TempDir::new("ckpt-long-value");
    let path = write_checkpoint(dir.path(), 5, &[(b"a", &[1; 200])]);
    let small = Options {
        max_value_len: 100,
        ..Options::default()
    };
    for mode in MODES {
        assert_corrupt(open(dir.path(), mode, small.clone()), &path, Some(5));
    }
}

// ---------------------------------------------------------------- finding 3

#[test]
fn a_checkpoint_at_the_end_of_the_id_space_is_corrupt() {
    // The manifest names the forged checkpoint (then it is the manifest that is
    // caught first), or an earlier one that the forged one seems to follow.
    for (id, manifest_too) in [
        (u64::MAX, true),
        (u64::MAX, false),
        (u64::MAX - 1, false),
        (1 << 63, false),
    ] {
        let dir = TempDir::new("ckpt-max");
        let mut path = write_checkpoint(dir.path(), id, &[(b"a", b"1")]);
        if manifest_too {
            path = dir.path().join("manifest");
        } else {
            write_manifest(dir.path(), (5, CKPT_HASH));
        }
        for mode in MODES {
            match open(dir.path(), mode, Options::default()) {
                // Had it opened, a commit must not spin, panic or wrap: show
                // what it does.
                Ok(engine) => {
                    let engine = std::sync::Arc::new(engine);
                    let outcome = within(Duration::from_secs(10), move || {
                        engine.run("next", |tx| tx.put(b"b", b"2"))
                    });
                    panic!("{id} {mode:?}: the open succeeded (then run gave {outcome:?})");
                }
                r => assert_corrupt(r, &path, None),
            };
        }
    }
}

#[test]
fn a_journal_commit_at_the_end_of_the_id_space_is_corrupt() {
    for id in [u64::MAX, 1 << 63] {
        let (dir, seg) = journal_of("frame-max", &[commit_frame(id, &[(b"a", Some(b"1"))])]);
        for mode in MODES {
            assert_corrupt(open(dir.path(), mode, Options::default()), &seg, None);
        }
    }
}

// ---------------------------------------------------------------- finding 6

/// Records replay must refuse, as follower `apply` and `CommitRecord::decode`
/// do: (what, the record's ops).
/// Owned ops: (key, value or `None` for a delete).
type OwnedOps = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn malformed_records() -> Vec<(&'static str, OwnedOps)> {
    let put = |k: &[u8], v: &[u8]| (k.to_vec(), Some(v.to_vec()));
    vec![
        ("no ops", vec![]),
        ("unsorted keys", vec![put(b"b", b"1"), put(b"a", b"1")]),
        (
            "duplicate keys",
            vec![put(b"a", b"1"), (b"a".to_vec(), None)],
        ),
        (
            "a key over MAX_KEY_LEN",
            vec![put(&vec![b'k'; shardstone::MAX_KEY_LEN + 1], b"1")],
        ),
        ("a value over max_value_len", vec![put(b"a", &[9; 200])]),
    ]
}

fn small_values() -> Options {
    Options {
        max_value_len: 100,
        ..Options::default()
    }
}

#[test]
fn replay_refuses_what_apply_refuses() {
    for (what, ops) in malformed_records() {
        let ops: Vec<ForgedOp<'_>> = ops.iter().map(|(k, v)| (&k[..], v.as_deref())).collect();
        // Commit 1 is fine; commit 2 is malformed.
        let (dir, seg) = journal_of(
            "replay",
            &[
                commit_frame(1, &[(b"ok", Some(b"1"))]),
                commit_frame(2, &ops),
            ],
        );
        for mode in MODES {
            let reason = assert_corrupt(open(dir.path(), mode, small_values()), &seg, Some(2));
            assert!(!reason.is_empty(), "{what} {mode:?}");
        }

        // The same record, sent to a follower: decode refuses it (all but the
        // value limit, which only the follower knows), and so does apply.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ChainHash::genesis().0);
        bytes.extend_from_slice(&[0; 32]);
        bytes.extend_from_slice(&body(1, &ops));
        let decoded = CommitRecord::decode(&bytes);
        if what != "a value over max_value_len" {
            assert!(
                matches!(decoded, Err(Error::InvalidRecord { .. })),
                "{what}: decode gave {decoded:?}"
            );
        }
        let follower = Engine::in_memory_follower(small_values()).unwrap();
        let rec = CommitRecord {
            commit_id: 1.into(),
            prev_hash: ChainHash::genesis(),
            hash: ChainHash([0; 32]),
            command: "forge".to_owned(),
            ops: ops
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => Op::Put {
                        key: k.to_vec(),
                        value: v.to_vec(),
                    },
                    None => Op::Delete { key: k.to_vec() },
                })
                .collect(),
        };
        let r = follower.apply(&rec);
        assert!(
            matches!(
                r,
                Err(Error::InvalidRecord { .. }
                    | Error::KeyTooLarge { .. }
                    | Error::ValueTooLarge { .. })
            ),
            "{what}: apply gave {r:?}"
        );
        assert_eq!(follower.last_commit().0.get(), 0);
    }
}

#[test]
fn a_follower_at_the_end_of_the_id_space_refuses_without_wrapping() {
    // A record claiming the last ids: decode refuses it before any arithmetic.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&ChainHash::genesis().0);
    bytes.extend_from_slice(&[0; 32]);
    bytes.extend_from_slice(&body(u64::MAX, &[(b"a", Some(b"1"))]));
    let r = CommitRecord::decode(&bytes);
    assert!(matches!(r, Err(Error::InvalidRecord { .. })), "{r:?}");
}

// ---------------------------------------------------------------- finding 7

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn a_fifo_in_place_of_a_file_is_corrupt_not_a_hang() {
    // A segment.
    let dir = TempDir::new("fifo-segment");
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    let seg = segment_path(dir.path(), 0, 0);
    mkfifo(&seg);
    for mode in MODES {
        let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &seg, None);
        assert!(reason.contains("not a regular file"), "{reason}");
    }

    // A checkpoint.
    let dir = TempDir::new("fifo-checkpoint");
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    let ckpt = checkpoint_path(dir.path(), 5);
    mkfifo(&ckpt);
    for mode in MODES {
        let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &ckpt, None);
        assert!(reason.contains("not a regular file"), "{reason}");
    }

    // The manifest.
    let dir = TempDir::new("fifo-manifest");
    std::fs::create_dir_all(dir.path()).unwrap();
    let manifest = dir.path().join("manifest");
    mkfifo(&manifest);
    for mode in MODES {
        let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &manifest, None);
        assert!(reason.contains("not a regular file"), "{reason}");
    }

    // The consumers file.
    let dir = TempDir::new("fifo-consumers");
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    let consumers = dir.path().join("consumers");
    mkfifo(&consumers);
    for mode in MODES {
        let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &consumers, None);
        assert!(reason.contains("not a regular file"), "{reason}");
    }
}

#[test]
fn a_segment_symlinked_out_of_the_directory_is_corrupt() {
    let outside = TempDir::new("outside");
    let target = write_segment(outside.path(), 0, &[commit_frame(1, &[(b"a", Some(b"1"))])]);
    let dir = TempDir::new("symlinked-segment");
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    let seg = segment_path(dir.path(), 0, 0);
    std::os::unix::fs::symlink(&target, &seg).unwrap();
    for mode in MODES {
        let reason = assert_corrupt(open(dir.path(), mode, Options::default()), &seg, None);
        assert!(reason.contains("not a regular file"), "{reason}");
    }
}

#[test]
fn a_sparse_4_gib_segment_opens_in_time_proportional_to_its_data() {
    let dir = TempDir::new("sparse");
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    let seg = segment_path(dir.path(), 0, 0);
    let file = std::fs::File::create(&seg).unwrap();
    file.set_len(4 << 30).unwrap();
    drop(file);
    for mode in [Mode::ReadOnly, Mode::ReadWrite] {
        let t = Instant::now();
        let engine = open(dir.path(), mode, Options::default()).unwrap();
        let took = t.elapsed();
        eprintln!("{mode:?} open of a sparse 4 GiB all-zero segment: {took:?}");
        assert_eq!(engine.last_commit().0.get(), 0);
        assert!(took < Duration::from_secs(2), "{mode:?}: {took:?}");
    }

    // Data at the start, 4 GiB of hole after it: the commit is found, fast.
    let dir = TempDir::new("sparse-data");
    write_manifest(dir.path(), (0, ChainHash::genesis()));
    let seg = write_segment(dir.path(), 0, &[commit_frame(1, &[(b"a", Some(b"1"))])]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let t = Instant::now();
    let engine = open(dir.path(), Mode::ReadOnly, Options::default()).unwrap();
    let took = t.elapsed();
    eprintln!("read-only open of one commit and a 4 GiB hole: {took:?}");
    assert_eq!(engine.last_commit().0.get(), 1);
    assert!(took < Duration::from_secs(2), "{took:?}");
}
