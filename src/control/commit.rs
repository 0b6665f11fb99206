//! `cowctl image commit` on the kernel backend: a PC nothing reaches is copied as it is; one
//! in use is refused, or with --pause its dm device is suspended while its COW file is
//! copied (in-flight writes complete first, new ones wait), then resumed.

use super::observe::Observed;
use super::{dm_name, Ctx, Error, Result};
use crate::image::{Committed, VersionName};
use crate::manifest::{Export, Pc};

pub fn commit(
    ctx: &Ctx,
    pc: &Pc,
    version: Option<VersionName>,
    note: &str,
    pause: bool,
) -> Result<Committed> {
    let k = ctx.kernel;
    // Each way below commits once: as the file is, or with the device suspended around it.
    let commit_pc = move || {
        crate::image::commit_pc(
            ctx.manifest,
            pc,
            version,
            note,
            crate::image::rbdstore::Wait::AWhile,
        )
    };
    let obs = Observed::read(k)?;
    let name = dm_name(&pc.name);
    if obs.parked.contains_key(&name) {
        return Err(Error::HalfReset {
            pc: pc.name.clone(),
        });
    }
    if ctx.manifest.storage_of(pc) == crate::manifest::Storage::Rbd {
        // The kernel holds the clone's lock for as long as it maps it.
        if obs.linear.contains_key(&name) || super::rbd::is_mapped(ctx, &obs, &pc.name) {
            return Err(Error::CommitMapped {
                pc: pc.name.clone(),
            });
        }
    }
    if !obs.dm.contains_key(&name) && !obs.linear.contains_key(&name) {
        return Ok(commit_pc()?);
    }
    let in_use = match &pc.export {
        Export::Iscsi { target, .. } => obs
            .target(target.as_str())
            .map(|t| t.sessions.clone())
            .filter(|s| !s.is_empty())
            .map(|s| format!("iSCSI sessions from {}", s.join(", "))),
        // AoE has no sessions: whether a PC runs cannot be told from here.
        Export::Aoe { .. } => obs
            .vblade(&pc.name)
            .map(|_| "exported over AoE, which cannot tell whether the PC runs".to_string()),
        Export::Nbd => None,
    };
    if let (Some(why), false) = (&in_use, pause) {
        return Err(Error::InUse {
            pc: pc.name.clone(),
            why: why.clone(),
        });
    }
    if in_use.is_none() {
        // Nothing reaches the device: its COW file is quiet as it is.
        return Ok(commit_pc()?);
    }
    // A commit killed here leaves the device suspended; `cowctl apply` resumes it.
    k.dm.suspend(&name)?;
    let committed = commit_pc();
    let resumed = k.dm.resume(&name);
    let committed = committed?;
    resumed?;
    Ok(committed)
}
