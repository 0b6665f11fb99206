//! What the transmission phase serves (a `Device`) and where its replies go (a `Sink`).

use std::io::{self, Write};
use std::os::fd::BorrowedFd;

use super::wire::Errno;
use crate::engine::Extent;

/// Where replies go. A socket sends file bytes with sendfile (one copy, in the kernel);
/// anything else reads them into memory and writes them.
pub trait Sink: Write {
    /// A reply header followed by file bytes, as one stream.
    fn send_reply_from_files(&mut self, header: &[u8], extents: &[Extent<'_>]) -> io::Result<()> {
        self.write_all(header)?;
        for e in extents {
            self.send_file(e.fd, e.offset, e.len)?;
        }
        Ok(())
    }

    fn send_file(&mut self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<()> {
        let mut buf = vec![0u8; len.min(1 << 20)];
        let (mut offset, mut left) = (offset, len);
        while left > 0 {
            let n = left.min(buf.len());
            let got = nix::sys::uio::pread(
                fd,
                &mut buf[..n],
                i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?,
            )?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.write_all(&buf[..got])?;
            offset += got as u64;
            left -= got;
        }
        Ok(())
    }
}

impl Sink for Vec<u8> {}

/// The block device behind an export. Offsets and lengths are already checked.
pub trait Device {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno>;
    /// Where a read's bytes lie in files, so large reads can go out with sendfile; None
    /// when the device has no files (then `read_at` serves).
    fn extents(&self, _offset: u64, _len: usize) -> Option<Result<Vec<Extent<'_>>, Errno>> {
        None
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno>;
    fn flush(&self) -> Result<(), Errno>;
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno>;
    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), Errno>;
    /// Whether each request waits on the network, so several in flight go faster.
    fn parallel(&self) -> bool {
        false
    }
    /// Starts a read that answers `done` on another thread, when the device can without
    /// a thread waiting for it (an rbd clone); else gives `done` back, not called.
    fn start_read(&self, _offset: u64, _len: usize, done: ReadDone) -> Option<ReadDone> {
        Some(done)
    }
    /// [`Device::start_read`] for a write; gives `data` and `done` back when it cannot.
    fn start_write(
        &self,
        _offset: u64,
        data: Vec<u8>,
        done: WriteDone,
    ) -> Option<(Vec<u8>, WriteDone)> {
        Some((data, done))
    }
}

pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>, Errno>) + Send>;
pub type WriteDone = Box<dyn FnOnce(Result<(), Errno>) + Send>;
