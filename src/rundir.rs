//! cowctl's run directory (`/run/cowctl`, or `$COWCTL_RUN_DIR`): its lock, pid file, log and
//! sockets. It must be a directory of its own, not a symlink, owned by the user cowctl runs
//! as and writable by no one else; its files are opened without following symlinks, so a planted link cannot make
//! cowctl write over another file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Creates the directory (mode 0700) or checks the one that is there.
pub fn ensure(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "the run directory {} is a symlink: cowctl does not follow it (remove it, or set COWCTL_RUN_DIR)",
            dir.display()
        ),
        Ok(m) if !m.is_dir() => bail!("the run directory {} is not a directory", dir.display()),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => bail!(
            "the run directory {} belongs to uid {}, not to this user",
            dir.display(),
            m.uid()
        ),
        // Whoever may write here may swap the sockets or the lock for their own.
        Ok(m) if m.mode() & 0o022 != 0 => bail!(
            "the run directory {} is writable by {} (mode {:04o}): others could replace cowctl's sockets and lock; chmod 700 it",
            dir.display(),
            if m.mode() & 0o002 != 0 { "every user" } else { "its group" },
            m.mode() & 0o7777
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the run directory {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
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
    o.open(&path).with_context(|| {
        format!(
            "cannot open {} (cowctl does not follow symlinks in its run directory)",
            path.display()
        )
    })
}

/// Replaces `dir/name` with `text` (a pid file).
pub fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = open(dir, name, false)?;
    f.set_len(0)?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(name).display()))
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
        assert!(ensure(&link)
            .unwrap_err()
            .to_string()
            .contains("is a symlink"));
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
            let e = ensure(&run).unwrap_err().to_string();
            assert!(e.contains(&format!("is writable by {who}")), "{e}");
            assert!(e.ends_with("chmod 700 it"), "{e}");
            assert!(write(&run, "serve.pid", "1\n").is_err());
        }
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&run).unwrap();
    }
}
