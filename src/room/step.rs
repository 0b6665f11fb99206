//! One plan step type for every backend: the steps both take (a COW file and its golden
//! record), the kernel's (loops, snapshots, LIO targets, vblades) and the service's (start
//! it, serve a PC, re-open or stop one). Each carries complete values, so running a step
//! looks nothing up in the manifest; its Display is the line `plan` and `apply` print.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::base::units::ByteSize;
use crate::dm::dm_name;
use crate::dm::StoreMode;
use crate::image::golden_record;
use crate::kernel::aoe::VbladeSpec;
use crate::kernel::lio::TargetSpec;
use crate::kernel::loopdev;

/// Kernel steps are never sent over the service's control socket (they would carry CHAP
/// secrets), so they are left out of its serialized form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    // Both backends.
    CreateCow {
        pc: String,
        path: PathBuf,
        size: ByteSize,
        chunk: ByteSize,
    },
    /// Make a reflink PC's disk: a clone of its image's disk (`storage: reflink`).
    CloneDisk {
        pc: String,
        image_path: PathBuf,
        path: PathBuf,
    },
    /// Make an rbd PC's disk: a clone (`clone`, `pool/name`) of its image's protected
    /// snapshot (`snapshot`, `pool/image@snap`), in the cluster (`storage: rbd`).
    CloneRbd {
        pc: String,
        snapshot: String,
        clone: String,
    },
    /// Write the `.golden` record beside `cow`: it was made against `image_path`.
    RecordGolden {
        pc: String,
        image: String,
        image_path: PathBuf,
        cow: PathBuf,
    },
    // The kernel backend.
    #[serde(skip)]
    AttachImage {
        image: String,
        path: PathBuf,
    },
    #[serde(skip)]
    AttachCow {
        pc: String,
        path: PathBuf,
    },
    /// A persistent snapshot of `image` with `cow`, over the loops they are on when it runs.
    #[serde(skip)]
    CreateSnapshot {
        pc: String,
        image: PathBuf,
        cow: PathBuf,
        mode: StoreMode,
        chunk_sectors: u32,
    },
    /// A reflink PC's device: dm `linear` over the loop its clone `disk` is on.
    #[serde(skip)]
    CreateLinear {
        pc: String,
        disk: PathBuf,
    },
    /// An rbd PC's clone (`clone`, `pool/name`) mapped by the kernel's rbd driver, which
    /// holds its exclusive lock while mapped.
    #[serde(skip)]
    MapRbd {
        pc: String,
        clone: String,
    },
    /// An rbd PC's device: dm `linear` over the kernel's mapping of its clone.
    #[serde(skip)]
    CreateLinearRbd {
        pc: String,
        clone: String,
    },
    /// The kernel's mapping `/dev/rbd<id>` of an rbd PC's clone (`clone`) undone.
    #[serde(skip)]
    UnmapRbd {
        id: u32,
        clone: String,
    },
    /// The target as the manifest asks for it; only its device is filled in when it runs.
    #[serde(skip)]
    ExportIscsi {
        pc: String,
        spec: TargetSpec,
    },
    #[serde(skip)]
    RecreateIscsi {
        pc: String,
        spec: TargetSpec,
    },
    /// The vblade as the manifest asks for it; only its device is filled in when it runs.
    #[serde(skip)]
    StartVblade {
        pc: String,
        address: String,
        spec: VbladeSpec,
    },
    #[serde(skip)]
    StopVblade {
        pc: String,
    },
    #[serde(skip)]
    UnexportIscsi {
        target: String,
    },
    #[serde(skip)]
    RemoveSnapshot {
        name: String,
    },
    #[serde(skip)]
    DetachLoop {
        dev: PathBuf,
        backing: PathBuf,
    },
    /// A reset stopped half way: give the PC a fresh snapshot, remove the old COW.
    #[serde(skip)]
    FinishReset {
        pc: String,
    },
    /// A commit with --pause was killed with the PC's device suspended.
    #[serde(skip)]
    Resume {
        pc: String,
    },
    // The userspace backend.
    /// Start `cowctl serve`, listening for NBD on `nbd` and `socket`.
    StartService {
        nbd: String,
        socket: PathBuf,
    },
    Serve {
        pc: String,
        read_only: bool,
        /// The protocol PCs boot from besides NBD, as `apply` names it: "iSCSI as <iqn>"
        /// or "AoE as e<shelf>.<slot>".
        also: Option<String>,
    },
    /// The PC's manifest entry changed: serve it anew (drops its connections).
    Reopen {
        pc: String,
    },
    StopServing {
        pc: String,
    },
}

impl Step {
    /// The step's kind, for timings.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::CreateCow { .. } => "create COW",
            Step::CloneDisk { .. } => "clone disk",
            Step::CloneRbd { .. } => "clone rbd disk",
            Step::RecordGolden { .. } => "record golden",
            Step::AttachImage { .. } => "attach image",
            Step::AttachCow { .. } => "attach COW",
            Step::CreateSnapshot { .. } => "create snapshot",
            Step::CreateLinear { .. } => "create linear",
            Step::MapRbd { .. } => "map rbd",
            Step::CreateLinearRbd { .. } => "create linear over rbd",
            Step::UnmapRbd { .. } => "unmap rbd",
            Step::ExportIscsi { .. } => "export iSCSI",
            Step::RecreateIscsi { .. } => "recreate iSCSI",
            Step::StartVblade { .. } => "start vblade",
            Step::StopVblade { .. } => "stop vblade",
            Step::UnexportIscsi { .. } => "unexport iSCSI",
            Step::RemoveSnapshot { .. } => "remove snapshot",
            Step::DetachLoop { .. } => "detach loop",
            Step::FinishReset { .. } => "finish reset",
            Step::Resume { .. } => "resume",
            Step::StartService { .. } => "start service",
            Step::Serve { .. } => "serve",
            Step::Reopen { .. } => "re-open",
            Step::StopServing { .. } => "stop serving",
        }
    }

    pub fn detach(l: &loopdev::LoopInfo) -> Step {
        Step::DetachLoop {
            dev: l.dev.clone(),
            backing: l.backing.clone(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateCow { pc, path, size, chunk } => write!(f, "create {pc}'s COW {} ({size} sparse, chunk {chunk})", path.display()),
            Step::CloneDisk { pc, image_path, path } => write!(f, "clone {pc}'s disk {} from {} (reflink)", path.display(), image_path.display()),
            Step::CloneRbd { pc, snapshot, clone } => write!(f, "clone {pc}'s disk {clone} from {snapshot} (rbd)"),
            Step::RecordGolden { pc, image, .. } => write!(f, "record that {pc}'s COW belongs to golden image {image}"),
            Step::AttachImage { image, path } => write!(f, "attach golden image {image} ({}) read-only to a loop device", path.display()),
            Step::AttachCow { pc, path } => write!(f, "attach {pc}'s COW {} to a loop device", path.display()),
            Step::CreateSnapshot { pc, .. } => write!(f, "create dm snapshot {} for {pc}", dm_name(pc)),
            Step::CreateLinear { pc, disk } => write!(f, "create dm linear {} for {pc} over its disk {}", dm_name(pc), disk.display()),
            Step::MapRbd { pc, clone } => write!(f, "map {pc}'s disk {clone} (kernel rbd, exclusive lock)"),
            Step::CreateLinearRbd { pc, clone } => write!(f, "create dm linear {} for {pc} over its mapped disk {clone}", dm_name(pc)),
            Step::UnmapRbd { id, clone } => write!(f, "unmap /dev/rbd{id} ({clone})"),
            Step::ExportIscsi { pc, spec } => write!(f, "export {pc} as iSCSI target {}", spec.iqn),
            Step::RecreateIscsi { pc, spec } => write!(f, "re-create iSCSI target {} of {pc}: it differs from the manifest (drops its sessions)", spec.iqn),
            Step::StartVblade { pc, address, .. } => write!(f, "start vblade {address} for {pc}"),
            Step::StopVblade { pc } => write!(f, "stop {pc}'s vblade"),
            Step::UnexportIscsi { target } => write!(f, "remove iSCSI target {target}"),
            Step::RemoveSnapshot { name } => write!(f, "remove dm snapshot {name}"),
            Step::DetachLoop { dev, backing } => write!(f, "detach {} ({})", dev.display(), backing.display()),
            Step::FinishReset { pc } => write!(f, "finish the reset of {pc} that stopped half way (a fresh snapshot; its old COW goes)"),
            Step::Resume { pc } => write!(f, "resume {}, left suspended by an image commit that did not finish", dm_name(pc)),
            Step::StartService { nbd, socket } => write!(f, "start cowctl serve (NBD on {nbd} and {})", socket.display()),
            Step::Serve { pc, read_only, also } => {
                if let Some(t) = also {
                    write!(f, "serve {pc} over {t} and ")?;
                } else {
                    write!(f, "serve {pc} ")?;
                }
                write!(f, "over NBD as export {pc:?}")?;
                if *read_only {
                    write!(f, ", read-only")?;
                }
                Ok(())
            }
            Step::Reopen { pc } => write!(f, "re-open {pc}: its manifest entry changed (drops its connections)"),
            Step::StopServing { pc } => write!(f, "stop serving {pc} (its COW stays)"),
        }
    }
}

/// Each image's fingerprint, read once per run however many PCs' records name it.
pub type Fingerprints = HashMap<PathBuf, golden_record::Golden>;

/// Why a step on files alone failed.
#[derive(Debug, thiserror::Error)]
pub enum FileStepError {
    #[error(transparent)]
    CowFile(#[from] crate::cowfile::CowFileError),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Reflink(#[from] crate::reflink::ReflinkError),
    #[error("{step} is not a step on files alone")]
    NotFileStep { step: String },
}

impl Step {
    /// Runs a step that only touches files, the same on every backend: creates a COW file
    /// or a clone, or writes its golden record. Any other step is refused.
    pub fn run_on_files(&self, fingerprints: &mut Fingerprints) -> Result<(), FileStepError> {
        match self {
            Step::CreateCow {
                path, size, chunk, ..
            } => Ok(crate::cowfile::create(path, *size, *chunk).map(drop)?),
            Step::CloneDisk {
                image_path, path, ..
            } => Ok(crate::reflink::clone::clone_new(image_path, path)?),
            Step::RecordGolden {
                image_path, cow, ..
            } => {
                let golden = match fingerprints.get(image_path) {
                    Some(g) => g.clone(),
                    None => {
                        let g = crate::image::golden_for(image_path)?;
                        fingerprints.insert(image_path.clone(), g.clone());
                        g
                    }
                };
                Ok(golden_record::write(cow, &golden)?)
            }
            other => Err(FileStepError::NotFileStep {
                step: other.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_steps_cross_the_control_socket_and_kernel_steps_do_not() {
        let serve = Step::Serve {
            pc: "pc-01".into(),
            read_only: false,
            also: Some("AoE as e1.1".into()),
        };
        let json = serde_json::to_string(&serve).unwrap();
        assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), serve);
        let kernel = Step::RemoveSnapshot {
            name: "cowctl-pc-01".into(),
        };
        assert!(serde_json::to_string(&kernel).is_err());
    }

    #[test]
    fn only_file_steps_run_on_files_alone() {
        let err = Step::Reopen { pc: "pc-01".into() }
            .run_on_files(&mut Fingerprints::new())
            .unwrap_err();
        assert!(
            matches!(&err, FileStepError::NotFileStep { step } if step.starts_with("re-open pc-01")),
            "{err}"
        );
        assert!(
            err.to_string().contains("not a step on files alone"),
            "{err}"
        );
    }
}
