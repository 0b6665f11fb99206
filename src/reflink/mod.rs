//! Reflink storage: a PC's disk is a clone of its version's disk file on a file system that
//! shares blocks between files (btrfs, xfs). Cloning costs the same whatever the file's size
//! (the file system copies extent references, not data); a PC's first write into a block
//! makes the file system copy that one block, not a COW chunk; what a PC has changed is what
//! its file no longer shares. This module holds the three file-system facts that storage
//! rests on: which file system a path is on ([`fs`]), a durable clone ([`clone`]) and the
//! bytes a clone no longer shares ([`extents`], kept between commands by [`fillcache`]).
//! `cowctl serve` serves the clones
//! (`engine::clonefile`) of images with `storage: reflink`.

pub mod clone;
pub mod extents;
pub mod fillcache;
pub mod fs;

use std::path::PathBuf;

/// What went wrong, as the sentence the admin sees.
#[derive(Debug, thiserror::Error)]
pub enum ReflinkError {
    #[error("cannot read the file system of {path}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is on {kind} (mounted at {mount}), which cannot clone files: reflink storage needs btrfs, or xfs made with reflink=1")]
    CannotClone {
        path: PathBuf,
        kind: fs::FsKind,
        mount: PathBuf,
    },
    #[error("{source_file} and {clone} are on different file systems ({source_mount} and {clone_mount}): a clone must be on its source's")]
    NotOneFileSystem {
        source_file: PathBuf,
        clone: PathBuf,
        source_mount: PathBuf,
        clone_mount: PathBuf,
    },
    #[error("cannot clone {source_file} to {clone}")]
    Clone {
        source_file: PathBuf,
        clone: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move {clone} to {aside}")]
    SetAside {
        clone: PathBuf,
        aside: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the old disk {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{clone} is there already; a clone never replaces a file")]
    Exists { clone: PathBuf },
    #[error("cannot read the extents of {path}")]
    Extents {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
