//! Byte sizes as typed values: `200MiB` parses and prints back the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes per sector, the unit device-mapper speaks in.
pub const SECTOR: u64 = 512;

/// A size in bytes. Parses whole numbers such as `4096`, `32KiB`, `200MiB`, with binary
/// suffixes (`K`, `KiB`, `M`, `MiB`, `G`, `GiB`, `T`, `TiB`) and `s` for 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("size {0:?} is empty")]
    Empty(String),
    #[error("size {0:?} does not start with a whole number")]
    NotANumber(String),
    #[error("size {input:?} has unknown unit {unit:?} (use B, s, KiB, MiB, GiB or TiB)")]
    UnknownUnit { input: String, unit: String },
    #[error("size {0:?} is too large")]
    Overflow(String),
}

const UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Whole sectors, rounding down.
    pub const fn sectors(self) -> u64 {
        self.0 / SECTOR
    }

    pub const fn from_sectors(sectors: u64) -> Self {
        ByteSize(sectors * SECTOR)
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(SizeError::Empty(input.to_string()));
        }
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits_end == 0 {
            return Err(SizeError::NotANumber(input.to_string()));
        }
        let number: u64 = s[..digits_end]
            .parse()
            .map_err(|_| SizeError::Overflow(input.to_string()))?;
        let unit = s[digits_end..].trim();
        let multiplier = match unit {
            "" | "B" => 1,
            "s" => SECTOR,
            "K" | "k" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            other => {
                return Err(SizeError::UnknownUnit {
                    input: input.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(input.to_string()))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly, so printing and
    /// parsing round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (name, mult) in UNITS {
                if self.0.is_multiple_of(mult) {
                    return write!(f, "{}{}", self.0 / mult, name);
                }
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A human-friendly approximate rendering (`1.5 GiB`) for tables; not for parsing.
/// `part` as a percentage of `whole` (0 for an empty whole).
#[allow(clippy::cast_precision_loss)]
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    part as f64 * 100.0 / whole as f64
}

pub fn human(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if value < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("200MiB".parse(), Ok(ByteSize(200 << 20)));
        assert_eq!("32KiB".parse(), Ok(ByteSize(32 << 10)));
        assert_eq!("32K".parse(), Ok(ByteSize(32 << 10)));
        assert_eq!("8s".parse(), Ok(ByteSize(4096)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!(" 1 GiB ".parse(), Ok(ByteSize(1 << 30)));
    }

    #[test]
    fn rejects_bad_sizes_with_specific_errors() {
        assert!(matches!("".parse::<ByteSize>(), Err(SizeError::Empty(_))));
        assert!(matches!(
            "MiB".parse::<ByteSize>(),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(
            "1.5GiB".parse::<ByteSize>(),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "10MB".parse::<ByteSize>(),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "99999999999TiB".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn prints_the_largest_exact_unit() {
        assert_eq!(ByteSize(200 << 20).to_string(), "200MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(0).to_string(), "0B");
        assert_eq!(ByteSize(1 << 40).to_string(), "1TiB");
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(n in any::<u64>()) {
            let size = ByteSize(n);
            prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }
    }
}
