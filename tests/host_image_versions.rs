//! Image versions on the userspace backend with real clients (qemu-img, qemu-io over NBD):
//! import from qcow2, a maintenance PC committed into v2, a test group moved at its reset
//! while the others stay, the room promoted, a rollback, prune, the guard against a changed
//! version, and commits killed at random points leaving no half version.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::kernel::Rng;
use common::room::{Golden, Http, Pc, Room, RoomBuilder};
use common::{assert_same, filled};

const SIZE: usize = 8 << 20;

/// A room on a versioned image with no version yet: pc-01 kept, pc-02 and pc-03, the HTTP
/// service for the dashboard.
fn room() -> Room {
    RoomBuilder::userspace()
        .golden(Golden::Versions)
        .cow("16MiB", "4KiB")
        .export("nbd")
        .http(Http::new().token("a-test-token-of-some-length"))
        .pc(Pc::new("pc-01").flag("keep"))
        .pc(Pc::new("pc-{02..03}"))
        .build()
}

fn write(room: &Room, pc: &str, byte: u8, at: &str, len: &str) {
    common::kernel::sh(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P {byte} {at} {len}"),
            &room.nbd_uri(pc),
        ],
    );
}

/// The PC's whole disk as its client reads it.
fn read(room: &Room, pc: &str) -> Vec<u8> {
    let out = room.path(&format!("{pc}.read"));
    let _ = std::fs::remove_file(&out);
    common::qemu_img_convert(&room.nbd_uri(pc), "raw", out.to_str().unwrap());
    std::fs::read(&out).unwrap()
}

fn version(room: &Room, v: &str) -> Vec<u8> {
    std::fs::read(room.path(&format!("versions/{v}/disk.img"))).unwrap()
}

fn versions(room: &Room) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&room.cowctl(&["image", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_room_goes_v1_to_v2_and_back_at_its_resets() {
    let room = room();
    // No version yet: everything but import says how to make the first.
    let e = room.refused(&["status"]);
    assert!(
        e.contains("holds no version of g yet") && e.contains("cowctl image import"),
        "{e}"
    );

    // v1 from a qcow2 file, as an admin builds it in a VM.
    let v1 = Rng(1).bytes(SIZE);
    std::fs::write(room.path("built.raw"), &v1).unwrap();
    common::qemu_img_convert(
        room.path("built.raw").to_str().unwrap(),
        "qcow2",
        room.path("built.qcow2").to_str().unwrap(),
    );
    let out = room.cowctl(&[
        "image",
        "import",
        room.path("built.qcow2").to_str().unwrap(),
        "--image",
        "g",
        "--note",
        "first",
    ]);
    assert!(
        out.contains("as g@v1") && out.contains("it is current"),
        "{out}"
    );
    assert_same(&version(&room, "v1"), &v1, "v1 as imported");
    let e = room.refused(&[
        "image",
        "import",
        room.path("built.raw").to_str().unwrap(),
        "--image",
        "g",
        "--version",
        "v1",
    ]);
    assert!(e.contains("never overwritten"), "{e}");

    // What other hypervisors build imports the same disk.
    for format in ["vmdk", "vhdx", "vdi"] {
        let file = room.path(&format!("built.{format}"));
        let raw = room.path("built.raw");
        common::qemu_img_convert(raw.to_str().unwrap(), format, file.to_str().unwrap());
        let args = [
            "image",
            "import",
            file.to_str().unwrap(),
            "--image",
            "g",
            "--version",
            format,
        ];
        let out = room.cowctl(&args);
        assert!(
            out.contains(&format!("as g@{format}")) && !out.contains("current"),
            "{out}"
        );
        assert_same(
            &version(&room, format),
            &v1,
            &format!("{format} as imported"),
        );
    }

    room.cowctl(&["apply"]);
    // The maintenance PC installs something.
    write(&room, "pc-01", 0xaa, "1M", "64k");
    write(&room, "pc-02", 0x22, "2M", "4k");
    write(&room, "pc-03", 0x33, "3M", "4k");
    let maintained = filled(v1.clone(), 0xaa, 1 << 20, 64 << 10);
    assert_same(
        &read(&room, "pc-01"),
        &maintained,
        "pc-01 before the commit",
    );

    // In use: refused, unless paused.
    let mut holder = Command::new("qemu-io")
        .args(["-f", "raw", &room.nbd_uri("pc-01")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let connected = || {
        let rows: serde_json::Value =
            serde_json::from_str(&room.cowctl(&["status", "pc-01", "--json"])).unwrap();
        rows[0]["initiators"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    };
    while !connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-io never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = room.refused(&["image", "commit", "pc-01"]);
    assert!(
        e.contains("pc-01 is in use") && e.contains("--pause"),
        "{e}"
    );
    let out = room.cowctl(&["image", "commit", "pc-01", "--pause", "--version", "paused"]);
    assert!(out.contains("as g@paused"), "{out}");
    drop(holder.stdin.take());
    let _ = holder.wait();

    let out = room.cowctl(&["image", "commit", "pc-01", "--note", "maintenance"]);
    assert!(
        out.contains("committed pc-01 as g@v2 (parent v1)") && out.contains("64.0 KiB changed"),
        "{out}"
    );
    assert_same(
        &version(&room, "v2"),
        &maintained,
        "v2 is what pc-01 showed",
    );
    assert_same(
        &version(&room, "paused"),
        &maintained,
        "the paused commit too",
    );
    // Committing creates a version, moves nobody.
    let status = room.cowctl(&["status"]);
    assert!(!status.contains("→"), "{status}");

    // A test group: pc-02 moves at its reset, pc-03 stays on v1 until its own.
    let out = room.cowctl(&["image", "promote", "g", "v2", "pc-02"]);
    assert!(out.contains("at their next reset, 1 move: pc-02"), "{out}");
    let status = room.cowctl(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pc-02") && l.contains("g@v1 → v2 at next reset")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pc-03") && l.contains("g@v1") && !l.contains("→")),
        "{status}"
    );
    // The dashboard says the same.
    let dom = common::http::chromium(
        &format!("http://127.0.0.1:{}/", room.admin().port()),
        &room.path("chromium"),
        &["--dump-dom"],
    );
    let tile = |pc: &str| {
        let at = dom
            .find(&format!("data-pc=\"{pc}\""))
            .unwrap_or_else(|| panic!("the dashboard lacks {pc}:\n{dom}"));
        let tile = &dom[at..];
        tile[..tile.find("</article>").unwrap()].to_string()
    };
    assert!(
        tile("pc-02").contains("title=\"moves to v2 at its next reset\">g v1 → v2<"),
        "{}",
        tile("pc-02")
    );
    assert!(!tile("pc-03").contains("→"), "{}", tile("pc-03"));
    let list: serde_json::Value =
        serde_json::from_str(&room.cowctl(&["image", "list", "--json"])).unwrap();
    let v2row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "v2")
        .unwrap();
    assert_eq!(v2row["moving_here"], serde_json::json!(["pc-02"]));
    assert_same(
        &read(&room, "pc-02"),
        &filled(v1.clone(), 0x22, 2 << 20, 4096),
        "pc-02 before its reset",
    );
    room.cowctl(&["reset", "pc-02"]);
    assert_same(&read(&room, "pc-02"), &maintained, "pc-02 on v2");
    assert_same(
        &read(&room, "pc-03"),
        &filled(v1.clone(), 0x33, 3 << 20, 4096),
        "pc-03 untouched on v1",
    );
    room.cowctl(&["reset", "pc-03"]);
    assert_same(&read(&room, "pc-03"), &v1, "pc-03 reset, still v1");

    // The room: everyone but the maintenance PC moves at `reset --all`.
    room.cowctl(&["image", "promote", "g", "v2"]);
    let out = room.cowctl(&["reset", "--all"]);
    assert!(
        !out.contains("pc-01"),
        "the maintenance PC keeps its changes: {out}"
    );
    assert!(out.contains("reset 2 of 2 PCs in "), "{out}");
    assert_same(&read(&room, "pc-03"), &maintained, "pc-03 on v2");
    assert_same(&read(&room, "pc-01"), &maintained, "pc-01 kept its COW");

    // Rollback is promoting the older version.
    room.cowctl(&["image", "promote", "g", "v1"]);
    room.cowctl(&["reset", "pc-02"]);
    assert_same(&read(&room, "pc-02"), &v1, "pc-02 rolled back");
    let list = room.cowctl(&["image", "list"]);
    assert!(list.contains("current v1"), "{list}");

    // Prune: v1 current, v2 under pc-03's COW, `paused` and the other imports unused.
    let out = room.cowctl(&["image", "prune", "g"]);
    assert!(
        out.contains("keep g@v1: current") && out.contains("keep g@v2: pc-03 run on it"),
        "{out}"
    );
    for unused in ["paused", "vmdk", "vhdx", "vdi"] {
        assert!(out.contains(&format!("remove g@{unused} ")), "{out}");
    }
    assert_eq!(versions(&room), ["v1", "v2"]);

    // A version changed behind cowctl's back is refused under the COWs made over it.
    room.cowctl(&["down"]);
    let disk = room.path("versions/v2/disk.img");
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 0).unwrap();
    let e = room.refused(&["apply"]);
    assert!(e.contains("pc-03") && e.contains("garbage"), "{e}");
}

#[test]
fn a_commit_killed_at_any_point_leaves_no_half_version() {
    let room = room();
    let v1 = Rng(2).bytes(SIZE);
    std::fs::write(room.path("v1.raw"), &v1).unwrap();
    room.cowctl(&[
        "image",
        "import",
        room.path("v1.raw").to_str().unwrap(),
        "--image",
        "g",
    ]);
    room.cowctl(&["apply"]);
    write(&room, "pc-02", 0x5a, "0", "4M");
    room.cowctl(&["down"]);
    let want = filled(v1, 0x5a, 0, 4 << 20);
    let mut whole = 0;
    for i in 0..12u64 {
        let name = format!("k{i}");
        let mut child = common::room_command(
            room.dir.path(),
            &["image", "commit", "pc-02", "--version", &name],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_micros(i * i * 700));
        let _ = child.kill();
        let _ = child.wait();
        let versions = versions(&room);
        if versions.contains(&name) {
            whole += 1;
            assert_same(&version(&room, &name), &want, "a commit that finished");
        }
        assert!(
            versions.iter().all(|v| v == "v1" || v.starts_with('k')),
            "{versions:?}"
        );
    }
    // What the killed ones left is not a version, and prune clears it.
    let out = room.cowctl(&["image", "prune", "g"]);
    println!("{whole} of 12 commits finished before the kill\n{out}");
    assert!(std::fs::read_dir(room.path("versions"))
        .unwrap()
        .flatten()
        .all(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            !n.starts_with(".incoming-") && !n.starts_with(".pruning-")
        }));
}
