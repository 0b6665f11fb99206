//! One module per kernel subsystem, each behind a narrow trait: the real implementation
//! talks to the kernel (ioctls, sysfs, configfs, processes); `fake` records calls for fast
//! tests of the planning logic. The kernel is the source of truth: nothing here keeps state.

pub mod aoe;
pub mod configfs;
pub mod devmapper;
pub mod error;
pub mod fake;
mod fake_rbd;
pub mod hostaddr;
pub mod keyring;
pub mod lio;
pub mod loopdev;
pub mod net;
pub mod rbdmap;
pub mod supervise;

use std::fmt;

pub use error::{
    ConfigfsError, DmError, FakeFailure, LioError, LoopError, NetError, RbdMapError, VbladeError,
};

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl std::str::FromStr for DevNum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not major:minor"))?;
        Ok(DevNum {
            major: a.parse().map_err(|_| format!("{s:?} is not major:minor"))?,
            minor: b.parse().map_err(|_| format!("{s:?} is not major:minor"))?,
        })
    }
}

/// Loads a kernel module; quietly does nothing if it is built in or already loaded. A
/// loaded module is seen in sysfs without starting modprobe, which every command would pay.
pub fn modprobe(module: &str) {
    if std::path::Path::new("/sys/module")
        .join(module.replace('-', "_"))
        .exists()
    {
        return;
    }
    let _ = std::process::Command::new("modprobe")
        .arg(module)
        .stderr(std::process::Stdio::null())
        .status();
}

/// Everything the control plane needs from the kernel, passed in explicitly.
pub struct Kernel {
    pub loops: Box<dyn loopdev::Loops>,
    pub dm: Box<dyn devmapper::DeviceMapper>,
    pub configfs: Box<dyn configfs::ConfigFs>,
    pub vblade: Box<dyn aoe::Vblades>,
    pub net: Box<dyn net::Net>,
    pub rbd: Box<dyn rbdmap::RbdMaps>,
}

impl Kernel {
    /// The real kernel; `run_dir` holds the lock and vblade pid files.
    pub fn real(run_dir: &std::path::Path) -> Kernel {
        Kernel {
            loops: Box::new(loopdev::SysLoops),
            dm: Box::new(devmapper::IoctlDm::default()),
            configfs: Box::new(configfs::RealConfigFs::new(configfs::LIO_ROOT)),
            vblade: Box::new(aoe::ProcessVblades::new(run_dir.join("vblade"))),
            net: Box::new(net::Netlink),
            rbd: Box::new(rbdmap::SysRbd::new("/sys/bus/rbd")),
        }
    }
}
