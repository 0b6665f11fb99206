//! The userspace COW engine: a block device over a read-only golden image and a COW file
//! in the kernel's dm-snapshot persistent format, so the kernel can take the file over.
//!
//! Reads look the chunk up in the exception table (O(1)) and go to the COW or the origin.
//! Writes to a chunk with an exception go straight to its COW chunk; the first write to a
//! chunk allocates one, copies the rest of the chunk from the origin (unless the write
//! covers it whole), writes it, and commits the exception before the write completes —
//! the same point at which the kernel completes it.

pub mod backing;
pub mod clonefile;
pub mod disk;
mod error;
pub mod filekind;
pub mod iopool;
mod metadata;
mod ownblocks;
pub mod pcdisk;
pub mod rbddisk;

use std::sync::{Mutex, RwLock};

pub use crate::cow::OverflowPolicy;
pub use error::EngineError;
pub use metadata::{CommitMode, GrowPolicy, SnapshotState};
pub use pcdisk::PcDisk;

use crate::base::chunkmap::ChunkMap;
use crate::cow::{DiskException, Geometry, Header, HeaderState, LoadedStore, ReadAt, Usage};
use crate::engine::backing::Backing;
use metadata::Metadata;

/// Writers allocating chunks serialize per stripe, so two first writes to one chunk never
/// allocate it twice, while writes to other chunks proceed.
const STRIPES: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// The chunk size a dm table would give: used only for a new (magic 0) COW.
    pub table_chunk_sectors: Option<u32>,
    pub overflow: OverflowPolicy,
    /// Never write to the COW, not even to initialise a new one.
    pub read_only: bool,
    pub commit: CommitMode,
    /// Grow a full COW instead of overflowing, up to a maximum.
    pub grow: Option<GrowPolicy>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            table_chunk_sectors: None,
            overflow: OverflowPolicy::Refuse,
            read_only: false,
            commit: CommitMode::PerWrite,
            grow: None,
        }
    }
}

pub struct Engine {
    origin: Box<dyn ReadAt + Send + Sync>,
    cow: Box<dyn Backing>,
    geometry: Geometry,
    origin_bytes: u64,
    read_only: bool,
    table: RwLock<ChunkMap>,
    meta: Metadata,
    stripes: Box<[Mutex<()>]>,
    /// Set when the COW is about to be thrown away: closing then commits nothing.
    abandoned: std::sync::atomic::AtomicBool,
}

impl Engine {
    pub fn open(
        origin: Box<dyn ReadAt + Send + Sync>,
        cow: Box<dyn Backing>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let origin_bytes = origin
            .size()
            .map_err(EngineError::io("reading the golden image size", 0))?;
        let mut store = LoadedStore::load(cow.as_ref(), options.table_chunk_sectors)?;
        let g = store.geometry;
        if store.state == HeaderState::New && !options.read_only {
            initialise(cow.as_ref(), g)?;
            store.state = HeaderState::Valid;
        }
        let origin_chunks = origin_bytes.div_ceil(g.chunk_bytes());
        if let Some(&old_chunk) = store.exceptions.keys().find(|&&c| c >= origin_chunks) {
            return Err(EngineError::OldChunkPastOrigin {
                old_chunk,
                origin_chunks,
            });
        }
        let meta = Metadata::new(&store, options.overflow, options.commit, options.grow);
        Ok(Engine {
            origin,
            cow,
            geometry: g,
            origin_bytes,
            read_only: options.read_only,
            table: RwLock::new(std::mem::take(&mut store.exceptions)),
            meta,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The COW is about to be discarded (a reset): closing the engine writes nothing more.
    pub fn abandon(&self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Grows the COW to `len` bytes (a whole number of chunks); returns the old size.
    /// A smaller `len` changes nothing: a COW never shrinks.
    pub fn grow(&self, len: u64) -> Result<u64, EngineError> {
        if self.read_only {
            return Err(EngineError::ReadOnly);
        }
        let len = len / self.geometry.chunk_bytes() * self.geometry.chunk_bytes();
        self.meta.grow(self.cow.as_ref(), len)
    }

    /// Size of the disk the engine presents: the golden image's size.
    pub fn size(&self) -> u64 {
        self.origin_bytes
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn state(&self) -> SnapshotState {
        self.meta.state()
    }

    /// What `dmsetup status` would print for this COW right now.
    pub fn usage(&self) -> Usage {
        self.meta.usage()
    }

    pub fn exception_count(&self) -> usize {
        self.table.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        self.check_range(offset, buf.len())?;
        self.meta.check_readable()?;
        // One read per run of chunks that lie back to back in the same file, so a large
        // read of untouched (or sequentially copied) chunks is one system call.
        for run in self.runs(offset, buf.len()) {
            let seg = &mut buf[run.start..run.end];
            match run.source {
                Source::Cow(at) => self
                    .cow
                    .read_exact_at(seg, at)
                    .map_err(EngineError::io("reading the COW", at))?,
                Source::Origin(at) => self
                    .origin
                    .read_exact_at(seg, at)
                    .map_err(EngineError::io("reading the golden image", at))?,
            }
        }
        Ok(())
    }

    /// Where `len` bytes at `offset` lie: runs of (file, offset, length) in order, for a
    /// server that sends them straight from the page cache. None when a backing has no file.
    pub fn extents(&self, offset: u64, len: usize) -> Option<Result<Vec<Extent<'_>>, EngineError>> {
        let (cow_fd, origin_fd) = (self.cow.fd()?, self.origin.fd()?);
        if let Err(e) = self
            .check_range(offset, len)
            .and_then(|()| self.meta.check_readable())
        {
            return Some(Err(e));
        }
        let extents = self
            .runs(offset, len)
            .into_iter()
            .map(|run| {
                let (fd, at) = match run.source {
                    Source::Cow(at) => (cow_fd, at),
                    Source::Origin(at) => (origin_fd, at),
                };
                Extent {
                    fd,
                    offset: at,
                    len: run.end - run.start,
                }
            })
            .collect();
        Some(Ok(extents))
    }

    /// Splits `len` bytes at `offset` into runs that are contiguous in one file.
    fn runs(&self, offset: u64, len: usize) -> Vec<Run> {
        let cb = self.geometry.chunk_bytes();
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let mut runs: Vec<Run> = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let n = segment_len(cb, pos % cb, len - done);
            let source = match table.get(&(pos / cb)) {
                Some(&new) => Source::Cow(self.geometry.offset(new) + pos % cb),
                None => Source::Origin(pos),
            };
            match runs.last_mut() {
                Some(last) if last.source.continues_with(source, last.end - last.start) => {
                    last.end += n
                }
                _ => runs.push(Run {
                    source,
                    start: done,
                    end: done + n,
                }),
            }
            done += n;
        }
        runs
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), EngineError> {
        if self.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_range(offset, buf.len())?;
        let cb = self.geometry.chunk_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = segment_len(cb, pos % cb, buf.len() - done);
            self.write_in_chunk(pos / cb, pos % cb, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Makes every completed write durable: data still in the page cache and, with
    /// [`CommitMode::OnFlush`], the exceptions recorded since the last flush.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.meta.check_readable()?;
        self.meta.flush(self.cow.as_ref())
    }

    /// Commits the exceptions recorded since the last flush, if any, without syncing data
    /// otherwise: what a write-through protocol (AoE, which never flushes) calls after
    /// each write, so a completed write survives this process as it would the kernel's.
    pub fn commit(&self) -> Result<(), EngineError> {
        self.meta.check_readable()?;
        self.meta.commit_recorded(self.cow.as_ref())
    }

    /// A discard, as the kernel's snapshot target does it with `discard_zeroes_cow`: every
    /// chunk the range covers whole and that has an exception is zeroed in the COW (its
    /// blocks are punched out where the file system can); other chunks are left alone, so
    /// they keep reading the golden image. The exception itself stays: the format has no way
    /// to remove one, so the fill level does not drop.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        if self.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_range_u64(offset, len)?;
        self.meta.check_writable()?;
        let cb = self.geometry.chunk_bytes();
        let first = offset.div_ceil(cb);
        let end = (offset + len) / cb;
        for chunk in first..end {
            if let Some(new) = self.lookup(chunk) {
                let at = self.geometry.offset(new);
                self.cow
                    .discard(at, cb)
                    .map_err(EngineError::io("zeroing a COW chunk", at))?;
            }
        }
        Ok(())
    }

    /// Makes the range read as zeros. Chunks without an exception whose golden bytes are
    /// already zero need nothing; a whole chunk with one is punched out unless `no_hole`;
    /// everything else is an ordinary write of zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<(), EngineError> {
        if self.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_range_u64(offset, len)?;
        let cb = self.geometry.chunk_bytes();
        let zeroes = vec![0u8; self.geometry.chunk_len()];
        let mut origin = vec![0u8; self.geometry.chunk_len()];
        let mut pos = offset;
        while pos < offset + len {
            let within = pos % cb;
            let n = cb.min(offset + len - pos).min(cb - within);
            let seg = usize::try_from(n).expect("within a chunk");
            self.meta.check_writable()?;
            match self.lookup(pos / cb) {
                Some(new) if n == cb && !no_hole => {
                    let at = self.geometry.offset(new);
                    self.cow
                        .discard(at, cb)
                        .map_err(EngineError::io("zeroing a COW chunk", at))?;
                }
                Some(new) => self.write_mapped(new, within, &zeroes[..seg])?,
                None => {
                    self.origin
                        .read_exact_at(&mut origin[..seg], pos)
                        .map_err(EngineError::io("reading the golden image", pos))?;
                    if origin[..seg].iter().any(|&b| b != 0) {
                        self.write_in_chunk(pos / cb, within, &zeroes[..seg])?;
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn write_in_chunk(&self, chunk: u64, within: u64, data: &[u8]) -> Result<(), EngineError> {
        self.meta.check_writable()?;
        if let Some(new) = self.lookup(chunk) {
            return self.write_mapped(new, within, data);
        }
        let _guard = self.stripes[stripe(chunk)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(new) = self.lookup(chunk) {
            return self.write_mapped(new, within, data);
        }
        let new = self.meta.prepare(self.cow.as_ref())?;
        let copied = self.copy_out(chunk, new, within, data);
        let e = DiskException {
            old_chunk: chunk,
            new_chunk: new,
        };
        self.meta.commit(self.cow.as_ref(), e, copied.is_ok())?;
        copied?;
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chunk, new);
        Ok(())
    }

    fn write_mapped(&self, new: u64, within: u64, data: &[u8]) -> Result<(), EngineError> {
        let at = self.geometry.offset(new) + within;
        self.cow
            .write_all_at(data, at)
            .map_err(EngineError::io("writing the COW", at))
    }

    /// Writes the new chunk: the origin's bytes with `data` laid over them. Between two
    /// files the kernel copies the origin's bytes the write does not cover, so they pass
    /// through no buffer here; elsewhere only those bytes are read, into a buffer each
    /// thread keeps, so a first write costs one chunk of copying instead of three (zeroing,
    /// reading, writing).
    fn copy_out(&self, chunk: u64, new: u64, within: u64, data: &[u8]) -> Result<(), EngineError> {
        let cb = self.geometry.chunk_bytes();
        let dest = self.geometry.offset(new);
        let write = |bytes: &[u8], at: u64| {
            self.cow
                .write_all_at(bytes, at)
                .map_err(EngineError::io("writing the COW", at))
        };
        if within == 0 && data.len() as u64 == cb {
            return write(data, dest);
        }
        let start = chunk * cb;
        let in_origin = usize::try_from(cb.min(self.origin_bytes - start)).expect("within a chunk");
        let w = usize::try_from(within).expect("within a chunk");
        let end = w + data.len();
        debug_assert!(
            end <= in_origin,
            "writes are checked against the disk's size"
        );
        let len = self.geometry.chunk_len();
        // The origin's bytes before and after the write; the last chunk of an origin that
        // ends inside it is zero past that end, as in the kernel.
        let around = [0..w, end..in_origin];
        if self.copied_in_kernel(start, dest, &around)? {
            write(data, dest + within)?;
            if in_origin < len {
                write(&vec![0; len - in_origin], dest + in_origin as u64)?;
            }
            return Ok(());
        }
        CHUNK_BUFFER.with_borrow_mut(|buf| {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let buf = &mut buf[..len];
            for range in around.into_iter().filter(|r| !r.is_empty()) {
                let at = start + range.start as u64;
                self.origin
                    .read_exact_at(&mut buf[range], at)
                    .map_err(EngineError::io("reading the golden image", at))?;
            }
            buf[in_origin..].fill(0);
            buf[w..end].copy_from_slice(data);
            write(buf, dest)
        })
    }

    /// Copies the origin's `ranges` of the chunk at `start` to the new chunk at `dest` file
    /// to file; false when the backings cannot, and nothing was (or all must be) copied.
    fn copied_in_kernel(
        &self,
        start: u64,
        dest: u64,
        ranges: &[std::ops::Range<usize>],
    ) -> Result<bool, EngineError> {
        for range in ranges.iter().filter(|r| !r.is_empty()) {
            let at = start + range.start as u64;
            let copied = self
                .cow
                .copy_from(
                    self.origin.as_ref(),
                    at,
                    dest + range.start as u64,
                    range.len(),
                )
                .map_err(EngineError::io("copying the golden image into the COW", at))?;
            if !copied {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn lookup(&self, chunk: u64) -> Option<u64> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&chunk)
            .copied()
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), EngineError> {
        self.check_range_u64(offset, len as u64)
    }

    fn check_range_u64(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.origin_bytes => Ok(()),
            _ => Err(EngineError::OutOfRange {
                offset,
                len,
                size: self.origin_bytes,
            }),
        }
    }
}

impl Drop for Engine {
    /// Closing commits what a flush would: exceptions recorded in memory reach the disk.
    fn drop(&mut self) {
        let abandoned = self.abandoned.load(std::sync::atomic::Ordering::Acquire);
        if self.meta.mode() == CommitMode::OnFlush
            && self.meta.state() != SnapshotState::Invalid
            && !abandoned
        {
            let _ = self.meta.flush(self.cow.as_ref());
        }
    }
}

/// Starts a new snapshot in a COW whose magic is 0, as the kernel does — but zeroes
/// area 0 before writing the header, so a crash in between cannot expose stale entries.
fn initialise(cow: &dyn Backing, g: Geometry) -> Result<(), EngineError> {
    let zeroes = vec![0u8; g.chunk_len()];
    let area0 = g.offset(g.area_location(0));
    cow.write_all_at(&zeroes, area0)
        .map_err(EngineError::io("zeroing area 0", area0))?;
    cow.sync_data()
        .map_err(EngineError::io("flushing the COW", 0))?;
    let mut header_chunk = zeroes;
    header_chunk[..crate::cow::HEADER_SIZE]
        .copy_from_slice(&Header::new(g.chunk_sectors(), true).encode());
    cow.write_all_at(&header_chunk, 0)
        .map_err(EngineError::io("writing the header", 0))?;
    cow.sync_data()
        .map_err(EngineError::io("flushing the COW", 0))
}

/// A piece of a read: `len` bytes of the file `fd` at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Extent<'a> {
    pub fd: std::os::fd::BorrowedFd<'a>,
    pub offset: u64,
    pub len: usize,
}

/// Where a run of a read comes from: a byte offset in the COW or in the golden image.
#[derive(Debug, Clone, Copy)]
enum Source {
    Cow(u64),
    Origin(u64),
}

impl Source {
    /// True when `next` starts right where a run of `len` bytes from `self` ends.
    fn continues_with(self, next: Source, len: usize) -> bool {
        match (self, next) {
            (Source::Cow(a), Source::Cow(b)) | (Source::Origin(a), Source::Origin(b)) => {
                a + len as u64 == b
            }
            _ => false,
        }
    }
}

struct Run {
    source: Source,
    start: usize,
    end: usize,
}

thread_local! {
    /// A chunk's worth of bytes per thread for [`Engine::copy_out`]; its contents between
    /// calls do not matter, as every byte is set before it is written.
    static CHUNK_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn segment_len(chunk_bytes: u64, within: u64, remaining: usize) -> usize {
    let room = chunk_bytes - within;
    usize::try_from(room).map_or(remaining, |room| room.min(remaining))
}

fn stripe(chunk: u64) -> usize {
    (chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % STRIPES
}
