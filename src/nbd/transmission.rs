//! The transmission phase: requests in, simple replies out, one at a time per connection
//! (on a device that says `parallel`, plain reads and writes in flight together:
//! `inflight.rs`).
//! Every request is checked before the device sees it — magic, flags, offset + length
//! overflow, the export's end, the payload cap — so a device only ever gets in-range I/O,
//! and no buffer is sized by the client beyond `MAX_PAYLOAD`. Replies are buffered and
//! sent when no further request is already waiting, so a deep queue costs few syscalls.

use std::io::{self, BufReader, Read};
use std::os::fd::BorrowedFd;

pub use super::device::{Device, Sink};
use super::handshake::skip;
use super::inflight::InFlight;
pub use super::inflight::SharedDevice;
use super::wire::*;
use crate::engine::Extent;

/// Reads at least this large go out straight from the page cache; smaller ones are copied
/// into the reply buffer, so a deep queue of them still leaves in few sends.
const SEND_FILE_MIN: usize = 64 << 10;
/// Payloads move in pieces of at most this size: a request's length sizes no buffer, so a
/// client that sends 32 MiB WRITE headers and stalls costs the service nothing.
const PIECE: usize = 1 << 20;

/// Why the wait between two requests ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A request is there (or the wait gave up: the read that follows says why).
    Request,
    /// A request in flight is done: its reply can go.
    Done,
    /// Stop for a planned restart.
    HandOver,
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
    serve_until(r, w, device, None, size, read_only, &|_, _| Wake::Request)
}

/// [`serve`], asking `wait` between requests whether to stop for a planned restart. It is
/// told whether a request is already buffered, and what becomes readable when a request in
/// flight is done; when nothing is buffered it may block until the client sends one, a
/// request in flight is done, or a handover is asked for. `shared` is the device again, to
/// keep requests in flight with when it says `parallel`.
pub fn serve_until<R: Read, W: Sink>(
    r: &mut BufReader<R>,
    w: &mut W,
    device: &dyn Device,
    shared: Option<SharedDevice>,
    size: u64,
    read_only: bool,
    wait: &dyn Fn(bool, Option<BorrowedFd<'_>>) -> Wake,
) -> io::Result<End> {
    let flight = match shared.filter(|d| d.parallel()) {
        Some(d) => Some(InFlight::new(d)?),
        None => None,
    };
    let mut conn = Connection {
        r,
        w,
        device,
        size,
        read_only,
        scratch: Vec::new(),
        flight,
    };
    loop {
        if let Some(f) = conn.flight.as_mut() {
            f.reply_done(conn.w)?;
        }
        // Send what is buffered when no further request is already read, before a read
        // that may block.
        let buffered = !conn.r.buffer().is_empty();
        if !buffered {
            conn.w.flush()?;
        }
        match wait(buffered, conn.flight.as_ref().and_then(InFlight::done_fd)) {
            Wake::Request => {}
            Wake::Done => continue,
            Wake::HandOver => {
                conn.settle()?;
                conn.w.flush()?;
                return Ok(End::HandedOver {
                    unread: conn.r.buffer().to_vec(),
                });
            }
        }
        let req = match conn.next_request()? {
            Ok(req) => req,
            Err(end) => {
                conn.settle()?;
                return Ok(end);
            }
        };
        if conn.in_flight(&req)? {
            continue;
        }
        conn.settle()?;
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
    /// Requests in flight, on a device that is `parallel`.
    flight: Option<InFlight>,
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
    /// Waits for every request in flight and sends its reply.
    fn settle(&mut self) -> io::Result<()> {
        match self.flight.as_mut() {
            Some(f) => f.drain(self.w),
            None => Ok(()),
        }
    }

    /// Puts a plain READ or WRITE in flight when it may go (its payload read first);
    /// false when it is to be answered in order, after everything in flight.
    fn in_flight(&mut self, req: &Request) -> io::Result<bool> {
        let Some(f) = self.flight.as_mut() else {
            return Ok(false);
        };
        let len = u64::from(req.length);
        let plain = req.flags == 0 && req.length > 0 && req.length <= MAX_PAYLOAD;
        let in_range = req.end(len).is_some_and(|end| end <= self.size);
        let writes = match req.command {
            Command::Read => false,
            Command::Write if !self.read_only => true,
            _ => return Ok(false),
        };
        if !plain || !in_range || !f.admits(self.w, (req.offset, len, writes))? {
            return Ok(false);
        }
        if writes {
            // Grown as the payload arrives: a client that sends a header and stalls pins
            // no more than it sent.
            let mut data = Vec::new();
            (&mut *self.r).take(len).read_to_end(&mut data)?;
            if data.len() as u64 != len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            f.write(req.handle, req.offset, data);
        } else {
            f.read(req.handle, req.offset, req.length as usize);
        }
        Ok(true)
    }

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
