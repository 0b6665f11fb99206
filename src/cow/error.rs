//! Everything that can be wrong with a COW file, each naming what and where.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {what} at byte {offset}: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("file is {len} bytes, shorter than the {needed}-byte header chunk")]
    ShortHeader { len: u64, needed: u64 },
    #[error("bad magic 0x{found:08x} in the header (expected 0x70416e53 \"SnAp\", or 0 for a new snapshot); the kernel rejects this as \"Invalid or corrupt snapshot\"")]
    BadMagic { found: u32 },
    #[error("unsupported on-disk version {version} in the header (only version 1 exists)")]
    UnsupportedVersion { version: u32 },
    #[error("chunk size is 0 sectors")]
    ChunkSizeZero,
    #[error("chunk size of {sectors} sectors is not a power of two")]
    ChunkSizeNotPowerOfTwo { sectors: u32 },
    #[error(
        "chunk size of {sectors} sectors is too large (cowctl takes at most 2048 sectors, 1 MiB)"
    )]
    ChunkSizeTooLarge { sectors: u32 },
    #[error("chunk size of {bytes} bytes is not a whole number of 512-byte sectors")]
    ChunkSizeNotSectors { bytes: u64 },
    #[error("metadata area {area} at byte {offset} needs {needed} bytes but the file ends at byte {len} (truncated area)")]
    TruncatedArea {
        area: u64,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("exception {index} of area {area} (byte {offset}) maps origin chunk {old_chunk} to COW chunk {new_chunk}, past the end of the file ({cow_chunks} whole chunks)")]
    NewChunkPastEnd {
        area: u64,
        index: u64,
        offset: u64,
        old_chunk: u64,
        new_chunk: u64,
        cow_chunks: u64,
    },
    #[error("exception {index} of area {area} (byte {offset}) maps origin chunk {old_chunk} to COW chunk {new_chunk}, which is a metadata chunk")]
    NewChunkOnMetadata {
        area: u64,
        index: u64,
        offset: u64,
        old_chunk: u64,
        new_chunk: u64,
    },
    #[error("exception {index} of area {area} (byte {offset}) maps origin chunk {old_chunk} a second time (to COW chunk {new_chunk}; already mapped to {first_new_chunk})")]
    DuplicateOldChunk {
        area: u64,
        index: u64,
        offset: u64,
        old_chunk: u64,
        new_chunk: u64,
        first_new_chunk: u64,
    },
    #[error("exception {index} of area {area} (byte {offset}) maps COW chunk {new_chunk} a second time (origin chunks {first_old_chunk} and {old_chunk})")]
    DuplicateNewChunk {
        area: u64,
        index: u64,
        offset: u64,
        old_chunk: u64,
        new_chunk: u64,
        first_old_chunk: u64,
    },
    #[error("COW of {len} bytes is too small: a {chunk_bytes}-byte chunk size needs at least {needed} bytes (header, first area, one data chunk)")]
    TooSmall {
        len: u64,
        chunk_bytes: u64,
        needed: u64,
    },
}

impl PartialEq for FormatError {
    /// Errors compare by kind and fields; I/O errors compare by kind only.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FormatError::Io { source: a, .. }, FormatError::Io { source: b, .. }) => {
                a.kind() == b.kind()
            }
            _ => self.to_string() == other.to_string(),
        }
    }
}
