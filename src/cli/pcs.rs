//! `cowctl pcs`: PCs added by booting them. `discovered` lists the MACs dnsmasq's log has
//! requests from that the manifest does not list; `adopt` appends them to the manifest.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::print_json;
use crate::control;
use crate::manifest::{adopt, resolve_path, Manifest};
use crate::pxe::seen;
use crate::room::lock;

#[derive(Debug, Subcommand)]
pub enum PcsCommand {
    /// PCs that asked to PXE-boot but are not in the manifest (so were not answered).
    ///
    /// Read from dnsmasq's DHCP log in the run directory: MAC, first and last request,
    /// interface and firmware. A MAC drops out of the list once the manifest lists it.
    Discovered,
    /// Append PCs to the manifest by MAC, keeping its comments and layout.
    ///
    /// Each gets the next free name (continuing the manifest's numbering, or from
    /// --name-from) and, in a DHCP-range room whose PCs have addresses, the range's next
    /// free address. Then `cowctl apply` answers them.
    Adopt {
        /// MAC addresses, as `cowctl pcs discovered` lists them.
        #[arg(required = true, value_name = "MAC")]
        macs: Vec<String>,
        /// The names to give, in order, skipping names already taken: a brace range.
        #[arg(long, value_name = "PATTERN")]
        name_from: Option<String>,
        /// Show the entries that would be added; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(c: PcsCommand, flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    match c {
        PcsCommand::Discovered => discovered(flag, json),
        PcsCommand::Adopt {
            macs,
            name_from,
            dry_run,
        } => adopt(flag, &macs, name_from.as_deref(), dry_run, json),
    }
}

fn discovered(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let m = Manifest::load(&resolve_path(flag))?;
    let log = seen::log_path(&control::default_run_dir());
    let strangers: Vec<seen::Seen> = seen::read(&log)?
        .into_iter()
        .filter(|s| !m.pcs.iter().any(|p| p.mac == Some(s.mac)))
        .collect();
    if json {
        print_json(&strangers)?;
        return Ok(ExitCode::SUCCESS);
    }
    if strangers.is_empty() {
        outln!(
            "no PC outside the manifest has asked to PXE-boot ({})",
            log.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let dash = || "-".to_string();
    outln!(
        "{:<17}  {:<15}  {:<15}  {:<10}  FIRMWARE",
        "MAC",
        "FIRST SEEN",
        "LAST SEEN",
        "INTERFACE"
    );
    for s in &strangers {
        outln!(
            "{:<17}  {:<15}  {:<15}  {:<10}  {}",
            s.mac,
            s.first_seen.clone().unwrap_or_else(dash),
            s.last_seen.clone().unwrap_or_else(dash),
            s.interface,
            s.firmware.map(|f| f.to_string()).unwrap_or_else(dash)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn adopt(
    flag: Option<&Path>,
    macs: &[String],
    name_from: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let path = resolve_path(flag);
    let _lock = if dry_run {
        None
    } else {
        Some(lock::acquire(&control::default_run_dir(), "pcs adopt")?)
    };
    let a = adopt::adopt(&path, macs, name_from, dry_run)?;
    if json {
        print_json(&a)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if dry_run { "would add" } else { "added" };
    outln!("{verb} to {}:", path.display());
    for pc in &a.added {
        outln!("+  - name: {}", pc.name);
        outln!("+    mac: {}", pc.mac);
        if let Some(ip) = pc.ip {
            outln!("+    ip: {ip}");
        }
    }
    for note in &a.notes {
        outln!("note: {note}");
    }
    if !dry_run {
        outln!("run cowctl apply to serve and answer them");
    }
    Ok(ExitCode::SUCCESS)
}
