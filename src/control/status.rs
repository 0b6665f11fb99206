//! Per-PC status from the kernel (or, for a PC not applied, from its COW file); the rows and
//! their table are the room's (`room::status`).

use super::observe::Observed;
use super::{dm_name, Ctx};
use crate::dm::SnapshotStatus;
use crate::manifest::{Export, Pc};
use crate::room::status::{cow_file_problem, from_cow_file, row, PcState, PcStatus};

pub fn collect(ctx: &Ctx, obs: &Observed, pcs: &[&Pc]) -> Vec<PcStatus> {
    pcs.iter().map(|pc| one(ctx, obs, pc)).collect()
}

fn one(ctx: &Ctx, obs: &Observed, pc: &Pc) -> PcStatus {
    let name = dm_name(&pc.name);
    let (state, usage) = if obs.parked.contains_key(&name) {
        (PcState::Parked, None)
    } else if obs.dm.contains_key(&name) {
        match ctx.kernel.dm.status(&name).map(|s| s.status) {
            Ok(SnapshotStatus::Usage(u)) => (PcState::Active, Some(u)),
            Ok(SnapshotStatus::Overflow) => (PcState::Overflow, None),
            Ok(SnapshotStatus::Invalid { .. }) => (PcState::Invalid, None),
            Ok(SnapshotStatus::MergeFailed) => (PcState::MergeFailed, None),
            Ok(SnapshotStatus::Unknown) | Err(_) => (PcState::Unknown, None),
        }
    } else if obs.linear.contains_key(&name) {
        match ctx.manifest.storage_of(pc) {
            crate::manifest::Storage::Rbd => super::rbd::status(ctx, pc),
            _ => super::clone::status(ctx, pc),
        }
    } else {
        from_cow_file(ctx.manifest, pc)
    };
    let initiators = match &pc.export {
        Export::Iscsi { target, .. } => obs
            .target(target.as_str())
            .map(|t| t.sessions.clone())
            .unwrap_or_default(),
        Export::Aoe { .. } | Export::Nbd => Vec::new(),
    };
    let mut row = row(
        ctx.manifest,
        pc,
        state,
        usage,
        pc.export.to_string(),
        initiators,
    );
    let opened = obs.dm.get(&name).and_then(|t| {
        ctx.kernel
            .loops
            .opened(&t.snapshot.cow.to_string())
            .ok()
            .flatten()
    });
    row.warn_of(opened.and_then(|o| cow_file_problem(pc, o.file, o.bytes)));
    row
}
