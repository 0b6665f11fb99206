//! A first (or another) version from the file an admin built: raw, qcow2, vmdk, vhdx or vdi,
//! converted by `qemu-img convert` to a sparse raw disk.

use std::path::Path;
use std::process::Command;

use super::error::Error;

type Result<T, E = Error> = std::result::Result<T, E>;

/// The formats `qemu-img` is asked to read (its probe decides which one a file is).
pub const FORMATS: [&str; 5] = ["raw", "qcow2", "vmdk", "vhdx", "vdi"];

/// What `qemu-img info` says the file is.
pub fn format_of(src: &Path) -> Result<String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(src)
        .output()
        .map_err(Error::NoQemuImg)?;
    if !out.status.success() {
        return Err(Error::QemuImgInfo {
            src: src.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|source| Error::QemuImgJson {
            src: src.to_path_buf(),
            source,
        })?;
    let format = info["format"].as_str().unwrap_or_default().to_string();
    if !FORMATS.contains(&format.as_str()) {
        return Err(Error::Format {
            src: src.to_path_buf(),
            format,
            imports: &FORMATS,
        });
    }
    Ok(format)
}

/// Converts `src` into the new raw file `out` (which must not exist), sparse, synced.
pub fn convert(src: &Path, format: &str, out: &Path) -> Result<()> {
    if out.symlink_metadata().is_ok() {
        return Err(Error::Exists {
            path: out.to_path_buf(),
        });
    }
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", format, "-O", "raw", "-S", "4k"])
        .arg(src)
        .arg(out)
        .status()
        .map_err(Error::QemuImg)?;
    if !status.success() {
        return Err(Error::Convert {
            src: src.to_path_buf(),
            status,
        });
    }
    std::fs::File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Flush {
            path: out.to_path_buf(),
            source,
        })
}
