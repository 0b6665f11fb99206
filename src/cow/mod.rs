//! The dm-snapshot persistent exception store, byte for byte as the kernel's
//! `drivers/md/dm-snap-persistent.c` reads and writes it. Pure: no kernel needed.
//!
//! Layout of a COW file, in chunks of `chunk_size` sectors:
//! chunk 0 is the header; area `a` (a metadata chunk of 16-byte exception entries)
//! sits at `1 + (exceptions_per_area + 1) * a` and is followed by
//! `exceptions_per_area` data chunks.

mod error;
mod format;
mod store;
mod usage;

pub use error::FormatError;
pub use format::{
    DiskException, Geometry, Header, HeaderState, DEFAULT_CHUNK_SECTORS, DISK_EXCEPTION_SIZE,
    HEADER_SIZE, MAX_CHUNK_SECTORS, SNAPSHOT_DISK_VERSION, SNAP_MAGIC,
};
pub use store::{LoadedStore, ReadAt};
pub use usage::{OverflowPolicy, Usage};
