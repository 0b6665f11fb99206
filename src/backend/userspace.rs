//! The userspace backend: cowctl's engine inside `cowctl serve`, asked through its control
//! socket (`service::control`). `apply` starts the service when none is running; with no
//! service, `plan`, `status`, `reset` and `commit` work on the COW files directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Applied, Backend, Error, Listener, Progress, Resets, Result, Step, Words};
use crate::control::{self, plan::file_problems, plan::refuse_if_any, reset};
use crate::image::{Committed, VersionName};
use crate::kernel::loopdev::SysLoops;
use crate::manifest::{Manifest, Pc};
use crate::room::status::{self, PcStatus};
use crate::service::control::{call, Request, Response};
use crate::service::{self, plan::plan as service_plan};

/// A client of `cowctl serve` in the run directory (/run/cowctl unless $COWCTL_RUN_DIR).
pub struct ServiceClient {
    run_dir: PathBuf,
}

impl ServiceClient {
    pub fn new() -> ServiceClient {
        ServiceClient {
            run_dir: control::default_run_dir(),
        }
    }

    fn ask(&self, request: &Request) -> Result<Option<Response>> {
        Ok(call(&self.run_dir, request)?)
    }
}

impl Default for ServiceClient {
    fn default() -> Self {
        ServiceClient::new()
    }
}

fn manifest_path(m: &Manifest) -> Result<PathBuf> {
    std::fs::canonicalize(&m.path).map_err(|source| Error::Resolve {
        path: m.path.clone(),
        source,
    })
}

fn expect_service(r: Option<Response>) -> Result<Response> {
    r.ok_or(Error::ServiceGone)
}

/// Tells `progress` of steps the service has already taken.
fn tell_done(steps: &[Step], progress: &mut Listener<'_>) {
    for (index, step) in steps.iter().enumerate() {
        progress(Progress::Step {
            index,
            of: steps.len(),
            step,
        });
    }
}

impl Backend for ServiceClient {
    fn words(&self) -> Words {
        Words {
            matches: "the service already serves the manifest",
            none_up: "none of these PCs is served",
            clients_saw:
                "iSCSI sessions and NBD connections closed; clients reconnect to the golden image",
        }
    }

    fn reset_pace(&self) -> String {
        "one at a time".into()
    }

    fn plan(&self, m: &Manifest) -> Result<Vec<Step>> {
        let request = Request::Plan {
            manifest: manifest_path(m)?,
        };
        Ok(match self.ask(&request)? {
            Some(r) => r.steps,
            None => {
                refuse_if_any(m, file_problems(m))?;
                let mut steps = vec![Step::StartService {
                    nbd: m.nbd.listen.to_string(),
                    socket: service::nbd_socket(m, &self.run_dir),
                }];
                steps.extend(service_plan(m, &BTreeMap::new())?);
                steps
            }
        })
    }

    fn apply(&self, m: &Manifest, progress: &mut Listener<'_>) -> Result<Applied> {
        let dir = &self.run_dir;
        let _lock = crate::room::lock::acquire(dir, "apply")?;
        let path = manifest_path(m)?;
        if self.ask(&Request::Status)?.is_none() {
            refuse_if_any(m, file_problems(m))?;
            start_service(&path, dir)?;
            progress(Progress::Note(&format!(
                "started cowctl serve: NBD on {} and {} (log: {})",
                m.nbd.listen,
                service::nbd_socket(m, dir).display(),
                dir.join("serve.log").display()
            )));
        }
        let r = expect_service(self.ask(&Request::Apply { manifest: path })?)?;
        tell_done(&r.steps, progress);
        Ok(Applied {
            steps: r.steps,
            status: Some(r.status),
        })
    }

    fn down(&self, m: &Manifest, pcs: &[String], progress: &mut Listener<'_>) -> Result<Vec<Step>> {
        let names = if pcs.is_empty() {
            Vec::new()
        } else {
            m.select(pcs)?.iter().map(|p| p.name.clone()).collect()
        };
        let steps = self
            .ask(&Request::Down { pcs: names })?
            .map(|r| r.steps)
            .unwrap_or_default();
        tell_done(&steps, progress);
        Ok(steps)
    }

    fn status(&self, m: &Manifest, pcs: &[String]) -> Result<Vec<PcStatus>> {
        let wanted: Vec<String> = m.select(pcs)?.iter().map(|p| p.name.clone()).collect();
        let rows = match self.ask(&Request::Status)? {
            Some(r) => r.status,
            None => status::in_parallel(&m.pcs, |pc| {
                let (state, usage) = status::from_cow_file(m, pc);
                let export = service::export_uri(m.nbd.listen, &pc.name);
                status::row(m, pc, state, usage, export, Vec::new())
            }),
        };
        Ok(rows
            .into_iter()
            .filter(|r| wanted.contains(&r.name))
            .collect())
    }

    /// One request for all of them: the service resets them one at a time, and an error
    /// fails the whole request.
    fn reset(&self, m: &Manifest, pcs: &[&Pc]) -> Result<Resets> {
        let request = Request::Reset {
            pcs: pcs.iter().map(|p| p.name.clone()).collect(),
        };
        let done = match self.ask(&request)? {
            Some(r) => r.resets,
            None => pcs
                .iter()
                .map(|pc| {
                    let due = crate::image::next_version(m, pc)?;
                    Ok(reset::reset_unserved(m, pc, due.as_ref(), &SysLoops)?)
                })
                .collect::<Result<_>>()?,
        };
        Ok(Resets {
            done,
            failed: Vec::new(),
        })
    }

    fn commit(
        &self,
        m: &Manifest,
        pc: &Pc,
        version: Option<VersionName>,
        note: &str,
        pause: bool,
    ) -> Result<Committed> {
        let request = Request::Commit {
            pc: pc.name.clone(),
            version: version.as_ref().map(|v| v.as_str().to_string()),
            note: note.to_string(),
            pause,
        };
        match self.ask(&request)? {
            Some(r) => r.committed.ok_or(Error::NothingCommitted),
            None => Ok(crate::image::commit_pc(
                m,
                pc,
                version,
                note,
                crate::image::rbdstore::Wait::AWhile,
            )?),
        }
    }

    fn serve(&self, m: &Manifest, start_empty: bool) -> Result<()> {
        serve(m, start_empty, false)
    }
}

/// `cowctl serve` in the foreground: the NBD service with HTTP and auto-extend, or on the
/// kernel backend (`kernel`) HTTP and auto-extend over the kernel's snapshots.
pub(super) fn serve(m: &Manifest, start_empty: bool, kernel: bool) -> Result<()> {
    Ok(service::run::run(&service::run::Options {
        manifest: manifest_path(m)?,
        run_dir: control::default_run_dir(),
        start_empty,
        kernel,
        http: crate::web::spawn,
    })?)
}

/// Starts `cowctl serve` in its own session, logging to `serve.log` in the run directory,
/// and waits until its control socket answers. The service inherits this environment:
/// `COWCTL_LOG` and `COWCTL_LOG_FORMAT` shape its log as they would a `cowctl serve` run by hand.
fn start_service(manifest: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log_path = dir.join("serve.log");
    let log = crate::base::rundir::open(dir, "serve.log", true)?;
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
    let mut child = cmd.spawn().map_err(Error::Spawn)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if call(dir, &Request::Status).is_ok_and(|r| r.is_some()) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text.lines().last().unwrap_or("").trim();
            return Err(Error::ServiceExited {
                status,
                last_line: last.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::ServiceSilent { log: log_path })
}
