//! The userspace iSCSI target's COW belongs to the kernel too (VM only, through
//! scripts/test-kernel.sh): open-iscsi's kernel initiator writes through `cowctl serve`,
//! fsyncs, keeps writing, and the service is killed with SIGKILL; the kernel's dm-snapshot
//! then loads the COW it left with every synced write in it.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::process::Command;
use std::time::Duration;

use common::kernel::{modprobe, read_device, require_vm, sh, write_device, Iscsid, Rng};

const GOLDEN: usize = 16 << 20;
const TARGET: &str = "iqn.2024-01.lan.vm:pc-1";
const INITIATOR: &str = "iqn.2024-01.lan.vm:init-pc-1";

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_cow_written_over_iscsi_loads_in_dm_snapshot_with_every_synced_write() {
    require_vm();
    modprobe("dm-snapshot");
    modprobe("loop");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let golden = Rng(9).bytes(GOLDEN);
    std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
    std::fs::create_dir(dir.path().join("cow")).unwrap();
    let manifest = dir.path().join("room.yaml");
    std::fs::write(
        &manifest,
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {d}/cow\n  cow_size: 64MiB\n  chunk: 4KiB\n\
             iscsi:\n  iqn_prefix: iqn.2024-01.lan.vm\n  portals: [127.0.0.1:3261]\n  acl: initiator\n\
             nbd:\n  listen: 127.0.0.1:10809\npcs:\n  - name: pc-1\n    initiator: {INITIATOR}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cowctl"))
        .arg("apply")
        .env("COWCTL_RUN_DIR", dir.path().join("run"))
        .env("COWCTL_MANIFEST", &manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
    let pid = std::fs::read_to_string(dir.path().join("run/serve.pid")).unwrap();
    sh("kill", &["-KILL", pid.trim()]);
    let _ = writer.kill();
    iscsid.logout("pc1", TARGET);
    let _ = writer.wait();

    common::kernel::assert_killed_service_left_its_synced_writes(
        dir.path(),
        "cowtest-iscsi-kill",
        &golden,
        &[0],
    );
}
