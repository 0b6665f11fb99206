//! The control plane against the recording fake kernel: what is planned, in which order it
//! reaches the kernel, and what is refused. The real kernel runs the same code in the VM
//! (tests/vm_kernel_control.rs).

mod common;

use std::path::{Path, PathBuf};

use common::room::{Iscsi, Pc, RoomBuilder};
use cowctl::control::observe::Observed;
use cowctl::control::plan::{plan_apply, plan_down};
use cowctl::control::{self, apply, reset, status, Ctx};
use cowctl::kernel::fake::Fake;
use cowctl::manifest::Manifest;
use cowctl::room::lock;
use cowctl::room::reset as room_reset;
use cowctl::room::status as rows;
use cowctl::room::step::Step;

struct Room {
    dir: tempfile::TempDir,
    manifest: Manifest,
    fake: Fake,
}

impl Room {
    /// Two iSCSI PCs with ACLs and CHAP, one AoE PC, all on one image.
    fn new() -> Room {
        Room::with(|_| {})
    }

    fn with(edit: impl FnOnce(&mut String)) -> Room {
        Room::in_dir(tempfile::tempdir().unwrap(), edit)
    }

    /// [`Room::with`] in `dir` (a file system of the test's own).
    fn in_dir(dir: tempfile::TempDir, edit: impl FnOnce(&mut String)) -> Room {
        std::fs::write(dir.path().join("golden.img"), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("other.img"), vec![8u8; 1 << 20]).unwrap();
        common::write_private(&dir.path().join("chap.secret"), "a-secret-of-16ch\n");
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        let mut text = manifest_text(dir.path());
        edit(&mut text);
        let manifest =
            Manifest::parse(&dir.path().join("room.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
        Room {
            dir,
            manifest,
            fake: Fake::new(),
        }
    }

    /// The same room with a changed manifest, on the same fake kernel and files.
    fn ctx_with<T>(
        &self,
        edit: impl FnOnce(String) -> String,
        f: impl FnOnce(&Ctx, &Observed) -> T,
    ) -> T {
        let m = Manifest::parse(
            Path::new("room.yaml"),
            &edit(manifest_text(self.dir.path())),
        )
        .unwrap();
        self.ctx_on(&m, f)
    }

    /// Runs `f` on the room's fake kernel, with `m` as the manifest and what it observes now.
    fn ctx_on<T>(&self, m: &Manifest, f: impl FnOnce(&Ctx, &Observed) -> T) -> T {
        let kernel = self.fake.kernel();
        let ctx = Ctx {
            manifest: m,
            kernel: &kernel,
            run_dir: self.run_dir(),
        };
        f(&ctx, &Observed::read(&kernel).unwrap())
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn ctx_do<T>(&self, f: impl FnOnce(&Ctx, &Observed) -> T) -> T {
        self.ctx_on(&self.manifest, f)
    }

    fn plan(&self) -> control::Result<Vec<Step>> {
        self.ctx_do(plan_apply)
    }

    fn apply(&self) -> control::Result<()> {
        self.ctx_do(|ctx, obs| {
            let actions = plan_apply(ctx, obs)?;
            apply::run(ctx, &actions, &mut |_, _| {})
        })
    }

    fn down(&self, names: &[&str]) -> control::Result<()> {
        self.ctx_do(|ctx, obs| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let pcs = ctx.manifest.select(&names).unwrap();
            apply::run(ctx, &plan_down(ctx, obs, &pcs).flatten(), &mut |_, _| {})
        })
    }

    fn cow(&self, pc: &str) -> PathBuf {
        self.dir.path().join(format!("cow/{pc}.cow"))
    }
}

fn position(log: &[String], prefix: &str) -> usize {
    log.iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{}", log.join("\n")))
}

fn exact(log: &[String], line: &str) -> usize {
    log.iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no {line:?} in\n{}", log.join("\n")))
}

#[test]
fn apply_builds_bottom_up_and_shares_the_image_loop() {
    let room = Room::new();
    let plan = room.plan().unwrap();
    let shown: Vec<String> = plan.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        plan.iter()
            .filter(|a| matches!(a, Step::AttachImage { .. }))
            .count(),
        1,
        "{shown:#?}"
    );
    assert_eq!(plan.len(), 3 * 5 + 1, "{shown:#?}");
    room.apply().unwrap();
    let log = room.fake.log();
    assert!(
        position(
            &log,
            &format!("loop attach {}/golden.img ro", room.dir.path().display())
        ) < position(&log, "dm create cowctl-pc-1")
    );
    assert!(
        position(&log, "dm create cowctl-pc-1")
            < position(&log, "configfs mkdir core/iblock_0/cowctl-pc-1")
    );
    assert!(
        position(&log, "configfs mkdir core/iblock_0/cowctl-pc-1")
            < position(&log, "configfs mkdir iscsi/iqn.2024-01.lan.test:pc-1")
    );
    assert!(position(&log, "configfs write iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/acls/iqn.2024-01.lan.pc:pc-1/auth/password <secret>") < position(&log, "configfs write iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/enable 1"));
    assert!(
        log.iter()
            .any(|l| l.starts_with("vblade start pc-3 -m 00:00:00:00:00:00 9 3 lo /dev/dm-2")),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("a-secret-of-16ch")),
        "the CHAP secret must never be logged"
    );
    for pc in ["pc-1", "pc-2", "pc-3"] {
        let info = cowctl::cowfile::inspect(&room.cow(pc), None).unwrap();
        assert_eq!(info.chunk_sectors, 8);
        assert!(
            cowctl::image::golden_record::read(&room.cow(pc))
                .unwrap()
                .is_some(),
            "{pc} has its golden record"
        );
    }
}

#[test]
fn a_second_apply_does_nothing() {
    let room = Room::new();
    room.apply().unwrap();
    let plan = room.plan().unwrap();
    assert!(
        plan.is_empty(),
        "{:#?}",
        plan.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    );
}

#[test]
fn down_tears_down_top_down_and_keeps_cow_files() {
    let room = Room::new();
    room.apply().unwrap();
    room.fake.clear_log();
    room.down(&[]).unwrap();
    let log = room.fake.log();
    let iqn = "iscsi/iqn.2024-01.lan.test:pc-1";
    assert!(
        position(&log, &format!("configfs write {iqn}/tpgt_1/enable 0"))
            < position(&log, &format!("configfs unlink {iqn}/tpgt_1/acls"))
    );
    let np = position(
        &log,
        &format!("configfs rmdir {iqn}/tpgt_1/np/127.0.0.1:3260"),
    );
    assert!(np < exact(&log, &format!("configfs rmdir {iqn}/tpgt_1")));
    assert!(
        exact(&log, &format!("configfs rmdir {iqn}"))
            < position(&log, "configfs rmdir core/iblock_0/cowctl-pc-1")
    );
    assert!(
        position(&log, "configfs rmdir core/iblock_0/cowctl-pc-1")
            < position(&log, "dm remove cowctl-pc-1")
    );
    assert!(position(&log, "vblade stop pc-3") < position(&log, "dm remove cowctl-pc-3"));
    // The iSCSI fabric stays registered (other targets may use it); nothing of the PCs stays.
    let left: Vec<String> = room
        .fake
        .configfs_made()
        .into_iter()
        .filter(|p| p != "iscsi")
        .collect();
    assert!(left.is_empty(), "configfs leftovers: {left:?}");
    assert!(room.fake.state().dm.is_empty() && room.fake.state().loops.is_empty());
    assert!(room.cow("pc-1").exists() && room.cow("pc-3").exists());
    // And back: the same COWs are attached again.
    room.apply().unwrap();
    assert_eq!(room.fake.state().dm.len(), 3);
}

#[test]
fn down_of_one_pc_keeps_the_shared_image_loop() {
    let room = Room::new();
    room.apply().unwrap();
    room.down(&["pc-2"]).unwrap();
    let s = room.fake.state();
    assert_eq!(
        s.dm.keys().cloned().collect::<Vec<_>>(),
        ["cowctl-pc-1", "cowctl-pc-3"]
    );
    assert!(
        s.loops.iter().any(|l| l.read_only),
        "the image loop is still used by pc-1 and pc-3"
    );
}

#[test]
fn a_failing_step_undoes_its_part_and_says_which_step() {
    let room = Room::new();
    room.fake
        .fail_on("configfs mkdir iscsi/iqn.2024-01.lan.test:pc-2/tpgt_1/np");
    let err = room.apply().unwrap_err();
    assert!(
        matches!(&err, control::Error::Step(s)
            if s.step.contains("export pc-2 as iSCSI target iqn.2024-01.lan.test:pc-2")
                && matches!(*s.error, control::Error::Lio(_))),
        "{err}"
    );
    let err = err.to_string();
    assert!(
        err.contains("export pc-2 as iSCSI target iqn.2024-01.lan.test:pc-2")
            && err.contains("step "),
        "{err}"
    );
    let made = room.fake.configfs_made();
    assert!(
        !made.iter().any(|p| p.contains("pc-2")),
        "pc-2's half-made target is left: {made:?}"
    );
    assert!(
        made.iter().any(|p| p.contains("pc-1")),
        "pc-1's finished export stays"
    );
    room.fake.state().fail_on = None;
    room.apply().unwrap();
    assert!(room.plan().unwrap().is_empty());
}

#[test]
fn a_cow_made_against_another_image_is_refused() {
    let room = Room::new();
    room.apply().unwrap();
    room.down(&[]).unwrap();
    // Every PC now points at the other image, with the COW files made against the first.
    let err = room.ctx_with(
        |t| t.replace("  image: g\n", "  image: o\n"),
        |ctx, obs| plan_apply(ctx, obs).unwrap_err(),
    );
    let control::Error::Refused { problems, .. } = &err else {
        panic!("not refused before any change: {err}")
    };
    for pc in ["pc-1", "pc-2", "pc-3"] {
        assert!(
            problems.iter().any(|p| p.starts_with(&format!("{pc}: COW"))
                && p.contains("was made against golden image")),
            "{pc}: {problems:?}"
        );
    }
    let err = err.to_string();
    assert!(
        err.contains("pc-1: COW")
            && err.contains("was made against golden image")
            && err.contains("golden.img"),
        "{err}"
    );
    assert!(
        err.contains("pc-3: COW"),
        "every PC is named at once: {err}"
    );
}

fn manifest_text(dir: &Path) -> String {
    RoomBuilder::new()
        .image("o", "other.img", Vec::new())
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.test")
                .portal("127.0.0.1:3260")
                .chap("lab", "a-secret-of-16ch"),
        )
        .aoe("lo")
        .pc(Pc::new("pc-{1..2}").initiator("iqn.2024-01.lan.pc:{name}"))
        .pc(Pc::new("pc-3").aoe(9, 3).mac("00:00:00:00:00:00"))
        .text_for(dir)
}

#[test]
fn missing_portal_addresses_and_interfaces_are_named_before_anything_changes() {
    let room = Room::with(|t| {
        *t = t
            .replace("portals: [127.0.0.1:3260]", "portals: [192.0.2.7:3260]")
            .replace("interface: lo", "interface: eth9");
    });
    let err = room.plan().unwrap_err();
    let control::Error::Refused { problems, .. } = &err else {
        panic!("not refused before any change: {err}")
    };
    assert!(
        problems
            .iter()
            .any(|p| p
                == "iSCSI portal 192.0.2.7:3260: no interface that is up has address 192.0.2.7"),
        "{err}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "AoE interface eth9 does not exist"),
        "{err}"
    );
    assert!(
        room.fake.log().is_empty(),
        "nothing may reach the kernel: {:?}",
        room.fake.log()
    );
}

#[test]
fn reset_while_exported_pauses_io_and_swaps_in_a_fresh_snapshot() {
    let room = Room::new();
    room.apply().unwrap();
    // Give pc-1's COW some content to lose.
    let engine = cowctl::cowfile::open_engine(
        &room.dir.path().join("golden.img"),
        &room.cow("pc-1"),
        None,
        false,
    )
    .unwrap();
    engine.write_at(&[1u8; 4096], 0).unwrap();
    drop(engine);
    room.fake.clear_log();
    let r = room
        .ctx_do(|ctx, obs| reset::reset(ctx, obs, ctx.manifest.pc("pc-1").unwrap()))
        .unwrap();
    assert!(r.live);
    let log = room.fake.log();
    let tpg = "configfs write iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/enable";
    let cow = format!("loop attach {}", room.cow("pc-1").display());
    assert!(position(&log, &format!("{tpg} 0")) < position(&log, "dm replace cowctl-pc-1 error"));
    assert!(
        position(&log, "dm replace cowctl-pc-1 error") < position(&log, &cow),
        "the fresh COW is attached while parked"
    );
    assert!(position(&log, &cow) < position(&log, "dm replace cowctl-pc-1 snapshot"));
    assert!(
        position(&log, "dm replace cowctl-pc-1 snapshot") < position(&log, &format!("{tpg} 1"))
    );
    assert!(
        position(&log, &format!("{tpg} 1")) < position(&log, "loop detach"),
        "the old COW is freed after the PC is back"
    );
    assert_eq!(
        cowctl::cowfile::inspect(&room.cow("pc-1"), None)
            .unwrap()
            .state,
        cowctl::cow::HeaderState::New
    );
    assert!(
        !cowctl::room::reset::discard_path(&room.cow("pc-1")).exists(),
        "the old COW is deleted"
    );
    {
        let s = room.fake.state();
        let table = &s.dm["cowctl-pc-1"].target.params;
        let cow_loop = s
            .loops
            .iter()
            .find(|l| l.backing == room.cow("pc-1"))
            .unwrap();
        assert!(
            table.contains(&cow_loop.dev.display().to_string()),
            "the snapshot uses the fresh COW's loop: {table}"
        );
        assert_eq!(
            s.loops.len(),
            4,
            "one image loop and three COW loops: {:?}",
            s.loops
        );
    }
    // AoE: the vblade is stopped and started again.
    room.fake.clear_log();
    room.ctx_do(|ctx, obs| reset::reset(ctx, obs, ctx.manifest.pc("pc-3").unwrap()))
        .unwrap();
    let log = room.fake.log();
    assert!(position(&log, "vblade stop pc-3") < position(&log, "dm replace cowctl-pc-3 error"));
    assert!(
        position(&log, "dm replace cowctl-pc-3 snapshot") < position(&log, "vblade start pc-3")
    );
}

#[test]
fn status_warns_over_the_threshold_and_on_broken_snapshots() {
    let room = Room::new();
    room.apply().unwrap();
    {
        let mut s = room.fake.state();
        s.dm.get_mut("cowctl-pc-1").unwrap().status = Some("3200/4096 16".into());
        s.dm.get_mut("cowctl-pc-2").unwrap().status = Some("Invalid".into());
    }
    let rows = room
        .ctx_do(|ctx, obs| status::collect(ctx, obs, &ctx.manifest.pcs.iter().collect::<Vec<_>>()));
    assert_eq!(
        (rows[0].state, rows[0].warn, rows[0].used_percent),
        (rows::PcState::Active, true, Some(78.125))
    );
    assert_eq!(
        (rows[1].state, rows[1].warn),
        (rows::PcState::Invalid, true)
    );
    assert!(!rows[2].warn);
    let shown = rows::render(&rows, 75.0);
    assert!(
        shown.contains("WARNING: pc-1 is 78.1% full (warning at 75%)"),
        "{shown}"
    );
    assert!(shown.contains("WARNING: pc-2 is invalid"), "{shown}");
    assert!(shown.lines().next().unwrap().starts_with("PC "), "{shown}");
}

#[test]
fn a_pc_removed_from_the_manifest_is_taken_down() {
    let room = Room::new();
    room.apply().unwrap();
    let plan = room.ctx_with(
        |t| t.replace("pc-{1..2}", "pc-{1..1}"),
        |ctx, obs| plan_apply(ctx, obs).unwrap(),
    );
    let shown: Vec<String> = plan.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        shown[0], "remove iSCSI target iqn.2024-01.lan.test:pc-2",
        "{shown:#?}"
    );
    assert_eq!(shown[1], "remove dm snapshot cowctl-pc-2", "{shown:#?}");
    assert!(
        shown[2].starts_with("detach /dev/loop") && shown[2].ends_with("pc-2.cow)"),
        "{shown:#?}"
    );
    assert_eq!(plan.len(), 3, "the shared image loop stays: {shown:#?}");
}

#[test]
fn a_second_mutating_cowctl_is_told_who_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _held = lock::acquire(dir.path(), "apply").unwrap();
    let err = lock::acquire(dir.path(), "reset").err().unwrap();
    assert!(
        matches!(&err, lock::LockError::Held { holder }
            if holder.contains("`cowctl apply`")
                && holder.contains(&std::process::id().to_string())),
        "{err}"
    );
    let err = err.to_string();
    assert!(
        err.contains("another cowctl is at work")
            && err.contains("`cowctl apply`")
            && err.contains(&std::process::id().to_string()),
        "{err}"
    );
}

#[test]
fn without_device_mapper_apply_stops_and_status_reads_the_cow_files() {
    let room = Room::new();
    cowctl::cowfile::create(
        &room.cow("pc-1"),
        cowctl::base::units::ByteSize(2 << 20),
        cowctl::base::units::ByteSize(4096),
    )
    .unwrap();
    room.fake.state().no_dm = true;
    let kernel = room.fake.kernel();
    assert!(
        matches!(Observed::read(&kernel), Err(control::Error::Dm(_))),
        "plan and apply need device-mapper"
    );
    let ctx = Ctx {
        manifest: &room.manifest,
        kernel: &kernel,
        run_dir: room.run_dir(),
    };
    let all: Vec<_> = room.manifest.pcs.iter().collect();
    let obs = Observed::for_status(&kernel, &room.manifest, &all).unwrap();
    let rows = status::collect(&ctx, &obs, &all);
    // One PC alone the same way.
    let one = Observed::for_status(&kernel, &room.manifest, &all[..1]).unwrap();
    assert_eq!(
        status::collect(&ctx, &one, &all[..1])[0].state,
        rows::PcState::NotApplied
    );
    assert_eq!(rows[0].state, rows::PcState::NotApplied);
    assert_eq!(
        (rows[0].used_sectors, rows[0].total_sectors),
        (Some(16), Some(4096)),
        "numbers from the COW file"
    );
    assert_eq!(rows[1].used_sectors, None, "pc-2 has no COW yet");
}

/// Writes a block into a PC's COW through the engine, so a reset has something to lose.
fn write_something(room: &Room, pc: &str) {
    let engine = cowctl::cowfile::open_engine(
        &room.dir.path().join("golden.img"),
        &room.cow(pc),
        None,
        false,
    )
    .unwrap();
    engine.write_at(&[1u8; 4096], 0).unwrap();
    engine.flush().unwrap();
}

#[test]
fn a_reset_acts_on_what_the_kernel_serves_not_on_an_edited_manifest() {
    let room = Room::new();
    room.apply().unwrap();
    write_something(&room, "pc-1");
    let before = std::fs::read(room.cow("pc-1")).unwrap();
    std::fs::create_dir(room.dir.path().join("cow2")).unwrap();
    // The manifest now points pc-1 at another COW; the kernel still serves the old one.
    let err = room
        .ctx_with(
            |t| t.replace("/cow\n", "/cow2\n"),
            |ctx, obs| reset::reset(ctx, obs, ctx.manifest.pc("pc-1").unwrap()),
        )
        .unwrap_err();
    assert!(
        matches!(&err, control::Error::OtherCow { pc, served, .. }
            if pc == "pc-1" && *served == room.cow("pc-1")),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("the kernel serves the COW") && msg.contains("nothing is reset"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(room.cow("pc-1")).unwrap(),
        before,
        "the served COW is untouched"
    );
    assert!(!room
        .fake
        .log()
        .iter()
        .any(|l| l.contains("dm replace cowctl-pc-1")));
}

#[test]
fn a_not_applied_reset_refuses_a_cow_that_a_loop_device_holds() {
    let room = Room::new();
    room.apply().unwrap();
    // As if an apply stopped after attaching the COW: no snapshot, the loop still there.
    room.fake.state().dm.remove("cowctl-pc-2");
    let err = room
        .ctx_do(|ctx, obs| reset::reset(ctx, obs, ctx.manifest.pc("pc-2").unwrap()))
        .unwrap_err();
    assert!(
        matches!(&err, control::Error::CowAttachedAlone { pc, dev, .. }
            if pc == "pc-2" && dev.to_string_lossy().starts_with("/dev/loop")),
        "{err}"
    );
    assert!(
        err.to_string().contains("is attached to /dev/loop"),
        "{err}"
    );
}

/// Leaves pc-1 as a reset that was killed after parking its device leaves it: the export
/// paused, the device on an `error` table, the old COW set aside; `fresh_made` says
/// whether the fresh COW was made before the end.
fn interrupted_reset(room: &Room, fresh_made: bool) {
    room.apply().unwrap();
    write_something(room, "pc-1");
    let k = room.fake.kernel();
    let length = k.dm.table("cowctl-pc-1").unwrap().length;
    k.configfs
        .write("iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/enable", "0")
        .unwrap();
    k.dm.replace(
        "cowctl-pc-1",
        &cowctl::kernel::devmapper::Target::error(length),
    )
    .unwrap();
    let discard = room_reset::discard_path(&room.cow("pc-1"));
    std::fs::rename(room.cow("pc-1"), &discard).unwrap();
    // The old COW's loop now shows the new name, as a real loop device does.
    for l in room.fake.state().loops.iter_mut() {
        if l.backing == room.cow("pc-1") {
            l.backing = discard.clone();
        }
    }
    if fresh_made {
        cowctl::cowfile::create_empty(&room.cow("pc-1"), 2 << 20).unwrap();
    }
}

#[test]
fn apply_finishes_a_reset_that_stopped_half_way() {
    let room = Room::new();
    interrupted_reset(&room, true);
    // Every command still works: status names the state.
    let rows = room
        .ctx_do(|ctx, obs| status::collect(ctx, obs, &ctx.manifest.pcs.iter().collect::<Vec<_>>()));
    assert_eq!(rows[0].state, rows::PcState::Parked);
    assert!(rows[0].warn);
    let plan = room.plan().unwrap();
    assert!(
        plan.contains(&Step::FinishReset { pc: "pc-1".into() }),
        "{plan:#?}"
    );
    room.apply().unwrap();
    let discard = room_reset::discard_path(&room.cow("pc-1"));
    assert!(!discard.exists(), "the old COW is gone");
    let s = room.fake.state();
    assert_eq!(s.dm["cowctl-pc-1"].target.kind, "snapshot");
    assert!(
        !s.loops.iter().any(|l| l.backing == discard),
        "its loop detached"
    );
    drop(s);
    assert_eq!(
        cowctl::cowfile::inspect(&room.cow("pc-1"), None)
            .unwrap()
            .state,
        cowctl::cow::HeaderState::New,
        "the PC starts from the golden image"
    );
    let rows = room
        .ctx_do(|ctx, obs| status::collect(ctx, obs, &ctx.manifest.pcs.iter().collect::<Vec<_>>()));
    assert_eq!(rows[0].state, rows::PcState::Active);
    assert!(
        room.plan().unwrap().is_empty(),
        "and a second apply does nothing"
    );
}

#[test]
fn reset_finishes_a_reset_that_stopped_before_its_fresh_cow() {
    let room = Room::new();
    interrupted_reset(&room, false);
    assert!(!room.cow("pc-1").exists());
    let r = room
        .ctx_do(|ctx, obs| reset::reset(ctx, obs, ctx.manifest.pc("pc-1").unwrap()))
        .unwrap();
    assert!(r.live);
    assert!(room.cow("pc-1").exists(), "a fresh COW was made");
    assert!(!room_reset::discard_path(&room.cow("pc-1")).exists());
    assert_eq!(room.fake.state().dm["cowctl-pc-1"].target.kind, "snapshot");
    let enabled = room
        .fake
        .kernel()
        .configfs
        .read("iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/enable")
        .unwrap();
    assert_eq!(enabled.trim(), "1", "the export is back");
}

#[test]
fn read_only_is_refused_on_the_kernel_backend() {
    let room =
        Room::with(|t| *t = t.replace("    shelf: 9\n", "    shelf: 9\n    read_only: true\n"));
    let err = room.apply().unwrap_err();
    assert!(
        matches!(&err, control::Error::Refused { problems, .. }
            if problems.iter().any(|p| p.starts_with("pc-3: read_only is served by the userspace engine only"))),
        "{err}"
    );
}

#[test]
fn a_reflink_pc_is_a_linear_device_over_its_clone_and_a_reset_reloads_its_table() {
    let xfs = common::kernel::Mounted::xfs(true);
    let dir = tempfile::tempdir_in(xfs.mnt()).unwrap();
    let room = Room::in_dir(dir, |t| {
        *t = t.replace("golden.img\n", "golden.img\n    storage: reflink\n")
    });
    let plan = room.plan().unwrap();
    let pc1: Vec<&str> = plan
        .iter()
        .filter(|s| s.to_string().contains("pc-1"))
        .map(Step::kind)
        .collect();
    assert_eq!(
        pc1,
        [
            "clone disk",
            "record golden",
            "attach COW",
            "create linear",
            "export iSCSI"
        ]
    );
    assert!(
        !plan.iter().any(|s| matches!(s, Step::AttachImage { .. })),
        "clones need no image loop"
    );
    room.apply().unwrap();
    let disk = room.dir.path().join("cow/pc-1.img");
    let golden = std::fs::read(room.dir.path().join("golden.img")).unwrap();
    assert_eq!(std::fs::read(&disk).unwrap(), golden);
    let before = room.fake.state().dm["cowctl-pc-1"].target.clone();
    assert_eq!(before.kind, "linear");
    assert_eq!(before.length, golden.len() as u64 / 512);
    assert!(
        room.plan().unwrap().is_empty(),
        "applied: nothing left to do"
    );

    std::fs::write(&disk, vec![9u8; golden.len()]).unwrap();
    room.fake.clear_log();
    let r = room
        .ctx_do(|ctx, obs| reset::reset(ctx, obs, ctx.manifest.pc("pc-1").unwrap()))
        .unwrap();
    assert!(r.live);
    let log = room.fake.log();
    let off = position(
        &log,
        "configfs write iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/enable 0",
    );
    let reload = position(&log, "dm replace cowctl-pc-1 linear");
    let on = position(
        &log,
        "configfs write iscsi/iqn.2024-01.lan.test:pc-1/tpgt_1/enable 1",
    );
    assert!(off < reload && reload < on, "{log:#?}");
    let after = room.fake.state().dm["cowctl-pc-1"].target.clone();
    assert_ne!(
        after.params, before.params,
        "the table names the fresh clone's loop"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), golden, "a fresh clone");
    assert!(
        !room_reset::discard_path(&disk).exists(),
        "the old clone is gone"
    );

    room.down(&["pc-1"]).unwrap();
    assert!(!room.fake.state().dm.contains_key("cowctl-pc-1"));
    assert!(disk.exists(), "down keeps the PC's disk");
}

/// Lines of `trace` that name none of `pcs`: reads of the rest of the room.
fn about_others<'a>(trace: &'a [String], pcs: &[&str]) -> Vec<&'a String> {
    trace
        .iter()
        .filter(|l| !pcs.iter().any(|pc| l.contains(pc)))
        .collect()
}

#[test]
fn status_names_a_cow_removed_replaced_or_cut_under_an_applied_pc() {
    let room = Room::new();
    room.apply().unwrap();
    let rows = |room: &Room| {
        room.ctx_do(|ctx, obs| {
            status::collect(ctx, obs, &ctx.manifest.pcs.iter().collect::<Vec<_>>())
        })
    };
    assert!(rows(&room).iter().all(|r| r.notes.is_empty() && !r.warn));
    let aside = room.dir.path().join("pc-1.aside");
    std::fs::rename(room.cow("pc-1"), &aside).unwrap();
    let copy = room.dir.path().join("pc-2.copy");
    std::fs::copy(room.cow("pc-2"), &copy).unwrap();
    std::fs::rename(&copy, room.cow("pc-2")).unwrap();
    let len = std::fs::metadata(room.cow("pc-3")).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(room.cow("pc-3"))
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let seen = rows(&room);
    let said = |i: usize, what: &str| {
        assert!(seen[i].warn, "{:?}", seen[i]);
        assert!(
            seen[i].notes.iter().any(|n| n.contains(what)),
            "{}: {:?}",
            seen[i].name,
            seen[i].notes
        );
    };
    said(0, "pc-1's COW");
    said(0, "was removed while it is served");
    said(1, "was replaced by another file while it is served");
    said(
        2,
        &format!("was cut to {} bytes while it is served", len - 4096),
    );
    std::fs::rename(&aside, room.cow("pc-1")).unwrap();
    assert!(rows(&room)[0].notes.is_empty(), "the file is back");
}

#[test]
fn status_of_one_pc_reads_only_that_pc() {
    let room = Room::new();
    room.apply().unwrap();
    let rows = room.ctx_do(|ctx, _| {
        room.fake.take_trace();
        let pc = ctx.manifest.pc("pc-1").unwrap();
        let obs = Observed::for_status(ctx.kernel, ctx.manifest, &[pc]).unwrap();
        status::collect(ctx, &obs, &[pc])
    });
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, rows::PcState::Active);
    let trace = room.fake.take_trace();
    assert!(
        about_others(&trace, &["pc-1"]).is_empty(),
        "status of pc-1 read more than pc-1:\n{}",
        trace.join("\n")
    );
    assert!(trace.iter().any(|l| l == "dm status cowctl-pc-1"));
}

#[test]
fn status_of_the_room_reads_each_kernel_source_once() {
    let room = Room::new();
    room.apply().unwrap();
    let rows = room.ctx_do(|ctx, _| {
        room.fake.take_trace();
        let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
        let obs = Observed::for_status(ctx.kernel, ctx.manifest, &pcs).unwrap();
        status::collect(ctx, &obs, &pcs)
    });
    assert_eq!(rows.len(), 3);
    let trace = room.fake.take_trace();
    let count = |line: &str| trace.iter().filter(|l| *l == line).count();
    assert_eq!(count("dm list"), 1, "{}", trace.join("\n"));
    assert_eq!(count("configfs list iscsi"), 1, "{}", trace.join("\n"));
    assert_eq!(count("loop list"), 0, "status needs no loops");
    for pc in ["pc-1", "pc-2", "pc-3"] {
        assert_eq!(count(&format!("dm status cowctl-{pc}")), 1);
        assert_eq!(count(&format!("dm table cowctl-{pc}")), 1);
    }
}

#[test]
fn apply_and_down_read_the_rooms_loops_and_targets_once() {
    let room = Room::new();
    room.fake.take_trace();
    room.apply().unwrap();
    let trace = room.fake.take_trace();
    let count = |t: &[String], line: &str| t.iter().filter(|l| *l == line).count();
    // Once to observe, once when the first snapshot needs the loops attached so far.
    assert_eq!(count(&trace, "loop list"), 2, "{}", trace.join("\n"));
    room.down(&[]).unwrap();
    let trace = room.fake.take_trace();
    assert_eq!(count(&trace, "loop list"), 1, "{}", trace.join("\n"));
    assert_eq!(
        count(&trace, "configfs list iscsi"),
        1,
        "{}",
        trace.join("\n")
    );
    assert_eq!(
        room.fake.configfs_made(),
        ["iscsi"],
        "only the fabric stays"
    );
    assert!(room.fake.state().dm.is_empty() && room.fake.state().loops.is_empty());
}

#[test]
fn a_reset_reads_nothing_of_the_room_while_the_pc_is_paused() {
    let room = Room::new();
    room.apply().unwrap();
    room.ctx_do(|ctx, obs| {
        room.fake.take_trace();
        reset::reset(ctx, obs, ctx.manifest.pc("pc-2").unwrap()).unwrap()
    });
    let trace = room.fake.take_trace();
    let tpg = "configfs write iscsi/iqn.2024-01.lan.test:pc-2/tpgt_1/enable";
    let from = exact(&trace, &format!("{tpg} 0"));
    let to = exact(&trace, &format!("{tpg} 1"));
    let paused = &trace[from..=to];
    assert!(
        about_others(paused, &["pc-2"]).is_empty(),
        "the pause read the room:\n{}",
        paused.join("\n")
    );
}

#[test]
fn reset_of_many_pcs_resets_each_and_reports_each_failure() {
    let room = Room::new();
    room.apply().unwrap();
    let results = room.ctx_do(|ctx, obs| {
        let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
        reset::reset_many(ctx, obs, &pcs)
    });
    let names: Vec<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap().pc.clone())
        .collect();
    assert_eq!(
        names,
        ["pc-1", "pc-2", "pc-3"],
        "results come back in order"
    );
    assert!(results.iter().all(|r| r.as_ref().unwrap().live));

    room.fake.fail_on("dm replace cowctl-pc-2 error");
    let results = room.ctx_do(|ctx, obs| {
        let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
        reset::reset_many(ctx, obs, &pcs)
    });
    assert!(
        results[0].is_ok() && results[2].is_ok(),
        "the others are reset"
    );
    let err = results[1].as_ref().unwrap_err();
    assert!(
        matches!(err, control::Error::Resetting { pc, source }
            if pc == "pc-2" && matches!(**source, control::Error::Dm(_))),
        "{err}"
    );
    let err = cowctl::base::logtext::chain(err);
    assert!(err.contains("pc-2"), "{err}");
    // Every PC is served again, pc-2 on its old snapshot.
    room.fake.state().fail_on = None;
    let rows = room.ctx_do(|ctx, _| {
        let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
        let obs = Observed::for_status(ctx.kernel, ctx.manifest, &pcs).unwrap();
        status::collect(ctx, &obs, &pcs)
    });
    assert!(rows.iter().all(|r| r.state == rows::PcState::Active));
}

#[test]
fn a_teardown_side_by_side_removes_every_pc_and_keeps_going_past_a_failure() {
    let room = Room::new();
    room.apply().unwrap();
    room.fake.fail_on("dm remove cowctl-pc-2");
    let err = room.ctx_do(|ctx, obs| {
        let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
        let teardown = plan_down(ctx, obs, &pcs);
        assert_eq!(teardown.pcs.len(), 3, "one group per PC");
        apply::run_teardown(ctx, &teardown, &mut |_, _| {}).unwrap_err()
    });
    let control::Error::Teardown { failures } = &err else {
        panic!("not the teardown's own refusal: {err}")
    };
    assert_eq!(failures.len(), 1, "{err}");
    assert!(
        failures[0].contains("remove") && failures[0].contains("cowctl-pc-2"),
        "{err}"
    );
    {
        let state = room.fake.state();
        let left: Vec<&String> = state.dm.keys().collect();
        assert_eq!(left, ["cowctl-pc-2"], "the other PCs are down");
        assert!(
            state.loops.iter().any(|l| l.read_only),
            "the image loop stays while pc-2's snapshot uses it"
        );
    }
    room.fake.state().fail_on = None;
    room.ctx_do(|ctx, obs| {
        let pcs: Vec<_> = ctx.manifest.pcs.iter().collect();
        let teardown = plan_down(ctx, obs, &pcs);
        apply::run_teardown(ctx, &teardown, &mut |_, _| {}).unwrap()
    });
    let state = room.fake.state();
    assert!(state.dm.is_empty() && state.loops.is_empty());
}

/// A room on a versioned image with v1 and v2 (v1 current), applied on the fake kernel.
fn versioned_room() -> Room {
    let room = Room::new();
    let d = room.dir.path();
    let store = cowctl::image::Store::open(&d.join("versions")).unwrap();
    for (v, byte) in [("v1", 1u8), ("v2", 2u8)] {
        let raw = d.join(format!("{v}.raw"));
        std::fs::write(&raw, vec![byte; 1 << 20]).unwrap();
        let store = cowctl::image::Store::open(&store.dir).unwrap();
        cowctl::image::import(&store, &raw, Some(v.parse().unwrap()), "").unwrap();
    }
    let text = manifest_text(d).replace(
        &format!("  g:\n    path: {}/golden.img\n", d.display()),
        &format!("  g:\n    versions: {}/versions\n", d.display()),
    );
    std::fs::write(d.join("room.yaml"), text).unwrap();
    let room = Room {
        manifest: cowctl::image::load_manifest(&d.join("room.yaml")).unwrap(),
        ..room
    };
    room.apply().unwrap();
    room
}

impl Room {
    /// Runs `f` with the manifest as `cowctl` loads it now (each PC on its COW's version).
    fn ctx_reloaded<T>(&self, f: impl FnOnce(&Ctx, &Observed) -> T) -> T {
        self.ctx_on(
            &cowctl::image::load_manifest(&self.dir.path().join("room.yaml")).unwrap(),
            f,
        )
    }

    fn origin_of(&self, pc: &str) -> PathBuf {
        let s = self.fake.state();
        let params = &s.dm[&format!("cowctl-{pc}")].target.params;
        let origin = params.split(' ').next().unwrap();
        s.loops
            .iter()
            .find(|l| l.dev.display().to_string() == origin || l.number.to_string() == origin)
            .map(|l| l.backing.clone())
            .unwrap_or_else(|| panic!("no loop {origin}"))
    }
}

#[test]
fn resets_move_pcs_to_the_promoted_version_and_free_the_old_versions_loop() {
    let room = versioned_room();
    let d = room.dir.path().join("versions");
    let (v1, v2) = (d.join("v1/disk.img"), d.join("v2/disk.img"));
    assert_eq!(room.origin_of("pc-1"), v1);
    let store = cowctl::image::Versions::Files(cowctl::image::Store::open(&d).unwrap());
    cowctl::image::promote(&store, &"v2".parse().unwrap(), &[]).unwrap();
    room.fake.clear_log();
    room.ctx_reloaded(|ctx, obs| {
        let m = ctx.manifest;
        let pcs = [m.pc("pc-1").unwrap(), m.pc("pc-2").unwrap()];
        for r in reset::reset_many(ctx, obs, &pcs) {
            r.unwrap();
        }
    });
    let log = room.fake.log();
    let attach_v2 = format!("loop attach {} ro", v2.display());
    assert_eq!(
        log.iter().filter(|l| l.starts_with(&attach_v2)).count(),
        1,
        "v2 is attached once for both PCs:\n{}",
        log.join("\n")
    );
    assert!(exact(&log, &attach_v2) < position(&log, "dm replace cowctl-pc-1 error"));
    assert_eq!(room.origin_of("pc-1"), v2);
    assert_eq!(room.origin_of("pc-2"), v2);
    assert_eq!(room.origin_of("pc-3"), v1, "pc-3 stays until its own reset");
    assert!(!log
        .iter()
        .any(|l| l.starts_with("loop detach") && l.contains("v1")));
    let sidecar = cowctl::image::golden_record::read(&room.cow("pc-1"))
        .unwrap()
        .unwrap();
    assert_eq!(sidecar.image, v2);

    // The last PC on v1 leaves: its loop goes.
    room.ctx_reloaded(|ctx, obs| {
        let m = ctx.manifest;
        assert_eq!(m.pc("pc-1").unwrap().image, "g@v2");
        assert_eq!(m.pc("pc-3").unwrap().image, "g@v1");
        reset::reset(ctx, obs, m.pc("pc-3").unwrap()).unwrap();
    });
    assert_eq!(room.origin_of("pc-3"), v2);
    let s = room.fake.state();
    assert!(
        !s.loops.iter().any(|l| l.backing == v1),
        "v1's loop is detached: {:?}",
        s.loops
    );
}

#[test]
fn apply_resumes_a_device_a_killed_commit_left_suspended() {
    let room = Room::new();
    room.apply().unwrap();
    room.fake.kernel().dm.suspend("cowctl-pc-2").unwrap();
    let plan: Vec<String> = room.plan().unwrap().iter().map(|a| a.to_string()).collect();
    assert_eq!(
        plan,
        ["resume cowctl-pc-2, left suspended by an image commit that did not finish"]
    );
    room.apply().unwrap();
    assert!(!room.fake.state().dm["cowctl-pc-2"].suspended);
    assert!(room.plan().unwrap().is_empty());
}

/// A plan's steps carry everything they make (the target's IQN, portals, ACL and CHAP; the
/// vblade's address; the snapshot's image, COW, mode and chunk): run under a manifest whose
/// PCs have other names and settings, it builds the room it was planned for.
#[test]
fn applying_a_plan_looks_nothing_up_in_the_manifest() {
    let room = Room::new();
    let plan = room.plan().unwrap();
    room.ctx_with(
        |t| {
            t.replace("pc-{1..2}", "other-{1..2}")
                .replace("name: pc-3", "name: other-3")
                .replace("shelf: 9", "shelf: 4")
                .replace("username: lab", "username: someone-else")
                .replace("chunk: 4KiB", "chunk: 64KiB")
        },
        |ctx, _| apply::run(ctx, &plan, &mut |_, _| {}).unwrap(),
    );
    let log = room.fake.log().join("\n");
    for want in [
        "iqn.2024-01.lan.test:pc-1",
        "iqn.2024-01.lan.test:pc-2",
        "cowctl-pc-3",
    ] {
        assert!(log.contains(want), "{want:?} not in\n{log}");
    }
    assert!(!log.contains("other-"), "{log}");
    assert!(!log.contains("someone-else"), "{log}");
    // Compared with the room planned and applied the ordinary way, the kernel holds the same.
    let direct = Room::new();
    direct.apply().unwrap();
    let strip = |l: String| l.replace(&room.dir.path().display().to_string(), "D");
    let a: Vec<String> = room.fake.log().into_iter().map(strip).collect();
    let strip = |l: String| l.replace(&direct.dir.path().display().to_string(), "D");
    let b: Vec<String> = direct.fake.log().into_iter().map(strip).collect();
    assert_eq!(a, b);
}
