//! A PC's disk as the userspace targets serve it, whichever way its writes are kept: a COW
//! over the golden image ([`Engine`]), a reflink clone of it ([`CloneFile`]) or a clone in
//! a Ceph pool ([`RbdDisk`]).

use super::clonefile::{CloneFile, BLOCK};
use super::rbddisk::RbdDisk;
use super::{Engine, EngineError, Extent, SnapshotState};
use crate::cow::Usage;

// One per served PC, each behind an Arc: the COW engine's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum PcDisk {
    Cow(Engine),
    Clone(CloneFile),
    Rbd(RbdDisk),
}

impl PcDisk {
    /// The disk's size: the golden image's (a clone is as long as its image).
    pub fn size(&self) -> u64 {
        match self {
            PcDisk::Cow(e) => e.size(),
            PcDisk::Clone(c) => c.size(),
            PcDisk::Rbd(r) => r.size(),
        }
    }

    /// Whether each request waits on the network (an rbd clone), so several in flight
    /// together go faster than one at a time.
    pub fn parallel(&self) -> bool {
        matches!(self, PcDisk::Rbd(_))
    }

    /// The preferred I/O size: the COW's chunk, or the block a clone copies on a write.
    pub fn granularity(&self) -> u64 {
        match self {
            PcDisk::Cow(e) => e.geometry().chunk_bytes(),
            PcDisk::Clone(_) => BLOCK,
            PcDisk::Rbd(r) => r.object_size(),
        }
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        match self {
            PcDisk::Cow(e) => e.read_at(buf, offset),
            PcDisk::Clone(c) => c.read_at(buf, offset),
            PcDisk::Rbd(r) => r.read_at(buf, offset),
        }
    }

    /// Starts a read that answers `done` on librbd's thread (an rbd clone, through its
    /// asynchronous I/O); any other disk answers here, before this returns.
    pub fn start_read(&self, offset: u64, len: usize, done: super::rbddisk::ReadDone) {
        match self {
            PcDisk::Rbd(r) => r.start_read(offset, len, done),
            PcDisk::Cow(_) | PcDisk::Clone(_) => {
                let mut buf = vec![0; len];
                done(self.read_at(&mut buf, offset).map(|()| buf));
            }
        }
    }

    /// [`PcDisk::start_read`] for a write of `data`.
    pub fn start_write(&self, offset: u64, data: Vec<u8>, done: super::rbddisk::WriteDone) {
        match self {
            PcDisk::Rbd(r) => r.start_write(offset, data, done),
            PcDisk::Cow(_) | PcDisk::Clone(_) => done(self.write_at(&data, offset)),
        }
    }

    /// Where `len` bytes at `offset` lie, for a server that sends them from the page cache.
    pub fn extents(&self, offset: u64, len: usize) -> Option<Result<Vec<Extent<'_>>, EngineError>> {
        match self {
            PcDisk::Cow(e) => e.extents(offset, len),
            PcDisk::Rbd(_) => None,
            PcDisk::Clone(c) => {
                let ok = offset
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= c.size());
                if !ok {
                    return Some(Err(EngineError::OutOfRange {
                        offset,
                        len: len as u64,
                        size: c.size(),
                    }));
                }
                let (clone, image) = (
                    std::os::fd::AsFd::as_fd(c.file()),
                    std::os::fd::AsFd::as_fd(c.image()),
                );
                let runs = c
                    .runs(offset, len)
                    .into_iter()
                    .map(|(from_image, at, n)| Extent {
                        fd: if from_image { image } else { clone },
                        offset: at,
                        len: n,
                    });
                Some(Ok(runs.collect()))
            }
        }
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), EngineError> {
        match self {
            PcDisk::Cow(e) => e.write_at(buf, offset),
            PcDisk::Clone(c) => c.write_at(buf, offset),
            PcDisk::Rbd(r) => r.write_at(buf, offset),
        }
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        match self {
            PcDisk::Cow(e) => e.flush(),
            PcDisk::Clone(c) => c.flush(),
            PcDisk::Rbd(r) => r.flush(),
        }
    }

    /// What a write-through protocol (AoE) calls after a batch of writes: a COW's new
    /// exceptions committed. A clone's writes are in the page cache already, which outlives
    /// this process, and an rbd clone's in the cluster, so they have nothing to do.
    pub fn commit(&self) -> Result<(), EngineError> {
        match self {
            PcDisk::Cow(e) => e.commit(),
            PcDisk::Clone(_) | PcDisk::Rbd(_) => Ok(()),
        }
    }

    pub fn trim(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        match self {
            PcDisk::Cow(e) => e.trim(offset, len),
            PcDisk::Clone(c) => c.trim(offset, len),
            PcDisk::Rbd(r) => r.trim(offset, len),
        }
    }

    pub fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), EngineError> {
        match self {
            PcDisk::Cow(e) => e.write_zeroes(offset, len, no_hole),
            PcDisk::Clone(c) => c.write_zeroes(offset, len, no_hole),
            PcDisk::Rbd(r) => r.write_zeroes(offset, len),
        }
    }

    /// A clone is always active: past its quota its writes are refused, as `overflow: PO`
    /// refuses a full COW's, but nothing invalidates it.
    pub fn state(&self) -> SnapshotState {
        match self {
            PcDisk::Cow(e) => e.state(),
            PcDisk::Clone(_) | PcDisk::Rbd(_) => SnapshotState::Active,
        }
    }

    pub fn usage(&self) -> Usage {
        match self {
            PcDisk::Cow(e) => e.usage(),
            PcDisk::Clone(c) => c.usage(),
            PcDisk::Rbd(r) => r.usage(),
        }
    }

    /// A COW grows its file; a clone's quota is raised.
    pub fn grow(&self, len: u64) -> Result<u64, EngineError> {
        match self {
            PcDisk::Cow(e) => e.grow(len),
            PcDisk::Clone(c) => c.grow(len),
            PcDisk::Rbd(r) => r.grow(len),
        }
    }

    pub fn abandon(&self) {
        match self {
            PcDisk::Cow(e) => e.abandon(),
            PcDisk::Clone(c) => c.abandon(),
            PcDisk::Rbd(_) => {}
        }
    }
}
