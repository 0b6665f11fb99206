//! MODE SENSE (6) and (10) (SPC-4 §6.11, §6.12): the caching page (the write cache is on,
//! as it is: writes are durable at SYNCHRONIZE CACHE or FUA), the control page and the
//! informational exceptions page. Nothing is changeable, so there is no MODE SELECT.

use super::sense::Sense;

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
const ALL: u8 = 0x3f;

/// What MODE SENSE needs of the disk.
#[derive(Debug, Clone, Copy)]
pub struct Disk {
    pub blocks: u64,
    pub block_len: u32,
    pub read_only: bool,
}

/// One page as current or default values (`changeable`: the mask of changeable bits,
/// all zero).
fn page(code: u8, changeable: bool) -> Vec<u8> {
    let mut p = match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[2] = 0x04; // WCE
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering allowed
            p[8] = 0xff; // BUSY TIMEOUT PERIOD: unlimited
            p[9] = 0xff;
            p
        }
        _ => vec![0u8; 12], // informational exceptions: nothing reported
    };
    if changeable {
        p.iter_mut().for_each(|b| *b = 0);
    }
    p[0] = code;
    p[1] = super::inquiry::be16(p.len() - 2)[1];
    p
}

/// The MODE SENSE reply, whole (the caller truncates it to the allocation length).
pub fn sense(
    disk: Disk,
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pc: u8,
    code: u8,
    subpage: u8,
) -> Result<Vec<u8>, Sense> {
    if pc == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED);
    }
    // No page has subpages: only 0, or 0xff (all subpages) with any page.
    if subpage != 0 && subpage != 0xff {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let codes: &[u8] = match code {
        ALL => &[CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS],
        CACHING => &[CACHING],
        CONTROL => &[CONTROL],
        INFORMATIONAL_EXCEPTIONS => &[INFORMATIONAL_EXCEPTIONS],
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    };
    let pages: Vec<u8> = codes.iter().flat_map(|&c| page(c, pc == 1)).collect();
    // WP when read-only; DPOFUA: DPO and FUA are supported.
    let device_specific = 0x10 | if disk.read_only { 0x80 } else { 0 };
    let long = ten && llbaa;
    let mut descriptor = Vec::new();
    if !dbd {
        if long {
            descriptor.extend_from_slice(&disk.blocks.to_be_bytes());
            descriptor.extend_from_slice(&[0; 4]);
            descriptor.extend_from_slice(&disk.block_len.to_be_bytes());
        } else {
            let blocks = u32::try_from(disk.blocks).unwrap_or(u32::MAX);
            descriptor.extend_from_slice(&blocks.to_be_bytes());
            descriptor.push(0);
            descriptor.extend_from_slice(&disk.block_len.to_be_bytes()[1..]);
        }
    }
    let mut out = Vec::new();
    if ten {
        let len = 6 + descriptor.len() + pages.len();
        out.extend_from_slice(&super::inquiry::be16(len));
        out.extend_from_slice(&[0, device_specific, u8::from(long), 0]);
        out.extend_from_slice(&super::inquiry::be16(descriptor.len()));
    } else {
        let len = 3 + descriptor.len() + pages.len();
        let byte = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
        out.extend_from_slice(&[byte(len), 0, device_specific, byte(descriptor.len())]);
    }
    out.extend_from_slice(&descriptor);
    out.extend_from_slice(&pages);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: Disk = Disk {
        blocks: 1 << 21,
        block_len: 512,
        read_only: false,
    };

    #[test]
    fn caching_page_with_a_block_descriptor() {
        let d = sense(DISK, false, false, false, 0, CACHING, 0).unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[2], 0x10);
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &(1u32 << 21).to_be_bytes());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d[12], CACHING);
        assert_eq!(d[14] & 0x04, 0x04, "WCE");
    }

    #[test]
    fn all_pages_long_descriptor_and_refusals() {
        let d = sense(DISK, true, false, true, 0, ALL, 0).unwrap();
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[4], 1, "LONGLBA");
        assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
        assert_eq!(d[8 + 16], CACHING);
        assert!(sense(DISK, false, false, false, 3, ALL, 0).is_err());
        assert!(sense(DISK, false, false, false, 0, 0x19, 0).is_err());
        assert!(sense(DISK, false, false, false, 0, CACHING, 1).is_err());
        let ro = Disk {
            read_only: true,
            ..DISK
        };
        assert_eq!(
            sense(ro, false, true, false, 0, CONTROL, 0).unwrap()[2],
            0x90
        );
    }
}
