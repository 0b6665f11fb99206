//! `cowctl image import` into a family whose versions are in a Ceph pool: the disk's data
//! (holes and zero blocks skipped) written into a new image under a name no version has,
//! snapshotted and protected, its record set, and only then renamed to `NAME.<version>`.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::rbdstore::{rbd, RbdStore, IMPORT_ORDER, RECORD_KEY};
use super::store::{now, Version, VersionName};
use super::{Error, Result};

/// An rbd family's import: `src` (any format qemu-img reads; converted to a sparse raw
/// file in a private temporary folder first when it is not raw) written into a new image.
pub(super) fn import(
    store: &RbdStore,
    src: &Path,
    name: Option<VersionName>,
    note: &str,
) -> Result<Version> {
    let format = super::import::format_of(src)?;
    let name = name.unwrap_or_else(|| store.view.next_name());
    store.check_free(&name)?;
    // Removed with all it holds when the import ends, however it ends.
    let scratch;
    let raw = if format == "raw" {
        src.to_path_buf()
    } else {
        scratch = Scratch::new()?;
        let converted = scratch.0.join("disk.img");
        super::import::convert(src, &format, &converted)?;
        converted
    };
    let made_from = format!("import of {} ({format})", src.display());
    import_raw(store, &raw, &name, note, made_from)
}

/// Writes `raw`'s data (its holes and zero blocks skipped) into a new image under a
/// name no version has, snapshots it, and only then names it as the version (current when
/// it is the first): that last step under the family's change lease, not the copy, which
/// may take long.
fn import_raw(
    store: &RbdStore,
    raw: &Path,
    name: &VersionName,
    note: &str,
    made_from: String,
) -> Result<Version> {
    let open = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Open { path, source }
    };
    let mut file = std::fs::File::open(raw).map_err(open(raw))?;
    let size = file.metadata().map_err(open(raw))?.len();
    if size == 0 || size % 512 != 0 {
        return Err(Error::NotSectors {
            disk: raw.to_path_buf(),
            size,
        });
    }
    if let Some(other) = store.view.versions.values().find(|v| v.size != size) {
        return Err(Error::SizeDiffers {
            size,
            other: other.name.to_string(),
            other_size: other.size,
        });
    }
    let sha256 = super::hash::sha256_file(raw)?;
    let pool = store.cluster.pool();
    let incoming = format!("{}.incoming-{name}-{}", store.base, std::process::id());
    rbd(pool.create(&incoming, size, IMPORT_ORDER))?;
    let made = (|| -> Result<Version> {
        let image = rbd(pool.open(&incoming))?;
        copy_data(&mut file, size, |buf, at| rbd(image.write_at(buf, at)))
            .map_err(|e| e.or_open(raw))?;
        rbd(image.flush())?;
        let v = Version {
            name: name.clone(),
            parent: None,
            created: now(),
            note: note.to_string(),
            made_from,
            size,
            fingerprint: String::new(),
            sha256: Some(sha256),
            hashed_later: None,
        };
        let text = serde_json::to_string(&v).expect("serializable");
        rbd(image.set_metadata(RECORD_KEY, &text))?;
        rbd(image.snapshot_protected(name.as_str()))?;
        drop(image);
        let changing = store.reopen_to_change()?;
        changing.check_free(name)?;
        if let Some(other) = changing.view.versions.values().find(|v| v.size != size) {
            return Err(Error::SizeDiffers {
                size,
                other: other.name.to_string(),
                other_size: other.size,
            });
        }
        changing.still_changing()?;
        rbd(pool.rename(&incoming, &changing.image_name(name)))?;
        if changing.view.current().is_none() {
            let mut p = changing.view.promoted.clone();
            p.current = Some(v.name.clone());
            changing.write_promoted(&p)?;
        }
        Ok(v)
    })();
    if made.is_err() {
        let _ = pool
            .open(&incoming)
            .map(|i| i.remove_snapshot(name.as_str()));
        let _ = pool.remove(&incoming);
    }
    made
}

/// A private folder for a conversion: under $TMPDIR, else /var/tmp (a disk, where /tmp
/// may be memory), named after this process and the time; removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let root =
            std::env::var_os("TMPDIR").map_or_else(|| "/var/tmp".into(), std::path::PathBuf::from);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = root.join(format!("cowctl-import-{}-{stamp}", std::process::id()));
        let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        made.map_err(|source| Error::Open {
            path: dir.clone(),
            source,
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why copying a disk's data stopped: reading it, or writing it.
enum CopyStop {
    Read(std::io::Error),
    Write(Error),
}

impl CopyStop {
    fn or_open(self, path: &Path) -> Error {
        match self {
            CopyStop::Read(source) => Error::Open {
                path: path.to_path_buf(),
                source,
            },
            CopyStop::Write(e) => e,
        }
    }
}

/// Calls `write` for every 4 MiB piece of `file`'s data that is not all zeros, skipping
/// holes (SEEK_DATA / SEEK_HOLE).
fn copy_data(
    file: &mut std::fs::File,
    size: u64,
    mut write: impl FnMut(&[u8], u64) -> Result<()>,
) -> std::result::Result<(), CopyStop> {
    use std::os::unix::io::AsRawFd;
    const PIECE: usize = 4 << 20;
    let mut buf = vec![0u8; PIECE];
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(file.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(CopyStop::Read(e));
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let mut pos = data;
        while pos < hole {
            let len = usize::try_from((hole - pos).min(PIECE as u64)).unwrap_or(PIECE);
            file.seek(SeekFrom::Start(pos)).map_err(CopyStop::Read)?;
            file.read_exact(&mut buf[..len]).map_err(CopyStop::Read)?;
            if buf[..len].iter().any(|&b| b != 0) {
                write(&buf[..len], pos).map_err(CopyStop::Write)?;
            }
            pos += len as u64;
        }
        at = hole.max(data + 1);
    }
    Ok(())
}
