//! Text keys (RFC 7143 §6): `key=value` pairs, each ended by a NUL byte, as Login and
//! Text PDUs carry them. Names and values are bounded before they are kept.

use std::fmt;

/// RFC 7143 §6.1: key names are at most 63 bytes.
pub const MAX_KEY: usize = 63;
/// Values are at most 255 bytes, but binary CHAP values may be long: 8 KiB covers a
/// 4096-byte value in hex.
pub const MAX_VALUE: usize = 8192;
/// All the text of one login stage or one text exchange, continuations included.
pub const MAX_TEXT: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("the text is {0} bytes, over the {MAX_TEXT}-byte limit")]
    TooLong(usize),
    #[error("text key {0:?} has no '='")]
    NoEquals(String),
    #[error("text key {0:?} is not a valid key name")]
    BadName(String),
    #[error("the value of {0} is over {MAX_VALUE} bytes")]
    ValueTooLong(String),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("key {0} is sent twice")]
    Duplicate(String),
}

/// Key-value pairs in the order they came.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairs(pub Vec<(String, String)>);

impl Pairs {
    /// Parses a data segment. Trailing padding NULs and empty entries are ignored; a key
    /// sent twice is refused (§6.1: "a key MUST NOT be repeated" within a negotiation).
    pub fn parse(data: &[u8]) -> Result<Pairs, TextError> {
        if data.len() > MAX_TEXT {
            return Err(TextError::TooLong(data.len()));
        }
        let mut out: Vec<(String, String)> = Vec::new();
        for item in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let item = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| TextError::NoEquals(clip(item)))?;
            if k.is_empty() || k.len() > MAX_KEY || !k.bytes().all(name_char) {
                return Err(TextError::BadName(clip(k)));
            }
            if v.len() > MAX_VALUE {
                return Err(TextError::ValueTooLong(k.to_string()));
            }
            if out.iter().any(|(seen, _)| seen == k) {
                return Err(TextError::Duplicate(k.to_string()));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(Pairs(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.0.push((key.to_string(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The wire form: `k=v\0` for each pair.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Pairs {
    /// For logs: CHAP responses and challenges are not worth printing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            if k.starts_with("CHAP_") && k != "CHAP_A" && k != "CHAP_N" {
                write!(f, "{k}=…")?;
            } else {
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

/// §6.1: letters, digits, `.`, `-`, `+`, `@`, `_`.
fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_')
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A boolean value: `Yes` or `No`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// A numerical value: decimal, or hex with `0x` (§6.1.1, "numerical-value").
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_encodes() {
        let p = Pairs::parse(b"InitiatorName=iqn.x:y\0AuthMethod=CHAP,None\0\0\0").unwrap();
        assert_eq!(p.get("AuthMethod"), Some("CHAP,None"));
        assert_eq!(Pairs::parse(&p.encode()).unwrap(), p);
        assert_eq!(
            Pairs::parse(b"x=1\0x=2\0"),
            Err(TextError::Duplicate("x".into()))
        );
        assert!(matches!(
            Pairs::parse(b"novalue\0"),
            Err(TextError::NoEquals(_))
        ));
        assert!(matches!(
            Pairs::parse(b"a b=1\0"),
            Err(TextError::BadName(_))
        ));
        assert!(Pairs::parse(&vec![b'a'; MAX_TEXT + 1]).is_err());
        assert_eq!(
            Pairs::parse(b"X-empty=\0").unwrap().get("X-empty"),
            Some("")
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }
}
