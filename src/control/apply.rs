//! Running a plan. Each step either completes or undoes its own part; the first failure
//! stops the run and says which step failed and what was done before it.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use super::plan::Action;
use super::{dm_name, sidecar, Ctx};
use crate::dm::{DevRef, SnapshotTable, StoreMode, TableLine};
use crate::kernel::aoe::VbladeSpec;
use crate::kernel::devmapper::Target;
use crate::kernel::lio::{Access, Credentials, Lio, TargetSpec};
use crate::kernel::loopdev;
use crate::manifest::{AclMode, Export, Pc};

/// Runs `actions` in order; `progress` hears of each before it starts.
pub fn run(ctx: &Ctx, actions: &[Action], progress: &mut dyn FnMut(usize, &Action)) -> Result<()> {
    run_steps(actions, |a| step(ctx, a), progress)
}

/// Runs steps in order, stopping at the first failure with a sentence that names the step
/// and what was done before it. Shared by the kernel and userspace backends.
pub fn run_steps<A: std::fmt::Display>(
    actions: &[A],
    mut step: impl FnMut(&A) -> Result<()>,
    progress: &mut dyn FnMut(usize, &A),
) -> Result<()> {
    for (i, action) in actions.iter().enumerate() {
        progress(i, action);
        if let Err(e) = step(action) {
            let done = if i == 0 {
                "nothing was changed before it".to_string()
            } else {
                format!("the {i} step(s) before it are done and stay")
            };
            bail!(
                "step {} of {} failed: {action}: {e:#} ({done}; `cowctl plan` shows what is left)",
                i + 1,
                actions.len()
            );
        }
    }
    Ok(())
}

fn pc<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a Pc> {
    ctx.manifest
        .pc(name)
        .ok_or_else(|| anyhow!("{name} is not in the manifest"))
}

fn step(ctx: &Ctx, action: &Action) -> Result<()> {
    let k = ctx.kernel;
    match action {
        Action::CreateCow {
            path, size, chunk, ..
        } => crate::cowfile::create(path, *size, *chunk).map(drop),
        Action::RecordGolden { pc: name, .. } => {
            let p = pc(ctx, name)?;
            sidecar::write(&p.cow, &sidecar::fingerprint(&ctx.image(p).path)?)
        }
        Action::AttachImage { path, .. } => k.loops.attach(path, true).map(drop),
        Action::AttachCow { path, .. } => k.loops.attach(path, false).map(drop),
        Action::CreateSnapshot { pc: name } => {
            let p = pc(ctx, name)?;
            let target = snapshot_target(ctx, p)?;
            k.dm.create(&dm_name(name), &target).map(drop)
        }
        Action::ExportIscsi { pc: name, .. } => export_iscsi(ctx, pc(ctx, name)?),
        Action::RecreateIscsi { pc: name, target } => {
            Lio {
                fs: k.configfs.as_ref(),
            }
            .delete(target)?;
            export_iscsi(ctx, pc(ctx, name)?)
        }
        Action::StartVblade { pc: name, .. } => {
            let p = pc(ctx, name)?;
            let device = k.dm.node(&dm_name(name), &ctx.node_dir())?;
            k.vblade
                .start(&vblade_spec(ctx, p, Some(device))?)
                .map(drop)
        }
        Action::StopVblade { pc } => k.vblade.stop(pc),
        Action::UnexportIscsi { target } => Lio {
            fs: k.configfs.as_ref(),
        }
        .delete(target),
        Action::RemoveSnapshot { name } => {
            k.dm.remove(name)?;
            let _ = std::fs::remove_file(ctx.node_dir().join(name));
            Ok(())
        }
        Action::DetachLoop { dev, backing } => {
            k.loops.detach(dev)?;
            // The old COW of an interrupted reset: the reset was asked for, so it goes —
            // only a PC's own `<cow>.discard`, and only when it is a COW.
            let discarded = ctx
                .manifest
                .pcs
                .iter()
                .any(|p| super::reset::discard_path(&p.cow) == *backing);
            let a_cow = matches!(
                crate::filekind::classify(backing),
                Ok(crate::filekind::Kind::Cow | crate::filekind::Kind::Fresh)
            );
            if discarded && a_cow {
                std::fs::remove_file(backing)
                    .with_context(|| format!("cannot remove {}", backing.display()))?;
            }
            Ok(())
        }
        Action::FinishReset { pc: name } => {
            let pc = ctx
                .manifest
                .pc(name)
                .ok_or_else(|| anyhow!("{name} is not in the manifest"))?;
            let obs = super::observe::Observed::read(k)?;
            super::reset::finish_parked(ctx, &obs, pc, &dm_name(name), false)?;
            super::sidecar::note_reset(&pc.cow)
        }
    }
}

/// The PC's snapshot table over the loops now attached to its image and COW.
pub fn snapshot_target(ctx: &Ctx, p: &Pc) -> Result<Target> {
    let loops = ctx.kernel.loops.list()?;
    let image = ctx.image(p);
    let origin = loopdev::find(&loops, &image.path, true).ok_or_else(|| {
        anyhow!(
            "golden image {} is not on a loop device",
            image.path.display()
        )
    })?;
    let cow = loopdev::find(&loops, &p.cow, false)
        .ok_or_else(|| anyhow!("COW {} is not on a loop device", p.cow.display()))?;
    let sectors = std::fs::metadata(&image.path)
        .with_context(|| format!("cannot read {}", image.path.display()))?
        .len()
        / 512;
    let line = TableLine {
        start: 0,
        length: sectors,
        snapshot: SnapshotTable {
            origin: DevRef::Path(origin.dev.display().to_string()),
            cow: DevRef::Path(cow.dev.display().to_string()),
            mode: p.overflow,
            chunk_sectors: p.chunk_sectors(),
            features: Vec::new(),
        },
    };
    debug_assert!(matches!(line.snapshot.mode, StoreMode::P | StoreMode::PO));
    Ok(Target::snapshot(&line))
}

fn export_iscsi(ctx: &Ctx, p: &Pc) -> Result<()> {
    let device = ctx.kernel.dm.node(&dm_name(&p.name), &ctx.node_dir())?;
    let spec = target_spec(ctx, p, Some(device))?;
    Lio {
        fs: ctx.kernel.configfs.as_ref(),
    }
    .create(&spec)
}

/// The iSCSI export the manifest asks for (device left empty when not known yet).
pub fn target_spec(ctx: &Ctx, p: &Pc, device: Option<PathBuf>) -> Result<TargetSpec> {
    let Export::Iscsi { target, initiator } = &p.export else {
        bail!("{} is not exported over iSCSI", p.name)
    };
    let cfg = ctx
        .manifest
        .iscsi
        .as_ref()
        .ok_or_else(|| anyhow!("the manifest has no iscsi section"))?;
    let access = match cfg.acl {
        AclMode::Open => Access::Open,
        AclMode::PerInitiator => Access::Initiators(initiator.iter().cloned().collect()),
    };
    let chap = match &cfg.chap {
        Some(c) => {
            let mine = crate::secrets::ChapMaster::read(c)?.for_pc(&p.name);
            Some(Credentials {
                userid: mine.initiator.username,
                password: mine.initiator.secret,
                mutual: mine.target.map(|t| (t.username, t.secret)),
            })
        }
        None => None,
    };
    Ok(TargetSpec {
        iqn: target.clone(),
        so_name: dm_name(&p.name),
        serial: crate::iscsi::scsi::inquiry::serial_for(&p.name),
        device: device.map(|d| d.display().to_string()).unwrap_or_default(),
        portals: cfg.portals.clone(),
        access,
        chap,
    })
}

/// The vblade the manifest asks for (device left empty when not known yet).
pub fn vblade_spec(ctx: &Ctx, p: &Pc, device: Option<PathBuf>) -> Result<VbladeSpec> {
    let Export::Aoe { shelf, slot, macs } = &p.export else {
        bail!("{} is not exported over AoE", p.name)
    };
    let aoe = ctx
        .manifest
        .aoe
        .as_ref()
        .ok_or_else(|| anyhow!("the manifest has no aoe section"))?;
    Ok(VbladeSpec {
        pc: p.name.clone(),
        shelf: *shelf,
        slot: *slot,
        interface: aoe.interface.clone(),
        device: device.map(|d| d.display().to_string()).unwrap_or_default(),
        macs: macs.clone(),
    })
}
