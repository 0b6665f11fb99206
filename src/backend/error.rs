//! What a backend refuses (`backend::Error`): the room logic's, the image store's and the
//! manifest's errors pass through with their own words; the seam's own refusals (the
//! service that does not start or answer, a kernel room with nothing to serve) name their
//! manifest, log or status.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    #[error(transparent)]
    /// Boxed: the rbd storage's errors name a PC, its clone and two snapshots.
    Rbd(Box<crate::rbdpc::Error>),
    #[error(transparent)]
    Lock(#[from] crate::room::lock::LockError),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    UnknownPc(#[from] crate::manifest::UnknownPc),
    #[error(transparent)]
    RunDir(#[from] crate::base::rundir::RunDirError),
    /// `cowctl serve` run in the foreground, in the service's words (with their causes).
    #[error(transparent)]
    Service(#[from] crate::service::Error),
    /// The service's control socket: not reached, or the service's refusal as it wrote it.
    #[error(transparent)]
    ServiceClient(#[from] crate::service::ClientError),
    /// Starting `cowctl serve` (this program, its log's handles), in the system's words.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error("cannot resolve {}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cowctl serve stopped answering on its control socket")]
    ServiceGone,
    #[error("cowctl serve committed nothing")]
    NothingCommitted,
    #[error("cannot start cowctl serve")]
    Spawn(#[source] std::io::Error),
    #[error("cowctl serve exited ({status}) before it answered: {last_line}")]
    ServiceExited {
        status: std::process::ExitStatus,
        last_line: String,
    },
    #[error("cowctl serve did not answer within 15 s (see {})", log.display())]
    ServiceSilent { log: PathBuf },
    #[error("{} is served by the kernel (device-mapper is here and backend is {backend}), where `cowctl apply` serves the disks and `cowctl serve` runs only the HTTP service and auto-extend, and the manifest asks for neither (no http section, no autoextend); set backend: userspace to serve the disks with cowctl's engine over NBD", manifest.display())]
    NothingToServe { manifest: PathBuf, backend: String },
}

impl From<crate::rbdpc::Error> for Error {
    fn from(e: crate::rbdpc::Error) -> Error {
        Error::Rbd(Box::new(e))
    }
}
