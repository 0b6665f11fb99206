//! The userspace backend's COW files belong to the kernel too (VM only, through
//! scripts/test-kernel.sh): `cowctl serve` is killed with SIGKILL while a client writes,
//! and the kernel's dm-snapshot loads what it left, with every flushed write in it.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::process::Command;
use std::time::Duration;

use common::kernel::{modprobe, require_vm, sh, Rng};

const GOLDEN: usize = 16 << 20;

#[test]
#[ignore]
fn a_cow_left_by_a_killed_service_loads_in_the_kernel_with_every_flushed_write() {
    require_vm();
    modprobe("dm-snapshot");
    modprobe("loop");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let golden = Rng(5).bytes(GOLDEN);
    std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
    std::fs::create_dir(dir.path().join("cow")).unwrap();
    let manifest = dir.path().join("room.yaml");
    std::fs::write(
        &manifest,
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {d}/cow\n  cow_size: 32MiB\n  chunk: 4KiB\n\
             nbd:\n  listen: 127.0.0.1:10809\npcs:\n  - name: pc-1\n    export: nbd\n"
        ),
    )
    .unwrap();
    let cowctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cowctl"))
            .args(args)
            .env("COWCTL_RUN_DIR", dir.path().join("run"))
            .env("COWCTL_MANIFEST", &manifest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cowctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = cowctl(&["apply"]);
    assert!(out.contains("serve pc-1 over NBD"), "{out}");

    let uri = "nbd://127.0.0.1:10809/pc-1";
    sh(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 3M", "-c", "flush", uri],
    );
    let mut writer = common::spawn_qemu_io_writer(uri, &[0x22, 0x33], 40, "4M", "8M");
    std::thread::sleep(Duration::from_millis(400));
    let pid = std::fs::read_to_string(dir.path().join("run/serve.pid")).unwrap();
    sh("kill", &["-KILL", pid.trim()]);
    let _ = writer.wait();

    common::kernel::assert_killed_service_left_its_synced_writes(
        dir.path(),
        "cowtest-nbd-kill",
        &golden,
        &[0x22, 0x33],
    );
}
