//! The few file operations LIO's configfs tree needs, under a swappable root, so the LIO
//! logic runs unchanged on a fake tree in tests.

use std::path::PathBuf;

pub use super::error::ConfigfsError;

type Result<T, E = ConfigfsError> = std::result::Result<T, E>;

pub const LIO_ROOT: &str = "/sys/kernel/config/target";

pub trait ConfigFs: Send + Sync {
    fn exists(&self, path: &str) -> bool;
    fn mkdir(&self, path: &str) -> Result<()>;
    fn rmdir(&self, path: &str) -> Result<()>;
    fn write(&self, path: &str, value: &str) -> Result<()>;
    fn read(&self, path: &str) -> Result<String>;
    fn symlink(&self, target: &str, link: &str) -> Result<()>;
    fn unlink(&self, link: &str) -> Result<()>;
    /// Names in a directory (files, directories and links), sorted.
    fn list(&self, path: &str) -> Result<Vec<String>>;
    /// Names of the symbolic links in a directory.
    fn links(&self, path: &str) -> Result<Vec<String>>;
    /// Where a link points, relative to the root.
    fn readlink(&self, link: &str) -> Result<String>;
}

pub struct RealConfigFs {
    root: PathBuf,
}

impl RealConfigFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RealConfigFs { root: root.into() }
    }

    /// Loads LIO's core (and mounts configfs) the first time the tree is needed.
    fn ready(&self) {
        if !self.root.exists() {
            super::modprobe("target_core_mod");
            super::modprobe("target_core_iblock");
            if !self.root.exists() {
                let _ = std::process::Command::new("mount")
                    .args(["-t", "configfs", "configfs", "/sys/kernel/config"])
                    .status();
            }
        }
    }

    fn p(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

impl ConfigFs for RealConfigFs {
    fn exists(&self, path: &str) -> bool {
        self.p(path).symlink_metadata().is_ok()
    }
    fn mkdir(&self, path: &str) -> Result<()> {
        self.ready();
        std::fs::create_dir(self.p(path)).map_err(|source| ConfigfsError::Mkdir {
            path: self.p(path),
            source,
        })
    }
    fn rmdir(&self, path: &str) -> Result<()> {
        std::fs::remove_dir(self.p(path)).map_err(|source| ConfigfsError::Rmdir {
            path: self.p(path),
            source,
        })
    }
    fn write(&self, path: &str, value: &str) -> Result<()> {
        std::fs::write(self.p(path), value).map_err(|source| ConfigfsError::Write {
            path: self.p(path),
            value: value.to_string(),
            source,
        })
    }
    fn read(&self, path: &str) -> Result<String> {
        std::fs::read_to_string(self.p(path)).map_err(|source| ConfigfsError::Read {
            path: self.p(path),
            source,
        })
    }
    fn symlink(&self, target: &str, link: &str) -> Result<()> {
        std::os::unix::fs::symlink(self.p(target), self.p(link)).map_err(|source| {
            ConfigfsError::Symlink {
                link: self.p(link),
                target: self.p(target),
                source,
            }
        })
    }
    fn unlink(&self, link: &str) -> Result<()> {
        std::fs::remove_file(self.p(link)).map_err(|source| ConfigfsError::Unlink {
            link: self.p(link),
            source,
        })
    }
    fn list(&self, path: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = match std::fs::read_dir(self.p(path)) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ConfigfsError::List {
                    path: self.p(path),
                    source,
                })
            }
        };
        names.sort();
        Ok(names)
    }
    fn links(&self, path: &str) -> Result<Vec<String>> {
        Ok(self
            .list(path)?
            .into_iter()
            .filter(|n| {
                self.p(path)
                    .join(n)
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
            })
            .collect())
    }
    fn readlink(&self, link: &str) -> Result<String> {
        let t = std::fs::read_link(self.p(link)).map_err(|source| ConfigfsError::Readlink {
            link: self.p(link),
            source,
        })?;
        Ok(t.strip_prefix(&self.root)
            .unwrap_or(&t)
            .display()
            .to_string())
    }
}

/// Joins configfs path parts.
pub fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}
