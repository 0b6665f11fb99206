//! NBD requests kept in flight together, for a device whose every request waits on the
//! network (an rbd clone: `Device::parallel`). Over one connection the client's queue
//! would otherwise reach the cluster one request at a time. A plain READ or WRITE (no FUA,
//! in range, nothing in flight writing the blocks it touches, or touching those it writes)
//! is started on the device (librbd's asynchronous I/O; else on the shared pool,
//! `engine::iopool`) while the connection reads on; its reply goes
//! out when it is done, in any order (NBD replies carry the request's handle). Every other
//! request first waits for all in flight and sends their replies, so it runs after them as
//! before. None outlives the connection: dropping this waits for what is still running.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::device::{Device, Sink};
use super::wire::{write_simple_reply, Errno};

/// Requests one connection keeps in flight at most.
pub const MAX_IN_FLIGHT: usize = 32;
/// Payload bytes one connection keeps in flight at most (reads' and writes' buffers).
pub const MAX_BYTES: usize = 16 << 20;

/// A device requests can be handed to the pool with.
pub type SharedDevice = Arc<dyn Device + Send + Sync>;

struct Done {
    /// Which launch it is (clients may reuse a handle: it is only echoed back).
    seq: u64,
    handle: u64,
    /// A READ's data, or nothing for a WRITE; or the error to reply with.
    result: Result<Vec<u8>, Errno>,
}

/// A request in flight: its handle, the bytes it covers and whether it writes them, and the
/// payload bytes it holds.
struct Pending {
    seq: u64,
    span: (u64, u64, bool),
    bytes: usize,
}

pub struct InFlight {
    device: SharedDevice,
    pending: Vec<Pending>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    /// Readable once a request finished.
    signal: Arc<EventFd>,
    launched: u64,
}

impl InFlight {
    pub fn new(device: SharedDevice) -> io::Result<InFlight> {
        let (tx, rx) = channel();
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let signal = Arc::new(EventFd::from_value_and_flags(0, flags)?);
        Ok(InFlight {
            device,
            pending: Vec::new(),
            tx,
            rx,
            signal,
            launched: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// What becomes readable when a request in flight finishes (None while none is).
    pub fn done_fd(&self) -> Option<BorrowedFd<'_>> {
        (!self.pending.is_empty()).then(|| self.signal.as_fd())
    }

    /// Whether a request over `offset..offset + len` may go in flight now: nothing in
    /// flight writes what it touches or touches what it writes, and it fits in the bytes
    /// one connection may hold (waiting for room first; one too large for any goes alone).
    pub fn admits<W: Sink>(
        &mut self,
        w: &mut W,
        (offset, len, writes): (u64, u64, bool),
    ) -> io::Result<bool> {
        let clash = self.pending.iter().any(|p| {
            let (o, l, pw) = p.span;
            (pw || writes) && offset < o + l && o < offset + len
        });
        let bytes = usize::try_from(len).unwrap_or(usize::MAX);
        if clash || bytes > MAX_BYTES {
            return Ok(false);
        }
        while self.pending.len() >= MAX_IN_FLIGHT || self.held() + bytes > MAX_BYTES {
            self.reply_one(w)?;
        }
        Ok(true)
    }

    fn held(&self) -> usize {
        self.pending.iter().map(|p| p.bytes).sum()
    }

    /// Reads `len` bytes at `offset` in flight (the device answers by itself, or a pool
    /// thread waits for it); replied to by a later [`InFlight::reply_done`].
    pub fn read(&mut self, handle: u64, offset: u64, len: usize) {
        let finish = self.launch(handle, (offset, len as u64, false), len);
        if let Some(done) = self.device.start_read(offset, len, Box::new(finish)) {
            self.on_pool(
                move |d| {
                    let mut buf = vec![0u8; len];
                    d.read_at(&mut buf, offset).map(|()| buf)
                },
                done,
            );
        }
    }

    /// Writes `data` at `offset` in flight.
    pub fn write(&mut self, handle: u64, offset: u64, data: Vec<u8>) {
        let len = data.len();
        let finish = self.launch(handle, (offset, len as u64, true), len);
        let done = Box::new(move |r: Result<(), Errno>| finish(r.map(|()| Vec::new())));
        if let Some((data, done)) = self.device.start_write(offset, data, done) {
            self.on_pool(move |d| d.write_at(&data, offset), done);
        }
    }

    /// Counts a request in flight; returns what answers it (from any thread, once).
    fn launch(
        &mut self,
        handle: u64,
        span: (u64, u64, bool),
        bytes: usize,
    ) -> impl FnOnce(Result<Vec<u8>, Errno>) + Send + 'static {
        let (tx, signal) = (self.tx.clone(), self.signal.clone());
        self.launched += 1;
        let seq = self.launched;
        self.pending.push(Pending { seq, span, bytes });
        move |result| {
            let _ = tx.send(Done {
                seq,
                handle,
                result,
            });
            let _ = signal.write(1);
        }
    }

    /// Runs `work` on the shared pool, then hands its result to `then`.
    fn on_pool<R: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Device) -> Result<R, Errno> + Send + 'static,
        then: impl FnOnce(Result<R, Errno>) + Send + 'static,
    ) {
        let device = self.device.clone();
        crate::engine::iopool::submit(Box::new(move || {
            // A panic must still answer, or the connection would wait for it forever.
            let run = std::panic::AssertUnwindSafe(|| work(device.as_ref()));
            let result = std::panic::catch_unwind(run).unwrap_or(Err(Errno::Io));
            // The device is let go before the reply: a reset waits for the connection,
            // then must hold the device's last reference to close it.
            drop(device);
            then(result);
        }));
    }

    /// Replies to every request that is done, without waiting.
    pub fn reply_done<W: Sink>(&mut self, w: &mut W) -> io::Result<()> {
        // Reset before looking: one that finishes after the look signals again.
        let _ = self.signal.read();
        while let Ok(done) = self.rx.try_recv() {
            self.reply(w, done)?;
        }
        Ok(())
    }

    /// Waits for one request to finish and replies to it.
    fn reply_one<W: Sink>(&mut self, w: &mut W) -> io::Result<()> {
        let done = self.rx.recv().map_err(|_| io::ErrorKind::BrokenPipe)?;
        self.reply(w, done)
    }

    /// Waits for every request in flight and replies to each.
    pub fn drain<W: Sink>(&mut self, w: &mut W) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.reply_one(w)?;
        }
        let _ = self.signal.read();
        Ok(())
    }

    fn reply<W: Sink>(&mut self, w: &mut W, done: Done) -> io::Result<()> {
        if let Some(i) = self.pending.iter().position(|p| p.seq == done.seq) {
            self.pending.swap_remove(i);
        }
        match done.result {
            Ok(data) => {
                write_simple_reply(w, done.handle, 0)?;
                w.write_all(&data)
            }
            Err(e) => write_simple_reply(w, done.handle, e as u32),
        }
    }
}

impl Drop for InFlight {
    /// Waits for what is still running (the connection is gone: nothing is replied).
    fn drop(&mut self) {
        for _ in 0..self.pending.len() {
            if self.rx.recv().is_err() {
                break;
            }
        }
    }
}
