//! INQUIRY (SPC-4 §6.6) and the VPD pages a block device reports: supported pages, unit
//! serial number, device identification, block limits, block device characteristics and
//! logical block provisioning (SBC-3 §6.6). The identity is derived from the PC's name
//! alone, so it is the same after a reset and on either backend.

use super::Limits;
pub use crate::base::diskid::{serial_for, PRODUCT, REVISION, VENDOR};

/// LIO's IEEE company ID, which it puts in every NAA designator it makes from a serial.
const LIO_COMPANY_ID: [u8; 3] = [0x00, 0x14, 0x05];

/// A length as a big-endian 16-bit field (clamped; every page here is far shorter).
pub fn be16(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

/// `s` padded with spaces to `n` bytes, as INQUIRY's ASCII fields are.
fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v = s.as_bytes()[..s.len().min(n)].to_vec();
    v.resize(n, b' ');
    v
}

/// What a PC's disk calls itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 32 hex digits, VPD page 0x80; the kernel backend writes the same to LIO.
    pub serial: String,
    /// The target's IQN, for the SCSI name designators.
    pub target: String,
}

impl Identity {
    pub fn for_pc(pc: &str, target: &str) -> Identity {
        Identity {
            serial: serial_for(pc),
            target: target.to_string(),
        }
    }

    /// The NAA IEEE Registered Extended designator, built from the serial the way LIO
    /// builds it (target_core_spc.c), so both backends show the same 16 bytes.
    pub fn naa(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        // NAA 6, then the 24-bit company ID shifted by one nibble.
        let [c0, c1, c2] = LIO_COMPANY_ID;
        b[0] = 0x60 | (c0 >> 4);
        b[1] = (c0 << 4) | (c1 >> 4);
        b[2] = (c1 << 4) | (c2 >> 4);
        b[3] = c2 << 4;
        let mut at = 3;
        let mut high = false;
        let digits = self.serial.bytes().filter_map(|c| (c as char).to_digit(16));
        for d in digits.filter_map(|d| u8::try_from(d).ok()) {
            if at >= 16 {
                break;
            }
            if high {
                b[at] = d << 4;
            } else {
                b[at] |= d;
                at += 1;
            }
            high = !high;
        }
        b
    }
}

/// Standard INQUIRY data: a direct-access block device, SPC-4, command queueing.
pub fn standard(lun_exists: bool) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    // Peripheral qualifier 3 / type 0x1f: no logical unit here.
    d[0] = if lun_exists { 0x00 } else { 0x7f };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = 96 - 5;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&padded(VENDOR, 8));
    d[16..32].copy_from_slice(&padded(PRODUCT, 16));
    d[32..36].copy_from_slice(&padded(REVISION, 4));
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

pub const PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// A VPD page, or None for a page this device does not have.
pub fn vpd(page: u8, id: &Identity, limits: &Limits) -> Option<Vec<u8>> {
    let body = match page {
        0x00 => PAGES.to_vec(),
        0x80 => id.serial.as_bytes().to_vec(),
        0x83 => device_identification(id),
        0xb0 => block_limits(limits),
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            b[1] = 0x01; // MEDIUM ROTATION RATE: non-rotating
            b
        }
        0xb2 => {
            // LBPU, LBPWS, LBPWS10; LBPRZ 0 (an unmapped block may read the golden
            // image); provisioning type 2: thin.
            vec![0, 0x80 | 0x40 | 0x20, 0x02, 0]
        }
        _ => return None,
    };
    let mut d = vec![0u8, page, 0, 0];
    d[2..4].copy_from_slice(&be16(body.len()));
    d.extend_from_slice(&body);
    Some(d)
}

fn designator(out: &mut Vec<u8>, code_set: u8, assoc_type: u8, protocol: Option<u8>, value: &[u8]) {
    let (proto, piv) = match protocol {
        Some(p) => (p << 4, 0x80),
        None => (0, 0),
    };
    out.extend_from_slice(&[proto | code_set, piv | assoc_type, 0, be16(value.len())[1]]);
    out.extend_from_slice(value);
}

/// A SCSI name string: UTF-8, NUL-terminated, padded to a multiple of 4.
fn name_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn device_identification(id: &Identity) -> Vec<u8> {
    const ISCSI: u8 = 5;
    let mut d = Vec::new();
    // Logical unit: NAA (binary), then T10 vendor ID (ASCII).
    designator(&mut d, 1, 0x03, None, &id.naa());
    let mut t10 = padded(VENDOR, 8);
    t10.extend_from_slice(id.serial.as_bytes());
    designator(&mut d, 2, 0x01, None, &t10);
    // Target port: relative port 1 and its SCSI name string.
    designator(&mut d, 1, 0x10 | 0x04, Some(ISCSI), &1u32.to_be_bytes());
    designator(
        &mut d,
        3,
        0x10 | 0x08,
        Some(ISCSI),
        &name_string(&format!("{},t,0x0001", id.target)),
    );
    // Target device: its name.
    designator(
        &mut d,
        3,
        0x20 | 0x08,
        Some(ISCSI),
        &name_string(&id.target),
    );
    d
}

fn block_limits(l: &Limits) -> Vec<u8> {
    let mut b = vec![0u8; 0x3c];
    b[0] = 0x01; // WSNZ: WRITE SAME of zero blocks is refused
    b[2..4].copy_from_slice(&be16(l.optimal_granularity as usize));
    b[4..8].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    b[8..12].copy_from_slice(&l.optimal_transfer_blocks.to_be_bytes());
    b[16..20].copy_from_slice(&l.max_unmap_blocks.to_be_bytes());
    b[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
    b[24..28].copy_from_slice(&l.optimal_granularity.to_be_bytes());
    b[32..40].copy_from_slice(&u64::from(l.max_write_same_blocks).to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_follows_lio() {
        // LIO's designator for the serial "0123456789abcdef0123456789abcdef".
        let id = Identity {
            serial: "0123456789abcdef0123456789abcdef".into(),
            target: "iqn.x:y".into(),
        };
        assert_eq!(
            id.naa(),
            [
                0x60, 0x01, 0x40, 0x50, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34,
                0x56, 0x78
            ]
        );
    }

    #[test]
    fn serial_is_stable_and_per_pc() {
        assert_eq!(serial_for("pc-01"), serial_for("pc-01"));
        assert_ne!(serial_for("pc-01"), serial_for("pc-02"));
        assert_eq!(serial_for("pc-01").len(), 32);
    }
}
