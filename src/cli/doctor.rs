//! `cowctl doctor`: the machine against the manifest (`crate::doctor`), one line per finding.
//! Exits 0 when nothing failed (warnings allowed), 1 when a check failed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::doctor::{self, clock::SystemClock, Host, IoctlTargets, Status};
use crate::kernel::net::Netlink;

pub fn run(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let m = super::control::load(flag)?;
    let clock = SystemClock { run: "/run".into() };
    let host = Host::real(
        &crate::control::default_run_dir(),
        &Netlink,
        &IoctlTargets,
        &clock,
    );
    let checks = doctor::run(&m, &host);
    if json {
        super::print_json(&checks)?;
    } else {
        for c in &checks {
            outln!("{c}");
        }
    }
    Ok(match doctor::worst(&checks) {
        Status::Fail => ExitCode::FAILURE,
        Status::Ok | Status::Warn => ExitCode::SUCCESS,
    })
}
