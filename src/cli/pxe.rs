//! The PXE bootstrap and Wake-on-LAN at the command line: what apply, down and status add
//! for the manifest's `pxe` section, and `cowctl wake`.

use std::process::ExitCode;

use anyhow::Result;

use super::print_json;
use crate::control;
use crate::kernel::net::Netlink;
use crate::manifest::Manifest;
use crate::pxe::{self, Step};

/// After apply: start dnsmasq, or restart it with the manifest's new configuration.
pub fn apply(m: &Manifest, json: bool) -> Result<()> {
    let Some((plan, pid)) = pxe::apply(m, &control::default_run_dir(), &Netlink)? else {
        return Ok(());
    };
    if !json {
        let what = plan.what;
        match plan.step {
            Step::Keep(_) => outln!("{what}: dnsmasq {pid} already serves it"),
            Step::Start => outln!("{what}: started dnsmasq {pid}"),
            Step::Restart(_) => {
                outln!("{what}: restarted dnsmasq as {pid} (the manifest changed)")
            }
        }
    }
    Ok(())
}

/// After plan: what apply would do about dnsmasq.
pub fn plan(m: &Manifest, json: bool) -> Result<()> {
    let Some(plan) = pxe::plan(m, &control::default_run_dir(), &Netlink)? else {
        return Ok(());
    };
    if !json {
        match plan.step {
            Step::Keep(pid) => outln!("PXE: dnsmasq {pid} already serves the manifest"),
            Step::Start => outln!("PXE: start dnsmasq: {}", plan.what),
            Step::Restart(pid) => outln!(
                "PXE: restart dnsmasq {pid} with the manifest's new configuration: {}",
                plan.what
            ),
        }
    }
    Ok(())
}

/// After a down of the whole room: PCs can no longer boot, so dnsmasq goes too.
pub fn down(m: &Manifest, pcs: &[String], json: bool) -> Result<()> {
    if m.pxe.is_none() || !pcs.is_empty() {
        return Ok(());
    }
    if pxe::stop(&control::default_run_dir())? && !json {
        outln!("stopped the PXE service (dnsmasq)");
    }
    Ok(())
}

/// The line `status` ends with.
pub fn status(m: &Manifest, json: bool) {
    if let Some(line) = pxe::status_line(m, &control::default_run_dir()).filter(|_| !json) {
        outln!("{line}");
    }
}

/// Wakes the named PCs (or all): `cowctl wake`, and `reset --wake` once its resets are done.
pub fn wake(m: &Manifest, pcs: &[String], json: bool) -> Result<ExitCode> {
    let selected = m.select(pcs)?;
    let woken = pxe::wake::wake(m, &selected)?;
    if json {
        print_json(&woken)?;
    } else {
        for w in &woken {
            outln!("sent Wake-on-LAN to {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
