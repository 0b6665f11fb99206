//! Origin chunk -> COW chunk, O(1) expected per lookup.
//!
//! A plain `HashMap<u64, u64>` with a cheap integer mixer instead of SipHash: keys are
//! chunk numbers chosen by the block layout, not by an attacker, and they often come in
//! strides (every 2^n-th chunk) that a weak hash would pile into a few buckets.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type ChunkMap = HashMap<u64, u64, BuildHasherDefault<ChunkHasher>>;

/// murmur3's 64-bit finaliser over one `u64`.
#[derive(Default, Clone, Copy)]
pub struct ChunkHasher(u64);

impl Hasher for ChunkHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn strided_keys_spread_over_buckets() {
        let build = BuildHasherDefault::<ChunkHasher>::default();
        let buckets: std::collections::HashSet<u64> = (0..1024u64)
            .map(|k| build.hash_one(k << 12) & 1023)
            .collect();
        assert!(
            buckets.len() > 550,
            "only {} of 1024 buckets used",
            buckets.len()
        );
    }
}
