//! Observed state: what the kernel has now (loops in sysfs, cowctl's dm devices, the LIO
//! tree in configfs, live vblades).

use std::collections::BTreeMap;

use anyhow::Result;

use super::PREFIX;
use crate::dm::TableLine;
use crate::kernel::aoe::RunningVblade;
use crate::kernel::lio::{Lio, ObservedTarget};
use crate::kernel::loopdev::LoopInfo;
use crate::kernel::Kernel;

#[derive(Debug, Default)]
pub struct Observed {
    pub loops: Vec<LoopInfo>,
    /// cowctl's dm devices and their tables.
    pub dm: BTreeMap<String, TableLine>,
    /// cowctl's devices parked on an `error` table by a reset that did not finish, with
    /// their length in sectors.
    pub parked: BTreeMap<String, u64>,
    pub targets: Vec<ObservedTarget>,
    pub vblades: Vec<RunningVblade>,
}

impl Observed {
    pub fn read(k: &Kernel) -> Result<Observed> {
        Self::read_with(k, true)
    }

    /// For reporting: a kernel without device-mapper simply has no snapshots.
    pub fn read_lenient(k: &Kernel) -> Result<Observed> {
        Self::read_with(k, false)
    }

    fn read_with(k: &Kernel, need_dm: bool) -> Result<Observed> {
        let mut dm = BTreeMap::new();
        let names = match k.dm.list(PREFIX) {
            Ok(n) => n,
            Err(_) if !need_dm => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut parked = BTreeMap::new();
        for name in names {
            let raw = k.dm.raw_table(&name)?;
            let fields: Vec<&str> = raw.split_whitespace().collect();
            if let ["0", length, "error", ..] = fields.as_slice() {
                parked.insert(name, length.parse().unwrap_or(0));
                continue;
            }
            let table = raw.parse().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            dm.insert(name, table);
        }
        Ok(Observed {
            loops: k.loops.list()?,
            dm,
            parked,
            targets: Lio {
                fs: k.configfs.as_ref(),
            }
            .observe()?,
            vblades: k.vblade.list()?,
        })
    }

    pub fn target(&self, iqn: &str) -> Option<&ObservedTarget> {
        self.targets.iter().find(|t| t.iqn == iqn)
    }

    pub fn vblade(&self, pc: &str) -> Option<&RunningVblade> {
        self.vblades.iter().find(|v| v.pc == pc)
    }
}
