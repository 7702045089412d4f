//! The manifest: what recovery is entitled to find in a database directory.
//!
//! Frames carry the acknowledged watermark they saw, but a frame cannot vouch
//! for itself: cut a segment after its last frame that names a commit, or delete
//! the journal, and nothing left says that something is missing. The manifest
//! says it. It is rewritten (temporary file, fsync, rename, directory fsync) at
//! the three points where the engine knows what is durable:
//! - on open, after recovery: the state recovered, the segments kept;
//! - after a checkpoint: its commit and chain hash, the segments still needed;
//! - on a clean close: the last commit and its chain hash, every segment with
//!   the last commit it holds.
//!
//! Between those points, each frame's watermark says what was acknowledged since;
//! recovery takes the larger of the two.
//!
//! ```text
//! 0    magic     "SSTNMNFT"
//! 8    version   u32
//! 12   flags     u32   bit 0: written by a clean close; bit 1: boot id known
//! 16   boot id   [16]  the boot of the session that wrote it
//! 32   ckpt id   u64   the checkpoint the journal continues (0: none)
//! 40   ckpt hash [32]
//! 72   promised  u64   every commit up to here is durable: recovery must find it
//! 80   hash      [32]  its chain hash
//! 112  count     u32   segments listed
//! 116  segments  count * (shard u32, seq u64, last commit u64)
//! end  crc32c    u32   over everything before it
//! ```

use super::io::{open_regular_if_exists, Io};
use super::record::{ChainHash, MAX_COMMIT_ID};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub(crate) const MANIFEST_FILE: &str = "manifest";
const MAGIC: &[u8; 8] = b"SSTNMNFT";
const VERSION: u32 = 1;
const FIXED: usize = 116;
const ENTRY: usize = 20;
const FLAG_CLEAN: u32 = 1;
const FLAG_BOOT: u32 = 2;

/// A segment the manifest vouches for: it holds commits up to `last`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Listed {
    pub shard: usize,
    pub seq: u64,
    /// The last commit in it (0: none).
    pub last: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Manifest {
    /// Written by a clean close: nothing after it was written.
    pub clean: bool,
    /// The boot of the session that wrote it (see [`Io::boot_id`]).
    pub boot: Option<[u8; 16]>,
    /// The checkpoint the journal continues.
    pub checkpoint: (u64, ChainHash),
    /// Every commit up to here was acknowledged durably.
    pub promised: (u64, ChainHash),
    /// Segments that hold commits recovery must find, oldest first per shard.
    pub segments: Vec<Listed>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED + ENTRY * self.segments.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.clean { FLAG_CLEAN } else { 0 }
            | if self.boot.is_some() { FLAG_BOOT } else { 0 };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.boot.unwrap_or([0; 16]));
        b.extend_from_slice(&self.checkpoint.0.to_le_bytes());
        b.extend_from_slice(&self.checkpoint.1 .0);
        b.extend_from_slice(&self.promised.0.to_le_bytes());
        b.extend_from_slice(&self.promised.1 .0);
        b.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            b.extend_from_slice(&(s.shard as u32).to_le_bytes());
            b.extend_from_slice(&s.seq.to_le_bytes());
            b.extend_from_slice(&s.last.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |reason: &str| Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            commit_id: None,
            reason: reason.to_owned(),
        };
        if b.len() < FIXED + 4 {
            return Err(bad("the manifest is cut short"));
        }
        if &b[0..8] != MAGIC {
            return Err(bad("not a shardstone manifest (bad magic)"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("the manifest checksum does not match"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let hash_at = |at: usize| ChainHash(b[at..at + 32].try_into().expect("32 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(&format!(
                "manifest format version {version} is not supported"
            )));
        }
        let flags = u32_at(12);
        let count = u32_at(112) as usize;
        if count
            .checked_mul(ENTRY)
            .and_then(|n| n.checked_add(FIXED))
            .is_none_or(|n| n != body.len())
        {
            return Err(bad(
                "the manifest's segment count disagrees with its length",
            ));
        }
        let segments = (0..count)
            .map(|i| {
                let at = FIXED + i * ENTRY;
                Listed {
                    shard: u32_at(at) as usize,
                    seq: u64_at(at + 4),
                    last: u64_at(at + 12),
                }
            })
            .collect();
        let m = Manifest {
            clean: flags & FLAG_CLEAN != 0,
            boot: (flags & FLAG_BOOT != 0).then(|| b[16..32].try_into().expect("16 bytes")),
            checkpoint: (u64_at(32), hash_at(40)),
            promised: (u64_at(72), hash_at(80)),
            segments,
        };
        if m.promised.0 > MAX_COMMIT_ID || m.segments.iter().any(|s| s.last > MAX_COMMIT_ID) {
            return Err(bad(&format!(
                "the manifest names a commit beyond the largest id accepted ({MAX_COMMIT_ID})"
            )));
        }
        if m.promised.0 < m.checkpoint.0 {
            return Err(bad("the manifest promises less than its checkpoint holds"));
        }
        Ok(m)
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// The manifest's path in the database directory `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_FILE)
}

/// Reads the manifest of `dir`; `None` if there is none.
pub(crate) fn read(dir: &Path) -> Result<Option<Manifest>> {
    let path = path(dir);
    let Some(mut file) = open_regular_if_exists(&path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(io_err("read", &path))?;
    Manifest::decode(&bytes, &path).map(Some)
}

/// Writes `m` as the manifest of `dir`, durably: a crash leaves the old one or
/// the new one, whole.
pub(crate) fn write(dir: &Path, io: &dyn Io, m: &Manifest) -> Result<()> {
    replace_file(dir, io, MANIFEST_FILE, &m.encode())
}

/// Replaces the file `name` in `dir` with `bytes`, durably (temporary file,
/// fsync, rename, directory fsync): a crash leaves the old file or the new one,
/// whole. For the small files rewritten in place: the manifest, the consumers.
pub(crate) fn replace_file(dir: &Path, io: &dyn Io, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = io.create(&tmp).map_err(io_err("create", &tmp))?;
    let written = io
        .write_at(&file, bytes, 0)
        .map_err(io_err("write", &tmp))
        .and_then(|()| io.sync(&file).map_err(io_err("fsync", &tmp)))
        .and_then(|()| io.rename(&tmp, &path).map_err(io_err("rename", &tmp)));
    if written.is_err() {
        // Best effort: the old file stays in force either way.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    io.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_any_flip_is_caught() {
        let m = Manifest {
            clean: true,
            boot: Some([7; 16]),
            checkpoint: (5, ChainHash([1; 32])),
            promised: (9, ChainHash([2; 32])),
            segments: vec![Listed {
                shard: 1,
                seq: 3,
                last: 9,
            }],
        };
        let b = m.encode();
        let back = Manifest::decode(&b, Path::new("m")).unwrap();
        assert_eq!(
            (back.clean, back.boot, back.checkpoint, back.promised),
            (m.clean, m.boot, m.checkpoint, m.promised)
        );
        assert_eq!(back.segments, m.segments);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(
                Manifest::decode(&bad, Path::new("m")).is_err(),
                "flip at {i}"
            );
        }
        for len in 0..b.len() {
            assert!(
                Manifest::decode(&b[..len], Path::new("m")).is_err(),
                "cut at {len}"
            );
        }
    }
}
