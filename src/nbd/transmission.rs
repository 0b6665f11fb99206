//! The transmission phase: requests in, simple replies out, one at a time per connection.
//! Every request is checked before the device sees it — magic, flags, offset + length
//! overflow, the export's end, the payload cap — so a device only ever gets in-range I/O,
//! and no buffer is sized by the client beyond `MAX_PAYLOAD`. Replies are buffered and
//! sent when no further request is already waiting, so a deep queue costs few syscalls.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::BorrowedFd;

use super::handshake::skip;
use super::wire::*;
use crate::engine::Extent;

/// Reads at least this large go out straight from the page cache; smaller ones are copied
/// into the reply buffer, so a deep queue of them still leaves in few sends.
const SEND_FILE_MIN: usize = 64 << 10;
/// Payloads move in pieces of at most this size: a request's length sizes no buffer, so a
/// client that sends 32 MiB WRITE headers and stalls costs the service nothing.
const PIECE: usize = 1 << 20;

/// Where replies go. A socket sends file bytes with sendfile (one copy, in the kernel);
/// anything else reads them into memory and writes them.
pub trait Sink: Write {
    /// A reply header followed by file bytes, as one stream.
    fn send_reply_from_files(&mut self, header: &[u8], extents: &[Extent<'_>]) -> io::Result<()> {
        self.write_all(header)?;
        for e in extents {
            self.send_file(e.fd, e.offset, e.len)?;
        }
        Ok(())
    }

    fn send_file(&mut self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<()> {
        let mut buf = vec![0u8; len.min(1 << 20)];
        let (mut offset, mut left) = (offset, len);
        while left > 0 {
            let n = left.min(buf.len());
            let got = nix::sys::uio::pread(
                fd,
                &mut buf[..n],
                i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?,
            )?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.write_all(&buf[..got])?;
            offset += got as u64;
            left -= got;
        }
        Ok(())
    }
}

impl Sink for Vec<u8> {}

/// The block device behind an export. Offsets and lengths are already checked.
pub trait Device {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno>;
    /// Where a read's bytes lie in files, so large reads can go out with sendfile; None
    /// when the device has no files (then `read_at` serves).
    fn extents(&self, _offset: u64, _len: usize) -> Option<Result<Vec<Extent<'_>>, Errno>> {
        None
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Errno>;
    fn flush(&self) -> Result<(), Errno>;
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno>;
    fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), Errno>;
}

/// How a connection's transmission phase ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// NBD_CMD_DISC, or the client closed between requests.
    Disconnected,
    /// The client broke the protocol (bad magic, an oversized WRITE): the connection is closed.
    ProtocolError(String),
}

const KNOWN_FLAGS: u16 = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO | (1 << 2) | (1 << 3);

/// Serves requests until the client leaves. I/O errors on the connection are returned.
pub fn serve<R: Read, W: Sink>(
    r: &mut BufReader<R>,
    w: &mut W,
    device: &dyn Device,
    size: u64,
    read_only: bool,
) -> io::Result<End> {
    let mut scratch: Vec<u8> = Vec::new();
    loop {
        // Send what is buffered when no further request is already read, before a read
        // that may block.
        if r.buffer().is_empty() {
            w.flush()?;
        }
        let req = match Request::read_from(r) {
            Ok(req) => req,
            Err(RequestError::Closed) => return Ok(End::Disconnected),
            Err(RequestError::BadMagic(m)) => {
                w.flush()?;
                return Ok(End::ProtocolError(format!(
                    "request magic 0x{m:08x} is not NBD_REQUEST_MAGIC"
                )));
            }
            Err(RequestError::Io(e)) => return Err(e),
        };
        let len = u64::from(req.length);
        // A WRITE's payload must be consumed even when the request is refused, or the
        // stream loses its framing; past the cap it is not worth reading.
        if req.command == Command::Write && req.length > MAX_PAYLOAD {
            w.flush()?;
            return Ok(End::ProtocolError(format!(
                "a WRITE of {} bytes is over the {MAX_PAYLOAD}-byte maximum payload",
                req.length
            )));
        }
        let in_range = req.end(len).is_some_and(|end| end <= size);
        let error = if req.flags & !KNOWN_FLAGS != 0 {
            if req.command == Command::Write {
                skip(r, len)?;
            }
            Err(Errno::Inval)
        } else {
            match req.command {
                Command::Read => {
                    if req.length > MAX_PAYLOAD || !in_range {
                        Err(Errno::Inval)
                    } else if let Some(extents) = (req.length as usize >= SEND_FILE_MIN)
                        .then(|| device.extents(req.offset, req.length as usize))
                        .flatten()
                        .filter(|e| worth_sending(e.as_ref(), req.length as usize))
                    {
                        match extents {
                            Ok(extents) => {
                                let mut header = Vec::with_capacity(16);
                                write_simple_reply(&mut header, req.handle, 0)?;
                                w.send_reply_from_files(&header, &extents)?;
                                continue;
                            }
                            Err(e) => Err(e),
                        }
                    } else {
                        let n = req.length as usize;
                        scratch.resize(n.min(PIECE), 0);
                        // The first piece is read before the reply is sent, so an error
                        // can still be reported; one later on can only end the connection.
                        let first = n.min(PIECE);
                        match device.read_at(&mut scratch[..first], req.offset) {
                            Ok(()) => {
                                write_simple_reply(w, req.handle, 0)?;
                                w.write_all(&scratch[..first])?;
                                let mut done = first;
                                while done < n {
                                    let k = (n - done).min(PIECE);
                                    device
                                        .read_at(&mut scratch[..k], req.offset + done as u64)
                                        .map_err(|e| {
                                            io::Error::other(format!(
                                                "a read failed midway ({e:?})"
                                            ))
                                        })?;
                                    w.write_all(&scratch[..k])?;
                                    done += k;
                                }
                                continue;
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
                Command::Write => {
                    // Taken in pieces as they arrive, each written before the next is read.
                    let n = req.length as usize;
                    scratch.resize(n.min(PIECE), 0);
                    let writable = !read_only && in_range;
                    let mut result = Ok(());
                    let mut done = 0;
                    while done < n {
                        let k = (n - done).min(PIECE);
                        r.read_exact(&mut scratch[..k])?;
                        if writable && result.is_ok() {
                            result = device.write_at(&scratch[..k], req.offset + done as u64);
                        }
                        done += k;
                    }
                    if read_only {
                        Err(Errno::Perm)
                    } else if !in_range {
                        Err(Errno::NoSpc)
                    } else {
                        result.and_then(|()| fua(device, req.flags))
                    }
                }
                Command::Disconnect => {
                    w.flush()?;
                    return Ok(End::Disconnected);
                }
                Command::Flush => device.flush(),
                Command::Trim => {
                    if read_only {
                        Err(Errno::Perm)
                    } else if !in_range {
                        Err(Errno::Inval)
                    } else {
                        device
                            .trim(req.offset, len)
                            .and_then(|()| fua(device, req.flags))
                    }
                }
                Command::WriteZeroes => {
                    if read_only {
                        Err(Errno::Perm)
                    } else if req.flags & CMD_FLAG_FAST_ZERO != 0 {
                        // Not advertised: the spec asks for EINVAL.
                        Err(Errno::Inval)
                    } else if !in_range {
                        Err(Errno::NoSpc)
                    } else {
                        let no_hole = req.flags & CMD_FLAG_NO_HOLE != 0;
                        device
                            .write_zeroes(req.offset, len, no_hole)
                            .and_then(|()| fua(device, req.flags))
                    }
                }
                // A hint with no effect on content; clients send it unadvertised.
                Command::Cache if in_range => Ok(()),
                Command::Cache | Command::Other(_) => Err(Errno::Inval),
            }
        };
        write_simple_reply(w, req.handle, error.err().map_or(0, |e| e as u32))?;
    }
}

/// sendfile pays a call per extent: worth it while extents average at least 32 KiB (a COW
/// written in random order at small chunks is cheaper to gather through the buffer).
fn worth_sending(extents: Result<&Vec<Extent<'_>>, &Errno>, len: usize) -> bool {
    extents.map_or(true, |e| e.len() * (32 << 10) <= len)
}

fn fua(device: &dyn Device, flags: u16) -> Result<(), Errno> {
    if flags & CMD_FLAG_FUA != 0 {
        device.flush()
    } else {
        Ok(())
    }
}
