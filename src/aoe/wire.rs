//! The ATA over Ethernet wire format (AoE revision 1, Coile & Hopkins, AoEr11): the
//! Ethernet header, the common AoE header, and the bodies of the ATA, Query Config, Mac
//! Mask List and Reserve/Release commands. Pure bytes; every field a frame claims is checked
//! against the frame's length before it is read.

/// The AoE ethertype.
pub const ETHERTYPE: u16 = 0x88a2;
pub const VERSION: u8 = 1;
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Shelf and slot a broadcast names.
pub const ANY_SHELF: u16 = 0xffff;
pub const ANY_SLOT: u8 = 0xff;

/// Ethernet (14) + AoE (10) header bytes.
pub const HEADER_LEN: usize = 24;
/// The ATA command's own header after the AoE header.
pub const ATA_LEN: usize = 12;
/// Query Config's header after the AoE header (before the config string).
pub const CONFIG_LEN: usize = 8;
/// Mac Mask List's header after the AoE header (before its directives).
pub const MASK_LEN: usize = 4;
/// Reserve/Release's header after the AoE header (before its MACs).
pub const RESREL_LEN: usize = 2;
/// The longest config string.
pub const MAX_CONFIG: usize = 1024;

pub const FLAG_RESPONSE: u8 = 0x08;
pub const FLAG_ERROR: u8 = 0x04;

/// AoE command codes.
pub mod command {
    pub const ATA: u8 = 0;
    pub const QUERY_CONFIG: u8 = 1;
    pub const MAC_MASK: u8 = 2;
    pub const RESERVE_RELEASE: u8 = 3;
}

/// Errors an AoE response can carry (the Error field with the E flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Error {
    UnrecognizedCommand = 1,
    BadArgument = 2,
    DeviceUnavailable = 3,
    ConfigStringPresent = 4,
    UnsupportedVersion = 5,
    TargetReserved = 6,
}

/// ATA header flags.
pub mod aflags {
    /// LBA48 addressing.
    pub const EXTENDED: u8 = 0x40;
    pub const DEVICE: u8 = 0x10;
    pub const ASYNC: u8 = 0x02;
    pub const WRITE: u8 = 0x01;
}

/// The fields of the common header, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub version: u8,
    pub flags: u8,
    pub major: u16,
    pub minor: u8,
    pub command: u8,
    pub tag: [u8; 4],
}

impl Header {
    /// The header of an AoE frame, or None for anything shorter or of another type.
    pub fn parse(frame: &[u8]) -> Option<Header> {
        if frame.len() < HEADER_LEN || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
            return None;
        }
        Some(Header {
            dst: frame[0..6].try_into().ok()?,
            src: frame[6..12].try_into().ok()?,
            version: frame[14] >> 4,
            flags: frame[14] & 0x0f,
            major: u16::from_be_bytes([frame[16], frame[17]]),
            minor: frame[18],
            command: frame[19],
            tag: frame[20..24].try_into().ok()?,
        })
    }

    /// The header of our answer: to the asker, from `mac`, as `major.minor`.
    pub fn reply(
        &self,
        mac: [u8; 6],
        major: u16,
        minor: u8,
        error: Option<Error>,
    ) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..6].copy_from_slice(&self.src);
        h[6..12].copy_from_slice(&mac);
        h[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        h[14] = (VERSION << 4) | FLAG_RESPONSE | if error.is_some() { FLAG_ERROR } else { 0 };
        h[15] = error.map_or(0, |e| e as u8);
        h[16..18].copy_from_slice(&major.to_be_bytes());
        h[18] = minor;
        h[19] = self.command;
        h[20..24].copy_from_slice(&self.tag);
        h
    }
}

/// The ATA command's registers, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ata {
    pub aflags: u8,
    pub feature: u8,
    pub sectors: u8,
    pub command: u8,
    /// Six bytes, least significant first.
    pub lba: u64,
}

impl Ata {
    pub fn parse(body: &[u8]) -> Option<Ata> {
        let b = body.get(..ATA_LEN)?;
        let mut lba = 0u64;
        for (i, byte) in b[4..10].iter().enumerate() {
            lba |= u64::from(*byte) << (8 * i);
        }
        Some(Ata {
            aflags: b[0],
            feature: b[1],
            sectors: b[2],
            command: b[3],
            lba,
        })
    }

    /// The registers of the answer: error and status where feature and command were.
    pub fn reply(&self, error: u8, sectors: u8, status: u8) -> [u8; ATA_LEN] {
        let mut b = [0u8; ATA_LEN];
        b[0] = self.aflags;
        b[1] = error;
        b[2] = sectors;
        b[3] = status;
        b[4..10].copy_from_slice(&self.lba.to_le_bytes()[..6]);
        b
    }
}

/// Query Config's fields, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config<'a> {
    /// CCmd: 0 read, 1 test, 2 test prefix, 3 set, 4 force set.
    pub ccmd: u8,
    pub string: &'a [u8],
}

impl<'a> Config<'a> {
    /// None when the frame is shorter than its header or than the string it claims.
    pub fn parse(body: &'a [u8]) -> Option<Config<'a>> {
        let b = body.get(..CONFIG_LEN)?;
        let len = usize::from(u16::from_be_bytes([b[6], b[7]]));
        let string = body.get(CONFIG_LEN..CONFIG_LEN + len)?;
        Some(Config {
            ccmd: b[5] & 0x0f,
            string,
        })
    }
}

/// The Query Config answer's header (the config string follows).
pub fn config_reply(
    buffers: u16,
    firmware: u16,
    sectors: u8,
    ccmd: u8,
    string_len: usize,
) -> [u8; CONFIG_LEN] {
    let mut b = [0u8; CONFIG_LEN];
    b[0..2].copy_from_slice(&buffers.to_be_bytes());
    b[2..4].copy_from_slice(&firmware.to_be_bytes());
    b[4] = sectors;
    b[5] = (VERSION << 4) | (ccmd & 0x0f);
    b[6..8].copy_from_slice(&u16::try_from(string_len).unwrap_or(u16::MAX).to_be_bytes());
    b
}

/// A Mac Mask List directive: 0 none, 1 add, 2 delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    pub command: u8,
    pub mac: [u8; 6],
}

/// Mac Mask List's fields, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// MCmd: 0 read, 1 edit.
    pub mcmd: u8,
    pub directives: Vec<Directive>,
}

impl Mask {
    pub fn parse(body: &[u8]) -> Option<Mask> {
        let b = body.get(..MASK_LEN)?;
        let count = usize::from(b[3]);
        let list = body.get(MASK_LEN..MASK_LEN + 8 * count)?;
        let directives = list
            .chunks_exact(8)
            .map(|d| Directive {
                command: d[1],
                mac: d[2..8].try_into().expect("6 bytes"),
            })
            .collect();
        Some(Mask {
            mcmd: b[1],
            directives,
        })
    }
}

/// Mac Mask List errors (MError).
pub mod mask_error {
    pub const UNSPECIFIED: u8 = 1;
    pub const BAD_DIRECTIVE: u8 = 2;
    pub const LIST_FULL: u8 = 3;
}

/// Reserve/Release's fields: RCmd 0 read, 1 set, 2 force set, and the MACs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resrel {
    pub rcmd: u8,
    pub macs: Vec<[u8; 6]>,
}

impl Resrel {
    pub fn parse(body: &[u8]) -> Option<Resrel> {
        let b = body.get(..RESREL_LEN)?;
        let count = usize::from(b[1]);
        let list = body.get(RESREL_LEN..RESREL_LEN + 6 * count)?;
        Some(Resrel {
            rcmd: b[0],
            macs: list
                .chunks_exact(6)
                .map(|m| m.try_into().expect("6 bytes"))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut f = vec![0u8; HEADER_LEN + ATA_LEN];
        f[0..6].copy_from_slice(&BROADCAST);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        f[14] = 0x10;
        f[16..18].copy_from_slice(&7u16.to_be_bytes());
        f[18] = 3;
        f[20..24].copy_from_slice(&[1, 2, 3, 4]);
        f[24] = aflags::EXTENDED;
        f[26] = 2;
        f[27] = 0x24;
        f[28..34].copy_from_slice(&[0x10, 0x20, 0, 0, 0, 1]);
        let h = Header::parse(&f).unwrap();
        assert_eq!((h.version, h.major, h.minor, h.command), (1, 7, 3, 0));
        let a = Ata::parse(&f[HEADER_LEN..]).unwrap();
        assert_eq!(a.lba, 0x0100_0000_2010);
        let r = h.reply([2, 0, 0, 0, 0, 2], 7, 3, Some(Error::BadArgument));
        assert_eq!(&r[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(r[14], 0x10 | FLAG_RESPONSE | FLAG_ERROR);
        assert_eq!(r[15], 2);
        assert_eq!(&a.reply(0, 0, 0x40)[4..10], &f[28..34]);
        assert!(Header::parse(&f[..20]).is_none());
    }

    #[test]
    fn claimed_lengths_past_the_frame_are_refused() {
        let mut c = vec![0u8; CONFIG_LEN + 4];
        c[6..8].copy_from_slice(&5u16.to_be_bytes());
        assert!(Config::parse(&c).is_none());
        c[6..8].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(Config::parse(&c).unwrap().string.len(), 4);
        let m = vec![0, 1, 0, 2, 0, 1, 1, 2, 3, 4, 5, 6];
        assert!(
            Mask::parse(&m).is_none(),
            "two directives claimed, one there"
        );
    }
}
