//! Keys and values as people and scripts read them.
//!
//! Human output shows bytes that are valid UTF-8 as a quoted string (control
//! characters and quotes escaped like Rust's `{:?}`), anything else as `0x` and hex;
//! `--hex` shows hex always. JSON gives both: `text` (the UTF-8 string, or
//! null) and `hex` (always), so no byte is ever lost.

use serde_json::{json, Value};

/// How many bytes of a value a listing shows before it cuts it.
pub const LISTING_VALUE_BYTES: usize = 64;

/// Lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes given on the command line as hex.
#[derive(Clone, Debug)]
pub struct Bytes(pub Vec<u8>);

/// Parses hex (an optional `0x`, two digits a byte) given on the command line.
pub fn parse_hex(s: &str) -> Result<Bytes, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{s:?}: an odd number of hex digits"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{s:?}: not hex"))
        })
        .collect::<Result<_, _>>()
        .map(Bytes)
}

/// `bytes` for a person: a quoted string where it is readable text, hex
/// otherwise (or always, with `force_hex`). With `limit`, at most that many
/// bytes are shown, followed by the full length.
pub fn human(bytes: &[u8], force_hex: bool, limit: Option<usize>) -> String {
    let shown = match limit {
        Some(n) if bytes.len() > n => &bytes[..n],
        _ => bytes,
    };
    let text = if force_hex {
        None
    } else {
        // A cut may split a character: fall back to the valid prefix.
        match std::str::from_utf8(shown) {
            Ok(s) => Some(s),
            Err(e) if shown.len() < bytes.len() && e.error_len().is_none() => {
                std::str::from_utf8(&shown[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        }
        .filter(|_| std::str::from_utf8(bytes).is_ok())
    };
    let mut out = match text {
        Some(s) => format!("{s:?}"),
        None => format!("0x{}", hex(shown)),
    };
    if shown.len() < bytes.len() {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

/// `bytes` for a script: `{"text": <UTF-8 or null>, "hex": "..."}`.
pub fn json(bytes: &[u8]) -> Value {
    json!({
        "text": std::str::from_utf8(bytes).ok(),
        "hex": hex(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_hex_and_cuts() {
        assert_eq!(human(b"acct:7", false, None), "\"acct:7\"");
        assert_eq!(human(b"acct:7", true, None), "0x616363743a37");
        assert_eq!(human(&[0xff, 0x00], false, None), "0xff00");
        assert_eq!(human(b"a\nb", false, None), "\"a\\nb\"");
        assert_eq!(human(b"abcdef", false, Some(3)), "\"abc\"… (6 bytes)");
        // A cut inside a character shows the whole characters before it.
        assert_eq!(human("éé".as_bytes(), false, Some(3)), "\"é\"… (4 bytes)");
        assert_eq!(parse_hex("0x00ff").unwrap().0, vec![0, 255]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(json(&[0xff])["text"], Value::Null);
    }
}
