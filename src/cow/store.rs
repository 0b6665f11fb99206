//! Loading a persistent store the way `persistent_read_metadata` does, with every
//! inconsistency the kernel would trip over (or silently misread) reported as a typed error.

use std::collections::HashMap;
use std::io;

use super::error::FormatError;
use super::format::{
    DiskException, Geometry, Header, HeaderState, DEFAULT_CHUNK_SECTORS, DISK_EXCEPTION_SIZE,
    HEADER_SIZE,
};
use super::usage::Usage;
use crate::base::chunkmap::ChunkMap;

/// Positional reads from a file or block device.
pub trait ReadAt {
    /// Fills `buf` from `offset`; an error if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// The file behind it, when there is one: lets a server send bytes straight from the
    /// page cache (sendfile) instead of copying them through a buffer.
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// A persistent store as loaded: the header, the exception table and the allocator state.
#[derive(Debug)]
pub struct LoadedStore {
    /// For a new snapshot, the header the kernel would write.
    pub header: Header,
    pub state: HeaderState,
    pub geometry: Geometry,
    pub cow_bytes: u64,
    /// Origin chunk -> COW chunk. Empty for an invalid snapshot (the kernel does not read it).
    pub exceptions: ChunkMap,
    /// The first area that is not full.
    pub current_area: u64,
    /// Entries already in the current area.
    pub current_committed: u64,
    /// The current area's bytes as read, which later commits overwrite entry by entry.
    pub area: Vec<u8>,
    /// Next chunk the allocator hands out.
    pub next_free: u64,
}

impl LoadedStore {
    /// Loads a store. `table_chunk_sectors` is the chunk size a table would give; as in the
    /// kernel, a header's own chunk size overrides it, and it decides only for a new snapshot.
    pub fn load<R: ReadAt + ?Sized>(
        src: &R,
        table_chunk_sectors: Option<u32>,
    ) -> Result<Self, FormatError> {
        let cow_bytes = src.size().map_err(|source| FormatError::Io {
            what: "COW size",
            offset: 0,
            source,
        })?;
        if cow_bytes < HEADER_SIZE as u64 {
            return Err(FormatError::ShortHeader {
                len: cow_bytes,
                needed: HEADER_SIZE as u64,
            });
        }
        let mut raw = [0u8; HEADER_SIZE];
        src.read_exact_at(&mut raw, 0)
            .map_err(|source| FormatError::Io {
                what: "header",
                offset: 0,
                source,
            })?;
        let on_disk = Header::decode(&raw);
        let state = on_disk.state()?;
        let (header, geometry) = match state {
            HeaderState::New => {
                let g = Geometry::new(table_chunk_sectors.unwrap_or(DEFAULT_CHUNK_SECTORS))?;
                (Header::new(g.chunk_sectors(), true), g)
            }
            _ => (on_disk, Geometry::new(on_disk.chunk_sectors)?),
        };
        if cow_bytes < geometry.chunk_bytes() {
            return Err(FormatError::ShortHeader {
                len: cow_bytes,
                needed: geometry.chunk_bytes(),
            });
        }
        let mut store = LoadedStore {
            header,
            state,
            geometry,
            cow_bytes,
            exceptions: ChunkMap::default(),
            current_area: 0,
            current_committed: 0,
            area: vec![0; geometry.chunk_len()],
            next_free: geometry.first_data_chunk(),
        };
        match state {
            // The kernel writes a header and zeroes area 0, so area 0 must fit.
            HeaderState::New => store.check_area_fits(0)?,
            HeaderState::Invalid => {}
            HeaderState::Valid => store.read_exceptions(src)?,
        }
        Ok(store)
    }

    /// `read_exceptions`: areas 0, 1, 2 ... until one is not full.
    fn read_exceptions<R: ReadAt + ?Sized>(&mut self, src: &R) -> Result<(), FormatError> {
        let g = self.geometry;
        let per_area = g.exceptions_per_area();
        let mut new_chunks: HashMap<u64, u64> = HashMap::new();
        let mut area_buf = vec![0u8; g.chunk_len()];
        let mut max_new = None;
        for area in 0.. {
            self.check_area_fits(area)?;
            let offset = g.offset(g.area_location(area));
            src.read_exact_at(&mut area_buf, offset)
                .map_err(|source| FormatError::Io {
                    what: "metadata area",
                    offset,
                    source,
                })?;
            let mut full = true;
            for index in 0..per_area {
                let at =
                    usize::try_from(index).expect("an area fits in memory") * DISK_EXCEPTION_SIZE;
                let e = DiskException::decode(&area_buf[at..at + DISK_EXCEPTION_SIZE]);
                if e.new_chunk == 0 {
                    self.current_committed = index;
                    full = false;
                    break;
                }
                let entry_offset = offset + at as u64;
                self.check_entry(area, index, entry_offset, e, &mut new_chunks)?;
                max_new = max_new.max(Some(e.new_chunk));
            }
            if !full {
                self.current_area = area;
                std::mem::swap(&mut self.area, &mut area_buf);
                break;
            }
        }
        if let Some(max) = max_new {
            self.next_free = self.next_free.max(max + 1);
        }
        self.next_free = g.skip_metadata(self.next_free);
        Ok(())
    }

    fn check_area_fits(&self, area: u64) -> Result<(), FormatError> {
        let g = self.geometry;
        let offset = g.offset(g.area_location(area));
        let needed = g.chunk_bytes();
        if offset
            .checked_add(needed)
            .is_none_or(|end| end > self.cow_bytes)
        {
            return Err(FormatError::TruncatedArea {
                area,
                offset,
                needed,
                len: self.cow_bytes,
            });
        }
        Ok(())
    }

    fn check_entry(
        &mut self,
        area: u64,
        index: u64,
        offset: u64,
        e: DiskException,
        new_chunks: &mut HashMap<u64, u64>,
    ) -> Result<(), FormatError> {
        let g = self.geometry;
        if g.is_metadata_chunk(e.new_chunk) {
            return Err(FormatError::NewChunkOnMetadata {
                area,
                index,
                offset,
                old_chunk: e.old_chunk,
                new_chunk: e.new_chunk,
            });
        }
        if !g.fits(e.new_chunk, self.cow_bytes) {
            return Err(FormatError::NewChunkPastEnd {
                area,
                index,
                offset,
                old_chunk: e.old_chunk,
                new_chunk: e.new_chunk,
                cow_chunks: self.cow_bytes / g.chunk_bytes(),
            });
        }
        if let Some(first_new_chunk) = self.exceptions.insert(e.old_chunk, e.new_chunk) {
            return Err(FormatError::DuplicateOldChunk {
                area,
                index,
                offset,
                old_chunk: e.old_chunk,
                new_chunk: e.new_chunk,
                first_new_chunk,
            });
        }
        if let Some(first_old_chunk) = new_chunks.insert(e.new_chunk, e.old_chunk) {
            return Err(FormatError::DuplicateNewChunk {
                area,
                index,
                offset,
                old_chunk: e.old_chunk,
                new_chunk: e.new_chunk,
                first_old_chunk,
            });
        }
        Ok(())
    }

    /// What `dmsetup status` prints for this store once the kernel has loaded it.
    pub fn usage(&self) -> Usage {
        Usage::compute(
            self.geometry,
            self.next_free,
            self.current_area,
            self.cow_bytes,
        )
    }

    /// Areas in use (the current one included).
    pub fn areas(&self) -> u64 {
        self.current_area + 1
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        crate::base::fileid::file_or_device_size(self)
    }
}
