//! The fixed newstyle handshake: greeting, client flags, then options until the client
//! picks an export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) or leaves. Lengths the client sends
//! are checked before anything is allocated; an option too long to be legal is skipped in
//! bounded pieces and refused.

use std::io::{self, Read, Write};

use super::wire::*;

/// What the handshake needs to know of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub read_only: bool,
    /// The preferred block size: I/O aligned to it needs no copy-out of partial chunks.
    pub preferred_block: u32,
    pub description: String,
}

/// The exports a server offers, looked up by name.
pub trait Exports {
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
    fn names(&self) -> Vec<String>;
}

/// The handshake's result.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Transmission starts on this export.
    Go { name: String, info: ExportInfo },
    /// The client aborted or asked for an unknown export by NBD_OPT_EXPORT_NAME (which
    /// can only be refused by closing).
    Close,
}

/// Options a client may send before it is taken for a denial of service.
const MAX_OPTIONS: usize = 64;

pub fn transmission_flags(info: &ExportInfo) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
    if info.read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    }
    f
}

pub fn handshake<S: Read + Write>(s: &mut S, exports: &dyn Exports) -> io::Result<Outcome> {
    let no_zeroes = greet(s)?;
    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; 16];
        s.read_exact(&mut head)?;
        if be64(&head[0..8]) != IHAVEOPT {
            return Err(invalid("an option without the IHAVEOPT magic".into()));
        }
        let option = be32(&head[8..12]);
        let len = be32(&head[12..16]);
        if len > MAX_OPTION_LEN {
            skip(s, u64::from(len))?;
            reply(s, option, REP_ERR_TOO_BIG, b"option data too long")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => return export_name(s, exports, data, no_zeroes),
            OPT_ABORT => {
                // The client drops the connection after this; it may already have.
                let _ = reply(s, option, REP_ACK, &[]);
                return Ok(Outcome::Close);
            }
            OPT_LIST if !data.is_empty() => {
                reply(s, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?
            }
            OPT_LIST => list(s, option, exports)?,
            OPT_INFO | OPT_GO => {
                if let Some(go) = info_or_go(s, option, &data, exports)? {
                    return Ok(go);
                }
            }
            // STARTTLS, structured replies, meta contexts and anything newer: not offered,
            // so the client carries on with simple replies.
            _ => reply(s, option, REP_ERR_UNSUP, &[])?,
        }
    }
    Err(invalid(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

/// The server's greeting, then the client's flags; whether the client asked for no zeroes.
fn greet<S: Read + Write>(s: &mut S) -> io::Result<bool> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting)?;
    s.flush()?;
    let client_flags = read_u32(s)?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(invalid(format!(
            "unknown client flags 0x{client_flags:08x}"
        )));
    }
    Ok(client_flags & CLIENT_NO_ZEROES != 0)
}

/// NBD_OPT_EXPORT_NAME: the export's size and flags, or (an unknown name) the connection
/// closed, the only refusal this option has.
fn export_name<S: Write>(
    s: &mut S,
    exports: &dyn Exports,
    data: Vec<u8>,
    no_zeroes: bool,
) -> io::Result<Outcome> {
    let Some(info) = std::str::from_utf8(&data)
        .ok()
        .and_then(|n| exports.lookup(n))
    else {
        return Ok(Outcome::Close);
    };
    let mut b = Vec::with_capacity(10 + 124);
    b.extend_from_slice(&info.size.to_be_bytes());
    b.extend_from_slice(&transmission_flags(&info).to_be_bytes());
    if !no_zeroes {
        b.extend_from_slice(&[0u8; 124]);
    }
    s.write_all(&b)?;
    s.flush()?;
    let name = String::from_utf8(data).expect("checked above");
    Ok(Outcome::Go { name, info })
}

/// NBD_OPT_LIST: each export's name, then the ACK.
fn list<S: Write>(s: &mut S, option: u32, exports: &dyn Exports) -> io::Result<()> {
    for name in exports.names() {
        let mut d = Vec::with_capacity(4 + name.len());
        d.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        write_option_reply(s, option, REP_SERVER, &d)?;
    }
    reply(s, option, REP_ACK, &[])
}

/// NBD_OPT_INFO / NBD_OPT_GO: the export's information, or why not; a GO that succeeds
/// is the handshake's outcome.
fn info_or_go<S: Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    exports: &dyn Exports,
) -> io::Result<Option<Outcome>> {
    match parse_info_request(data) {
        Err(why) => reply(s, option, REP_ERR_INVALID, why.as_bytes())?,
        Ok((name, requests)) => match exports.lookup(name) {
            None => {
                let msg = format!("no export named {name:?}");
                reply(s, option, REP_ERR_UNKNOWN, msg.as_bytes())?
            }
            Some(info) => {
                send_info(s, option, name, &info, &requests)?;
                reply(s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Some(Outcome::Go {
                        name: name.to_string(),
                        info,
                    }));
                }
            }
        },
    }
    Ok(None)
}

/// NBD_OPT_INFO / NBD_OPT_GO data: a 32-bit name length, the name, a 16-bit count of
/// information requests and that many 16-bit types — every length checked against the data.
fn parse_info_request(data: &[u8]) -> Result<(&str, Vec<u16>), &'static str> {
    if data.len() < 6 {
        return Err("option data shorter than a name length and a request count");
    }
    let name_len = usize::try_from(be32(&data[0..4])).map_err(|_| "name too long")?;
    let rest = &data[4..];
    if name_len > rest.len().saturating_sub(2) {
        return Err("the name length reaches past the option data");
    }
    let name = std::str::from_utf8(&rest[..name_len]).map_err(|_| "the name is not UTF-8")?;
    let rest = &rest[name_len..];
    let count = usize::from(be16(&rest[0..2]));
    let items = &rest[2..];
    if items.len() != count * 2 {
        return Err("the information request count does not match the option length");
    }
    Ok((name, items.chunks_exact(2).map(be16).collect()))
}

fn send_info<W: Write>(
    w: &mut W,
    option: u32,
    name: &str,
    info: &ExportInfo,
    requests: &[u16],
) -> io::Result<()> {
    let mut export = Vec::with_capacity(12);
    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    export.extend_from_slice(&info.size.to_be_bytes());
    export.extend_from_slice(&transmission_flags(info).to_be_bytes());
    write_option_reply(w, option, REP_INFO, &export)?;
    // Block sizes are always sent (as qemu-nbd does): they are what lets a client align
    // its I/O to the COW's chunks.
    let mut sizes = Vec::with_capacity(14);
    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    sizes.extend_from_slice(&1u32.to_be_bytes());
    sizes.extend_from_slice(&info.preferred_block.to_be_bytes());
    sizes.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    write_option_reply(w, option, REP_INFO, &sizes)?;
    if requests.contains(&INFO_NAME) {
        let mut d = INFO_NAME.to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        write_option_reply(w, option, REP_INFO, &d)?;
    }
    if requests.contains(&INFO_DESCRIPTION) {
        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
        d.extend_from_slice(info.description.as_bytes());
        write_option_reply(w, option, REP_INFO, &d)?;
    }
    Ok(())
}

fn reply<W: Write>(w: &mut W, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    write_option_reply(w, option, kind, data)?;
    w.flush()
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads and drops `len` bytes through a fixed buffer.
pub(super) fn skip(r: &mut impl Read, mut len: u64) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    while len > 0 {
        let n = usize::try_from(len.min(buf.len() as u64)).expect("at most 8 KiB");
        r.read_exact(&mut buf[..n])?;
        len -= n as u64;
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
