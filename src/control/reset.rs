//! Returning a PC to the golden image while it is exported, in time independent of its COW's
//! size: stop its I/O, park the dm device on an `error` table (a plain reload would hand the
//! old exceptions over to the new snapshot), reset the COW file, load a fresh snapshot,
//! resume I/O. A PC that is not applied just has its COW file reset.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::apply::{snapshot_target, vblade_spec};
use super::observe::Observed;
use super::{dm_name, Ctx};
use crate::kernel::devmapper::Target;
use crate::kernel::lio::Lio;
use crate::manifest::{Export, Pc};

#[derive(Debug, Serialize)]
pub struct Reset {
    pub pc: String,
    /// True when the PC was exported (and its I/O paused) during the reset.
    pub live: bool,
    pub seconds: f64,
    #[serde(skip)]
    pub elapsed: Duration,
}

pub fn reset(ctx: &Ctx, obs: &Observed, pc: &Pc) -> Result<Reset> {
    let start = Instant::now();
    let name = dm_name(&pc.name);
    let live = obs.dm.contains_key(&name);
    if live {
        live_reset(ctx, obs, pc, &name)?;
    } else {
        crate::cowfile::reset(&pc.cow)?;
    }
    let elapsed = start.elapsed();
    Ok(Reset {
        pc: pc.name.clone(),
        live,
        seconds: elapsed.as_secs_f64(),
        elapsed,
    })
}

fn live_reset(ctx: &Ctx, obs: &Observed, pc: &Pc, name: &str) -> Result<()> {
    let k = ctx.kernel;
    let lio = Lio {
        fs: k.configfs.as_ref(),
    };
    let snapshot = snapshot_target(ctx, pc)?;
    // 1. Stop I/O: disabling the TPG drops the sessions; the initiator retries its login.
    match &pc.export {
        Export::Iscsi { target, .. } if obs.target(target.as_str()).is_some() => {
            lio.set_enabled(target.as_str(), false)?
        }
        Export::Aoe { .. } if obs.vblade(&pc.name).is_some() => k.vblade.stop(&pc.name)?,
        _ => {}
    }
    let restart = || -> Result<()> {
        match &pc.export {
            Export::Iscsi { target, .. } if obs.target(target.as_str()).is_some() => {
                lio.set_enabled(target.as_str(), true)
            }
            Export::Aoe { .. } if obs.vblade(&pc.name).is_some() => {
                let device = k.dm.node(name, &ctx.node_dir())?;
                k.vblade
                    .start(&vblade_spec(ctx, pc, Some(device))?)
                    .map(drop)
            }
            _ => Ok(()),
        }
    };
    let swap = || -> Result<()> {
        // 2. Park the device: the old snapshot is destroyed, nothing can write.
        k.dm.replace(name, &Target::error(snapshot.length))?;
        // 3. The COW: header zeroed, blocks punched out.
        let wiped = crate::cowfile::reset(&pc.cow)
            .with_context(|| format!("resetting {}", pc.cow.display()));
        // 4. A fresh snapshot (or the old one back, if the wipe failed).
        k.dm.replace(name, &snapshot)?;
        wiped.map(drop)
    };
    let swapped = swap();
    // 5. Resume I/O whatever happened, so a failed reset leaves the PC as it was.
    let restarted = restart();
    swapped.with_context(|| format!("resetting {}", pc.name))?;
    restarted.with_context(|| format!("re-exporting {} after its reset", pc.name))
}
