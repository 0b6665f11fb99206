//! Image versions on the real kernel (VM only, through scripts/test-kernel.sh): a
//! maintenance PC whose COW dm-snapshot wrote is committed into v2, byte for byte what its
//! dm device showed; a test group moves at its reset while the others stay; the room is
//! promoted and rolled back; each version's loop is attached while a PC uses it and
//! detached after the last one leaves; prune keeps versions in use; a commit of a PC with an
//! iSCSI session is refused unless paused; a changed version is refused under its COWs.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernel::{modprobe_room, read_device, require_vm, sh, write_device, Iscsid, Rng};
use common::room::{Golden, Iscsi, Pc, RoomBuilder};
use common::{assert_same, filled};

const SIZE: usize = 8 << 20;
const TARGET1: &str = "iqn.2024-01.lan.ver:pc-01";

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        require_vm();
        modprobe_room();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        let text = RoomBuilder::new()
            .golden(Golden::Versions)
            .cow("16MiB", "4KiB")
            .iscsi(
                Iscsi::new("iqn.2024-01.lan.ver")
                    .portal("127.0.0.1:3260")
                    .acl("open"),
            )
            .pc(Pc::new("pc-01").flag("keep"))
            .pc(Pc::new("pc-{02..03}"))
            .text_for(dir.path());
        std::fs::write(dir.path().join("room.yaml"), text).unwrap();
        Site { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_cowctl"))
            .args(["-f", self.path("room.yaml").to_str().unwrap()])
            .args(args)
            .env("COWCTL_RUN_DIR", self.path("run"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success() || out.status.code() == Some(2),
            "cowctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        eprintln!("$ cowctl {}\n{text}", args.join(" "));
        text
    }

    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "cowctl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    fn version(&self, v: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("versions/{v}/disk.img"))).unwrap()
    }

    /// Read-only loops over this site's versions, by version.
    fn version_loops(&self) -> Vec<String> {
        let versions = self.path("versions");
        let mut out: Vec<String> = sh("losetup", &["-l", "-n", "-O", "RO,BACK-FILE"])
            .lines()
            .filter_map(|l| l.trim().split_once(char::is_whitespace))
            .filter(|(ro, _)| ro.trim() == "1")
            .filter_map(|(_, f)| {
                Path::new(f.trim())
                    .strip_prefix(&versions)
                    .ok()
                    .map(Path::to_path_buf)
            })
            .filter_map(|p| p.iter().next().map(|v| v.to_string_lossy().to_string()))
            .collect();
        out.sort();
        out
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// The block node of a PC's dm device.
fn node(pc: &str) -> PathBuf {
    let minor = sh(
        "dmsetup",
        &[
            "info",
            "-c",
            "--noheadings",
            "-o",
            "minor",
            &format!("cowctl-{pc}"),
        ],
    );
    PathBuf::from(format!("/dev/dm-{}", minor.trim()))
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_room_moves_between_versions_at_its_resets_on_the_kernel() {
    let site = Site::new();
    let v1 = Rng(11).bytes(SIZE);
    std::fs::write(site.path("built.raw"), &v1).unwrap();
    site.ok(&[
        "image",
        "import",
        site.path("built.raw").to_str().unwrap(),
        "--image",
        "g",
        "--note",
        "first",
    ]);
    site.ok(&["apply"]);
    assert_eq!(site.version_loops(), ["v1"]);

    // The maintenance PC's changes, written through the kernel into its COW.
    write_device(&node("pc-01"), 1 << 20, &[0xaa; 64 << 10]);
    write_device(&node("pc-01"), (SIZE - 4096) as u64, &[0xab; 4096]);
    write_device(&node("pc-02"), 2 << 20, &[0x22; 4096]);
    write_device(&node("pc-03"), 3 << 20, &[0x33; 4096]);
    let shown = read_device(&node("pc-01"));
    assert_same(
        &shown,
        &filled(
            filled(v1.clone(), 0xaa, 1 << 20, 64 << 10),
            0xab,
            SIZE - 4096,
            4096,
        ),
        "pc-01",
    );

    // Logged in: a running system's disk is refused, unless paused.
    let iscsid = Iscsid::start();
    iscsid.iface("i1", "iqn.2024-01.lan.pc:one");
    let disk = iscsid.login("i1", TARGET1, None).unwrap();
    let e = site.refused(&["image", "commit", "pc-01"]);
    assert!(
        e.contains("pc-01 is in use (iSCSI sessions from") && e.contains("--pause"),
        "{e}"
    );
    let out = site.ok(&["image", "commit", "pc-01", "--pause", "--version", "spare"]);
    assert!(out.contains("as g@spare"), "{out}");
    assert_same(
        &read_device(&disk),
        &shown,
        "the session reads on after the paused commit",
    );
    iscsid.logout("i1", TARGET1);
    assert_same(&site.version("spare"), &shown, "the paused commit");

    let out = site.ok(&["image", "commit", "pc-01", "--note", "maintenance"]);
    assert!(out.contains("committed pc-01 as g@v2 (parent v1)"), "{out}");
    assert_same(
        &site.version("v2"),
        &shown,
        "v2 is what /dev/mapper/cowctl-pc-01 showed",
    );

    // The test group: pc-02 moves at its reset, pc-03 stays on v1.
    site.ok(&["image", "promote", "g", "v2", "pc-02"]);
    let status = site.ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pc-02") && l.contains("g@v1 → v2 at next reset")),
        "{status}"
    );
    site.ok(&["reset", "pc-02"]);
    assert_same(&read_device(&node("pc-02")), &shown, "pc-02 on v2");
    assert_same(
        &read_device(&node("pc-03")),
        &filled(v1.clone(), 0x33, 3 << 20, 4096),
        "pc-03 untouched",
    );
    assert_eq!(site.version_loops(), ["v1", "v2"]);

    // The room moves; the maintenance PC keeps its COW over v1 until a reset names it.
    site.ok(&["image", "promote", "g", "v2"]);
    let out = site.ok(&["reset", "--all"]);
    assert!(!out.contains("pc-01"), "{out}");
    assert_same(&read_device(&node("pc-03")), &shown, "pc-03 on v2");
    assert_same(
        &read_device(&node("pc-01")),
        &shown,
        "pc-01 kept its changes",
    );
    site.ok(&["reset", "pc-01"]);
    assert_same(
        &read_device(&node("pc-01")),
        &shown,
        "pc-01 on v2 with a fresh COW",
    );
    assert_eq!(
        site.version_loops(),
        ["v2"],
        "v1's loop goes with its last PC"
    );

    // Rollback.
    site.ok(&["image", "promote", "g", "v1"]);
    site.ok(&["reset", "pc-02"]);
    assert_same(&read_device(&node("pc-02")), &v1, "pc-02 rolled back to v1");
    assert_eq!(site.version_loops(), ["v1", "v2"]);

    // Prune keeps what is in use and removes the spare.
    let list = site.ok(&["image", "list"]);
    assert!(
        list.contains("current v1") && list.contains("pc-01,pc-03"),
        "{list}"
    );
    let out = site.ok(&["image", "prune", "g"]);
    assert!(out.contains("keep g@v1: current"), "{out}");
    assert!(out.contains("keep g@v2: pc-01, pc-03 run on it"), "{out}");
    assert!(out.contains("remove g@spare"), "{out}");
    assert!(!site.path("versions/spare").exists());

    // Commits killed at random points: every version there is whole, none is half made.
    write_device(&node("pc-03"), 0, &[0x77; 1 << 20]);
    let pc03 = read_device(&node("pc-03"));
    let before = site.ok(&["image", "list", "--json"]);
    for i in 0..8u64 {
        let name = format!("k{i}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cowctl"))
            .args(["-f", site.path("room.yaml").to_str().unwrap()])
            .args(["image", "commit", "pc-03", "--version", &name])
            .env("COWCTL_RUN_DIR", site.path("run"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(i * i * 4));
        let _ = child.kill();
        let _ = child.wait();
        if site.path(&format!("versions/{name}")).exists() {
            assert_same(
                &site.version(&name),
                &pc03,
                "a commit that finished before its kill",
            );
        }
    }
    site.ok(&["image", "prune", "g"]);
    assert_eq!(
        site.ok(&["image", "list", "--json"]),
        before,
        "the list is as before"
    );
    assert!(std::fs::read_dir(site.path("versions"))
        .unwrap()
        .flatten()
        .all(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            !n.starts_with(".incoming-") && !n.starts_with(".pruning-")
        }));

    // A version changed behind cowctl's back is refused under its COWs.
    site.ok(&["down"]);
    assert!(
        site.version_loops().is_empty(),
        "down leaves no version loop"
    );
    let v1_disk = site.path("versions/v1/disk.img");
    std::fs::set_permissions(
        &v1_disk,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&v1_disk)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 0).unwrap();
    let e = site.refused(&["apply"]);
    assert!(e.contains("pc-02") && e.contains("garbage"), "{e}");
}
