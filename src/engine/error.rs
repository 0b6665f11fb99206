use std::io;

use crate::cow::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{what} at byte {offset} failed: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("snapshot overflowed: the COW has no free chunk left, so writes fail while reads keep working (grow the COW and reopen it, or reset it)")]
    Overflow,
    #[error("the PC's disk holds its quota of {bytes} bytes of its own: writes to blocks it still shares with its image fail (raise cow_size, or reset it)")]
    Quota { bytes: u64 },
    #[error("snapshot is invalid (it overflowed without the O option, or an I/O error hit its COW); it cannot be recovered, only reset")]
    Invalid,
    #[error("{len} bytes at byte {offset} reach past the end of the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the disk is open read-only")]
    ReadOnly,
    #[error("the COW maps origin chunk {old_chunk}, but the golden image has only {origin_chunks} chunks: it was made against a larger image")]
    OldChunkPastOrigin { old_chunk: u64, origin_chunks: u64 },
}

impl EngineError {
    pub(crate) fn io(what: &'static str, offset: u64) -> impl FnOnce(io::Error) -> EngineError {
        move |source| EngineError::Io {
            what,
            offset,
            source,
        }
    }
}
