//! Per-PC status from the kernel (or, for a PC not applied, from its COW file); the rows and
//! their table are the room's (`room::status`).

use super::observe::Observed;
use super::{dm_name, Ctx};
use crate::cow::Usage;
use crate::dm::SnapshotStatus;
use crate::manifest::Storage;
use crate::manifest::{Export, Pc};
use crate::room::status::{cow_file_problem, from_cow_file, in_parallel, row, PcState, PcStatus};

pub fn collect(ctx: &Ctx, obs: &Observed, pcs: &[&Pc]) -> Vec<PcStatus> {
    // Mapped rbd clones' fill asks the cluster: all of them at once, before the rows.
    let m = ctx.manifest;
    let mapped: Vec<Option<&Pc>> = pcs
        .iter()
        .map(|pc| {
            (m.storage_of(pc) == Storage::Rbd && obs.linear.contains_key(&dm_name(&pc.name)))
                .then_some(*pc)
        })
        .collect();
    let fills = in_parallel(&mapped, |pc| pc.map(|pc| super::rbd::usage_of(m, pc)));
    pcs.iter()
        .zip(fills)
        .map(|(pc, fill)| one(ctx, obs, pc, fill))
        .collect()
}

fn one(ctx: &Ctx, obs: &Observed, pc: &Pc, rbd_fill: Option<(PcState, Option<Usage>)>) -> PcStatus {
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
        match (ctx.manifest.storage_of(pc), rbd_fill) {
            (Storage::Rbd, Some(fill)) => fill,
            (Storage::Rbd, None) => super::rbd::usage_of(ctx.manifest, pc),
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
