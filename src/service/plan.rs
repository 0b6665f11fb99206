//! The userspace backend's plan: the manifest against what the service serves now.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::control::sidecar;
use crate::manifest::{Manifest, Pc};
use crate::units::ByteSize;

/// What is served for one PC: enough to tell whether its manifest entry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPc {
    pub image_path: PathBuf,
    pub cow: PathBuf,
    pub chunk: ByteSize,
    pub overflow: crate::dm::StoreMode,
    pub read_only: bool,
    pub acl: crate::manifest::NbdAcl,
    pub ip: Option<std::net::IpAddr>,
}

impl ServedPc {
    pub fn of(manifest: &Manifest, pc: &Pc) -> ServedPc {
        ServedPc {
            image_path: manifest.images[&pc.image].path.clone(),
            cow: pc.cow.clone(),
            chunk: pc.chunk,
            overflow: pc.overflow,
            read_only: pc.read_only,
            acl: manifest.nbd.acl,
            ip: pc.ip,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateCow {
        pc: String,
        path: PathBuf,
        size: ByteSize,
        chunk: ByteSize,
    },
    RecordGolden {
        pc: String,
        image: String,
    },
    Serve {
        pc: String,
        read_only: bool,
        /// The protocol PCs boot from besides NBD, as `apply` names it: "iSCSI as <iqn>"
        /// or "AoE as e<shelf>.<slot>".
        also: Option<String>,
    },
    Reopen {
        pc: String,
    },
    Stop {
        pc: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateCow {
                pc,
                path,
                size,
                chunk,
            } => write!(
                f,
                "create {pc}'s COW {} ({size} sparse, chunk {chunk})",
                path.display()
            ),
            Step::RecordGolden { pc, image } => {
                write!(f, "record that {pc}'s COW belongs to golden image {image}")
            }
            Step::Serve {
                pc,
                read_only,
                also,
            } => {
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
            Step::Reopen { pc } => write!(
                f,
                "re-open {pc}: its manifest entry changed (drops its connections)"
            ),
            Step::Stop { pc } => write!(f, "stop serving {pc} (its COW stays)"),
        }
    }
}

/// The steps that make the service serve the manifest: new PCs get a COW, a golden record
/// and an export; changed ones are re-opened; PCs no longer listed stop being served.
pub fn plan(manifest: &Manifest, served: &BTreeMap<String, ServedPc>) -> Vec<Step> {
    let mut steps = Vec::new();
    for pc in &manifest.pcs {
        let name = pc.name.clone();
        if !pc.cow.exists() {
            steps.push(Step::CreateCow {
                pc: name.clone(),
                path: pc.cow.clone(),
                size: pc.cow_size,
                chunk: pc.chunk,
            });
        }
        if !sidecar::sidecar_path(&pc.cow).exists() {
            steps.push(Step::RecordGolden {
                pc: name.clone(),
                image: pc.image.clone(),
            });
        }
        match served.get(&pc.name) {
            None => steps.push(Step::Serve {
                pc: name,
                read_only: pc.read_only,
                also: match &pc.export {
                    crate::manifest::Export::Iscsi { target, .. } => {
                        Some(format!("iSCSI as {target}"))
                    }
                    crate::manifest::Export::Aoe { .. } => Some(format!("AoE as {}", pc.export)),
                    _ => None,
                },
            }),
            Some(s) if *s != ServedPc::of(manifest, pc) => steps.push(Step::Reopen { pc: name }),
            Some(_) => {}
        }
    }
    for name in served.keys() {
        if manifest.pc(name).is_none() {
            steps.push(Step::Stop { pc: name.clone() });
        }
    }
    steps
}
