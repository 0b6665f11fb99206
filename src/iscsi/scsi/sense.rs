//! Sense data (SPC-4 §4.5.3): fixed format, with the sense-key-specific field pointer for
//! an invalid CDB field and the INFORMATION field where SBC-3 asks for it.

/// SCSI status codes.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Key {
    NoSense = 0x0,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: Key,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (e.g. the offset of a miscompare).
    pub information: Option<u32>,
    /// Byte (and bit) of the CDB or parameter list that is wrong.
    pub field: Option<Field>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

impl Sense {
    pub const fn new(key: Key, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    pub const INVALID_OPCODE: Sense = Sense::new(Key::IllegalRequest, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(Key::IllegalRequest, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(Key::IllegalRequest, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(Key::IllegalRequest, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETERS: Sense = Sense::new(Key::IllegalRequest, 0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(Key::IllegalRequest, 0x1a, 0x00);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(Key::IllegalRequest, 0x39, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(Key::DataProtect, 0x27, 0x00);
    /// What a thin-provisioned device answers when it has no room left (a full COW).
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(Key::DataProtect, 0x27, 0x07);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(Key::MediumError, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(Key::MediumError, 0x0c, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(Key::Miscompare, 0x1d, 0x00);
    pub const NO_SENSE: Sense = Sense::new(Key::NoSense, 0x00, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(Key::HardwareError, 0x44, 0x00);
    pub const COMMANDS_CLEARED_BY_ANOTHER: Sense = Sense::new(Key::UnitAttention, 0x2f, 0x00);

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(Field {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::INVALID_FIELD_IN_CDB
        }
    }

    pub fn invalid_parameter_field(byte: u16) -> Sense {
        Sense {
            field: Some(Field {
                in_cdb: false,
                byte,
                bit: None,
            }),
            ..Sense::INVALID_FIELD_IN_PARAMETERS
        }
    }

    pub fn with_information(self, information: u32) -> Sense {
        Sense {
            information: Some(information),
            ..self
        }
    }

    /// Fixed-format sense data, 18 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key as u8;
        if let Some(info) = self.information {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(f) = self.field {
            s[15] = 0x80 | if f.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = f.bit {
                s[15] |= 0x08 | (bit & 7);
            }
            s[16..18].copy_from_slice(&f.byte.to_be_bytes());
        }
        s
    }

    /// Descriptor-format sense data (for REQUEST SENSE with DESC=1), 8 bytes.
    pub fn descriptor(&self) -> [u8; 8] {
        [0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format() {
        let s = Sense::invalid_cdb_field(1, Some(3)).fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 5);
        assert_eq!((s[12], s[13]), (0x24, 0));
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 3);
        assert_eq!(&s[16..18], &[0, 1]);
        let m = Sense::MISCOMPARE_DURING_VERIFY.with_information(7).fixed();
        assert_eq!(m[0], 0xf0);
        assert_eq!(&m[3..7], &[0, 0, 0, 7]);
    }
}
