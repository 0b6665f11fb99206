//! The ATA device behind an AoE shelf.slot: IDENTIFY DEVICE data and the commands an AoE
//! initiator sends (READ/WRITE SECTORS and their EXT forms, FLUSH CACHE, CHECK POWER MODE),
//! on a [`Disk`]. Every range is checked against the disk before the disk sees it.

use super::frame::FrameBuf;
use super::wire::Ata;
use crate::engine::disk::{Disk, DiskError};

pub const SECTOR: usize = 512;
const SECTOR_BYTES: u64 = SECTOR as u64;

/// Status register bits.
pub mod status {
    pub const DRDY: u8 = 0x40;
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error {
    /// Uncorrectable data (a read failed).
    pub const UNC: u8 = 0x40;
    /// ID not found (an address past the end).
    pub const IDNF: u8 = 0x10;
    /// Command aborted (unknown command, or a write that failed).
    pub const ABRT: u8 = 0x04;
}

/// ATA command codes.
pub mod op {
    pub const READ: u8 = 0x20;
    pub const READ_EXT: u8 = 0x24;
    pub const READ_DMA: u8 = 0xc8;
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const WRITE: u8 = 0x30;
    pub const WRITE_EXT: u8 = 0x34;
    pub const WRITE_DMA: u8 = 0xca;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    pub const FLUSH: u8 = 0xe7;
    pub const FLUSH_EXT: u8 = 0xea;
    pub const IDENTIFY: u8 = 0xec;
}

/// Whether an ATA command writes (its answer must wait for the write to be committed).
pub fn is_write(command: u8) -> bool {
    matches!(
        command,
        op::WRITE | op::WRITE_EXT | op::WRITE_DMA | op::WRITE_DMA_EXT
    )
}

const LBA28_MAX: u64 = 0x0fff_ffff;
const LBA48_MASK: u64 = 0xffff_ffff_ffff;

/// The strings IDENTIFY DEVICE reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 20 characters at most.
    pub serial: String,
    /// 40 characters at most.
    pub model: String,
}

impl Identity {
    /// The same serial the PC's iSCSI disk has (its first 20 digits), so a disk keeps its
    /// identity across exports.
    pub fn for_pc(pc: &str) -> Identity {
        let mut serial = crate::base::diskid::serial_for(pc);
        serial.truncate(20);
        Identity {
            serial,
            model: "cowctl AoE disk".into(),
        }
    }
}

/// The registers of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    pub error: u8,
    pub status: u8,
    /// Sectors left to transfer (0 on success; CHECK POWER MODE answers 0xff).
    pub sectors: u8,
}

/// A request the AoE layer refuses with Bad Argument: more sectors than a frame carries
/// or than the frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadArgument;

/// Runs one ATA command; the data of a read or IDENTIFY is appended to `data` (the answer
/// frame being built, so it is read straight into place). `payload` is what followed the
/// ATA header (a write's data, maybe with Ethernet padding); `max_sectors` is what one
/// frame carries on this interface.
pub fn execute(
    a: &Ata,
    payload: &[u8],
    disk: &dyn Disk,
    identity: &Identity,
    max_sectors: u8,
    data: &mut FrameBuf,
) -> Result<Registers, BadArgument> {
    let done = |sectors: u8| Registers {
        error: 0,
        status: status::DRDY,
        sectors,
    };
    let failed = |error: u8| Registers {
        error,
        status: status::DRDY | status::ERR,
        sectors: a.sectors,
    };
    let (lba, write) = match a.command {
        op::IDENTIFY => {
            data.push(&identify(disk.size(), identity));
            return Ok(done(0));
        }
        op::CHECK_POWER_MODE => return Ok(done(0xff)),
        op::FLUSH | op::FLUSH_EXT => {
            return Ok(match disk.flush() {
                Ok(()) => done(0),
                Err(_) => failed(error::ABRT),
            })
        }
        op::READ | op::READ_DMA => (a.lba & LBA28_MAX, false),
        op::READ_EXT | op::READ_DMA_EXT => (a.lba & LBA48_MASK, false),
        op::WRITE | op::WRITE_DMA => (a.lba & LBA28_MAX, true),
        op::WRITE_EXT | op::WRITE_DMA_EXT => (a.lba & LBA48_MASK, true),
        _ => return Ok(failed(error::ABRT)),
    };
    let len = usize::from(a.sectors) * SECTOR;
    if a.sectors > max_sectors || (write && payload.len() < len) {
        return Err(BadArgument);
    }
    let sectors = disk.size() / SECTOR_BYTES;
    if lba.saturating_add(u64::from(a.sectors)) > sectors {
        return Ok(failed(error::IDNF));
    }
    let offset = lba * SECTOR_BYTES;
    if write {
        if disk.read_only() {
            return Ok(failed(error::ABRT));
        }
        // AoE has no flush: the caller commits a batch of writes before answering them.
        Ok(match disk.write_at(&payload[..len], offset) {
            Ok(()) => done(0),
            Err(DiskError::NoSpace | DiskError::ReadOnly | DiskError::Io) => failed(error::ABRT),
        })
    } else {
        let start = data.len();
        Ok(match disk.read_at(data.spare(len), offset) {
            Ok(()) => done(0),
            Err(_) => {
                data.truncate(start);
                failed(error::UNC)
            }
        })
    }
}

/// IDENTIFY DEVICE data (ATA8-ACS): an LBA48 disk of `size` bytes that supports FLUSH
/// CACHE (EXT), with a valid integrity word.
pub fn identify(size: u64, id: &Identity) -> [u8; SECTOR] {
    let sectors = size / SECTOR_BYTES;
    let mut w = [0u16; 256];
    w[0] = 0x0040; // fixed disk
                   // A CHS geometry for BIOSes that still ask: 16 heads, 63 sectors per track.
    let cylinders = (sectors / (16 * 63)).min(16383);
    w[1] = cylinders as u16;
    w[3] = 16;
    w[6] = 63;
    w[47] = 0x8001; // READ/WRITE MULTIPLE: one sector
    w[49] = 0x0300; // LBA and DMA
    w[53] = 0x0006; // words 64-70 and 88 are valid
    w[54] = cylinders as u16;
    w[55] = 16;
    w[56] = 63;
    w[57..59].copy_from_slice(&words(cylinders * 16 * 63)[..2]);
    w[60..62].copy_from_slice(&words(sectors.min(LBA28_MAX))[..2]);
    w[64] = 0x0003; // PIO modes 3 and 4
    w[80] = 0x01f0; // ATA/ATAPI-4 to ATA8-ACS
    w[82] = 0x4000;
    w[83] = 0x7400; // FLUSH CACHE EXT, FLUSH CACHE, 48-bit addresses
    w[84] = 0x4000;
    w[85] = 0x4000;
    w[86] = 0x3400;
    w[87] = 0x4000;
    w[88] = 0x003f; // UDMA modes 0-5 supported (none selected)
    w[100..104].copy_from_slice(&words(sectors));
    let mut b = [0u8; SECTOR];
    for (i, word) in w.iter().enumerate() {
        b[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
    }
    ata_string(&mut b[20..40], &id.serial);
    ata_string(&mut b[46..54], env!("CARGO_PKG_VERSION"));
    ata_string(&mut b[54..94], &id.model);
    // Word 255: signature 0xa5 and a checksum that makes all 512 bytes sum to zero.
    b[510] = 0xa5;
    let sum = b[..511].iter().fold(0u8, |s, x| s.wrapping_add(*x));
    b[511] = sum.wrapping_neg();
    b
}

/// A number as IDENTIFY's words hold it: least significant word first.
fn words(x: u64) -> [u16; 4] {
    let b = x.to_le_bytes();
    std::array::from_fn(|i| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
}

/// An ATA string: space padded, two characters per word, the first in the high byte.
fn ata_string(out: &mut [u8], s: &str) {
    let mut chars = s
        .bytes()
        .filter(|c| c.is_ascii_graphic() || *c == b' ')
        .chain(std::iter::repeat(b' '));
    for pair in out.chunks_exact_mut(2) {
        pair[1] = chars.next().unwrap_or(b' ');
        pair[0] = chars.next().unwrap_or(b' ');
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // a small memory disk
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Mem(Mutex<Vec<u8>>);

    impl Disk for Mem {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
            let d = self.0.lock().unwrap();
            let at = offset as usize;
            buf.copy_from_slice(&d[at..at + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
            let mut d = self.0.lock().unwrap();
            let at = offset as usize;
            d[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> Result<(), DiskError> {
            Ok(())
        }
        fn trim(&self, _: u64, _: u64) -> Result<(), DiskError> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64) -> Result<(), DiskError> {
            Ok(())
        }
    }

    fn ata(command: u8, lba: u64, sectors: u8) -> Ata {
        Ata {
            aflags: 0,
            feature: 0,
            sectors,
            command,
            lba,
        }
    }

    /// Runs a command; its registers and the data it returned.
    fn run(
        a: &Ata,
        payload: &[u8],
        disk: &Mem,
        max: u8,
    ) -> Result<(Registers, Vec<u8>), BadArgument> {
        let mut data = FrameBuf::default();
        execute(a, payload, disk, &Identity::for_pc("pc"), max, &mut data)
            .map(|r| (r, data.to_vec()))
    }

    fn word(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
    }

    #[test]
    fn identify_reports_the_size_and_strings() {
        let id = Identity::for_pc("pc-1");
        let size = 0x1_2345_6789u64 * 512;
        let b = identify(size, &id);
        let lba48: u64 = (0..4)
            .map(|i| u64::from(word(&b, 100 + i)) << (16 * i))
            .sum();
        assert_eq!(lba48, 0x1_2345_6789);
        assert_eq!(
            u32::from(word(&b, 60)) | u32::from(word(&b, 61)) << 16,
            0x0fff_ffff
        );
        assert_ne!(word(&b, 83) & (1 << 10), 0, "LBA48");
        // The model reads in order once each word's bytes are swapped.
        let model: Vec<u8> = b[54..94].chunks(2).flat_map(|p| [p[1], p[0]]).collect();
        assert!(String::from_utf8(model)
            .unwrap()
            .starts_with("cowctl AoE disk   "));
        assert_eq!(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0);
        assert_eq!(id, Identity::for_pc("pc-1"));
        assert_ne!(id.serial, Identity::for_pc("pc-2").serial);
    }

    #[test]
    fn reads_and_writes_hit_the_right_sectors() {
        let disk = Mem(Mutex::new(vec![0; 64 * 512]));
        let data = vec![7u8; 2 * 512];
        let (w, _) = run(&ata(op::WRITE_EXT, 10, 2), &data, &disk, 2).unwrap();
        assert_eq!((w.status, w.error), (status::DRDY, 0));
        let (_, r) = run(&ata(op::READ, 9, 2), &[], &disk, 2).unwrap();
        assert_eq!(&r[..512], &[0u8; 512][..]);
        assert_eq!(&r[512..], &[7u8; 512][..]);
        // LBA28 commands ignore the upper LBA bits.
        let (_, r) = run(&ata(op::READ, 10 | 1 << 40, 1), &[], &disk, 2).unwrap();
        assert_eq!(r, vec![7u8; 512]);
    }

    #[test]
    fn bad_requests_get_errors_not_io() {
        let disk = Mem(Mutex::new(vec![0; 64 * 512]));
        let (past, data) = run(&ata(op::READ_EXT, 63, 2), &[], &disk, 2).unwrap();
        assert!(data.is_empty());
        assert_eq!((past.status, past.error), (0x41, error::IDNF));
        let (huge, _) = run(&ata(op::READ_EXT, u64::MAX, 1), &[], &disk, 2).unwrap();
        assert_eq!(huge.error, error::IDNF);
        assert_eq!(run(&ata(op::READ, 0, 3), &[], &disk, 2), Err(BadArgument));
        assert_eq!(
            run(&ata(op::WRITE, 0, 2), &[0; 600], &disk, 2),
            Err(BadArgument),
            "a write with less data than it claims"
        );
        let (unknown, _) = run(&ata(0x92, 0, 0), &[], &disk, 2).unwrap();
        assert_eq!((unknown.status, unknown.error), (0x41, error::ABRT));
        let (power, _) = run(&ata(op::CHECK_POWER_MODE, 0, 0), &[], &disk, 2).unwrap();
        assert_eq!(power.sectors, 0xff);
    }
}
