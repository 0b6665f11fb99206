//! An rbd PC on the kernel (`storage: rbd`, `backend: kernel`): its clone mapped by the
//! kernel's rbd driver (`/dev/rbdN`, which holds the clone's exclusive lock while mapped,
//! so no gateway serves it meanwhile), and a dm `linear` device over the mapping that LIO
//! or vblade export as they export a snapshot. A mapping is known by the clone's image
//! id, which a reset's renames do not change. A live reset maps a fresh clone before the
//! pause; the pause only renames the clones and reloads the table; the old clone is
//! unmapped and removed after. The PC's quota is watched (status, the warning), not
//! enforced: the kernel's driver writes what the PC writes.

use std::time::Duration;

use super::export::while_paused;
use super::observe::Observed;
use super::{dm_name, Ctx, Error, Result};
use crate::cow::Usage;
use crate::dm::DevRef;
use crate::kernel::devmapper::Target;
use crate::kernel::rbdmap::{key_in_keyring, monitors, MapRequest, Mapped};
use crate::kernel::RbdMapError;
use crate::manifest::{Image, Manifest, Pc};
use crate::rbdpc::Cluster;
use crate::room::status::PcState;
use crate::room::step::Step;

/// The PC's clone's name in its pool.
fn clone_name(m: &Manifest, pc: &Pc) -> Result<String> {
    m.rbd_clone(pc).ok_or_else(|| {
        Error::from(crate::rbdpc::Error::NoCeph {
            pc: pc.name.clone(),
        })
    })
}

/// The id of the image `name`; None when it is not there.
fn image_id(cluster: &Cluster, name: &str) -> Result<Option<String>> {
    match cluster.pool().open_read_only(name, None) {
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(crate::rbdpc::Error::from(e).into()),
        Ok(image) => Ok(Some(image.id().map_err(crate::rbdpc::Error::from)?)),
    }
}

/// The kernel's mapping of the PC's clone, if it has one.
pub fn mapping_of<'a>(
    cluster: &Cluster,
    obs: &'a Observed,
    m: &Manifest,
    pc: &Pc,
) -> Result<Option<&'a Mapped>> {
    let Some(id) = image_id(cluster, &clone_name(m, pc)?)? else {
        return Ok(None);
    };
    let pool = cluster.pool().name();
    Ok(obs.rbd.iter().find(|d| d.pool == pool && d.image_id == id))
}

/// Whether a table's device is this mapping.
fn names_mapping(d: &DevRef, mapped: &Mapped) -> bool {
    let s = d.to_string();
    s == mapped.number.to_string() || s == mapped.dev().display().to_string()
}

/// The mapping a PC's linear device is over.
pub fn mapping_under<'a>(obs: &'a Observed, dev: &DevRef) -> Option<&'a Mapped> {
    obs.rbd.iter().find(|m| names_mapping(dev, m))
}

/// How the kernel reaches the cluster as the manifest's client, to map `image`: the
/// monitors and the client's key from the configuration librados read.
fn map_request(cluster: &Cluster, m: &Manifest, image: &str) -> Result<MapRequest> {
    let pool = cluster.pool();
    let conf = |key| pool.conf(key).map_err(crate::rbdpc::Error::from);
    let (monitors, msgr2) = monitors(&conf("mon_host")?)?;
    let settings = &m
        .ceph
        .as_ref()
        .expect("an rbd room has a ceph section")
        .settings;
    let keyrings: Vec<std::path::PathBuf> = match &settings.keyring {
        Some(k) => vec![k.clone()],
        None => (conf("keyring")?.split([',', ';']))
            .map(|p| std::path::PathBuf::from(p.trim()))
            .collect(),
    };
    let secret = keyrings
        .iter()
        .filter_map(|k| std::fs::read_to_string(k).ok())
        .find_map(|text| key_in_keyring(&text, &settings.client))
        .ok_or_else(|| RbdMapError::NoKey {
            client: settings.client.clone(),
            keyrings: keyrings.iter().map(|k| k.display().to_string()).collect(),
        })?;
    Ok(MapRequest {
        monitors,
        msgr2,
        client: settings.client.clone(),
        secret,
        pool: pool.name().to_string(),
        image: image.to_string(),
    })
}

/// The PC's plan, bottom-up: its clone (checked against its image: the guard), mapped,
/// the linear device over it (a device of another kind under its name is refused).
/// Returns whether the device is up already; the export's steps follow as for any PC.
pub fn plan_actions(ctx: &Ctx, obs: &Observed, pc: &Pc, actions: &mut Vec<Step>) -> Result<bool> {
    let m = ctx.manifest;
    let cluster = crate::rbdpc::cluster_of(m, pc)?;
    let name = dm_name(&pc.name);
    if let Some(table) = obs.dm.get(&name) {
        return Err(Error::OtherTable {
            pc: pc.name.clone(),
            name,
            table: table.to_string(),
        });
    }
    let clone = cluster.pool().spec(&clone_name(m, pc)?);
    if cluster.has_disk(m, pc)? {
        // The guard, as the userspace engine's: a clone of another image is refused.
        cluster.usage(m, pc)?;
        if mapping_of(&cluster, obs, m, pc)?.is_none() {
            if let Some(holder) = cluster.holder(m, pc)? {
                return Err(Error::RbdHeld {
                    pc: pc.name.clone(),
                    clone,
                    holder,
                });
            }
            actions.push(Step::MapRbd {
                pc: pc.name.clone(),
                clone: clone.clone(),
            });
        }
    } else {
        let image = ctx.image(pc).rbd.as_ref().expect("an rbd image");
        actions.push(Step::CloneRbd {
            pc: pc.name.clone(),
            snapshot: cluster.pool().spec(&image.to_string()),
            clone: clone.clone(),
        });
        actions.push(Step::MapRbd {
            pc: pc.name.clone(),
            clone: clone.clone(),
        });
    }
    if obs.suspended.contains(&name) {
        actions.push(Step::Resume {
            pc: pc.name.clone(),
        });
    }
    // A parked device (a reset stopped in its pause) gets its table and export again.
    let up = obs.linear.contains_key(&name);
    if !up {
        actions.push(Step::CreateLinearRbd {
            pc: pc.name.clone(),
            clone,
        });
    }
    Ok(up)
}

/// Runs the steps of rbd PCs on the kernel.
pub fn run_step(ctx: &Ctx, step: &Step) -> Result<()> {
    let m = ctx.manifest;
    let pc_of = |name: &str| {
        m.pc(name).ok_or_else(|| Error::NotInManifest {
            pc: name.to_string(),
        })
    };
    match step {
        Step::CloneRbd { pc, .. } => {
            let pc = pc_of(pc)?;
            Ok(crate::rbdpc::cluster_of(m, pc)?.make_disk(m, pc)?)
        }
        Step::MapRbd { pc, .. } => {
            let pc = pc_of(pc)?;
            let cluster = crate::rbdpc::cluster_of(m, pc)?;
            let req = map_request(&cluster, m, &clone_name(m, pc)?)?;
            Ok(ctx.kernel.rbd.map(&req).map(drop)?)
        }
        Step::CreateLinearRbd { pc, clone } => {
            // A reset that stopped in its pause left the device on an error table.
            let pc = pc_of(pc)?;
            let cluster = crate::rbdpc::cluster_of(m, pc)?;
            let obs = Observed {
                rbd: ctx.kernel.rbd.list()?,
                ..Observed::default()
            };
            let mapped = mapping_of(&cluster, &obs, m, pc)?.ok_or_else(|| Error::RbdNotMapped {
                pc: pc.name.clone(),
                clone: clone.clone(),
            })?;
            let target = linear_over(mapped);
            let name = dm_name(&pc.name);
            if ctx.kernel.dm.list(super::PREFIX)?.contains(&name) {
                return Ok(ctx.kernel.dm.replace(&name, &target)?);
            }
            Ok(ctx.kernel.dm.create(&name, &target).map(drop)?)
        }
        Step::UnmapRbd { id, .. } => Ok(ctx.kernel.rbd.unmap(*id)?),
        other => unreachable!("not an rbd step: {other}"),
    }
}

fn linear_over(mapped: &Mapped) -> Target {
    Target::linear(mapped.size / 512, &mapped.number.to_string())
}

/// The PC's fill as the cluster counts it (its clone's objects), against its quota.
pub fn status(ctx: &Ctx, pc: &Pc) -> (PcState, Option<Usage>) {
    let usage = crate::rbdpc::cluster_of(ctx.manifest, pc).and_then(|c| c.usage(ctx.manifest, pc));
    match usage {
        Ok(u) => (PcState::Active, Some(u)),
        Err(_) => (PcState::Unknown, None),
    }
}

/// Resets an exported rbd PC onto a fresh clone of its image's snapshot (or of `onto`,
/// the version it moves to); returns how long its I/O was paused.
pub fn live_reset(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    dev: &DevRef,
    onto: Option<&Image>,
) -> Result<Duration> {
    let (m, pc) = ctx.manifest.with_pc_on(pc, onto);
    let cluster = crate::rbdpc::cluster_of(&m, &pc)?;
    let name = dm_name(&pc.name);
    let clone = clone_name(&m, &pc)?;
    let old = mapping_under(obs, dev).ok_or_else(|| Error::RbdNotMapped {
        pc: pc.name.clone(),
        clone: cluster.pool().spec(&clone),
    })?;
    if image_id(&cluster, &clone)?.as_deref() != Some(old.image_id.as_str()) {
        return Err(Error::OtherRbd {
            pc: pc.name.clone(),
            served: format!("{}/{}", old.pool, old.name),
            manifest: cluster.pool().spec(&clone),
        });
    }
    // The fresh clone is made before the PC pauses. The kernel holds a mapped clone's
    // lock, and a locked clone cannot be renamed: in the pause the old one is let go of
    // before the renames, and the fresh one mapped after them.
    let next = cluster.prepare_fresh(&m, &pc)?;
    let mut aside = None;
    let paused = while_paused(ctx, obs, &pc, &name, || {
        aside = Some(swap(ctx, &cluster, (&m, &pc), old, &next)?);
        Ok(())
    });
    let paused = match paused {
        Ok(p) => p,
        Err(e) => {
            if aside.is_none() {
                let _ = cluster.remove_aside(&next);
            }
            return Err(e);
        }
    };
    // The old clone goes now that the PC is back on the fresh one.
    if let Some(aside) = aside {
        cluster.remove_aside(&aside)?;
    }
    Ok(paused)
}

/// The pause of a live reset: the device parked on an error table, the old clone
/// unmapped and renamed aside, the fresh one (`next`) renamed into its place, mapped, and
/// the table loaded over it. Returns the name the old clone was set aside as. On failure
/// the old clone is put back and mapped again as far as it can be.
fn swap(
    ctx: &Ctx,
    cluster: &Cluster,
    (m, pc): (&Manifest, &Pc),
    old: &Mapped,
    next: &str,
) -> Result<String> {
    let k = ctx.kernel;
    let name = dm_name(&pc.name);
    let clone = clone_name(m, pc)?;
    let map_clone = || -> Result<Mapped> { Ok(k.rbd.map(&map_request(cluster, m, &clone)?)?) };
    let back_on_old = || -> Result<()> {
        let again = map_clone()?;
        Ok(k.dm.replace(&name, &linear_over(&again))?)
    };
    k.dm.replace(&name, &Target::error(old.size / 512))?;
    if let Err(e) = k.rbd.unmap(old.id) {
        let _ = k.dm.replace(&name, &linear_over(old));
        return Err(e.into());
    }
    let aside = match cluster.swap_in(m, pc, next) {
        Ok(a) => a,
        Err(e) => {
            let _ = back_on_old();
            return Err(e.into());
        }
    };
    match map_clone() {
        Ok(fresh) => {
            k.dm.replace(&name, &linear_over(&fresh))?;
            Ok(aside)
        }
        Err(e) => {
            let pool = cluster.pool();
            let _ = pool.rename(&clone, next);
            let _ = pool.rename(&aside, &clone);
            let _ = back_on_old();
            Err(e)
        }
    }
}
