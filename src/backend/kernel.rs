//! The kernel backend: loop devices, dm-snapshot and LIO/vblade exports, planned from
//! what the kernel shows (`control::observe`) and applied by `control::apply`. The kernel
//! is the record: nothing is kept between commands but the lock while one runs (and reflink
//! clones' fill counts, a cache checked against the files: `reflink::fillcache`).

use std::path::PathBuf;

use super::{Applied, Backend, Error, Listener, Progress, Resets, Result, Words};
use crate::control::status;
use crate::control::{self, observe::Observed, plan, reset, Ctx};
use crate::image::{Committed, VersionName};
use crate::kernel::Kernel;
use crate::manifest::{Manifest, Pc};
use crate::room::status::PcStatus;
use crate::room::{lock, step::Step};

pub struct KernelBackend {
    kernel: Kernel,
    run_dir: PathBuf,
}

impl KernelBackend {
    /// The running kernel, with its run directory (/run/cowctl unless $COWCTL_RUN_DIR).
    pub fn real() -> KernelBackend {
        let run_dir = control::default_run_dir();
        KernelBackend {
            kernel: Kernel::real(&run_dir),
            run_dir,
        }
    }

    fn ctx<'a>(&'a self, manifest: &'a Manifest) -> Ctx<'a> {
        Ctx {
            manifest,
            kernel: &self.kernel,
            run_dir: self.run_dir.clone(),
        }
    }
}

/// Tells `progress` of each action as it starts.
fn telling<'a, 'b>(
    of: usize,
    progress: &'a mut Listener<'b>,
) -> impl FnMut(usize, &Step) + Send + use<'a, 'b> {
    move |index, a| progress(Progress::Step { index, of, step: a })
}

impl Backend for KernelBackend {
    fn words(&self) -> Words {
        Words {
            matches: "the kernel already matches the manifest",
            none_up: "none of these PCs is applied",
            clients_saw: "sessions dropped and resumed",
        }
    }

    fn reset_pace(&self) -> String {
        format!("up to {} at a time", control::SIDE_BY_SIDE)
    }

    fn plan(&self, m: &Manifest) -> Result<Vec<Step>> {
        let ctx = self.ctx(m);
        let obs = Observed::read(ctx.kernel)?;
        Ok(plan::plan_apply(&ctx, &obs)?)
    }

    fn apply(&self, m: &Manifest, progress: &mut Listener<'_>) -> Result<Applied> {
        let ctx = self.ctx(m);
        let _lock = lock::acquire(&ctx.run_dir, "apply")?;
        let obs = Observed::read(ctx.kernel)?;
        let actions = plan::plan_apply(&ctx, &obs)?;
        control::apply::run(&ctx, &actions, &mut telling(actions.len(), progress))?;
        Ok(Applied {
            steps: actions,
            status: None,
        })
    }

    fn down(&self, m: &Manifest, pcs: &[String], progress: &mut Listener<'_>) -> Result<Vec<Step>> {
        let ctx = self.ctx(m);
        let _lock = lock::acquire(&ctx.run_dir, "down")?;
        let selected = m.select(pcs)?;
        let obs = Observed::read(ctx.kernel)?;
        let teardown = plan::plan_down(&ctx, &obs, &selected);
        control::apply::run_teardown(&ctx, &teardown, &mut telling(teardown.len(), progress))?;
        Ok(teardown.flatten())
    }

    fn status(&self, m: &Manifest, pcs: &[String]) -> Result<Vec<PcStatus>> {
        let ctx = self.ctx(m);
        let selected = m.select(pcs)?;
        let obs = Observed::for_status(ctx.kernel, m, &selected)?;
        Ok(status::collect(&ctx, &obs, &selected))
    }

    fn reset(&self, m: &Manifest, pcs: &[&Pc]) -> Result<Resets> {
        let ctx = self.ctx(m);
        let _lock = lock::acquire(&ctx.run_dir, "reset")?;
        let obs = Observed::read(ctx.kernel)?;
        let mut out = Resets::default();
        for (r, pc) in reset::reset_many(&ctx, &obs, pcs).into_iter().zip(pcs) {
            match r {
                Ok(r) => out.done.push(r),
                Err(e) => out.failed.push((pc.name.clone(), e.into())),
            }
        }
        Ok(out)
    }

    fn commit(
        &self,
        m: &Manifest,
        pc: &Pc,
        version: Option<VersionName>,
        note: &str,
        pause: bool,
    ) -> Result<Committed> {
        let ctx = self.ctx(m);
        let _lock = lock::acquire(&ctx.run_dir, "image commit")?;
        Ok(control::commit::commit(&ctx, pc, version, note, pause)?)
    }

    /// On the kernel `cowctl apply` serves the disks; `serve` runs only the HTTP service
    /// and auto-extend, so a manifest that asks for neither is refused.
    fn serve(&self, m: &Manifest, start_empty: bool) -> Result<()> {
        if m.http.is_none() && m.pcs.iter().all(|p| p.autoextend.is_none()) {
            // A unit variant always serializes: its name as the manifest spells it.
            let backend = serde_json::to_string(&m.backend).unwrap_or_default();
            return Err(Error::NothingToServe {
                manifest: m.path.clone(),
                backend: backend.trim_matches('"').to_string(),
            });
        }
        super::userspace::serve(m, start_empty, true)
    }
}
