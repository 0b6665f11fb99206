//! `cowctl image prune` of an image whose versions are in a Ceph pool.

use std::process::ExitCode;

use anyhow::Result;

use super::image_text::{on_disk, utc};
use super::print_json;
use crate::base::units::human;
use crate::image::RbdStore;
use crate::manifest::Manifest;

pub(super) fn prune(
    m: &Manifest,
    family: &str,
    store: &RbdStore,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let plan = store.prune_plan(m, family)?;
    if json {
        print_json(&plan)?;
    } else {
        for (v, why) in &plan.keep {
            outln!("keep {family}@{v}: {why}");
        }
    }
    for v in &plan.remove {
        if !json {
            let space = crate::image::space::Space {
                allocated: store.allocated(&v.name),
                shared: 0,
            };
            outln!(
                "{} {family}@{} ({}, {} stored, made {}{})",
                if dry_run { "would remove" } else { "remove" },
                v.name,
                human(v.size),
                on_disk(space),
                utc(v.created),
                if v.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.note)
                }
            );
        }
        if !dry_run {
            store.remove(&v.name)?;
        }
    }
    for l in &plan.leftovers {
        if !json {
            outln!("left alone: {l} (an import that died half way, or one under way on another machine: `rbd rm` it when none is)");
        }
    }
    if !json && plan.remove.is_empty() {
        outln!("nothing to prune in {family}");
    }
    Ok(ExitCode::SUCCESS)
}
