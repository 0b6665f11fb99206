//! plan, apply, status, reset, down and serve on the userspace backend: the same output as
//! on the kernel backend, obtained from `cowctl serve` through its control socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::control::{print_plan, print_resets, print_status, SERVICE_MATCHES};
use super::print_json;
use crate::control::{self as ctl, lock, plan as kplan, status};
use crate::manifest::Manifest;
use crate::service::control::{call, Request, Response};
use crate::service::{self, plan::plan as uplan};

pub(super) fn run_dir() -> PathBuf {
    ctl::default_run_dir()
}

fn manifest_path(m: &Manifest) -> Result<PathBuf> {
    std::fs::canonicalize(&m.path).with_context(|| format!("cannot resolve {}", m.path.display()))
}

pub fn plan(m: &Manifest, json: bool) -> Result<ExitCode> {
    let request = Request::Plan {
        manifest: manifest_path(m)?,
    };
    let steps = match call(&run_dir(), &request)? {
        Some(r) => r.steps,
        None => {
            kplan::refuse_if_any(m, kplan::file_problems(m))?;
            let mut steps = vec![format!(
                "start cowctl serve (NBD on {} and {})",
                m.nbd.listen,
                service::nbd_socket(m, &run_dir()).display()
            )];
            steps.extend(uplan(m, &BTreeMap::new()).iter().map(|s| s.to_string()));
            steps
        }
    };
    print_plan(&steps, SERVICE_MATCHES, json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn apply(m: &Manifest, json: bool) -> Result<ExitCode> {
    let dir = run_dir();
    let _lock = lock::acquire(&dir, "apply")?;
    let path = manifest_path(m)?;
    if call(&dir, &Request::Status)?.is_none() {
        kplan::refuse_if_any(m, kplan::file_problems(m))?;
        start_service(&path, &dir)?;
        if !json {
            println!(
                "started cowctl serve: NBD on {} and {} (log: {})",
                m.nbd.listen,
                service::nbd_socket(m, &dir).display(),
                dir.join("serve.log").display()
            );
        }
    }
    let r = expect_service(call(&dir, &Request::Apply { manifest: path })?)?;
    if json {
        return print_json(&r.steps).map(|()| ExitCode::SUCCESS);
    }
    if r.steps.is_empty() {
        println!("nothing to do: {SERVICE_MATCHES}");
    }
    let n = r.steps.len();
    for (i, s) in r.steps.iter().enumerate() {
        println!("[{}/{n}] {s}", i + 1);
    }
    print_status(&r.status, m.warn_percent, false)
}

pub fn status(m: &Manifest, pcs: &[String], json: bool) -> Result<ExitCode> {
    let wanted: Vec<String> = m.select(pcs)?.iter().map(|p| p.name.clone()).collect();
    let rows = match call(&run_dir(), &Request::Status)? {
        Some(r) => r.status,
        None => m
            .pcs
            .iter()
            .map(|pc| {
                let (state, usage) = status::from_cow_file(pc);
                let export = service::export_uri(m.nbd.listen, &pc.name);
                status::row(m, pc, state, usage, export, Vec::new())
            })
            .collect(),
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| wanted.contains(&r.name))
        .collect();
    print_status(&rows, m.warn_percent, json)
}

pub fn reset(m: &Manifest, pcs: &[String], json: bool) -> Result<ExitCode> {
    let selected = m.select_for_reset(pcs)?;
    if selected.is_empty() {
        println!("nothing to reset: every PC keeps its changes (keep: true)");
        return Ok(ExitCode::SUCCESS);
    }
    let request = Request::Reset {
        pcs: selected.iter().map(|p| p.name.clone()).collect(),
    };
    let started = std::time::Instant::now();
    let resets: Vec<_> = match call(&run_dir(), &request)? {
        Some(r) => r.resets,
        None => selected
            .iter()
            .map(|pc| {
                let due = crate::image::due(m, pc)?;
                crate::control::reset::reset_file(pc, due.as_ref().map(|(_, g)| g))
            })
            .collect::<Result<_>>()?,
    };
    let took = started.elapsed();
    let code = print_resets(
        &resets,
        "iSCSI sessions and NBD connections closed; clients reconnect to the golden image",
        json,
    )?;
    if !json {
        super::control::print_reset_summary(resets.len(), selected.len(), took, "one at a time");
    }
    Ok(code)
}

pub fn down(m: &Manifest, pcs: &[String], json: bool) -> Result<ExitCode> {
    let names = if pcs.is_empty() {
        Vec::new()
    } else {
        m.select(pcs)?.iter().map(|p| p.name.clone()).collect()
    };
    let steps = call(&run_dir(), &Request::Down { pcs: names })?
        .map(|r| r.steps)
        .unwrap_or_default();
    if json {
        return print_json(&steps).map(|()| ExitCode::SUCCESS);
    }
    let n = steps.len();
    for (i, s) in steps.iter().enumerate() {
        println!("[{}/{n}] {s}", i + 1);
    }
    if steps.is_empty() {
        println!("nothing to do: none of these PCs is served");
    } else {
        println!("down: COW files are kept");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cowctl serve`: the NBD service with HTTP and auto-extend, or on the kernel backend
/// (`kernel`) HTTP and auto-extend over the kernel's snapshots.
pub fn serve(m: &Manifest, start_empty: bool, kernel: bool) -> Result<ExitCode> {
    super::logging::init()?;
    service::run::run(&service::run::Options {
        manifest: manifest_path(m)?,
        run_dir: run_dir(),
        start_empty,
        kernel,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn expect_service(r: Option<Response>) -> Result<Response> {
    r.ok_or_else(|| anyhow::anyhow!("cowctl serve stopped answering on its control socket"))
}

/// Starts `cowctl serve` in its own session, logging to `serve.log` in the run directory,
/// and waits until its control socket answers. The service inherits this environment:
/// `COWCTL_LOG` and `COWCTL_LOG_FORMAT` shape its log as they would a `cowctl serve` run by hand.
fn start_service(manifest: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log_path = dir.join("serve.log");
    let log = crate::rundir::open(dir, "serve.log", true)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--start-empty", "-f"])
        .arg(manifest)
        .env("COWCTL_RUN_DIR", dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it detaches
    // the service from the terminal so it outlives the command that started it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("cannot start cowctl serve")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if call(dir, &Request::Status).is_ok_and(|r| r.is_some()) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text.lines().last().unwrap_or("").trim();
            bail!("cowctl serve exited ({status}) before it answered: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "cowctl serve did not answer within 15 s (see {})",
        log_path.display()
    )
}
