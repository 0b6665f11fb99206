//! Ceph RBD through librados and librbd (loaded at run time, `ffi.rs`), as safe types: a
//! connection to the cluster and one pool ([`Pool`]), and an image opened for I/O
//! ([`Image`]). No policy: which images cowctl makes and how it names them is `storage:
//! rbd`'s (`engine/rbddisk.rs`, the service).

mod aio;
mod ffi;
mod image;
mod lease;
mod pool;

pub use aio::{ReadDone, WriteDone};
pub use image::{Image, Parent};
pub use lease::{Held, Locker};
pub use pool::Pool;

use std::path::PathBuf;

/// How to reach the cluster: the manifest's `ceph` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// ceph.conf (monitors, and usually the keyring).
    pub conf: PathBuf,
    /// A keyring other than the one the configuration names.
    pub keyring: Option<PathBuf>,
    /// The client's id: `admin` for `client.admin`.
    pub client: String,
    /// The pool the images and the PCs' clones live in.
    pub pool: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Ceph's client libraries cannot be loaded or lack a call cowctl makes ({0}): install Debian 12's librbd1 (apt-get install librbd1) or newer"
    )]
    Load(String),
    #[error("{what} has a NUL byte")]
    Nul { what: String },
    #[error("rbd: {op} {what} failed: {source}")]
    Call {
        op: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A failed call's errno (librados and librbd return it negated).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Call { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The cluster refuses this client: it is blocklisted (librbd's EBLOCKLISTED is
    /// ESHUTDOWN), as a gateway is when another breaks its lock.
    pub fn is_blocklisted(&self) -> bool {
        self.errno() == Some(libc::ESHUTDOWN)
    }

    /// The image or snapshot is not there.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `ret` < 0 is `-errno`.
fn check(ret: i64, op: &'static str, what: impl FnOnce() -> String) -> Result<u64> {
    if ret < 0 {
        let errno = i32::try_from(-ret).unwrap_or(libc::EIO);
        return Err(Error::Call {
            op,
            what: what(),
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(ret.unsigned_abs())
}

fn cstr(s: &str, what: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| Error::Nul {
        what: what.to_string(),
    })
}

fn calls() -> Result<&'static ffi::Calls> {
    ffi::calls().map_err(Error::Load)
}
