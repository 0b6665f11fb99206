//! Observed state: what the kernel has now (loops in sysfs, cowctl's dm devices, the LIO
//! tree in configfs, live vblades).

use std::collections::BTreeMap;

use super::{dm_name, Error, Result, PREFIX};
use crate::dm::TableLine;
use crate::kernel::aoe::RunningVblade;
use crate::kernel::lio::{Lio, ObservedTarget};
use crate::kernel::loopdev::LoopInfo;
use crate::kernel::Kernel;
use crate::manifest::{Export, Manifest, Pc};

#[derive(Debug, Default)]
pub struct Observed {
    pub loops: Vec<LoopInfo>,
    /// cowctl's dm devices and their tables.
    pub dm: BTreeMap<String, TableLine>,
    /// cowctl's devices mapped `linear` onto a reflink PC's clone: the device each maps to.
    pub linear: BTreeMap<String, crate::dm::DevRef>,
    /// cowctl's devices parked on an `error` table by a reset that did not finish, with
    /// their length in sectors.
    pub parked: BTreeMap<String, u64>,
    pub targets: Vec<ObservedTarget>,
    pub vblades: Vec<RunningVblade>,
    /// cowctl's devices left suspended (a commit with --pause that was killed).
    pub suspended: Vec<String>,
    /// Images the kernel's rbd driver maps (rbd PCs' clones among them).
    pub rbd: Vec<crate::kernel::rbdmap::Mapped>,
}

impl Observed {
    pub fn read(k: &Kernel) -> Result<Observed> {
        let mut obs = Self::dm_devices(k, true)?;
        for name in obs.dm.keys().chain(obs.linear.keys()) {
            if k.dm.suspended(name)? {
                obs.suspended.push(name.clone());
            }
        }
        obs.loops = k.loops.list()?;
        obs.targets = Lio {
            fs: k.configfs.as_ref(),
        }
        .observe()?;
        obs.vblades = k.vblade.list()?;
        obs.rbd = k.rbd.list()?;
        Ok(obs)
    }

    /// What `status` needs and nothing more: the PCs' dm devices and iSCSI targets, no
    /// loops or vblades. The whole room is one dm list and one configfs walk; a few PCs
    /// are read by name, so the status of one PC does not grow with the room.
    pub fn for_status(k: &Kernel, room: &Manifest, pcs: &[&Pc]) -> Result<Observed> {
        let lio = Lio {
            fs: k.configfs.as_ref(),
        };
        if pcs.len() >= room.pcs.len() {
            let mut obs = Self::dm_devices(k, false)?;
            obs.targets = lio.observe()?;
            return Ok(obs);
        }
        let mut obs = Observed::default();
        // Listed only if a PC has no device, to tell "not applied" from a failed read.
        let mut listed: Option<Vec<String>> = None;
        for pc in pcs {
            let name = dm_name(&pc.name);
            match k.dm.raw_table(&name) {
                Ok(raw) => obs.add_table(name, &raw)?,
                Err(e) => {
                    let listed =
                        listed.get_or_insert_with(|| k.dm.list(PREFIX).unwrap_or_default());
                    if listed.contains(&name) {
                        return Err(e.into());
                    }
                }
            }
            if let Export::Iscsi { target, .. } = &pc.export {
                obs.targets.extend(lio.observe_target(target.as_str())?);
            }
        }
        Ok(obs)
    }

    /// The room's dm devices only (a kernel without device-mapper has none).
    fn dm_devices(k: &Kernel, need_dm: bool) -> Result<Observed> {
        let mut obs = Observed::default();
        let names = match k.dm.list(PREFIX) {
            Ok(n) => n,
            Err(_) if !need_dm => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for name in names {
            let raw = k.dm.raw_table(&name)?;
            obs.add_table(name, &raw)?;
        }
        Ok(obs)
    }

    /// Files a device's table as a snapshot, or as parked when a reset left it on `error`.
    fn add_table(&mut self, name: String, raw: &str) -> Result<()> {
        let fields: Vec<&str> = raw.split_whitespace().collect();
        if let ["0", length, "error", ..] = fields.as_slice() {
            self.parked.insert(name, length.parse().unwrap_or(0));
            return Ok(());
        }
        if let ["0", _, "linear", dev, "0"] = fields.as_slice() {
            if let Ok(dev) = dev.parse() {
                self.linear.insert(name, dev);
                return Ok(());
            }
        }
        let table = match raw.parse() {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("{e}");
                return Err(Error::Table { name, reason });
            }
        };
        self.dm.insert(name, table);
        Ok(())
    }

    pub fn target(&self, iqn: &str) -> Option<&ObservedTarget> {
        self.targets.iter().find(|t| t.iqn == iqn)
    }

    pub fn vblade(&self, pc: &str) -> Option<&RunningVblade> {
        self.vblades.iter().find(|v| v.pc == pc)
    }
}
