//! Inputs that made a fuzz target (`fuzz/`, see docs/testing.md) panic, kept as
//! ordinary tests: each builds the files its target builds from
//! `tests/fuzz-inputs/<target>-<what>`, opens them the way the target does, and
//! asserts a typed error, never a panic.
//!
//! The helpers mirror `fuzz/src/lib.rs` (which this crate cannot depend on: it
//! needs nightly and libFuzzer).

use shardstone::numa::Numa;
use shardstone::{Engine, Error, Options};
use std::path::{Path, PathBuf};

fn options() -> Options {
    Options {
        numa: Numa::Off,
        journal_shards: 1,
        workers: 1,
        segment_size: 1 << 16,
        feed_window_bytes: 1 << 20,
        ..Options::default()
    }
}

fn input(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-inputs")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "shardstone-fuzz-regression-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("journal")).unwrap();
    dir
}

/// A manifest written by a clean close (format: `src/journal/manifest.rs`).
fn manifest_bytes(checkpoint: (u64, [u8; 32]), promised: (u64, [u8; 32])) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"SSTNMNFT");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(&checkpoint.0.to_le_bytes());
    b.extend_from_slice(&checkpoint.1);
    b.extend_from_slice(&promised.0.to_le_bytes());
    b.extend_from_slice(&promised.1);
    b.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Opens `dir` as the targets do and reads every key; the error, if any.
fn open_and_read(dir: &Path, read_only: bool, salvage: bool) -> Result<(), Error> {
    let opts = Options {
        salvage,
        ..options()
    };
    let engine = if read_only {
        Engine::open_read_only(dir, opts)?
    } else {
        Engine::open_with(dir, opts)?
    };
    let snap = engine.snapshot();
    for item in snap.range::<std::ops::RangeFull>(..) {
        item?;
    }
    drop(snap);
    engine.close()
}

const CKPT_BLOCK: usize = 64 * 1024;
const CKPT_HEADER: usize = 76;

/// `checkpoint_file`'s input form: the header block's zero padding left out.
fn expand_checkpoint(input: &[u8]) -> Vec<u8> {
    if input.len() <= CKPT_HEADER {
        return input.to_vec();
    }
    let mut out = input[..CKPT_HEADER].to_vec();
    out.resize(CKPT_BLOCK, 0);
    out.extend_from_slice(&input[CKPT_HEADER..]);
    out
}

/// Recomputes the header's and every data block's crc32c, as the target does.
fn fix_checkpoint(b: &mut [u8]) {
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

/// `checkpoint_file`: the input (checksums recomputed) as the checkpoint its
/// header names, beside a manifest naming it, opened read-only.
fn checkpoint_file(name: &str) -> Result<(), Error> {
    let mut file = expand_checkpoint(&input(name));
    fix_checkpoint(&mut file);
    let id = u64::from_le_bytes(file[16..24].try_into().unwrap());
    let hash: [u8; 32] = file[24..56].try_into().unwrap();
    let dir = fresh_dir(name);
    std::fs::write(dir.join("manifest"), manifest_bytes((id, hash), (id, hash))).unwrap();
    std::fs::write(dir.join(format!("checkpoint-{id:020}.ckpt")), &file).unwrap();
    let got = open_and_read(&dir, true, false);
    let _ = std::fs::remove_dir_all(&dir);
    got
}

fn assert_corrupt(got: Result<(), Error>) {
    match got {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

/// A checkpoint whose checksums hold but whose entries are out of key order
/// (a mutated key): loading it tripped the bulk builder's
/// `debug_assert!` "bulk build input is sorted and unique"
/// (src/store/build.rs, `Builder::push`, from `Checkpoint::load`); a release
/// build would have built a B+tree out of order. It is damage to name.
#[test]
fn a_checkpoint_with_keys_out_of_order_is_corrupt() {
    assert_corrupt(checkpoint_file("checkpoint_file-unsorted-keys"));
}
