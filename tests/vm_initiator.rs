//! open-iscsi's kernel initiator in the test VM uses `cowctl serve` on the host, through
//! qemu's user network (10.0.2.2 is the host): CHAP with the PC's own secret, mkfs, a
//! write and fsck, fio with verification, a reset from the admin API while logged in (the
//! initiator recovers and reads the golden image), and a wrong secret refused. The host
//! half is scripts/test-vm-initiator.sh, which starts the service and passes these:
//! COWCTL_TEST_PORTAL, _TARGET, _INITIATOR, _SECRET, _ADMIN, _TOKEN, _GOLDEN.

mod common;

use std::process::Command;

use common::kernel::{read_device, require_vm, sh, Iscsid};

fn var(name: &str) -> String {
    std::env::var(format!("COWCTL_TEST_{name}"))
        .unwrap_or_else(|_| panic!("COWCTL_TEST_{name} is set by scripts/test-vm-initiator.sh"))
}

#[test]
#[ignore = "needs the VM and the host's service: scripts/test-vm-initiator.sh"]
fn the_vms_initiator_uses_the_hosts_userspace_target() {
    require_vm();
    let (portal, target, initiator) = (var("PORTAL"), var("TARGET"), var("INITIATOR"));
    let secret = var("SECRET");
    let iscsid = Iscsid::start_for(&portal);
    iscsid.iface("pc", &initiator);
    let refused = iscsid
        .login("pc", &target, Some(("lab", "a-wrong-secret-16")))
        .expect_err("a wrong CHAP secret got in");
    assert!(
        refused.contains("authorization failure"),
        "refused for another reason: {refused}"
    );

    let disk = iscsid.login("pc", &target, Some(("lab", &secret))).unwrap();
    let golden = std::fs::read(var("GOLDEN")).unwrap();
    let dev = disk.display().to_string();
    sh(
        "fio",
        &[
            "--name=verify",
            &format!("--filename={dev}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16m",
            "--offset=32m",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=terse",
        ],
    );
    sh("mkfs.ext4", &["-F", "-q", &dev]);
    std::fs::create_dir_all("/mnt/pc").unwrap();
    sh("mount", &[&dev, "/mnt/pc"]);
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            "of=/mnt/pc/data",
            "bs=1M",
            "count=8",
            "conv=fsync",
            "status=none",
        ],
    );
    let written = std::fs::read("/mnt/pc/data").unwrap();
    sh("umount", &["/mnt/pc"]);
    sh("fsck.ext4", &["-f", "-n", &dev]);
    sh("mount", &[&dev, "/mnt/pc"]);
    assert_eq!(
        std::fs::read("/mnt/pc/data").unwrap(),
        written,
        "the file reads back"
    );
    sh("umount", &["/mnt/pc"]);

    // A reset from the admin API while logged in: the session drops, iscsid logs in again
    // and the disk is the golden image once more.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {}", var("TOKEN")),
        ])
        .arg(format!("http://{}/api/v1/pcs/pc-vm/reset", var("ADMIN")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let again = iscsid.wait_logged_in(&target);
    eprintln!(
        "logged in again {:.1} s after the reset",
        again.as_secs_f64()
    );
    let back = read_device(&disk);
    assert!(
        back == golden,
        "after the reset the PC reads the golden image"
    );
    iscsid.logout("pc", &target);
}
