//! Which file a path names, however it is spelled: its canonical path (symlinks, `.`,
//! `..` and `//` resolved, as far as the path exists) and, for a file that exists, its
//! device and inode, so a hard link or a symlink to a golden image is that image.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl Identity {
    pub fn same(&self, other: &Identity) -> bool {
        self.path == other.path || (self.inode.is_some() && self.inode == other.inode)
    }
}

/// Whether two paths name the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    identity(a).same(&identity(b))
}

pub fn identity(path: &Path) -> Identity {
    let inode = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    Identity {
        path: canonical(path),
        inode,
    }
}

/// The canonical form of `path`: the longest existing prefix resolved by the file system,
/// the rest normalised by hand.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => canonical(dir).join(name),
        _ => normalise(path),
    }
}

fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Size of a regular file or a block device (whose metadata length is 0).
pub fn file_or_device_size(file: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok(meta.len())
    } else {
        let mut handle = file;
        handle.seek(SeekFrom::End(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_links_and_missing_files() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("golden.img");
        std::fs::write(&img, b"x").unwrap();
        let odd = PathBuf::from(format!("{}//./sub/../golden.img", d.path().display()));
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert!(identity(&odd).same(&identity(&img)));
        std::os::unix::fs::symlink(&img, d.path().join("link.img")).unwrap();
        assert!(identity(&d.path().join("link.img")).same(&identity(&img)));
        std::fs::hard_link(&img, d.path().join("hard.img")).unwrap();
        assert!(identity(&d.path().join("hard.img")).same(&identity(&img)));
        let missing = d.path().join("sub/../cow/pc.cow");
        assert!(identity(&missing).same(&identity(&d.path().join("cow/pc.cow"))));
        assert!(!identity(&d.path().join("other.img")).same(&identity(&img)));
    }
}
