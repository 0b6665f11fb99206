//! Rooms whose image has `storage: rbd`, served by `cowctl serve` from clones in a real Ceph
//! cluster that the test starts (scripts/ceph/cluster.sh: one monitor, one manager, one
//! OSD on a sparse file, all on loopback; one cluster for every test here). The `rbd`
//! command line checks what cowctl did: apply clones each PC's disk from the image's
//! protected snapshot, NBD and iSCSI clients write it, status counts the clone's objects as
//! `rbd du` does against the PC's quota, reset swaps in a fresh clone while the PC stays
//! exported and removes the old one, down and apply keep every written byte, the guard
//! refuses a clone of another snapshot, a second gateway cannot serve a PC the first holds,
//! and a qemu PC boots from a clone with its iPXE ROM.

mod common;
#[path = "ceph_rbd_room/doctor.rs"]
mod doctor;
#[path = "ceph_rbd_room/floating.rs"]
mod floating;
#[path = "ceph_rbd_room/gateways.rs"]
mod gateways;
#[path = "ceph_rbd_room/nbd_pipelined.rs"]
mod nbd_pipelined;
#[path = "ceph_rbd_room/pipelined.rs"]
mod pipelined;
#[path = "ceph_rbd_room/versions.rs"]
mod versions;

use std::time::Duration;

use common::ceph::{cluster, rbd_at, section_at};
use common::pc::{self, Boot, HOST};
use common::qemuio::{qemu_io, reads, wrote};
use common::room::{Golden, Http, Iscsi, Pc, Room, RoomBuilder};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn hostname() -> String {
    nix::unistd::gethostname().unwrap().into_string().unwrap()
}

fn used(room: &Room, pc: &str) -> u64 {
    room.status_of(pc)["used_sectors"].as_u64().unwrap() * 512
}

/// A room over `golden@base` (16 MiB of 0x07), clones named `<prefix>.<pc>`: pc-1 and
/// pc-2 over NBD, pc-3 over iSCSI, each with a quota of 4 MiB.
fn rbd_room(prefix: &str, golden: &str) -> RoomBuilder {
    RoomBuilder::userspace()
        .golden(Golden::Rbd(format!("{golden}@base")))
        .extra(&cluster().section(prefix))
        .cow("4MiB", "4KiB")
        .export("nbd")
        .iscsi(Iscsi::new("iqn.2024-01.lan.rbd").acl("open"))
        .pc(Pc::new("pc-{1..2}"))
        .pc(Pc::new("pc-3").export("iscsi"))
}

#[test]
fn a_room_on_rbd_works_through_every_command() {
    let c = cluster();
    c.golden("every", "base", &vec![7; 16 << 20]);
    let room = rbd_room("every", "every").build();
    let applied = room.cowctl(&["apply"]);
    assert!(
        applied.contains("clone pc-1's disk rbd/every.pc-1 from rbd/every@base (rbd)"),
        "{applied}"
    );
    assert_eq!(c.parent("every.pc-1").as_deref(), Some("rbd/every@base"));
    let pc1 = room.nbd_uri("pc-1");
    assert!(reads(&pc1, 0, 16 * MIB, 0x07), "a fresh clone is its image");
    assert_eq!(used(&room, "pc-1"), 0);

    // Writes land in the PC's clone only; status counts its objects as rbd du does.
    assert!(wrote(&qemu_io(&pc1, "write -P 0x11 1M 1M")));
    assert!(reads(&pc1, MIB, MIB, 0x11));
    assert!(
        reads(&room.nbd_uri("pc-2"), MIB, MIB, 0x07),
        "pc-2 is untouched"
    );
    assert_eq!(used(&room, "pc-1"), MIB);
    assert_eq!(c.du("every.pc-1"), MIB, "status and rbd du agree");
    assert_eq!(used(&room, "pc-2"), 0);
    // A 4 KiB write copies up one object (64 KiB, the ceph section's default).
    assert!(wrote(&qemu_io(&pc1, "write -P 0x12 8M 4k")));
    assert_eq!(used(&room, "pc-1"), MIB + 64 * KIB);
    assert_eq!(c.du("every.pc-1"), MIB + 64 * KIB);
    let row = room.status_of("pc-1");
    assert_eq!(
        row["total_sectors"].as_u64().unwrap() * 512,
        4 * MIB,
        "{row}"
    );
    assert_eq!(row["state"], "active", "{row}");

    // The quota (cow_size, 4 MiB) refuses new objects as a full disk does; rewrites go on.
    let full = qemu_io(&pc1, "write -P 0x22 4M 8M");
    assert!(full.contains("No space left on device"), "{full}");
    assert!(wrote(&qemu_io(&pc1, "write -P 0x33 1M 1M")), "a rewrite");
    assert!(reads(&pc1, MIB, MIB, 0x33));

    // iSCSI serves a clone the same way.
    let pc3 = format!(
        "iscsi://127.0.0.1:{}/iqn.2024-01.lan.rbd:pc-3/0",
        room.iscsi_port()
    );
    assert!(wrote(&qemu_io(&pc3, "write -P 0x44 0 64k")));
    assert!(reads(&pc3, 0, 64 * KIB, 0x44));
    assert_eq!(used(&room, "pc-3"), 64 * KIB);

    // A live reset: a fresh clone under the same name, the old one removed.
    let reset = room.cowctl(&["reset", "pc-1"]);
    assert!(reset.contains("pc-1"), "{reset}");
    assert!(reads(&pc1, 0, 16 * MIB, 0x07), "back to the image");
    assert_eq!(used(&room, "pc-1"), 0);
    assert_eq!(c.du("every.pc-1"), 0);
    let left: Vec<String> = c
        .images()
        .into_iter()
        .filter(|i| i.starts_with("every.pc-1."))
        .collect();
    assert!(left.is_empty(), "the old clone is removed: {left:?}");

    // Down closes the clones and keeps them; status still counts them from the cluster.
    room.cowctl(&["down"]);
    assert_eq!(used(&room, "pc-3"), 64 * KIB);
    assert!(c.images().contains(&"every.pc-3".to_string()));
    // An offline reset, then apply serves the clones again with what they hold.
    room.cowctl(&["reset", "pc-2"]);
    room.cowctl(&["apply"]);
    assert!(reads(&pc3, 0, 64 * KIB, 0x44), "written before down");
    assert_eq!(used(&room, "pc-3"), 64 * KIB);
}

#[test]
fn the_guard_refuses_a_clone_of_another_snapshot_and_a_missing_one() {
    let c = cluster();
    c.golden("guard", "base", &vec![1; 4 << 20]);
    c.golden("other", "base", &vec![2; 4 << 20]);
    let room = rbd_room("guard", "guard").build();
    room.cowctl(&["apply"]);
    room.cowctl(&["down"]);
    // pc-2's disk replaced by a clone of another image: serving it would show that image.
    c.rbd(&["rm", "--no-progress", "rbd/guard.pc-2"]);
    c.rbd(&["clone", "rbd/other@base", "rbd/guard.pc-2"]);
    let refused = room.refused(&["apply"]);
    assert!(
        refused.contains("pc-2's disk rbd/guard.pc-2 is a clone of rbd/other@base, but its image is rbd/guard@base"),
        "{refused}"
    );
    // Its reset clones it anew from the right snapshot.
    room.cowctl(&["reset", "pc-2"]);
    assert_eq!(c.parent("guard.pc-2").as_deref(), Some("rbd/guard@base"));
    room.cowctl(&["apply"]);

    // A snapshot that is not there, or not protected, is named with the command to make it.
    let missing = rbd_room("guard2", "guard-missing").build();
    let refused = missing.refused(&["apply"]);
    assert!(
        refused
            .contains("the image rbd/guard-missing is not in the cluster: import the golden disk"),
        "{refused}"
    );
    c.rbd(&["create", "--size", "4M", "rbd/unprotected"]);
    c.rbd(&["snap", "create", "rbd/unprotected@base"]);
    let unprotected = rbd_room("guard3", "unprotected").build();
    let refused = unprotected.refused(&["apply"]);
    assert!(
        refused.contains("rbd snap protect rbd/unprotected@base"),
        "{refused}"
    );
}

/// Two gateways with one manifest and one cluster: the PC the first serves holds its
/// clone's exclusive lock, so the second refuses to serve it (and can once it is free).
#[test]
fn a_second_gateway_cannot_serve_a_pc_the_first_holds() {
    let c = cluster();
    c.golden("twice", "base", &vec![3; 4 << 20]);
    let first = rbd_room("twice", "twice").build();
    first.cowctl(&["apply"]);
    let second = rbd_room("twice", "twice").build();
    let refused = second.refused(&["apply"]);
    assert!(
        refused.contains(&format!(
            "pc-1's disk rbd/twice.pc-1 is served by another gateway, {} (its lock is held by 127.0.0.1:0/",
            hostname()
        )),
        "{refused}"
    );
    first.cowctl(&["down"]);
    second.cowctl(&["apply"]);
    assert!(reads(&second.nbd_uri("pc-1"), 0, 4 * MIB, 0x03));
}

/// A gateway the cluster cuts off (blocklisted, as a gateway taken for dead is) finds out
/// by itself, lets go of its PCs and connects anew; nobody else holds them, so it serves
/// them again with every byte written before.
#[test]
fn a_gateway_the_cluster_cut_off_connects_anew_and_serves_its_pcs_again() {
    let c = cluster();
    c.golden("cut", "base", &vec![4; 4 << 20]);
    let room = rbd_room("cut", "cut").build();
    let applied = room
        .command(&["apply"])
        .env("COWCTL_TAKEOVER_INTERVAL_MS", "300")
        .output()
        .unwrap();
    assert!(applied.status.success(), "{applied:?}");
    let pc1 = room.nbd_uri("pc-1");
    assert!(wrote(&qemu_io(&pc1, "write -P 0x21 0 64k")));
    let watchers = c.watchers("cut.pc-1");
    assert_eq!(watchers.len(), 1, "{watchers:?}");
    c.ceph(&["osd", "blocklist", "add", &watchers[0]]);
    // With no client doing I/O (they would have gone to the gateway that took over), the
    // gateway's own look at its clones finds it out ...
    let start = std::time::Instant::now();
    while !room
        .log_so_far()
        .contains("the cluster cut this gateway off")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not noticed:\n{}",
            room.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... then it serves the PC again from a new connection, with what it held.
    while !reads(&pc1, 0, 64 * KIB, 0x21) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not served again:\n{}",
            room.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(wrote(&qemu_io(&pc1, "write -P 0x23 2M 64k")));
    assert!(reads(&pc1, 2 * MIB, 64 * KIB, 0x23));
    let log = room.log_so_far();
    assert!(log.contains("the cluster cut this gateway off"), "{log}");
    let now = c.watchers("cut.pc-1");
    assert!(now.len() == 1 && now != watchers, "a new client: {now:?}");
    c.ceph(&["osd", "blocklist", "rm", &watchers[0]]);
}

/// A qemu PC with its iPXE ROM boots from an rbd clone over iSCSI: the counting boot
/// sector counts 1, 2, and after a reset 1 again.
#[test]
fn a_pc_boots_over_iscsi_from_an_rbd_clone() {
    let c = cluster();
    let image = tempfile::NamedTempFile::new().unwrap();
    pc::counter_image(image.path(), 32 << 20);
    c.golden("boot", "base", &std::fs::read(image.path()).unwrap());
    let room = RoomBuilder::userspace()
        .golden(Golden::Rbd("boot@base".into()))
        .extra(&c.section("boot"))
        .cow("8MiB", "4KiB")
        .iscsi(Iscsi::new("iqn.2024-01.lan.rbdboot").acl("open"))
        .http(Http::new().server(HOST))
        .pc(Pc::new("pc-01").ip("127.0.0.1"))
        .build();
    room.cowctl(&["apply"]);
    let script = format!(
        "#!ipxe\nchain http://{HOST}:{}/boot.ipxe\n",
        room.http().port()
    );
    let boot = || {
        pc::boot(room.dir.path(), &script, Duration::from_secs(150), &|| {
            false
        })
    };
    assert_eq!(boot(), Boot::Counted(1), "{}", room.log_so_far());
    assert_eq!(boot(), Boot::Counted(2));
    room.cowctl(&["reset", "pc-01"]);
    assert_eq!(boot(), Boot::Counted(1));
    let snapshot = tempfile::NamedTempFile::new().unwrap();
    let to = snapshot.path().to_str().unwrap();
    std::fs::remove_file(to).unwrap();
    c.rbd(&["export", "--no-progress", "rbd/boot@base", to]);
    assert!(
        std::fs::read(to).unwrap() == std::fs::read(image.path()).unwrap(),
        "the image's snapshot is never written"
    );
}

/// AoE serves an rbd clone as it serves a COW: an initiator's raw frames on a veth pair
/// read the image, write, read back, and count in status; a reset brings the image back.
#[test]
fn an_aoe_initiator_reads_and_writes_an_rbd_clone() {
    use common::aoe::ata;
    use common::aoenic::Initiator;
    let c = cluster();
    c.golden("aoe", "base", &vec![0x47; 16 << 20]);
    let link = common::net::Link::veth(41, 9000);
    let pc_mac = "02:42:00:00:00:41";
    link.set_peer_mac(pc_mac);
    let room = common::room::two_aoe_pcs(&link.name, pc_mac)
        .golden(Golden::Rbd("aoe@base".into()))
        .extra(&c.section("aoe"))
        .cow("8MiB", "4KiB")
        .build();
    room.cowctl(&["apply"]);
    let me = Initiator::new(&link);
    let (_, before) = me.ata(&ata(0x24, 2048, 17, &[]));
    assert!(before[..17 * 512].iter().all(|b| *b == 0x47), "the image");
    let data: Vec<u8> = (0..17 * 512u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(me.ata(&ata(0x34, 2048, 17, &data)).0, 0x40, "written");
    assert_eq!(
        &me.ata(&ata(0x24, 2048, 17, &[])).1[..data.len()],
        &data[..]
    );
    // 17 sectors at sector 2048 (1 MiB) touch the 64 KiB object there.
    assert_eq!(used(&room, "pc-01"), 64 * KIB);
    assert_eq!(c.du("aoe.pc-01"), 64 * KIB);
    room.cowctl(&["reset", "pc-01"]);
    let (_, after) = me.ata(&ata(0x24, 2048, 17, &[]));
    assert!(
        after[..17 * 512].iter().all(|b| *b == 0x47),
        "the image again"
    );
}

/// A gateway that restarts takes its own PCs back at once: after a SIGKILL (its dead
/// self's lock is broken, not waited out) and after a planned restart (SIGHUP: the clones
/// are closed before the exec). Every write is read back after both.
#[test]
fn a_restarted_gateway_takes_its_own_pcs_back_at_once() {
    let c = cluster();
    c.golden("again", "base", &vec![4; 8 << 20]);
    let room = rbd_room("again", "again").build();
    room.cowctl(&["apply"]);
    let pc1 = room.nbd_uri("pc-1");
    assert!(wrote(&qemu_io(&pc1, "write -P 0x61 1M 64k")));
    room.kill_service();
    let started = std::time::Instant::now();
    room.cowctl(&["apply"]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "apply waited {:?}: the cluster's watch timeout is 5 s",
        started.elapsed()
    );
    assert!(reads(&pc1, MIB, 64 * KIB, 0x61), "written before the kill");

    assert!(wrote(&qemu_io(&pc1, "write -P 0x62 2M 64k")));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(room.serve_pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !room.log_so_far().contains("handover: took over") {
        assert!(std::time::Instant::now() < until, "{}", room.log_so_far());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        reads(&pc1, 2 * MIB, 64 * KIB, 0x62),
        "{}",
        room.log_so_far()
    );
    assert_eq!(room.status_of("pc-1")["state"], "active");
}

/// A cluster set up for an old kernel's rbd (default features: layering alone) still gets
/// clones with an object map from cowctl: without one, every open of a PC's disk (apply, a
/// takeover) counts its objects one by one, 13 s for a 20 GiB clone.
#[test]
fn clones_have_an_object_map_whatever_the_clusters_default_features() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ceph.conf");
    let mut text = std::fs::read_to_string(c.conf()).unwrap();
    text.push_str("[client.admin]\nrbd default features = layering\n");
    std::fs::write(&conf, text).unwrap();
    let rbd = |args: &[&str]| rbd_at(&conf, args);
    let features = |image: &str| {
        let out = rbd(&["info", "--format", "json", &format!("rbd/{image}")]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["features"].to_string()
    };
    // The golden image as such a cluster makes it; a clone of it by hand inherits that.
    let file = dir.path().join("golden");
    std::fs::write(&file, vec![7; 4 << 20]).unwrap();
    rbd(&[
        "import",
        "--no-progress",
        file.to_str().unwrap(),
        "rbd/feat",
    ]);
    rbd(&["snap", "create", "rbd/feat@base"]);
    rbd(&["snap", "protect", "rbd/feat@base"]);
    rbd(&["clone", "rbd/feat@base", "rbd/feat.by-hand"]);
    assert_eq!(features("feat.by-hand"), r#"["layering"]"#);
    let room = RoomBuilder::userspace()
        .golden(Golden::Rbd("feat@base".into()))
        .extra(&section_at(&conf, "feat"))
        .cow("4MiB", "4KiB")
        .export("nbd")
        .pc(Pc::new("pc-1"))
        .build();
    room.cowctl(&["apply"]);
    let got = features("feat.pc-1");
    for f in [
        "layering",
        "exclusive-lock",
        "object-map",
        "fast-diff",
        "deep-flatten",
    ] {
        assert!(got.contains(&format!("\"{f}\"")), "{f}: {got}");
    }
    assert!(reads(&room.nbd_uri("pc-1"), 0, 4 * MIB, 0x07));
    room.cowctl(&["down"]);
}
