//! AoE exports through `vblade` processes that cowctl supervises: one per PC, with a pid
//! file in the run directory; a dead one is restarted by the next apply.

use std::path::PathBuf;
use std::time::Duration;

pub use super::error::VbladeError;
use crate::base::netaddr::Mac;
use crate::kernel::supervise::{Helpers, Running};

type Result<T, E = VbladeError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbladeSpec {
    pub pc: String,
    pub shelf: u16,
    pub slot: u8,
    pub interface: String,
    pub device: String,
    pub macs: Vec<Mac>,
}

impl VbladeSpec {
    /// `vblade [-m mac,...] shelf slot netif device`.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if !self.macs.is_empty() {
            a.push("-m".into());
            a.push(
                self.macs
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        a.extend([
            self.shelf.to_string(),
            self.slot.to_string(),
            self.interface.clone(),
            self.device.clone(),
        ]);
        a
    }
}

/// A supervised vblade, as its pid file and /proc describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVblade {
    pub pc: String,
    pub pid: u32,
    pub args: Vec<String>,
}

pub trait Vblades: Send + Sync {
    /// Live vblades with a pid file (stale pid files are ignored).
    fn list(&self) -> Result<Vec<RunningVblade>>;
    /// The PC's live vblade, if any.
    fn running(&self, pc: &str) -> Result<Option<RunningVblade>> {
        Ok(self.list()?.into_iter().find(|v| v.pc == pc))
    }
    fn start(&self, spec: &VbladeSpec) -> Result<u32>;
    fn stop(&self, pc: &str) -> Result<()>;
}

pub struct ProcessVblades {
    helpers: Helpers,
}

impl ProcessVblades {
    pub fn new(dir: PathBuf) -> Self {
        ProcessVblades {
            helpers: Helpers {
                dir,
                program: "vblade",
                install_hint: "is the vblade package installed?",
            },
        }
    }
}

fn vblade(r: Running) -> RunningVblade {
    RunningVblade {
        pc: r.key,
        pid: r.pid,
        args: r.args,
    }
}

impl Vblades for ProcessVblades {
    fn list(&self) -> Result<Vec<RunningVblade>> {
        Ok(self.helpers.list().into_iter().map(vblade).collect())
    }

    /// Only this PC's pid file: stopping one vblade reads nothing of the others.
    fn running(&self, pc: &str) -> Result<Option<RunningVblade>> {
        Ok(self.helpers.running(pc).map(vblade))
    }

    fn start(&self, spec: &VbladeSpec) -> Result<u32> {
        Ok(self
            .helpers
            .start(&spec.pc, &spec.args(), Duration::from_millis(200))?)
    }

    fn stop(&self, pc: &str) -> Result<()> {
        self.helpers.stop(pc)?;
        Ok(())
    }
}
