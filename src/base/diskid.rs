//! The identity a PC's disk shows its initiator on every backend and protocol: the T10
//! vendor, product and revision (the iSCSI target's INQUIRY and the kernel backend's LIO
//! `wwn/`) and the unit serial derived from the PC's name alone (INQUIRY's VPD page 0x80,
//! LIO's `vpd_unit_serial`, AoE's IDENTIFY), so a PC sees the same disk after a reset
//! and on either backend.

use sha2::{Digest, Sha256};

/// The T10 vendor identification (8 bytes, space-padded on the wire), as both backends
/// report it (the kernel backend writes these to LIO's `wwn/`).
pub const VENDOR: &str = "COWCTL";
/// The product identification (16 bytes on the wire).
pub const PRODUCT: &str = "cowctl disk";
/// The product revision level (4 bytes).
pub const REVISION: &str = "0001";

/// The unit serial of a PC's disk: 32 hex digits of SHA-256 over its name.
pub fn serial_for(pc: &str) -> String {
    let h = Sha256::digest(format!("cowctl disk {pc}").as_bytes());
    h[..16].iter().map(|b| format!("{b:02x}")).collect()
}
