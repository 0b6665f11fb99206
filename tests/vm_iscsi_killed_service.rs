//! The userspace iSCSI target's COW belongs to the kernel too (VM only, through
//! scripts/test-kernel.sh): open-iscsi's kernel initiator writes through `cowctl serve`,
//! fsyncs, keeps writing, and the service is killed with SIGKILL; the kernel's dm-snapshot
//! then loads the COW it left with every synced write in it.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::process::Command;
use std::time::Duration;

use common::kernel::{modprobe, read_device, require_vm, sh, write_device, Iscsid, Rng};
use common::room::{Golden, Iscsi, Pc, RoomBuilder};

const GOLDEN: usize = 16 << 20;
const TARGET: &str = "iqn.2024-01.lan.vm:pc-1";
const INITIATOR: &str = "iqn.2024-01.lan.vm:init-pc-1";

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_cow_written_over_iscsi_loads_in_dm_snapshot_with_every_synced_write() {
    require_vm();
    modprobe("dm-snapshot");
    modprobe("loop");
    let golden = Rng(9).bytes(GOLDEN);
    let room = RoomBuilder::userspace()
        .golden(Golden::Bytes(golden.clone()))
        .cow("64MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.vm")
                .portal("127.0.0.1:3261")
                .acl("initiator"),
        )
        .nbd_at("127.0.0.1:10809", None)
        .pc(Pc::new("pc-1").initiator(INITIATOR))
        .files();
    room.cowctl(&["apply"]);

    let iscsid = Iscsid::start_for("127.0.0.1:3261");
    iscsid.iface("pc1", INITIATOR);
    let disk = iscsid.login("pc1", TARGET, None).unwrap();
    assert_eq!(
        read_device(&disk),
        golden,
        "the kernel initiator reads the golden image"
    );
    write_device(&disk, 0, &vec![0x11; 3 << 20]);
    // fsync of the block device: the kernel sends SYNCHRONIZE CACHE (the write cache is on).
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // More writes in flight, never synced, while the service dies.
    let mut writer = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", disk.display()),
            "bs=64k",
            "seek=64",
            "count=128",
            "oflag=direct",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = std::fs::read_to_string(room.path("run/serve.pid")).unwrap();
    sh("kill", &["-KILL", pid.trim()]);
    let _ = writer.kill();
    iscsid.logout("pc1", TARGET);
    let _ = writer.wait();

    common::kernel::assert_killed_service_left_its_synced_writes(
        &room.path("."),
        "cowtest-iscsi-kill",
        &golden,
        &[0],
    );
}
