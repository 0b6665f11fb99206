//! The control plane against the real kernel with real initiators (VM only, through
//! scripts/test-kernel.sh): iscsiadm over LIO with ACLs and CHAP, the aoe module over
//! vblade on `lo`, live reset, down/apply round trips, and refusals.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernel::{
    aoe_on_lo, dm_node, modprobe_room, read_device, require_vm, sh, write_device, Iscsid, Rng,
};
use common::room::{Iscsi, Pc, RoomBuilder};

const GOLDEN: usize = 8 << 20;
/// The master CHAP secret; each PC's own is derived from it.
const SECRET: &str = "cowctl-test-secret";

fn secret(pc: &str) -> String {
    cowctl::manifest::secrets::derive(SECRET, "initiator", pc)
}
const TARGET1: &str = "iqn.2024-01.lan.test:pc-1";
const TARGET2: &str = "iqn.2024-01.lan.test:pc-2";
const INIT1: &str = "iqn.2024-01.lan.pc:pc-1";

struct Site {
    dir: tempfile::TempDir,
    golden: Vec<u8>,
    /// `storage:` of the images, when not COW files.
    storage: Option<&'static str>,
}

impl Site {
    /// A golden image, a CHAP secret and a manifest: pc-1 and pc-2 over iSCSI with ACLs and
    /// CHAP, pc-3 over AoE on lo.
    fn new() -> Site {
        Site::in_dir(tempfile::tempdir().unwrap(), None)
    }

    /// [`Site::new`] in `dir`, its images with `storage` when given.
    fn in_dir(dir: tempfile::TempDir, storage: Option<&'static str>) -> Site {
        require_vm();
        modprobe_room();
        let golden = Rng(42).bytes(GOLDEN);
        std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
        std::fs::write(dir.path().join("other.img"), Rng(7).bytes(GOLDEN)).unwrap();
        common::write_private(&dir.path().join("chap.secret"), &format!("{SECRET}\n"));
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        let s = Site {
            dir,
            golden,
            storage,
        };
        s.write_manifest("g");
        s
    }

    fn write_manifest(&self, image: &str) {
        self.write_manifest_with(
            image,
            "  acl: initiator\n  chap:\n    username: lab\n    secret_file: {d}/chap.secret\n",
        );
    }

    /// `iscsi` lines after the portals: the ACL mode and CHAP (`{d}` is the site's folder).
    fn write_manifest_with(&self, image: &str, access: &str) {
        let mut room = RoomBuilder::new();
        if let Some(s) = self.storage {
            room = room.storage(s);
        }
        let text = room
            .version("1")
            .image("o", "other.img", Vec::new())
            .default_image(image)
            .cow("4MiB", "4KiB")
            .iscsi(
                Iscsi::new("iqn.2024-01.lan.test")
                    .portal("127.0.0.1:3260")
                    .access(access),
            )
            .aoe("lo")
            .extra("warn_percent: 50\n")
            .pc(Pc::new("pc-{1..2}").initiator("iqn.2024-01.lan.pc:{name}"))
            .pc(Pc::new("pc-3").aoe(9, 3).mac("00:00:00:00:00:00"))
            .text_for(self.dir.path());
        std::fs::write(self.manifest(), text).unwrap();
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("room.yaml")
    }

    fn cowctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_cowctl"))
            .args(["-f", self.manifest().to_str().unwrap()])
            .args(args)
            .env("COWCTL_RUN_DIR", self.dir.path().join("run"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cowctl(args);
        assert!(
            out.status.success(),
            "cowctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        eprintln!("$ cowctl {}\n{text}", args.join(" "));
        text
    }

    fn status(&self) -> Vec<serde_json::Value> {
        let out = self.cowctl(&["--json", "status"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn used(&self, pc: &str) -> u64 {
        self.status().iter().find(|r| r["name"] == pc).unwrap()["used_sectors"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.cowctl(&["down"]);
    }
}

/// Nothing of cowctl's is left in the kernel.
fn assert_clean(dir: &Path) {
    let dm = sh("dmsetup", &["ls"]);
    assert!(!dm.contains("cowctl-"), "dm leftovers: {dm}");
    let loops = sh("losetup", &["-a"]);
    assert!(
        !loops.contains(&dir.display().to_string()),
        "loop leftovers: {loops}"
    );
    let targets: Vec<_> = std::fs::read_dir("/sys/kernel/config/target/iscsi")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("iqn."))
                .collect()
        })
        .unwrap_or_default();
    assert!(targets.is_empty(), "configfs targets left: {targets:?}");
    let sos = sh(
        "sh",
        &[
            "-c",
            "ls -d /sys/kernel/config/target/core/iblock_*/cowctl-* 2>/dev/null || true",
        ],
    );
    assert!(
        sos.trim().is_empty(),
        "configfs storage objects left: {sos}"
    );
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn iscsi_login_write_status_live_reset_down_apply() {
    let site = Site::new();
    let iscsid = Iscsid::start();
    site.ok(&["apply"]);
    let again = site.ok(&["plan"]);
    assert!(
        again.contains("nothing to do"),
        "a second apply must be a no-op: {again}"
    );
    assert!(site.ok(&["apply"]).contains("nothing to do"));

    iscsid.iface("pc1", INIT1);
    let disk = iscsid
        .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
        .expect("pc-1 logs in with its own name and CHAP");
    let rows = site.status();
    assert_eq!(
        rows[0]["initiators"],
        serde_json::json!([INIT1]),
        "connected initiators come from configfs"
    );
    assert_eq!(rows[0]["state"], "active");

    // The PC writes; the kernel's fill rises.
    let before = site.used("pc-1");
    let data = Rng(5).bytes(3 << 20);
    write_device(&disk, 1 << 20, &data);
    let after = site.used("pc-1");
    assert!(
        after >= before + (3 << 20) / 512,
        "fill rose from {before} to {after} sectors"
    );
    let mut expected = site.golden.clone();
    expected[1 << 20..(1 << 20) + data.len()].copy_from_slice(&data);
    assert!(
        read_device(&disk) == expected,
        "the initiator reads what it wrote"
    );
    let out = site.cowctl(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "over warn_percent 50: exit 2\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("WARNING: pc-1 is"));

    // Reset while logged in: the initiator reconnects and sees the golden image.
    let shown = site.ok(&["reset", "pc-1"]);
    assert!(
        shown.contains("reset pc-1: I/O paused") && shown.contains("while exported"),
        "{shown}"
    );
    let waited = iscsid.wait_logged_in(TARGET1);
    eprintln!("initiator logged in again after {waited:?}");
    assert!(
        read_device(&disk) == site.golden,
        "after the reset the PC reads the golden image"
    );
    assert!(site.used("pc-1") <= 16, "the COW is empty again");
    // It keeps working: write again, then down and apply keep the content.
    write_device(&disk, 0, &data[..1 << 20]);
    let mut expected = site.golden.clone();
    expected[..1 << 20].copy_from_slice(&data[..1 << 20]);
    iscsid.logout("pc1", TARGET1);

    site.ok(&["down"]);
    assert_clean(site.dir.path());
    assert!(
        site.dir.path().join("cow/pc-1.cow").exists(),
        "down keeps COW files"
    );
    site.ok(&["apply"]);
    let disk = iscsid
        .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
        .unwrap();
    assert!(
        read_device(&disk) == expected,
        "down + apply brings the PC back with its COW content"
    );
    iscsid.logout("pc1", TARGET1);
    site.ok(&["down"]);
    assert_clean(site.dir.path());
}

/// A reflink room on xfs: each PC's disk a clone on a loop device under a dm `linear`
/// device that LIO (or vblade) exports; the initiator's writes count as the clone's own
/// bytes; a reset while it is logged in reloads the table over a fresh clone; down and
/// apply keep the disk; the aoe driver reads and writes pc-3's clone and sees its reset.
#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_reflink_pc_is_served_by_lio_over_its_clone_and_reset_by_a_table_reload() {
    let xfs = common::kernel::Mounted::xfs(true);
    let site = Site::in_dir(tempfile::tempdir_in(xfs.mnt()).unwrap(), Some("reflink"));
    let iscsid = Iscsid::start();
    let applied = site.ok(&["apply"]);
    assert!(applied.contains("clone pc-1's disk"), "{applied}");
    assert!(
        applied.contains("create dm linear cowctl-pc-1"),
        "{applied}"
    );
    let table = sh("dmsetup", &["table", "cowctl-pc-1"]);
    assert!(table.contains(" linear "), "{table}");
    assert!(site.ok(&["plan"]).contains("nothing to do"));

    iscsid.iface("pc1", INIT1);
    let disk = iscsid
        .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
        .expect("pc-1 logs in");
    assert!(
        read_device(&disk) == site.golden,
        "a clone reads as its image"
    );
    let data = Rng(5).bytes(3 << 20);
    write_device(&disk, 1 << 20, &data);
    let used = site.used("pc-1");
    assert!(
        used >= (3 << 20) / 512,
        "the clone's own bytes: {used} sectors"
    );
    let mut expected = site.golden.clone();
    expected[1 << 20..(1 << 20) + data.len()].copy_from_slice(&data);
    assert!(
        read_device(&disk) == expected,
        "the initiator reads what it wrote"
    );

    let shown = site.ok(&["reset", "pc-1"]);
    assert!(shown.contains("while exported"), "{shown}");
    iscsid.wait_logged_in(TARGET1);
    assert!(
        read_device(&disk) == site.golden,
        "a fresh clone after the reset"
    );
    assert_eq!(site.used("pc-1"), 0);
    assert!(!site.dir.path().join("cow/pc-1.img.discard").exists());
    write_device(&disk, 0, &data[..1 << 20]);
    let mut expected = site.golden.clone();
    expected[..1 << 20].copy_from_slice(&data[..1 << 20]);
    iscsid.logout("pc1", TARGET1);

    site.ok(&["down"]);
    assert_clean(site.dir.path());
    site.ok(&["apply"]);
    let disk = iscsid
        .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
        .unwrap();
    assert!(read_device(&disk) == expected, "down + apply keep the disk");
    iscsid.logout("pc1", TARGET1);

    // pc-3 over AoE: vblade exports its linear device, and the kernel's aoe driver reads the
    // clone, writes into it and, holding the disk, sees a reset bring the image back.
    let aoe = aoe_on_lo("e9.3", GOLDEN as u64);
    assert!(
        read_device(&aoe) == site.golden,
        "pc-3 over AoE reads its image"
    );
    let bytes = Rng(11).bytes(1 << 20);
    write_device(&aoe, 2 << 20, &bytes);
    let mut written = site.golden.clone();
    written[2 << 20..3 << 20].copy_from_slice(&bytes);
    assert!(
        read_device(&aoe) == written,
        "the aoe driver reads its writes"
    );
    // vblade writes through the device's page cache: counted once written back.
    let node = dm_node("cowctl-pc-3");
    sh("blockdev", &["--flushbufs", node.to_str().unwrap()]);
    let used = site.used("pc-3");
    assert!(used >= (1 << 20) / 512, "pc-3's own bytes: {used} sectors");
    let shown = site.ok(&["reset", "pc-3"]);
    assert!(shown.contains("while exported"), "{shown}");
    assert!(
        read_device(&aoe) == site.golden,
        "a fresh clone under the aoe driver after the reset"
    );
    assert_eq!(site.used("pc-3"), 0);
    site.ok(&["down"]);
    assert_clean(site.dir.path());
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn strangers_and_wrong_chap_secrets_are_refused() {
    let site = Site::new();
    let iscsid = Iscsid::start();
    site.ok(&["apply"]);
    iscsid.iface("stranger", "iqn.2024-01.lan.evil:intruder");
    let refused = iscsid
        .login("stranger", TARGET1, Some(("lab", &secret("pc-1"))))
        .expect_err("an initiator without an ACL got in");
    eprintln!("stranger refused: {refused}");
    assert!(
        refused.contains("authorization failure"),
        "refused for another reason: {refused}"
    );
    iscsid.iface("pc1", INIT1);
    let refused = iscsid
        .login("pc1", TARGET1, Some(("lab", "not-the-right-secret")))
        .expect_err("a wrong CHAP secret got in");
    eprintln!("wrong secret refused: {refused}");
    assert!(
        refused.contains("authorization failure"),
        "refused for another reason: {refused}"
    );
    let refused = iscsid
        .login("pc1", TARGET1, None)
        .expect_err("a login without CHAP got in");
    assert!(
        refused.contains("authorization failure"),
        "refused for another reason: {refused}"
    );
    // The master secret opens nothing: every PC has its own.
    assert!(
        iscsid.login("pc1", TARGET1, Some(("lab", SECRET))).is_err(),
        "the master secret opened pc-1's disk"
    );
    // pc-2's initiator may not use pc-1's disk either.
    iscsid.iface("pc2", "iqn.2024-01.lan.pc:pc-2");
    assert!(
        iscsid
            .login("pc2", TARGET1, Some(("lab", &secret("pc-2"))))
            .is_err(),
        "pc-2 logged in to pc-1's disk"
    );
    // And pc-1's secret, which pc-1's boot script carries, does not open pc-2's disk.
    assert!(
        iscsid
            .login("pc2", TARGET2, Some(("lab", &secret("pc-1"))))
            .is_err(),
        "pc-1's secret opened pc-2's disk"
    );
    assert!(
        iscsid
            .login("pc2", TARGET2, Some(("lab", &secret("pc-2"))))
            .is_ok(),
        "pc-2 gets in to its own disk with its own secret"
    );
    iscsid.logout("pc2", TARGET2);
    assert!(
        iscsid
            .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
            .is_ok(),
        "pc-1 itself still gets in"
    );
    iscsid.logout("pc1", TARGET1);
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn aoe_on_lo_serves_the_dm_device() {
    let site = Site::new();
    site.ok(&["apply"]);
    let dm = dm_node("cowctl-pc-3");
    write_device(&dm, 4096 * 3, &Rng(9).bytes(8192));
    let disk = aoe_on_lo("e9.3", GOLDEN as u64);
    assert!(
        read_device(&disk) == read_device(&dm),
        "the AoE disk differs from the dm device"
    );
    // The vblade is supervised: killed, it is restarted by the next apply.
    let pid = std::fs::read_to_string(site.dir.path().join("run/vblade/pc-3.pid")).unwrap();
    sh("kill", &[pid.trim()]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let plan = site.ok(&["plan"]);
    assert!(plan.contains("start vblade e9.3 for pc-3"), "{plan}");
    site.ok(&["apply"]);
    assert!(site.ok(&["plan"]).contains("nothing to do"));
    site.ok(&["down"]);
    assert_clean(site.dir.path());
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_cow_removed_or_replaced_under_an_applied_pc_is_named_and_the_others_carry_on() {
    let site = Site::new();
    site.ok(&["apply"]);
    let cow = |pc: &str| site.dir.path().join("cow").join(format!("{pc}.cow"));
    let notes = |pc: &str| -> Vec<String> {
        let rows = site.status();
        let row = rows.iter().find(|r| r["name"] == pc).unwrap();
        row["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    };
    assert!(notes("pc-1").is_empty(), "{:?}", notes("pc-1"));
    let aside = site.dir.path().join("pc-1.aside");
    std::fs::rename(cow("pc-1"), &aside).unwrap();
    let copy = site.dir.path().join("pc-2.copy");
    std::fs::copy(cow("pc-2"), &copy).unwrap();
    std::fs::rename(&copy, cow("pc-2")).unwrap();

    let out = site.cowctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("$ cowctl status\n{text}");
    assert_eq!(out.status.code(), Some(2), "a warning: {text}");
    assert!(
        text.contains(&format!(
            "pc-1's COW {} was removed while it is served",
            cow("pc-1").display()
        )),
        "{text}"
    );
    assert!(
        text.contains("pc-2's COW") && text.contains("was replaced by another file"),
        "{text}"
    );
    assert!(
        notes("pc-3").is_empty(),
        "pc-3 is untouched: {:?}",
        notes("pc-3")
    );
    // The kernel still serves pc-1 from the file it opened: writes and reads go on.
    let dev = dm_node("cowctl-pc-1");
    write_device(&dev, 4096, &[0x5a; 4096]);
    assert_eq!(read_device(&dev)[4096..8192], [0x5a; 4096]);

    std::fs::rename(&aside, cow("pc-1")).unwrap();
    assert!(
        notes("pc-1").is_empty(),
        "the file is back: {:?}",
        notes("pc-1")
    );
    site.ok(&["down"]);
    assert_clean(site.dir.path());
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_cow_made_against_another_image_is_refused() {
    let site = Site::new();
    site.ok(&["apply"]);
    site.ok(&["down"]);
    site.write_manifest("o");
    let out = site.cowctl(&["apply"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("was made against golden image"),
        "{err}"
    );
    eprintln!("{err}");
    assert_clean(site.dir.path());
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn open_mode_lets_any_initiator_in() {
    let site = Site::new();
    site.write_manifest_with("g", "  acl: open\n");
    let iscsid = Iscsid::start();
    site.ok(&["apply"]);
    assert!(site.ok(&["plan"]).contains("nothing to do"));
    iscsid.iface("anyone", "iqn.2024-01.lan.somewhere:any-pc");
    let disk = iscsid
        .login("anyone", TARGET1, None)
        .expect("open mode admits any initiator without CHAP");
    assert!(
        read_device(&disk) == site.golden,
        "the open target serves pc-1's disk"
    );
    let rows = site.status();
    assert_eq!(
        rows[0]["initiators"],
        serde_json::json!(["iqn.2024-01.lan.somewhere:any-pc"]),
        "demo-mode sessions are listed"
    );
    iscsid.logout("anyone", TARGET1);
    site.ok(&["down"]);
    assert_clean(site.dir.path());
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn a_reset_killed_half_way_is_finished_by_apply_and_an_edited_manifest_resets_nothing() {
    let site = Site::new();
    let iscsid = Iscsid::start();
    site.ok(&["apply"]);
    iscsid.iface("pc1", INIT1);
    let disk = iscsid
        .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
        .unwrap();
    write_device(&disk, 0, &vec![0x5a; 1 << 20]);
    iscsid.logout("pc1", TARGET1);
    let cow = site.dir.path().join("cow/pc-1.cow");

    // The manifest is edited to point pc-1 elsewhere but not applied: a reset would wipe
    // the wrong file, so nothing is reset.
    std::fs::create_dir(site.dir.path().join("cow2")).unwrap();
    let text = std::fs::read_to_string(site.manifest()).unwrap();
    std::fs::write(site.manifest(), text.replace("/cow\n", "/cow2\n")).unwrap();
    let out = site.cowctl(&["reset", "pc-1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the kernel serves the COW"), "{err}");
    std::fs::write(site.manifest(), text).unwrap();

    // What a reset killed after step 3 leaves: the TPG disabled, the device on an error
    // table, the old COW renamed aside (its loop keeps it), a fresh COW not yet attached.
    let tpg = format!("/sys/kernel/config/target/iscsi/{TARGET1}/tpgt_1/enable");
    std::fs::write(&tpg, "0").unwrap();
    let table = sh("dmsetup", &["table", "cowctl-pc-1"]);
    let sectors = table.split_whitespace().nth(1).unwrap().to_string();
    sh(
        "dmsetup",
        &[
            "load",
            "cowctl-pc-1",
            "--table",
            &format!("0 {sectors} error"),
        ],
    );
    sh("dmsetup", &["resume", "cowctl-pc-1"]);
    let discard = site.dir.path().join("cow/pc-1.cow.discard");
    std::fs::rename(&cow, &discard).unwrap();
    cowctl::cowfile::create_empty(&cow, 4 << 20).unwrap();

    // Every command still works and says what happened.
    let rows = site.status();
    assert_eq!(rows[0]["state"], "parked", "{rows:?}");
    let plan = site.ok(&["plan"]);
    assert!(plan.contains("finish the reset of pc-1"), "{plan}");
    site.ok(&["apply"]);
    assert!(!discard.exists(), "the old COW is gone");
    let loops = sh("losetup", &["-a"]);
    assert!(
        !loops.contains("pc-1.cow.discard"),
        "its loop is detached: {loops}"
    );
    let disk = iscsid
        .login("pc1", TARGET1, Some(("lab", &secret("pc-1"))))
        .unwrap();
    assert!(
        read_device(&disk) == site.golden,
        "pc-1 reads the golden image"
    );
    iscsid.logout("pc1", TARGET1);
    assert!(site.ok(&["apply"]).contains("nothing to do"));
    site.ok(&["down"]);
    assert_clean(site.dir.path());
}

/// `cowctl doctor` on the stock kernel, as root, before anything is applied: the kernel
/// serves, and device-mapper's snapshot target, loop, LIO and the AoE path are all found.
/// With `vblade` moved aside it names the missing piece and exits 1.
#[test]
#[ignore = "needs the VM: run through scripts/test-kernel.sh"]
fn doctor_finds_every_kernel_piece_and_names_a_missing_one() {
    let site = Site::new();
    let run = || {
        let out = site.cowctl(&["doctor"]);
        let text = String::from_utf8(out.stdout).unwrap();
        eprintln!("$ cowctl doctor\n{text}");
        (out.status.code(), text)
    };
    let line = |text: &str, area: &str| {
        text.lines()
            .find(|l| l[6.min(l.len())..].starts_with(&format!("{area}: ")))
            .unwrap_or_else(|| panic!("no {area} line in:\n{text}"))
            .to_string()
    };
    let (_, text) = run();
    let backend = line(&text, "backend");
    assert!(
        backend.starts_with("ok    backend: the kernel (loop + dm-snapshot) will serve"),
        "{backend}"
    );
    for area in ["device-mapper", "loop", "lio", "aoe"] {
        let l = line(&text, area);
        assert!(l.starts_with("ok "), "{l}");
    }
    assert!(line(&text, "aoe").contains("vblade"), "{text}");
    // vblade moved aside for a moment (the VM's root is a throwaway overlay); doctor looks
    // on $PATH and in every sbin folder, as root's programs are found.
    struct Aside(PathBuf);
    impl Drop for Aside {
        fn drop(&mut self) {
            std::fs::rename(self.0.with_extension("aside"), &self.0).unwrap();
        }
    }
    let vblade = PathBuf::from(sh("sh", &["-c", "command -v vblade"]).trim())
        .canonicalize()
        .unwrap();
    std::fs::rename(&vblade, vblade.with_extension("aside")).unwrap();
    let aside = Aside(vblade);
    let (code, text) = run();
    drop(aside);
    let aoe = line(&text, "aoe");
    assert!(
        aoe.starts_with(
            "FAIL  aoe: the kernel backend exports AoE PCs with vblade, which is not installed"
        ),
        "{aoe}"
    );
    assert_eq!(code, Some(1), "{text}");
}
