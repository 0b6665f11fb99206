//! Helper processes cowctl starts and keeps track of (vblade per AoE PC, dnsmasq per
//! room): a pid file per process in a directory of the run directory, checked against
//! /proc, so a stale pid file (or a pid reused by another program) counts as not running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::base::rundir::RunDirError;

/// Why a helper could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The helper's log file could not be handed to it as its output.
    #[error(transparent)]
    Log(std::io::Error),
    #[error("cannot start {program} ({hint})")]
    Start {
        program: &'static str,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} for {key} exited at once: {last}")]
    ExitedAtOnce {
        program: &'static str,
        key: String,
        /// The last lines of its log.
        last: String,
    },
    /// The pid file could not be written.
    #[error(transparent)]
    PidFile(std::io::Error),
    #[error(transparent)]
    Pid(#[from] std::num::TryFromIntError),
    #[error("cannot stop {program} {pid} of {key}")]
    Stop {
        program: &'static str,
        pid: u32,
        key: String,
        #[source]
        source: nix::Error,
    },
}

type Result<T, E = SuperviseError> = std::result::Result<T, E>;

/// One kind of helper: `program`, with its pid and log files in `dir`.
#[derive(Debug, Clone)]
pub struct Helpers {
    pub dir: PathBuf,
    pub program: &'static str,
    /// Said when the program cannot be started, e.g. "is the vblade package installed?".
    pub install_hint: &'static str,
}

/// A live helper: its pid and its arguments (without the program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub key: String,
    pub pid: u32,
    pub args: Vec<String>,
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

impl Helpers {
    fn pid_file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.pid"))
    }

    pub fn log_file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.log"))
    }

    fn is_ours(&self, args: &[String]) -> bool {
        args.first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == self.program))
    }

    /// Every live helper with a pid file.
    pub fn list(&self) -> Vec<Running> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Running> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                self.running(name.strip_suffix(".pid")?)
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Only this helper's pid file: others are not read.
    pub fn running(&self, key: &str) -> Option<Running> {
        let pid = std::fs::read_to_string(self.pid_file(key))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())?;
        cmdline(pid)
            .filter(|a| self.is_ours(a))
            .map(|args| Running {
                key: key.to_string(),
                pid,
                args: args[1..].to_vec(),
            })
    }

    /// Starts the helper with its output in its log file; fails, with the log's last
    /// words, if it exits within `settle`.
    pub fn start(&self, key: &str, args: &[String], settle: Duration) -> Result<u32> {
        crate::base::rundir::ensure(&self.dir)?;
        let log_path = self.log_file(key);
        let log = crate::base::rundir::open(&self.dir, &format!("{key}.log"), false)?;
        let child = Command::new(self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(SuperviseError::Log)?)
            .stderr(log)
            .spawn()
            .map_err(|source| SuperviseError::Start {
                program: self.program,
                hint: self.install_hint,
                source,
            })?;
        let pid = child.id();
        // Reap it in the background if it dies while we still run; after we exit, init does.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        std::thread::sleep(settle);
        if cmdline(pid).is_none_or(|a| !self.is_ours(&a)) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let last = lines[lines.len().saturating_sub(3)..].join(" / ");
            return Err(SuperviseError::ExitedAtOnce {
                program: self.program,
                key: key.to_string(),
                last: last.trim().to_string(),
            });
        }
        std::fs::write(self.pid_file(key), format!("{pid}\n")).map_err(SuperviseError::PidFile)?;
        Ok(pid)
    }

    /// Stops the helper (SIGTERM, then up to a second for it to go) and removes its pid
    /// file; true if one was running.
    pub fn stop(&self, key: &str) -> Result<bool> {
        let running = self.running(key);
        if let Some(r) = &running {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(r.pid)?),
                nix::sys::signal::Signal::SIGTERM,
            )
            .map_err(|source| SuperviseError::Stop {
                program: self.program,
                pid: r.pid,
                key: key.to_string(),
                source,
            })?;
            for _ in 0..50 {
                if cmdline(r.pid).is_none_or(|a| !self.is_ours(&a)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(self.pid_file(key));
        Ok(running.is_some())
    }
}
