//! An iSCSI target (RFC 7143, error recovery level 0) for the userspace engine, so PCs
//! can boot from it with iPXE's `sanboot` and their own initiators. Wire format
//! (`pdu`, `reader`, `text`) apart from session logic (`login`, `negotiate`, `chap`,
//! `session`) and SCSI (`scsi`); sockets are in `connection` and `line`, and the PCs behind each
//! target come from `crate::service` through the [`Portal`] and [`Directory`] traits.

pub mod chap;
pub mod connection;
pub mod line;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod reader;
pub mod scsi;
pub mod session;
pub mod text;

pub use connection::{serve, Attachment, Ended, Portal};
pub use login::{Access, Directory, Established};

pub use crate::engine::disk::EngineDisk;
