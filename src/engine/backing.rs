//! Where the engine's bytes live: a file or block device, or memory in tests.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::cow::ReadAt;

/// Positional I/O with explicit durability, the only operations the engine needs.
pub trait Backing: ReadAt + Send + Sync {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes a range read as zeros, freeing its blocks where the storage can.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?];
        self.write_all_at(&zeroes, offset)
    }
    /// Takes the space for a range now, so that writing it later cannot fail for want of
    /// room (ENOSPC comes here instead). Storage that is all there already does nothing.
    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Makes the storage `len` bytes long (only ever longer): the COW grows.
    fn grow(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this storage cannot grow",
        ))
    }
    /// Copies `len` bytes of `src` at `src_offset` to `offset` without passing them
    /// through this process, where both are files the kernel can copy between; Ok(false)
    /// where they are not, and the caller copies them itself.
    fn copy_from(
        &self,
        src: &dyn ReadAt,
        src_offset: u64,
        offset: u64,
        len: usize,
    ) -> io::Result<bool> {
        let _ = (src, src_offset, offset, len);
        Ok(false)
    }
}

/// A shared handle is the storage it points to: a caller (a test, a crash model) keeps one
/// while the engine owns another.
impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        (**self).fd()
    }
}

impl<T: Backing + ?Sized> Backing for std::sync::Arc<T> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).reserve(offset, len)
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        (**self).grow(len)
    }
    fn copy_from(
        &self,
        src: &dyn ReadAt,
        src_offset: u64,
        offset: u64,
        len: usize,
    ) -> io::Result<bool> {
        (**self).copy_from(src, src_offset, offset, len)
    }
}

pub use crate::base::fileid::file_or_device_size;

/// A file (or block device) with its path, so errors can name it.
#[derive(Debug)]
pub struct FileBacking {
    file: File,
    path: PathBuf,
    /// Cleared the first time the kernel refuses to copy into this file (another file
    /// system, a block device), so later copies do not ask again.
    kernel_copies: AtomicBool,
}

impl FileBacking {
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)?;
        Ok(FileBacking {
            file,
            path: path.to_path_buf(),
            kernel_copies: AtomicBool::new(true),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// An exclusive advisory lock so two cowctl processes never drive one COW at once.
    pub fn lock_exclusive(&self) -> io::Result<()> {
        self.file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            std::fs::TryLockError::Error(e) => e,
        })
    }
}

impl ReadAt for FileBacking {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        file_or_device_size(&self.file)
    }

    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(&self.file))
    }
}

impl Backing for FileBacking {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        let meta = self.file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block device cannot be grown from here",
            ));
        }
        if len > meta.len() {
            self.file.set_len(len)?;
        }
        Ok(())
    }

    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        match fallocate(fd, FallocateFlags::FALLOC_FL_KEEP_SIZE, o, l) {
            Ok(()) => Ok(()),
            // Block devices and file systems without fallocate have their space already,
            // or can only say so when written.
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENODEV) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(std::os::fd::AsRawFd::as_raw_fd(&self.file), punch, o, l) {
            Ok(()) => Ok(()),
            // Block devices and some file systems cannot punch: write the zeros.
            Err(_) => {
                let zeroes =
                    vec![0u8; usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?];
                self.write_all_at(&zeroes, offset)
            }
        }
    }

    /// copy_file_range: one copy from page cache to page cache instead of a read and a
    /// write through a buffer; a file system that shares blocks (XFS with reflink, btrfs)
    /// may clone them instead, when the golden image and the COW are on it.
    fn copy_from(
        &self,
        src: &dyn ReadAt,
        src_offset: u64,
        offset: u64,
        len: usize,
    ) -> io::Result<bool> {
        use nix::errno::Errno;
        let Some(src_fd) = src.fd() else {
            return Ok(false);
        };
        if !self.kernel_copies.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (Ok(mut from), Ok(mut to)) = (i64::try_from(src_offset), i64::try_from(offset)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let mut left = len;
        while left > 0 {
            match nix::fcntl::copy_file_range(
                src_fd,
                Some(&mut from),
                &self.file,
                Some(&mut to),
                left,
            ) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => left -= n,
                Err(Errno::EINTR) => {}
                // What this pair of files cannot do: the caller copies (again, from the
                // start: rewriting what was copied already is harmless).
                Err(Errno::EXDEV | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                    self.kernel_copies.store(false, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

/// One recorded operation on a [`MemBacking`].
#[derive(Debug, Clone)]
pub enum MemOp {
    Write { offset: u64, data: Vec<u8> },
    Sync,
}

/// A fixed-size in-memory device that records every write and sync, so tests can
/// rebuild what a crash at any point would have left on disk.
#[derive(Debug)]
pub struct MemBacking {
    inner: Mutex<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    bytes: Vec<u8>,
    log: Vec<MemOp>,
}

impl MemBacking {
    pub fn new(bytes: Vec<u8>) -> Self {
        MemBacking {
            inner: Mutex::new(MemInner {
                bytes,
                log: Vec::new(),
            }),
        }
    }

    pub fn zeroed(len: usize) -> Self {
        Self::new(vec![0; len])
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    pub fn log(&self) -> Vec<MemOp> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadAt for MemBacking {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().bytes.as_slice().read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.lock().bytes.len() as u64)
    }
}

impl Backing for MemBacking {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + buf.len();
        if end > inner.bytes.len() {
            // A block device does not grow: writing past its end is an I/O error.
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        inner.bytes[start..end].copy_from_slice(buf);
        inner.log.push(MemOp::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.lock().log.push(MemOp::Sync);
        Ok(())
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut inner = self.lock();
        if len > inner.bytes.len() {
            inner.bytes.resize(len, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_file_copies_from_a_file_in_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let golden: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        let src = FileBacking::open(&file_with(dir.path(), "g", &golden), false).unwrap();
        let dst = FileBacking::open(&file_with(dir.path(), "c", &[0xee; 4 * 4096]), true).unwrap();
        assert!(dst.copy_from(&src, 4096 + 100, 3 * 4096 + 7, 5000).unwrap());
        let out = std::fs::read(dst.path()).unwrap();
        assert_eq!(&out[3 * 4096 + 7..][..5000], &golden[4096 + 100..][..5000]);
        assert!(
            out[..3 * 4096 + 7].iter().all(|&b| b == 0xee),
            "nothing else is touched"
        );
    }

    #[test]
    fn a_copy_past_the_end_of_the_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = FileBacking::open(&file_with(dir.path(), "g", &[1; 4096]), false).unwrap();
        let dst = FileBacking::open(&file_with(dir.path(), "c", &[0; 8192]), true).unwrap();
        let e = dst.copy_from(&src, 2048, 0, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn without_a_file_behind_the_source_the_caller_copies() {
        let dir = tempfile::tempdir().unwrap();
        let dst = FileBacking::open(&file_with(dir.path(), "c", &[0; 8192]), true).unwrap();
        let src = MemBacking::new(vec![9; 4096]);
        assert!(!dst.copy_from(&src, 0, 0, 4096).unwrap());
        assert!(!MemBacking::zeroed(8192)
            .copy_from(&src, 0, 0, 4096)
            .unwrap());
        assert_eq!(std::fs::read(dst.path()).unwrap(), vec![0; 8192]);
    }
}
