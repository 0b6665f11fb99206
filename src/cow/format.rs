//! On-disk structures and chunk arithmetic of the persistent exception store.

use super::error::FormatError;
use crate::base::units::SECTOR;

/// "SnAp" read as a little-endian u32.
pub const SNAP_MAGIC: u32 = 0x7041_6e53;
pub const SNAPSHOT_DISK_VERSION: u32 = 1;
/// The kernel's `NUM_SNAPSHOT_HDR_CHUNKS`: chunk 0 holds the header.
pub const HEADER_CHUNKS: u64 = 1;
/// `DM_CHUNK_SIZE_DEFAULT_SECTORS`: 16 KiB, used when neither table nor header say.
pub const DEFAULT_CHUNK_SECTORS: u32 = 32;
/// The largest chunk cowctl takes: 1 MiB (LVM allows up to 512 KiB; the kernel would take
/// up to `INT_MAX >> 9` sectors). A COW header is data from a file, and a chunk is a buffer
/// cowctl allocates, so the bound is what a 16-byte header can make it allocate.
pub const MAX_CHUNK_SECTORS: u32 = 1 << 11;
pub const HEADER_SIZE: usize = 16;
pub const DISK_EXCEPTION_SIZE: usize = 16;

/// What the first 16 bytes of chunk 0 hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub valid: u32,
    pub version: u32,
    pub chunk_sectors: u32,
}

/// How the kernel treats a header when it loads the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderState {
    /// Magic 0: the kernel writes a fresh header and starts an empty snapshot.
    New,
    /// A loadable snapshot.
    Valid,
    /// `valid == 0`: the kernel refuses all I/O ("Snapshot is marked invalid").
    Invalid,
}

impl Header {
    pub fn new(chunk_sectors: u32, valid: bool) -> Self {
        Header {
            magic: SNAP_MAGIC,
            valid: u32::from(valid),
            version: SNAPSHOT_DISK_VERSION,
            chunk_sectors,
        }
    }

    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Self {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            magic: word(0),
            valid: word(4),
            version: word(8),
            chunk_sectors: word(12),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.valid.to_le_bytes());
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.chunk_sectors.to_le_bytes());
        out
    }

    /// Applies the kernel's checks in its order: magic, then chunk size, then version.
    pub fn state(&self) -> Result<HeaderState, FormatError> {
        if self.magic == 0 {
            return Ok(HeaderState::New);
        }
        if self.magic != SNAP_MAGIC {
            return Err(FormatError::BadMagic { found: self.magic });
        }
        Geometry::new(self.chunk_sectors)?;
        if self.version != SNAPSHOT_DISK_VERSION {
            return Err(FormatError::UnsupportedVersion {
                version: self.version,
            });
        }
        Ok(if self.valid == 0 {
            HeaderState::Invalid
        } else {
            HeaderState::Valid
        })
    }
}

/// One 16-byte entry of a metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskException {
    /// Chunk index in the origin (golden image).
    pub old_chunk: u64,
    /// Chunk index in the COW file; 0 ends the list.
    pub new_chunk: u64,
}

impl DiskException {
    pub fn decode(bytes: &[u8]) -> Self {
        let mut old = [0u8; 8];
        let mut new = [0u8; 8];
        old.copy_from_slice(&bytes[0..8]);
        new.copy_from_slice(&bytes[8..16]);
        DiskException {
            old_chunk: u64::from_le_bytes(old),
            new_chunk: u64::from_le_bytes(new),
        }
    }

    pub fn encode_into(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.old_chunk.to_le_bytes());
        out[8..16].copy_from_slice(&self.new_chunk.to_le_bytes());
    }
}

/// Chunk arithmetic for one chunk size: where areas sit and which chunks are metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    chunk_sectors: u32,
}

impl Geometry {
    /// The kernel's `dm_exception_store_set_chunk_size` rules, for 512-byte blocks.
    pub fn new(chunk_sectors: u32) -> Result<Self, FormatError> {
        if chunk_sectors == 0 {
            return Err(FormatError::ChunkSizeZero);
        }
        if !chunk_sectors.is_power_of_two() {
            return Err(FormatError::ChunkSizeNotPowerOfTwo {
                sectors: chunk_sectors,
            });
        }
        if chunk_sectors > MAX_CHUNK_SECTORS {
            return Err(FormatError::ChunkSizeTooLarge {
                sectors: chunk_sectors,
            });
        }
        Ok(Geometry { chunk_sectors })
    }

    /// A geometry from a chunk size in bytes (must be a whole number of sectors).
    pub fn from_bytes(bytes: u64) -> Result<Self, FormatError> {
        if !bytes.is_multiple_of(SECTOR) {
            return Err(FormatError::ChunkSizeNotSectors { bytes });
        }
        let sectors = u32::try_from(bytes / SECTOR)
            .map_err(|_| FormatError::ChunkSizeTooLarge { sectors: u32::MAX })?;
        Geometry::new(sectors)
    }

    pub fn chunk_sectors(&self) -> u32 {
        self.chunk_sectors
    }

    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.chunk_sectors) * SECTOR
    }

    /// The chunk size as a buffer length.
    pub fn chunk_len(&self) -> usize {
        usize::try_from(self.chunk_bytes()).expect("chunk sizes are at most 1 GiB")
    }

    pub fn exceptions_per_area(&self) -> u64 {
        self.chunk_bytes() / DISK_EXCEPTION_SIZE as u64
    }

    /// Chunk index of metadata area `area`.
    pub fn area_location(&self, area: u64) -> u64 {
        HEADER_CHUNKS + (self.exceptions_per_area() + 1) * area
    }

    /// True for the header chunk and every metadata area chunk.
    pub fn is_metadata_chunk(&self, chunk: u64) -> bool {
        chunk < HEADER_CHUNKS || chunk % (self.exceptions_per_area() + 1) == HEADER_CHUNKS
    }

    /// The kernel's `skip_metadata`: step over an area chunk.
    pub fn skip_metadata(&self, next_free: u64) -> u64 {
        if next_free % (self.exceptions_per_area() + 1) == HEADER_CHUNKS {
            next_free + 1
        } else {
            next_free
        }
    }

    /// First chunk the allocator hands out in a new snapshot: after header and area 0.
    pub fn first_data_chunk(&self) -> u64 {
        HEADER_CHUNKS + 1
    }

    /// The kernel's room check in `persistent_prepare_exception`.
    pub fn fits(&self, chunk: u64, cow_bytes: u64) -> bool {
        (chunk + 1)
            .checked_mul(self.chunk_bytes())
            .is_some_and(|end| end <= cow_bytes)
    }

    /// Byte offset of a chunk in the COW file.
    pub fn offset(&self, chunk: u64) -> u64 {
        chunk * self.chunk_bytes()
    }

    /// True when the COW's last whole chunk is the last data chunk of an area. Filling such
    /// a COW makes the kernel zero the next area past the end of the device, which fails and
    /// invalidates the snapshot even with `PO` (seen in the test VM); one more chunk avoids it.
    pub fn fill_invalidates(&self, cow_bytes: u64) -> bool {
        let chunks = cow_bytes / self.chunk_bytes();
        chunks > HEADER_CHUNKS
            && (chunks - HEADER_CHUNKS).is_multiple_of(self.exceptions_per_area() + 1)
    }

    /// Number of data chunks a COW of `cow_bytes` can ever hold.
    pub fn data_chunk_capacity(&self, cow_bytes: u64) -> u64 {
        let chunks = cow_bytes / self.chunk_bytes();
        if chunks <= HEADER_CHUNKS {
            return 0;
        }
        let stride = self.exceptions_per_area() + 1;
        let after_header = chunks - HEADER_CHUNKS;
        let full_strides = after_header / stride;
        let rest = after_header % stride;
        full_strides * self.exceptions_per_area() + rest.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_magic_spells_snap() {
        let h = Header::new(8, true);
        let bytes = h.encode();
        assert_eq!(&bytes[0..4], b"SnAp");
        assert_eq!(Header::decode(&bytes), h);
        assert_eq!(h.state(), Ok(HeaderState::Valid));
        assert_eq!(Header::new(8, false).state(), Ok(HeaderState::Invalid));
        assert_eq!(Header::decode(&[0; 16]).state(), Ok(HeaderState::New));
    }

    #[test]
    fn layout_matches_the_kernel_for_p_64() {
        let g = Geometry::new(64).unwrap();
        assert_eq!(g.exceptions_per_area(), 2048);
        assert_eq!(g.area_location(0), 1);
        assert_eq!(g.area_location(1), 2050);
        assert!(g.is_metadata_chunk(0) && g.is_metadata_chunk(1) && g.is_metadata_chunk(2050));
        assert!(
            !g.is_metadata_chunk(2) && !g.is_metadata_chunk(2049) && !g.is_metadata_chunk(2051)
        );
        assert_eq!(g.skip_metadata(2050), 2051);
        assert_eq!(g.skip_metadata(2049), 2049);
    }

    #[test]
    fn capacity_counts_only_data_chunks() {
        let g = Geometry::new(1).unwrap(); // 32 entries per area, stride 33
        assert_eq!(g.data_chunk_capacity(0), 0);
        assert_eq!(g.data_chunk_capacity(2 * 512), 0);
        assert_eq!(g.data_chunk_capacity(3 * 512), 1);
        assert_eq!(g.data_chunk_capacity(34 * 512), 32);
        assert_eq!(g.data_chunk_capacity(35 * 512), 32);
        assert_eq!(g.data_chunk_capacity(36 * 512), 33);
        // Cross-check against walking the allocator.
        for chunks in 0..200u64 {
            let bytes = chunks * 512;
            let mut next = g.first_data_chunk();
            let mut n = 0;
            while g.fits(next, bytes) {
                n += 1;
                next = g.skip_metadata(next + 1);
            }
            assert_eq!(g.data_chunk_capacity(bytes), n, "{chunks} chunks");
        }
    }

    #[test]
    fn sizes_whose_fill_invalidates_are_recognised() {
        let g = Geometry::new(1).unwrap(); // 32 entries per area, stride 33
        let hits: Vec<u64> = (0..120).filter(|&c| g.fill_invalidates(c * 512)).collect();
        assert_eq!(hits, [34, 67, 100]);
        assert!(
            g.fill_invalidates(34 * 512 + 100),
            "a partial last chunk changes nothing"
        );
    }

    #[test]
    fn chunk_size_rules() {
        assert_eq!(Geometry::new(0), Err(FormatError::ChunkSizeZero));
        assert_eq!(
            Geometry::new(24),
            Err(FormatError::ChunkSizeNotPowerOfTwo { sectors: 24 })
        );
        assert!(Geometry::new(1 << 12).is_err());
        assert!(Geometry::new(1 << 11).is_ok());
        assert_eq!(
            Geometry::from_bytes(1000),
            Err(FormatError::ChunkSizeNotSectors { bytes: 1000 })
        );
        assert_eq!(Geometry::from_bytes(32 << 10).unwrap().chunk_sectors(), 64);
    }
}
