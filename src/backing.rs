//! Where the engine's bytes live: a file or block device, or memory in tests.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
    /// Makes the storage `len` bytes long (only ever longer): the COW grows.
    fn grow(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this storage cannot grow",
        ))
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
    fn grow(&self, len: u64) -> io::Result<()> {
        (**self).grow(len)
    }
}

/// Size of a regular file or a block device (whose metadata length is 0).
pub fn file_or_device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok(meta.len())
    } else {
        let mut handle = file;
        handle.seek(SeekFrom::End(0))
    }
}

/// A file (or block device) with its path, so errors can name it.
#[derive(Debug)]
pub struct FileBacking {
    file: File,
    path: PathBuf,
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
