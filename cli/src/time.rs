//! Times on the command line: RFC 3339 in and out (`humantime`), UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Parses an RFC 3339 time (`2026-12-07T03:00:00Z`, `2026-12-07 03:00:00.250`;
/// a time without a zone is UTC).
pub fn parse(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        format!("{e}: give an RFC 3339 time such as 2026-12-07T03:00:00Z (UTC without a zone)")
    })
}

/// A commit time for people: RFC 3339 in UTC to the millisecond, or "no time
/// recorded" for records written before times were.
pub fn show(time: Option<SystemTime>) -> String {
    match time {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        None => "no time recorded".to_owned(),
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
