//! AoE exports through `vblade` processes that cowctl supervises: one per PC, with a pid
//! file in the run directory; a dead one is restarted by the next apply.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::manifest::Mac;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbladeSpec {
    pub pc: String,
    pub shelf: u16,
    pub slot: u8,
    pub interface: String,
    pub device: String,
    pub macs: Vec<Mac>,
}

impl VbladeSpec {
    /// `vblade [-m mac,...] shelf slot netif device`.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if !self.macs.is_empty() {
            a.push("-m".into());
            a.push(
                self.macs
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        a.extend([
            self.shelf.to_string(),
            self.slot.to_string(),
            self.interface.clone(),
            self.device.clone(),
        ]);
        a
    }
}

/// A supervised vblade, as its pid file and /proc describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVblade {
    pub pc: String,
    pub pid: u32,
    pub args: Vec<String>,
}

pub trait Vblades: Send + Sync {
    /// Live vblades with a pid file (stale pid files are ignored).
    fn list(&self) -> Result<Vec<RunningVblade>>;
    /// The PC's live vblade, if any.
    fn running(&self, pc: &str) -> Result<Option<RunningVblade>> {
        Ok(self.list()?.into_iter().find(|v| v.pc == pc))
    }
    fn start(&self, spec: &VbladeSpec) -> Result<u32>;
    fn stop(&self, pc: &str) -> Result<()>;
}

pub struct ProcessVblades {
    dir: PathBuf,
}

impl ProcessVblades {
    pub fn new(dir: PathBuf) -> Self {
        ProcessVblades { dir }
    }

    fn pid_file(&self, pc: &str) -> PathBuf {
        self.dir.join(format!("{pc}.pid"))
    }
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).to_string())
            .collect(),
    )
}

fn is_vblade(args: &[String]) -> bool {
    args.first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "vblade"))
}

impl Vblades for ProcessVblades {
    fn list(&self) -> Result<Vec<RunningVblade>> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pc) = name.strip_suffix(".pid") {
                out.extend(self.running(pc)?);
            }
        }
        out.sort_by(|a, b| a.pc.cmp(&b.pc));
        Ok(out)
    }

    /// Only this PC's pid file: stopping one vblade reads nothing of the others.
    fn running(&self, pc: &str) -> Result<Option<RunningVblade>> {
        let Some(pid) = std::fs::read_to_string(self.pid_file(pc))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return Ok(None);
        };
        Ok(cmdline(pid)
            .filter(|a| is_vblade(a))
            .map(|args| RunningVblade {
                pc: pc.to_string(),
                pid,
                args: args[1..].to_vec(),
            }))
    }

    fn start(&self, spec: &VbladeSpec) -> Result<u32> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let log = std::fs::File::create(self.dir.join(format!("{}.log", spec.pc)))?;
        let child = Command::new("vblade")
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start vblade (is the vblade package installed?)")?;
        let pid = child.id();
        // Reap it in the background if it dies while we still run; after we exit, init does.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        if cmdline(pid).is_none_or(|a| !is_vblade(&a)) {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", spec.pc)))
                .unwrap_or_default();
            bail!("vblade for {} exited at once: {}", spec.pc, log.trim());
        }
        std::fs::write(self.pid_file(&spec.pc), format!("{pid}\n"))?;
        Ok(pid)
    }

    fn stop(&self, pc: &str) -> Result<()> {
        if let Some(v) = self.running(pc)? {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(v.pid)?),
                nix::sys::signal::Signal::SIGTERM,
            )
            .with_context(|| format!("cannot stop vblade {} of {pc}", v.pid))?;
            for _ in 0..50 {
                if cmdline(v.pid).is_none_or(|a| !is_vblade(&a)) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(self.pid_file(pc));
        Ok(())
    }
}
