//! What the room logic refuses (`control::Error`): its own refusals name the PC, device or
//! file and read as the sentence the admin sees; what the kernel, image versions, COW files
//! and the run directory refuse passes through with their own words (`#[error(transparent)]`).

use std::io;
use std::path::PathBuf;

use crate::base::logtext::chain;
use crate::kernel::error::{
    ConfigfsError, DmError, LioError, LoopError, NetError, RbdMapError, VbladeError,
};
use crate::room::lock::LockError;
use crate::room::steps::StepFailed;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// Boxed: device-mapper's errors are the largest, and every result carries one's room.
    #[error(transparent)]
    Dm(Box<DmError>),
    #[error(transparent)]
    Configfs(#[from] ConfigfsError),
    #[error(transparent)]
    Lio(#[from] LioError),
    #[error(transparent)]
    Vblade(#[from] VbladeError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    RbdMap(#[from] RbdMapError),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
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
    Lock(#[from] LockError),
    /// A file a step reads (`classify`) could not be, in the system's words.
    #[error(transparent)]
    Io(#[from] io::Error),

    #[error("{pc}'s disk {clone} is held by {holder}: the kernel maps it only when no gateway serves it (stop serving it there first)")]
    RbdHeld {
        pc: String,
        clone: String,
        holder: String,
    },
    #[error("{pc}'s disk is mapped by this host's kernel, which holds its lock: take it down first (`cowctl down {pc}`), commit, then apply")]
    CommitMapped { pc: String },
    #[error("{pc}'s last reset stopped in its pause: `cowctl apply` maps its clone and loads its device's table again, then it can be reset")]
    RbdParked { pc: String },
    #[error("{pc}'s disk {clone} is not mapped by the kernel; apply maps it")]
    RbdNotMapped { pc: String, clone: String },
    #[error("{pc}'s device is over {served}, but its disk is {manifest}: nothing was changed")]
    OtherRbd {
        pc: String,
        served: String,
        manifest: String,
    },
    #[error("{pc} is not in the manifest")]
    NotInManifest { pc: String },
    #[error("{pc} is not exported over iSCSI")]
    NotIscsi { pc: String },
    #[error("{pc} is not exported over AoE")]
    NotAoe { pc: String },
    #[error("the manifest has no {section} section")]
    NoSection { section: &'static str },
    /// A dm device's table that is not a snapshot's.
    #[error("{name}: {reason}")]
    Table { name: String, reason: String },
    /// Preflight: every problem found before any kernel change, one per line.
    #[error("cannot apply {}:\n  - {}", manifest.display(), problems.join("\n  - "))]
    Refused {
        manifest: PathBuf,
        problems: Vec<String>,
    },
    #[error("{name} exists with table \"{table}\", which is not what the manifest asks for {pc}; run `cowctl down {pc}` first (COW files stay)")]
    OtherTable {
        pc: String,
        name: String,
        table: String,
    },
    #[error(transparent)]
    Step(#[from] StepFailed<Error>),
    /// Some PCs' teardowns failed (each "step N of M failed: …"); the others' stay done.
    #[error("{} (the other PCs' steps are done and stay; `cowctl plan` shows what is left)", failures.join("; "))]
    Teardown { failures: Vec<String> },
    #[error("the kernel backend cannot {step}: it is the service's step")]
    ServiceStep { step: String },
    #[error(transparent)]
    FileStep(#[from] crate::room::step::FileStepError),
    #[error("golden image {} is not on a loop device", image.display())]
    ImageNotOnLoop { image: PathBuf },
    #[error("COW {} is not on a loop device", cow.display())]
    CowNotOnLoop { cow: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{pc}: a reset of it stopped half way; finish it with cowctl reset {pc} (or apply) first"
    )]
    HalfReset { pc: String },
    #[error("{pc} is in use ({why}): a running system's disk is not consistent on its own; shut the PC down (or cowctl down {pc}) first, or say --pause to stop its I/O for the copy")]
    InUse { pc: String, why: String },

    #[error("{pc}'s COW {} is attached to {} though no snapshot of {pc} uses it (a half-made apply?): run cowctl apply or cowctl down {pc} first", cow.display(), dev.display())]
    CowAttachedAlone {
        pc: String,
        cow: PathBuf,
        dev: PathBuf,
    },
    #[error("{pc}'s snapshot {name} takes its COW from {cow}, which is no loop device: cowctl resets only what it set up")]
    CowOnNoLoop {
        pc: String,
        name: String,
        cow: String,
    },
    #[error("{pc}: the kernel serves the COW {} but the manifest says {}; nothing is reset (run cowctl apply, or cowctl down {pc}, first)", served.display(), manifest.display())]
    OtherCow {
        pc: String,
        served: PathBuf,
        manifest: PathBuf,
    },
    #[error("{pc}: the kernel serves golden image {} but the manifest says {}; nothing is reset (run cowctl apply first)", served.display(), manifest.display())]
    OtherImage {
        pc: String,
        served: PathBuf,
        manifest: PathBuf,
    },
    #[error("resetting {pc}")]
    Resetting {
        pc: String,
        #[source]
        source: Box<Error>,
    },
    #[error("re-exporting {pc} after its reset")]
    ReExporting {
        pc: String,
        #[source]
        source: Box<Error>,
    },
    /// The version a PC moves to could not be made ready (its causes in the sentence).
    #[error("{pc}: {}", chain(error))]
    Due { pc: String, error: Box<Error> },
    #[error("cannot move {} aside to {}", cow.display(), discard.display())]
    MoveAside {
        cow: PathBuf,
        discard: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a COW (it looks like {what}): it is left where it is", path.display())]
    DiscardNotCow { path: PathBuf, what: String },
    #[error("{pc}: {} is not a COW file (it looks like {what}); the interrupted reset is not finished", cow.display())]
    ParkedNotCow {
        pc: String,
        cow: PathBuf,
        what: String,
    },
    #[error("finishing {pc}'s interrupted reset")]
    Finishing {
        pc: String,
        #[source]
        source: Box<Error>,
    },
}

impl From<DmError> for Error {
    fn from(e: DmError) -> Error {
        Error::Dm(Box::new(e))
    }
}

impl From<crate::rbdpc::Error> for Error {
    fn from(e: crate::rbdpc::Error) -> Error {
        Error::Rbd(Box::new(e))
    }
}
