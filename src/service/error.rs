//! What `cowctl serve` refuses (`service::Error`): its own refusals name the PC, file or
//! address and read as the sentence the admin sees; the room logic's, the image store's,
//! the COW files' and the kernel's errors pass through with their own words. The control
//! socket's client fails as a `ClientError`; the HTTP service's listeners as an `HttpError`
//! (here, below `web`, so `run::StartHttp` can name it).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::EngineError;
use crate::room::steps::StepFailed;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    #[error(transparent)]
    Lock(#[from] crate::room::lock::LockError),
    #[error(transparent)]
    Step(#[from] StepFailed<Error>),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    FileStep(#[from] crate::room::step::FileStepError),
    #[error(transparent)]
    CowFile(#[from] crate::cowfile::CowFileError),
    #[error(transparent)]
    Reflink(#[from] crate::reflink::ReflinkError),
    #[error(transparent)]
    /// Boxed: the rbd storage's errors name a PC, its clone and two snapshots.
    Rbd(Box<crate::rbdpc::Error>),
    #[error(transparent)]
    Secret(#[from] crate::manifest::secrets::SecretError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestErrors),
    #[error(transparent)]
    UnknownPc(#[from] crate::manifest::UnknownPc),
    #[error(transparent)]
    RunDir(#[from] crate::base::rundir::RunDirError),
    #[error(transparent)]
    Loop(#[from] crate::kernel::error::LoopError),
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The signal mask could not be set.
    #[error(transparent)]
    Signals(#[from] nix::Error),
    /// A reply could not be turned into JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A socket, thread or file operation, in the system's words.
    #[error(transparent)]
    Io(#[from] io::Error),

    // A manifest the running service cannot take without a restart.
    #[error("nbd.listen changed from {from} to {to}: restart cowctl serve to listen there")]
    NbdListenChanged { from: SocketAddr, to: SocketAddr },
    #[error("the http section changed: restart cowctl serve for it to take effect")]
    HttpChanged,
    #[error("iscsi.portals changed: restart cowctl serve to listen there")]
    PortalsChanged,
    #[error("aoe.interface changed: restart cowctl serve to serve AoE there")]
    AoeInterfaceChanged,

    // Steps and the PCs they name.
    #[error("{pc} is not in the manifest")]
    NotInManifest { pc: String },
    #[error("the service cannot {step}: it is the kernel backend's step")]
    KernelStep { step: String },
    #[error("{pc} is not being served")]
    NotServed { pc: String },
    #[error("{pc}'s connections did not finish within {seconds} s")]
    Drain { pc: String, seconds: u64 },
    #[error("flushing {pc}'s COW")]
    Flush {
        pc: String,
        #[source]
        source: EngineError,
    },
    /// Before a commit: the engine's error in the sentence, its cause not repeated.
    #[error("flushing {pc}'s COW: {error}")]
    FlushForCommit { pc: String, error: EngineError },
    #[error("growing {pc}'s COW")]
    Grow {
        pc: String,
        #[source]
        source: EngineError,
    },
    #[error("{pc} was not reset")]
    NotReset { pc: String },
    #[error("resetting {pc}")]
    Resetting {
        pc: String,
        #[source]
        source: Box<Error>,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move {} aside to {}", cow.display(), discard.display())]
    MoveAside {
        cow: PathBuf,
        discard: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A failed reset whose old COW could not be put back either; `source` is why the
    /// reset failed.
    #[error("and {} could not be moved back to {}: {back}", discard.display(), cow.display())]
    NotMovedBack {
        discard: PathBuf,
        cow: PathBuf,
        back: io::Error,
        #[source]
        source: Box<Error>,
    },
    /// A version name that is not one (`VersionName`'s own words).
    #[error("{0}")]
    Version(String),
    #[error("{pc} is in use ({}): a running system's disk is not consistent on its own; shut the PC down first, or say --pause to stop its I/O for the copy", peers.join(", "))]
    InUse { pc: String, peers: Vec<String> },

    // The kernel backend's room (`KernelRoom`).
    #[error("{pc} is not applied: there is no served disk to reset")]
    NothingToReset { pc: String },
    #[error("{pc} is not applied")]
    NotApplied { pc: String },
    #[error("{pc}'s COW {} is on no loop device", cow.display())]
    CowOnNoLoop { pc: String, cow: PathBuf },
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot grow {} to {len} bytes", path.display())]
    GrowFile {
        path: PathBuf,
        len: u64,
        #[source]
        source: io::Error,
    },

    // Starting up: sockets and listeners.
    #[error("cowctl serve is already running (its control socket {} answers)", socket.display())]
    AlreadyRunning { socket: PathBuf },
    #[error("cannot listen for NBD on {addr} (nbd.listen in {})", manifest.display())]
    ListenNbd {
        addr: SocketAddr,
        manifest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for iSCSI on {portal} (iscsi.portals in {})", manifest.display())]
    ListenIscsi {
        portal: SocketAddr,
        manifest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve AoE on {interface} (aoe.interface in {})", manifest.display())]
    ServeAoe {
        interface: String,
        manifest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a socket (it is a {kind}): cowctl replaces only a stale socket there; choose another path (nbd.socket)", path.display())]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("{} is in use by another process", path.display())]
    SocketInUse { path: PathBuf },
    #[error("cannot remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {}", path.display())]
    ListenUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// What came in on the control socket.
    #[error("not a cowctl control request")]
    NotARequest(#[source] serde_json::Error),
}

/// The control socket's client (`control::call`): the service not reached, not answering
/// as it should, or refusing (its reply's error, causes and all, as the service wrote it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach cowctl serve at {}", path.display())]
    Reach {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no reply from cowctl serve at {}", path.display())]
    NoReply {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cowctl serve at {} closed the connection without replying", path.display())]
    Closed { path: PathBuf },
    #[error("cowctl serve at {} took every PC down but had not exited after {seconds} s", path.display())]
    Late {
        path: PathBuf,
        seconds: u64,
        #[source]
        source: io::Error,
    },
    #[error("cowctl serve at {} took every PC down but had not exited after {seconds} s (pid {pid})", path.display())]
    StillRunning {
        path: PathBuf,
        seconds: u64,
        pid: i32,
    },
    #[error("a malformed reply from cowctl serve")]
    Malformed(#[source] serde_json::Error),
    /// The service refused: its words.
    #[error("{0}")]
    Refused(String),
    /// The request could not be turned into JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Sending the request or waiting, in the system's words.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The HTTP service could not start (`web::spawn`).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr} (http.{field} in the manifest)")]
    Listen {
        addr: SocketAddr,
        field: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the HTTP service's runtime")]
    Runtime(#[source] std::io::Error),
}

impl From<crate::rbdpc::Error> for Error {
    fn from(e: crate::rbdpc::Error) -> Error {
        Error::Rbd(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::logtext::chain;

    /// The sentences the admin read before the service's errors were typed, causes and all.
    #[test]
    fn errors_read_as_the_sentences_they_replace() {
        let gone = || io::Error::from(io::ErrorKind::NotFound);
        let failed = Error::Resetting {
            pc: "pc-01".into(),
            source: Box::new(Error::NotMovedBack {
                discard: "/c/pc-01.discard".into(),
                cow: "/c/pc-01.cow".into(),
                back: io::Error::other("disk on fire"),
                source: Box::new(Error::Read {
                    path: "/c/pc-01.cow".into(),
                    source: gone(),
                }),
            }),
        };
        assert_eq!(
            chain(&failed),
            "resetting pc-01: and /c/pc-01.discard could not be moved back to /c/pc-01.cow: \
             disk on fire: cannot read /c/pc-01.cow: entity not found"
        );
        let flush = Error::FlushForCommit {
            pc: "pc-01".into(),
            error: EngineError::Io {
                what: "sync",
                offset: 0,
                source: gone(),
            },
        };
        assert_eq!(
            chain(&flush),
            "flushing pc-01's COW: sync at byte 0 failed: entity not found"
        );
        let late = ClientError::StillRunning {
            path: "/run/cowctl/cowctl.sock".into(),
            seconds: 120,
            pid: 7,
        };
        assert_eq!(
            chain(&late),
            "cowctl serve at /run/cowctl/cowctl.sock took every PC down but had not exited \
             after 120 s (pid 7)"
        );
        let in_use = Error::InUse {
            pc: "pc-01".into(),
            peers: vec!["nbd 10.0.0.1".into(), "aoe 52:54:00:00:00:01".into()],
        };
        assert!(chain(&in_use).starts_with(
            "pc-01 is in use (nbd 10.0.0.1, aoe 52:54:00:00:00:01): a running system's disk"
        ));
    }
}
