//! Which file system a path is on, and where it is mounted: reflink storage refuses a
//! file system that cannot clone with a sentence naming both.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ReflinkError;

/// A file system type, from statfs's magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Btrfs,
    Xfs,
    Ext4,
    Tmpfs,
    Zfs,
    Nfs,
    Overlay,
    F2fs,
    Fuse,
    Other(i64),
}

impl FsKind {
    pub fn from_magic(magic: i64) -> FsKind {
        match magic {
            0x9123_683E => FsKind::Btrfs,
            0x5846_5342 => FsKind::Xfs,
            0xEF53 => FsKind::Ext4,
            0x0102_1994 => FsKind::Tmpfs,
            0x2FC1_2FC1 => FsKind::Zfs,
            0x6969 => FsKind::Nfs,
            0x794C_7630 => FsKind::Overlay,
            0xF2F5_2010 => FsKind::F2fs,
            0x6573_5546 => FsKind::Fuse,
            m => FsKind::Other(m),
        }
    }

    /// Whether the kind can share blocks between files at all (xfs only when made with
    /// reflink=1, which [`super::clone::probe`] finds out).
    pub fn may_clone(self) -> bool {
        matches!(self, FsKind::Btrfs | FsKind::Xfs)
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsKind::Btrfs => write!(f, "btrfs"),
            FsKind::Xfs => write!(f, "xfs"),
            FsKind::Ext4 => write!(f, "ext4"),
            FsKind::Tmpfs => write!(f, "tmpfs"),
            FsKind::Zfs => write!(f, "zfs"),
            FsKind::Nfs => write!(f, "nfs"),
            FsKind::Overlay => write!(f, "overlayfs"),
            FsKind::F2fs => write!(f, "f2fs"),
            FsKind::Fuse => write!(f, "fuse"),
            FsKind::Other(m) => write!(f, "file system 0x{m:x}"),
        }
    }
}

/// A path's file system: its kind, its mount point and the device numbers mountinfo gives
/// it (two paths are on one file system exactly when those match; on btrfs a file's
/// st_dev names its subvolume instead, so it cannot tell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSystem {
    pub kind: FsKind,
    pub mount: PathBuf,
    pub dev: String,
}

/// The file system `path` (a file or a directory that exists) is on.
pub fn of(path: &Path) -> Result<FileSystem, ReflinkError> {
    let err = |source: std::io::Error| ReflinkError::Statfs {
        path: path.to_path_buf(),
        source,
    };
    let s = nix::sys::statfs::statfs(path).map_err(|e| err(e.into()))?;
    #[allow(clippy::useless_conversion)]
    let kind = FsKind::from_magic(i64::from(s.filesystem_type().0));
    let real = std::fs::canonicalize(path).map_err(err)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(err)?;
    let (dev, mount) = mount_of(&mountinfo, &real).unwrap_or_else(|| ("?".into(), "?".into()));
    Ok(FileSystem { kind, mount, dev })
}

/// The device numbers and mount point of the mount `real` (a canonical path) lies under:
/// the longest mount point that is a prefix of it, the last listed when one place was
/// mounted over. Fields of /proc/self/mountinfo: id, parent, major:minor, root, mount
/// point, ...; spaces in paths are written as \040.
fn mount_of(mountinfo: &str, real: &Path) -> Option<(String, PathBuf)> {
    let mut best: Option<(String, PathBuf)> = None;
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let (Some(numbers), Some(point)) = (fields.nth(2), fields.nth(1)) else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        let longer = best
            .as_ref()
            .is_none_or(|(_, b)| point.components().count() >= b.components().count());
        if real.starts_with(&point) && longer {
            best = Some((numbers.to_string(), point));
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_is_the_longest_prefix_and_is_unescaped() {
        let info = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 7:3 / /srv/my\\040pcs rw - xfs /dev/loop3 rw\n\
                    41 22 0:40 / /srv/my rw - btrfs /dev/loop4 rw\n";
        let at = |p: &str| mount_of(info, Path::new(p)).map(|(d, m)| (d, m.display().to_string()));
        assert_eq!(
            at("/srv/my pcs/pc-01.img"),
            Some(("7:3".into(), "/srv/my pcs".into()))
        );
        assert_eq!(
            at("/srv/my/pc-01.img"),
            Some(("0:40".into(), "/srv/my".into()))
        );
        assert_eq!(at("/srv/mypcs"), Some(("253:0".into(), "/".into())));
        let over = format!("{info}50 41 0:55 / /srv/my rw - tmpfs tmpfs rw\n");
        assert_eq!(mount_of(&over, Path::new("/srv/my/x")).unwrap().0, "0:55");
    }

    #[test]
    fn only_btrfs_and_xfs_may_clone() {
        assert!(FsKind::from_magic(0x9123_683E).may_clone());
        assert!(FsKind::from_magic(0x5846_5342).may_clone());
        assert!(!FsKind::from_magic(0xEF53).may_clone());
        assert_eq!(FsKind::from_magic(0x9123_683E).to_string(), "btrfs");
        assert_eq!(FsKind::from_magic(0x1234).to_string(), "file system 0x1234");
    }
}
