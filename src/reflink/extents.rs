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

/// Extent flags that leave a range's data somewhere else than its physical address says
/// (unknown, delayed allocation, not yet written, inline, encrypted, not aligned): such a
/// range is never taken for the image's.
const NOT_PLAIN: u32 = 0x2 | 0x4 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800;

/// One mapped range of a file: logical start, physical start, length; `plain` unless a
/// [`NOT_PLAIN`] flag is set.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    logical: u64,
    physical: u64,
    length: u64,
    plain: bool,
}

fn mapping(file: &File, flags: u32) -> io::Result<Vec<Mapped>> {
    let mut out = Vec::new();
    each_raw(file, flags, |e| {
        out.push(Mapped {
            logical: e.logical,
            physical: e.physical,
            length: e.length,
            plain: e.flags & NOT_PLAIN == 0,
        })
    })?;
    Ok(out)
}

/// The ranges (offset, length) of whole `block`s over the first `size` bytes where `clone`
/// still is `image`: both map them to the same physical blocks at the same offsets, or both
/// have a hole there. Nothing else is taken for the image's: a range the clone shares with
/// some other file (a version committed from it) is its own, as is one it punched out.
/// The clone's dirty pages are written first, so a write in the page cache counts.
pub fn same_as(clone: &File, image: &File, size: u64, block: u64) -> io::Result<Vec<(u64, u64)>> {
    let (c, i) = (mapping(clone, FLAG_SYNC)?, mapping(image, 0)?);
    let mut cuts: Vec<u64> = vec![0, size];
    for m in c.iter().chain(&i) {
        cuts.extend([
            m.logical.min(size),
            m.logical.saturating_add(m.length).min(size),
        ]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let at = |list: &[Mapped], p: u64| {
        let k = list.partition_point(|m| m.logical.saturating_add(m.length) <= p);
        list.get(k).filter(|m| m.logical <= p).copied()
    };
    let mut same: Vec<(u64, u64)> = Vec::new();
    for w in cuts.windows(2) {
        let (p, q) = (w[0], w[1]);
        let equal = match (at(&c, p), at(&i, p)) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.plain && b.plain && a.physical + (p - a.logical) == b.physical + (p - b.logical)
            }
            _ => false,
        };
        if !equal {
            continue;
        }
        match same.last_mut() {
            Some(last) if last.0 + last.1 == p => last.1 += q - p,
            _ => same.push((p, q - p)),
        }
    }
    // Only whole blocks: a block the clone changed in part is its own.
    Ok(same
        .into_iter()
        .filter_map(|(o, l)| {
            let (a, b) = (o.div_ceil(block) * block, (o + l) / block * block);
            (a < b).then_some((a, b - a))
        })
        .collect())
}

/// What a clone holds of its own against its image: its size less [`same_as`].
pub fn own_bytes(clone: &Path, image: &Path) -> Result<u64, ReflinkError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| ReflinkError::Extents {
            path: path.to_path_buf(),
            source,
        })
    };
    let (c, i) = (open(clone)?, open(image)?);
    let err = |source: io::Error| ReflinkError::Extents {
        path: clone.to_path_buf(),
        source,
    };
    let size = c.metadata().map_err(err)?.len();
    let same: u64 = same_as(&c, &i, size, 4096)
        .map_err(err)?
        .iter()
        .map(|r| r.1)
        .sum();
    Ok(size.div_ceil(4096) * 4096 - same)
}

/// Calls `f(logical, length, shared)` for each of `file`'s extents, in order.
fn each_extent(file: &File, flags: u32, mut f: impl FnMut(u64, u64, bool)) -> io::Result<()> {
    each_raw(file, flags, |e| {
        f(e.logical, e.length, e.flags & EXTENT_SHARED != 0)
    })
}

/// Calls `f` with each of `file`'s extents as FIEMAP gives them, in order.
fn each_raw(file: &File, flags: u32, mut f: impl FnMut(&FiemapExtent)) -> io::Result<()> {
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
            f(e);
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
