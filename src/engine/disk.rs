//! The disk a wire protocol serves, apart from the protocol: the [`Disk`] trait the iSCSI
//! and AoE targets call, and [`EngineDisk`], the userspace engine behind it.

use std::io;
use std::sync::Arc;

use crate::engine::{EngineError, PcDisk};

/// Errors a disk reports, as the protocols tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// No room left (a full COW).
    NoSpace,
    ReadOnly,
    Io,
}

/// The block device a protocol serves (iSCSI's LUN 0, an AoE shelf.slot). Offsets and
/// lengths are already checked by the caller.
pub trait Disk: Send + Sync {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    fn flush(&self) -> Result<(), DiskError>;
    /// Discard: afterwards the range reads as anything (here: zeros or the golden image).
    fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Afterwards the range reads as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// The preferred I/O size (the COW's chunk).
    fn granularity(&self) -> u64 {
        4096
    }
    /// Requests gain from being in flight together: each waits on the network (an rbd
    /// clone), not on this machine's page cache.
    fn parallel(&self) -> bool {
        false
    }
    /// Starts a read that answers `done` on another thread, when the disk can without a
    /// thread waiting for it (an rbd clone); else gives `done` back, not called.
    fn start_read(&self, _offset: u64, _len: usize, done: ReadDone) -> Option<ReadDone> {
        Some(done)
    }
    /// [`Disk::start_read`] for a write; gives `data` and `done` back when it cannot.
    fn start_write(
        &self,
        _offset: u64,
        data: Vec<u8>,
        done: WriteDone,
    ) -> Option<(Vec<u8>, WriteDone)> {
        Some((data, done))
    }
}

pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>, DiskError>) + Send>;
pub type WriteDone = Box<dyn FnOnce(Result<(), DiskError>) + Send>;

/// A PC's disk (its COW's engine or its clone) as the disk its exports serve.
pub struct EngineDisk {
    pub engine: Arc<PcDisk>,
    pub read_only: bool,
}

fn disk_error(e: &EngineError) -> DiskError {
    match e {
        EngineError::Overflow | EngineError::Quota { .. } => DiskError::NoSpace,
        EngineError::ReadOnly => DiskError::ReadOnly,
        EngineError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
            DiskError::NoSpace
        }
        _ => DiskError::Io,
    }
}

impl Disk for EngineDisk {
    fn size(&self) -> u64 {
        self.engine.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.engine.read_at(buf, offset).map_err(|e| disk_error(&e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.engine
            .write_at(buf, offset)
            .map_err(|e| disk_error(&e))
    }

    fn flush(&self) -> Result<(), DiskError> {
        self.engine.flush().map_err(|e| disk_error(&e))
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.engine.trim(offset, len).map_err(|e| disk_error(&e))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.engine
            .write_zeroes(offset, len, false)
            .map_err(|e| disk_error(&e))
    }

    fn granularity(&self) -> u64 {
        self.engine.granularity()
    }

    fn parallel(&self) -> bool {
        self.engine.parallel()
    }

    fn start_read(&self, offset: u64, len: usize, done: ReadDone) -> Option<ReadDone> {
        if !self.engine.parallel() {
            return Some(done);
        }
        let done = Box::new(move |r: Result<_, _>| done(r.map_err(|e| disk_error(&e))));
        self.engine.start_read(offset, len, done);
        None
    }

    fn start_write(
        &self,
        offset: u64,
        data: Vec<u8>,
        done: WriteDone,
    ) -> Option<(Vec<u8>, WriteDone)> {
        if !self.engine.parallel() {
            return Some((data, done));
        }
        let done = Box::new(move |r: Result<_, _>| done(r.map_err(|e| disk_error(&e))));
        self.engine.start_write(offset, data, done);
        None
    }
}
