//! The userspace backend's COW files belong to the kernel too (VM only, through
//! scripts/test-kernel.sh): `cowctl serve` is killed with SIGKILL while a client writes,
//! and the kernel's dm-snapshot loads what it left, with every flushed write in it.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::time::Duration;

use common::kernel::{modprobe, require_vm, sh, Rng};
use common::room::{Golden, Pc, RoomBuilder};

const GOLDEN: usize = 16 << 20;

#[test]
#[ignore]
fn a_cow_left_by_a_killed_service_loads_in_the_kernel_with_every_flushed_write() {
    require_vm();
    modprobe("dm-snapshot");
    modprobe("loop");
    let golden = Rng(5).bytes(GOLDEN);
    let room = RoomBuilder::userspace()
        .golden(Golden::Bytes(golden.clone()))
        .cow("32MiB", "4KiB")
        .export("nbd")
        .nbd_at("127.0.0.1:10809", None)
        .pc(Pc::new("pc-1"))
        .files();
    let out = room.cowctl(&["apply"]);
    assert!(out.contains("serve pc-1 over NBD"), "{out}");

    let uri = "nbd://127.0.0.1:10809/pc-1";
    sh(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 3M", "-c", "flush", uri],
    );
    let mut writer = common::spawn_qemu_io_writer(uri, &[0x22, 0x33], 40, "4M", "8M");
    std::thread::sleep(Duration::from_millis(400));
    let pid = std::fs::read_to_string(room.path("run/serve.pid")).unwrap();
    sh("kill", &["-KILL", pid.trim()]);
    let _ = writer.wait();

    common::kernel::assert_killed_service_left_its_synced_writes(
        &room.path("."),
        "cowtest-nbd-kill",
        &golden,
        &[0x22, 0x33],
    );
}
