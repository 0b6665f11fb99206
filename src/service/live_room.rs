//! What the HTTP service and auto-extend need from a backend: the manifest, status, reset
//! and growing a COW. `Service` (the engine) and `KernelRoom` (dm-snapshot) provide it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Error, Result};
use crate::base::logtext::chain;
use crate::control::status;
use crate::control::{dm_name, observe::Observed, Ctx};
use crate::kernel::{loopdev, Kernel};
use crate::manifest::{Manifest, Pc};
use crate::room::lock;
use crate::room::reset::Reset;
use crate::room::status::{self as rows, PcState, PcStatus};

pub trait LiveRoom: Send + Sync {
    fn manifest(&self) -> Manifest;
    fn status(&self) -> Vec<PcStatus>;
    /// One PC's status; None when the manifest has no such PC.
    fn status_of(&self, pc: &str) -> Option<PcStatus> {
        self.status().into_iter().find(|r| r.name == pc)
    }
    /// Returns the PC to the golden image, live if it is served.
    fn reset(&self, pc: &str) -> Result<Reset>;
    /// Grows the PC's COW to `len` bytes while it is served.
    fn grow(&self, pc: &str, len: u64) -> Result<()>;
    /// Whether this PC can `sanboot` its export on this backend (iPXE has no NBD).
    fn sanboot(&self, pc: &Pc) -> bool;
    /// Whether the room's dnsmasq runs; None when the manifest has no `pxe` section.
    fn dnsmasq_up(&self) -> Option<bool>;
}

/// The kernel backend as seen by `cowctl serve`: every answer is read from the kernel
/// again; the manifest file is re-read so edits show without a restart.
pub struct KernelRoom {
    path: PathBuf,
    run_dir: PathBuf,
    kernel: Box<dyn Fn() -> Kernel + Send + Sync>,
    last_good: Mutex<Manifest>,
}

impl KernelRoom {
    pub fn new(
        manifest: Manifest,
        run_dir: &Path,
        kernel: Box<dyn Fn() -> Kernel + Send + Sync>,
    ) -> KernelRoom {
        KernelRoom {
            path: manifest.path.clone(),
            run_dir: run_dir.to_path_buf(),
            kernel,
            last_good: Mutex::new(manifest),
        }
    }

    fn with_ctx<T>(&self, f: impl FnOnce(&Ctx) -> Result<T>) -> Result<T> {
        let manifest = self.manifest();
        let kernel = (self.kernel)();
        f(&Ctx {
            manifest: &manifest,
            kernel: &kernel,
            run_dir: self.run_dir.clone(),
        })
    }
}

impl LiveRoom for KernelRoom {
    /// The manifest file as it is now; while it does not load, the last one that did.
    fn manifest(&self) -> Manifest {
        let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        match crate::image::load_manifest(&self.path) {
            Ok(m) => *last = m,
            Err(e) => tracing::warn!("{e}; going on with the last manifest that loaded"),
        }
        last.clone()
    }

    fn status(&self) -> Vec<PcStatus> {
        let r = self.with_ctx(|ctx| {
            let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
            let obs = Observed::for_status(ctx.kernel, ctx.manifest, &pcs)?;
            Ok(status::collect(ctx, &obs, &pcs))
        });
        r.unwrap_or_else(|e| {
            tracing::warn!("cannot read the kernel's state: {}", chain(&e));
            let m = self.manifest();
            m.pcs
                .iter()
                .map(|pc| {
                    let export = pc.export.to_string();
                    rows::row(&m, pc, PcState::Unknown, None, export, Vec::new())
                })
                .collect()
        })
    }

    fn dnsmasq_up(&self) -> Option<bool> {
        crate::pxe::up(&self.manifest(), &self.run_dir)
    }

    fn status_of(&self, name: &str) -> Option<PcStatus> {
        let r = self.with_ctx(|ctx| {
            let Some(pc) = ctx.manifest.pc(name) else {
                return Ok(None);
            };
            let obs = Observed::for_status(ctx.kernel, ctx.manifest, &[pc])?;
            Ok(status::collect(ctx, &obs, &[pc]).pop())
        });
        r.unwrap_or_else(|e| {
            tracing::warn!("cannot read the kernel's state: {}", chain(&e));
            None
        })
    }

    fn reset(&self, name: &str) -> Result<Reset> {
        self.with_ctx(|ctx| {
            let _lock = lock::acquire(&ctx.run_dir, &format!("reset {name}"))?;
            let pc = pc(ctx.manifest, name)?;
            let obs = Observed::read(ctx.kernel)?;
            // Over HTTP only what the kernel serves is reset: a PC that is not applied has
            // nothing to reset there, whatever the manifest file says now.
            let dm = dm_name(name);
            let served = obs.dm.contains_key(&dm) || obs.linear.contains_key(&dm);
            if !served && !obs.parked.contains_key(&dm) {
                let pc = name.to_string();
                return Err(Error::NothingToReset { pc });
            }
            Ok(crate::control::reset::reset(ctx, &obs, pc)?)
        })
    }

    /// The file grows, then its loop device takes the new size; dm-snapshot reads the COW
    /// device's size at every allocation, so the room is there at once.
    fn grow(&self, name: &str, len: u64) -> Result<()> {
        self.with_ctx(|ctx| {
            let _lock = lock::acquire(&ctx.run_dir, &format!("grow {name}"))?;
            let pc = pc(ctx.manifest, name)?;
            let obs = Observed::read(ctx.kernel)?;
            if !obs.dm.contains_key(&dm_name(name)) {
                let pc = name.to_string();
                return Err(Error::NotApplied { pc });
            }
            let l =
                loopdev::find(&obs.loops, &pc.cow, false).ok_or_else(|| Error::CowOnNoLoop {
                    pc: name.to_string(),
                    cow: pc.cow.clone(),
                })?;
            grow_file(&pc.cow, len)?;
            Ok(ctx.kernel.loops.set_capacity(&l.dev)?)
        })
    }

    fn sanboot(&self, pc: &Pc) -> bool {
        pc.export != crate::manifest::Export::Nbd
    }
}

fn pc<'a>(m: &'a Manifest, name: &str) -> Result<&'a Pc> {
    m.pc(name).ok_or_else(|| {
        Error::from(crate::manifest::UnknownPc {
            name: name.to_string(),
            manifest: m.path.clone(),
        })
    })
}

/// Makes a COW file `len` bytes long; never shorter (a shrunk COW loses exceptions).
pub fn grow_file(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let now = f.metadata()?.len();
    if len > now {
        f.set_len(len).map_err(|source| Error::GrowFile {
            path: path.to_path_buf(),
            len,
            source,
        })?;
    }
    Ok(())
}
