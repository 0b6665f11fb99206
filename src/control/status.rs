//! Per-PC status from the kernel (or, for a PC not applied, from its COW file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::observe::Observed;
use super::{dm_name, Ctx};
use crate::cow::Usage;
use crate::dm::SnapshotStatus;
use crate::manifest::{Export, Manifest, Pc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcState {
    Active,
    Overflow,
    Invalid,
    MergeFailed,
    NotApplied,
    Unknown,
}

impl PcState {
    pub fn as_str(self) -> &'static str {
        match self {
            PcState::Active => "active",
            PcState::Overflow => "overflow",
            PcState::Invalid => "invalid",
            PcState::MergeFailed => "merge failed",
            PcState::NotApplied => "not applied",
            PcState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PcStatus {
    pub name: String,
    pub image: String,
    pub image_version: Option<String>,
    /// The iSCSI target IQN, eSHELF.SLOT for AoE, or the NBD URI.
    pub export: String,
    pub state: PcState,
    /// The kernel's `sectors_allocated`: header, metadata and data chunks in use.
    pub used_sectors: Option<u64>,
    pub total_sectors: Option<u64>,
    pub metadata_sectors: Option<u64>,
    /// `used_sectors / total_sectors`: at 100 % the snapshot overflows.
    pub used_percent: Option<f64>,
    pub warn: bool,
    /// iSCSI initiators logged in, or NBD clients connected.
    pub initiators: Vec<String>,
    pub cow: PathBuf,
}

pub fn collect(ctx: &Ctx, obs: &Observed, pcs: &[&Pc]) -> Vec<PcStatus> {
    pcs.iter().map(|pc| one(ctx, obs, pc)).collect()
}

fn one(ctx: &Ctx, obs: &Observed, pc: &Pc) -> PcStatus {
    let name = dm_name(&pc.name);
    let (state, usage) = if obs.dm.contains_key(&name) {
        match ctx.kernel.dm.status(&name).map(|s| s.status) {
            Ok(SnapshotStatus::Usage(u)) => (PcState::Active, Some(u)),
            Ok(SnapshotStatus::Overflow) => (PcState::Overflow, None),
            Ok(SnapshotStatus::Invalid { .. }) => (PcState::Invalid, None),
            Ok(SnapshotStatus::MergeFailed) => (PcState::MergeFailed, None),
            Ok(SnapshotStatus::Unknown) | Err(_) => (PcState::Unknown, None),
        }
    } else {
        from_cow_file(pc)
    };
    let initiators = match &pc.export {
        Export::Iscsi { target, .. } => obs
            .target(target.as_str())
            .map(|t| t.sessions.clone())
            .unwrap_or_default(),
        Export::Aoe { .. } | Export::Nbd => Vec::new(),
    };
    row(
        ctx.manifest,
        pc,
        state,
        usage,
        pc.export.to_string(),
        initiators,
    )
}

/// State and usage of a PC that is not being served, read from its COW file.
pub fn from_cow_file(pc: &Pc) -> (PcState, Option<Usage>) {
    match crate::cowfile::inspect(&pc.cow, Some(pc.chunk)) {
        Ok(i) if !i.valid => (PcState::Invalid, None),
        Ok(i) => (
            PcState::NotApplied,
            Some(Usage {
                sectors_allocated: i.sectors_allocated,
                total_sectors: i.total_sectors,
                metadata_sectors: i.metadata_sectors,
            }),
        ),
        Err(_) => (PcState::NotApplied, None),
    }
}

/// One status row: fill and warning worked out the same way for every backend.
pub fn row(
    manifest: &Manifest,
    pc: &Pc,
    state: PcState,
    usage: Option<Usage>,
    export: String,
    initiators: Vec<String>,
) -> PcStatus {
    let image = &manifest.images[&pc.image];
    // An overflowed snapshot is full by definition.
    let usage = usage.or_else(|| {
        (state == PcState::Overflow).then(|| {
            let total = std::fs::metadata(&pc.cow)
                .map(|m| m.len() / 512)
                .unwrap_or(0);
            Usage {
                sectors_allocated: total,
                total_sectors: total,
                metadata_sectors: 0,
            }
        })
    });
    let used_percent = usage.map(|u| u.allocated_percent());
    let warn = matches!(
        state,
        PcState::Overflow | PcState::Invalid | PcState::MergeFailed
    ) || used_percent.is_some_and(|p| p >= manifest.warn_percent);
    PcStatus {
        name: pc.name.clone(),
        image: image.name.clone(),
        image_version: image.version.clone(),
        export,
        state,
        used_sectors: usage.map(|u| u.sectors_allocated),
        total_sectors: usage.map(|u| u.total_sectors),
        metadata_sectors: usage.map(|u| u.metadata_sectors),
        used_percent,
        warn,
        initiators,
        cow: pc.cow.clone(),
    }
}

/// The status table and a warning line per PC over the threshold.
pub fn render(rows: &[PcStatus], warn_percent: f64) -> String {
    use crate::units::human;
    let mut table = vec![[
        "PC",
        "IMAGE",
        "EXPORT",
        "STATE",
        "USED",
        "FILL",
        "INITIATORS",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let used = match (r.used_sectors, r.total_sectors) {
            (Some(u), Some(t)) => format!("{} / {}", human(u * 512), human(t * 512)),
            _ => "-".into(),
        };
        let fill = r.used_percent.map_or("-".into(), |p| format!("{p:.1}%"));
        let initiators = if r.initiators.is_empty() {
            "-".into()
        } else {
            r.initiators.join(",")
        };
        let image = match &r.image_version {
            Some(v) => format!("{}@{v}", r.image),
            None => r.image.clone(),
        };
        table.push(vec![
            r.name.clone(),
            image,
            r.export.clone(),
            r.state.as_str().into(),
            used,
            fill,
            initiators,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows.iter().filter(|r| r.warn) {
        let why = match r.state {
            PcState::Overflow => "has overflowed: its writes fail; reset it".to_string(),
            PcState::Invalid => "is invalid: the PC cannot use its disk; reset it".to_string(),
            PcState::MergeFailed => "failed a merge".to_string(),
            _ => format!("is {:.1}% full (warning at {warn_percent}%): reset it or grow its COW before it fills", r.used_percent.unwrap_or(0.0)),
        };
        out.push_str(&format!("WARNING: {} {why}\n", r.name));
    }
    out
}
