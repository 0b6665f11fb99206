//! A first (or another) version from the file an admin built: raw, qcow2, vmdk, vhdx or vdi,
//! converted by `qemu-img convert` to a sparse raw disk.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The formats `qemu-img` is asked to read (its probe decides which one a file is).
pub const FORMATS: [&str; 5] = ["raw", "qcow2", "vmdk", "vhdx", "vdi"];

/// What `qemu-img info` says the file is.
pub fn format_of(src: &Path) -> Result<String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(src)
        .output()
        .context("cannot run qemu-img (Debian: apt-get install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img cannot read {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("qemu-img info {} said no JSON", src.display()))?;
    let format = info["format"].as_str().unwrap_or_default().to_string();
    if !FORMATS.contains(&format.as_str()) {
        bail!(
            "{} is a {format:?} image; cowctl imports {}",
            src.display(),
            FORMATS.join(", ")
        );
    }
    Ok(format)
}

/// Converts `src` into the new raw file `out` (which must not exist), sparse, synced.
pub fn convert(src: &Path, format: &str, out: &Path) -> Result<()> {
    if out.symlink_metadata().is_ok() {
        bail!("{} already exists", out.display());
    }
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", format, "-O", "raw", "-S", "4k"])
        .arg(src)
        .arg(out)
        .status()
        .context("cannot run qemu-img")?;
    if !status.success() {
        bail!("qemu-img convert {} failed ({status})", src.display());
    }
    std::fs::File::open(out)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {}", out.display()))
}
