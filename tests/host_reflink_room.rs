//! A room whose image has `storage: reflink`, served by `cowctl serve` from clones on real
//! btrfs and xfs (each made on a loop device for the test, as root): apply clones each PC's
//! disk, NBD and iSCSI clients read and write it, status counts the bytes a PC no longer
//! shares against its quota (cow_size), a write past the quota gets "no space", reset swaps
//! in a fresh clone while the PC stays exported, a restart counts what was written before,
//! and a file system that cannot clone is refused naming its mount.

mod common;

use std::path::Path;

use common::kernel::Mounted;
use common::qemuio::{qemu_io, reads, wrote};
use common::room::{Golden, Iscsi, Pc, Room, RoomBuilder};
use cowctl::reflink::extents::{own_bytes, sharing};

const MIB: u64 = 1 << 20;
/// The golden disk's size.
const GOLDEN: usize = 16 << 20;

/// The golden disk: 16 MiB of 0x07.
fn golden() -> Vec<u8> {
    vec![7; GOLDEN]
}

fn room_on(parent: &Path) -> Room {
    RoomBuilder::userspace()
        .golden(Golden::Fill(7, GOLDEN))
        .storage("reflink")
        .cow("4MiB", "32KiB")
        .export("nbd")
        .iscsi(Iscsi::new("iqn.2024-01.lan.test").acl("open"))
        .pc(Pc::new("pc-{1..2}"))
        .pc(Pc::new("pc-3").export("iscsi"))
        .build_in(parent)
}

/// The PC's disk reads as the golden image (all 0x07) at `at`, `len` bytes.
fn reads_golden(room: &Room, pc: &str, at: u64, len: u64) -> bool {
    reads(&room.nbd_uri(pc), at, len, 0x07)
}

fn used(room: &Room, pc: &str) -> u64 {
    room.status_of(pc)["used_sectors"].as_u64().unwrap() * 512
}

fn a_room_of_clones_works_through_every_command(m: &Mounted, fs: &str) {
    let room = room_on(&m.mnt());
    let applied = room.cowctl(&["apply"]);
    assert!(applied.contains("clone pc-1's disk"), "{fs}: {applied}");
    let disk = room.path("cow/pc-1.img");
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        golden(),
        "{fs}: a clone is the image"
    );
    let fresh = sharing(&disk).unwrap();
    assert_eq!(
        fresh.private, 0,
        "{fs}: a fresh clone owns nothing: {fresh:?}"
    );
    assert!(room.path("cow/pc-1.img.golden").exists(), "{fs}: recorded");

    // Writes land in the PC's own disk only; the status counts what it no longer shares.
    let pc1 = room.nbd_uri("pc-1");
    assert!(wrote(&qemu_io(&pc1, "write -P 0x11 1M 1M")), "{fs}");
    assert!(reads(&pc1, MIB, MIB, 0x11), "{fs}");
    assert!(
        reads_golden(&room, "pc-2", MIB, MIB),
        "{fs}: pc-2 is untouched"
    );
    assert_eq!(used(&room, "pc-1"), MIB, "{fs}");
    assert_eq!(used(&room, "pc-2"), 0, "{fs}");
    let row = room.status_of("pc-1");
    assert_eq!(
        row["total_sectors"].as_u64().unwrap() * 512,
        4 * MIB,
        "{fs}: {row}"
    );
    assert_eq!(row["state"], "active", "{fs}: {row}");

    // The quota (cow_size, 4 MiB) refuses new blocks as a full disk does; rewrites go on.
    let full = qemu_io(&pc1, "write -P 0x22 4M 8M");
    assert!(full.contains("No space left on device"), "{fs}: {full}");
    assert!(
        wrote(&qemu_io(&pc1, "write -P 0x33 1M 1M")),
        "{fs}: a rewrite"
    );
    assert!(reads(&pc1, MIB, MIB, 0x33), "{fs}");

    // iSCSI serves a clone the same way.
    let pc3 = format!(
        "iscsi://127.0.0.1:{}/iqn.2024-01.lan.test:pc-3/0",
        room.iscsi_port()
    );
    assert!(wrote(&qemu_io(&pc3, "write -P 0x44 0 64k")), "{fs}");
    assert!(reads(&pc3, 0, 64 * 1024, 0x44), "{fs}");
    assert_eq!(used(&room, "pc-3"), 64 * 1024, "{fs}");

    // A restart of the service counts what the PCs wrote before, from the file system.
    room.cowctl(&["down"]);
    let offline = used(&room, "pc-1");
    assert!(offline >= MIB, "{fs}: {offline}");
    room.cowctl(&["apply"]);
    assert!(reads(&pc1, MIB, MIB, 0x33), "{fs}: kept across the restart");
    assert_eq!(used(&room, "pc-1"), offline, "{fs}");

    // Reset: a fresh clone while the PC stays exported; the old disk is gone after.
    let reset: serde_json::Value =
        serde_json::from_str(&room.cowctl(&["--json", "reset", "pc-1"])).unwrap();
    assert_eq!(reset[0]["live"], true, "{fs}: {reset}");
    assert!(
        reads_golden(&room, "pc-1", 0, 16 * MIB),
        "{fs}: golden again"
    );
    assert_eq!(used(&room, "pc-1"), 0, "{fs}");
    assert!(!room.path("cow/pc-1.img.discard").exists(), "{fs}");
    assert!(
        !room.path("cow/pc-1.img.cloning").exists(),
        "{fs}: the clone made before the pause took the disk's place"
    );
    assert_eq!(sharing(&disk).unwrap().private, 0, "{fs}");
    assert!(
        reads(&pc3, 0, 64 * 1024, 0x44),
        "{fs}: pc-3 kept its writes"
    );

    // A reset of a PC nothing serves clones its disk anew too.
    assert!(wrote(&qemu_io(&room.nbd_uri("pc-2"), "write -P 0x55 0 4k")));
    room.cowctl(&["down"]);
    room.cowctl(&["reset", "pc-2"]);
    assert_eq!(
        std::fs::read(room.path("cow/pc-2.img")).unwrap(),
        golden(),
        "{fs}"
    );
    assert!(!room.path("cow/pc-2.img.discard").exists(), "{fs}");

    // The guard: a clone of an image that has changed since is refused, not served.
    std::fs::write(room.path("golden.img"), vec![8u8; GOLDEN]).unwrap();
    let said = room.refused(&["apply"]);
    assert!(
        said.contains("pc-1: COW") && said.contains("was made against golden image"),
        "{fs}: {said}"
    );
    assert_eq!(
        std::fs::read(room.path("cow/pc-2.img")).unwrap(),
        golden(),
        "{fs}: kept"
    );
}

/// Versions of a reflink image: a PC's clone committed is one more clone (the new version
/// shares its blocks), a promoted version reaches a PC at its reset as a fresh clone of it,
/// and prune keeps the version a PC's disk is a clone of.
fn versions_move_as_clones(m: &Mounted, fs: &str) {
    let room = RoomBuilder::userspace()
        .golden(Golden::Versions)
        .storage("reflink")
        .cow("4MiB", "32KiB")
        .export("nbd")
        .pc(Pc::new("pc-{1..2}"))
        .build_in(&m.mnt());
    std::fs::write(room.path("built.raw"), golden()).unwrap();
    let built = room.path("built.raw");
    room.cowctl(&["image", "import", built.to_str().unwrap(), "--image", "g"]);
    room.cowctl(&["apply"]);
    assert!(
        wrote(&qemu_io(&room.nbd_uri("pc-1"), "write -P 0x11 1M 64k")),
        "{fs}"
    );

    let out = room.cowctl(&["--json", "image", "commit", "pc-1"]);
    let committed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(committed["built"]["method"], "reflink", "{fs}: {out}");
    assert_eq!(
        committed["built"]["changed_bytes"],
        64 * 1024,
        "{fs}: {out}"
    );
    let v2 = room.path("versions/v2/disk.img");
    assert_eq!(
        std::fs::read(&v2).unwrap(),
        std::fs::read(room.path("cow/pc-1.img")).unwrap(),
        "{fs}: v2 is pc-1's disk"
    );
    assert!(
        sharing(&v2).unwrap().shared >= 15 * MIB,
        "{fs}: v2 is a clone"
    );
    // pc-1's blocks are shared now (with v2), yet still its own against the image it runs.
    let v1 = room.path("versions/v1/disk.img");
    let own = own_bytes(&room.path("cow/pc-1.img"), &v1).unwrap();
    assert_eq!(own, 64 * 1024, "{fs}: shared with v2 is not v1's");

    room.cowctl(&["image", "promote", "g", "v2"]);
    room.cowctl(&["reset", "pc-2"]);
    assert!(
        reads(&room.nbd_uri("pc-2"), MIB, 64 * 1024, 0x11),
        "{fs}: pc-2 on v2"
    );
    assert_eq!(room.status_of("pc-2")["image_version"], "v2", "{fs}");
    assert_eq!(room.status_of("pc-1")["image_version"], "v1", "{fs}");

    let out = room.cowctl(&["image", "prune", "g"]);
    assert!(
        room.path("versions/v1/disk.img").exists(),
        "{fs}: pc-1 runs v1: {out}"
    );
    room.cowctl(&["reset", "pc-1"]);
    assert!(
        reads(&room.nbd_uri("pc-1"), MIB, 64 * 1024, 0x11),
        "{fs}: pc-1 on v2"
    );
    room.cowctl(&["image", "prune", "g"]);
    assert!(
        !room.path("versions/v1").exists(),
        "{fs}: nobody runs v1 any more"
    );
}

#[test]
fn btrfs_serves_a_room_of_clones() {
    let m = Mounted::btrfs();
    a_room_of_clones_works_through_every_command(&m, "btrfs");
    versions_move_as_clones(&m, "btrfs");
}

#[test]
fn xfs_serves_a_room_of_clones() {
    let m = Mounted::xfs(true);
    a_room_of_clones_works_through_every_command(&m, "xfs");
    versions_move_as_clones(&m, "xfs");
}

#[test]
fn status_warns_when_the_file_system_has_less_room_than_a_quota_allows() {
    let m = Mounted::xfs(true);
    let room = RoomBuilder::userspace()
        .golden(Golden::Fill(7, GOLDEN))
        .storage("reflink")
        .cow("2GiB", "32KiB")
        .export("nbd")
        .pc(Pc::new("pc-1"))
        .build_in(&m.mnt());
    room.cowctl(&["apply"]);
    let row = room.status_of("pc-1");
    assert_eq!(row["warn"], true, "{row}");
    assert!(
        row["notes"]
            .to_string()
            .contains("its quota (cow_size) still allows"),
        "{row}"
    );
    let doctor = room.cowctl(&["doctor"]);
    assert!(doctor.contains("reflink: yes"), "{doctor}");
}

#[test]
fn a_file_system_that_cannot_clone_is_refused_naming_its_mount() {
    let m = Mounted::xfs(false);
    let room = room_on(&m.mnt());
    let said = room.refused(&["apply"]);
    assert!(
        said.contains("pc-1: storage: reflink:") && said.contains("cannot clone files"),
        "{said}"
    );
    assert!(said.contains(&m.mnt().display().to_string()), "{said}");
    assert!(!room.path("cow/pc-1.img").exists(), "nothing is made");
}

/// Status of clones nothing serves counts a clone's extents once it has settled, keeps the
/// count in the run directory (`run/fill/<pc>.fill`), reads it back while the clone and its
/// image are exactly as they were, and counts again once the clone is written.
#[test]
fn status_of_unserved_clones_counts_again_only_what_was_written() {
    use std::os::unix::fs::FileExt;
    let m = Mounted::xfs(true);
    let room = room_on(&m.mnt());
    room.cowctl(&["apply"]);
    assert!(wrote(&qemu_io(
        &room.nbd_uri("pc-1"),
        "write -P 0x33 1M 1M"
    )));
    room.cowctl(&["down"]);
    let entry = room.path("run/fill/pc-1.fill");
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(room.path("cow/pc-1.img"))
        .unwrap();
    disk.write_all_at(&[0x33; 4096], MIB).unwrap();
    assert_eq!(used(&room, "pc-1"), MIB);
    assert!(!entry.exists(), "written in the last moments: not kept");

    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(used(&room, "pc-1"), MIB);
    let text = std::fs::read_to_string(&entry).unwrap();
    let (head, count) = text.trim_end().rsplit_once(' ').unwrap();
    assert_eq!(count, MIB.to_string(), "{text}");
    // The entry is what status reads while the files are as it says: a count put in shows.
    std::fs::write(&entry, format!("{head} 8192\n")).unwrap();
    assert_eq!(used(&room, "pc-1"), 8192, "read back, not counted");

    // A write into the clone moves its times: counted again, the put count gone.
    disk.write_all_at(&[0x99; 4096], 8 * MIB).unwrap();
    disk.sync_all().unwrap();
    assert_eq!(used(&room, "pc-1"), MIB + 4096);
}
