//! A PC's export paused and resumed around a change of the device under it (a reset), and
//! the loop a table names.

use super::observe::Observed;
use super::spec::vblade_spec;
use super::{Ctx, Result};
use crate::dm::DevRef;
use crate::kernel::lio::Lio;
use crate::kernel::loopdev::LoopInfo;
use crate::manifest::{Export, Pc};

/// Runs `swap` (the change under the device) with the PC's export paused, and resumes
/// the export whatever happened, so a failed swap leaves the PC as it was. Returns how
/// long I/O was paused.
pub fn while_paused(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    name: &str,
    swap: impl FnOnce() -> Result<()>,
) -> Result<std::time::Duration> {
    let start = std::time::Instant::now();
    pause_export(ctx, obs, pc)?;
    let swapped = swap();
    let restarted = resume_export(ctx, pc, name, Resume::WhatWasThere(obs));
    let paused = start.elapsed();
    swapped.map_err(|e| super::Error::Resetting {
        pc: pc.name.clone(),
        source: Box::new(e),
    })?;
    restarted.map_err(|e| super::Error::ReExporting {
        pc: pc.name.clone(),
        source: Box::new(e),
    })?;
    Ok(paused)
}

/// Stops the PC's I/O: disabling the TPG drops its sessions (the initiator retries its
/// login), or its vblade stops.
pub fn pause_export(ctx: &Ctx, obs: &Observed, pc: &Pc) -> Result<()> {
    let k = ctx.kernel;
    match &pc.export {
        Export::Iscsi { target, .. } if obs.target(target.as_str()).is_some() => Lio {
            fs: k.configfs.as_ref(),
        }
        .set_enabled(target.as_str(), false)
        .map_err(Into::into),
        Export::Aoe { .. } if obs.vblade(&pc.name).is_some() => Ok(k.vblade.stop(&pc.name)?),
        _ => Ok(()),
    }
}

/// Which exports to bring back after the snapshot is loaded again.
pub enum Resume<'a> {
    /// Those that were there before the reset paused them.
    WhatWasThere(&'a Observed),
    /// Every export the PC has in the kernel (after a reset that died with them paused).
    All(&'a Observed),
}

pub fn resume_export(ctx: &Ctx, pc: &Pc, name: &str, what: Resume<'_>) -> Result<()> {
    let k = ctx.kernel;
    let (obs, any_vblade) = match what {
        Resume::WhatWasThere(o) => (o, false),
        Resume::All(o) => (o, true),
    };
    match &pc.export {
        Export::Iscsi { target, .. } if obs.target(target.as_str()).is_some() => Lio {
            fs: k.configfs.as_ref(),
        }
        .set_enabled(target.as_str(), true)
        .map_err(Into::into),
        Export::Aoe { .. } if any_vblade || obs.vblade(&pc.name).is_some() => {
            if k.vblade.running(&pc.name)?.is_some() {
                return Ok(());
            }
            let device = k.dm.node(name, &ctx.node_dir())?;
            k.vblade
                .start(&vblade_spec(ctx, pc, Some(device))?)
                .map(drop)
                .map_err(Into::into)
        }
        _ => Ok(()),
    }
}

pub fn loop_of<'a>(obs: &'a Observed, d: &DevRef) -> Option<&'a LoopInfo> {
    obs.loops.iter().find(|l| names_loop(d, l))
}

/// A table names a device by number or by node: either way, is it this loop?
pub fn names_loop(d: &DevRef, l: &LoopInfo) -> bool {
    d.to_string() == l.number.to_string() || d.to_string() == l.dev.display().to_string()
}
