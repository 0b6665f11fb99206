//! What a version's disk costs on disk: its allocated bytes, and how many of them it shares
//! with other files (a commit on btrfs or xfs clones its parent's blocks), read with the
//! kernel's FIEMAP. Where a file system has no FIEMAP (tmpfs), nothing is shared.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Space {
    /// Blocks the file has allocated, in bytes.
    pub allocated: u64,
    /// Of those, bytes in extents the file shares with other files (reflinks).
    pub shared: u64,
}

/// The space `path` takes; zero for a file that cannot be read.
pub fn of(path: &Path) -> Space {
    let Ok(file) = File::open(path) else {
        return Space::default();
    };
    let allocated = file.metadata().map_or(0, |m| m.blocks() * 512);
    Space {
        allocated,
        shared: crate::reflink::extents::sharing_of(&file)
            .map_or(0, |s| s.shared)
            .min(allocated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_its_own_shares_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let s = of(&p);
        assert_eq!(s.shared, 0);
        assert!(s.allocated >= 1 << 20, "{s:?}");
        assert_eq!(of(&d.path().join("missing")), Space::default());
    }
}
