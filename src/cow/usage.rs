//! The numbers the kernel's `dmsetup status` prints for a snapshot.

use std::fmt;
use std::str::FromStr;

use super::format::{Geometry, HEADER_CHUNKS};
use crate::base::units::SECTOR;

/// `<sectors_allocated>/<total_sectors> <metadata_sectors>`, as `persistent_usage` computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// `next_free * chunk`: header, metadata and data chunks up to the allocator.
    pub sectors_allocated: u64,
    /// Size of the COW device.
    pub total_sectors: u64,
    /// `(current_area + 2) * chunk`: the header plus every area up to the current one.
    pub metadata_sectors: u64,
}

impl Usage {
    pub fn compute(geometry: Geometry, next_free: u64, current_area: u64, cow_bytes: u64) -> Self {
        let chunk = u64::from(geometry.chunk_sectors());
        Usage {
            sectors_allocated: next_free * chunk,
            total_sectors: cow_bytes / SECTOR,
            metadata_sectors: (current_area + 1 + HEADER_CHUNKS) * chunk,
        }
    }

    /// Sectors holding copied data.
    pub fn data_sectors(&self) -> u64 {
        self.sectors_allocated.saturating_sub(self.metadata_sectors)
    }

    /// Data fill in percent of the COW size, the figure admins watch.
    pub fn data_fill_percent(&self) -> f64 {
        if self.total_sectors == 0 {
            return 0.0;
        }
        self.data_sectors() as f64 * 100.0 / self.total_sectors as f64
    }

    /// Fill in percent counting metadata too (`allocated / total`), what LVM calls Data%.
    pub fn allocated_percent(&self) -> f64 {
        crate::base::units::percent(self.sectors_allocated, self.total_sectors)
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.sectors_allocated, self.total_sectors, self.metadata_sectors
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a snapshot usage of the form \"<allocated>/<total> <metadata>\"")]
pub struct UsageParseError(pub String);

impl FromStr for Usage {
    type Err = UsageParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UsageParseError(s.to_string());
        let (fraction, meta) = s.trim().split_once(' ').ok_or_else(err)?;
        let (alloc, total) = fraction.split_once('/').ok_or_else(err)?;
        let num = |t: &str| t.trim().parse::<u64>().map_err(|_| err());
        Ok(Usage {
            sectors_allocated: num(alloc)?,
            total_sectors: num(total)?,
            metadata_sectors: num(meta)?,
        })
    }
}

/// What happens when a write needs a chunk and none is left: the store's flag in a
/// snapshot table line, and the engine's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OverflowPolicy {
    /// `P`: the snapshot is invalidated and `valid = 0` is persisted.
    #[serde(rename = "P")]
    Invalidate,
    /// `PO`: writes fail from then on, reads keep working, the file stays valid.
    #[serde(rename = "PO")]
    Refuse,
}

impl OverflowPolicy {
    pub fn table_flag(self) -> &'static str {
        match self {
            OverflowPolicy::Invalidate => "P",
            OverflowPolicy::Refuse => "PO",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_snapshot_matches_the_documented_example() {
        // snapshot.rst: "snapshot-merge 16/2097152 16" for 8-sector chunks on a 1 GiB COW.
        let u = Usage::compute(Geometry::new(8).unwrap(), 2, 0, 1 << 30);
        assert_eq!(u.to_string(), "16/2097152 16");
        assert_eq!(u.data_fill_percent(), 0.0);
        assert_eq!("16/2097152 16".parse(), Ok(u));
    }

    #[test]
    fn the_vm_reference_numbers_parse() {
        let u: Usage = "1296/32768 16".parse().unwrap();
        assert_eq!(u.data_sectors(), 1280);
        assert!("1296/32768".parse::<Usage>().is_err());
        assert!("a/b c".parse::<Usage>().is_err());
    }
}
