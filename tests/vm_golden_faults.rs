//! The golden image's disk returns read errors (VM only, through scripts/test-kernel.sh). The
//! image is a device-mapper device over a loop device of the image file, whose 32 KiB at
//! 4 MiB are `error` targets: a failing disk under the image, as dm-flakey or a dying drive
//! gives. On both backends, open-iscsi in the VM is each PC's initiator: a PC that reads there
//! gets an I/O error with the SCSI sense the target sends (the userspace target: MEDIUM
//! ERROR, unrecovered read error), the rest of its disk reads the golden image, the other PC
//! writes and reads on, the service answers `status`, and a write of whole chunks over the
//! bad range makes those chunks the PC's own, readable again.

#![allow(clippy::cast_possible_truncation)] // offsets of a 16 MiB test image

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernel::{modprobe, require_vm, sh, Iscsid, Loop, Rng};
use common::room::{Golden, Iscsi, Pc, Room, RoomBuilder};

const GOLDEN: usize = 16 << 20;
const BAD_AT: u64 = 4 << 20;
const BAD_LEN: u64 = 32 << 10;

/// The golden image file behind a dm device (a linear map of a loop device) that starts to
/// fail every read of the bad range once told to, as a disk going bad under a running room.
/// Removed when dropped. (Its name does not start with "cowctl-": that is the kernel
/// backend's, which counts such devices as its own.)
struct FailingDisk {
    name: String,
    lo: Loop,
}

impl FailingDisk {
    fn over(file: &Path, tag: &str) -> FailingDisk {
        modprobe("dm-mod");
        let lo = Loop::attach(file, true);
        let name = format!("failing-golden-{tag}-{}", std::process::id());
        let table = format!("0 {} linear {} 0\n", GOLDEN as u64 / 512, lo.dev);
        sh(
            "dmsetup",
            &["create", &name, "--readonly", "--table", &table],
        );
        FailingDisk { name, lo }
    }

    /// From now on the bad range fails every read (nothing of it stays in a page cache).
    fn fail(&self) {
        let (bad, len) = (BAD_AT / 512, BAD_LEN / 512);
        let rest = GOLDEN as u64 / 512 - bad - len;
        let table = format!(
            "0 {bad} linear {d} 0\n{bad} {len} error\n{} {rest} linear {d} {}\n",
            bad + len,
            bad + len,
            d = self.lo.dev
        );
        sh("dmsetup", &["reload", &self.name, "--table", &table]);
        sh("dmsetup", &["resume", &self.name]);
        std::fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
    }

    /// Its node from devtmpfs (the VM has no udev to make /dev/mapper's).
    fn path(&self) -> PathBuf {
        common::kernel::dm_node(&self.name)
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("dmsetup")
            .args(["remove", &self.name])
            .output();
    }
}

/// Reads `len` bytes at `at` of a disk with O_DIRECT (nothing from the page cache).
fn read_direct(dev: &Path, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = common::kernel::AlignedBuf::new(len);
    f.read_exact_at(buf.as_mut(), at)?;
    Ok(buf.as_ref().to_vec())
}

fn write_direct(dev: &Path, at: u64, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_SYNC)
        .open(dev)
        .unwrap();
    f.write_all_at(common::kernel::AlignedBuf::from(data).as_ref(), at)
        .unwrap();
}

fn room(backend: RoomBuilder, golden: &FailingDisk, port: u16) -> Room {
    backend
        .golden(Golden::Link(golden.path()))
        .cow("16MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.fault")
                .portal(&format!("127.0.0.1:{port}"))
                .acl("initiator"),
        )
        .pc(Pc::new("pc-1").initiator("iqn.2024-01.lan.fault:init-1"))
        .pc(Pc::new("pc-2").initiator("iqn.2024-01.lan.fault:init-2"))
        .files()
}

fn dmesg() -> String {
    sh("dmesg", &[])
}

/// What both backends must show; `errors` are the errnos the PC's read may fail with, and
/// `sense` what the kernel must log of the target's answer.
fn a_failing_golden_disk_fails_only_the_reads_it_serves(
    backend: RoomBuilder,
    port: u16,
    errors: &[i32],
    sense: &[&str],
) {
    require_vm();
    let dir = tempfile::tempdir().unwrap();
    let golden = Rng(41).bytes(GOLDEN);
    std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
    let disk = FailingDisk::over(&dir.path().join("golden.img"), &port.to_string());
    let room = room(backend, &disk, port);
    room.cowctl(&["apply"]);

    let iscsid = Iscsid::start_for(&format!("127.0.0.1:{port}"));
    iscsid.iface("pc1", "iqn.2024-01.lan.fault:init-1");
    iscsid.iface("pc2", "iqn.2024-01.lan.fault:init-2");
    let pc1 = iscsid
        .login("pc1", "iqn.2024-01.lan.fault:pc-1", None)
        .unwrap();
    let pc2 = iscsid
        .login("pc2", "iqn.2024-01.lan.fault:pc-2", None)
        .unwrap();

    disk.fail();
    let before = dmesg();
    let bad = read_direct(&pc1, BAD_AT, 4096);
    let errno = bad.as_ref().err().and_then(std::io::Error::raw_os_error);
    assert!(
        errno.is_some_and(|e| errors.contains(&e)),
        "a read of the failing range is one of the errors {errors:?}, not data: {:?}",
        bad.map(|d| d.len())
    );
    let log = dmesg();
    let new = &log[before.len().min(log.len())..];
    for s in sense {
        assert!(
            new.contains(s),
            "the kernel logged the target's sense ({s}):\n{new}"
        );
    }
    // The rest of the disk, and the other PC, carry on.
    let head = read_direct(&pc1, 0, BAD_AT as usize).unwrap();
    assert_eq!(head, &golden[..BAD_AT as usize]);
    let after = read_direct(&pc1, BAD_AT + BAD_LEN, 1 << 20).unwrap();
    let from = (BAD_AT + BAD_LEN) as usize;
    assert_eq!(after, &golden[from..from + (1 << 20)]);
    write_direct(&pc2, 1 << 20, &[0x5a; 64 << 10]);
    assert_eq!(
        read_direct(&pc2, 1 << 20, 64 << 10).unwrap(),
        vec![0x5a; 64 << 10]
    );
    let status = room.cowctl(&["status"]);
    assert!(
        status.contains("pc-1") && status.contains("pc-2"),
        "{status}"
    );

    // Whole chunks written over the bad range need nothing from the golden image.
    write_direct(&pc1, BAD_AT, &vec![0x77; BAD_LEN as usize]);
    assert_eq!(
        read_direct(&pc1, BAD_AT, BAD_LEN as usize).unwrap(),
        vec![0x77; BAD_LEN as usize],
        "the PC's own chunks over the failing range read back"
    );
    drop(iscsid);
    room.cowctl(&["down"]);
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn userspace_a_failing_golden_disk_gives_a_medium_error_and_the_room_carries_on() {
    a_failing_golden_disk_fails_only_the_reads_it_serves(
        RoomBuilder::userspace(),
        3271,
        &[libc::ENODATA], // Linux's errno for a disk's medium error
        &["Medium Error", "Unrecovered read error"],
    );
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn kernel_a_failing_golden_disk_fails_the_read_and_the_room_carries_on() {
    common::kernel::modprobe_room();
    a_failing_golden_disk_fails_only_the_reads_it_serves(
        RoomBuilder::kernel(),
        3272,
        &[libc::EIO, libc::ENODATA],
        &["Sense Key"],
    );
}
