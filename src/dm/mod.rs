//! Device-mapper text as types: snapshot table lines and status lines, parsed from and
//! printed back to exactly what the kernel and `dmsetup` show.

mod status;
mod table;

pub use status::{SnapshotStatus, StatusLine};
pub use table::{DevRef, SnapshotTable, StoreMode, TableLine};

/// Every dm device and LIO storage object cowctl makes carries this prefix.
pub const PREFIX: &str = "cowctl-";

/// A PC's dm device: `cowctl-<pc>`.
pub fn dm_name(pc: &str) -> String {
    format!("{PREFIX}{pc}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot parse device-mapper line {line:?}: {reason}")]
pub struct ParseError {
    pub line: String,
    pub reason: &'static str,
}

pub(crate) fn parse_error(line: &str, reason: &'static str) -> ParseError {
    ParseError {
        line: line.to_string(),
        reason,
    }
}
