//! The userspace backend: `cowctl serve` runs every PC on the engine and serves its disk
//! over NBD (export name = PC name) on TCP and a unix socket. Its control socket answers
//! plan, apply, status, reset and down, so those commands behave as on the kernel backend.
//! The service is the source of truth for what is served; no state file is kept.

pub mod aoe;
pub mod autoextend;
mod commit_rbd;
mod conns;
pub mod control;
mod disks;
pub mod error;
pub mod events;
pub mod exports;
pub mod feed;
pub mod floating;
pub mod gateway;
pub mod handover;
pub mod history;
pub mod iscsi;
pub mod limits;
pub mod listen;
pub mod live_room;
pub mod plan;
pub mod run;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::control::plan as kplan;
use crate::engine::{PcDisk, SnapshotState};
use crate::manifest::{Manifest, Pc};
use crate::room::reset::{discard_path, Reset};
use crate::room::status::{self, PcState, PcStatus};
use crate::room::step::{Fingerprints, Step};
use crate::room::steps::run_steps;
use disks::{open, swap_in_fresh_cow};
use exports::{Registry, Served, Slot};
use plan::ServedPc;

pub use error::{ClientError, Error, HttpError, Result};

pub struct Service {
    registry: Arc<Registry>,
    /// The manifest of the last apply: names images and the PCs `status` lists.
    manifest: Mutex<Manifest>,
    /// Where the NBD server listens; a manifest that moves it needs a restart.
    listen: SocketAddr,
    /// The HTTP service's settings, also fixed until a restart.
    http: Option<crate::manifest::HttpConfig>,
    /// The iSCSI target, on the portals of the manifest it started with.
    iscsi: Arc<iscsi::IscsiService>,
    /// The AoE target, on the interface of the manifest it started with.
    aoe: Arc<aoe::AoeService>,
    /// One control operation at a time, as the lock file does for the kernel backend.
    ops: Mutex<()>,
    /// The NBD server's caps (the iSCSI target has its own).
    pub nbd_limits: Arc<limits::ConnLimits>,
    /// The run directory: where the room's dnsmasq keeps its pid file.
    run_dir: PathBuf,
    /// Where connections park for a planned restart.
    handover: Arc<handover::Handover>,
    /// The floating portals this gateway holds.
    floating: floating::Floating,
}

impl Service {
    pub fn new(
        manifest: Manifest,
        registry: Arc<Registry>,
        run_dir: &Path,
        handover: Arc<handover::Handover>,
    ) -> Service {
        let limits = limits::ConnLimits::standard();
        Service {
            nbd_limits: limits::ConnLimits::standard(),
            listen: manifest.nbd.listen,
            http: manifest.http.clone(),
            iscsi: iscsi::IscsiService::new(
                registry.clone(),
                portals(&manifest),
                limits,
                handover.clone(),
            ),
            aoe: aoe::AoeService::new(registry.clone(), aoe_interface(&manifest), handover.clone()),
            handover,
            manifest: Mutex::new(manifest),
            registry,
            ops: Mutex::new(()),
            run_dir: run_dir.to_path_buf(),
            floating: floating::Floating::default(),
        }
    }

    pub fn iscsi(&self) -> Arc<iscsi::IscsiService> {
        self.iscsi.clone()
    }

    pub fn aoe(&self) -> Arc<aoe::AoeService> {
        self.aoe.clone()
    }

    fn manifest(&self) -> Manifest {
        self.manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn served(&self) -> BTreeMap<String, ServedPc> {
        self.registry
            .all()
            .iter()
            .filter_map(|s| {
                s.with_served(|sv| {
                    (
                        s.name.clone(),
                        ServedPc {
                            image_path: sv.image_path.clone(),
                            cow: sv.pc.cow.clone(),
                            chunk: sv.pc.chunk,
                            overflow: sv.pc.overflow,
                            read_only: sv.pc.read_only,
                            acl: sv.acl,
                            ip: sv.pc.ip,
                            storage: match *sv.disk {
                                PcDisk::Cow(_) => crate::manifest::Storage::Cow,
                                PcDisk::Clone(_) => crate::manifest::Storage::Reflink,
                                PcDisk::Rbd(_) => crate::manifest::Storage::Rbd,
                            },
                        },
                    )
                })
            })
            .collect()
    }

    pub fn plan(&self, manifest: &Manifest) -> Result<Vec<Step>> {
        if manifest.nbd.listen != self.listen {
            return Err(Error::NbdListenChanged {
                from: self.listen,
                to: manifest.nbd.listen,
            });
        }
        if manifest.http != self.http {
            return Err(Error::HttpChanged);
        }
        if portals(manifest) != self.iscsi.portals_configured() {
            return Err(Error::PortalsChanged);
        }
        if aoe_interface(manifest).as_deref() != self.aoe.interface() {
            return Err(Error::AoeInterfaceChanged);
        }
        kplan::refuse_if_any(manifest, kplan::file_problems(manifest))?;
        Ok(plan::plan(manifest, &self.served())?)
    }

    /// Makes the service serve `manifest`; returns the steps taken.
    pub fn apply(&self, manifest: Manifest) -> Result<Vec<Step>> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let steps = self.plan(&manifest)?;
        // The targets' ACLs and secrets first: a PC served by the steps below is reachable
        // only as the new manifest says.
        self.iscsi.set_manifest(&manifest)?;
        self.aoe.set_manifest(&manifest);
        let pcs = manifest.pcs.iter().filter_map(|p| p.ip).collect::<Vec<_>>();
        self.iscsi.limits.set_pc_addresses(pcs.iter().copied());
        self.nbd_limits.set_pc_addresses(pcs);
        let mut done = Vec::new();
        // Each image is fingerprinted once per apply, however many new PCs' records name it.
        let mut fingerprints = Fingerprints::new();
        let step = |s: &Step| self.step(&manifest, s, &mut fingerprints);
        let result = run_steps(&steps, step, &mut |_, s| done.push(s.clone()));
        // Status and later resets follow the new manifest even after a partial apply.
        *self.manifest.lock().unwrap_or_else(|p| p.into_inner()) = manifest;
        Ok(result.map(|()| done)?)
    }

    fn step(&self, m: &Manifest, step: &Step, fingerprints: &mut Fingerprints) -> Result<()> {
        let pc = |name: &str| {
            m.pc(name).ok_or_else(|| Error::NotInManifest {
                pc: name.to_string(),
            })
        };
        match step {
            Step::CreateCow { .. } | Step::CloneDisk { .. } | Step::RecordGolden { .. } => {
                Ok(step.run_on_files(fingerprints)?)
            }
            Step::CloneRbd { pc: name, .. } => {
                let p = pc(name)?;
                Ok(crate::rbdpc::cluster_of(m, p)?.make_disk(m, p)?)
            }
            Step::Serve { pc: name, .. } => {
                let served = open(m, pc(name)?)?;
                self.registry.insert(Slot::new(name, served));
                self.aoe.announce(name);
                Ok(())
            }
            Step::Reopen { pc: name } => {
                let p = pc(name)?;
                let slot = self.slot(name)?;
                slot.quiesce(|old| {
                    drop(old);
                    match open(m, p) {
                        Ok(s) => (Some(s), Ok(())),
                        Err(e) => (None, Err(e)),
                    }
                })
                .map(drop)
            }
            Step::StopServing { pc: name } => self.stop(name),
            kernel => Err(Error::KernelStep {
                step: kernel.to_string(),
            }),
        }
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>> {
        self.registry.get(name).ok_or_else(|| Error::NotServed {
            pc: name.to_string(),
        })
    }

    /// Stops serving a PC: its connections end, its exceptions are committed, its COW is
    /// closed (and stays).
    pub(super) fn stop(&self, name: &str) -> Result<()> {
        let slot = self.slot(name)?;
        slot.quiesce(|old| {
            let flushed = match old.as_ref().map(|s| s.disk.flush()) {
                None | Some(Ok(())) | Some(Err(crate::engine::EngineError::Invalid)) => Ok(()),
                Some(Err(source)) => Err(Error::Flush {
                    pc: name.to_string(),
                    source,
                }),
            };
            (None, flushed)
        })?;
        self.registry.remove(name);
        Ok(())
    }

    pub fn status(&self) -> Vec<PcStatus> {
        let m = self.manifest();
        m.pcs.iter().map(|pc| self.row(&m, pc)).collect()
    }

    fn row(&self, m: &Manifest, pc: &Pc) -> PcStatus {
        let slot = self.registry.get(&pc.name);
        let live = slot
            .as_ref()
            .and_then(|s| s.with_served(|sv| (sv.disk.state(), sv.disk.usage())));
        let (state, usage) = match live {
            Some((s, u)) => (
                match s {
                    SnapshotState::Active => PcState::Active,
                    SnapshotState::Overflow => PcState::Overflow,
                    SnapshotState::Invalid => PcState::Invalid,
                },
                (s != SnapshotState::Invalid).then_some(u),
            ),
            None => status::from_cow_file(m, pc),
        };
        let mut peers = slot.as_ref().map(|s| s.peers()).unwrap_or_default();
        peers.extend(self.aoe.peers(&pc.name));
        // iSCSI and AoE PCs are named as on the kernel backend; the others by their NBD address.
        let export = match &pc.export {
            crate::manifest::Export::Nbd => export_uri(self.listen, &pc.name),
            e => e.to_string(),
        };
        let here = slot
            .as_ref()
            .is_some_and(|s| s.with_served(|_| ()).is_some());
        let mut row = status::row(m, pc, state, usage, export, peers);
        row.warn_of(slot.and_then(|s| s.with_served(Served::cow_file_problem).flatten()));
        if !m.gateways.is_empty() && m.storage_of(pc) == crate::manifest::Storage::Rbd {
            row.gateway = if here {
                m.here.clone()
            } else {
                let holder = crate::rbdpc::cluster_of(m, pc).and_then(|c| c.holder(m, pc));
                holder.ok().flatten()
            };
            if !here && row.gateway.is_some() {
                row.state = PcState::Elsewhere;
            }
        }
        row
    }

    /// Returns PCs to the golden image. A served PC's connections are closed (the client
    /// sees its socket shut; every request it got a reply for reached the old COW, which
    /// is thrown away), a fresh COW replaces the old one, and new connections read the
    /// golden image. The old file is freed after I/O resumes.
    pub fn reset(&self, names: &[String]) -> Result<Vec<Reset>> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let m = self.manifest();
        let pcs = m.select(names)?;
        pcs.iter().map(|pc| self.reset_one(&m, pc)).collect()
    }

    fn reset_one(&self, m: &Manifest, pc: &Pc) -> Result<Reset> {
        let start = Instant::now();
        // A PC due for another image version moves to it with its fresh COW.
        let due = crate::image::next_version(m, pc)?;
        let onto = due.as_ref().map(|(_, g)| g);
        let Some(slot) = self.registry.get(&pc.name) else {
            let loops = crate::kernel::loopdev::SysLoops;
            let r = crate::control::reset::reset_unserved(m, pc, due.as_ref(), &loops)?;
            self.moved(&pc.name, due.as_ref().map(|(i, _)| i));
            return Ok(r);
        };
        // The fresh disk opens over the version the PC moves to.
        let (m, pc) = m.with_pc_on(pc, due.as_ref().map(|(i, _)| i));
        if m.storage_of(&pc) == crate::manifest::Storage::Rbd {
            let r = self.reset_rbd(&m, &pc, &slot, start)?;
            self.moved(&pc.name, due.as_ref().map(|(i, _)| i));
            return Ok(r);
        }
        let discard = discard_path(&pc.cow);
        let made = disks::made_ahead(&m, &pc)?;
        let paused =
            slot.quiesce(|old| swap_in_fresh_cow((&m, &pc), old, (&discard, made.as_ref()), onto));
        if let Some(made) = &made {
            let _ = std::fs::remove_file(&made.partial); // still there only when the swap failed
        }
        let paused = paused.map_err(|e| Error::Resetting {
            pc: pc.name.clone(),
            source: Box::new(e),
        })?;
        self.moved(&pc.name, due.as_ref().map(|(i, _)| i));
        match m.storage_of(&pc) {
            crate::manifest::Storage::Cow => crate::control::reset::remove_discard(&discard)?,
            crate::manifest::Storage::Reflink => crate::reflink::clone::remove_aside(&discard)?,
            crate::manifest::Storage::Rbd => {}
        }
        Ok(Reset::live(&pc.name, paused, start))
    }

    /// An rbd PC's live reset: the fresh clone is made before the pause, which only
    /// renames the two and opens the fresh one; the old clone is removed after it.
    fn reset_rbd(&self, m: &Manifest, pc: &Pc, slot: &Slot, start: Instant) -> Result<Reset> {
        let cluster = crate::rbdpc::cluster_of(m, pc)?;
        let next = cluster.prepare_fresh(m, pc)?;
        let mut aside = None;
        let paused = slot
            .quiesce(|old| {
                let (served, swapped) = disks::swap_in_fresh_rbd(m, pc, old, &next);
                (served, swapped.map(|a| aside = Some(a)))
            })
            .map_err(|e| Error::Resetting {
                pc: pc.name.clone(),
                source: Box::new(e),
            })?;
        if let Some(aside) = aside {
            // The PC is reset either way; a clone left aside is named in the log.
            if let Err(e) = cluster.remove_aside(&aside) {
                tracing::warn!(pc = %pc.name, "reset: the old clone stays in the pool: {e}");
            }
        }
        Ok(Reset::live(&pc.name, paused, start))
    }

    /// Status and later resets see the image version a reset moved `pc` to.
    fn moved(&self, pc: &str, due: Option<&crate::manifest::Image>) {
        let Some(image) = due else { return };
        let mut mine = self.manifest.lock().unwrap_or_else(|p| p.into_inner());
        mine.images.insert(image.name.clone(), image.clone());
        if let Some(p) = mine.pcs.iter_mut().find(|p| p.name == pc) {
            p.image = image.name.clone();
        }
    }

    /// Commits a PC's disk into a new version of its image. A PC with connections (or AoE
    /// frames lately) is refused unless `pause`: then its I/O stops for the copy (its
    /// connections are closed, and reconnect after).
    pub fn commit(
        &self,
        name: &str,
        version: Option<String>,
        note: &str,
        pause: bool,
    ) -> Result<crate::image::Committed> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let m = self.manifest();
        let pc = m.pc(name).ok_or_else(|| crate::manifest::UnknownPc {
            name: name.to_string(),
            manifest: m.path.clone(),
        })?;
        let version = version
            .map(|v| v.parse().map_err(Error::Version))
            .transpose()?;
        let Some(slot) = self.registry.get(name) else {
            return Ok(crate::image::commit_pc(
                &m,
                pc,
                version,
                note,
                crate::image::rbdstore::Wait::No,
            )?);
        };
        let mut peers = slot.peers();
        peers.extend(self.aoe.peers(name));
        if !peers.is_empty() && !pause {
            return Err(Error::InUse {
                pc: name.to_string(),
                peers,
            });
        }
        if m.images[&pc.image].rbd_versions.is_some() {
            let (committed, image) = commit_rbd::commit(&m, pc, &slot, version, note)?;
            self.moved(name, Some(&image));
            return Ok(committed);
        }
        let mut out = None;
        slot.quiesce(|served| {
            let flushed = served
                .as_ref()
                .map_or(Ok(()), |s| s.disk.flush())
                .map_err(|error| Error::FlushForCommit {
                    pc: name.to_string(),
                    error,
                });
            out = Some(flushed.and_then(|()| {
                Ok(crate::image::commit_pc(
                    &m,
                    pc,
                    version,
                    note,
                    crate::image::rbdstore::Wait::No,
                )?)
            }));
            (served, Ok(()))
        })?;
        out.expect("ran")
    }

    /// Stops serving these PCs (all when none are named). Returns the steps and whether
    /// nothing is served any more.
    pub fn down(&self, names: &[String]) -> Result<(Vec<Step>, bool)> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let m = self.manifest();
        let served = self.served();
        let targets: Vec<String> = if names.is_empty() {
            served.keys().cloned().collect()
        } else {
            m.select(names)?
                .iter()
                .map(|p| p.name.clone())
                .filter(|n| served.contains_key(n))
                .collect()
        };
        let steps: Vec<Step> = targets
            .into_iter()
            .map(|pc| Step::StopServing { pc })
            .collect();
        let mut done = Vec::new();
        run_steps(
            &steps,
            |s| match s {
                Step::StopServing { pc } => self.stop(pc),
                _ => Ok(()),
            },
            &mut |_, s| done.push(s.clone()),
        )?;
        Ok((done, self.served().is_empty()))
    }
}

impl live_room::LiveRoom for Service {
    fn manifest(&self) -> Manifest {
        Service::manifest(self)
    }

    fn status(&self) -> Vec<PcStatus> {
        Service::status(self)
    }

    fn reset(&self, pc: &str) -> Result<Reset> {
        let mut done = Service::reset(self, &[pc.to_string()])?;
        done.pop()
            .ok_or_else(|| Error::NotReset { pc: pc.to_string() })
    }

    fn grow(&self, pc: &str, len: u64) -> Result<()> {
        let slot = self.slot(pc)?;
        slot.with_served(|sv| sv.disk.grow(len))
            .ok_or_else(|| Error::NotServed { pc: pc.to_string() })?
            .map(drop)
            .map_err(|source| Error::Grow {
                pc: pc.to_string(),
                source,
            })
    }

    fn sanboot(&self, pc: &Pc) -> bool {
        // The userspace backend serves iSCSI and AoE itself; iPXE has no NBD.
        !matches!(pc.export, crate::manifest::Export::Nbd)
    }

    fn dnsmasq_up(&self) -> Option<bool> {
        crate::pxe::up(&Service::manifest(self), &self.run_dir)
    }
}

/// The iSCSI portals of a manifest (none without an iscsi section).
fn portals(m: &Manifest) -> Vec<SocketAddr> {
    m.iscsi
        .as_ref()
        .map(|c| c.portals.iter().map(|p| p.0).collect())
        .unwrap_or_default()
}

fn aoe_interface(m: &Manifest) -> Option<String> {
    m.aoe.as_ref().map(|a| a.interface.clone())
}

/// How a client names a PC's export: `nbd://HOST:PORT/NAME`.
pub fn export_uri(listen: SocketAddr, pc: &str) -> String {
    let host = if listen.ip().is_unspecified() {
        crate::base::machine::known_host_name().unwrap_or_else(|| "localhost".into())
    } else {
        match listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("nbd://{host}:{}/{pc}", listen.port())
}

/// The unix socket clients can use: `nbd.socket`, else `nbd.sock` in the run directory.
pub fn nbd_socket(m: &Manifest, run_dir: &Path) -> PathBuf {
    m.nbd
        .socket
        .clone()
        .unwrap_or_else(|| run_dir.join("nbd.sock"))
}
