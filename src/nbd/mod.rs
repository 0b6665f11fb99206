//! An NBD server for the userspace engine: the fixed newstyle handshake with NBD_OPT_GO /
//! NBD_OPT_INFO and block sizes, and a transmission phase with FLUSH, FUA, TRIM and
//! WRITE_ZEROES. Pure protocol over `Read + Write`, so it is fuzzed in memory; sockets and
//! exports live in `crate::service`.

pub mod device;
pub mod handshake;
pub mod inflight;
pub mod transmission;
pub mod wire;

use std::io;

pub use handshake::{handshake, ExportInfo, Exports, Outcome};
pub use transmission::{serve, serve_until, Device, End, SharedDevice, Sink, Wake};
pub use wire::Errno;

use crate::engine::{Engine, EngineError, PcDisk};

/// The errno a client sees for an engine error.
pub fn errno(e: &EngineError) -> Errno {
    match e {
        // A full COW is a full disk; the PC's file system copes with ENOSPC.
        EngineError::Overflow | EngineError::Quota { .. } => Errno::NoSpc,
        EngineError::ReadOnly => Errno::Perm,
        EngineError::OutOfRange { .. } => Errno::Inval,
        EngineError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
            Errno::NoSpc
        }
        _ => Errno::Io,
    }
}

impl Device for Engine {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
        Engine::read_at(self, buf, offset).map_err(|e| errno(&e))
    }

    fn extents(
        &self,
        offset: u64,
        len: usize,
    ) -> Option<Result<Vec<crate::engine::Extent<'_>>, Errno>> {
        Engine::extents(self, offset, len).map(|r| r.map_err(|e| errno(&e)))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno> {
        Engine::write_at(self, buf, offset).map_err(|e| errno(&e))
    }

    fn flush(&self) -> Result<(), Errno> {
        Engine::flush(self).map_err(|e| errno(&e))
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        Engine::trim(self, offset, len).map_err(|e| errno(&e))
    }

    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), Errno> {
        Engine::write_zeroes(self, offset, len, no_hole).map_err(|e| errno(&e))
    }
}

impl Device for PcDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
        PcDisk::read_at(self, buf, offset).map_err(|e| errno(&e))
    }

    fn extents(
        &self,
        offset: u64,
        len: usize,
    ) -> Option<Result<Vec<crate::engine::Extent<'_>>, Errno>> {
        PcDisk::extents(self, offset, len).map(|r| r.map_err(|e| errno(&e)))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno> {
        PcDisk::write_at(self, buf, offset).map_err(|e| errno(&e))
    }

    fn flush(&self) -> Result<(), Errno> {
        PcDisk::flush(self).map_err(|e| errno(&e))
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        PcDisk::trim(self, offset, len).map_err(|e| errno(&e))
    }

    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), Errno> {
        PcDisk::write_zeroes(self, offset, len, no_hole).map_err(|e| errno(&e))
    }

    fn parallel(&self) -> bool {
        PcDisk::parallel(self)
    }

    fn start_read(
        &self,
        offset: u64,
        len: usize,
        done: device::ReadDone,
    ) -> Option<device::ReadDone> {
        if !PcDisk::parallel(self) {
            return Some(done);
        }
        let done = Box::new(move |r: Result<Vec<u8>, _>| done(r.map_err(|e| errno(&e))));
        PcDisk::start_read(self, offset, len, done);
        None
    }

    fn start_write(
        &self,
        offset: u64,
        data: Vec<u8>,
        done: device::WriteDone,
    ) -> Option<(Vec<u8>, device::WriteDone)> {
        if !PcDisk::parallel(self) {
            return Some((data, done));
        }
        let done = Box::new(move |r: Result<(), _>| done(r.map_err(|e| errno(&e))));
        PcDisk::start_write(self, offset, data, done);
        None
    }
}
