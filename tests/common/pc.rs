//! A diskless PC for the boot tests: qemu with its iPXE network ROM, on qemu's user network
//! (where 10.0.2.2 is this host), fetching an iPXE script by TFTP; and the golden image it
//! boots, a sector that counts its boots on its own disk (tests/data/counter-boot.asm).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How this host looks from the PC.
pub const HOST: &str = "10.0.2.2";

/// A golden image of `size` bytes: the counting boot sector, then a counter of 0 in LBA 1.
pub fn counter_image(path: &Path, size: u64) {
    let asm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/counter-boot.asm");
    let bin = path.with_extension("bin");
    let out = Command::new("nasm")
        .args(["-f", "bin"])
        .arg(&asm)
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("nasm (Debian package nasm) assembles the boot sector");
    assert!(
        out.status.success(),
        "nasm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = std::fs::read(&bin).unwrap();
    assert_eq!(image.len(), 512);
    // Sparse: the boot sector, a zero counter, then holes.
    let f = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut &f, &image).unwrap();
    f.set_len(size).unwrap();
}

/// How a boot ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Boot {
    /// The boot sector ran and printed the counter it wrote.
    Counted(u32),
    /// It ran but its disk I/O failed.
    DiskError,
    /// Nothing booted within the time (the serial log so far).
    Nothing(String),
}

/// Boots a PC whose iPXE runs `script` (the text of a `#!ipxe` file), for at most `limit`.
/// `stop_early` is checked every half second and ends a boot that is known to fail.
pub fn boot(dir: &Path, script: &str, limit: Duration, stop_early: &dyn Fn() -> bool) -> Boot {
    boot_with(dir, script, limit, stop_early, &[])
}

/// The PC's second NIC (iPXE's net1): an e1000 on a tap device of this host, with this MAC.
pub fn tap_nic(tap: &str, mac: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("tap,id=n1,ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("e1000,netdev=n1,mac={mac}"),
    ]
}

/// As [`boot`], with more qemu arguments (another NIC).
pub fn boot_with(
    dir: &Path,
    script: &str,
    limit: Duration,
    stop_early: &dyn Fn() -> bool,
    extra: &[String],
) -> Boot {
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::write(tftp.join("boot.ipxe"), script).unwrap();
    let mut nics = vec![
        "-netdev".to_string(),
        format!("user,id=n0,tftp={},bootfile=boot.ipxe", tftp.display()),
        "-device".to_string(),
        "e1000,netdev=n0".to_string(),
    ];
    nics.extend_from_slice(extra);
    run(dir, &nics, limit, stop_early)
}

/// A PC with these NICs only, booting as its ROM does by itself: PXE on each in turn.
pub fn boot_from(
    dir: &Path,
    nics: &[String],
    limit: Duration,
    stop_early: &dyn Fn() -> bool,
) -> Boot {
    run(dir, nics, limit, stop_early)
}

/// The serial log of the last boot in `dir`.
pub fn serial_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default()
}

fn run(dir: &Path, nics: &[String], limit: Duration, stop_early: &dyn Fn() -> bool) -> Boot {
    let serial = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial);
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-nodefaults", "-boot", "n"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(nics)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (Debian package qemu-system-x86) runs the PC");
    let start = Instant::now();
    let log = || std::fs::read_to_string(&serial).unwrap_or_default();
    loop {
        if let Some(n) = counted(&log()) {
            let _ = qemu.wait();
            return n;
        }
        if let Ok(Some(_)) = qemu.try_wait() {
            return counted(&log()).unwrap_or_else(|| Boot::Nothing(log()));
        }
        if start.elapsed() > limit || stop_early() {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return counted(&log()).unwrap_or_else(|| Boot::Nothing(log()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn counted(log: &str) -> Option<Boot> {
    if log.contains("cowctl-boot disk error") {
        return Some(Boot::DiskError);
    }
    let rest = log.split("cowctl-boot counter=").nth(1)?;
    let line = rest.split("\r\n").next()?;
    if !rest.contains("\r\n") {
        return None; // still printing
    }
    line.trim().parse().ok().map(Boot::Counted)
}
