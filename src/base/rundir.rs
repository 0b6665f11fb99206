//! cowctl's run directory (`/run/cowctl`, or `$COWCTL_RUN_DIR`): its lock, pid file, log and
//! sockets. It must be a directory of its own, not a symlink, owned by the user cowctl runs
//! as and writable by no one else; its files are opened without following symlinks, so a planted link cannot make
//! cowctl write over another file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use std::path::PathBuf;

/// Why the run directory or one of its files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("the run directory {} is a symlink: cowctl does not follow it (remove it, or set COWCTL_RUN_DIR)", dir.display())]
    Symlink { dir: PathBuf },
    #[error("the run directory {} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("the run directory {} belongs to uid {uid}, not to this user", dir.display())]
    NotOwned { dir: PathBuf, uid: u32 },
    /// Whoever may write here may swap the sockets or the lock for their own.
    #[error("the run directory {} is writable by {who} (mode {mode:04o}): others could replace cowctl's sockets and lock; chmod 700 it", dir.display())]
    Writable {
        dir: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("cannot create {}", dir.display())]
    CreateParent {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the run directory {}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", dir.display())]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {} (cowctl does not follow symlinks in its run directory)", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of the run directory could not be emptied before it is written.
    #[error(transparent)]
    Truncate(std::io::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = RunDirError> = std::result::Result<T, E>;

/// The run directory: `$COWCTL_RUN_DIR`, else `/run/cowctl`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("COWCTL_RUN_DIR").map_or_else(|| PathBuf::from("/run/cowctl"), PathBuf::from)
}

/// Creates the directory (mode 0700) or checks the one that is there.
pub fn ensure(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(RunDirError::Symlink {
            dir: dir.to_path_buf(),
        }),
        Ok(m) if !m.is_dir() => Err(RunDirError::NotADirectory {
            dir: dir.to_path_buf(),
        }),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => Err(RunDirError::NotOwned {
            dir: dir.to_path_buf(),
            uid: m.uid(),
        }),
        Ok(m) if m.mode() & 0o022 != 0 => Err(RunDirError::Writable {
            dir: dir.to_path_buf(),
            who: if m.mode() & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            },
            mode: m.mode() & 0o7777,
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| RunDirError::CreateParent {
                    dir: parent.to_path_buf(),
                    source,
                })?;
            }
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|source| RunDirError::Create {
                    dir: dir.to_path_buf(),
                    source,
                })
        }
        Err(source) => Err(RunDirError::Read {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Opens `dir/name` for writing (created with mode 0600 if missing), never through a
/// symlink; `append` keeps what is there.
pub fn open(dir: &Path, name: &str, append: bool) -> Result<File> {
    ensure(dir)?;
    let path = dir.join(name);
    let mut o = OpenOptions::new();
    o.read(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC);
    if append {
        o.append(true);
    } else {
        o.write(true);
    }
    o.open(&path)
        .map_err(|source| RunDirError::Open { path, source })
}

/// Replaces `dir/name` with `text` (a pid file).
pub fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = open(dir, name, false)?;
    f.set_len(0).map_err(RunDirError::Truncate)?;
    f.write_all(text.as_bytes())
        .map_err(|source| RunDirError::Write {
            path: dir.join(name),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        ensure(&run).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, run.join("serve.pid")).unwrap();
        assert!(write(&run, "serve.pid", "1\n").is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        assert!(matches!(
            ensure(&link).unwrap_err(),
            RunDirError::Symlink { .. }
        ));
    }
    #[test]
    fn a_run_directory_others_may_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        ensure(&run).unwrap();
        for (mode, who) in [
            (0o777, "every user"),
            (0o1777, "every user"),
            (0o770, "its group"),
        ] {
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ensure(&run).unwrap_err();
            assert!(
                matches!(e, RunDirError::Writable { who: w, .. } if w == who),
                "{e}"
            );
            assert!(write(&run, "serve.pid", "1\n").is_err());
        }
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&run).unwrap();
    }
}
