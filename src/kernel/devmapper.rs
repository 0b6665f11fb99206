//! Device-mapper through its ioctls (the `devicemapper` crate), with cowctl's typed lines.

use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};

pub use super::error::DmError;
use super::DevNum;
use crate::dm::{StatusLine, TableLine};

type Result<T, E = DmError> = std::result::Result<T, E>;

/// One target of a table: what `dmsetup table` prints after the start sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub length: u64,
    pub kind: String,
    pub params: String,
}

impl Target {
    pub fn snapshot(line: &TableLine) -> Target {
        let full = line.to_string();
        // "<start> <length> snapshot <params>"
        let params = full.splitn(4, ' ').nth(3).unwrap_or_default().to_string();
        Target {
            length: line.length,
            kind: "snapshot".into(),
            params,
        }
    }

    /// Maps the whole device onto `dev` (a reflink PC's clone on its loop).
    pub fn linear(length: u64, dev: &str) -> Target {
        Target {
            length,
            kind: "linear".into(),
            params: format!("{dev} 0"),
        }
    }

    /// Fails all I/O: parks a device while its snapshot is replaced.
    pub fn error(length: u64) -> Target {
        Target {
            length,
            kind: "error".into(),
            params: String::new(),
        }
    }
}

pub trait DeviceMapper: Send + Sync {
    /// Names of the devices whose name starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Creates `name` with `table` and activates it.
    fn create(&self, name: &str, table: &Target) -> Result<DevNum>;
    /// Loads `table` into the inactive slot and swaps it in (suspend, swap, resume).
    fn replace(&self, name: &str, table: &Target) -> Result<()>;
    fn remove(&self, name: &str) -> Result<()>;
    /// Stops the device's I/O (in-flight I/O completes, new I/O waits) until `resume`.
    fn suspend(&self, name: &str) -> Result<()>;
    fn resume(&self, name: &str) -> Result<()>;
    /// Whether the device is suspended (by a commit with --pause that did not finish).
    fn suspended(&self, name: &str) -> Result<bool>;
    fn number(&self, name: &str) -> Result<DevNum>;
    /// The active table of a snapshot device (devices as major:minor).
    /// The device's table as the kernel prints it: "start length kind params".
    fn raw_table(&self, name: &str) -> Result<String>;
    fn table(&self, name: &str) -> Result<TableLine> {
        self.raw_table(name)?
            .parse()
            .map_err(|error| DmError::Parse {
                name: name.to_string(),
                error,
            })
    }
    fn status(&self, name: &str) -> Result<StatusLine>;
    /// A block device node for `name`: devtmpfs's /dev/dm-N, or one made under `dir` when
    /// there is none (nothing waits for udev to make /dev/mapper nodes).
    fn node(&self, name: &str, dir: &std::path::Path) -> Result<std::path::PathBuf>;
}

#[derive(Default)]
pub struct IoctlDm {
    dm: std::sync::OnceLock<std::result::Result<DM, String>>,
}

impl IoctlDm {
    fn dm(&self) -> Result<&DM> {
        self.dm
            .get_or_init(|| {
                super::modprobe("dm-snapshot");
                DM::new().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                debug_detail(e);
                DmError::Unavailable
            })
    }
}

/// The crate's own error text adds nothing for an admin; `COWCTL_DEBUG=1` shows it.
fn debug_detail(e: &str) {
    if std::env::var_os("COWCTL_DEBUG").is_some() {
        eprintln!("cowctl: debug: {e}");
    }
}

impl IoctlDm {
    /// The control handle and the id of device `name`.
    fn device<'a>(&self, name: &'a str) -> Result<(&DM, DevId<'a>)> {
        Ok((self.dm()?, DevId::Name(dm_name(name)?)))
    }
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| DmError::BadName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

fn line(name: &str, rows: Vec<(u64, u64, String, String)>) -> Result<String> {
    match rows.as_slice() {
        [(start, len, kind, params)] => Ok(format!("{start} {len} {kind} {params}")),
        _ => Err(DmError::Targets {
            name: name.to_string(),
            count: rows.len(),
        }),
    }
}

/// /dev/dm-<minor> if it is the right device, else a node made in `dir`.
pub fn block_node(name: &str, number: DevNum, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rdev = makedev(u64::from(number.major), u64::from(number.minor));
    let is_it = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
    };
    let devtmpfs = std::path::PathBuf::from(format!("/dev/dm-{}", number.minor));
    if is_it(&devtmpfs) {
        return Ok(devtmpfs);
    }
    std::fs::create_dir_all(dir).map_err(|source| DmError::NodeDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let own = dir.join(name);
    if !is_it(&own) {
        let _ = std::fs::remove_file(&own);
        mknod(&own, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), rdev).map_err(|source| {
            DmError::Mknod {
                node: own.clone(),
                source,
            }
        })?;
    }
    Ok(own)
}

impl DeviceMapper for IoctlDm {
    fn node(&self, name: &str, dir: &std::path::Path) -> Result<std::path::PathBuf> {
        block_node(name, self.number(name)?, dir)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .dm()?
            .list_devices()
            .map_err(DmError::List)?
            .into_iter()
            .map(|(n, _, _)| n.to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str, table: &Target) -> Result<DevNum> {
        let dm = self.dm()?;
        let n = dm_name(name)?;
        let info = dm
            .device_create(n, None, DmOptions::default())
            .map_err(|source| DmError::Create {
                name: name.to_string(),
                source,
            })?;
        let id = DevId::Name(n);
        let loaded = dm
            .table_load(
                &id,
                &[(0, table.length, table.kind.clone(), table.params.clone())],
                DmOptions::default(),
            )
            .and_then(|_| dm.device_suspend(&id, DmOptions::default()));
        if let Err(e) = loaded {
            // Undo our part: a device without a table is of no use to anyone.
            let _ = dm.device_remove(&id, DmOptions::default());
            return Err(DmError::CreateLoad {
                name: name.to_string(),
                kind: table.kind.clone(),
                params: table.params.clone(),
                error: e,
            });
        }
        let d = info.device();
        Ok(DevNum {
            major: d.major,
            minor: d.minor,
        })
    }

    fn replace(&self, name: &str, table: &Target) -> Result<()> {
        let (dm, id) = self.device(name)?;
        dm.table_load(
            &id,
            &[(0, table.length, table.kind.clone(), table.params.clone())],
            DmOptions::default(),
        )
        .map_err(|source| DmError::Load {
            name: name.to_string(),
            kind: table.kind.clone(),
            params: table.params.clone(),
            source,
        })?;
        dm.device_suspend(&id, DmOptions::default())
            .map_err(|source| DmError::Resume {
                name: name.to_string(),
                source,
            })?;
        Ok(())
    }

    fn suspend(&self, name: &str) -> Result<()> {
        let (dm, id) = self.device(name)?;
        dm.device_suspend(&id, DmOptions::default().set_flags(DmFlags::DM_SUSPEND))
            .map_err(|source| DmError::Suspend {
                name: name.to_string(),
                source,
            })?;
        Ok(())
    }

    fn resume(&self, name: &str) -> Result<()> {
        let (dm, id) = self.device(name)?;
        dm.device_suspend(&id, DmOptions::default())
            .map_err(|source| DmError::Resume {
                name: name.to_string(),
                source,
            })?;
        Ok(())
    }

    fn suspended(&self, name: &str) -> Result<bool> {
        let (dm, id) = self.device(name)?;
        let info = dm.device_info(&id).map_err(|source| DmError::State {
            name: name.to_string(),
            source,
        })?;
        Ok(info.flags().contains(DmFlags::DM_SUSPEND))
    }

    fn remove(&self, name: &str) -> Result<()> {
        let (dm, id) = self.device(name)?;
        dm.device_remove(&id, DmOptions::default())
            .map_err(|source| DmError::Remove {
                name: name.to_string(),
                source,
            })?;
        Ok(())
    }

    fn number(&self, name: &str) -> Result<DevNum> {
        let (dm, id) = self.device(name)?;
        let d = dm
            .device_info(&id)
            .map_err(|source| DmError::NoDevice {
                name: name.to_string(),
                source: Some(source),
            })?
            .device();
        Ok(DevNum {
            major: d.major,
            minor: d.minor,
        })
    }

    fn raw_table(&self, name: &str) -> Result<String> {
        let (dm, id) = self.device(name)?;
        let (_, rows) = dm
            .table_status(
                &id,
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|source| DmError::ReadTable {
                name: name.to_string(),
                source,
            })?;
        line(name, rows)
    }

    fn status(&self, name: &str) -> Result<StatusLine> {
        let (dm, id) = self.device(name)?;
        let (_, rows) = dm
            .table_status(&id, DmOptions::default())
            .map_err(|source| DmError::ReadStatus {
                name: name.to_string(),
                source,
            })?;
        let l = line(name, rows)?;
        l.parse().map_err(|error| DmError::Parse {
            name: name.to_string(),
            error,
        })
    }
}
