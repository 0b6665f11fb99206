//! An rbd PC's disk: its clone of the image's protected snapshot in a Ceph pool, served
//! through librbd. The cluster copies an object up from the image on its first write and
//! keeps every write durable before librbd answers (the client's cache is off), so a
//! flush has nothing of cowctl's to write.
//!
//! The PC's fill is `rbd du`'s: the clone's objects, counted once when it is opened
//! (the cluster's object map) and then kept here, one bit per object, set by writes. It
//! is held against `cow_size` as a quota, like a reflink clone's blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::ownblocks::{Fill, OwnBlocks};
use super::EngineError;
use crate::cow::Usage;
use crate::rbd::Image;

pub struct RbdDisk {
    image: Image,
    size: u64,
    /// The clone's object size: the unit a first write copies and the fill counts.
    object: u64,
    fill: Fill,
    /// The cluster refused this client (blocklisted: another gateway took the PC over):
    /// nothing this handle does can succeed any more. Shared with requests in flight.
    cut_off: Arc<AtomicBool>,
}

/// What an asynchronous read or write ([`RbdDisk::start_read`]) answers.
pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>, EngineError>) + Send>;
pub type WriteDone = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

impl RbdDisk {
    fn io(
        &self,
        what: &'static str,
        offset: u64,
    ) -> impl FnOnce(crate::rbd::Error) -> EngineError + '_ {
        move |e| {
            if e.is_blocklisted() {
                self.cut_off.store(true, Ordering::Relaxed);
            }
            io(what, offset)(e)
        }
    }

    /// [`RbdDisk::io`] for a request that answers on librbd's thread, after this call.
    fn io_later(
        &self,
        what: &'static str,
        offset: u64,
    ) -> impl FnOnce(crate::rbd::Error) -> EngineError + Send + 'static {
        let cut_off = self.cut_off.clone();
        move |e| {
            if e.is_blocklisted() {
                cut_off.store(true, Ordering::Relaxed);
            }
            io(what, offset)(e)
        }
    }

    /// Whether the cluster has cut this gateway's client off (its I/O says so).
    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Relaxed)
    }
}

fn io(what: &'static str, offset: u64) -> impl FnOnce(crate::rbd::Error) -> EngineError {
    move |e| {
        let source = match e.errno() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(e.to_string()),
        };
        EngineError::Io {
            what,
            offset,
            source,
        }
    }
}

impl RbdDisk {
    /// Serves `image` (a PC's clone, opened and locked by the caller), whose objects of
    /// its own are `own` ((offset, length) from `Image::own_objects`; none for a fresh
    /// clone).
    pub fn new(
        image: Image,
        (read_only, quota): (bool, u64),
        own: &[(u64, u64)],
    ) -> Result<RbdDisk, crate::rbd::Error> {
        let size = image.size()?;
        let object = image.object_size()?.max(512);
        let mut bits = OwnBlocks::new(size.div_ceil(object));
        for &(offset, len) in own {
            let end = offset.saturating_add(len).min(size);
            if offset < end {
                bits.set(offset / object, end.div_ceil(object), true);
            }
        }
        Ok(RbdDisk {
            image,
            size,
            object,
            fill: Fill::new(bits, object, size, (read_only, quota)),
            cut_off: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn object_size(&self) -> u64 {
        self.object
    }

    /// The clone's handle, for what a commit does to it while the PC is paused.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The clone's name in its pool.
    pub fn name(&self) -> &str {
        self.image.name()
    }

    pub fn own_bytes(&self) -> u64 {
        self.fill.own_bytes()
    }

    pub fn usage(&self) -> Usage {
        self.fill.usage()
    }

    /// Raises the quota to `len` bytes (never lowers it); returns the old one.
    pub fn grow(&self, len: u64) -> Result<u64, EngineError> {
        self.fill.grow(len)
    }

    /// Refuses a write that would take the PC past its quota; else the objects it covers
    /// are the PC's own from now on.
    fn admit(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        self.fill.check_writable(offset, len)?;
        let (first, end) = (offset / self.object, (offset + len).div_ceil(self.object));
        self.fill.admit(first, end)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        self.fill.check_range(offset, buf.len() as u64)?;
        self.image
            .read_at(buf, offset)
            .map_err(self.io("reading the PC's rbd clone", offset))
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), EngineError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.admit(offset, buf.len() as u64)?;
        self.image
            .write_at(buf, offset)
            .map_err(self.io("writing the PC's rbd clone", offset))?;
        Ok(())
    }

    /// [`RbdDisk::read_at`] without waiting: `done` gets the bytes on librbd's thread.
    pub fn start_read(&self, offset: u64, len: usize, done: ReadDone) {
        if let Err(e) = self.fill.check_range(offset, len as u64) {
            return done(Err(e));
        }
        let failed = self.io_later("reading the PC's rbd clone", offset);
        self.image
            .aio_read(offset, len, Box::new(move |r| done(r.map_err(failed))));
    }

    /// [`RbdDisk::write_at`] without waiting: `done` hears when the cluster has it. The
    /// quota is checked (and the objects counted) before it is sent, as for a write.
    pub fn start_write(&self, offset: u64, data: Vec<u8>, done: WriteDone) {
        if data.is_empty() {
            return done(Ok(()));
        }
        if let Err(e) = self.admit(offset, data.len() as u64) {
            return done(Err(e));
        }
        let failed = self.io_later("writing the PC's rbd clone", offset);
        self.image
            .aio_write(offset, data, Box::new(move |r| done(r.map_err(failed))));
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        self.image
            .flush()
            .map_err(self.io("flushing the PC's rbd clone", 0))
    }

    /// A discard: the range reads as zeros afterwards (in a clone, librbd hides the
    /// image's bytes there), and like a COW's exception it stays in the fill.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        if len == 0 {
            return Ok(());
        }
        self.admit(offset, len)?;
        self.image
            .discard(offset, len)
            .map_err(self.io("discarding in the PC's rbd clone", offset))?;
        Ok(())
    }

    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        if len == 0 {
            return Ok(());
        }
        self.admit(offset, len)?;
        self.image
            .write_zeroes(offset, len)
            .map_err(self.io("zeroing in the PC's rbd clone", offset))?;
        Ok(())
    }
}
