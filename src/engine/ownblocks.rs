//! One bit per unit of a PC's disk that is the PC's own (a reflink clone's 4 KiB blocks, an
//! rbd clone's objects), and how many are set: the PC's fill, held against its quota.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::EngineError;
use crate::cow::Usage;

/// A clone's fill (its own units) against its quota (`cow_size`, raised by auto-extend),
/// and the checks before a write: the disk's end, read-only, the quota.
pub(super) struct Fill {
    own: Mutex<OwnBlocks>,
    /// The bytes one bit stands for.
    unit: u64,
    /// The disk's size.
    size: u64,
    quota: AtomicU64,
    read_only: bool,
}

impl Fill {
    pub(super) fn new(
        own: OwnBlocks,
        unit: u64,
        size: u64,
        (read_only, quota): (bool, u64),
    ) -> Fill {
        Fill {
            own: Mutex::new(own),
            unit,
            size,
            quota: AtomicU64::new(quota),
            read_only,
        }
    }

    pub(super) fn own(&self) -> MutexGuard<'_, OwnBlocks> {
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The bytes the PC holds alone.
    pub(super) fn own_bytes(&self) -> u64 {
        self.own().count * self.unit
    }

    /// The fill as `dmsetup status` numbers would give it: own bytes of the quota.
    pub(super) fn usage(&self) -> Usage {
        Usage {
            sectors_allocated: self.own_bytes() / 512,
            total_sectors: self.quota.load(Ordering::Relaxed) / 512,
            metadata_sectors: 0,
        }
    }

    /// Raises the quota to `len` bytes (never lowers it); returns the old one.
    pub(super) fn grow(&self, len: u64) -> Result<u64, EngineError> {
        if self.read_only {
            return Err(EngineError::ReadOnly);
        }
        Ok(self.quota.fetch_max(len, Ordering::Relaxed))
    }

    pub(super) fn check_range(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(EngineError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    pub(super) fn check_writable(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        if self.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_range(offset, len)
    }

    /// Refuses a write of units `first..end` that would take the PC past its quota
    /// (rewrites of its own units always go); else claims them as the PC's own at once, in
    /// the same step, so writes in flight together cannot pass the quota side by side. A
    /// write that then fails leaves them claimed: the fill errs on the full side.
    pub(super) fn admit(&self, first: u64, end: u64) -> Result<(), EngineError> {
        let mut own = self.own();
        let quota = self.quota.load(Ordering::Relaxed);
        let new = own.unset_in(first, end);
        if new > 0 && (own.count + new) * self.unit > quota {
            return Err(EngineError::Quota { bytes: quota });
        }
        own.set(first, end, true);
        Ok(())
    }
}

/// One bit per block the PC holds alone, and how many are set.
pub(super) struct OwnBlocks {
    bits: Vec<u64>,
    pub(super) count: u64,
}

impl OwnBlocks {
    pub(super) fn new(blocks: u64) -> OwnBlocks {
        let words = usize::try_from(blocks.div_ceil(64)).expect("a disk's blocks fit in memory");
        OwnBlocks {
            bits: vec![0; words],
            count: 0,
        }
    }

    pub(super) fn is_set(&self, b: u64) -> bool {
        self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// How many of blocks `first..end` are not set yet.
    pub(super) fn unset_in(&self, first: u64, end: u64) -> u64 {
        (first..end).filter(|&b| !self.is_set(b)).count() as u64
    }

    /// Sets (or clears) blocks `first..end`, a word of 64 at a time: a reset opens a fresh
    /// clone of a 20 GiB disk inside its pause, and bit by bit that would be 5 M steps.
    pub(super) fn set(&mut self, first: u64, end: u64, on: bool) {
        let mut b = first;
        while b < end {
            let word = (b / 64) as usize;
            let from = b % 64;
            let to = (end - (b - from)).min(64);
            let mask = if to - from == 64 {
                u64::MAX
            } else {
                ((1u64 << (to - from)) - 1) << from
            };
            let before = u64::from(self.bits[word].count_ones());
            if on {
                self.bits[word] |= mask;
            } else {
                self.bits[word] &= !mask;
            }
            let after = u64::from(self.bits[word].count_ones());
            self.count = self.count + after - before;
            b += to - from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_blocks_set_and_clear_across_words_and_count_once() {
        let mut own = OwnBlocks::new(300);
        own.set(3, 200, true);
        assert_eq!(own.count, 197);
        own.set(0, 70, true);
        assert_eq!(own.count, 200);
        own.set(64, 128, false);
        assert_eq!(own.count, 136);
        assert!(own.is_set(63) && !own.is_set(64) && !own.is_set(127) && own.is_set(128));
        own.set(199, 300, true);
        assert_eq!(own.count, 136 + 100);
        own.set(0, 300, false);
        assert_eq!(own.count, 0);
        assert_eq!(own.unset_in(0, 300), 300);
    }

    #[test]
    fn a_write_admitted_claims_its_units_so_writes_in_flight_cannot_pass_the_quota_together() {
        let fill = Fill::new(OwnBlocks::new(16), 4096, 16 * 4096, (false, 2 * 4096));
        fill.admit(0, 2).unwrap();
        assert_eq!(
            fill.own_bytes(),
            2 * 4096,
            "claimed before the write is done"
        );
        assert!(matches!(fill.admit(2, 3), Err(EngineError::Quota { .. })));
        fill.admit(1, 2).unwrap();
        assert!(fill.grow(3 * 4096).is_ok());
        fill.admit(2, 3).unwrap();
        assert_eq!(fill.usage().sectors_allocated, 3 * 8);
    }
}
