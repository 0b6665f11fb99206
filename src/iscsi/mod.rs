//! An iSCSI target (RFC 7143, error recovery level 0) for the userspace engine, so PCs
//! can boot from it with iPXE's `sanboot` and their own initiators. Wire format
//! (`pdu`, `reader`, `text`) apart from session logic (`login`, `negotiate`, `chap`,
//! `session`) and SCSI (`scsi`); sockets are in `connection`, and the PCs behind each
//! target come from `crate::service` through the [`Portal`] and [`Directory`] traits.

pub mod chap;
pub mod connection;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod reader;
pub mod scsi;
pub mod session;
pub mod text;

pub use connection::{serve, Attachment, Ended, Portal};
pub use login::{Access, Directory, Established};

use std::io;
use std::sync::Arc;

use crate::engine::{Engine, EngineError};
use scsi::DiskError;

/// The engine as LUN 0 of a PC's target.
pub struct EngineDisk {
    pub engine: Arc<Engine>,
    pub read_only: bool,
}

fn disk_error(e: &EngineError) -> DiskError {
    match e {
        EngineError::Overflow => DiskError::NoSpace,
        EngineError::ReadOnly => DiskError::ReadOnly,
        EngineError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
            DiskError::NoSpace
        }
        _ => DiskError::Io,
    }
}

impl scsi::Disk for EngineDisk {
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
        self.engine.geometry().chunk_bytes()
    }
}
