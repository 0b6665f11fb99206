//! A room of 200 iSCSI PCs on the real kernel (VM only, through scripts/test-kernel.sh):
//! apply, a write to every PC, `reset --all` (resets side by side), every PC back on the
//! golden image, then `down` leaving no loop, dm device or configfs object behind.

#![allow(clippy::cast_possible_truncation)] // test patterns are small numbers

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernel::{modprobe_room, require_vm, sh, write_device, AlignedBuf, Rng};
use common::room::{Iscsi, Pc, RoomBuilder};

const PCS: usize = 200;
const GOLDEN: usize = 1 << 20;
const SECRET: &str = "a-room-secret-of-16";

fn manifest(d: &Path) -> String {
    RoomBuilder::new()
        .cow("1MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.room")
                .portal("127.0.0.1:3260")
                .acl("initiator")
                .chap("lab", SECRET),
        )
        .pc(Pc::new(&format!("pc-{{1..{PCS}}}")).initiator("iqn.2024-01.lan.pc:{name}"))
        .text_for(d)
}

fn cowctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cowctl"))
        .args(["-f", dir.join("room.yaml").to_str().unwrap()])
        .args(args)
        .env("COWCTL_RUN_DIR", dir.join("run"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cowctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Each of cowctl's dm devices and its node.
fn devices() -> BTreeMap<String, PathBuf> {
    sh(
        "dmsetup",
        &["info", "-c", "--noheadings", "-o", "name,minor"],
    )
    .lines()
    .filter_map(|l| l.trim().split_once(':'))
    .filter(|(name, _)| name.starts_with("cowctl-"))
    .map(|(name, minor)| {
        (
            name.trim_start_matches("cowctl-").to_string(),
            PathBuf::from(format!("/dev/dm-{}", minor.trim())),
        )
    })
    .collect()
}

fn first_block(dev: &Path) -> Vec<u8> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let mut buf = AlignedBuf::new(4096);
    f.read_exact_at(buf.as_mut(), 0).unwrap();
    buf.as_ref().to_vec()
}

fn count(path: &str, prefix: &str) -> usize {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_room_of_200_pcs_applies_resets_at_once_and_comes_down_clean() {
    require_vm();
    modprobe_room();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let golden = Rng(200).bytes(GOLDEN);
    std::fs::write(d.join("golden.img"), &golden).unwrap();
    common::write_private(&d.join("chap.secret"), &format!("{SECRET}\n"));
    std::fs::create_dir(d.join("cow")).unwrap();
    std::fs::write(d.join("room.yaml"), manifest(d)).unwrap();

    cowctl(d, &["apply"]);
    let devs = devices();
    assert_eq!(devs.len(), PCS, "one snapshot per PC");
    assert_eq!(
        count("/sys/kernel/config/target/iscsi", "iqn.2024-01.lan.room:"),
        PCS
    );
    for (i, dev) in devs.values().enumerate() {
        write_device(dev, 0, &[(i % 250) as u8 + 1; 4096]);
    }
    for (i, dev) in devs.values().enumerate() {
        assert_eq!(first_block(dev), vec![(i % 250) as u8 + 1; 4096]);
    }

    let out = cowctl(d, &["reset", "--all"]);
    assert!(
        out.contains(&format!("reset {PCS} of {PCS} PCs in ")),
        "reset --all says how long the room took: {out}"
    );
    let after = devices();
    assert_eq!(after.len(), PCS);
    for (pc, dev) in &after {
        assert_eq!(
            first_block(dev),
            golden[..4096],
            "{pc} reads the golden image after its reset"
        );
        let tpg =
            format!("/sys/kernel/config/target/iscsi/iqn.2024-01.lan.room:{pc}/tpgt_1/enable");
        assert_eq!(
            std::fs::read_to_string(&tpg).unwrap().trim(),
            "1",
            "{pc} is exported again"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(d.join("cow"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".discard"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "old COWs left: {leftovers:?}");
    // One loop per PC and one for the image: the old COWs' loops are gone.
    let loops = sh("losetup", &["-a"]);
    assert_eq!(
        loops
            .lines()
            .filter(|l| l.contains(&d.display().to_string()))
            .count(),
        PCS + 1,
        "{loops}"
    );

    cowctl(d, &["down"]);
    assert!(devices().is_empty(), "dm devices left");
    let loops = sh("losetup", &["-a"]);
    assert!(
        !loops.contains(&d.display().to_string()),
        "loops left: {loops}"
    );
    assert_eq!(
        count("/sys/kernel/config/target/iscsi", "iqn."),
        0,
        "targets left"
    );
    assert_eq!(
        sh(
            "sh",
            &[
                "-c",
                "ls -d /sys/kernel/config/target/core/iblock_* 2>/dev/null || true"
            ]
        )
        .trim(),
        "",
        "backstores left"
    );
    assert_eq!(
        count(d.join("cow").to_str().unwrap(), "pc-"),
        2 * PCS,
        "COW files and their .golden records stay"
    );
}
