//! `cowctl image prune` of an image whose versions are in a Ceph pool.

use std::process::ExitCode;

use anyhow::Result;

use super::image_text::{prune_lines, removal_line};
use super::print_json;
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
    }
    prune_lines(family, &plan.keep, json);
    for v in &plan.remove {
        if !json {
            let space = crate::image::space::Space {
                allocated: store.allocated(&v.name),
                shared: 0,
            };
            outln!("{}", removal_line(family, v, space, (dry_run, "stored")));
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
