//! qemu-io as a user's tool on a PC's export (an NBD or iSCSI URL): one command, its
//! output, and whether a write or a patterned read went through.

use std::process::Command;

/// qemu-io's output (stdout and stderr) for `cmd` on `target`.
pub fn qemu_io(target: &str, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, target])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A write's output: it wrote, and nothing failed.
pub fn wrote(out: &str) -> bool {
    out.contains("wrote") && !out.contains("failed")
}

/// `len` bytes at `at` of `target` all read as `pattern`.
pub fn reads(target: &str, at: u64, len: u64, pattern: u8) -> bool {
    let out = qemu_io(target, &format!("read -P {pattern:#x} {at} {len}"));
    out.contains("read ") && !out.contains("failed") && !out.contains("mismatch")
}
