//! Journal records: the bytes of one commit, their framing on disk and the chain
//! hash over them.
//!
//! A record is logical redo: the commit id, the command name and every put and
//! delete with the full key and value. The same body feeds recovery, the hash
//! chain and (later) replication, so it holds nothing shard- or disk-specific.
//!
//! ```text
//! frame (on disk, 8-byte aligned, zero-padded):
//! 0   len      u32   frame length, header included, padding excluded
//! 4   crc      u32   crc32c over len, then bytes 8..len
//! 8   kind     u8    1 commit, 2 mark (no body: only the watermark below)
//! 9   flags    u8    bit 0: `durable` counts only fsynced commits (see below)
//! 10  time     u48   commit time, ms since the Unix epoch (0: not recorded)
//! 16  durable  u64   every commit id <= this was acknowledged when the frame was made
//! 24  anchor   u64   a commit id whose chain hash follows (0: the genesis hash)
//! 32  hash     [32]  chain hash of `anchor`, checked by recovery
//! 64  body (commits only):
//!     commit id u64 | name len u16 | name | op count u32 | ops
//!     op: tag u8 (1 put, 2 delete) | key len u16 | value len u32 | key | value
//! ```
//! A watermark with flag bit 0 set (frames of `Durability::Durable` sessions,
//! and clean-close marks) is a promise that survives a power cut: every commit
//! up to it was fsynced. Without it (`Buffered`), it survives a process crash
//! only, and recovery holds the journal to it only within the boot that wrote it.
//!
//! The time is the wall clock (the kernel's coarse clock, a few ms of
//! resolution) when the commit took its id; it serves restores and searches by
//! time. It is outside the body: not hashed, not replicated, and frames written
//! before it existed hold zero there.
//!
//! The chain hash is over the body only: `hash(n) = BLAKE3(hash(n-1) || body(n))`.
//! Anchors tie the chain to the disk without serializing appends on it: a frame
//! carries whatever point of the chain was already known when it was made.

use crate::error::{Error, Result};
use crate::txn::CommitId;
use std::fmt;

pub(crate) const FRAME_HEADER: usize = 64;
/// The frame length is a u32; keep the padded length in range too.
const MAX_FRAME: usize = u32::MAX as usize - 8;
pub(crate) const KIND_COMMIT: u8 = 1;
pub(crate) const KIND_MARK: u8 = 2;
/// Flag bit: the frame's watermark counts only commits that were fsynced.
const FLAG_SYNCED: u8 = 1;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// A position in the journal's hash chain: BLAKE3 over the previous hash and one
/// record body.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// `hash(0)`: the fixed start of every chain.
    pub fn genesis() -> ChainHash {
        ChainHash(*blake3::hash(b"shardstone journal genesis v1").as_bytes())
    }

    /// The hash that follows `self` when a commit with record body `body` is added.
    pub(crate) fn next(&self, body: &[u8]) -> ChainHash {
        let mut h = blake3::Hasher::new();
        h.update(&self.0);
        h.update(body);
        ChainHash(*h.finalize().as_bytes())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// One logical change of a commit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Op {
    /// `key` now holds `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// `key` no longer exists.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// One commit as the journal holds it: what a follower replays.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitRecord {
    /// Its position in the commit order.
    pub commit_id: CommitId,
    /// The chain hash of the commit before it.
    pub prev_hash: ChainHash,
    /// The chain hash after it: `BLAKE3(prev_hash || record body)`.
    pub hash: ChainHash,
    /// The name of the command that made it.
    pub command: String,
    /// Its puts and deletes, in key order.
    pub ops: Vec<Op>,
}

impl CommitRecord {
    /// The record as bytes, for sending to a follower: both hashes, then the
    /// record body exactly as the journal hashes it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let ops = self.ops.iter().map(|op| match op {
            Op::Put { key, value } => (key.as_slice(), Some(value.as_slice())),
            Op::Delete { key } => (key.as_slice(), None),
        });
        let mut frame = Frame::commit(&self.command, ops)?;
        frame.set_id(self.commit_id.get());
        let mut out = Vec::with_capacity(64 + frame.bytes.len() - FRAME_HEADER);
        out.extend_from_slice(&self.prev_hash.0);
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&frame.bytes[FRAME_HEADER..]);
        Ok(out)
    }

    /// Decodes [`CommitRecord::encode`]'s bytes. The hashes are not checked here:
    /// [`crate::Engine::apply`] checks them.
    pub fn decode(bytes: &[u8]) -> Result<CommitRecord> {
        let bad = || Error::InvalidRecord {
            commit_id: None,
            reason: "the bytes are not an encoded commit record".to_owned(),
        };
        if bytes.len() < 64 {
            return Err(bad());
        }
        let hash = |b: &[u8]| ChainHash(b.try_into().expect("32 bytes"));
        let body = BodyView::parse(&bytes[64..]).ok_or_else(bad)?;
        // The value limit is the follower's (`apply` checks it); everything
        // else a record must be is checked here.
        body.validate(usize::MAX)
            .map_err(|reason| Error::InvalidRecord {
                commit_id: Some(CommitId(body.commit_id)),
                reason,
            })?;
        Ok(body.to_record(hash(&bytes[0..32]), hash(&bytes[32..64])))
    }

    /// Checks what [`validate`] checks, for a record about to be applied:
    /// `Error::InvalidRecord` naming it.
    pub(crate) fn validate(&self, max_value_len: usize) -> Result<()> {
        let ops = self.ops.iter().map(|op| match op {
            Op::Put { key, value } => (key.as_slice(), Some(value.as_slice())),
            Op::Delete { key } => (key.as_slice(), None),
        });
        validate(self.commit_id.get(), ops, max_value_len).map_err(|reason| Error::InvalidRecord {
            commit_id: Some(self.commit_id),
            reason,
        })
    }
}

/// The largest commit id a file or a peer may name. Ids above it are refused
/// as damage wherever they are read (journal, checkpoint, manifest, consumers
/// file, a follower's records): an engine must be able to count on from any
/// id it accepts without wrapping, and no real history comes near it (at a
/// billion commits a second, it is 292 years away).
pub const MAX_COMMIT_ID: u64 = u64::MAX >> 1;

/// Why `id` cannot be a commit id read from a file or a peer, if it cannot.
pub(crate) fn check_commit_id(id: u64) -> std::result::Result<(), String> {
    if id == 0 {
        return Err("commit id 0 is not a commit (the first one is 1)".to_owned());
    }
    if id > MAX_COMMIT_ID {
        return Err(format!(
            "commit id {id} is beyond the largest one accepted ({MAX_COMMIT_ID})"
        ));
    }
    Ok(())
}

/// Checks one entry of a stream of entries in strictly ascending key order
/// (the ops of a record, the entries of a checkpoint): the key and value
/// limits, and that `key` comes after `prev`. `None` values are deletes.
pub(crate) fn check_entry(
    prev: Option<&[u8]>,
    key: &[u8],
    value: Option<&[u8]>,
    max_value_len: usize,
) -> std::result::Result<(), String> {
    if key.len() > crate::MAX_KEY_LEN {
        return Err(format!(
            "a key of {} bytes is over the limit of {} (MAX_KEY_LEN)",
            key.len(),
            crate::MAX_KEY_LEN
        ));
    }
    if let Some(v) = value.filter(|v| v.len() > max_value_len) {
        return Err(format!(
            "a value of {} bytes is over the limit of {max_value_len} \
             (Options::max_value_len: written with a larger limit, or not by this engine)",
            v.len()
        ));
    }
    match prev {
        Some(p) if p == key => {
            Err("a key appears twice (keys are not in strictly ascending order)".to_owned())
        }
        Some(p) if p > key => Err("keys are not in strictly ascending order".to_owned()),
        _ => Ok(()),
    }
}

/// The one check of a commit's content, made on everything read: journal
/// replay, follower `apply`, [`CommitRecord::decode`]. A checksum proves the
/// bytes are the ones written; this proves they are a commit this engine could
/// have written: a commit id in range, at least one op, keys strictly
/// ascending (so unique), within `MAX_KEY_LEN`, values within `max_value_len`.
/// The op count is bounded by the record's length (every op takes at least 7
/// bytes of it, and a record is at most 4 GiB). Returns why not, in words.
pub(crate) fn validate<'a>(
    commit_id: u64,
    ops: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    max_value_len: usize,
) -> std::result::Result<(), String> {
    check_commit_id(commit_id)?;
    let mut prev: Option<&[u8]> = None;
    for (key, value) in ops {
        check_entry(prev, key, value, max_value_len)?;
        prev = Some(key);
    }
    if prev.is_none() {
        return Err("a commit record has at least one op".to_owned());
    }
    Ok(())
}

/// A record's body decoded without copying.
pub(crate) struct BodyView<'a> {
    pub commit_id: u64,
    pub command: &'a [u8],
    op_count: u32,
    ops: &'a [u8],
}

/// One decoded op, borrowing the body.
pub(crate) enum OpView<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

impl<'a> BodyView<'a> {
    /// Decodes a body; `None` when it is malformed (the caller names the damage).
    pub(crate) fn parse(body: &'a [u8]) -> Option<BodyView<'a>> {
        let commit_id = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
        let name_len = u16::from_le_bytes(body.get(8..10)?.try_into().ok()?) as usize;
        let command = body.get(10..10 + name_len)?;
        let at = 10 + name_len;
        let op_count = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?);
        let view = BodyView {
            commit_id,
            command,
            op_count,
            ops: body.get(at + 4..)?,
        };
        // Validate every op now, so iteration below cannot fail.
        let mut n = 0u32;
        let mut rest = view.ops;
        while !rest.is_empty() {
            let (_, tail) = split_op(rest)?;
            rest = tail;
            n += 1;
        }
        (n == op_count).then_some(view)
    }

    /// See [`validate`].
    pub(crate) fn validate(&self, max_value_len: usize) -> std::result::Result<(), String> {
        let ops = self.ops().map(|op| match op {
            OpView::Put(k, v) => (k, Some(v)),
            OpView::Delete(k) => (k, None),
        });
        validate(self.commit_id, ops, max_value_len)
    }

    pub(crate) fn ops(&self) -> impl Iterator<Item = OpView<'a>> + '_ {
        let mut rest = self.ops;
        (0..self.op_count).map_while(move |_| {
            let (op, tail) = split_op(rest)?;
            rest = tail;
            Some(op)
        })
    }

    pub(crate) fn to_record(&self, prev_hash: ChainHash, hash: ChainHash) -> CommitRecord {
        CommitRecord {
            commit_id: CommitId(self.commit_id),
            prev_hash,
            hash,
            command: String::from_utf8_lossy(self.command).into_owned(),
            ops: self
                .ops()
                .map(|op| match op {
                    OpView::Put(k, v) => Op::Put {
                        key: k.to_vec(),
                        value: v.to_vec(),
                    },
                    OpView::Delete(k) => Op::Delete { key: k.to_vec() },
                })
                .collect(),
        }
    }
}

fn split_op(b: &[u8]) -> Option<(OpView<'_>, &[u8])> {
    let tag = *b.first()?;
    let klen = u16::from_le_bytes(b.get(1..3)?.try_into().ok()?) as usize;
    let vlen = u32::from_le_bytes(b.get(3..7)?.try_into().ok()?) as usize;
    let key = b.get(7..7 + klen)?;
    let value = b.get(7 + klen..7 + klen + vlen)?;
    let rest = b.get(7 + klen + vlen..)?;
    match tag {
        TAG_PUT => Some((OpView::Put(key, value), rest)),
        TAG_DELETE if vlen == 0 => Some((OpView::Delete(key), rest)),
        _ => None,
    }
}

/// A commit's frame, built before the commit takes its locks; the commit id, the
/// watermark, the anchor and the checksum are filled in by [`Frame::seal`].
pub(crate) struct Frame {
    pub bytes: Vec<u8>,
}

impl Frame {
    /// Encodes the body of a commit by `command` with `ops` (key, value or delete).
    pub(crate) fn commit<'a>(
        command: &str,
        ops: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)> + Clone,
    ) -> Result<Frame> {
        let name = &command.as_bytes()[..command.len().min(u16::MAX as usize)];
        let size = FRAME_HEADER
            + 14
            + name.len()
            + ops
                .clone()
                .map(|(k, v)| 7 + k.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>();
        if size > MAX_FRAME {
            return Err(Error::CommitTooLarge {
                len: size,
                max: MAX_FRAME,
            });
        }
        let mut bytes = Vec::with_capacity(size.next_multiple_of(8));
        bytes.resize(FRAME_HEADER + 8, 0);
        bytes[8] = KIND_COMMIT;
        bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for (k, v) in ops {
            bytes.push(if v.is_some() { TAG_PUT } else { TAG_DELETE });
            bytes.extend_from_slice(&(k.len() as u16).to_le_bytes());
            let v = v.unwrap_or(&[]);
            bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
            bytes.extend_from_slice(k);
            bytes.extend_from_slice(v);
        }
        debug_assert_eq!(bytes.len(), size);
        Ok(Frame { bytes })
    }

    /// A mark: a frame with no commit, recording the acknowledged watermark (written
    /// when a shard is closed cleanly, so damage to the last commits is told apart
    /// from a torn tail).
    pub(crate) fn mark() -> Frame {
        let mut bytes = vec![0; FRAME_HEADER];
        bytes[8] = KIND_MARK;
        Frame { bytes }
    }

    /// Declares the watermark [`Frame::seal`] records a durable one: every commit
    /// up to it was fsynced before it was acknowledged.
    pub(crate) fn set_synced(&mut self) {
        self.bytes[9] |= FLAG_SYNCED;
    }

    /// Records the commit time, `ms` milliseconds since the Unix epoch (kept to
    /// 48 bits: enough for the next 8,000 years).
    pub(crate) fn set_time(&mut self, ms: u64) {
        self.bytes[10..16].copy_from_slice(&ms.to_le_bytes()[..6]);
    }

    /// Fills in the commit id only: for a frame that feeds the chain but is never
    /// written to a file.
    pub(crate) fn set_id(&mut self, id: u64) {
        self.bytes[FRAME_HEADER..FRAME_HEADER + 8].copy_from_slice(&id.to_le_bytes());
    }

    /// Fills in the commit id (commits only), the watermark and the anchor, and
    /// checksums the frame. Returns the frame length without padding.
    pub(crate) fn seal(&mut self, id: u64, durable: u64, anchor: (u64, ChainHash)) -> usize {
        let len = self.bytes.len();
        if self.bytes[8] == KIND_COMMIT {
            self.bytes[FRAME_HEADER..FRAME_HEADER + 8].copy_from_slice(&id.to_le_bytes());
        }
        self.bytes[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.bytes[16..24].copy_from_slice(&durable.to_le_bytes());
        self.bytes[24..32].copy_from_slice(&anchor.0.to_le_bytes());
        self.bytes[32..64].copy_from_slice(&anchor.1 .0);
        let crc = frame_crc(&self.bytes);
        self.bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        len
    }
}

/// Milliseconds since the Unix epoch by the kernel's coarse real-time clock
/// (no system call; its resolution is the scheduler tick), or 0 if the clock
/// is before the epoch.
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ms = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000;
    (secs * 1000 + ms) & ((1 << 48) - 1)
}

/// The commit time a frame records (the whole frame, header included), `None`
/// for a frame written without one.
pub(crate) fn frame_time(frame: &[u8]) -> Option<std::time::SystemTime> {
    let mut word = [0u8; 8];
    word[..6].copy_from_slice(frame.get(10..16)?);
    match u64::from_le_bytes(word) {
        0 => None,
        ms => Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
    }
}

fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[0..4]);
    crc32c::crc32c_append(crc, &frame[8..])
}

/// A frame read back from disk and verified.
pub(crate) struct ReadFrame<'a> {
    pub kind: u8,
    /// The watermark counts only fsynced commits (it binds after a power cut).
    pub synced: bool,
    pub durable: u64,
    pub anchor: (u64, ChainHash),
    pub body: &'a [u8],
    /// Bytes the frame takes on disk, padding included.
    pub stride: usize,
}

/// What is at some offset of a segment.
pub(crate) enum Parsed<'a> {
    Frame(ReadFrame<'a>),
    /// Zeros: the clean end of what was written.
    End,
    /// Bytes that are not a valid frame.
    Bad,
}

/// Parses the frame at the start of `b`, verifying its checksum.
pub(crate) fn parse_frame(b: &[u8]) -> Parsed<'_> {
    parse(b, true)
}

/// Parses a frame that `parse_frame` already verified (recovery reads each
/// frame more than once; the checksum is computed the first time only).
pub(crate) fn parse_verified_frame(b: &[u8]) -> Parsed<'_> {
    parse(b, false)
}

fn parse(b: &[u8], verify: bool) -> Parsed<'_> {
    if b.len() < 8 {
        return if b.iter().all(|&x| x == 0) {
            Parsed::End
        } else {
            Parsed::Bad
        };
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        let probe = &b[..b.len().min(FRAME_HEADER)];
        return if probe.iter().all(|&x| x == 0) {
            Parsed::End
        } else {
            Parsed::Bad
        };
    }
    if len < FRAME_HEADER || len > b.len() {
        return Parsed::Bad;
    }
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if verify && frame_crc(&b[..len]) != crc {
        return Parsed::Bad;
    }
    let kind = b[8];
    if kind != KIND_COMMIT && kind != KIND_MARK {
        return Parsed::Bad;
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    Parsed::Frame(ReadFrame {
        kind,
        synced: b[9] & FLAG_SYNCED != 0,
        durable: word(16),
        anchor: (word(24), ChainHash(b[32..64].try_into().expect("32 bytes"))),
        body: &b[FRAME_HEADER..len],
        stride: len.next_multiple_of(8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let ops: Vec<(&[u8], Option<&[u8]>)> = vec![(b"a", Some(b"1")), (b"b", None)];
        let mut f = Frame::commit("cmd", ops.iter().copied()).unwrap();
        let len = f.seal(7, 6, (5, ChainHash::genesis()));
        let mut disk = f.bytes.clone();
        disk.resize(len.next_multiple_of(8) + 16, 0);
        let Parsed::Frame(r) = parse_frame(&disk) else {
            panic!("a sealed frame parses")
        };
        assert_eq!((r.kind, r.durable, r.anchor.0), (KIND_COMMIT, 6, 5));
        let body = BodyView::parse(r.body).expect("body parses");
        assert_eq!((body.commit_id, body.command), (7, &b"cmd"[..]));
        let rec = body.to_record(ChainHash::genesis(), ChainHash::genesis());
        assert_eq!(
            rec.ops,
            vec![
                Op::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec()
                },
                Op::Delete { key: b"b".to_vec() }
            ]
        );
        assert!(matches!(parse_frame(&disk[r.stride..]), Parsed::End));
        for i in 0..len {
            let mut bad = disk.clone();
            bad[i] ^= 0x40;
            assert!(
                !matches!(parse_frame(&bad), Parsed::Frame(_)),
                "a flip at {i} is caught"
            );
        }
    }
}
