//! One mutating cowctl at a time: an exclusive lock on <run dir>/lock that says who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use std::io;
use std::path::PathBuf;

pub struct Lock {
    _file: File,
}

pub fn acquire(run_dir: &Path, what: &str) -> Result<Lock, LockError> {
    let path = run_dir.join("lock");
    let mut file = crate::base::rundir::open(run_dir, "lock", false)?;
    if let Err(e) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        match e {
            std::fs::TryLockError::WouldBlock => {
                return Err(LockError::Held {
                    holder: holder.trim().to_string(),
                })
            }
            std::fs::TryLockError::Error(source) => return Err(LockError::Lock { path, source }),
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(
        file,
        "pid {} running `cowctl {what}` since unix time {since}",
        std::process::id()
    )?;
    Ok(Lock { _file: file })
}

/// One mutating cowctl at a time (`lock::acquire`).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cowctl is at work ({holder}); try again when it is done")]
    Held { holder: String },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    RunDir(#[from] crate::base::rundir::RunDirError),
    /// The holder's line could not be written into the lock file.
    #[error(transparent)]
    Write(#[from] io::Error),
}
