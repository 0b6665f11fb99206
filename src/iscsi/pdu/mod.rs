//! The iSCSI wire format (RFC 7143 §11): the 48-byte Basic Header Segment of every PDU,
//! typed views of what initiators send, and builders for what a target sends. Pure bytes:
//! reading from a socket, digests and size limits live in `reader.rs`.
//!
//! This file: the header, opcodes and the typed requests; the response builders are in
//! `response.rs`.

mod response;

use std::fmt;

pub use response::{
    async_logout_request, data_in, login_response, logout_response, nop_in, r2t, reject,
    scsi_response, text_response, tmf_response, RejectReason, Residual, TmfResponse,
};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The Initiator Task Tag (and Target Transfer Tag) value that means "none".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes an initiator sends (RFC 7143 §11.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiatorOpcode {
    NopOut,
    ScsiCommand,
    TaskManagement,
    Login,
    Text,
    DataOut,
    Logout,
    Snack,
}

impl InitiatorOpcode {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b & 0x3f {
            0x00 => Self::NopOut,
            0x01 => Self::ScsiCommand,
            0x02 => Self::TaskManagement,
            0x03 => Self::Login,
            0x04 => Self::Text,
            0x05 => Self::DataOut,
            0x06 => Self::Logout,
            0x10 => Self::Snack,
            _ => return None,
        })
    }
}

/// Opcodes a target sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TargetOpcode {
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

/// A Basic Header Segment with accessors for its fields (all big-endian).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl fmt::Debug for Bhs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Bhs(opcode 0x{:02x}, flags 0x{:02x}, itt 0x{:08x}, data {})",
            self.0[0] & 0x3f,
            self.0[1],
            self.itt(),
            self.data_len()
        )
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl Bhs {
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }

    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }

    pub fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }

    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    pub fn opcode_byte(&self) -> u8 {
        self.0[0] & 0x3f
    }

    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }

    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn ahs_len(&self) -> usize {
        usize::from(self.0[4]) * 4
    }

    pub fn data_len(&self) -> usize {
        (usize::from(self.0[5]) << 16) | (usize::from(self.0[6]) << 8) | usize::from(self.0[7])
    }

    pub fn set_data_len(&mut self, len: usize) {
        debug_assert!(len < 1 << 24);
        let be = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        self.0[5..8].copy_from_slice(&be[1..]);
    }

    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }

    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// A target PDU with its opcode and the F bit set (every target PDU but Login, Text
    /// and Data-In has it always).
    pub fn target(op: TargetOpcode) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = op as u8;
        b.0[1] = 0x80;
        b
    }

    /// The sequence numbers most target PDUs carry at bytes 24..36.
    pub fn set_sns(&mut self, sn: SeqNumbers) {
        self.set_u32(24, sn.stat_sn);
        self.set_u32(28, sn.exp_cmd_sn);
        self.set_u32(32, sn.max_cmd_sn);
    }
}

/// StatSN, ExpCmdSN and MaxCmdSN as a response carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqNumbers {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// A whole PDU as read: header, additional header segments, data segment (padding and
/// digests already removed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

/// Serial number arithmetic (RFC 1982, 32 bits), as CmdSN and StatSN compare.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// The fields of a Login Request (§11.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LoginRequest {
    pub fn parse(b: &Bhs) -> LoginRequest {
        let f = b.flags();
        LoginRequest {
            transit: f & 0x80 != 0,
            cont: f & 0x40 != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            version_max: b.0[2],
            version_min: b.0[3],
            isid: b.0[8..14].try_into().expect("6 bytes"),
            tsih: b.u16_at(14),
            itt: b.itt(),
            cid: b.u16_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
        }
    }
}
/// Status-Class and Status-Detail of a Login Response (§11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus::new(0, 0);
    /// Redirection: the target is at the TargetAddress the response carries, for now.
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus::new(1, 1);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus::new(2, 0);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus::new(2, 1);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus::new(2, 2);
    pub const NOT_FOUND: LoginStatus = LoginStatus::new(2, 3);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus::new(2, 4);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus::new(2, 5);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus::new(2, 6);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus::new(2, 7);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus::new(2, 8);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus::new(2, 9);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus::new(2, 0x0a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus::new(2, 0x0b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus::new(3, 0);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus::new(3, 1);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus::new(3, 2);

    pub const fn new(class: u8, detail: u8) -> LoginStatus {
        LoginStatus { class, detail }
    }

    pub fn is_success(self) -> bool {
        self.class == 0
    }
}

impl fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.class, self.detail) {
            (0, _) => "success",
            (2, 1) => "authentication failure",
            (2, 2) => "authorization failure",
            (2, 3) => "target not found",
            (2, 4) => "target removed",
            (2, 5) => "unsupported version",
            (2, 6) => "too many connections",
            (2, 7) => "missing parameter",
            (2, 8) => "cannot include in session",
            (2, 9) => "session type not supported",
            (2, 0x0a) => "session does not exist",
            (2, 0x0b) => "invalid request during login",
            (2, _) => "initiator error",
            (3, 1) => "service unavailable",
            (3, 2) => "out of resources",
            (3, _) => "target error",
            _ => "unknown status",
        };
        write!(f, "{what} (0x{:02x}{:02x})", self.class, self.detail)
    }
}

/// The fields of a SCSI Command (§11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    /// The task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    pub fn parse(b: &Bhs) -> ScsiCommand {
        let f = b.flags();
        ScsiCommand {
            immediate: b.immediate(),
            final_bit: f & 0x80 != 0,
            read: f & 0x40 != 0,
            write: f & 0x20 != 0,
            attr: f & 0x07,
            lun: b.lun(),
            itt: b.itt(),
            expected_len: b.u32_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
            cdb: b.0[32..48].try_into().expect("16 bytes"),
        }
    }
}

/// The fields of a SCSI Data-Out (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub offset: u32,
}

impl DataOut {
    pub fn parse(b: &Bhs) -> DataOut {
        DataOut {
            final_bit: b.final_bit(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            exp_stat_sn: b.u32_at(28),
            data_sn: b.u32_at(36),
            offset: b.u32_at(40),
        }
    }
}

/// The request fields shared by NOP-Out, Text, Logout and Task Management: tags and
/// sequence numbers at the same places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Common {
    pub immediate: bool,
    pub flags: u8,
    pub lun: u64,
    pub itt: u32,
    /// Target Transfer Tag (NOP-Out, Text) or Referenced Task Tag (Task Management).
    pub tag2: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// CID (Logout, at bytes 20..22).
    pub cid: u16,
    /// RefCmdSN (Task Management).
    pub ref_cmd_sn: u32,
}

impl Common {
    pub fn parse(b: &Bhs) -> Common {
        Common {
            immediate: b.immediate(),
            flags: b.flags(),
            lun: b.lun(),
            itt: b.itt(),
            tag2: b.u32_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
            cid: b.u16_at(20),
            ref_cmd_sn: b.u32_at(32),
        }
    }
}

/// Padding that brings a segment to a multiple of 4 bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(0, u32::MAX));
        assert!(sn_le(5, 5));
        assert!(!sn_lt(5, 5));
    }

    #[test]
    fn login_request_bits() {
        let mut b = Bhs::default();
        b.0[0] = 0x43;
        b.0[1] = 0x80 | (1 << 2) | 3;
        b.0[8..14].copy_from_slice(&[0x80, 1, 2, 3, 4, 5]);
        b.set_u16(20, 9);
        let r = LoginRequest::parse(&b);
        assert!(r.transit && !r.cont);
        assert_eq!((r.csg, r.nsg, r.cid), (1, 3, 9));
        assert_eq!(r.isid, [0x80, 1, 2, 3, 4, 5]);
    }
}
