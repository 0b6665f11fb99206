//! A real operating system for the boot tests: Debian's kernel, an initramfs whose
//! open-iscsi logs in to the disk the firmware published in the iBFT, and a root file system
//! whose init checks the files earlier boots wrote and writes its own
//! (scripts/real-os/build.sh). The PC is qemu with BIOS (its iPXE ROM) or UEFI (OVMF).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The golden disk, built once per test process (it takes about 2 s; the script replaces
/// the file in one rename, so a copy being read is never torn).
fn built() -> &'static Path {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = repo.join("target/real-os");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("golden.img");
        let run = Command::new(repo.join("scripts/real-os/build.sh"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "scripts/real-os/build.sh: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

/// Copies the real OS's golden disk to `dest` (sparse, as built).
pub fn golden(dest: &Path) {
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(built())
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PC's firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with qemu's iPXE ROM: sanboot through INT 13h.
    Bios,
    /// OVMF (UEFI) with the NIC's EFI driver: PXE, then Debian's ipxe.efi, then sanboot
    /// through a block-I/O protocol.
    Uefi,
}

/// What the OS does on this boot (scripts/real-os/os-init, told through qemu's fw_cfg).
#[derive(Clone, Copy, Debug)]
pub enum Job {
    /// Check earlier boots' files, write its own, power off.
    Boot,
    /// The same, then write and sync a file after another for this many seconds.
    Write(u32),
}

/// A booting PC: qemu, its serial log, and its end.
pub struct Pc {
    qemu: Child,
    serial: PathBuf,
    started: Instant,
}

/// What a booted OS reported on its serial console.
#[derive(Debug)]
pub struct Report {
    pub log: String,
    /// How long the PC took from power-on to its report.
    pub took: Duration,
}

impl Pc {
    /// Powers on a PC in `dir` with these NICs (`-netdev`/`-device` arguments).
    pub fn start(dir: &Path, firmware: Firmware, nics: &[String], job: Job) -> Pc {
        Pc::start_in(None, dir, firmware, nics, job)
    }

    /// The same, on another machine of the network: in network namespace `netns`.
    pub fn start_in(
        netns: Option<&str>,
        dir: &Path,
        firmware: Firmware,
        nics: &[String],
        job: Job,
    ) -> Pc {
        let serial = dir.join("serial.log");
        let _ = std::fs::remove_file(&serial);
        let job = match job {
            Job::Boot => "boot".to_string(),
            Job::Write(s) => format!("write={s}"),
        };
        let mut qemu = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        qemu.args(["-accel", "tcg", "-m", "512", "-display", "none"])
            .args(["-no-reboot", "-nodefaults", "-boot", "n"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-fw_cfg")
            .arg(format!("name=opt/cowctl/job,string={job}"))
            .args(nics);
        if firmware == Firmware::Uefi {
            let vars = dir.join("ovmf-vars.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                .expect("OVMF's variable store (Debian package ovmf)");
            qemu.arg("-drive")
                .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        let qemu = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86) runs the PC");
        Pc {
            qemu,
            serial,
            started: Instant::now(),
        }
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the log holds `what` (true) or the PC stops or `limit` passes (false).
    pub fn wait_for(&mut self, what: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.log().contains(what) {
                return true;
            }
            if matches!(self.qemu.try_wait(), Ok(Some(_))) || Instant::now() > end {
                return self.log().contains(what);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for the OS to report and power off, for at most `limit`; kills it after that.
    pub fn finish(mut self, limit: Duration) -> Report {
        let reported = self.wait_for(END, limit);
        let took = self.started.elapsed();
        if reported {
            // It powers off right after; give it a moment, then make sure.
            let end = Instant::now() + Duration::from_secs(20);
            while matches!(self.qemu.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        Report {
            log: self.log(),
            took,
        }
    }
}

impl Drop for Pc {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

const END: &str = "cowctl-os powering off";
/// What the kernel's log (and the OS's own) says of I/O the OS lost or saw fail.
const IO_ERRORS: [&str; 8] = [
    "cowctl-os write failed",
    "I/O error",
    "critical medium error",
    "Buffer I/O",
    "EXT4-fs error",
    "session recovery timed out",
    "rejecting I/O",
    "Remounting filesystem read-only",
];
const CONNECTION_ERROR: &str = "detected conn error";

/// The lines of a console log that tell of failed I/O or a broken connection.
pub fn trouble(log: &str) -> Vec<String> {
    let mut signs = IO_ERRORS.to_vec();
    signs.push(CONNECTION_ERROR);
    lines_with(log, &signs)
}

fn lines_with(log: &str, signs: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| signs.iter().any(|s| l.contains(s)))
        .map(str::to_string)
        .collect()
}

impl Report {
    /// The boot's line: its number, how many earlier files it checked, how many were bad.
    pub fn boot(&self) -> Option<(u32, u32, u32)> {
        let line = self
            .log
            .lines()
            .find_map(|l| l.split("cowctl-os boot=").nth(1))?;
        let mut fields = line.split_whitespace();
        let n = fields.next()?.parse().ok()?;
        let field =
            |f: Option<&str>, key: &str| -> Option<u32> { f?.strip_prefix(key)?.parse().ok() };
        let checked = field(fields.next(), "checked=")?;
        let bad = field(fields.next(), "bad=")?;
        Some((n, checked, bad))
    }

    /// The files the OS wrote and synced after its boot line (Job::Write).
    pub fn synced(&self) -> Vec<String> {
        self.log
            .lines()
            .filter_map(|l| l.split("cowctl-os synced ").nth(1))
            .filter_map(|s| s.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Lines of the kernel's log (and the OS's own) that tell of I/O the OS lost or saw fail.
    pub fn io_errors(&self) -> Vec<String> {
        lines_with(&self.log, &IO_ERRORS)
    }

    /// Lines of the kernel's log that tell of the iSCSI connection failing.
    pub fn connection_errors(&self) -> Vec<String> {
        lines_with(&self.log, &[CONNECTION_ERROR])
    }

    /// How many times the OS's iscsid made a failed connection again. It makes one at its
    /// start, as on any installed system: it takes over the session the initramfs's
    /// iscsistart logged in, by logging in again.
    pub fn recoveries(&self) -> usize {
        self.lines_with(&["is operational after recovery"]).len()
    }

    fn lines_with(&self, signs: &[&str]) -> Vec<String> {
        lines_with(&self.log, signs)
    }

    /// The OS's uptime at each file it synced (Job::Write), in order.
    pub fn synced_at(&self) -> Vec<f64> {
        self.log
            .lines()
            .filter_map(|l| l.split("cowctl-os synced ").nth(1))
            .filter_map(|s| s.split(" at ").nth(1)?.trim().parse().ok())
            .collect()
    }

    /// The longest time between two synced files: what a write that waited saw.
    pub fn longest_stall(&self) -> f64 {
        self.synced_at()
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0, f64::max)
    }
}

/// qemu's user network with this TFTP folder and boot file: the host is 10.0.2.2.
pub fn user_nic(tftp: &Path, bootfile: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("user,id=n0,tftp={},bootfile={bootfile}", tftp.display()),
        "-device".into(),
        "e1000,netdev=n0".into(),
    ]
}
