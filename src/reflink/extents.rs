//! What a file shares: FIEMAP lists a file's extents, and btrfs and xfs flag those another
//! file shares too. A reflink PC's fill is the bytes of its disk no longer shared with its
//! version's disk; a version's cost on disk is what it does not share with its parent.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::ReflinkError;

/// A file's allocated bytes, split by whether another file shares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    /// Bytes only this file holds (written since it was cloned, or never shared).
    pub private: u64,
    /// Bytes it shares with another file (its source, another clone).
    pub shared: u64,
}

/// [`sharing_of`] the file at `path`.
pub fn sharing(path: &Path) -> Result<Sharing, ReflinkError> {
    sharing_at(path, 0)
}

/// [`sharing`] after the file's dirty pages are written: what a PC wrote through the
/// kernel's page cache (a loop device) counts at once.
pub fn sharing_synced(path: &Path) -> Result<Sharing, ReflinkError> {
    sharing_at(path, FLAG_SYNC)
}

fn sharing_at(path: &Path, flags: u32) -> Result<Sharing, ReflinkError> {
    let err = |source: io::Error| ReflinkError::Extents {
        path: path.to_path_buf(),
        source,
    };
    counted(&File::open(path).map_err(err)?, flags).map_err(err)
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
/// FIEMAP_FLAG_SYNC: write the file's dirty pages before mapping it.
const FLAG_SYNC: u32 = 0x1;
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

/// How `file`'s allocated bytes are shared (holes count as neither). The extents are read
/// as the file system has them now, without flushing dirty pages first.
pub fn sharing_of(file: &File) -> io::Result<Sharing> {
    counted(file, 0)
}

fn counted(file: &File, flags: u32) -> io::Result<Sharing> {
    let mut out = Sharing::default();
    each_extent(file, flags, |_, length, shared| {
        if shared {
            out.shared += length;
        } else {
            out.private += length;
        }
    })?;
    Ok(out)
}

/// The (offset, length) ranges of `file` that only it holds: written since it was cloned,
/// or never shared. Dirty pages are written first (FIEMAP_FLAG_SYNC), so a write still in
/// the page cache counts as what it will be.
pub fn private_ranges(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    each_extent(file, FLAG_SYNC, |logical, length, shared| {
        if !shared {
            out.push((logical, length));
        }
    })?;
    Ok(out)
}

/// Calls `f(logical, length, shared)` for each of `file`'s extents, in order.
fn each_extent(file: &File, flags: u32, mut f: impl FnMut(u64, u64, bool)) -> io::Result<()> {
    let mut req = Box::new(Request {
        header: FiemapHeader::default(),
        extents: [FiemapExtent::default(); PER_CALL],
    });
    let mut start = 0u64;
    loop {
        req.header = FiemapHeader {
            start,
            length: u64::MAX - start,
            flags,
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
            return Ok(());
        };
        for e in &req.extents[..n] {
            f(e.logical, e.length, e.flags & EXTENT_SHARED != 0);
        }
        let next = last.logical.saturating_add(last.length);
        if last.flags & EXTENT_LAST != 0 || next <= start {
            return Ok(());
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
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        let s = sharing(&p).unwrap();
        assert_eq!(s.shared, 0);
        assert!(s.private >= 1 << 20, "{s:?}");
        assert!(matches!(
            sharing(&d.path().join("missing")),
            Err(ReflinkError::Extents { .. })
        ));
    }
}
