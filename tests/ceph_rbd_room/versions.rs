//! Image versions kept in the pool (`rbd: NAME`): import writes `NAME.v1` and its protected
//! snapshot, a commit of a served PC turns its clone into the next version (the PC goes on
//! with a fresh clone of it), promote moves PCs at their next reset, promoting the older
//! version rolls back, prune removes what nothing runs on or clones.

use std::time::{Duration, Instant};

use super::{cluster, qemu_io, reads, used, wrote, Golden, Pc, RoomBuilder, MIB};

#[test]
fn versions_in_the_pool_import_commit_promote_roll_back_and_prune() {
    let c = cluster();
    let builder = || {
        RoomBuilder::userspace()
            .golden(Golden::Rbd("ver".into()))
            .extra(&c.section("pcs"))
            .cow("8MiB", "4KiB")
            .export("nbd")
            .pc(Pc::new("pc-{1..2}"))
    };
    let room = builder().build();
    let refused = room.refused(&["apply"]);
    assert!(
        refused.contains("images.g.rbd") && refused.contains("holds no version of g yet"),
        "{refused}"
    );

    // Import converts a qcow2 file and writes its data into ver.v1@v1, current at once.
    let raw = room.path("disk.raw");
    std::fs::write(&raw, vec![0x07; 16 << 20]).unwrap();
    let qcow2 = room.path("disk.qcow2");
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .args([&raw, &qcow2])
        .status()
        .unwrap();
    assert!(converted.success());
    let out = room.cowctl(&[
        "image",
        "import",
        qcow2.to_str().unwrap(),
        "--image",
        "g",
        "--note",
        "first",
    ]);
    assert!(
        out.contains("as g@v1 (16.0 MiB") && out.contains("it is current"),
        "{out}"
    );
    assert!(
        c.rbd(&["snap", "ls", "rbd/ver.v1"]).contains(" v1 "),
        "a snapshot v1"
    );
    assert!(
        out.contains("16.0 MiB stored"),
        "its objects, as rbd du counts them: {out}"
    );

    room.cowctl(&["apply"]);
    assert_eq!(c.parent("pcs.pc-1").as_deref(), Some("rbd/ver.v1@v1"));
    let (pc1, pc2) = (room.nbd_uri("pc-1"), room.nbd_uri("pc-2"));
    assert!(reads(&pc1, 0, 16 * MIB, 0x07));
    let nothing = room.refused(&["image", "commit", "pc-1"]);
    assert!(nothing.contains("pc-1"), "{nothing}");

    // pc-1 is the maintenance PC: its changes become v2 while it is served.
    assert!(wrote(&qemu_io(&pc1, "write -P 0x55 1M 1M")));
    let out = room.cowctl(&["image", "commit", "pc-1", "--note", "patched"]);
    assert!(
        out.contains("committed pc-1 as g@v2 (parent v1)")
            && out.contains("its clone became the version"),
        "{out}"
    );
    assert_eq!(
        c.parent("ver.v2").as_deref(),
        Some("rbd/ver.v1@v1"),
        "pc-1's clone is v2"
    );
    assert_eq!(
        c.parent("pcs.pc-1").as_deref(),
        Some("rbd/ver.v2@v2"),
        "a fresh clone of v2"
    );
    assert!(reads(&pc1, MIB, MIB, 0x55), "pc-1 sees its disk as it was");
    assert!(reads(&pc1, 2 * MIB, MIB, 0x07));
    assert_eq!(used(&room, "pc-1"), 0, "its changes are the version's now");
    assert_eq!(room.status_of("pc-1")["image_version"], "v2");
    let list = room.cowctl(&["image", "list", "g"]);
    assert!(
        list.contains("current v1") && list.contains("patched"),
        "{list}"
    );

    // Promote: pc-2 moves at its next reset, not before.
    let out = room.cowctl(&["image", "promote", "g", "v2"]);
    assert!(out.contains("1 move: pc-2"), "{out}");
    assert!(reads(&pc2, MIB, MIB, 0x07));
    assert_eq!(room.status_of("pc-2")["next_version"], "v2");
    // Another gateway cannot move pc-2 from under the one serving it.
    let other = builder().build();
    let refused = other.refused(&["reset", "pc-2"]);
    assert!(
        refused.contains("is served by another gateway"),
        "{refused}"
    );
    assert!(reads(&pc2, MIB, MIB, 0x07));
    assert_eq!(c.parent("pcs.pc-2").as_deref(), Some("rbd/ver.v1@v1"));
    assert!(room.status_of("pc-1")["next_version"].is_null());
    room.cowctl(&["reset", "pc-2"]);
    assert!(reads(&pc2, MIB, MIB, 0x55), "pc-2 runs v2");
    assert_eq!(c.parent("pcs.pc-2").as_deref(), Some("rbd/ver.v2@v2"));
    assert_eq!(room.status_of("pc-2")["image_version"], "v2");

    // Roll back: promote v1 again; pc-2's reset takes it back.
    room.cowctl(&["image", "promote", "g", "v1"]);
    room.cowctl(&["reset", "pc-2"]);
    assert!(reads(&pc2, MIB, MIB, 0x07), "pc-2 rolled back to v1");
    assert_eq!(c.parent("pcs.pc-2").as_deref(), Some("rbd/ver.v1@v1"));

    // Prune keeps the current version and the one pc-1 runs on ...
    let out = room.cowctl(&["image", "prune", "g"]);
    assert!(out.contains("keep g@v1: current"), "{out}");
    assert!(out.contains("keep g@v2: pc-1 run on it"), "{out}");
    // ... and, once pc-1 is back on v1, removes v2; its name is never given again.
    room.cowctl(&["reset", "pc-1"]);
    assert!(reads(&pc1, MIB, MIB, 0x07));
    let out = room.cowctl(&["image", "prune", "g"]);
    assert!(out.contains("remove g@v2"), "{out}");
    assert!(!c.images().contains(&"ver.v2".to_string()));

    // A commit with nothing serving the PC (after down) opens its clone itself.
    assert!(wrote(&qemu_io(&pc2, "write -P 0x66 0 64k")));
    room.cowctl(&["down"]);
    let out = room.cowctl(&["image", "commit", "pc-2"]);
    assert!(out.contains("committed pc-2 as g@v3 (parent v1)"), "{out}");
    assert_eq!(c.parent("pcs.pc-2").as_deref(), Some("rbd/ver.v3@v3"));
    room.cowctl(&["apply"]);
    assert!(reads(&pc2, 0, 64 << 10, 0x66), "pc-2 goes on on v3");
    room.cowctl(&["down"]);
}

/// A change of a family's versions (import, commit, promote, prune) holds the family's
/// change lease in the cluster while it reads and writes them: another cowctl (another
/// gateway, another admin) waits for it, and after the wait says who holds it.
#[test]
fn a_change_of_the_versions_waits_for_another_under_way() {
    let c = cluster();
    let room = RoomBuilder::userspace()
        .golden(Golden::Rbd("lockver".into()))
        .extra(&c.section("lockpcs"))
        .cow("8MiB", "4KiB")
        .export("nbd")
        .pc(Pc::new("pc-1"))
        .build();
    let raw = room.path("disk.raw");
    std::fs::write(&raw, vec![0x05; 4 << 20]).unwrap();
    room.cowctl(&["image", "import", raw.to_str().unwrap(), "--image", "g"]);

    // Another cowctl's change under way: the test holds the family's lease.
    let settings = cowctl::rbd::Settings {
        conf: c.conf(),
        keyring: None,
        client: "admin".into(),
        pool: "rbd".into(),
    };
    let pool = cowctl::rbd::Pool::connect(&settings).unwrap();
    let object = "cowctl.versions.lockver.change";
    let held = pool
        .hold(object, "change", "elsewhere:4242:1", Duration::from_secs(5))
        .unwrap()
        .expect("nobody else holds it");
    let out = room
        .command(&["image", "promote", "g", "v1"])
        .env("COWCTL_VERSIONS_WAIT_MS", "1500")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("another cowctl is changing the versions of g (elsewhere:4242:1"),
        "{err}"
    );

    // It finishes 2 s later: a promote asked meanwhile waits for it, then goes ahead.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        drop(held);
    });
    let asked = Instant::now();
    room.cowctl(&["image", "promote", "g", "v1"]);
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "it waited: {:?}",
        asked.elapsed()
    );
    release.join().unwrap();
    assert!(
        pool.lockers(object, "change").unwrap().is_empty(),
        "and let go"
    );
}
