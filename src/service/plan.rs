//! The userspace backend's plan: the manifest against what the service serves now.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::base::units::ByteSize;
use crate::image::golden_record;
use crate::manifest::{Manifest, Pc, Storage};
use crate::room::step::Step;

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
    pub storage: Storage,
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
            storage: manifest.storage_of(pc),
        }
    }
}

/// The steps that make the service serve the manifest: new PCs get a COW (or a clone), a
/// golden record and an export; changed ones are re-opened; PCs no longer listed stop
/// being served. An rbd PC's clone is looked for in the cluster, and its image's snapshot
/// must be there to clone.
pub fn plan(
    manifest: &Manifest,
    served: &BTreeMap<String, ServedPc>,
) -> Result<Vec<Step>, crate::rbdpc::Error> {
    let mut steps = Vec::new();
    let cluster = crate::rbdpc::shared(manifest)?;
    for pc in &manifest.pcs {
        let name = pc.name.clone();
        let mut held_elsewhere = false;
        if let Some(cluster) = cluster
            .as_ref()
            .filter(|_| manifest.storage_of(pc) == Storage::Rbd)
        {
            // With gateways, a PC's first gateway makes and serves its clone, unless
            // another holds it (took it over): service/gateway.rs takes it back when free.
            let mine = manifest.first_here(&pc.name);
            if served.contains_key(&pc.name) {
                // Its clone is there, held here.
            } else if !mine {
                continue;
            } else {
                // One look at the clone: whether it is there, and who holds it.
                match cluster.holder_of(manifest, pc)? {
                    None => {
                        let snapshot = manifest.images[&pc.image]
                            .rbd
                            .as_ref()
                            .expect("an rbd image");
                        cluster.check_snapshot(snapshot)?;
                        let pool = cluster.pool();
                        steps.push(Step::CloneRbd {
                            pc: name.clone(),
                            snapshot: pool.spec(&snapshot.to_string()),
                            clone: pool.spec(&manifest.rbd_clone(pc).expect("an rbd PC")),
                        });
                    }
                    Some(holder) => {
                        held_elsewhere = holder.is_some() && !manifest.gateways.is_empty()
                    }
                }
            }
        } else if !pc.cow.exists() {
            steps.push(match manifest.storage_of(pc) {
                Storage::Cow => Step::CreateCow {
                    pc: name.clone(),
                    path: pc.cow.clone(),
                    size: pc.cow_size,
                    chunk: pc.chunk,
                },
                Storage::Reflink | Storage::Rbd => Step::CloneDisk {
                    pc: name.clone(),
                    image_path: manifest.images[&pc.image].path.clone(),
                    path: pc.cow.clone(),
                },
            });
        }
        let files = manifest.storage_of(pc) != Storage::Rbd;
        if files && !golden_record::record_path(&pc.cow).exists() {
            steps.push(Step::RecordGolden {
                pc: name.clone(),
                image: pc.image.clone(),
                image_path: manifest.images[&pc.image].path.clone(),
                cow: pc.cow.clone(),
            });
        }
        match served.get(&pc.name) {
            None if held_elsewhere => {}
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
            steps.push(Step::StopServing { pc: name.clone() });
        }
    }
    Ok(steps)
}
