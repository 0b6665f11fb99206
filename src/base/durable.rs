//! File operations whose result must survive a crash and never clobber a file: a rename
//! that refuses to replace what is there, whole-file writes through a synced temporary
//! file, and the directory fsync that makes a rename itself durable.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Makes the entries of `dir` (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory a path lies in ("." for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Renames `from` to `to`, failing with AlreadyExists rather than replacing a file.
pub fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)?;
    sync_dir(dir_of(to))?;
    if dir_of(from) != dir_of(to) {
        sync_dir(dir_of(from))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` as one step: a synced temporary file renamed over it, then
/// the directory synced. The temporary file is created new, never through a symlink.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o644, None)
}

/// [`write_atomic`] for what other users have no business reading (a PC's golden-image
/// record): a new file is 0600, one that is there keeps its mode (the admin's to change).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let kept = match std::fs::symlink_metadata(path) {
        Ok(m) => Some(m.permissions().mode() & 0o7777),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    write_atomic_mode(path, bytes, 0o600, kept)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32, kept: Option<u32>) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(kept.unwrap_or(mode))
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    if let Some(m) = kept {
        // The umask narrowed the mode at creation; the file it replaces had exactly this.
        f.set_permissions(std::fs::Permissions::from_mode(m))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir_of(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_never_replaces_and_writes_are_whole() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        assert_eq!(
            rename_new(&a, &b).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
        std::fs::remove_file(&b).unwrap();
        rename_new(&a, &b).unwrap();
        write_atomic(&b, b"new").unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert!(!d.path().join("b.tmp").exists());
    }

    #[test]
    fn private_writes_make_new_files_0600_and_keep_an_existing_files_mode() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        write_atomic_private(&a, b"1").unwrap();
        assert_eq!(mode(&a), 0o600);
        std::fs::write(&b, "old").unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o664)).unwrap();
        write_atomic_private(&b, b"new").unwrap();
        assert_eq!(
            (std::fs::read(&b).unwrap(), mode(&b)),
            (b"new".to_vec(), 0o664)
        );
    }
}
