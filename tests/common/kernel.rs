//! Driving the real kernel from tests that run in the VM (scripts/test-kernel.sh):
//! loop devices, dm snapshots and direct I/O. Every test resource is named `cowtest-*`.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cowctl::dm::{SnapshotStatus, StatusLine, TableLine};

/// Fails (never skips) when not inside the test VM.
pub fn require_vm() {
    assert!(
        std::env::var_os("COWCTL_IN_VM").is_some(),
        "kernel tests need the real kernel: run scripts/test-kernel.sh"
    );
}

pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd} (scripts/provision.sh --tests installs it): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn cowctl(args: &[&str]) -> String {
    sh(env!("CARGO_BIN_EXE_cowctl"), args)
}

pub fn modprobe(module: &str) {
    sh("modprobe", &[module]);
}

/// What a kernel room needs: dm-snapshot, loop devices and LIO's iSCSI target.
pub fn modprobe_room() {
    for m in [
        "dm-snapshot",
        "loop",
        "target_core_mod",
        "target_core_iblock",
        "iscsi_target_mod",
    ] {
        modprobe(m);
    }
}

/// Appends a line the kernel printed to the results folder, for the parser's round-trip data.
pub fn record_line(line: &str) {
    if let Some(dir) = std::env::var_os("COWCTL_RESULTS") {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join("dm-lines.txt"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let mut args = vec!["-f", "--show"];
        if read_only {
            args.push("-r");
        }
        let f = file.to_str().unwrap();
        args.push(f);
        Loop {
            dev: sh("losetup", &args).trim().to_string(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A dm snapshot over two loop devices. Removed on drop.
pub struct Snapshot {
    pub name: String,
    pub node: PathBuf,
    _origin: Loop,
    _cow: Loop,
}

impl Snapshot {
    pub fn create(
        name: &str,
        golden: &Path,
        cow: &Path,
        mode: &str,
        chunk_sectors: u32,
    ) -> Snapshot {
        let origin = Loop::attach(golden, true);
        let cow_loop = Loop::attach(cow, false);
        let sectors = std::fs::metadata(golden).unwrap().len() / 512;
        let table = format!(
            "0 {sectors} snapshot {} {} {mode} {chunk_sectors}",
            origin.dev, cow_loop.dev
        );
        sh(
            "dmsetup",
            &["create", "--noudevsync", name, "--table", &table],
        );
        // No udev: find the node devtmpfs made for the dm device.
        let node = dm_node(name);
        assert!(node.exists(), "{} missing", node.display());
        let s = Snapshot {
            name: name.to_string(),
            node,
            _origin: origin,
            _cow: cow_loop,
        };
        let t = sh("dmsetup", &["table", name]);
        record_line(t.trim());
        let parsed: TableLine = t.trim().parse().unwrap();
        assert_eq!(parsed.to_string(), t.trim(), "table line round trip");
        s
    }

    /// Parses `dmsetup status` with the typed parser and checks it prints back the same.
    pub fn status(&self) -> SnapshotStatus {
        let line = sh("dmsetup", &["status", &self.name]);
        let line = line.trim();
        record_line(line);
        let parsed: StatusLine = line.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.to_string(), line, "status line round trip");
        parsed.status
    }

    pub fn open(&self, direct: bool) -> File {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            o.custom_flags(nix::libc::O_DIRECT);
        }
        o.open(&self.node).unwrap()
    }

    /// The whole device, read with O_DIRECT so no page cache hides what the kernel holds.
    pub fn read_all(&self) -> Vec<u8> {
        let f = self.open(true);
        let len = cowctl::engine::backing::file_or_device_size(&f).unwrap() as usize;
        let mut buf = AlignedBuf::new(len);
        f.read_exact_at(buf.as_mut(), 0).unwrap();
        buf.as_ref().to_vec()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let ok = Command::new("dmsetup")
            .args(["remove", "--noudevsync", &self.name])
            .status()
            .map(|s| s.success());
        assert!(
            matches!(ok, Ok(true)) || std::thread::panicking(),
            "dmsetup remove {} failed",
            self.name
        );
    }
}

/// A 4096-aligned buffer for O_DIRECT.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        AlignedBuf { raw, start, len }
    }
    pub fn from(data: &[u8]) -> Self {
        let mut b = Self::new(data.len());
        b.as_mut().copy_from_slice(data);
        b
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
    pub fn as_ref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// A small deterministic generator, so failures replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// open-iscsi's daemon, with an initiator per named iface. Logs out and stops on drop.
pub struct Iscsid {
    child: std::process::Child,
    /// The portal logins go to.
    portal: String,
}

impl Iscsid {
    /// iscsid for the VM's own LIO portal.
    pub fn start() -> Iscsid {
        Iscsid::start_for("127.0.0.1:3260")
    }

    /// iscsid for logins to `portal` (e.g. the host's, from the VM).
    pub fn start_for(portal: &str) -> Iscsid {
        for m in [
            "iscsi_tcp",
            "sd_mod",
            "target_core_mod",
            "target_core_iblock",
            "iscsi_target_mod",
        ] {
            modprobe(m);
        }
        std::fs::create_dir_all("/etc/iscsi").unwrap();
        if !Path::new("/etc/iscsi/initiatorname.iscsi").exists() {
            std::fs::write(
                "/etc/iscsi/initiatorname.iscsi",
                "InitiatorName=iqn.1993-08.org.debian:01:cowctl-vm\n",
            )
            .unwrap();
        }
        std::fs::create_dir_all("/run/lock/iscsi").unwrap();
        let child = Command::new("iscsid")
            .arg("-f")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("iscsid");
        // Ready when iscsiadm can reach it: 0 (sessions) or 21 (no sessions), not 20
        // (cannot connect to iscsid).
        let start = std::time::Instant::now();
        loop {
            let code = Command::new("iscsiadm")
                .args(["-m", "session"])
                .output()
                .unwrap()
                .status
                .code();
            if matches!(code, Some(0 | 21)) {
                break;
            }
            assert!(
                start.elapsed().as_secs() < 30,
                "iscsid did not come up (iscsiadm exit {code:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Iscsid {
            child,
            portal: portal.to_string(),
        }
    }

    /// An iface whose logins present `initiator` as their name.
    pub fn iface(&self, name: &str, initiator: &str) {
        let _ = Command::new("iscsiadm")
            .args(["-m", "iface", "-I", name, "-o", "new"])
            .output();
        sh(
            "iscsiadm",
            &[
                "-m",
                "iface",
                "-I",
                name,
                "-o",
                "update",
                "-n",
                "iface.initiatorname",
                "-v",
                initiator,
            ],
        );
    }

    /// Logs in through `iface`; returns the SCSI disk, or iscsiadm's complaint.
    pub fn login(
        &self,
        iface: &str,
        target: &str,
        chap: Option<(&str, &str)>,
    ) -> Result<PathBuf, String> {
        let node = |extra: &[&str]| iscsiadm_node(&self.portal, iface, target, extra);
        let _ = node(&["-o", "delete"]);
        let out = node(&["-o", "new"]);
        assert!(
            out.status.success(),
            "iscsiadm node new: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        node(&[
            "-o",
            "update",
            "-n",
            "node.session.initial_login_retry_max",
            "-v",
            "1",
        ]);
        // A target that is gone fails I/O after 20 s instead of the default two minutes.
        node(&[
            "-o",
            "update",
            "-n",
            "node.session.timeo.replacement_timeout",
            "-v",
            "20",
        ]);
        if let Some((user, password)) = chap {
            node(&[
                "-o",
                "update",
                "-n",
                "node.session.auth.authmethod",
                "-v",
                "CHAP",
            ]);
            node(&[
                "-o",
                "update",
                "-n",
                "node.session.auth.username",
                "-v",
                user,
            ]);
            node(&[
                "-o",
                "update",
                "-n",
                "node.session.auth.password",
                "-v",
                password,
            ]);
        }
        let out = node(&["--login"]);
        if !out.status.success() {
            let _ = node(&["-o", "delete"]);
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // The disk shows in sysfs before the kernel has finished adding it: wait until it
        // opens and has a size (a re-login can briefly answer ENXIO).
        let usable = |d: &Path| {
            std::fs::File::open(d).is_ok_and(|f| {
                cowctl::engine::backing::file_or_device_size(&f).is_ok_and(|n| n > 0)
            })
        };
        for _ in 0..100 {
            if let Some(disk) = session_disk(target).filter(|d| usable(d)) {
                return Ok(disk);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("logged in to {target} but no SCSI disk appeared");
    }

    pub fn logout(&self, iface: &str, target: &str) {
        let _ = iscsiadm_node(&self.portal, iface, target, &["--logout"]);
        let _ = iscsiadm_node(&self.portal, iface, target, &["-o", "delete"]);
    }

    /// Waits until the session to `target` is logged in again (after its target was paused).
    pub fn wait_logged_in(&self, target: &str) -> std::time::Duration {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(90) {
            if session_dir(target).is_some_and(|d| {
                std::fs::read_to_string(d.join("state")).is_ok_and(|s| s.trim() == "LOGGED_IN")
            }) {
                return start.elapsed();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("the initiator did not log in to {target} again within 90 s");
    }
}

impl Drop for Iscsid {
    fn drop(&mut self) {
        let _ = Command::new("iscsiadm")
            .args(["-m", "node", "-U", "all"])
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `iscsiadm -m node` for one target on a portal through one iface.
fn iscsiadm_node(portal: &str, iface: &str, target: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["-m", "node", "-T", target, "-p", portal, "-I", iface];
    args.extend_from_slice(extra);
    Command::new("iscsiadm").args(&args).output().unwrap()
}

fn session_dir(target: &str) -> Option<PathBuf> {
    std::fs::read_dir("/sys/class/iscsi_session")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("targetname")).is_ok_and(|t| t.trim() == target))
}

/// The sdX of the session to `target`, found in sysfs (no udev).
fn session_disk(target: &str) -> Option<PathBuf> {
    let session = session_dir(target)?;
    let device = std::fs::canonicalize(session.join("device")).ok()?;
    let mut stack = vec![device];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = e.path();
            if e.file_name() == "block" {
                let disk = std::fs::read_dir(&p).ok()?.flatten().next()?.file_name();
                let node = PathBuf::from("/dev").join(disk);
                return node.exists().then_some(node);
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) && !e.file_type().unwrap().is_symlink() {
                stack.push(p);
            }
        }
    }
    None
}

/// Reads a whole block device with O_DIRECT.
pub fn read_device(dev: &Path) -> Vec<u8> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let len = cowctl::engine::backing::file_or_device_size(&f).unwrap() as usize;
    let mut buf = AlignedBuf::new(len);
    f.read_exact_at(buf.as_mut(), 0).unwrap();
    buf.as_ref().to_vec()
}

/// A dm device's node from devtmpfs (the VM has no udev to make /dev/mapper's).
pub fn dm_node(name: &str) -> PathBuf {
    let minor = sh(
        "dmsetup",
        &["info", "-c", "--noheadings", "-o", "minor", name],
    );
    PathBuf::from(format!("/dev/dm-{}", minor.trim()))
}

/// An AoE disk (`shelf_slot` as "e9.3") as the kernel's aoe driver on `lo` finds it, once it
/// has its whole `size`; devices the driver knew from earlier tests are forgotten first.
pub fn aoe_on_lo(shelf_slot: &str, size: u64) -> PathBuf {
    sh("modprobe", &["aoe", "aoe_iflist=lo"]);
    let _ = Command::new("aoe-flush").arg("-a").output();
    let disk = Path::new("/dev/etherd").join(shelf_slot);
    for _ in 0..150 {
        let _ = Command::new("aoe-discover").output();
        let found = File::open(&disk)
            .ok()
            .and_then(|f| cowctl::engine::backing::file_or_device_size(&f).ok());
        if found == Some(size) {
            return disk;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the aoe driver found no {shelf_slot} of {size} bytes on lo");
}

/// Writes with O_DIRECT at a sector-aligned offset.
pub fn write_device(dev: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .unwrap();
    f.write_all_at(AlignedBuf::from(data).as_ref(), offset)
        .unwrap();
}

/// What a killed `cowctl serve` must leave: its COW loads in dm-snapshot with every synced
/// write (3 MiB of 0x11 from offset 0) and, past them, the golden image or a write that was
/// in flight (one of `in_flight` between 4 and 12 MiB).
pub fn assert_killed_service_left_its_synced_writes(
    dir: &Path,
    name: &str,
    golden: &[u8],
    in_flight: &[u8],
) {
    let snap = Snapshot::create(
        name,
        &dir.join("golden.img"),
        &dir.join("cow/pc-1.cow"),
        "PO",
        8,
    );
    assert!(
        matches!(snap.status(), SnapshotStatus::Usage(u) if u.sectors_allocated > 3 << 11),
        "the kernel loads the store with the synced exceptions"
    );
    let disk = snap.read_all();
    assert!(
        disk[..3 << 20].iter().all(|&b| b == 0x11),
        "every synced write is there"
    );
    for (i, (&got, &gold)) in disk.iter().zip(golden).enumerate().skip(3 << 20) {
        let written = (4 << 20..12 << 20).contains(&i) && in_flight.contains(&got);
        assert!(
            got == gold || written,
            "byte {i} is {got}: neither golden nor written"
        );
    }
}

/// A file system made on a loop device and mounted for a test (as root); unmounted, then
/// detached (the fields drop after `drop`) and its image removed after it.
pub struct Mounted {
    _device: Loop,
    dir: tempfile::TempDir,
}

impl Mounted {
    /// `mkfs` with `args` on a fresh sparse 512 MiB file, mounted.
    pub fn new(mkfs: &str, args: &[&str]) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let mut all = args.to_vec();
        all.push(image.to_str().unwrap());
        sh(mkfs, &all);
        let device = Loop::attach(&image, false);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        sh("mount", &[&device.dev, mnt.to_str().unwrap()]);
        Mounted {
            _device: device,
            dir,
        }
    }

    /// xfs, with reflink or without.
    pub fn xfs(reflink: bool) -> Mounted {
        let option = if reflink { "reflink=1" } else { "reflink=0" };
        Mounted::new("mkfs.xfs", &["-q", "-f", "-m", option])
    }

    pub fn btrfs() -> Mounted {
        Mounted::new("mkfs.btrfs", &["-q", "-f"])
    }

    pub fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt()).status();
    }
}
