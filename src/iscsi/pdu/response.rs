//! The headers a target sends (RFC 7143 §11): Login, SCSI and Text Responses, Data-In,
//! R2T, NOP-In, Logout and task management responses, Reject and the asynchronous logout
//! request, each built whole from its fields.

use super::{Bhs, LoginRequest, LoginStatus, SeqNumbers, TargetOpcode, BHS_LEN, RESERVED_TAG};

/// Builds a Login Response header (§11.13).
#[allow(clippy::too_many_arguments)]
pub fn login_response(
    req: &LoginRequest,
    transit: bool,
    csg: u8,
    nsg: u8,
    tsih: u16,
    sn: SeqNumbers,
    status: LoginStatus,
) -> Bhs {
    let mut b = Bhs::default();
    b.0[0] = TargetOpcode::LoginResponse as u8;
    b.0[1] = (u8::from(transit) << 7) | ((csg & 3) << 2) | (nsg & 3);
    b.0[2] = 0; // Version-max
    b.0[3] = 0; // Version-active
    b.0[8..14].copy_from_slice(&req.isid);
    b.set_u16(14, tsih);
    b.set_u32(16, req.itt);
    b.set_sns(sn);
    b.0[36] = status.class;
    b.0[37] = status.detail;
    b
}

/// Residual flags and count of a SCSI Response or the final Data-In.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Residual {
    pub overflow: bool,
    pub underflow: bool,
    pub count: u32,
}

impl Residual {
    /// What the initiator expected against what the command would have moved.
    pub fn of(expected: u32, wanted: u64) -> Residual {
        let expected64 = u64::from(expected);
        if wanted > expected64 {
            Residual {
                overflow: true,
                underflow: false,
                count: u32::try_from(wanted - expected64).unwrap_or(u32::MAX),
            }
        } else if wanted < expected64 {
            Residual {
                overflow: false,
                underflow: true,
                count: u32::try_from(expected64 - wanted).unwrap_or(u32::MAX),
            }
        } else {
            Residual::default()
        }
    }

    fn flag_bits(self) -> u8 {
        (u8::from(self.overflow) << 2) | (u8::from(self.underflow) << 1)
    }
}

/// A SCSI Response header (§11.4); the data segment is the sense data, if any.
pub fn scsi_response(itt: u32, status: u8, residual: Residual, sn: SeqNumbers) -> Bhs {
    let mut b = Bhs::target(TargetOpcode::ScsiResponse);
    b.0[1] |= residual.flag_bits();
    b.0[2] = 0; // Command Completed at Target
    b.0[3] = status;
    b.set_u32(16, itt);
    b.set_sns(sn);
    b.set_u32(44, residual.count);
    b
}

/// A Data-In header (§11.7). With `status`, it carries the command's good status too
/// (phase collapse), so no SCSI Response follows.
#[allow(clippy::too_many_arguments)]
pub fn data_in(
    itt: u32,
    final_bit: bool,
    status: Option<(u8, Residual)>,
    sn: SeqNumbers,
    data_sn: u32,
    offset: u32,
    len: usize,
) -> Bhs {
    let mut b = Bhs::default();
    b.0[0] = TargetOpcode::DataIn as u8;
    b.0[1] = u8::from(final_bit) << 7;
    b.set_u32(16, itt);
    b.set_u32(20, RESERVED_TAG);
    if let Some((st, residual)) = status {
        b.0[1] |= 0x80 | 0x01 | residual.flag_bits();
        b.0[3] = st;
        b.set_u32(24, sn.stat_sn);
        b.set_u32(44, residual.count);
    }
    b.set_u32(28, sn.exp_cmd_sn);
    b.set_u32(32, sn.max_cmd_sn);
    b.set_u32(36, data_sn);
    b.set_u32(40, offset);
    b.set_data_len(len);
    b
}

/// A Ready To Transfer (§11.8): asks for `len` bytes from `offset`.
pub fn r2t(
    lun: u64,
    itt: u32,
    ttt: u32,
    sn: SeqNumbers,
    r2t_sn: u32,
    offset: u32,
    len: u32,
) -> Bhs {
    let mut b = Bhs::target(TargetOpcode::ReadyToTransfer);
    b.set_u64(8, lun);
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_sns(sn);
    b.set_u32(36, r2t_sn);
    b.set_u32(40, offset);
    b.set_u32(44, len);
    b
}

/// A NOP-In (§11.19): the answer to a ping (`itt` its tag, `ttt` reserved) or a ping of our
/// own (`itt` reserved, `ttt` ours).
pub fn nop_in(lun: u64, itt: u32, ttt: u32, sn: SeqNumbers, len: usize) -> Bhs {
    let mut b = Bhs::target(TargetOpcode::NopIn);
    b.set_u64(8, lun);
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_sns(sn);
    b.set_data_len(len);
    b
}

/// A Text Response (§11.11).
pub fn text_response(
    itt: u32,
    final_bit: bool,
    cont: bool,
    ttt: u32,
    sn: SeqNumbers,
    len: usize,
) -> Bhs {
    let mut b = Bhs::default();
    b.0[0] = TargetOpcode::TextResponse as u8;
    b.0[1] = (u8::from(final_bit) << 7) | (u8::from(cont) << 6);
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_sns(sn);
    b.set_data_len(len);
    b
}

/// A response whose byte 2 is its response code, for the command tagged `itt`.
fn coded(op: TargetOpcode, code: u8, itt: u32, sn: SeqNumbers) -> Bhs {
    let mut b = Bhs::target(op);
    b.0[2] = code;
    b.set_u32(16, itt);
    b.set_sns(sn);
    b
}

/// A Logout Response (§11.15). Time2Wait and Time2Retain stay 0: error recovery level 0
/// keeps nothing.
pub fn logout_response(itt: u32, response: u8, sn: SeqNumbers) -> Bhs {
    coded(TargetOpcode::LogoutResponse, response, itt, sn)
}

/// Task Management Function responses (§11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfResponse {
    Complete = 0,
    TaskDoesNotExist = 1,
    LunDoesNotExist = 2,
    NotSupported = 5,
    Rejected = 255,
}

pub fn tmf_response(itt: u32, response: TmfResponse, sn: SeqNumbers) -> Bhs {
    coded(
        TargetOpcode::TaskManagementResponse,
        response as u8,
        itt,
        sn,
    )
}

/// Reject reasons (§11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    OutOfResources = 0x0a,
    WaitingForLogout = 0x0c,
}

/// A Reject (§11.17); its data segment is the header of the rejected PDU.
pub fn reject(reason: RejectReason, sn: SeqNumbers, data_sn: u32) -> Bhs {
    let mut b = Bhs::target(TargetOpcode::Reject);
    b.0[2] = reason as u8;
    b.set_u32(16, RESERVED_TAG);
    b.set_sns(sn);
    b.set_u32(36, data_sn);
    b.set_data_len(BHS_LEN);
    b
}

/// An Asynchronous Message asking the initiator to log out within `seconds` (§11.9.1,
/// AsyncEvent 1).
pub fn async_logout_request(sn: SeqNumbers, seconds: u16) -> Bhs {
    let mut b = Bhs::target(TargetOpcode::AsyncMessage);
    b.set_u32(16, RESERVED_TAG);
    b.set_sns(sn);
    b.0[36] = 1;
    b.set_u16(40, seconds); // Parameter3: time to logout
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_where_rfc_7143_puts_them() {
        let sn = SeqNumbers {
            stat_sn: 7,
            exp_cmd_sn: 8,
            max_cmd_sn: 40,
        };
        let b = data_in(
            0x11,
            true,
            Some((0, Residual::of(512, 4096))),
            sn,
            3,
            8192,
            512,
        );
        assert_eq!(b.0[0], 0x25);
        assert_eq!(b.0[1], 0x80 | 0x04 | 0x01, "F, O and S");
        assert_eq!(b.itt(), 0x11);
        assert_eq!(b.u32_at(24), 7);
        assert_eq!(b.u32_at(36), 3);
        assert_eq!(b.u32_at(40), 8192);
        assert_eq!(b.u32_at(44), 4096 - 512);
        assert_eq!(b.data_len(), 512);
        let r = scsi_response(9, 2, Residual::of(4096, 512), sn);
        assert_eq!(r.0[1], 0x80 | 0x02, "U");
        assert_eq!(r.0[3], 2);
        assert_eq!(r.u32_at(44), 3584);
    }
}
