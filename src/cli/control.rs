//! validate, plan, apply, down, status, reset and serve: load the manifest, pick the
//! backend once (`backend::pick`), call it, print.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::print_json;
use crate::backend::{self, Progress, Resets, Step};
use crate::manifest::{resolve_path, Manifest};
use crate::room::reset::Reset;
use crate::room::status;

pub(super) fn load(flag: Option<&Path>) -> Result<Manifest> {
    Ok(crate::image::load_manifest(&resolve_path(flag))?)
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

pub fn validate(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let path = resolve_path(flag);
    match crate::image::load_manifest(&path) {
        Ok(m) => {
            print_warnings(&m);
            if json {
                let warnings: Vec<_> = m.warnings.iter().map(finding_json).collect();
                print_json(
                    &serde_json::json!({"valid": true, "pcs": m.pcs, "images": m.images, "warnings": warnings}),
                )?;
            } else {
                outln!(
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
/// Each step as the line it reads as; JSON lists those lines too.
fn lines(steps: &[Step]) -> Vec<String> {
    steps.iter().map(Step::to_string).collect()
}

fn print_plan(steps: &[Step], nothing: &str, json: bool) -> Result<()> {
    if json {
        return print_json(&lines(steps));
    }
    if steps.is_empty() {
        outln!("nothing to do: {nothing}");
    }
    for (i, a) in steps.iter().enumerate() {
        outln!("{:>3}. {a}", i + 1);
    }
    Ok(())
}

/// Prints notes, and "[i/n] step" as each step is told (nothing for JSON).
fn step_printer(json: bool) -> impl FnMut(Progress<'_>) + Send {
    move |p| match p {
        _ if json => {}
        Progress::Note(note) => outln!("{note}"),
        Progress::Step { index, of, step } => outln!("[{}/{of}] {step}", index + 1),
    }
}

pub fn plan(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let m = load_warning(flag)?;
    let b = backend::pick(&m);
    print_plan(&b.plan(&m)?, b.words().matches, json)?;
    super::pxe::plan(&m, json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn apply(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let m = load_warning(flag)?;
    let b = backend::pick(&m);
    let applied = b.apply(&m, &mut step_printer(json))?;
    let code = if json {
        print_json(&lines(&applied.steps))?;
        ExitCode::SUCCESS
    } else {
        if applied.steps.is_empty() {
            outln!("nothing to do: {}", b.words().matches);
        }
        let rows = match applied.status {
            Some(rows) => rows,
            None => b.status(&m, &[])?,
        };
        print_status(&rows, m.warn_percent, false)?
    };
    super::pxe::apply(&m, json)?;
    Ok(code)
}

pub fn down(flag: Option<&Path>, pcs: &[String], json: bool) -> Result<ExitCode> {
    let m = load(flag)?;
    let b = backend::pick(&m);
    let steps = b.down(&m, pcs, &mut step_printer(json))?;
    if json {
        print_json(&lines(&steps))?;
    } else if steps.is_empty() {
        outln!("nothing to do: {}", b.words().none_up);
    } else {
        outln!("down: COW files are kept");
    }
    super::pxe::down(&m, pcs, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the status table (or JSON); exits 2 when a PC needs attention, so cron and
/// monitoring can act on it.
fn print_status(rows: &[status::PcStatus], warn_percent: f64, json: bool) -> Result<ExitCode> {
    if json {
        print_json(&rows)?;
    } else {
        out!("{}", status::render(rows, warn_percent));
    }
    Ok(if rows.iter().any(|r| r.warn) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The status once, or (`watch`) every so many seconds with the manifest read again at
/// each redraw.
pub fn status(
    flag: Option<&Path>,
    pcs: &[String],
    json: bool,
    watch: Option<u64>,
) -> Result<ExitCode> {
    let mut m = load(flag)?;
    let b = backend::pick(&m);
    let once = |m: &Manifest| {
        let code = print_status(&b.status(m, pcs)?, m.warn_percent, json)?;
        if pcs.is_empty() {
            super::pxe::status(m, json);
        }
        Ok::<_, anyhow::Error>(code)
    };
    let Some(secs) = watch else {
        return once(&m);
    };
    loop {
        if !json {
            out!("\x1b[H\x1b[2J");
        }
        let code = once(&m)?;
        if super::out::gone() {
            return Ok(code);
        }
        std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
        m = load(flag)?;
    }
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
    let selected = m.select_for_reset(pcs)?;
    if selected.is_empty() {
        outln!("nothing to reset: every PC keeps its changes (keep: true)");
        return Ok(ExitCode::SUCCESS);
    }
    let b = backend::pick(m);
    let started = std::time::Instant::now();
    let Resets { done, mut failed } = b.reset(m, &selected)?;
    let took = started.elapsed();
    let code = print_resets(&done, b.words().clients_saw, json)?;
    if !json && selected.len() > 1 {
        outln!(
            "reset {} of {} PCs in {:.2} s ({})",
            done.len(),
            selected.len(),
            took.as_secs_f64(),
            b.reset_pace()
        );
    }
    match failed.len() {
        0 => Ok(code),
        1 => Err(failed.remove(0).1.into()),
        n => anyhow::bail!(
            "{n} of {} resets failed (the others are done): {}",
            selected.len(),
            failed
                .iter()
                .map(|(pc, e)| format!("{pc}: {}", crate::base::logtext::chain(e)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// One line per reset, or JSON; `how` says what the PC's clients saw.
fn print_resets(resets: &[Reset], how: &str, json: bool) -> Result<ExitCode> {
    if json {
        print_json(&resets)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in resets {
        if r.live {
            outln!(
                "reset {}: I/O paused {:.1} ms while exported ({how}); old COW freed after {:.1} ms",
                r.pc,
                r.seconds * 1e3,
                r.total_seconds * 1e3
            );
        } else {
            outln!(
                "reset {} in {:.1} ms (not applied: COW file reset)",
                r.pc,
                r.seconds * 1e3
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn serve(flag: Option<&Path>, start_empty: bool) -> Result<ExitCode> {
    let m = load(flag)?;
    super::logging::init()?;
    backend::pick(&m).serve(&m, start_empty)?;
    Ok(ExitCode::SUCCESS)
}

/// `cowctl serve --release-portals`: this gateway's floating portal addresses leave its
/// interface.
/// The manifest is read but not resolved: resolving versions asks the cluster, which may
/// be what is gone.
pub fn release_portals(flag: Option<&Path>) -> Result<ExitCode> {
    let mut m = Manifest::load(&resolve_path(flag))?;
    if let Some(here) = m.gateway_name() {
        m = m.as_gateway(&here).map_err(|e| anyhow::anyhow!(e))?;
    }
    let (removed, failed) = crate::service::floating::release_addresses(&m);
    for ip in removed {
        outln!("took {ip} off this gateway's interface");
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
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
    let master = crate::manifest::secrets::ChapMaster::read(chap)?;
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
            out!(
                "{}  username {}  secret {}",
                r["pc"].as_str().unwrap_or(""),
                r["username"].as_str().unwrap_or(""),
                r["secret"].as_str().unwrap_or("")
            );
            if let (Some(u), Some(s)) = (r["target_username"].as_str(), r["target_secret"].as_str())
            {
                out!("  target {u} {s}");
            }
            outln!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
