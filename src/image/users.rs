//! Back-references from a store to the COWs made over its versions, so that `image prune`
//! through any manifest sees every COW on the server:
//!
//! ```text
//! <versions>/.users/<hex SHA-256 of the COW's canonical path>   holds the COW's path
//! ```
//!
//! A reference only says where to look. Prune trusts the COW's own `.golden` record, read
//! each time; a reference whose record is gone or names another version is ignored.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::Error;
use sha2::{Digest, Sha256};

type Result<T, E = Error> = std::result::Result<T, E>;

pub const USERS: &str = ".users";

/// The store a version's disk lies in: `<store>/<version>/disk.img`.
pub fn store_of(disk: &Path) -> Option<&Path> {
    disk.parent()?.parent()
}

/// Notes that `cow` lies over a version of the store that `disk` (a version's disk) is in.
pub fn note(disk: &Path, cow: &Path) -> Result<()> {
    match store_of(disk) {
        Some(store) if store.is_dir() => note_in(store, cow),
        _ => Ok(()),
    }
}

/// Notes `cow` in `store`, durably; nothing is written when the reference is there already.
pub fn note_in(store: &Path, cow: &Path) -> Result<()> {
    let cow = std::fs::canonicalize(cow).unwrap_or_else(|_| cow.to_path_buf());
    let bytes = cow.as_os_str().as_bytes();
    let dir = store.join(USERS);
    let file = dir.join(key(&cow));
    if std::fs::read(&file).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    if !dir.is_dir() {
        std::fs::create_dir(&dir)
            .and_then(|()| crate::base::durable::sync_dir(store))
            .map_err(|source| Error::Create {
                path: dir.clone(),
                source,
            })?;
    }
    crate::base::durable::write_atomic(&file, bytes)
        .map_err(|source| Error::Write { path: file, source })
}

fn key(cow: &Path) -> String {
    Sha256::digest(cow.as_os_str().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every reference of the store: its file and the COW it names.
pub fn list(store: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(store.join(USERS)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            n.len() == 64 && n.as_bytes().iter().all(u8::is_ascii_hexdigit)
        })
        .filter_map(|e| {
            let cow = std::fs::read(e.path()).ok()?;
            let cow = PathBuf::from(std::ffi::OsStr::from_bytes(&cow));
            Some((e.path(), cow))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cow_is_noted_once_however_its_path_is_spelled() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("versions");
        std::fs::create_dir_all(store.join("v1")).unwrap();
        std::fs::write(d.path().join("pc.cow"), b"").unwrap();
        note(&store.join("v1/disk.img"), &d.path().join("pc.cow")).unwrap();
        note(
            &store.join("v1/disk.img"),
            &d.path().join("versions/../pc.cow"),
        )
        .unwrap();
        let refs = list(&store);
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_eq!(
            refs[0].1,
            std::fs::canonicalize(d.path().join("pc.cow")).unwrap()
        );
        // A disk outside any store notes nothing.
        note(
            Path::new("/nonexistent/x/disk.img"),
            &d.path().join("pc.cow"),
        )
        .unwrap();
    }
}
