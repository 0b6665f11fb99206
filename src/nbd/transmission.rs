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
    /// Stopped between two requests for a planned restart: the next process carries the
    /// connection on, starting with these bytes received and not yet read.
    HandedOver { unread: Vec<u8> },
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
    serve_until(r, w, device, size, read_only, &|_| false)
}

/// [`serve`], asking `hand_over` between requests whether to stop for a planned restart.
/// It is told whether a request is already buffered; when none is, it may block until the
/// client sends one (and then answers false) or a handover is asked for (true).
pub fn serve_until<R: Read, W: Sink>(
    r: &mut BufReader<R>,
    w: &mut W,
    device: &dyn Device,
    size: u64,
    read_only: bool,
    hand_over: &dyn Fn(bool) -> bool,
) -> io::Result<End> {
    let mut conn = Connection {
        r,
        w,
        device,
        size,
        read_only,
        scratch: Vec::new(),
    };
    loop {
        // Send what is buffered when no further request is already read, before a read
        // that may block.
        let buffered = !conn.r.buffer().is_empty();
        if !buffered {
            conn.w.flush()?;
        }
        if hand_over(buffered) {
            conn.w.flush()?;
            return Ok(End::HandedOver {
                unread: conn.r.buffer().to_vec(),
            });
        }
        let req = match conn.next_request()? {
            Ok(req) => req,
            Err(end) => return Ok(end),
        };
        let status = match conn.answer(&req)? {
            Answered::Status(status) => status,
            Answered::Sent => continue,
            Answered::End(end) => return Ok(end),
        };
        write_simple_reply(conn.w, req.handle, status.err().map_or(0, |e| e as u32))?;
    }
}

/// One connection's transmission phase: its streams, its export, and the buffer that
/// payloads pass through.
struct Connection<'a, R, W> {
    r: &'a mut BufReader<R>,
    w: &'a mut W,
    device: &'a dyn Device,
    size: u64,
    read_only: bool,
    scratch: Vec<u8>,
}

/// What became of one request.
enum Answered {
    /// The simple reply is still to be sent, with this error or none.
    Status(Result<(), Errno>),
    /// The reply and its data are already sent.
    Sent,
    /// The connection ends here.
    End(End),
}

impl<R: Read, W: Sink> Connection<'_, R, W> {
    /// The next request, or how the connection ends: closed, a bad magic, a WRITE over
    /// the cap.
    fn next_request(&mut self) -> io::Result<Result<Request, End>> {
        let req = match Request::read_from(self.r) {
            Ok(req) => req,
            Err(RequestError::Closed) => return Ok(Err(End::Disconnected)),
            Err(RequestError::BadMagic(m)) => {
                self.w.flush()?;
                return Ok(Err(End::ProtocolError(format!(
                    "request magic 0x{m:08x} is not NBD_REQUEST_MAGIC"
                ))));
            }
            Err(RequestError::Io(e)) => return Err(e),
        };
        // A WRITE's payload must be consumed even when the request is refused, or the
        // stream loses its framing; past the cap it is not worth reading.
        if req.command == Command::Write && req.length > MAX_PAYLOAD {
            self.w.flush()?;
            return Ok(Err(End::ProtocolError(format!(
                "a WRITE of {} bytes is over the {MAX_PAYLOAD}-byte maximum payload",
                req.length
            ))));
        }
        Ok(Ok(req))
    }

    /// Runs one request: unknown flags refused (a WRITE's payload skipped), then the command.
    fn answer(&mut self, req: &Request) -> io::Result<Answered> {
        let len = u64::from(req.length);
        let in_range = req.end(len).is_some_and(|end| end <= self.size);
        if req.flags & !KNOWN_FLAGS != 0 {
            if req.command == Command::Write {
                skip(self.r, len)?;
            }
            return Ok(Answered::Status(Err(Errno::Inval)));
        }
        let status = match req.command {
            Command::Read => return self.read(req, in_range),
            Command::Write => self.write(req, in_range)?,
            Command::Disconnect => {
                self.w.flush()?;
                return Ok(Answered::End(End::Disconnected));
            }
            Command::Flush => self.device.flush(),
            Command::Trim => self.trim(req, in_range),
            Command::WriteZeroes => self.write_zeroes(req, in_range),
            // A hint with no effect on content; clients send it unadvertised.
            Command::Cache if in_range => Ok(()),
            Command::Cache | Command::Other(_) => Err(Errno::Inval),
        };
        Ok(Answered::Status(status))
    }

    /// A READ: large ones from the files' extents with sendfile, others through the buffer.
    fn read(&mut self, req: &Request, in_range: bool) -> io::Result<Answered> {
        if req.length > MAX_PAYLOAD || !in_range {
            return Ok(Answered::Status(Err(Errno::Inval)));
        }
        let device = self.device;
        if let Some(extents) = (req.length as usize >= SEND_FILE_MIN)
            .then(|| device.extents(req.offset, req.length as usize))
            .flatten()
            .filter(|e| worth_sending(e.as_ref(), req.length as usize))
        {
            return match extents {
                Ok(extents) => {
                    let mut header = Vec::with_capacity(16);
                    write_simple_reply(&mut header, req.handle, 0)?;
                    self.w.send_reply_from_files(&header, &extents)?;
                    Ok(Answered::Sent)
                }
                Err(e) => Ok(Answered::Status(Err(e))),
            };
        }
        self.read_through_buffer(req)
    }

    /// A READ in pieces through the buffer.
    fn read_through_buffer(&mut self, req: &Request) -> io::Result<Answered> {
        let n = req.length as usize;
        self.scratch.resize(n.min(PIECE), 0);
        // The first piece is read before the reply is sent, so an error can still be
        // reported; one later on can only end the connection.
        let first = n.min(PIECE);
        if let Err(e) = self.device.read_at(&mut self.scratch[..first], req.offset) {
            return Ok(Answered::Status(Err(e)));
        }
        write_simple_reply(self.w, req.handle, 0)?;
        self.w.write_all(&self.scratch[..first])?;
        let mut done = first;
        while done < n {
            let k = (n - done).min(PIECE);
            self.device
                .read_at(&mut self.scratch[..k], req.offset + done as u64)
                .map_err(|e| io::Error::other(format!("a read failed midway ({e:?})")))?;
            self.w.write_all(&self.scratch[..k])?;
            done += k;
        }
        Ok(Answered::Sent)
    }

    /// A WRITE: taken in pieces as they arrive, each written before the next is read; the
    /// payload is consumed whether or not the write is allowed.
    fn write(&mut self, req: &Request, in_range: bool) -> io::Result<Result<(), Errno>> {
        let n = req.length as usize;
        self.scratch.resize(n.min(PIECE), 0);
        let writable = !self.read_only && in_range;
        let mut result = Ok(());
        let mut done = 0;
        while done < n {
            let k = (n - done).min(PIECE);
            self.r.read_exact(&mut self.scratch[..k])?;
            if writable && result.is_ok() {
                result = self
                    .device
                    .write_at(&self.scratch[..k], req.offset + done as u64);
            }
            done += k;
        }
        Ok(if self.read_only {
            Err(Errno::Perm)
        } else if !in_range {
            Err(Errno::NoSpc)
        } else {
            result.and_then(|()| fua(self.device, req.flags))
        })
    }

    fn trim(&self, req: &Request, in_range: bool) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::Perm)
        } else if !in_range {
            Err(Errno::Inval)
        } else {
            self.device
                .trim(req.offset, u64::from(req.length))
                .and_then(|()| fua(self.device, req.flags))
        }
    }

    fn write_zeroes(&self, req: &Request, in_range: bool) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::Perm)
        } else if req.flags & CMD_FLAG_FAST_ZERO != 0 {
            // Not advertised: the spec asks for EINVAL.
            Err(Errno::Inval)
        } else if !in_range {
            Err(Errno::NoSpc)
        } else {
            let no_hole = req.flags & CMD_FLAG_NO_HOLE != 0;
            self.device
                .write_zeroes(req.offset, u64::from(req.length), no_hole)
                .and_then(|()| fua(self.device, req.flags))
        }
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
