//! iSCSI qualified names (RFC 3720 §3.2.6): `iqn.YYYY-MM.reversed.domain[:anything]`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Iqn(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an iSCSI name of the form iqn.YYYY-MM.reversed.domain[:name] (lower case, at most 223 bytes)")]
pub struct IqnError(pub String);

impl Iqn {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Iqn {
    type Err = IqnError;

    fn from_str(s: &str) -> Result<Self, IqnError> {
        let err = || IqnError(s.to_string());
        let rest = s.strip_prefix("iqn.").ok_or_else(err)?;
        let (date, rest) = rest.split_at_checked(7).ok_or_else(err)?;
        let date_ok = date.as_bytes().iter().enumerate().all(|(i, b)| {
            if i == 4 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
        let (domain, _name) = rest
            .strip_prefix('.')
            .ok_or_else(err)?
            .split_once(':')
            .unwrap_or((&rest[1..], ""));
        let chars_ok = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c));
        if !date_ok || domain.is_empty() || !chars_ok || s.len() > 223 {
            return Err(err());
        }
        Ok(Iqn(s.to_string()))
    }
}

impl fmt::Display for Iqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_round_trip() {
        for s in [
            "iqn.2024-01.lan.retro:pc-03",
            "iqn.1993-08.org.debian:01:abc",
            "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
        ] {
            assert_eq!(s.parse::<Iqn>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for s in [
            "",
            "iqn.",
            "iqn.2024-1.lan.x",
            "eui.02004567A425678D",
            "iqn.2024-01.LAN.x",
            "iqn.2024-01.:x",
            "iqn.2024-01.lan x",
        ] {
            assert!(s.parse::<Iqn>().is_err(), "{s:?}");
        }
    }
}
