//! The NBD wire format (NetworkBlockDevice/nbd doc/proto.md): magics, flags, option and
//! command numbers, and typed requests. Everything is big-endian.

use std::io::{self, Read, Write};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Information types of NBD_OPT_INFO / NBD_OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// The largest READ or WRITE payload served (the spec's portable maximum, 32 MiB).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Option data longer than this is skipped and answered NBD_REP_ERR_TOO_BIG: the longest
/// legal option (NBD_OPT_GO with a 4096-byte name) is far shorter.
pub const MAX_OPTION_LEN: u32 = 16 << 10;

/// The error values a reply may carry (proto.md "Error values").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    Perm = 1,
    Io = 5,
    Inval = 22,
    NoSpc = 28,
}

/// A transmission-phase command, from the request's type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    /// Anything else, block status included (it needs a meta context we never agree to).
    Other(u16),
}

impl From<u16> for Command {
    fn from(t: u16) -> Self {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }
}

/// One request header (28 bytes); a WRITE's payload follows it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

pub const REQUEST_LEN: usize = 28;

/// Why a request header could not be read.
#[derive(Debug)]
pub enum RequestError {
    /// The client closed the connection between requests.
    Closed,
    BadMagic(u32),
    Io(io::Error),
}

impl Request {
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, RequestError> {
        let magic = be32(&b[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(RequestError::BadMagic(magic));
        }
        Ok(Request {
            flags: be16(&b[4..6]),
            command: Command::from(be16(&b[6..8])),
            handle: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            length: be32(&b[24..28]),
        })
    }

    pub fn read_from(r: &mut impl Read) -> Result<Request, RequestError> {
        let mut b = [0u8; REQUEST_LEN];
        // EOF before the first byte is a clean close; within a header it is not.
        let mut got = 0;
        while got < REQUEST_LEN {
            match r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Err(RequestError::Closed),
                Ok(0) => return Err(RequestError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RequestError::Io(e)),
            }
        }
        Request::decode(&b)
    }

    /// The byte range `offset..offset + len`, or None when it wraps past u64.
    pub fn end(&self, len: u64) -> Option<u64> {
        self.offset.checked_add(len)
    }
}

/// Writes a simple reply header; a successful READ's data follows it.
pub fn write_simple_reply(w: &mut impl Write, handle: u64, error: u32) -> io::Result<()> {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    w.write_all(&b)
}

/// Writes an option reply (fixed newstyle).
pub fn write_option_reply(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_header_decodes_field_by_field() {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        b[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::decode(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_FUA,
                command: Command::Write,
                handle: 0x1122_3344_5566_7788,
                offset: 4096,
                length: 512
            }
        );
        b[0] ^= 1;
        assert!(matches!(
            Request::decode(&b),
            Err(RequestError::BadMagic(_))
        ));
    }

    #[test]
    fn eof_between_requests_is_a_clean_close_but_not_inside_one() {
        assert!(matches!(
            Request::read_from(&mut &[][..]),
            Err(RequestError::Closed)
        ));
        assert!(matches!(
            Request::read_from(&mut &[0x25u8, 0x60][..]),
            Err(RequestError::Io(_))
        ));
    }
}
