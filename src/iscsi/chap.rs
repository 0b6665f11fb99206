//! CHAP with MD5 (RFC 1994, as RFC 7143 §12.1.3 uses it): the target's challenge, the
//! check of the initiator's response, and the target's own response when the initiator
//! asks for mutual authentication.

use md5::{Digest, Md5};

/// Binary values longer than this are refused (RFC 7143 allows 1024 bytes).
const MAX_BINARY: usize = 1024;
/// The challenge this target sends.
pub const CHALLENGE_LEN: usize = 32;

/// One side's name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({:?}, …)", self.username)
    }
}

/// What a target requires of a login: the initiator's credentials, and ours for mutual CHAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub initiator: Secret,
    pub target: Option<Secret>,
}

/// The CHAP response: MD5 over identifier, secret and challenge.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// A binary value: `0x` + hex or `0b` + base64 (RFC 7143 §6.1).
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let (prefix, body) = v.split_at_checked(2)?;
    let bytes = match prefix {
        "0x" | "0X" => {
            let body = body.as_bytes();
            // An odd count means a leading zero nibble.
            let mut out = Vec::with_capacity(body.len().div_ceil(2));
            let mut digits = body.iter();
            if body.len() % 2 == 1 {
                out.push(hex(*digits.next()?)?);
            }
            while let (Some(&a), Some(&b)) = (digits.next(), digits.next()) {
                out.push(hex(a)? << 4 | hex(b)?);
            }
            out
        }
        "0b" | "0B" => crate::base::base64::decode(body)?,
        _ => return None,
    };
    (!bytes.is_empty() && bytes.len() <= MAX_BINARY).then_some(bytes)
}

pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Compares without stopping at the first difference.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fresh random bytes for an identifier and a challenge.
pub fn challenge() -> std::io::Result<(u8, [u8; CHALLENGE_LEN])> {
    let mut buf = [0u8; CHALLENGE_LEN + 1];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut c = [0u8; CHALLENGE_LEN];
    c.copy_from_slice(&buf[1..]);
    Ok((buf[0], c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_1994_md5_response() {
        // MD5(0x01 || "secret" || 0x00..0x0f), computed independently.
        let challenge: Vec<u8> = (0u8..16).collect();
        let r = response(1, b"secret", &challenge);
        let mut h = Md5::new();
        h.update([1u8]);
        h.update(b"secret");
        h.update(&challenge);
        assert_eq!(r, <[u8; 16]>::from(h.finalize()));
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0X102"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(decode_binary(&format!("0x{}", "00".repeat(1025))), None);
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
        assert!(same(b"ab", b"ab") && !same(b"ab", b"ac") && !same(b"a", b"ab"));
    }
}
