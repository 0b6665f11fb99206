//! CDBs as typed operations (SPC-4, SBC-3): the fields each command uses, with the
//! reserved and unsupported bits refused as INVALID FIELD IN CDB pointing at them.

use super::sense::Sense;

/// The operation codes served.
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;

    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
}

use opcode::*;

/// A block range of a read, write, verify, ... command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lba: u64,
    pub blocks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ReportLuns {
        alloc: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    ReportSupportedOpcodes {
        options: u8,
        opcode: u8,
        sa: u16,
        alloc: u32,
    },
    Read {
        range: Range,
        fua: bool,
    },
    Write {
        range: Range,
        fua: bool,
    },
    /// VERIFY: BYTCHK 0 checks the medium only, 1 compares the data sent.
    Verify {
        range: Range,
        bytchk: bool,
    },
    WriteVerify {
        range: Range,
    },
    SyncCache {
        range: Range,
    },
    PreFetch {
        range: Range,
    },
    WriteSame {
        range: Range,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        param_len: u32,
    },
    StartStopUnit,
    PreventAllow,
    Reserve,
    Release,
    ReadDefectData {
        ten: bool,
        alloc: u32,
    },
}

/// Where the data of a data-out command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOut {
    None,
    /// Straight to the disk from this byte offset, piece by piece as it arrives.
    Write {
        offset: u64,
    },
    /// Compared with the disk from this offset, piece by piece.
    Compare {
        offset: u64,
    },
    /// Kept in memory (at most this much) until the whole parameter list is there.
    Buffer,
}

fn be16(c: &[u8], at: usize) -> u32 {
    u32::from(u16::from_be_bytes([c[at], c[at + 1]]))
}

fn be32(c: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(c[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(c: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(c[at..at + 8].try_into().expect("8 bytes"))
}

/// Bits of byte `at` that must be zero.
fn reserved(c: &[u8], at: usize, mask: u8) -> Result<(), Sense> {
    let bad = c[at] & mask;
    if bad == 0 {
        return Ok(());
    }
    // The highest bit set: what the field pointer names.
    let bit = (0..8u8).rev().find(|b| bad & (1 << b) != 0);
    Err(Sense::invalid_cdb_field(
        u16::try_from(at).unwrap_or(u16::MAX),
        bit,
    ))
}

/// The CDB length an opcode's group implies (SPC-4 §4.2.5.1).
pub fn cdb_len(op: u8) -> usize {
    match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// LBA and length of a 10-byte read, write, verify, ... CDB.
fn rw10(c: &[u8]) -> Range {
    Range {
        lba: u64::from(be32(c, 2)),
        blocks: be16(c, 7),
    }
}

/// LBA and length of a 12-byte CDB.
fn rw12(c: &[u8]) -> Range {
    Range {
        lba: u64::from(be32(c, 2)),
        blocks: be32(c, 6),
    }
}

/// LBA and length of a 16-byte CDB.
fn rw16(c: &[u8]) -> Range {
    Range {
        lba: be64(c, 2),
        blocks: be32(c, 10),
    }
}

fn test_unit_ready(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, 0xff)?;
    Ok(Op::TestUnitReady)
}

fn request_sense(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, 0xfe)?;
    Ok(Op::RequestSense {
        desc: c[1] & 1 != 0,
        alloc: u32::from(c[4]),
    })
}

fn inquiry(c: &[u8]) -> Result<Op, Sense> {
    // CMDDT (bit 1) is obsolete: refused.
    reserved(c, 1, 0xfe)?;
    let evpd = c[1] & 1 != 0;
    if !evpd && c[2] != 0 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    Ok(Op::Inquiry {
        evpd,
        page: c[2],
        alloc: be16(c, 3),
    })
}

fn report_luns(c: &[u8]) -> Result<Op, Sense> {
    if c[2] > 2 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    let alloc = be32(c, 6);
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    Ok(Op::ReportLuns { alloc })
}

fn read_capacity_10(c: &[u8]) -> Result<Op, Sense> {
    // PMI and an LBA are obsolete in SBC-3; a PMI of 0 must come with LBA 0.
    if c[8] & 1 == 0 && be32(c, 2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    Ok(Op::ReadCapacity10)
}

/// SERVICE ACTION IN (16): READ CAPACITY (16) and GET LBA STATUS.
fn service_action_in_16(c: &[u8]) -> Result<Op, Sense> {
    match c[1] & 0x1f {
        SA_READ_CAPACITY_16 => Ok(Op::ReadCapacity16 { alloc: be32(c, 10) }),
        SA_GET_LBA_STATUS => Ok(Op::GetLbaStatus {
            lba: be64(c, 2),
            alloc: be32(c, 10),
        }),
        _ => Err(Sense::invalid_cdb_field(1, None)),
    }
}

/// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES only.
fn maintenance_in(c: &[u8]) -> Result<Op, Sense> {
    match c[1] & 0x1f {
        SA_REPORT_SUPPORTED_OPCODES => {
            let options = c[2] & 0x07;
            if options > 3 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            reserved(c, 2, 0x78)?;
            Ok(Op::ReportSupportedOpcodes {
                options: c[2],
                opcode: c[3],
                sa: u16::from_be_bytes([c[4], c[5]]),
                alloc: be32(c, 6),
            })
        }
        _ => Err(Sense::INVALID_OPCODE),
    }
}

fn read_write_6(c: &[u8]) -> Result<Op, Sense> {
    let lba = (u64::from(c[1] & 0x1f) << 16) | u64::from(be16(c, 2));
    reserved(c, 1, 0xe0)?;
    // A transfer length of 0 means 256 blocks (SBC-3 §5.8).
    let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
    let range = Range { lba, blocks };
    Ok(if c[0] == READ_6 {
        Op::Read { range, fua: false }
    } else {
        Op::Write { range, fua: false }
    })
}

/// READ and WRITE (10), (12) and (16).
fn read_write(c: &[u8]) -> Result<Op, Sense> {
    // RDPROTECT/WRPROTECT: no protection information here.
    reserved(c, 1, 0xe0)?;
    let range = match c[0] {
        READ_10 | WRITE_10 => rw10(c),
        READ_12 | WRITE_12 => rw12(c),
        _ => rw16(c),
    };
    let fua = c[1] & 0x08 != 0;
    Ok(if matches!(c[0], READ_10 | READ_12 | READ_16) {
        Op::Read { range, fua }
    } else {
        Op::Write { range, fua }
    })
}

fn verify(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, 0xe0)?;
    let bytchk = (c[1] >> 1) & 3;
    if bytchk > 1 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    let range = match c[0] {
        VERIFY_10 => rw10(c),
        VERIFY_12 => rw12(c),
        _ => rw16(c),
    };
    Ok(Op::Verify {
        range,
        bytchk: bytchk == 1,
    })
}

fn write_verify(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, 0xe0)?;
    let range = match c[0] {
        WRITE_VERIFY_10 => rw10(c),
        WRITE_VERIFY_12 => rw12(c),
        _ => rw16(c),
    };
    Ok(Op::WriteVerify { range })
}

fn write_same(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, 0xe0)?;
    if c[1] & 0x10 != 0 {
        // ANCHOR: the device does not anchor.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    if c[1] & 0x06 != 0 {
        // PBDATA and LBDATA are obsolete.
        return Err(Sense::invalid_cdb_field(1, Some(1)));
    }
    let (range, ndob) = if c[0] == WRITE_SAME_10 {
        (rw10(c), false)
    } else {
        (rw16(c), c[1] & 1 != 0)
    };
    Ok(Op::WriteSame {
        range,
        unmap: c[1] & 0x08 != 0,
        ndob,
    })
}

fn unmap(c: &[u8]) -> Result<Op, Sense> {
    if c[1] & 1 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    Ok(Op::Unmap {
        param_len: be16(c, 7),
    })
}

fn mode_sense(c: &[u8]) -> Result<Op, Sense> {
    let ten = c[0] == MODE_SENSE_10;
    reserved(c, 1, if ten { 0xe7 } else { 0xf7 })?;
    Ok(Op::ModeSense {
        ten,
        dbd: c[1] & 0x08 != 0,
        llbaa: ten && c[1] & 0x10 != 0,
        pc: c[2] >> 6,
        page: c[2] & 0x3f,
        subpage: c[3],
        alloc: if ten { be16(c, 7) } else { u32::from(c[4]) },
    })
}

fn start_stop_unit(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, 0xfe)?;
    Ok(Op::StartStopUnit)
}

fn reserve(c: &[u8]) -> Result<Op, Sense> {
    // Third-party and extent reservations are obsolete.
    reserved(c, 1, if c[0] == RESERVE_6 { 0x1f } else { 0x13 })?;
    Ok(Op::Reserve)
}

fn release(c: &[u8]) -> Result<Op, Sense> {
    reserved(c, 1, if c[0] == RELEASE_6 { 0x1f } else { 0x13 })?;
    Ok(Op::Release)
}

impl Op {
    pub fn decode(c: &[u8; 16]) -> Result<Op, Sense> {
        let len = cdb_len(c[0]);
        // CONTROL: NACA (ACA is not supported) and the obsolete LINK bit.
        reserved(c, len - 1, 0x05)?;
        match c[0] {
            TEST_UNIT_READY => test_unit_ready(c),
            REQUEST_SENSE => request_sense(c),
            INQUIRY => inquiry(c),
            REPORT_LUNS => report_luns(c),
            READ_CAPACITY_10 => read_capacity_10(c),
            SERVICE_ACTION_IN_16 => service_action_in_16(c),
            MAINTENANCE_IN => maintenance_in(c),
            READ_6 | WRITE_6 => read_write_6(c),
            READ_10 | READ_12 | READ_16 | WRITE_10 | WRITE_12 | WRITE_16 => read_write(c),
            VERIFY_10 | VERIFY_12 | VERIFY_16 => verify(c),
            WRITE_VERIFY_10 | WRITE_VERIFY_12 | WRITE_VERIFY_16 => write_verify(c),
            SYNCHRONIZE_CACHE_10 => Ok(Op::SyncCache { range: rw10(c) }),
            SYNCHRONIZE_CACHE_16 => Ok(Op::SyncCache { range: rw16(c) }),
            PRE_FETCH_10 => Ok(Op::PreFetch { range: rw10(c) }),
            PRE_FETCH_16 => Ok(Op::PreFetch { range: rw16(c) }),
            WRITE_SAME_10 | WRITE_SAME_16 => write_same(c),
            UNMAP => unmap(c),
            MODE_SENSE_6 | MODE_SENSE_10 => mode_sense(c),
            MODE_SELECT_6 => Ok(Op::ModeSelect {
                param_len: u32::from(c[4]),
            }),
            MODE_SELECT_10 => Ok(Op::ModeSelect {
                param_len: be16(c, 7),
            }),
            START_STOP_UNIT => start_stop_unit(c),
            PREVENT_ALLOW => Ok(Op::PreventAllow),
            RESERVE_6 | RESERVE_10 => reserve(c),
            RELEASE_6 | RELEASE_10 => release(c),
            READ_DEFECT_DATA_10 => Ok(Op::ReadDefectData {
                ten: true,
                alloc: be16(c, 7),
            }),
            READ_DEFECT_DATA_12 => Ok(Op::ReadDefectData {
                ten: false,
                alloc: be32(c, 6),
            }),
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    /// Bytes the command takes from the initiator (given the disk's block size), and where
    /// they go.
    pub fn data_out(&self, block: u64) -> (u64, DataOut) {
        match *self {
            Op::Write { range, .. } | Op::WriteVerify { range } => (
                u64::from(range.blocks) * block,
                DataOut::Write {
                    offset: range.lba.saturating_mul(block),
                },
            ),
            Op::Verify {
                range,
                bytchk: true,
            } => (
                u64::from(range.blocks) * block,
                DataOut::Compare {
                    offset: range.lba.saturating_mul(block),
                },
            ),
            Op::WriteSame { ndob: false, .. } => (block, DataOut::Buffer),
            Op::Unmap { param_len } | Op::ModeSelect { param_len } => {
                (u64::from(param_len), DataOut::Buffer)
            }
            _ => (0, DataOut::None),
        }
    }

    /// Whether a reservation held by another I_T nexus lets this command through (SPC-2
    /// §5.5.1, Table 10: these are allowed).
    pub fn passes_reservation(&self) -> bool {
        matches!(
            self,
            Op::Inquiry { .. }
                | Op::ReportLuns { .. }
                | Op::RequestSense { .. }
                | Op::Release
                | Op::ReportSupportedOpcodes { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn reads_and_writes() {
        assert_eq!(
            Op::decode(&cdb(&[READ_10, 0x08, 0, 0, 1, 0, 0, 0, 8, 0])),
            Ok(Op::Read {
                range: Range {
                    lba: 256,
                    blocks: 8
                },
                fua: true
            })
        );
        assert_eq!(
            Op::decode(&cdb(&[READ_6, 0x01, 0, 2, 0, 0])),
            Ok(Op::Read {
                range: Range {
                    lba: 0x10002,
                    blocks: 256
                },
                fua: false
            })
        );
        let e = Op::decode(&cdb(&[READ_10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0])).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 1);
        assert_eq!(e.field.unwrap().bit, Some(5));
        assert_eq!(Op::decode(&cdb(&[0xc0])), Err(Sense::INVALID_OPCODE));
        assert!(
            Op::decode(&cdb(&[READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0x04])).is_err(),
            "NACA"
        );
    }

    #[test]
    fn inquiry_and_report_luns_fields() {
        assert!(Op::decode(&cdb(&[INQUIRY, 0, 0x80, 0, 255, 0])).is_err());
        assert!(Op::decode(&cdb(&[INQUIRY, 2, 0, 0, 255, 0])).is_err());
        assert!(Op::decode(&cdb(&[REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0])).is_err());
        assert!(Op::decode(&cdb(&[REPORT_LUNS, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0])).is_err());
    }
}
