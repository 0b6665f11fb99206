//! What a version's disk costs on disk: its allocated bytes, and how many of them it shares
//! with other files (a commit on btrfs or xfs clones its parent's blocks), read with the
//! kernel's FIEMAP. Where a file system has no FIEMAP (tmpfs), nothing is shared.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Space {
    /// Blocks the file has allocated, in bytes.
    pub allocated: u64,
    /// Of those, bytes in extents the file shares with other files (reflinks).
    pub shared: u64,
}

/// The space `path` takes; zero for a file that cannot be read.
pub fn of(path: &Path) -> Space {
    let Ok(file) = File::open(path) else {
        return Space::default();
    };
    let allocated = file.metadata().map_or(0, |m| m.blocks() * 512);
    Space {
        allocated,
        shared: shared_bytes(&file).unwrap_or(0).min(allocated),
    }
}

/// `struct fiemap` of linux/fiemap.h: the request and answer header.
#[repr(C)]
#[derive(Default)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

const EXTENT_LAST: u32 = 0x1;
const EXTENT_SHARED: u32 = 0x2000;
/// Extents asked for per call: a fragmented file takes several calls, never a big buffer.
const PER_CALL: usize = 256;

#[repr(C)]
struct Request {
    header: FiemapHeader,
    extents: [FiemapExtent; PER_CALL],
}

// FS_IOC_FIEMAP is _IOWR('f', 11, struct fiemap).
nix::ioctl_readwrite!(fs_ioc_fiemap, b'f', 11, FiemapHeader);

/// Bytes of `file` in extents its file system marks shared.
fn shared_bytes(file: &File) -> io::Result<u64> {
    let mut req = Box::new(Request {
        header: FiemapHeader::default(),
        extents: [FiemapExtent::default(); PER_CALL],
    });
    let mut shared = 0u64;
    let mut start = 0u64;
    loop {
        req.header = FiemapHeader {
            start,
            length: u64::MAX - start,
            extent_count: u32::try_from(PER_CALL).expect("a small count"),
            ..FiemapHeader::default()
        };
        // SAFETY: the header is followed by PER_CALL extents in one repr(C) allocation, as
        // extent_count tells the kernel; it writes no further.
        unsafe { fs_ioc_fiemap(file.as_raw_fd(), &raw mut req.header) }.map_err(io::Error::from)?;
        let n = usize::try_from(req.header.mapped_extents)
            .unwrap_or(0)
            .min(PER_CALL);
        let Some(last) = req.extents[..n].last().copied() else {
            return Ok(shared);
        };
        shared += req.extents[..n]
            .iter()
            .filter(|e| e.flags & EXTENT_SHARED != 0)
            .map(|e| e.length)
            .sum::<u64>();
        let next = last.logical.saturating_add(last.length);
        if last.flags & EXTENT_LAST != 0 || next <= start {
            return Ok(shared);
        }
        start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_structs_have_their_c_sizes() {
        assert_eq!(std::mem::size_of::<FiemapHeader>(), 32);
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
        assert_eq!(
            std::mem::size_of::<Request>(),
            32 + 56 * PER_CALL,
            "the extents follow the header with no padding"
        );
    }

    #[test]
    fn a_file_of_its_own_shares_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let s = of(&p);
        assert_eq!(s.shared, 0);
        assert!(s.allocated >= 1 << 20, "{s:?}");
        assert_eq!(of(&d.path().join("missing")), Space::default());
    }
}
