//! The userspace backend's AoE target through the kernel's own `aoe` driver (VM only,
//! through scripts/test-kernel.sh), on a veth pair with jumbo frames that the test makes:
//! the driver discovers the PC, a file system is made and checked through
//! /dev/etherd/e7.3, fio verifies random writes, a reset while the driver holds the disk
//! brings back the golden image, the golden file never changes, and a PC whose allow list
//! lacks this MAC is never found.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kernel::{read_device, require_vm, sh, Rng};
use common::net::Link;
use common::room::Golden;

const GOLDEN: usize = 64 << 20;
const PC_MAC: &str = "02:42:00:00:00:11";

/// The kernel's aoe driver on one interface; unloaded when dropped, before the link goes
/// (the driver holds the interface, and deleting it first would hang).
struct AoeDriver;

impl AoeDriver {
    fn load(interface: &str) -> AoeDriver {
        sh("modprobe", &["aoe", &format!("aoe_iflist={interface}")]);
        AoeDriver
    }
}

impl Drop for AoeDriver {
    fn drop(&mut self) {
        let _ = std::process::Command::new("aoe-flush").arg("-a").output();
        let _ = std::process::Command::new("rmmod").arg("aoe").output();
    }
}

fn wait_for(dev: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if dev.exists() {
            return true;
        }
        let _ = std::process::Command::new("aoe-discover").output();
        std::thread::sleep(Duration::from_millis(500));
    }
    dev.exists()
}

#[test]
#[ignore]
fn the_kernel_aoe_driver_reads_and_writes_a_userspace_pc_and_sees_its_reset() {
    require_vm();
    let link = Link::veth(1, 9000);
    link.set_peer_mac(PC_MAC);
    let golden = Rng(15).bytes(GOLDEN);
    let room = common::room::two_aoe_pcs(&link.name, PC_MAC)
        .golden(Golden::Bytes(golden.clone()))
        .cow("128MiB", "32KiB")
        .build();
    room.cowctl(&["apply"]);
    let _driver = AoeDriver::load(link.peer());

    let disk = Path::new("/dev/etherd/e7.3");
    assert!(
        wait_for(disk, Duration::from_secs(30)),
        "the aoe driver found no e7.3 on {}",
        link.peer()
    );
    let dev = disk.to_str().unwrap();
    assert_eq!(
        sh("blockdev", &["--getsize64", dev]).trim(),
        GOLDEN.to_string()
    );
    assert_eq!(
        read_device(disk),
        golden,
        "the disk starts as the golden image"
    );

    sh("mkfs.ext4", &["-q", "-F", dev]);
    sh("fsck.ext4", &["-f", "-n", dev]);
    sh(
        "fio",
        &[
            "--name=verify",
            "--filename=/dev/etherd/e7.3",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--rw=randwrite",
            "--bs=4k",
            "--offset=32M",
            "--size=16M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
        ],
    );
    let status = room.cowctl(&["status", "pc-01"]);
    assert!(status.contains(&format!("AoE {PC_MAC}")), "{status}");

    // The driver keeps the disk open across the reset; its retries reach the fresh COW.
    room.cowctl(&["reset", "pc-01"]);
    assert_eq!(
        read_device(disk),
        golden,
        "after the reset the disk is the golden image"
    );
    assert_eq!(
        std::fs::read(room.path("golden.img")).unwrap(),
        golden,
        "the golden image is never written"
    );

    // pc-02 answers another MAC only: the driver never sees it.
    assert!(!wait_for(
        Path::new("/dev/etherd/e7.4"),
        Duration::from_secs(3)
    ));
    room.cowctl(&["down"]);
}
