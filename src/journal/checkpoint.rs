//! Checkpoints: a durable image of the store as of one commit id.
//!
//! Written from an MVCC snapshot, so commands keep running meanwhile. The file is
//! built under a temporary name, synced, renamed into place and the directory
//! synced: a crash leaves either the old checkpoint or the new one, never half of
//! one. Every block carries a crc32c, so damage is found and named, not loaded.
//!
//! ```text
//! block 0 (header): magic "SSTNCKPT" | version u32 | block size u32 | commit id u64
//!                   | chain hash [32] | entries u64 | data blocks u64 | crc32c u32
//! block i >= 1:     crc32c u32 (over used and payload) | used u32 | payload
//! payload:          a stream of entries that may cross blocks:
//!                   key len u16 | value len u32 | key | value
//! ```

use super::io::{open_regular, Io};
use super::record::{check_commit_id, check_entry, ChainHash};
use crate::error::{Error, Result};
use crate::txn::CommitId;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SSTNCKPT";
const VERSION: u32 = 1;
pub(crate) const BLOCK: usize = 64 * 1024;
const BLOCK_HEADER: usize = 8;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32 + 8 + 8 + 4;

/// `checkpoint-00000000000000001234.ckpt`: the checkpoint at commit 1234.
pub(crate) fn checkpoint_name(id: u64) -> String {
    format!("checkpoint-{id:020}.ckpt")
}

pub(crate) fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let id = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?;
    (id.len() == 20).then(|| id.parse().ok())?
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Writes the entries of `entries` (in key order) as the checkpoint at `id` with
/// chain hash `hash` into `dir`; returns its path once it is durable.
pub(crate) fn write(
    dir: &Path,
    io: &dyn Io,
    id: u64,
    hash: ChainHash,
    entries: impl Iterator<Item = Result<(Vec<u8>, impl AsRef<[u8]>)>>,
) -> Result<PathBuf> {
    let final_path = dir.join(checkpoint_name(id));
    let tmp = dir.join(format!("{}.tmp", checkpoint_name(id)));
    let file = io.create(&tmp).map_err(io_err("create", &tmp))?;
    let mut writer = BlockWriter {
        io,
        file: &file,
        path: &tmp,
        block: vec![0; BLOCK],
        used: 0,
        blocks: 0,
    };
    let mut count = 0u64;
    let result = (|| {
        for entry in entries {
            let (key, value) = entry?;
            let value = value.as_ref();
            writer.put(&(key.len() as u16).to_le_bytes())?;
            writer.put(&(value.len() as u32).to_le_bytes())?;
            writer.put(&key)?;
            writer.put(value)?;
            count += 1;
        }
        writer.flush()?;
        let mut header = vec![0u8; BLOCK];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        header[16..24].copy_from_slice(&id.to_le_bytes());
        header[24..56].copy_from_slice(&hash.0);
        header[56..64].copy_from_slice(&count.to_le_bytes());
        header[64..72].copy_from_slice(&writer.blocks.to_le_bytes());
        let crc = crc32c::crc32c(&header[..HEADER_LEN - 4]);
        header[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        io.write_at(&file, &header, 0)
            .map_err(io_err("write", &tmp))?;
        io.sync(&file).map_err(io_err("fsync", &tmp))?;
        io.rename(&tmp, &final_path)
            .map_err(io_err("rename", &tmp))?;
        io.sync_dir(dir).map_err(io_err("fsync directory", dir))
    })();
    if result.is_err() {
        // Best effort: a leftover temporary file is also removed by the next open.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| final_path)
}

struct BlockWriter<'a> {
    io: &'a dyn Io,
    file: &'a File,
    path: &'a Path,
    block: Vec<u8>,
    used: usize,
    blocks: u64,
}

impl BlockWriter<'_> {
    fn put(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let room = BLOCK - BLOCK_HEADER - self.used;
            let n = room.min(bytes.len());
            let at = BLOCK_HEADER + self.used;
            self.block[at..at + n].copy_from_slice(&bytes[..n]);
            self.used += n;
            bytes = &bytes[n..];
            if self.used == BLOCK - BLOCK_HEADER {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        self.block[4..8].copy_from_slice(&(self.used as u32).to_le_bytes());
        let crc = crc32c::crc32c(&self.block[4..BLOCK_HEADER + self.used]);
        self.block[0..4].copy_from_slice(&crc.to_le_bytes());
        self.blocks += 1;
        let offset = self.blocks * BLOCK as u64;
        self.io
            .write_at(self.file, &self.block[..BLOCK_HEADER + self.used], offset)
            .map_err(io_err("write", self.path))?;
        self.used = 0;
        Ok(())
    }
}

/// A checkpoint opened for loading.
pub(crate) struct Checkpoint {
    pub path: PathBuf,
    pub id: u64,
    pub hash: ChainHash,
    entries: u64,
    blocks: u64,
    file: File,
}

impl Checkpoint {
    /// The entries (keys) its header says it holds.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Opens and verifies the header of the checkpoint at `path`: a regular
    /// file, a valid checksum, and a commit id in range.
    pub(crate) fn open(path: &Path) -> Result<Checkpoint> {
        let file = open_regular(path)?;
        let mut header = [0u8; HEADER_LEN];
        let bad = |reason: &str| Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            commit_id: None,
            reason: reason.to_owned(),
        };
        file.read_exact_at(&mut header, 0)
            .map_err(|_| bad("checkpoint header is cut short"))?;
        if &header[0..8] != MAGIC {
            return Err(bad("not a shardstone checkpoint (bad magic)"));
        }
        let crc = u32::from_le_bytes(header[HEADER_LEN - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&header[..HEADER_LEN - 4]) != crc {
            return Err(bad("checkpoint header checksum mismatch"));
        }
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let block = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        if version != VERSION || block as usize != BLOCK {
            return Err(bad("unsupported checkpoint version or block size"));
        }
        let id = word(16);
        if let Err(why) = check_commit_id(id) {
            return Err(bad(&format!("the checkpoint's {why}")));
        }
        Ok(Checkpoint {
            path: path.to_owned(),
            id,
            hash: ChainHash(header[24..56].try_into().expect("32 bytes")),
            entries: word(56),
            blocks: word(64),
            file,
        })
    }

    /// Streams every entry, in key order, to `f`, verifying each block's
    /// checksum and each entry as `record::check_entry` does (keys strictly
    /// ascending, within `MAX_KEY_LEN`; values within `max_value_len`): a
    /// checksum proves the bytes are the ones written, not that they are sane.
    pub(crate) fn load(
        &self,
        max_value_len: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<u64> {
        let commit = Some(CommitId(self.id));
        let bad = |offset: u64, reason: String| Error::Corrupt {
            path: self.path.clone(),
            offset,
            commit_id: commit,
            reason,
        };
        let mut stream: Vec<u8> = Vec::with_capacity(2 * BLOCK);
        let mut start = 0usize;
        let mut block = vec![0u8; BLOCK];
        let mut count = 0u64;
        // The previous entry's key (entries ascend strictly), in one buffer
        // reused for every entry.
        let mut prev: Vec<u8> = Vec::new();
        for b in 1..=self.blocks {
            let offset = b
                .checked_mul(BLOCK as u64)
                .ok_or_else(|| bad(0, format!("the header claims {} blocks", self.blocks)))?;
            let mut got = 0;
            while got < BLOCK {
                match self.file.read_at(&mut block[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            op: "read",
                            path: self.path.clone(),
                            source,
                        })
                    }
                }
            }
            if got < BLOCK_HEADER {
                return Err(bad(
                    offset,
                    format!("the file ends before block {b} of {}", self.blocks),
                ));
            }
            let used = u32::from_le_bytes(block[4..8].try_into().expect("4 bytes")) as usize;
            if used == 0 || used > BLOCK - BLOCK_HEADER || BLOCK_HEADER + used > got {
                return Err(bad(
                    offset,
                    format!("block {b} is cut short or has a bad length"),
                ));
            }
            let crc = u32::from_le_bytes(block[0..4].try_into().expect("4 bytes"));
            if crc32c::crc32c(&block[4..BLOCK_HEADER + used]) != crc {
                return Err(bad(offset, format!("block {b} checksum mismatch")));
            }
            stream.drain(..start);
            start = 0;
            stream.extend_from_slice(&block[BLOCK_HEADER..BLOCK_HEADER + used]);
            // Decode every whole entry now in the stream.
            loop {
                let rest = &stream[start..];
                if rest.len() < 6 {
                    break;
                }
                let klen = u16::from_le_bytes(rest[0..2].try_into().expect("2 bytes")) as usize;
                let vlen = u32::from_le_bytes(rest[2..6].try_into().expect("4 bytes")) as usize;
                // Checked before the value's bytes are gathered: a forged
                // length must not make the stream grow without bound.
                if vlen > max_value_len {
                    return Err(bad(
                        offset,
                        format!(
                            "entry {count}: a value of {vlen} bytes is over the limit of \
                             {max_value_len} (Options::max_value_len: written with a larger \
                             limit, or not by this engine)"
                        ),
                    ));
                }
                if rest.len() < 6 + klen + vlen {
                    break;
                }
                let (key, value) = (&rest[6..6 + klen], &rest[6 + klen..6 + klen + vlen]);
                let before = (count > 0).then_some(prev.as_slice());
                if let Err(why) = check_entry(before, key, Some(value), max_value_len) {
                    return Err(bad(offset, format!("entry {count}: {why}")));
                }
                prev.clear();
                prev.extend_from_slice(key);
                f(key, value)?;
                count += 1;
                start += 6 + klen + vlen;
            }
        }
        if start != stream.len() || count != self.entries {
            return Err(bad(
                0,
                format!(
                    "holds {count} whole entries, the header says {} (cut short?)",
                    self.entries
                ),
            ));
        }
        Ok(count)
    }
}
