//! `cowctl doctor`: the machine against the manifest, one finding per line, each with the
//! fix. Every check reads what it needs from a [`Host`]: the roots of /proc, /sys, /dev and
//! the kernel's modules as paths, and narrow traits for what is not a file (network
//! interfaces, device-mapper's targets, the clock), so the tests run them on fake trees.
//! Nothing here changes the machine (no modprobe, no mount); the reflink probe writes two
//! small files in the directory it checks and removes them.

pub mod backend;
pub mod ceph;
pub mod clock;
pub mod modules;
pub mod ports;
pub mod pxe;
pub mod secrets;
pub mod space;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::kernel::net::Net;
use crate::manifest::Manifest;

/// How a finding stands: only `Fail` makes `cowctl doctor` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    Backend,
    DeviceMapper,
    Loop,
    Lio,
    Aoe,
    Port,
    Pxe,
    Interface,
    Space,
    Secret,
    Clock,
    Ceph,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Area::Backend => "backend",
            Area::DeviceMapper => "device-mapper",
            Area::Loop => "loop",
            Area::Lio => "lio",
            Area::Aoe => "aoe",
            Area::Port => "port",
            Area::Pxe => "pxe",
            Area::Interface => "interface",
            Area::Space => "space",
            Area::Secret => "secret",
            Area::Clock => "clock",
            Area::Ceph => "ceph",
        })
    }
}

/// One finding: what was found and, when something is to be done, what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub area: Area,
    pub status: Status,
    pub says: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(area: Area, says: impl Into<String>) -> Check {
        Check {
            area,
            status: Status::Ok,
            says: says.into(),
            fix: None,
        }
    }

    pub fn warn(area: Area, says: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            area,
            status: Status::Warn,
            says: says.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(area: Area, says: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            area,
            status: Status::Fail,
            says: says.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    /// `ok    backend: what it found — fix: …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status.to_string();
        write!(f, "{status:<5} {}: {}", self.area, self.says)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// The worst status among the findings (`Ok` for none).
pub fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

/// Device-mapper's loaded target types (what `dmsetup targets` lists), or None when they
/// cannot be read (no control node, not root).
pub trait DmTargets {
    fn targets(&self) -> Option<Vec<String>>;
}

/// The real list, through the DM_LIST_VERSIONS ioctl.
pub struct IoctlTargets;

impl DmTargets for IoctlTargets {
    fn targets(&self) -> Option<Vec<String>> {
        let dm = devicemapper::DM::new().ok()?;
        let versions = dm.list_versions().ok()?;
        Some(versions.into_iter().map(|(name, ..)| name).collect())
    }
}

/// Where the checks look: the machine's roots as paths, and the sources that are not files.
pub struct Host<'a> {
    /// `/proc`: sockets, processes, mounts.
    pub proc: PathBuf,
    /// `/sys`: modules, network interfaces, configfs.
    pub sys: PathBuf,
    /// `/dev`: device-mapper's and the loop driver's control nodes.
    pub dev: PathBuf,
    /// `/lib/modules/<release>`: the modules the kernel could load.
    pub modules: PathBuf,
    /// `/run`: systemd's time synchronization flag.
    pub run: PathBuf,
    /// Where programs are looked for ($PATH and the sbin directories).
    pub path: Vec<PathBuf>,
    /// cowctl's run directory: the pid file of `cowctl serve`.
    pub run_dir: PathBuf,
    pub net: &'a dyn Net,
    pub dm: &'a dyn DmTargets,
    pub clock: &'a dyn clock::Clock,
}

impl<'a> Host<'a> {
    /// This machine.
    pub fn real(
        run_dir: &Path,
        net: &'a dyn Net,
        dm: &'a dyn DmTargets,
        clock: &'a dyn clock::Clock,
    ) -> Host<'a> {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().to_string())
            .unwrap_or_default();
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            if !path.iter().any(|p| p == Path::new(d)) {
                path.push(d.into());
            }
        }
        Host {
            proc: "/proc".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            modules: Path::new("/lib/modules").join(release),
            run: "/run".into(),
            path,
            run_dir: run_dir.to_path_buf(),
            net,
            dm,
            clock,
        }
    }

    /// The program's path, when one of `path`'s directories has it.
    pub fn program(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.path.iter().map(|d| d.join(name)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

/// Every check, in the order printed.
pub fn run(m: &Manifest, host: &Host) -> Vec<Check> {
    let mut out = backend::checks(m, host);
    let resolved = backend::resolve(m, host).backend;
    out.extend(ports::checks(m, host, resolved));
    out.extend(pxe::checks(m, host));
    out.extend(space::checks(m));
    out.extend(secrets::checks(m));
    out.extend(clock::checks(m, host.clock));
    out.extend(ceph::checks(m, host, resolved));
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fake machine for the checks' tests.
    use super::*;
    use crate::kernel::net::Interface;

    pub struct FakeNet(pub Vec<Interface>);

    impl Net for FakeNet {
        fn interfaces(&self) -> Result<Vec<Interface>, crate::kernel::NetError> {
            Ok(self.0.clone())
        }
    }

    pub struct FakeDm(pub Option<Vec<String>>);

    impl DmTargets for FakeDm {
        fn targets(&self) -> Option<Vec<String>> {
            self.0.clone()
        }
    }

    pub struct FakeClock {
        pub synced: clock::Synced,
        pub now: u64,
    }

    impl clock::Clock for FakeClock {
        fn synchronized(&self) -> clock::Synced {
            self.synced
        }
        fn now(&self) -> u64 {
            self.now
        }
    }

    /// A host whose roots are folders of `root`, all empty.
    pub fn host<'a>(
        root: &Path,
        net: &'a FakeNet,
        dm: &'a FakeDm,
        clock: &'a FakeClock,
    ) -> Host<'a> {
        let h = Host {
            proc: root.join("proc"),
            sys: root.join("sys"),
            dev: root.join("dev"),
            modules: root.join("lib/modules/6.1.0"),
            run: root.join("run"),
            path: vec![root.join("bin")],
            run_dir: root.join("run/cowctl"),
            net,
            dm,
            clock,
        };
        for d in [&h.proc, &h.sys, &h.dev, &h.modules, &h.run, &h.path[0]] {
            std::fs::create_dir_all(d).unwrap();
        }
        h
    }

    /// A manifest from YAML, at `dir/m.yaml`.
    pub fn manifest(dir: &Path, yaml: &str) -> Manifest {
        Manifest::parse(&dir.join("m.yaml"), yaml).unwrap()
    }

    /// An executable file.
    pub fn program(h: &Host, name: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = h.path[0].join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_status_area_finding_and_fix() {
        let c = Check::fail(Area::Secret, "x is 0644", "chmod 600 x");
        assert_eq!(c.to_string(), "FAIL  secret: x is 0644 — fix: chmod 600 x");
        let c = Check::ok(Area::Clock, "synchronized");
        assert_eq!(c.to_string(), "ok    clock: synchronized");
        assert_eq!(worst(&[]), Status::Ok);
        assert_eq!(
            worst(&[c.clone(), Check::warn(Area::Loop, "a", "b")]),
            Status::Warn
        );
        let j = serde_json::to_value(Check::warn(Area::DeviceMapper, "a", "b")).unwrap();
        assert_eq!(j["area"], "device-mapper");
        assert_eq!(j["status"], "warn");
    }
}
