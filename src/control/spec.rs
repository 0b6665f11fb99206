//! What a PC's export looks like to the kernel, from the manifest: the LIO target (IQN,
//! portals, ACL, CHAP) and the vblade (shelf, slot, interface, MACs). Planning compares
//! these with what the kernel shows; applying and resetting create them.

use std::path::PathBuf;

use super::{dm_name, Ctx, Error, Result};
use crate::kernel::aoe::VbladeSpec;
use crate::kernel::lio::{Access, Credentials, TargetSpec};
use crate::manifest::{AclMode, Export, Pc};

/// The iSCSI export the manifest asks for (device left empty when not known yet).
pub fn target_spec(ctx: &Ctx, p: &Pc, device: Option<PathBuf>) -> Result<TargetSpec> {
    let Export::Iscsi { target, initiator } = &p.export else {
        return Err(Error::NotIscsi { pc: p.name.clone() });
    };
    let cfg = ctx
        .manifest
        .iscsi
        .as_ref()
        .ok_or(Error::NoSection { section: "iscsi" })?;
    let access = match cfg.acl {
        AclMode::Open => Access::Open,
        AclMode::PerInitiator => Access::Initiators(initiator.iter().cloned().collect()),
    };
    let chap = match &cfg.chap {
        Some(c) => {
            let mine = crate::manifest::secrets::ChapMaster::read(c)?.for_pc(&p.name);
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
        serial: crate::base::diskid::serial_for(&p.name),
        device: device.map(|d| d.display().to_string()).unwrap_or_default(),
        portals: cfg.portals.clone(),
        access,
        chap,
    })
}

/// The vblade the manifest asks for (device left empty when not known yet).
pub fn vblade_spec(ctx: &Ctx, p: &Pc, device: Option<PathBuf>) -> Result<VbladeSpec> {
    let Export::Aoe { shelf, slot, macs } = &p.export else {
        return Err(Error::NotAoe { pc: p.name.clone() });
    };
    let aoe = ctx
        .manifest
        .aoe
        .as_ref()
        .ok_or(Error::NoSection { section: "aoe" })?;
    Ok(VbladeSpec {
        pc: p.name.clone(),
        shelf: *shelf,
        slot: *slot,
        interface: aoe.interface.clone(),
        device: device.map(|d| d.display().to_string()).unwrap_or_default(),
        macs: macs.clone(),
    })
}
