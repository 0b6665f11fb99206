//! A connection's transport: reads held to a login deadline however slowly bytes trickle
//! in, a tick to wake an idle connection for its pings, and a wake-up for a handover (a
//! blocked read returns at once when the service asks its connections to stand still).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the connection loop needs of its transport besides reading and writing.
pub trait Line {
    /// Blocks reads at most this long (None: forever).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Every read ends by `until` (None: no deadline), however the peer trickles bytes.
    fn set_deadline(&self, until: Option<Instant>);
    /// A callback that shuts the connection down from another thread.
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>>;
    /// Waits for bytes to read or for `other` to be readable, at most `limit`: whether
    /// bytes came; None for a line that cannot tell (then reads are made when wanted).
    fn wait_ready(&self, other: BorrowedFd<'_>, limit: Duration) -> Option<bool> {
        let _ = (other, limit);
        None
    }
}

/// A read timeout and a deadline, shared by a connection's reading half and its line.
#[derive(Debug, Default, Clone, Copy)]
struct Clock {
    tick: Option<Duration>,
    until: Option<Instant>,
}

/// A TCP connection whose reads all end by the deadline while one is set.
pub struct Clocked {
    pub(super) stream: TcpStream,
    clock: Arc<std::sync::Mutex<Clock>>,
    /// Readable once a handover is asked for; reads wake on it once, then only the tick
    /// wakes them (the connection looks for a still moment after each PDU).
    wake: Option<Arc<OwnedFd>>,
    woken: Arc<AtomicBool>,
}

impl Clocked {
    pub fn new(stream: TcpStream, wake: Option<Arc<OwnedFd>>) -> Clocked {
        Clocked {
            stream,
            clock: Arc::default(),
            wake,
            woken: Arc::default(),
        }
    }

    fn clock(&self) -> Clock {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn try_clone(&self) -> io::Result<Clocked> {
        Ok(Clocked {
            stream: self.stream.try_clone()?,
            clock: self.clock.clone(),
            wake: self.wake.clone(),
            woken: self.woken.clone(),
        })
    }

    /// Waits for bytes or the wake-up, at most `limit`; false when they did not come.
    fn wait_for_bytes(&self, wake: &OwnedFd, limit: Option<Duration>) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = limit.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [
            PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if fds[0].any().unwrap_or(true) {
            return Ok(true);
        }
        self.woken.store(true, Ordering::Relaxed);
        Ok(false)
    }
}

impl io::Read for Clocked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let clock = self.clock();
        let mut limit = clock.tick;
        if let Some(until) = clock.until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let t = clock.tick.map_or(left, |t| t.min(left));
            self.stream.set_read_timeout(Some(t))?;
            limit = Some(t);
        }
        if let Some(wake) = self
            .wake
            .as_ref()
            .filter(|_| !self.woken.load(Ordering::Relaxed))
        {
            // Bytes already there are read at once: the wait (one more system call) is only
            // for a read that would block.
            use nix::sys::socket::{recv, MsgFlags};
            use std::os::fd::AsRawFd;
            match recv(self.stream.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
            if !self.wait_for_bytes(wake, limit)? {
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
        io::Read::read(&mut self.stream, buf)
    }
}

/// Acknowledges what comes next at once, not with the next answer: while requests are in
/// flight no answer may go for milliseconds, and an initiator that sends a command's
/// header and data apart (libiscsi) holds the data back (Nagle) until the header is
/// acknowledged, so commands would trickle in one at a time. Linux clears the flag by
/// itself, so it is set before each wait.
fn quick_ack(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a live socket and an int option of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::addr_of!(on).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        );
    }
}

impl Line for Clocked {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner()).tick = t;
        self.stream.set_read_timeout(t)
    }

    fn set_deadline(&self, until: Option<Instant>) {
        self.clock.lock().unwrap_or_else(|p| p.into_inner()).until = until;
        if until.is_none() {
            let _ = self.stream.set_read_timeout(self.clock().tick);
        }
    }

    fn wait_ready(&self, other: BorrowedFd<'_>, limit: Duration) -> Option<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        quick_ack(&self.stream);
        let mut fds = [
            PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(other, PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
        let polled = poll(&mut fds, timeout).is_ok_and(|n| n > 0);
        Some(polled && fds[0].any().unwrap_or(true))
    }

    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>> {
        let s = self.stream.try_clone()?;
        Ok(Box::new(move || {
            let _ = s.shutdown(Shutdown::Both);
        }))
    }
}
