//! validate, plan, apply, down, status and reset: thin wrappers over `control`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::print_json;
use crate::control::{self, lock, observe::Observed, plan, status, Ctx};
use crate::kernel::Kernel;
use crate::manifest::{resolve_path, Manifest};

fn load(flag: Option<&Path>) -> Result<Manifest> {
    Ok(Manifest::load(&resolve_path(flag))?)
}

fn with_ctx<T>(flag: Option<&Path>, f: impl FnOnce(&Ctx) -> Result<T>) -> Result<T> {
    let manifest = load(flag)?;
    let run_dir = control::default_run_dir();
    let kernel = Kernel::real(&run_dir);
    f(&Ctx {
        manifest: &manifest,
        kernel: &kernel,
        run_dir,
    })
}

pub fn validate(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    let path = resolve_path(flag);
    match Manifest::load(&path) {
        Ok(m) => {
            if json {
                print_json(&serde_json::json!({"valid": true, "pcs": m.pcs, "images": m.images}))?;
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
            let errors: Vec<_> = e
                .errors
                .iter()
                .map(|x| serde_json::json!({"line": x.line, "column": x.column, "field": x.field, "message": x.message}))
                .collect();
            print_json(&serde_json::json!({"valid": false, "file": e.path, "errors": errors}))?;
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn print_plan(actions: &[plan::Action], json: bool) -> Result<()> {
    if json {
        return print_json(&actions.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    }
    if actions.is_empty() {
        println!("nothing to do: the kernel already matches the manifest");
    }
    for (i, a) in actions.iter().enumerate() {
        println!("{:>3}. {a}", i + 1);
    }
    Ok(())
}

/// Runs a plan, printing each step as it starts (unless the output is JSON).
fn run_printing(ctx: &Ctx, actions: &[plan::Action], json: bool) -> Result<()> {
    let n = actions.len();
    control::apply::run(ctx, actions, &mut |i, a| {
        if !json {
            println!("[{}/{n}] {a}", i + 1);
        }
    })
}

pub fn plan(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    with_ctx(flag, |ctx| {
        let obs = Observed::read(ctx.kernel)?;
        print_plan(&plan::plan_apply(ctx, &obs)?, json)?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn apply(flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    with_ctx(flag, |ctx| {
        let _lock = lock::acquire(&ctx.run_dir, "apply")?;
        let obs = Observed::read(ctx.kernel)?;
        let actions = plan::plan_apply(ctx, &obs)?;
        if actions.is_empty() && !json {
            println!("nothing to do: the kernel already matches the manifest");
        }
        run_printing(ctx, &actions, json)?;
        if json {
            return print_plan(&actions, true).map(|()| ExitCode::SUCCESS);
        }
        status_once(ctx, &[], false)
    })
}

pub fn down(flag: Option<&Path>, pcs: &[String], json: bool) -> Result<ExitCode> {
    with_ctx(flag, |ctx| {
        let _lock = lock::acquire(&ctx.run_dir, "down")?;
        let selected = ctx.manifest.select(pcs)?;
        let obs = Observed::read(ctx.kernel)?;
        let actions = plan::plan_down(ctx, &obs, &selected);
        run_printing(ctx, &actions, json)?;
        if json {
            print_plan(&actions, true)?;
        } else if actions.is_empty() {
            println!("nothing to do: none of these PCs is applied");
        } else {
            println!("down: COW files are kept");
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn status_once(ctx: &Ctx, pcs: &[String], json: bool) -> Result<ExitCode> {
    let selected = ctx.manifest.select(pcs)?;
    let obs = Observed::read_lenient(ctx.kernel)?;
    let rows = status::collect(ctx, &obs, &selected);
    if json {
        print_json(&rows)?;
    } else {
        print!("{}", status::render(&rows, ctx.manifest.warn_percent));
    }
    // Non-zero when a PC needs attention, so cron and monitoring can act on it.
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
    with_ctx(flag, |ctx| match watch {
        None => status_once(ctx, pcs, json),
        Some(secs) => loop {
            if !json {
                print!("\x1b[H\x1b[2J");
            }
            status_once(ctx, pcs, json)?;
            std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
        },
    })
}

pub fn reset(flag: Option<&Path>, pcs: &[String], all: bool, json: bool) -> Result<ExitCode> {
    with_ctx(flag, |ctx| {
        if pcs.is_empty() && !all {
            anyhow::bail!("name the PCs to reset, or say --all");
        }
        let _lock = lock::acquire(&ctx.run_dir, "reset")?;
        let selected = ctx.manifest.select(pcs)?;
        let obs = Observed::read(ctx.kernel)?;
        let mut done = Vec::new();
        for pc in selected {
            let r = control::reset::reset(ctx, &obs, pc)?;
            if !json {
                if r.live {
                    println!(
                        "reset {}: I/O paused {:.1} ms while exported (sessions dropped and resumed); old COW freed after {:.1} ms",
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
            done.push(r);
        }
        if json {
            print_json(&done)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}
