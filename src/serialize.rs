//! How `Stats` and the types in it are written by serde (the `serde` feature).
//!
//! Chosen once for every type, so that a dashboard or a log pipeline reads one
//! shape: durations are seconds as an `f64` (`1.5`, not `{secs, nanos}`), the
//! unit Prometheus uses too; wall-clock times are seconds since the Unix epoch
//! as an `f64`; keys and other byte strings are lowercase hex, two digits a byte
//! (lossless: a key need not be UTF-8); paths are strings, with bytes that are
//! not UTF-8 replaced by U+FFFD. Ids (`PageId`, `CommitId`) are plain numbers.

use serde::ser::SerializeSeq;
use serde::Serializer;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub(crate) fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    s.serialize_f64(secs)
}

/// `bytes` in lowercase hex.
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

pub(crate) fn hex<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex_string(bytes))
}

pub(crate) fn hex_list<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(list.len()))?;
    for bytes in list {
        seq.serialize_element(&hex_string(bytes))?;
    }
    seq.end()
}

pub(crate) fn opt_path<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}
