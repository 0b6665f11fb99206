//! Base64 (RFC 4648, the standard alphabet, padding optional), decoded: what CHAP's `0b`
//! values and Ceph's keyrings carry.

/// The bytes `s` encodes, or `None` for a character outside the alphabet, padding inside
/// the text, or a dangling character (a length of 4n+1 encodes no whole byte).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff).to_be_bytes()[3]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_with_and_without_padding_and_refuses_the_rest() {
        assert_eq!(decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode("AQID").unwrap(), [1, 2, 3]);
        assert_eq!(decode("").unwrap(), b"");
        assert!(decode("aGV*bG8=").is_none());
        assert!(decode("aG=sbG8").is_none(), "padding inside");
        assert!(decode("aGVsb").is_none(), "a dangling character");
    }
}
