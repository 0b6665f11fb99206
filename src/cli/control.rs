//! validate, plan, apply, down, status and reset: thin wrappers over `control`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::print_json;
use super::userspace;
use crate::control::backend::{self, Resolved};
use crate::control::reset::Reset;
use crate::control::{self, lock, observe::Observed, plan, status, Ctx};
use crate::kernel::Kernel;
use crate::manifest::{resolve_path, Manifest};

const KERNEL_MATCHES: &str = "the kernel already matches the manifest";
pub(super) const SERVICE_MATCHES: &str = "the service already serves the manifest";

pub(super) fn load(flag: Option<&Path>) -> Result<Manifest> {
    Ok(Manifest::load(&resolve_path(flag))?)
}

/// The manifest, its warnings printed to stderr (what plan and apply show).
fn load_warning(flag: Option<&Path>) -> Result<Manifest> {
    let m = load(flag)?;
    print_warnings(&m);
    Ok(m)
}

fn print_warnings(m: &Manifest) {
    for w in m.warning_lines() {
        eprintln!("{w}");
    }
}

/// The manifest, when the userspace backend serves it; otherwise runs `f` on the kernel.
fn kernel_or<T>(
    manifest: &Manifest,
    userspace: impl FnOnce(&Manifest) -> Result<T>,
    f: impl FnOnce(&Ctx) -> Result<T>,
) -> Result<T> {
    if backend::resolve(manifest) == Resolved::Userspace {
        return userspace(manifest);
    }
    let run_dir = control::default_run_dir();
    let kernel = Kernel::real(&run_dir);
    f(&Ctx {
        manifest,
        kernel: &kernel,
        run_dir,
    })
}

pub fn validate(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let path = resolve_path(flag);
    match Manifest::load(&path) {
        Ok(m) => {
            print_warnings(&m);
            if json {
                let warnings: Vec<_> = m.warnings.iter().map(finding_json).collect();
                print_json(
                    &serde_json::json!({"valid": true, "pcs": m.pcs, "images": m.images, "warnings": warnings}),
                )?;
            } else {
                println!(
                    "{}: valid, {} PC(s) on {} image(s)",
                    path.display(),
                    m.pcs.len(),
                    m.images.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if json => {
            let errors: Vec<_> = e.errors.iter().map(finding_json).collect();
            print_json(&serde_json::json!({"valid": false, "file": e.path, "errors": errors}))?;
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn finding_json(x: &crate::manifest::ManifestError) -> serde_json::Value {
    serde_json::json!({"line": x.line, "column": x.column, "field": x.field, "message": x.message})
}

/// The plan, numbered; `nothing` is what an empty plan means on this backend.
pub(super) fn print_plan<A: std::fmt::Display>(
    actions: &[A],
    nothing: &str,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(&actions.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    }
    if actions.is_empty() {
        println!("nothing to do: {nothing}");
    }
    for (i, a) in actions.iter().enumerate() {
        println!("{:>3}. {a}", i + 1);
    }
    Ok(())
}

/// Runs a plan, printing each step as it starts (unless the output is JSON).
fn run_printing(ctx: &Ctx, actions: &[plan::Action], json: bool) -> Result<()> {
    control::apply::run(ctx, actions, &mut step_printer(actions.len(), json))
}

/// Prints "[i/n] step" as each of `n` steps starts (nothing for JSON).
fn step_printer(n: usize, json: bool) -> impl FnMut(usize, &plan::Action) + Send {
    move |i, a| {
        if !json {
            println!("[{}/{n}] {a}", i + 1);
        }
    }
}

pub fn plan(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let m = load_warning(flag)?;
    let code = plan_disks(&m, json)?;
    super::pxe::plan(&m, json)?;
    Ok(code)
}

fn plan_disks(m: &Manifest, json: bool) -> Result<ExitCode> {
    kernel_or(
        m,
        |m| userspace::plan(m, json),
        |ctx| {
            let obs = Observed::read(ctx.kernel)?;
            print_plan(&plan::plan_apply(ctx, &obs)?, KERNEL_MATCHES, json)?;
            Ok(ExitCode::SUCCESS)
        },
    )
}

pub fn apply(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let m = load_warning(flag)?;
    let code = apply_disks(&m, json)?;
    super::pxe::apply(&m, json)?;
    Ok(code)
}

fn apply_disks(m: &Manifest, json: bool) -> Result<ExitCode> {
    kernel_or(
        m,
        |m| userspace::apply(m, json),
        |ctx| {
            let _lock = lock::acquire(&ctx.run_dir, "apply")?;
            let obs = Observed::read(ctx.kernel)?;
            let actions = plan::plan_apply(ctx, &obs)?;
            if actions.is_empty() && !json {
                println!("nothing to do: {KERNEL_MATCHES}");
            }
            run_printing(ctx, &actions, json)?;
            if json {
                return print_plan(&actions, KERNEL_MATCHES, true).map(|()| ExitCode::SUCCESS);
            }
            status_once(ctx, &[], false)
        },
    )
}

pub fn down(flag: Option<&Path>, pcs: &[String], json: bool) -> Result<ExitCode> {
    let m = load(flag)?;
    let code = down_disks(&m, pcs, json)?;
    super::pxe::down(&m, pcs, json)?;
    Ok(code)
}

fn down_disks(m: &Manifest, pcs: &[String], json: bool) -> Result<ExitCode> {
    kernel_or(
        m,
        |m| userspace::down(m, pcs, json),
        |ctx| {
            let _lock = lock::acquire(&ctx.run_dir, "down")?;
            let selected = ctx.manifest.select(pcs)?;
            let obs = Observed::read(ctx.kernel)?;
            let teardown = plan::plan_down(ctx, &obs, &selected);
            control::apply::run_teardown(ctx, &teardown, &mut step_printer(teardown.len(), json))?;
            let actions = teardown.flatten();
            if json {
                print_plan(&actions, KERNEL_MATCHES, true)?;
            } else if actions.is_empty() {
                println!("nothing to do: none of these PCs is applied");
            } else {
                println!("down: COW files are kept");
            }
            Ok(ExitCode::SUCCESS)
        },
    )
}

fn status_once(ctx: &Ctx, pcs: &[String], json: bool) -> Result<ExitCode> {
    let selected = ctx.manifest.select(pcs)?;
    let obs = Observed::for_status(ctx.kernel, ctx.manifest, &selected)?;
    let rows = status::collect(ctx, &obs, &selected);
    print_status(&rows, ctx.manifest.warn_percent, json)
}

/// Prints the status table (or JSON); exits 2 when a PC needs attention, so cron and
/// monitoring can act on it.
pub(super) fn print_status(
    rows: &[status::PcStatus],
    warn_percent: f64,
    json: bool,
) -> Result<ExitCode> {
    if json {
        print_json(&rows)?;
    } else {
        print!("{}", status::render(rows, warn_percent));
    }
    Ok(if rows.iter().any(|r| r.warn) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn status(
    flag: Option<&Path>,
    pcs: &[String],
    json: bool,
    watch: Option<u64>,
) -> Result<ExitCode> {
    // The userspace backend reads the manifest again at each redraw; the kernel's once.
    let once = |ctx: Option<&Ctx>| {
        let reread;
        let (code, m) = match ctx {
            Some(ctx) => (status_once(ctx, pcs, json)?, ctx.manifest),
            None => {
                reread = load(flag)?;
                (userspace::status(&reread, pcs, json)?, &reread)
            }
        };
        if pcs.is_empty() {
            super::pxe::status(m, json);
        }
        Ok::<_, anyhow::Error>(code)
    };
    let run = |ctx: Option<&Ctx>| match watch {
        None => once(ctx),
        Some(secs) => loop {
            if !json {
                print!("\x1b[H\x1b[2J");
            }
            once(ctx)?;
            std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
        },
    };
    kernel_or(&load(flag)?, |_| run(None), |ctx| run(Some(ctx)))
}

pub fn reset(
    flag: Option<&Path>,
    pcs: &[String],
    all: bool,
    wake: bool,
    json: bool,
) -> Result<ExitCode> {
    if pcs.is_empty() && !all {
        anyhow::bail!("name the PCs to reset, or say --all");
    }
    let m = load(flag)?;
    let code = reset_disks(&m, pcs, json)?;
    if wake {
        super::pxe::wake(&m, pcs, json)?;
    }
    Ok(code)
}

fn reset_disks(m: &Manifest, pcs: &[String], json: bool) -> Result<ExitCode> {
    kernel_or(
        m,
        |m| userspace::reset(m, pcs, json),
        |ctx| {
            let _lock = lock::acquire(&ctx.run_dir, "reset")?;
            let selected = ctx.manifest.select_for_reset(pcs)?;
            if selected.is_empty() {
                println!("nothing to reset: every PC keeps its changes (keep: true)");
                return Ok(ExitCode::SUCCESS);
            }
            let obs = Observed::read(ctx.kernel)?;
            let started = std::time::Instant::now();
            let mut resets: Vec<Reset> = Vec::new();
            let mut errors: Vec<(anyhow::Error, &str)> = Vec::new();
            for (r, pc) in control::reset::reset_many(ctx, &obs, &selected)
                .into_iter()
                .zip(&selected)
            {
                match r {
                    Ok(r) => resets.push(r),
                    Err(e) => errors.push((e, &pc.name)),
                }
            }
            let took = started.elapsed();
            let code = print_resets(&resets, "sessions dropped and resumed", json)?;
            if !json {
                print_reset_summary(
                    resets.len(),
                    selected.len(),
                    took,
                    &format!("up to {} at a time", control::SIDE_BY_SIDE),
                );
            }
            match errors.len() {
                0 => Ok(code),
                1 => Err(errors.remove(0).0),
                n => anyhow::bail!(
                    "{n} of {} resets failed (the others are done): {}",
                    selected.len(),
                    errors
                        .iter()
                        .map(|(e, pc)| format!("{pc}: {e:#}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
        },
    )
}

/// The line that ends a reset of several PCs: how many, and how long the room took.
pub(super) fn print_reset_summary(done: usize, of: usize, took: std::time::Duration, how: &str) {
    if of > 1 {
        println!(
            "reset {done} of {of} PCs in {:.2} s ({how})",
            took.as_secs_f64()
        );
    }
}

/// One line per reset, or JSON; `how` says what the PC's clients saw.
pub(super) fn print_resets(resets: &[Reset], how: &str, json: bool) -> Result<ExitCode> {
    if json {
        print_json(&resets)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in resets {
        if r.live {
            println!(
                "reset {}: I/O paused {:.1} ms while exported ({how}); old COW freed after {:.1} ms",
                r.pc,
                r.seconds * 1e3,
                r.total_seconds * 1e3
            );
        } else {
            println!(
                "reset {} in {:.1} ms (not applied: COW file reset)",
                r.pc,
                r.seconds * 1e3
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn serve(flag: Option<&Path>, start_empty: bool) -> Result<ExitCode> {
    let manifest = load(flag)?;
    let kernel = backend::resolve(&manifest) == Resolved::Kernel;
    if kernel && manifest.http.is_none() && manifest.pcs.iter().all(|p| p.autoextend.is_none()) {
        anyhow::bail!(
            "{} is served by the kernel (device-mapper is here and backend is {}), where `cowctl apply` serves the disks and `cowctl serve` runs only the HTTP service and auto-extend, and the manifest asks for neither (no http section, no autoextend); set backend: userspace to serve the disks with cowctl's engine over NBD",
            manifest.path.display(),
            serde_json::to_string(&manifest.backend)?.trim_matches('"')
        );
    }
    userspace::serve(&manifest, start_empty, kernel)
}

/// `cowctl chap`: the credentials each named PC's initiator (and, for mutual CHAP, its
/// target) uses.
pub fn chap(flag: Option<&Path>, pcs: &[String], json: bool) -> Result<ExitCode> {
    let manifest = load(flag)?;
    let chap = manifest
        .iscsi
        .as_ref()
        .and_then(|i| i.chap.as_ref())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} configures no CHAP (iscsi.chap)",
                manifest.path.display()
            )
        })?;
    let master = crate::secrets::ChapMaster::read(chap)?;
    let selected = manifest.select(pcs)?;
    if let Some(pc) = selected
        .iter()
        .find(|p| !pcs.is_empty() && !matches!(p.export, crate::manifest::Export::Iscsi { .. }))
    {
        anyhow::bail!(
            "{} is not exported over iSCSI: it has no CHAP credentials",
            pc.name
        );
    }
    let rows: Vec<serde_json::Value> = selected
        .iter()
        .filter(|p| matches!(p.export, crate::manifest::Export::Iscsi { .. }))
        .map(|pc| {
            let c = master.for_pc(&pc.name);
            serde_json::json!({
                "pc": pc.name,
                "username": c.initiator.username,
                "secret": c.initiator.secret,
                "target_username": c.target.as_ref().map(|t| t.username.clone()),
                "target_secret": c.target.as_ref().map(|t| t.secret.clone()),
            })
        })
        .collect();
    if json {
        print_json(&rows)?;
    } else {
        for r in &rows {
            print!(
                "{}  username {}  secret {}",
                r["pc"].as_str().unwrap_or(""),
                r["username"].as_str().unwrap_or(""),
                r["secret"].as_str().unwrap_or("")
            );
            if let (Some(u), Some(s)) = (r["target_username"].as_str(), r["target_secret"].as_str())
            {
                print!("  target {u} {s}");
            }
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
