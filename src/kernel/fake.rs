//! A recording fake of every kernel subsystem, for fast tests of planning and ordering.
//! Every call is logged as one line ("dm create cowctl-pc-01", "configfs mkdir iscsi/…"),
//! and any call can be made to fail. Its configfs refuses to remove a directory that still
//! holds directories or links made by the caller, as configfs does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::aoe::{RunningVblade, VbladeSpec, Vblades};
use super::configfs::ConfigFs;
use super::devmapper::{DeviceMapper, Target};
use super::error::{ConfigfsError, DmError, FakeFailure, LoopError, NetError, VbladeError};
use super::loopdev::{LoopInfo, Loops, Opened};
use super::net::{Interface, Net};
use super::{DevNum, Kernel};
use crate::dm::StatusLine;

#[derive(Debug, Clone)]
pub struct FakeDm {
    pub number: DevNum,
    pub target: Target,
    /// What `status` answers after the target kind; default an empty snapshot.
    pub status: Option<String>,
    pub suspended: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// `made` is false for the groups configfs creates by itself.
    Dir {
        made: bool,
    },
    File(String),
    Link(String),
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub loops: Vec<LoopInfo>,
    /// What each attached loop holds open (by its node), as the file was when attached.
    pub opened: BTreeMap<PathBuf, Opened>,
    pub dm: BTreeMap<String, FakeDm>,
    configfs: BTreeMap<String, Node>,
    pub vblades: BTreeMap<String, RunningVblade>,
    pub interfaces: Vec<Interface>,
    /// Images the fake rbd driver maps (`fake_rbd.rs`).
    pub rbd: Vec<super::rbdmap::Mapped>,
    pub log: Vec<String>,
    /// Every call of `log` and every read between them ("dm list", "dm status
    /// cowctl-pc-01", "loop list", "configfs list iscsi", "vblade list"), in order: what a
    /// command costs as the room grows, and what happens inside a reset's pause.
    pub trace: Vec<String>,
    /// A call whose log line starts with this fails (once it is set).
    pub fail_on: Option<String>,
    /// A kernel without device-mapper.
    pub no_dm: bool,
    next_minor: u32,
}

#[derive(Clone, Default)]
pub struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn set_suspended(&self, call: String, name: &str, on: bool) -> Result<(), DmError> {
        let mut s = self.call(call)?;
        let d = s.dm.get_mut(name).ok_or_else(|| no_dm(name))?;
        d.suspended = on;
        Ok(())
    }
}

impl Fake {
    /// A fake host with `lo` (127.0.0.1) and `eth0` (10.0.0.1) up.
    pub fn new() -> Fake {
        let f = Fake::default();
        f.state().interfaces = vec![
            Interface {
                name: "lo".into(),
                up: true,
                addresses: vec!["127.0.0.1".parse().unwrap()],
            },
            Interface {
                name: "eth0".into(),
                up: true,
                addresses: vec!["10.0.0.1".parse().unwrap()],
            },
        ];
        f
    }

    pub fn kernel(&self) -> Kernel {
        Kernel {
            loops: Box::new(self.clone()),
            dm: Box::new(self.clone()),
            configfs: Box::new(self.clone()),
            vblade: Box::new(self.clone()),
            net: Box::new(self.clone()),
            rbd: Box::new(self.clone()),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    pub fn clear_log(&self) {
        self.state().log.clear();
    }

    /// Takes the trace of calls and reads made since the last take.
    pub fn take_trace(&self) -> Vec<String> {
        std::mem::take(&mut self.state().trace)
    }

    pub(super) fn traced(&self, line: String) -> MutexGuard<'_, FakeState> {
        let mut s = self.state();
        s.trace.push(line);
        s
    }

    pub fn fail_on(&self, prefix: &str) {
        self.state().fail_on = Some(prefix.to_string());
    }

    /// Paths in the fake configfs that the caller made (directories and links).
    pub fn configfs_made(&self) -> Vec<String> {
        self.state()
            .configfs
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir { made: true } | Node::Link(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub(super) fn call(&self, line: String) -> Result<MutexGuard<'_, FakeState>, FakeFailure> {
        let mut s = self.state();
        let fail = s
            .fail_on
            .as_ref()
            .is_some_and(|f| line.starts_with(f.as_str()));
        s.log.push(line.clone());
        s.trace.push(line.clone());
        if fail {
            return Err(FakeFailure { call: line });
        }
        Ok(s)
    }
}

impl Loops for Fake {
    fn list(&self) -> Result<Vec<LoopInfo>, LoopError> {
        Ok(self.traced("loop list".into()).loops.clone())
    }
    fn opened(&self, device: &str) -> Result<Option<Opened>, LoopError> {
        let found = self
            .state()
            .loops
            .iter()
            .find(|l| l.number.to_string() == device || l.dev == Path::new(device))
            .cloned();
        let backing = found.as_ref().map(|l| l.backing.display().to_string());
        let s = self.traced(format!(
            "loop opened {device} ({})",
            backing.unwrap_or_default()
        ));
        Ok(found.and_then(|l| s.opened.get(&l.dev).copied()))
    }
    fn attach(&self, file: &Path, read_only: bool) -> Result<LoopInfo, LoopError> {
        let mut s = self.call(format!(
            "loop attach {}{}",
            file.display(),
            if read_only { " ro" } else { "" }
        ))?;
        let n = (0..)
            .find(|n| !s.loops.iter().any(|l| l.number.minor == *n))
            .unwrap();
        let info = LoopInfo {
            dev: PathBuf::from(format!("/dev/loop{n}")),
            number: DevNum { major: 7, minor: n },
            backing: file.to_path_buf(),
            read_only,
        };
        s.loops.push(info.clone());
        if let Ok(m) = std::fs::metadata(file) {
            use std::os::unix::fs::MetadataExt;
            let opened = Opened {
                file: (m.dev(), m.ino()),
                bytes: m.len(),
            };
            s.opened.insert(info.dev.clone(), opened);
        }
        Ok(info)
    }
    fn detach(&self, dev: &Path) -> Result<(), LoopError> {
        let mut s = self.call(format!("loop detach {}", dev.display()))?;
        let d = dev.display().to_string();
        if let Some((name, _)) =
            s.dm.iter()
                .find(|(_, t)| t.target.params.split(' ').take(2).any(|p| p == d))
        {
            return Err(LoopError::InUse {
                dev: dev.to_path_buf(),
                name: name.clone(),
            });
        }
        let before = s.loops.len();
        s.loops.retain(|l| l.dev != dev);
        s.opened.remove(dev);
        if s.loops.len() == before {
            return Err(LoopError::NoLoop {
                dev: dev.to_path_buf(),
            });
        }
        Ok(())
    }
    fn set_capacity(&self, dev: &Path) -> Result<(), LoopError> {
        let s = self.call(format!("loop set-capacity {}", dev.display()))?;
        if !s.loops.iter().any(|l| l.dev == dev) {
            return Err(LoopError::NoLoop {
                dev: dev.to_path_buf(),
            });
        }
        Ok(())
    }
}

impl DeviceMapper for Fake {
    fn list(&self, prefix: &str) -> Result<Vec<String>, DmError> {
        let s = self.traced("dm list".into());
        if s.no_dm {
            return Err(DmError::Unavailable);
        }
        Ok(s.dm
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn create(&self, name: &str, table: &Target) -> Result<DevNum, DmError> {
        let mut s = self.call(format!("dm create {name} {} {}", table.kind, table.params))?;
        if s.dm.contains_key(name) {
            return Err(DmError::Exists {
                name: name.to_string(),
            });
        }
        let number = DevNum {
            major: 253,
            minor: s.next_minor,
        };
        s.next_minor += 1;
        s.dm.insert(
            name.to_string(),
            FakeDm {
                number,
                target: table.clone(),
                status: None,
                suspended: false,
            },
        );
        Ok(number)
    }
    fn replace(&self, name: &str, table: &Target) -> Result<(), DmError> {
        let mut s = self.call(format!("dm replace {name} {}", table.kind))?;
        let d = s.dm.get_mut(name).ok_or_else(|| no_dm(name))?;
        d.target = table.clone();
        d.status = None;
        d.suspended = false;
        Ok(())
    }
    fn suspend(&self, name: &str) -> Result<(), DmError> {
        self.set_suspended(format!("dm suspend {name}"), name, true)
    }
    fn resume(&self, name: &str) -> Result<(), DmError> {
        self.set_suspended(format!("dm resume {name}"), name, false)
    }
    fn suspended(&self, name: &str) -> Result<bool, DmError> {
        let s = self.traced(format!("dm suspended {name}"));
        s.dm.get(name)
            .map(|d| d.suspended)
            .ok_or_else(|| no_dm(name))
    }
    fn remove(&self, name: &str) -> Result<(), DmError> {
        let mut s = self.call(format!("dm remove {name}"))?;
        let node = format!(
            "/dev/dm-{}",
            s.dm.get(name).ok_or_else(|| no_dm(name))?.number.minor
        );
        let held_by_lio = s
            .configfs
            .iter()
            .any(|(p, n)| p.ends_with("/udev_path") && *n == Node::File(node.clone()));
        let held_by_vblade = s.vblades.values().any(|v| v.args.last() == Some(&node));
        if held_by_lio || held_by_vblade {
            return Err(DmError::Busy {
                name: name.to_string(),
                holder: if held_by_lio {
                    "an iblock backstore"
                } else {
                    "vblade"
                },
            });
        }
        s.dm.remove(name);
        Ok(())
    }
    fn number(&self, name: &str) -> Result<DevNum, DmError> {
        self.state()
            .dm
            .get(name)
            .map(|d| d.number)
            .ok_or_else(|| no_dm(name))
    }
    fn raw_table(&self, name: &str) -> Result<String, DmError> {
        let s = self.traced(format!("dm table {name}"));
        let d = s.dm.get(name).ok_or_else(|| no_dm(name))?;
        // The kernel prints devices as major:minor.
        let mut params: Vec<String> = d.target.params.split(' ').map(String::from).collect();
        for p in params.iter_mut().take(2) {
            if let Some(l) = s.loops.iter().find(|l| l.dev.display().to_string() == *p) {
                *p = l.number.to_string();
            }
        }
        Ok(format!(
            "0 {} {} {}",
            d.target.length,
            d.target.kind,
            params.join(" ")
        )
        .trim_end()
        .to_string())
    }
    fn node(&self, name: &str, _dir: &Path) -> Result<PathBuf, DmError> {
        Ok(PathBuf::from(format!(
            "/dev/dm-{}",
            self.number(name)?.minor
        )))
    }
    fn status(&self, name: &str) -> Result<StatusLine, DmError> {
        let s = self.traced(format!("dm status {name}"));
        let d = s.dm.get(name).ok_or_else(|| no_dm(name))?;
        let chunk: u64 = d
            .target
            .params
            .split(' ')
            .nth(3)
            .and_then(|c| c.parse().ok())
            .unwrap_or(8);
        let status = d
            .status
            .clone()
            .unwrap_or_else(|| format!("{}/{} {}", 2 * chunk, 2 * d.target.length, 2 * chunk));
        format!("0 {} snapshot {status}", d.target.length)
            .parse()
            .map_err(|error| DmError::Parse {
                name: name.to_string(),
                error,
            })
    }
}

fn no_dm(name: &str) -> DmError {
    DmError::NoDevice {
        name: name.to_string(),
        source: None,
    }
}

impl FakeState {
    fn ensure_parents(&mut self, path: &str) {
        let mut p = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, rest)| rest.to_vec())
            .unwrap_or_default()
        {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            self.configfs
                .entry(p.clone())
                .or_insert(Node::Dir { made: false });
        }
    }
}

impl ConfigFs for Fake {
    fn exists(&self, path: &str) -> bool {
        self.state().configfs.contains_key(path)
    }
    fn mkdir(&self, path: &str) -> Result<(), ConfigfsError> {
        let mut s = self.call(format!("configfs mkdir {path}"))?;
        if s.configfs
            .get(path)
            .is_some_and(|n| *n == Node::Dir { made: true })
        {
            return Err(ConfigfsError::Exists {
                path: path.to_string(),
            });
        }
        s.ensure_parents(path);
        s.configfs
            .insert(path.to_string(), Node::Dir { made: true });
        Ok(())
    }
    fn rmdir(&self, path: &str) -> Result<(), ConfigfsError> {
        let mut s = self.call(format!("configfs rmdir {path}"))?;
        let prefix = format!("{path}/");
        let busy: Vec<String> = s
            .configfs
            .iter()
            .filter(|(p, n)| {
                p.starts_with(&prefix) && matches!(n, Node::Dir { made: true } | Node::Link(_))
            })
            .map(|(p, _)| p.clone())
            .collect();
        if !busy.is_empty() {
            return Err(ConfigfsError::NotEmpty {
                path: path.to_string(),
                busy,
            });
        }
        s.configfs
            .retain(|p, _| p != path && !p.starts_with(&prefix));
        Ok(())
    }
    fn write(&self, path: &str, value: &str) -> Result<(), ConfigfsError> {
        let line = if path.contains("password") {
            format!("configfs write {path} <secret>")
        } else {
            format!("configfs write {path} {value}")
        };
        let mut s = self.call(line)?;
        s.ensure_parents(path);
        s.configfs
            .insert(path.to_string(), Node::File(value.to_string()));
        Ok(())
    }
    fn read(&self, path: &str) -> Result<String, ConfigfsError> {
        match self.state().configfs.get(path) {
            Some(Node::File(v)) => Ok(v.clone()),
            _ => Err(ConfigfsError::NoFile {
                path: path.to_string(),
            }),
        }
    }
    fn symlink(&self, target: &str, link: &str) -> Result<(), ConfigfsError> {
        let mut s = self.call(format!("configfs link {link} -> {target}"))?;
        if !s.configfs.contains_key(target) {
            return Err(ConfigfsError::NoTarget {
                target: target.to_string(),
            });
        }
        s.ensure_parents(link);
        s.configfs
            .insert(link.to_string(), Node::Link(target.to_string()));
        Ok(())
    }
    fn unlink(&self, link: &str) -> Result<(), ConfigfsError> {
        let mut s = self.call(format!("configfs unlink {link}"))?;
        match s.configfs.remove(link) {
            Some(Node::Link(_)) => Ok(()),
            _ => Err(ConfigfsError::NoLink {
                link: link.to_string(),
            }),
        }
    }
    fn list(&self, path: &str) -> Result<Vec<String>, ConfigfsError> {
        let prefix = format!("{path}/");
        Ok(self
            .traced(format!("configfs list {path}"))
            .configfs
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect())
    }
    fn links(&self, path: &str) -> Result<Vec<String>, ConfigfsError> {
        let prefix = format!("{path}/");
        Ok(self
            .state()
            .configfs
            .iter()
            .filter(|(_, n)| matches!(n, Node::Link(_)))
            .filter_map(|(p, _)| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect())
    }
    fn readlink(&self, link: &str) -> Result<String, ConfigfsError> {
        match self.state().configfs.get(link) {
            Some(Node::Link(t)) => Ok(t.clone()),
            _ => Err(ConfigfsError::NoLink {
                link: link.to_string(),
            }),
        }
    }
}

impl Vblades for Fake {
    fn list(&self) -> Result<Vec<RunningVblade>, VbladeError> {
        Ok(self
            .traced("vblade list".into())
            .vblades
            .values()
            .cloned()
            .collect())
    }
    fn running(&self, pc: &str) -> Result<Option<RunningVblade>, VbladeError> {
        Ok(self.traced(format!("vblade {pc}")).vblades.get(pc).cloned())
    }
    fn start(&self, spec: &VbladeSpec) -> Result<u32, VbladeError> {
        let mut s = self.call(format!(
            "vblade start {} {}",
            spec.pc,
            spec.args().join(" ")
        ))?;
        let pid = 1000 + u32::try_from(s.vblades.len()).unwrap_or(0);
        s.vblades.insert(
            spec.pc.clone(),
            RunningVblade {
                pc: spec.pc.clone(),
                pid,
                args: spec.args(),
            },
        );
        Ok(pid)
    }
    fn stop(&self, pc: &str) -> Result<(), VbladeError> {
        let mut s = self.call(format!("vblade stop {pc}"))?;
        s.vblades.remove(pc);
        Ok(())
    }
}

impl Net for Fake {
    fn interfaces(&self) -> Result<Vec<Interface>, NetError> {
        Ok(self.state().interfaces.clone())
    }
}
