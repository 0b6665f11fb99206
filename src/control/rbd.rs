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
    let id = image_id(cluster, &clone_name(m, pc)?)?;
    Ok(id.and_then(|id| mapped_as(cluster, obs, &id)))
}

/// The kernel's mapping of the image with this id in the cluster's pool.
fn mapped_as<'a>(cluster: &Cluster, obs: &'a Observed, id: &str) -> Option<&'a Mapped> {
    let pool = cluster.pool().name();
    obs.rbd.iter().find(|d| d.pool == pool && d.image_id == id)
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
    let keyrings = pool.keyrings(settings).map_err(crate::rbdpc::Error::from)?;
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
    let mut mapped = None;
    // One look at the clone: there or not, and its id (what a mapping is known by).
    if let Some(id) = image_id(&cluster, &clone_name(m, pc)?)? {
        // The guard, as the userspace engine's: a clone of another image is refused.
        cluster.check_disk(m, pc)?;
        mapped = mapped_as(&cluster, obs, &id);
        if mapped.is_none() {
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
    // A parked device (a reset stopped in its pause), or one over anything but this
    // clone's mapping, gets its table (and export) again.
    let up = (obs.linear.get(&name).zip(mapped)).is_some_and(|(dev, m)| names_mapping(dev, m));
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
            let clone = clone_name(m, pc)?;
            let req = map_request(&cluster, m, &clone)?;
            cluster.mark_kernel(m, &clone)?;
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
pub fn usage_of(m: &Manifest, pc: &Pc) -> (PcState, Option<Usage>) {
    let usage = crate::rbdpc::cluster_of(m, pc).and_then(|c| c.usage(m, pc));
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
    let ours = old.pool == cluster.pool().name()
        && image_id(&cluster, &clone)?.as_deref() == Some(old.image_id.as_str());
    if !ours {
        return Err(Error::OtherRbd {
            pc: pc.name.clone(),
            served: format!("{}/{}", old.pool, old.name),
            manifest: cluster.pool().spec(&clone),
        });
    }
    // Everything that can fail without the cluster is done before the PC pauses: the
    // fresh clone made and marked, the request that maps it built and checked.
    let req = map_request(&cluster, &m, &clone)?;
    req.check()?;
    let next = cluster.prepare_fresh(&m, &pc)?;
    cluster.mark_kernel(&m, &next)?;
    let mut aside = None;
    let paused = while_paused(ctx, obs, &pc, &name, || {
        swap(ctx, &cluster, (&m, &pc), (old, &req), (&next, &mut aside))
    });
    if let (Err(_), None) = (&paused, &aside) {
        let _ = cluster.remove_aside(&next);
    }
    // The old clone goes once the PC is back on the fresh one (even if bringing the export
    // back failed: the PC's disk is the fresh clone now).
    if let Some(aside) = aside {
        if let Err(e) = cluster.remove_aside(&aside) {
            tracing::warn!(pc = %pc.name, "after the reset: {}", crate::base::logtext::chain(&e));
        }
    }
    paused
}

/// The pause of a live reset: the device parked on an error table, the old clone
/// unmapped and renamed aside (its new name goes into `aside` at once), the fresh one
/// (`next`) renamed into its place, mapped with `req`, and the table loaded over it. On
/// failure before the fresh clone is mapped, the old clone is put back and mapped again.
fn swap(
    ctx: &Ctx,
    cluster: &Cluster,
    (m, pc): (&Manifest, &Pc),
    (old, req): (&Mapped, &MapRequest),
    (next, aside): (&str, &mut Option<String>),
) -> Result<()> {
    let k = ctx.kernel;
    let name = dm_name(&pc.name);
    let clone = clone_name(m, pc)?;
    let back_on_old = || -> Result<()> {
        let again = k.rbd.map(req)?;
        Ok(k.dm.replace(&name, &linear_over(&again))?)
    };
    k.dm.replace(&name, &Target::error(old.size / 512))?;
    if let Err(e) = k.rbd.unmap(old.id) {
        let _ = k.dm.replace(&name, &linear_over(old));
        return Err(e.into());
    }
    let set_aside = match cluster.swap_in(m, pc, next) {
        Ok(a) => a,
        Err(e) => {
            let _ = back_on_old();
            return Err(e.into());
        }
    };
    match k.rbd.map(req) {
        Ok(fresh) => {
            *aside = Some(set_aside);
            // Failing here leaves the device parked over nothing: apply loads its table.
            Ok(k.dm.replace(&name, &linear_over(&fresh))?)
        }
        Err(e) => {
            let pool = cluster.pool();
            let _ = pool.rename(&clone, next);
            let _ = pool.rename(&set_aside, &clone);
            let _ = back_on_old();
            Err(e.into())
        }
    }
}

/// What the kernel path cannot do for rbd PCs, found before any change.
pub fn preflight(m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let rbd = |p: &&Pc| m.storage_of(p) == crate::manifest::Storage::Rbd;
    if !m.gateways.is_empty() && m.pcs.iter().any(|p| rbd(&p)) {
        problems.push(
            "gateways: several gateways that take over each other's PCs are cowctl serve's (set backend: userspace); the kernel maps every PC on the host it runs on".into(),
        );
    }
    for pc in m.pcs.iter().filter(rbd).filter(|p| p.autoextend.is_some()) {
        problems.push(format!(
            "{}: autoextend: on the kernel path an rbd PC's quota is watched, not enforced, so there is nothing to extend (remove autoextend, or set backend: userspace)",
            pc.name
        ));
    }
    problems
}

/// The PC's clone's name in its pool, from the manifest's ceph section, for a PC that
/// may no longer be in the manifest.
fn clone_of(m: &Manifest, pc: &str) -> Option<(String, String)> {
    let ceph = m.ceph.as_ref()?;
    Some((ceph.settings.pool.clone(), format!("{}.{pc}", ceph.prefix)))
}

/// `down`'s steps for what the kernel maps of `pc`'s clone, after its export and device
/// went: a device parked by a reset that stopped in its pause, then every mapping of the
/// clone (a reset maps the clone by its name, so a mapping's name is the clone's).
pub fn teardown(ctx: &Ctx, obs: &Observed, pc: &str, actions: &mut Vec<Step>) {
    let Some((pool, clone)) = clone_of(ctx.manifest, pc) else {
        return;
    };
    let name = dm_name(pc);
    if obs.parked.contains_key(&name)
        && ctx
            .manifest
            .pc(pc)
            .is_none_or(|p| ctx.manifest.storage_of(p) == crate::manifest::Storage::Rbd)
    {
        actions.push(Step::RemoveSnapshot { name });
    }
    for m in mappings_named(obs, &pool, &clone) {
        let step = Step::UnmapRbd {
            id: m.id,
            clone: format!("{}/{}", m.pool, m.name),
        };
        if !actions.contains(&step) {
            actions.push(step);
        }
    }
}

/// The kernel's mappings made by the clone's name (a reset maps the clone by its name).
fn mappings_named<'a>(
    obs: &'a Observed,
    pool: &'a str,
    clone: &'a str,
) -> impl Iterator<Item = &'a Mapped> {
    obs.rbd
        .iter()
        .filter(move |m| m.pool == pool && m.name == clone)
}

/// Whether the kernel maps `pc`'s clone (with or without a device over it).
pub fn is_mapped(ctx: &Ctx, obs: &Observed, pc: &str) -> bool {
    clone_of(ctx.manifest, pc)
        .is_some_and(|(pool, clone)| mappings_named(obs, &pool, &clone).next().is_some())
}

/// PCs no longer in the manifest whose clones the kernel still maps (`<prefix>.<pc>`),
/// added to `orphans` (once each).
pub fn add_mapped_orphans(ctx: &Ctx, obs: &Observed, orphans: &mut Vec<String>) {
    let Some(ceph) = ctx.manifest.ceph.as_ref() else {
        return;
    };
    let prefix = format!("{}.", ceph.prefix);
    for pc in (obs.rbd.iter())
        .filter(|m| m.pool == ceph.settings.pool)
        .filter_map(|m| m.name.strip_prefix(&prefix))
        .filter(|pc| !pc.contains('.') && ctx.manifest.pc(pc).is_none())
    {
        if !orphans.iter().any(|o| o == pc) {
            orphans.push(pc.to_string());
        }
    }
}
