//! Clones made durable: FICLONE into a new temporary file, fsync, then a rename that never
//! replaces a file, so a crash leaves either no clone or a whole one.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{fs, ReflinkError};
use crate::base::durable;

/// The name a clone is made under before it is renamed into place; one left by a crash is
/// cowctl's own and is removed by the next clone to the same place.
pub fn partial_path(clone: &Path) -> PathBuf {
    let mut p = clone.as_os_str().to_owned();
    p.push(".cloning");
    PathBuf::from(p)
}

/// Makes `clone` a copy of `source` that shares all its blocks, in a time that does not grow
/// with the file's size. Refuses when `clone` exists, when the two would be on different
/// file systems and when the file system cannot clone. The new file is 0600 (a PC's disk).
pub fn clone_new(source: &Path, clone: &Path) -> Result<(), ReflinkError> {
    if clone.symlink_metadata().is_ok() {
        return Err(ReflinkError::Exists {
            clone: clone.to_path_buf(),
        });
    }
    let prepared = prepare(source, clone)?;
    install(&prepared.partial, clone)
}

/// A clone made ahead under its partial name, and the image file it was made from: what
/// serves the clone's unwritten blocks must be that file, even if the image's name has
/// been given to another file since.
#[derive(Debug)]
pub struct Prepared {
    pub partial: PathBuf,
    pub source: File,
}

/// A fresh clone of `source` for `clone`'s place, made and synced under its partial name
/// (a reset makes it before the PC's pause: cloning waits for the image's readers and
/// syncs); [`install`] puts it in place. `clone` itself is not looked at.
pub fn prepare(source: &Path, clone: &Path) -> Result<Prepared, ReflinkError> {
    let dir = parent(clone);
    let (from, to) = (fs::of(source)?, fs::of(dir)?);
    if from.dev != to.dev {
        return Err(ReflinkError::NotOneFileSystem {
            source_file: source.to_path_buf(),
            clone: clone.to_path_buf(),
            source_mount: from.mount,
            clone_mount: to.mount,
        });
    }
    let partial = partial_path(clone);
    match clone_into(source, &partial) {
        Ok(source) => Ok(Prepared { partial, source }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            match e {
                ReflinkError::Clone { source: e, .. } if refused_by_fs(&e) => {
                    Err(ReflinkError::CannotClone {
                        path: dir.to_path_buf(),
                        kind: to.kind,
                        mount: to.mount,
                    })
                }
                other => Err(other),
            }
        }
    }
}

/// Renames a clone [`prepare`]d as `partial` to `clone`, never over a file; on failure the
/// partial clone is removed.
pub fn install(partial: &Path, clone: &Path) -> Result<(), ReflinkError> {
    durable::rename_new(partial, clone).map_err(|source| {
        let _ = std::fs::remove_file(partial);
        ReflinkError::Clone {
            source_file: partial.to_path_buf(),
            clone: clone.to_path_buf(),
            source,
        }
    })
}

/// Replaces the clone at `clone` with a fresh clone of `source` (a reset): the old file is
/// renamed to `aside` (never over a file there), the new clone made, and only then is the
/// old one removed. When the new clone cannot be made, the old file goes back to its name.
pub fn replace_with_clone(source: &Path, clone: &Path, aside: &Path) -> Result<(), ReflinkError> {
    set_aside(clone, aside)?;
    if let Err(e) = clone_new(source, clone) {
        return Err(put_back(aside, clone).err().unwrap_or(e));
    }
    remove_aside(aside)
}

/// Moves a clone out of the way under `aside`, which must not exist.
pub fn set_aside(clone: &Path, aside: &Path) -> Result<(), ReflinkError> {
    durable::rename_new(clone, aside).map_err(|source| ReflinkError::SetAside {
        clone: clone.to_path_buf(),
        aside: aside.to_path_buf(),
        source,
    })
}

/// Returns a clone set aside to its name (after a failed replacement).
pub fn put_back(aside: &Path, clone: &Path) -> Result<(), ReflinkError> {
    durable::rename_new(aside, clone).map_err(|source| ReflinkError::SetAside {
        clone: aside.to_path_buf(),
        aside: clone.to_path_buf(),
        source,
    })
}

/// Frees an old clone set aside.
pub fn remove_aside(aside: &Path) -> Result<(), ReflinkError> {
    std::fs::remove_file(aside).map_err(|source| ReflinkError::Remove {
        path: aside.to_path_buf(),
        source,
    })
}

/// FICLONE of `source` into a new file at `partial`, synced; returns `source` opened.
fn clone_into(source: &Path, partial: &Path) -> Result<File, ReflinkError> {
    let err = |source_err: std::io::Error| ReflinkError::Clone {
        source_file: source.to_path_buf(),
        clone: partial.to_path_buf(),
        source: source_err,
    };
    let _ = std::fs::remove_file(partial);
    let src = File::open(source).map_err(err)?;
    let dst = new_private_file(partial).map_err(err)?;
    ficlone(&src, &dst).map_err(err)?;
    dst.sync_all().map_err(err)?;
    Ok(src)
}

/// A file made new for cowctl alone (0600), never through a symlink.
fn new_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn ficlone(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both files are open for
    // the duration of the call.
    let r = unsafe { nix::libc::ioctl(dst.as_raw_fd(), nix::libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The errors a file system gives when it cannot share blocks (xfs without reflink=1 and
/// ext4 say EOPNOTSUPP; some say EINVAL or ENOTTY for an ioctl they do not know).
fn refused_by_fs(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EOPNOTSUPP | nix::libc::EINVAL | nix::libc::ENOTTY | nix::libc::EXDEV)
    )
}

/// Whether files in `dir` can be cloned: the file system's kind first, then a clone of a
/// small file made there (both files are removed before it returns).
pub fn probe(dir: &Path) -> Result<(), ReflinkError> {
    let here = fs::of(dir)?;
    let cannot = || ReflinkError::CannotClone {
        path: dir.to_path_buf(),
        kind: here.kind,
        mount: here.mount.clone(),
    };
    if !here.kind.may_clone() {
        return Err(cannot());
    }
    let probe = dir.join(format!(".cowctl-reflink-probe.{}", std::process::id()));
    let clone = partial_path(&probe);
    let result = (|| {
        let mut src = new_private_file(&probe)?;
        std::io::Write::write_all(&mut src, &[0x5a; 4096])?;
        ficlone(&src, &new_private_file(&clone)?)
    })();
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(&clone);
    match result {
        Ok(()) => Ok(()),
        Err(e) if refused_by_fs(&e) => Err(cannot()),
        Err(source) => Err(ReflinkError::Clone {
            source_file: probe,
            clone,
            source,
        }),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
