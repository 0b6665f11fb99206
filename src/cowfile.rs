//! Whole-file operations on COW files: create, inspect, flatten, reset.
//! Each refuses to destroy data it was not asked to destroy.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::base::units::{ByteSize, SECTOR};
use crate::cow::{FormatError, Geometry, Header, HeaderState, LoadedStore, SNAP_MAGIC};
use crate::engine::backing::FileBacking;
use crate::engine::{Engine, EngineError, EngineOptions, OverflowPolicy, SnapshotState};
use crate::kernel::loopdev::Loops;

/// What a whole-file operation refused, or which file failed; each reads as the sentence
/// the admin sees, the cause as its `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum CowFileError {
    #[error("--chunk {chunk}")]
    Chunk {
        chunk: ByteSize,
        #[source]
        source: FormatError,
    },
    #[error("--chunk")]
    TableChunk(#[source] FormatError),
    #[error("--size {size} is not a whole number of 512-byte sectors")]
    NotSectors { size: ByteSize },
    #[error("--size {size} is too small for chunk size {chunk}: a COW needs at least {needed} (header, first metadata area, one data chunk)")]
    TooSmall {
        size: ByteSize,
        chunk: ByteSize,
        needed: ByteSize,
    },
    #[error("{} already exists; cowctl never overwrites a COW file (use `cowctl cow reset` to return it to the golden state)", path.display())]
    Exists { path: PathBuf },
    #[error("output {} already exists; remove it first", path.display())]
    OutputExists { path: PathBuf },
    #[error("output {} is the same file as input {}", output.display(), input.display())]
    SameFile { output: PathBuf, input: PathBuf },
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot size {} to {size}", path.display())]
    Size {
        path: PathBuf,
        size: ByteSize,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the header of {}", path.display())]
    WriteHeader {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write an empty store into {}", path.display())]
    WriteStore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open golden image {}", path.display())]
    OpenGolden {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open COW file {}", path.display())]
    OpenCow {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open COW file {} over {}", cow.display(), base.display())]
    OpenEngine {
        cow: PathBuf,
        base: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot flush {}", path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a usable COW file", path.display())]
    NotUsable {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{} is an invalid snapshot: its data cannot be trusted, so it is not flattened", path.display())]
    Invalid { path: PathBuf },
    #[error("reading the disk at byte {offset}")]
    ReadDisk {
        offset: u64,
        #[source]
        source: EngineError,
    },
    #[error("writing {} at byte {offset}", path.display())]
    WriteOutput {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing {}", path.display())]
    FlushOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A size, length or flush of a file just opened.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("COW file {} is in use by another cowctl process", path.display())]
    Locked { path: PathBuf },
    #[error("{} is attached to {}: it is in use, not reset (cowctl down first)", path.display(), dev.display())]
    OnLoop { path: PathBuf, dev: PathBuf },
    #[error("{} is open in {}: it is in use, not reset", path.display(), holders.join(", "))]
    OpenElsewhere { path: PathBuf, holders: Vec<String> },
    #[error("{} is not a COW file: it looks like {what}; refusing to wipe it", path.display())]
    NotACow { path: PathBuf, what: String },
}

type Result<T, E = CowFileError> = std::result::Result<T, E>;

#[derive(Debug, Serialize)]
pub struct Created {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub chunk_sectors: u32,
    pub data_chunks: u64,
    /// The size asked for, when it was rounded up by a chunk (see `Geometry::fill_invalidates`).
    pub requested_bytes: Option<u64>,
}

/// A new COW's mode: it holds everything its PC wrote, which is no other user's to read.
pub const PRIVATE: u32 = 0o600;

/// Creates a sparse COW file with a valid header and an empty area 0.
pub fn create(path: &Path, size: ByteSize, chunk: ByteSize) -> Result<Created> {
    let g = Geometry::from_bytes(chunk.bytes())
        .map_err(|source| CowFileError::Chunk { chunk, source })?;
    if !size.bytes().is_multiple_of(SECTOR) {
        return Err(CowFileError::NotSectors { size });
    }
    let needed = 3 * g.chunk_bytes();
    if size.bytes() < needed {
        return Err(CowFileError::TooSmall {
            size,
            chunk,
            needed: ByteSize(needed),
        });
    }
    // A size whose fill would invalidate a PO snapshot gets one more chunk.
    let requested = size;
    let size = if g.fill_invalidates(size.bytes()) {
        ByteSize(size.bytes() - size.bytes() % g.chunk_bytes() + g.chunk_bytes())
    } else {
        size
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(PRIVATE)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CowFileError::Exists {
                path: path.to_path_buf(),
            },
            _ => CowFileError::Create {
                path: path.to_path_buf(),
                source,
            },
        })?;
    file.set_len(size.bytes())
        .map_err(|source| CowFileError::Size {
            path: path.to_path_buf(),
            size,
            source,
        })?;
    file.write_all_at(&Header::new(g.chunk_sectors(), true).encode(), 0)
        .and_then(|()| file.sync_all())
        .map_err(|source| CowFileError::WriteHeader {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Created {
        path: path.to_path_buf(),
        size_bytes: size.bytes(),
        chunk_sectors: g.chunk_sectors(),
        data_chunks: g.data_chunk_capacity(size.bytes()),
        requested_bytes: (requested != size).then_some(requested.bytes()),
    })
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    /// `new` (magic 0, the kernel starts a fresh snapshot), `valid` or `invalid`.
    pub state: HeaderState,
    pub valid: bool,
    pub version: u32,
    pub chunk_sectors: u32,
    pub exceptions_per_area: u64,
    pub areas: u64,
    pub exceptions: u64,
    pub file_bytes: u64,
    pub sectors_allocated: u64,
    pub total_sectors: u64,
    pub metadata_sectors: u64,
    pub data_fill_percent: f64,
    /// What `dmsetup status` prints after `snapshot` once the kernel has loaded this file.
    pub status: String,
    /// Filling this COW would invalidate the snapshot even with `PO` (see
    /// `Geometry::fill_invalidates`).
    pub fill_invalidates: bool,
}

/// A `--chunk` size as the sector count a dm table would carry.
fn table_chunk_sectors(chunk: Option<ByteSize>) -> Result<Option<u32>> {
    let sectors = chunk.map(|c| Geometry::from_bytes(c.bytes()).map(|g| g.chunk_sectors()));
    sectors.transpose().map_err(CowFileError::TableChunk)
}

/// Reads a COW file without changing it. `table_chunk` matters only for a new (magic 0) file.
pub fn inspect(path: &Path, table_chunk: Option<ByteSize>) -> Result<Inspection> {
    let file = File::open(path).map_err(|source| CowFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let table_chunk_sectors = table_chunk_sectors(table_chunk)?;
    let store = LoadedStore::load(&file, table_chunk_sectors).map_err(|source| {
        CowFileError::NotUsable {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let usage = store.usage();
    let status = if store.state == HeaderState::Invalid {
        "Invalid".to_string()
    } else {
        usage.to_string()
    };
    Ok(Inspection {
        path: path.to_path_buf(),
        state: store.state,
        valid: store.header.valid != 0,
        version: store.header.version,
        chunk_sectors: store.geometry.chunk_sectors(),
        exceptions_per_area: store.geometry.exceptions_per_area(),
        areas: store.areas(),
        exceptions: store.exceptions.len() as u64,
        file_bytes: store.cow_bytes,
        sectors_allocated: usage.sectors_allocated,
        total_sectors: usage.total_sectors,
        metadata_sectors: usage.metadata_sectors,
        data_fill_percent: usage.data_fill_percent(),
        status,
        fill_invalidates: store.geometry.fill_invalidates(store.cow_bytes),
    })
}

#[derive(Debug, Serialize)]
pub struct Flattened {
    pub output: PathBuf,
    pub bytes: u64,
    pub bytes_from_cow_chunks: u64,
}

/// Writes the PC's whole disk (golden image with the COW laid over it) as a raw image.
/// Zero blocks become holes. Refuses to overwrite an existing file.
pub fn flatten(
    base: &Path,
    cow: &Path,
    out: &Path,
    table_chunk: Option<ByteSize>,
) -> Result<Flattened> {
    let engine = open_engine(base, cow, table_chunk, true)?;
    if engine.state() == SnapshotState::Invalid {
        return Err(CowFileError::Invalid {
            path: cow.to_path_buf(),
        });
    }
    for input in [base, cow] {
        if same_file(input, out) {
            return Err(CowFileError::SameFile {
                output: out.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CowFileError::OutputExists {
                path: out.to_path_buf(),
            },
            _ => CowFileError::Create {
                path: out.to_path_buf(),
                source,
            },
        })?;
    let size = engine.size();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let n = usize::try_from((size - pos).min(buf.len() as u64)).expect("at most 1 MiB");
        engine
            .read_at(&mut buf[..n], pos)
            .map_err(|source| CowFileError::ReadDisk {
                offset: pos,
                source,
            })?;
        if buf[..n].iter().any(|&b| b != 0) {
            file.write_all_at(&buf[..n], pos)
                .map_err(|source| CowFileError::WriteOutput {
                    path: out.to_path_buf(),
                    offset: pos,
                    source,
                })?;
        }
        pos += n as u64;
    }
    file.set_len(size)?;
    file.flush()?;
    file.sync_all()
        .map_err(|source| CowFileError::FlushOutput {
            path: out.to_path_buf(),
            source,
        })?;
    Ok(Flattened {
        output: out.to_path_buf(),
        bytes: size,
        bytes_from_cow_chunks: engine.exception_count() as u64 * engine.geometry().chunk_bytes(),
    })
}

/// A new, empty, sparse file of `size` bytes at `path`, flushed; never replaces one. Reads as
/// zeros, so the kernel and the engine both start a new snapshot in it (magic 0).
pub fn create_empty(path: &Path, size: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE)
        .open(path)
        .map_err(|source| CowFileError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    file.set_len(size)?;
    file.sync_all()?;
    Ok(())
}

/// Opens the engine on a golden image and a COW file.
pub fn open_engine(
    base: &Path,
    cow: &Path,
    table_chunk: Option<ByteSize>,
    read_only: bool,
) -> Result<Engine> {
    let options = EngineOptions {
        table_chunk_sectors: table_chunk_sectors(table_chunk)?,
        overflow: OverflowPolicy::Refuse,
        read_only,
        commit: crate::engine::CommitMode::PerWrite,
        grow: None,
    };
    open_engine_with(base, cow, options)
}

/// Opens the engine with every option given; a writable COW is locked against other
/// cowctl processes for as long as the engine lives.
pub fn open_engine_with(base: &Path, cow: &Path, options: EngineOptions) -> Result<Engine> {
    let origin = FileBacking::open(base, false).map_err(|source| CowFileError::OpenGolden {
        path: base.to_path_buf(),
        source,
    })?;
    let cow_file =
        FileBacking::open(cow, !options.read_only).map_err(|source| CowFileError::OpenCow {
            path: cow.to_path_buf(),
            source,
        })?;
    if !options.read_only {
        lock(&cow_file)?;
    }
    Engine::open(Box::new(origin), Box::new(cow_file), options).map_err(|source| {
        CowFileError::OpenEngine {
            cow: cow.to_path_buf(),
            base: base.to_path_buf(),
            source,
        }
    })
}

fn lock(cow: &FileBacking) -> Result<()> {
    cow.lock_exclusive().map_err(|source| match source.kind() {
        io::ErrorKind::WouldBlock => CowFileError::Locked {
            path: cow.path().to_path_buf(),
        },
        _ => CowFileError::Lock {
            path: cow.path().to_path_buf(),
            source,
        },
    })
}

#[derive(Debug, Serialize)]
pub struct Reset {
    pub path: PathBuf,
    pub seconds: f64,
    pub bytes_freed: u64,
    /// False when the file system cannot punch holes: then only the header was zeroed and
    /// the old chunks stay allocated (but unused) until overwritten.
    pub holes_punched: bool,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Returns a COW file to the golden state in time independent of its size: punch out every
/// block (the file reads as zeros, so magic 0 = the kernel starts a new snapshot). Where
/// punching is not supported, zero the header chunk instead. `loops` says which files are
/// attached to loop devices (a COW on one is in use and is refused).
pub fn reset(path: &Path, loops: &dyn Loops) -> Result<Reset> {
    let start = Instant::now();
    let cow = FileBacking::open(path, true).map_err(|source| CowFileError::OpenCow {
        path: path.to_path_buf(),
        source,
    })?;
    lock(&cow)?;
    let file = cow.file();
    let meta = file.metadata()?;
    let len = crate::engine::backing::file_or_device_size(file)?;
    let mut raw = [0u8; crate::cow::HEADER_SIZE];
    let header = file
        .read_exact_at(&mut raw, 0)
        .ok()
        .map(|()| Header::decode(&raw));
    refuse_in_use(path, loops)?;
    let blocks_before = meta.blocks() * 512;
    let punched = punch_all(file, len).is_ok();
    if !punched {
        // No holes here: write an empty store instead (header, then a zeroed first
        // metadata area), exactly what the kernel writes into a new snapshot; the old data
        // stays behind it, unreachable, and the file still reads as a COW.
        if let Some(g) = header
            .filter(|h| h.magic == SNAP_MAGIC)
            .and_then(|h| Geometry::new(h.chunk_sectors).ok())
        {
            let mut store = vec![0u8; g.chunk_len() * 2];
            store[..crate::cow::HEADER_SIZE]
                .copy_from_slice(&Header::new(g.chunk_sectors(), true).encode());
            file.write_all_at(&store, 0)
                .map_err(|source| CowFileError::WriteStore {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    file.sync_all().map_err(|source| CowFileError::Flush {
        path: path.to_path_buf(),
        source,
    })?;
    let blocks_after = file.metadata()?.blocks() * 512;
    let elapsed = start.elapsed();
    Ok(Reset {
        path: path.to_path_buf(),
        seconds: elapsed.as_secs_f64(),
        bytes_freed: blocks_before.saturating_sub(blocks_after),
        holes_punched: punched,
        elapsed,
    })
}

/// Refuses a COW someone uses: on a loop device (no process shows those), open in a
/// process, or not a COW at all (an image whose first bytes happen to be zero).
fn refuse_in_use(path: &Path, loops: &dyn Loops) -> Result<()> {
    if let Ok(loops) = loops.list() {
        if let Some(l) = loops
            .iter()
            .find(|l| crate::base::fileid::same_file(&l.backing, path))
        {
            return Err(CowFileError::OnLoop {
                path: path.to_path_buf(),
                dev: l.dev.clone(),
            });
        }
    }
    let holders = crate::engine::filekind::open_by(path).unwrap_or_default();
    if !holders.is_empty() {
        return Err(CowFileError::OpenElsewhere {
            path: path.to_path_buf(),
            holders,
        });
    }
    // Only a COW (or a file with no data yet) is wiped: an image whose first bytes
    // happen to be zero is not.
    if let crate::engine::filekind::Kind::Other(what) = crate::engine::filekind::classify(path)
        .map_err(|source| CowFileError::Read {
            path: path.to_path_buf(),
            source,
        })?
    {
        return Err(CowFileError::NotACow {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(())
}

fn punch_all(file: &File, len: u64) -> nix::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let len = i64::try_from(len).map_err(|_| nix::errno::Errno::EFBIG)?;
    fallocate(
        std::os::fd::AsRawFd::as_raw_fd(file),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        len,
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_variants() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pc.cow");
        let (size, chunk) = (ByteSize(1 << 20), ByteSize(4096));
        create(&p, size, chunk).unwrap();
        let e = create(&p, size, chunk).unwrap_err();
        assert!(matches!(e, CowFileError::Exists { .. }), "{e}");
        assert!(e.to_string().ends_with("to return it to the golden state)"));
        let e = create(&d.path().join("b"), ByteSize(1000), chunk).unwrap_err();
        assert!(matches!(e, CowFileError::NotSectors { .. }), "{e}");
    }
}
