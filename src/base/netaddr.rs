//! Network addresses as the manifest writes them and the wire protocols use them: an
//! iSCSI portal and an Ethernet MAC, each parsed, printed back and serialized as text.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Serialize;

/// An iSCSI portal: `ip:port`, `[v6]:port`, or an address alone for port 3260.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Portal(pub SocketAddr);

impl FromStr for Portal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Portal(a));
        }
        let ip: IpAddr = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is not a portal address such as 10.0.0.1:3260"))?;
        Ok(Portal(SocketAddr::new(ip, 3260)))
    }
}

impl fmt::Display for Portal {
    /// The configfs spelling: `10.0.0.1:3260`, `[::1]:3260`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<Portal> for String {
    fn from(p: Portal) -> String {
        p.to_string()
    }
}

/// An Ethernet address, printed as `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not a MAC address such as 52:54:00:12:34:56");
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals_and_macs_round_trip() {
        assert_eq!(
            "10.0.0.1:3260".parse::<Portal>().unwrap().to_string(),
            "10.0.0.1:3260"
        );
        assert_eq!(
            "10.0.0.1".parse::<Portal>().unwrap().to_string(),
            "10.0.0.1:3260"
        );
        assert_eq!(
            "[::1]:3261".parse::<Portal>().unwrap().to_string(),
            "[::1]:3261"
        );
        assert_eq!(
            "52:54:00:AB:cd:01".parse::<Mac>().unwrap().to_string(),
            "52:54:00:ab:cd:01"
        );
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("nope".parse::<Portal>().is_err());
    }
}
