//! A new version's disk: its parent's disk with a COW's chunks laid over it. Where the file
//! system can share blocks (btrfs, xfs: FICLONE and `copy_file_range` remap extents) only
//! the metadata is written, so the time does not grow with the image; elsewhere the parent
//! is copied extent by extent (holes stay holes) inside the kernel, then the changed chunks.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{CopyError, Error};
use serde::Serialize;

use crate::cow::{HeaderState, LoadedStore};

type Result<T, E = Error> = std::result::Result<T, E>;

/// How the parent's blocks got into the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// One clone of the whole file (shared blocks).
    Reflink,
    /// The parent's data extents copied (holes kept).
    SparseCopy,
    /// An rbd PC's clone became the version itself (nothing copied).
    RbdClone,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Built {
    pub method: Method,
    /// Chunks taken from the COW, and their bytes.
    pub chunks: u64,
    pub changed_bytes: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Makes `out` (a new file) hold `parent` with the chunks of `cow` laid over it, synced.
pub fn build(parent: &Path, cow: &Path, out: &Path) -> Result<Built> {
    let start = Instant::now();
    let src = File::open(parent).map_err(|source| Error::Open {
        path: parent.to_path_buf(),
        source,
    })?;
    let size = crate::engine::backing::file_or_device_size(&src)?;
    let cow_file = File::open(cow).map_err(|source| Error::Open {
        path: cow.to_path_buf(),
        source,
    })?;
    let store = LoadedStore::load(&cow_file, None).map_err(|source| Error::LoadCow {
        cow: cow.to_path_buf(),
        source,
    })?;
    if store.state == HeaderState::Invalid {
        return Err(Error::InvalidCow {
            cow: cow.to_path_buf(),
        });
    }
    let dst = new_version_file(out)?;
    let chunk = store.geometry.chunk_bytes();
    let mut runs: Vec<(u64, u64)> = store.exceptions.iter().map(|(&o, &c)| (o, c)).collect();
    // In the COW's order: concurrent writers interleave their chunks there, and reading the
    // COW front to back keeps its readahead going (the new file's page cache takes any order).
    runs.sort_unstable_by_key(|&(o, c)| (c, o));
    let method = if clone_file(&src, &dst).is_ok() {
        Method::Reflink
    } else {
        // The parent's bytes under the COW's chunks would only be overwritten: skip them.
        let mut covered: Vec<(u64, u64)> = runs
            .iter()
            .map(|&(o, _)| (o * chunk, (o * chunk + chunk).min(size)))
            .filter(|(a, b)| a < b)
            .collect();
        covered.sort_unstable();
        copy_extents(&src, &dst, size, &covered).map_err(|source| Error::CopyParent {
            from: parent.to_path_buf(),
            to: out.to_path_buf(),
            source,
        })?;
        Method::SparseCopy
    };
    dst.set_len(size)?;
    let changed = lay_chunks(&runs, chunk, size, (&cow_file, cow), (&dst, out))?;
    dst.sync_all().map_err(|source| Error::Flush {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Built {
        method,
        chunks: runs.len() as u64,
        changed_bytes: changed,
        elapsed: start.elapsed(),
    })
}

/// Makes `out` (a new file) hold a reflink PC's disk as it is, synced: one clone where the
/// file system can (the version then shares every block with the PC's disk), else a copy
/// of its data extents. `changed` is what the disk no longer shares with its version.
pub fn build_from_clone(disk: &Path, out: &Path, changed: u64) -> Result<Built> {
    let start = Instant::now();
    let src = File::open(disk).map_err(|source| Error::Open {
        path: disk.to_path_buf(),
        source,
    })?;
    let size = crate::engine::backing::file_or_device_size(&src)?;
    let dst = new_version_file(out)?;
    let method = if clone_file(&src, &dst).is_ok() {
        Method::Reflink
    } else {
        copy_extents(&src, &dst, size, &[]).map_err(|source| Error::CopyParent {
            from: disk.to_path_buf(),
            to: out.to_path_buf(),
            source,
        })?;
        dst.set_len(size)?;
        Method::SparseCopy
    };
    dst.sync_all().map_err(|source| Error::Flush {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Built {
        method,
        chunks: 0,
        changed_bytes: changed,
        elapsed: start.elapsed(),
    })
}

/// A version's new disk file: made new (never over a file), never through a symlink.
fn new_version_file(out: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(out)
        .map_err(|source| Error::Create {
            path: out.to_path_buf(),
            source,
        })
}

/// Copies the COW's chunks (`runs` of origin chunk, COW chunk) over the parent's bytes in
/// `dst`; the bytes they changed.
fn lay_chunks(
    runs: &[(u64, u64)],
    chunk: u64,
    size: u64,
    (cow_file, cow): (&File, &Path),
    (dst, out): (&File, &Path),
) -> Result<u64> {
    let mut changed = 0u64;
    let mut i = 0;
    while i < runs.len() {
        // Chunks next to each other in both files go in one call.
        let (o, c) = runs[i];
        let mut n = 1;
        while i + n < runs.len() && runs[i + n] == (o + n as u64, c + n as u64) {
            n += 1;
        }
        let at = o * chunk;
        if at < size {
            let len = (n as u64 * chunk).min(size - at);
            copy_range(cow_file, c * chunk, dst, at, len).map_err(|source| Error::CopyChunks {
                first: o,
                end: o + n as u64,
                cow: cow.to_path_buf(),
                out: out.to_path_buf(),
                source,
            })?;
            changed += len;
        }
        i += n;
    }
    Ok(changed)
}

/// A copy of `src` in its data extents only (holes stay holes), inside the kernel, leaving
/// out the byte ranges `skip` (sorted `[start, end)`).
pub fn copy_extents(
    src: &File,
    dst: &File,
    size: u64,
    skip: &[(u64, u64)],
) -> Result<(), CopyError> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = src.as_raw_fd();
    let mut pos = 0i64;
    let end = i64::try_from(size)?;
    while pos < end {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(_) => pos,                          // no SEEK_DATA: copy everything
        };
        let hole = lseek(fd, data, Whence::SeekHole).unwrap_or(end).min(end);
        let (from, to) = (u64::try_from(data)?, u64::try_from(hole)?);
        copy_except(src, dst, from, to, skip)?;
        pos = hole;
    }
    Ok(())
}

/// `[from, to)` of `src` into `dst` at the same place, but for the ranges in `skip`.
fn copy_except(
    src: &File,
    dst: &File,
    from: u64,
    to: u64,
    skip: &[(u64, u64)],
) -> Result<(), CopyError> {
    let first = skip.partition_point(|&(_, end)| end <= from);
    let mut at = from;
    for &(a, b) in skip[first..].iter().take_while(|&&(a, _)| a < to) {
        if a > at {
            copy_range(src, at, dst, at, a - at)?;
        }
        at = at.max(b);
    }
    if at < to {
        copy_range(src, at, dst, at, to - at)?;
    }
    Ok(())
}

/// `len` bytes of `src` at `from` to `dst` at `to`, by `copy_file_range` (which remaps
/// blocks where the file system shares them), by reads and writes where it cannot.
fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> Result<(), CopyError> {
    let (mut from_i, mut to_i) = (i64::try_from(from)?, i64::try_from(to)?);
    let mut left = usize::try_from(len)?;
    while left > 0 {
        let at = to_i;
        match nix::fcntl::copy_file_range(
            src.as_fd(),
            Some(&mut from_i),
            dst.as_fd(),
            Some(&mut to_i),
            left.min(STEP),
        ) {
            Ok(0) => return Err(CopyError::SourceEnded { left }),
            Ok(n) => {
                left -= n;
                start_writeback(dst, at, n);
            }
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::EOPNOTSUPP,
            ) => {
                return copy_by_buffer(src, u64::try_from(from_i)?, dst, u64::try_from(to_i)?, left)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes per `copy_file_range` call: where the kernel copies through the page cache,
/// steps of this size, each written back while the next is copied, beat one large call
/// followed by one long fsync.
const STEP: usize = 8 << 20;

/// Starts writing `len` bytes at `at` back to disk without waiting for them.
fn start_writeback(f: &File, at: i64, len: usize) {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    // SAFETY: a plain syscall on an open descriptor; a failure only loses the head start.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn copy_by_buffer(
    src: &File,
    mut from: u64,
    dst: &File,
    mut to: u64,
    mut left: usize,
) -> Result<(), CopyError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (1 << 20).min(left)];
    while left > 0 {
        let n = left.min(buf.len());
        src.read_exact_at(&mut buf[..n], from)?;
        dst.write_all_at(&buf[..n], to)?;
        start_writeback(dst, i64::try_from(to)?, n);
        (from, to, left) = (from + n as u64, to + n as u64, left - n);
    }
    Ok(())
}

/// FICLONE: `dst` shares all of `src`'s blocks.
fn clone_file(src: &File, dst: &File) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    nix::errno::Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineOptions};

    #[test]
    fn the_new_disk_is_the_parent_with_the_cow_over_it() {
        let d = tempfile::tempdir().unwrap();
        let (parent, cow, out) = (d.path().join("p"), d.path().join("c"), d.path().join("o"));
        // A parent with a hole in the middle and an odd tail.
        let size = 3 * 65536 + 4096;
        let mut golden = vec![0u8; size];
        golden[..65536].fill(1);
        golden[2 * 65536..].fill(2);
        std::fs::write(&parent, &golden).unwrap();
        crate::cowfile::create_empty(&cow, 1 << 20).unwrap();
        let opts = EngineOptions {
            table_chunk_sectors: Some(8),
            ..EngineOptions::default()
        };
        let e = crate::cowfile::open_engine_with(&parent, &cow, opts).unwrap();
        let mut want = golden.clone();
        for (at, len, b) in [
            (4096usize, 100usize, 9u8),
            (65536 + 8192, 4096, 8),
            (size - 10, 10, 7),
        ] {
            e.write_at(&vec![b; len], at as u64).unwrap();
            want[at..at + len].fill(b);
        }
        e.flush().unwrap();
        drop::<Engine>(e);
        let built = build(&parent, &cow, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), want);
        assert_eq!(built.chunks, 3);
        assert_eq!(built.changed_bytes, 3 * 4096);
        assert!(
            matches!(
                build(&parent, &cow, &out),
                Err(Error::Create { path, .. }) if path == out
            ),
            "never over an existing file"
        );
    }

    #[test]
    fn a_copy_leaves_out_exactly_the_skipped_ranges() {
        let d = tempfile::tempdir().unwrap();
        let src: Vec<u8> = (0..100u8).collect();
        std::fs::write(d.path().join("s"), &src).unwrap();
        let s = File::open(d.path().join("s")).unwrap();
        let cases: [&[(u64, u64)]; 4] = [
            &[],
            &[(0, 10)],
            &[(5, 10), (10, 20), (90, 200)],
            &[(0, 100)],
        ];
        for (n, skip) in cases.iter().enumerate() {
            let out = d.path().join(format!("o{n}"));
            let o = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&out)
                .unwrap();
            o.set_len(100).unwrap();
            copy_except(&s, &o, 0, 100, skip).unwrap();
            let want: Vec<u8> = (0..100u8)
                .map(|i| {
                    let at = u64::from(i);
                    if skip.iter().any(|&(a, b)| a <= at && at < b) {
                        0
                    } else {
                        i
                    }
                })
                .collect();
            assert_eq!(std::fs::read(&out).unwrap(), want, "{skip:?}");
        }
    }
}
