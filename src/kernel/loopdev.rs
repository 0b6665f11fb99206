//! Loop devices: read from sysfs, attached and detached with loop ioctls (`loopdev`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use super::error::LoopError;
use super::DevNum;

type Result<T, E = LoopError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// `/dev/loopN`.
    pub dev: PathBuf,
    pub number: DevNum,
    pub backing: PathBuf,
    pub read_only: bool,
}

/// The file a loop device holds open, as (st_dev, st_ino) — the path it was attached by may
/// since lead elsewhere or nowhere — and the device's size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub file: (u64, u64),
    pub bytes: u64,
}

pub trait Loops: Send + Sync {
    fn list(&self) -> Result<Vec<LoopInfo>>;
    /// What the loop device `device` ("major:minor" as a dm table names it, or its node)
    /// holds open; None when it is not a loop device with a file attached.
    fn opened(&self, device: &str) -> Result<Option<Opened>>;
    fn attach(&self, file: &Path, read_only: bool) -> Result<LoopInfo>;
    fn detach(&self, dev: &Path) -> Result<()>;
    /// Makes the loop device take its backing file's new size (`losetup -c`).
    fn set_capacity(&self, dev: &Path) -> Result<()>;
}

/// Finds the loop attached to `file` with the wanted mode. The kernel names the file it
/// opened, so a manifest's symbolic link (to an image file, or to a block device such as an
/// LV) is matched by what it points at.
pub fn find<'a>(loops: &'a [LoopInfo], file: &Path, read_only: bool) -> Option<&'a LoopInfo> {
    loops.iter().find(|l| {
        l.read_only == read_only
            && (l.backing == file || crate::base::fileid::same_file(&l.backing, file))
    })
}

pub struct SysLoops;

/// `/sys/block/<name>`'s loop device, or None when nothing is attached to it.
fn read_loop(name: &str) -> Result<Option<LoopInfo>> {
    let sys = Path::new("/sys/block").join(name);
    let Ok(backing) = std::fs::read_to_string(sys.join("loop/backing_file")) else {
        return Ok(None);
    };
    let backing = backing
        .trim_end_matches('\n')
        .trim_end_matches(" (deleted)");
    let number: DevNum = std::fs::read_to_string(sys.join("dev"))?
        .parse()
        .map_err(|reason| LoopError::Number { reason })?;
    let ro = std::fs::read_to_string(sys.join("ro"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    Ok(Some(LoopInfo {
        dev: PathBuf::from("/dev").join(name),
        number,
        backing: PathBuf::from(backing),
        read_only: ro,
    }))
}

/// `struct loop_info64` of linux/loop.h, as LOOP_GET_STATUS64 fills it.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

/// The (st_dev, st_ino) of the file attached to the loop device node `dev`.
fn attached_file(dev: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let node = std::fs::File::open(dev)?;
    // SAFETY: an all-zero loop_info64 is valid; the kernel fills it and writes no further.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call and `info` is a whole loop_info64.
    unsafe { loop_get_status64(node.as_raw_fd(), &raw mut info) }?;
    Ok((info.device, info.inode))
}

impl Loops for SysLoops {
    fn opened(&self, device: &str) -> Result<Option<Opened>> {
        let sys = match device.parse::<DevNum>() {
            Ok(n) => PathBuf::from(format!("/sys/dev/block/{n}")),
            Err(_) => Path::new("/sys/class/block")
                .join(Path::new(device).file_name().unwrap_or_default()),
        };
        let (Ok(real), Ok(sectors)) = (
            std::fs::canonicalize(&sys),
            std::fs::read_to_string(sys.join("size")),
        ) else {
            return Ok(None);
        };
        let Some(name) = real.file_name() else {
            return Ok(None);
        };
        if !sys.join("loop/backing_file").exists() {
            return Ok(None);
        }
        let node = Path::new("/dev").join(name);
        let file = attached_file(&node).map_err(|source| LoopError::Status {
            dev: node.clone(),
            source,
        })?;
        let sectors: u64 = sectors.trim().parse().unwrap_or(0);
        Ok(Some(Opened {
            file,
            bytes: sectors * 512,
        }))
    }

    fn list(&self) -> Result<Vec<LoopInfo>> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/sys/block") else {
            return Ok(out);
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("loop") {
                out.extend(read_loop(&name)?);
            }
        }
        out.sort_by(|a, b| a.dev.cmp(&b.dev));
        Ok(out)
    }

    fn attach(&self, file: &Path, read_only: bool) -> Result<LoopInfo> {
        if !Path::new("/dev/loop-control").exists() {
            super::modprobe("loop");
        }
        // Two threads of this process (resets run side by side) must not both take the
        // device the kernel calls free.
        static ATTACHING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = ATTACHING.lock().unwrap_or_else(|p| p.into_inner());
        let control = loopdev::LoopControl::open().map_err(LoopError::Control)?;
        let dev = control.next_free().map_err(LoopError::NoFree)?;
        dev.with()
            .read_only(read_only)
            .attach(file)
            .map_err(|source| LoopError::Attach {
                file: file.to_path_buf(),
                source,
            })?;
        let path = dev.path().ok_or(LoopError::NoPath)?;
        // Only this device's sysfs: a reset attaches inside its pause, and the room's other
        // loops are none of its business.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        read_loop(&name)?.ok_or_else(|| LoopError::Vanished {
            dev: path.clone(),
            file: file.to_path_buf(),
        })
    }

    fn detach(&self, dev: &Path) -> Result<()> {
        loopdev::LoopDevice::open(dev)
            .and_then(|d| d.detach())
            .map_err(|source| LoopError::Detach {
                dev: dev.to_path_buf(),
                source,
            })
    }

    fn set_capacity(&self, dev: &Path) -> Result<()> {
        loopdev::LoopDevice::open(dev)
            .and_then(|d| d.set_capacity())
            .map_err(|source| LoopError::SetCapacity {
                dev: dev.to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_info64_has_its_c_size() {
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
    }
}
