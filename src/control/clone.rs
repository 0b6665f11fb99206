//! A reflink PC on the kernel (`storage: reflink`): its clone on a loop device, and a dm
//! `linear` device over that loop which LIO or vblade export as they export a snapshot. A
//! reset is a table reload: the export is paused, the device suspended, a fresh clone
//! takes the disk's path on a new loop, the table is loaded over it, and the export
//! resumes; the old loop and clone go after. Nothing of that grows with the disk's size
//! or with what the PC wrote.

use std::path::Path;
use std::time::Duration;

use super::export::{names_loop, while_paused};
use super::observe::Observed;
use super::{dm_name, Ctx, Error, Result};
use crate::base::fileid::same_file;
use crate::cow::Usage;
use crate::dm::DevRef;
use crate::image::golden_record::{self, Golden};
use crate::kernel::devmapper::Target;
use crate::kernel::loopdev::{self, LoopInfo};
use crate::manifest::Pc;
use crate::room::reset::discard_path;
use crate::room::status::PcState;
use crate::room::step::Step;

/// A reflink PC's plan, bottom-up: its clone and record, the clone's loop, the linear
/// device (a device of another kind under its name is refused). Returns whether the
/// device is up already; the export's steps follow as for any PC.
pub fn plan_actions(ctx: &Ctx, obs: &Observed, pc: &Pc, actions: &mut Vec<Step>) -> Result<bool> {
    let image = ctx.image(pc);
    let name = dm_name(&pc.name);
    if !pc.cow.exists() {
        actions.push(Step::CloneDisk {
            pc: pc.name.clone(),
            image_path: image.path.clone(),
            path: pc.cow.clone(),
        });
    }
    if !golden_record::record_path(&pc.cow).exists() {
        actions.push(Step::RecordGolden {
            pc: pc.name.clone(),
            image: image.name.clone(),
            image_path: image.path.clone(),
            cow: pc.cow.clone(),
        });
    }
    if loopdev::find(&obs.loops, &pc.cow, false).is_none() {
        actions.push(Step::AttachCow {
            pc: pc.name.clone(),
            path: pc.cow.clone(),
        });
    }
    if obs.suspended.contains(&name) {
        actions.push(Step::Resume {
            pc: pc.name.clone(),
        });
    }
    if let Some(table) = obs.dm.get(&name) {
        return Err(Error::OtherTable {
            pc: pc.name.clone(),
            name,
            table: table.to_string(),
        });
    }
    let up = obs.linear.contains_key(&name);
    if !up {
        actions.push(Step::CreateLinear {
            pc: pc.name.clone(),
            disk: pc.cow.clone(),
        });
    }
    Ok(up)
}

/// Creates the PC's linear device over the loop its disk is on.
pub fn create_linear(ctx: &Ctx, pc: &str, disk: &Path, loops: &[LoopInfo]) -> Result<()> {
    let l = loopdev::find(loops, disk, false).ok_or_else(|| Error::CowOnNoLoop {
        pc: pc.to_string(),
        name: dm_name(pc),
        cow: disk.display().to_string(),
    })?;
    let sectors = sectors_of(disk)?;
    let target = Target::linear(sectors, &l.dev.display().to_string());
    Ok(ctx.kernel.dm.create(&dm_name(pc), &target).map(drop)?)
}

fn sectors_of(disk: &Path) -> Result<u64> {
    let len = std::fs::metadata(disk)
        .map_err(|source| Error::Read {
            path: disk.to_path_buf(),
            source,
        })?
        .len();
    Ok(len / 512)
}

/// A reflink PC's fill as the kernel serves it: the bytes where its clone is no longer
/// its image (FIEMAP, after its dirty pages are written), against its quota. What vblade
/// wrote into the linear device's page cache counts once written back, as a snapshot's
/// exceptions do (status never opens the device: it could hang on one suspended, and an
/// opener kept across a reset would keep the old disk's pages cached). Counted again only
/// for clones written since the last count (`reflink::fillcache`).
pub fn status(ctx: &Ctx, pc: &Pc) -> (PcState, Option<Usage>) {
    let image = &ctx.image(pc).path;
    match crate::reflink::fillcache::own_bytes(&ctx.run_dir, &pc.name, &pc.cow, image) {
        Ok(own) => (
            PcState::Active,
            Some(Usage {
                sectors_allocated: own / 512,
                total_sectors: pc.cow_size.bytes() / 512,
                metadata_sectors: 0,
            }),
        ),
        Err(_) => (PcState::Unknown, None),
    }
}

/// Resets an exported reflink PC onto a fresh clone of `image`; returns how long its I/O
/// was paused. `onto` is the record of the version it moves to, if any.
pub fn live_reset(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    dev: &DevRef,
    image: &Path,
    onto: Option<&Golden>,
) -> Result<Duration> {
    let k = ctx.kernel;
    let name = dm_name(&pc.name);
    let old_loop = obs
        .loops
        .iter()
        .find(|l| names_loop(dev, l))
        .cloned()
        .ok_or_else(|| Error::CowOnNoLoop {
            pc: pc.name.clone(),
            name: name.clone(),
            cow: dev.to_string(),
        })?;
    if !same_file(&old_loop.backing, &pc.cow) {
        return Err(Error::OtherCow {
            pc: pc.name.clone(),
            served: old_loop.backing.clone(),
            manifest: pc.cow.clone(),
        });
    }
    let discard = discard_path(&pc.cow);
    // Cloned before the pause: FICLONE waits for the image's readers, and syncs.
    let fresh = crate::reflink::clone::prepare(image, &pc.cow)?.partial;
    // The initiator retries its login while the export is paused.
    let paused = while_paused(ctx, obs, pc, &name, || {
        swap(ctx, pc, &old_loop, &fresh, &discard, onto)
    });
    let _ = std::fs::remove_file(&fresh); // still there only when the swap failed
    let paused = paused?;
    // The old clone goes now that the PC is back.
    k.loops.detach(&old_loop.dev)?;
    crate::reflink::clone::remove_aside(&discard)?;
    Ok(paused)
}

/// The old clone set aside, the fresh one (made ahead as `fresh`) in its place on a new
/// loop, the table reloaded over it; on failure the old clone and table are put back.
fn swap(
    ctx: &Ctx,
    pc: &Pc,
    old_loop: &LoopInfo,
    fresh: &Path,
    discard: &Path,
    onto: Option<&Golden>,
) -> Result<()> {
    let k = ctx.kernel;
    let name = dm_name(&pc.name);
    let sectors = sectors_of(&pc.cow)?;
    let old_record = golden_record::read(&pc.cow)?;
    crate::reflink::clone::set_aside(&pc.cow, discard)?;
    let attached = (|| -> Result<LoopInfo> {
        crate::reflink::clone::install(fresh, &pc.cow)?;
        golden_record::note_reset(&pc.cow, onto)?;
        Ok(k.loops.attach(&pc.cow, false)?)
    })();
    match attached {
        Ok(l) => {
            let target = Target::linear(sectors_of(&pc.cow)?, &l.dev.display().to_string());
            Ok(k.dm.replace(&name, &target)?)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&pc.cow);
            let _ = crate::reflink::clone::put_back(discard, &pc.cow);
            if let Some(old) = &old_record {
                let _ = golden_record::write(&pc.cow, old);
            }
            let old = Target::linear(sectors, &old_loop.dev.display().to_string());
            k.dm.replace(&name, &old)?;
            Err(e)
        }
    }
}
