//! Returning a PC to the golden image while it is exported. The pause does not grow with the
//! COW: freeing a full COW's blocks takes time in proportion to its size (about 180 ms per GiB
//! on ext4), so the old file is set aside and freed only after the PC is back.
//!
//! 1. stop I/O (disable the target's TPG, or stop the vblade);
//! 2. park the dm device on an `error` table (a plain reload would hand the old snapshot's
//!    exceptions over to the new one);
//! 3. rename the COW to `<cow>.discard` (its loop keeps the old file open) and create a fresh
//!    sparse COW at the same path, on a new loop device;
//! 4. load a fresh snapshot on it and resume I/O — the PC is back;
//! 5. detach the old loop and delete `<cow>.discard`, which frees the space.
//!
//! A PC that is not applied just has its COW file reset in place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use super::apply::{snapshot_target, vblade_spec};
use super::observe::Observed;
use super::{dm_name, Ctx};
use crate::kernel::devmapper::Target;
use crate::kernel::lio::Lio;
use crate::kernel::loopdev::{self, LoopInfo};
use crate::manifest::{Export, Pc};

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Reset {
    pub pc: String,
    /// True when the PC was exported (and its I/O paused) during the reset.
    pub live: bool,
    /// From stopping the PC's I/O to resuming it (the whole reset when not live).
    pub seconds: f64,
    /// Including freeing the old COW's space after the PC was back.
    pub total_seconds: f64,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Where a live reset puts the old COW until its loop is detached.
pub fn discard_path(cow: &Path) -> PathBuf {
    let mut p = cow.as_os_str().to_owned();
    p.push(".discard");
    PathBuf::from(p)
}

pub fn reset(ctx: &Ctx, obs: &Observed, pc: &Pc) -> Result<Reset> {
    let start = Instant::now();
    let name = dm_name(&pc.name);
    let live = obs.dm.contains_key(&name);
    let paused = if live {
        live_reset(ctx, obs, pc, &name)?
    } else {
        crate::cowfile::reset(&pc.cow)?;
        start.elapsed()
    };
    super::sidecar::note_reset(&pc.cow)?;
    Ok(Reset {
        pc: pc.name.clone(),
        live,
        seconds: paused.as_secs_f64(),
        total_seconds: start.elapsed().as_secs_f64(),
        elapsed: paused,
    })
}

/// Returns how long the PC's I/O was paused.
fn live_reset(ctx: &Ctx, obs: &Observed, pc: &Pc, name: &str) -> Result<Duration> {
    let k = ctx.kernel;
    let lio = Lio {
        fs: k.configfs.as_ref(),
    };
    let old_table = snapshot_target(ctx, pc)?;
    let loops = k.loops.list()?;
    let old_loop = loopdev::find(&loops, &pc.cow, false)
        .cloned()
        .ok_or_else(|| anyhow!("{}'s COW is not on a loop device", pc.name))?;
    let discard = discard_path(&pc.cow);
    let size = std::fs::metadata(&pc.cow)
        .with_context(|| format!("cannot read {}", pc.cow.display()))?
        .len();

    let paused = Instant::now();
    // 1. Stop I/O: disabling the TPG drops the sessions; the initiator retries its login.
    match &pc.export {
        Export::Iscsi { target, .. } if obs.target(target.as_str()).is_some() => {
            lio.set_enabled(target.as_str(), false)?
        }
        Export::Aoe { .. } if obs.vblade(&pc.name).is_some() => k.vblade.stop(&pc.name)?,
        _ => {}
    }
    let swapped = swap(ctx, pc, name, &old_table, &old_loop, &discard, size);
    // 4b. Resume I/O whatever happened, so a failed reset leaves the PC as it was.
    let restarted = match &pc.export {
        Export::Iscsi { target, .. } if obs.target(target.as_str()).is_some() => {
            lio.set_enabled(target.as_str(), true)
        }
        Export::Aoe { .. } if obs.vblade(&pc.name).is_some() => {
            k.dm.node(name, &ctx.node_dir()).and_then(|device| {
                k.vblade
                    .start(&vblade_spec(ctx, pc, Some(device))?)
                    .map(drop)
            })
        }
        _ => Ok(()),
    };
    let paused = paused.elapsed();
    swapped.with_context(|| format!("resetting {}", pc.name))?;
    restarted.with_context(|| format!("re-exporting {} after its reset", pc.name))?;
    // 5. Free the old COW now that the PC is back.
    k.loops.detach(&old_loop.dev)?;
    std::fs::remove_file(&discard)
        .with_context(|| format!("cannot remove {}", discard.display()))?;
    Ok(paused)
}

fn swap(
    ctx: &Ctx,
    pc: &Pc,
    name: &str,
    old_table: &Target,
    old_loop: &LoopInfo,
    discard: &Path,
    size: u64,
) -> Result<()> {
    let k = ctx.kernel;
    // 2. Park the device: the old snapshot is destroyed, nothing can write.
    k.dm.replace(name, &Target::error(old_table.length))?;
    // 3. A fresh COW at the same path, the old one set aside.
    let fresh = (|| -> Result<LoopInfo> {
        std::fs::rename(&pc.cow, discard)
            .with_context(|| format!("cannot move {} aside", pc.cow.display()))?;
        crate::cowfile::create_empty(&pc.cow, size)?;
        k.loops.attach(&pc.cow, false)
    })();
    match fresh {
        // 4. A fresh snapshot on the fresh COW (magic 0: the kernel starts a new store).
        Ok(new_loop) => {
            let params = old_table.params.replacen(
                &old_loop.dev.display().to_string(),
                &new_loop.dev.display().to_string(),
                1,
            );
            k.dm.replace(
                name,
                &Target {
                    params,
                    ..old_table.clone()
                },
            )
        }
        // Put everything back as it was.
        Err(e) => {
            if discard.exists() {
                let _ = std::fs::remove_file(&pc.cow);
                let _ = std::fs::rename(discard, &pc.cow);
            }
            k.dm.replace(name, old_table)?;
            Err(e)
        }
    }
}
