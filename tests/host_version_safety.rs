//! Versions are safe from prune and promote (issue 23, item 3), with the real `cowctl` on
//! the userspace backend: prune sees the COWs of every room on the server, a COW is never
//! laid over another disk than the one it was made over (even one with the same sampled
//! fingerprint under the same name), prune, promote and hash take the lock, and a store made
//! before versions were hashed keeps working and gets its hashes on request.

mod common;

use std::path::PathBuf;

use common::kernel::Rng;
use common::room::{Golden, Pc, RoomBuilder};
use common::{assert_same, filled};
use sha2::{Digest, Sha256};

const SIZE: usize = 8 << 20;

/// One server: a store of versions shared by rooms `a` and `b`, each its own manifest.
struct Site {
    dir: tempfile::TempDir,
    port_a: u16,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let port_a = common::free_port();
        for (room, port) in [("a", port_a), ("b", common::free_port())] {
            std::fs::create_dir(dir.path().join(format!("cow-{room}"))).unwrap();
            let text = RoomBuilder::userspace()
                .golden(Golden::Versions)
                .cow_dir(&format!("cow-{room}"))
                .cow("16MiB", "4KiB")
                .export("nbd")
                .nbd_at(
                    &format!("127.0.0.1:{port}"),
                    Some(&format!("nbd-{room}.sock")),
                )
                .pc(Pc::new("pc-01"))
                .text_for(dir.path());
            std::fs::write(dir.path().join(format!("{room}.yaml")), text).unwrap();
        }
        Site { dir, port_a }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn command(&self, room: &str, args: &[&str]) -> std::process::Command {
        let mut c = common::room_command(self.dir.path(), args);
        c.env("COWCTL_MANIFEST", self.path(&format!("{room}.yaml")));
        c
    }

    fn ok(&self, room: &str, args: &[&str]) -> String {
        let out = self.command(room, args).output().unwrap();
        assert!(
            out.status.success(),
            "cowctl {args:?} in room {room} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn refused(&self, room: &str, args: &[&str]) -> String {
        let out = self.command(room, args).output().unwrap();
        assert!(
            !out.status.success(),
            "cowctl {args:?} in room {room} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// Imports `disk` into the store through room `room`.
    fn import(&self, room: &str, disk: &[u8], version: &str) {
        let file = self.path(&format!("{version}.raw"));
        std::fs::write(&file, disk).unwrap();
        let f = file.to_str().unwrap();
        self.ok(
            room,
            &["image", "import", f, "--image", "g", "--version", version],
        );
    }

    fn write_a(&self, byte: u8, at: &str, len: &str) {
        let uri = format!("nbd://127.0.0.1:{}/pc-01", self.port_a);
        let cmd = format!("write -P {byte} {at} {len}");
        common::kernel::sh("qemu-io", &["-f", "raw", "-c", &cmd, &uri]);
    }

    /// pc-01's whole disk in room a, as its client reads it.
    fn read_a(&self) -> Vec<u8> {
        let out = self.path("pc-01.read");
        let _ = std::fs::remove_file(&out);
        let uri = format!("nbd://127.0.0.1:{}/pc-01", self.port_a);
        common::qemu_img_convert(&uri, "raw", out.to_str().unwrap());
        std::fs::read(&out).unwrap()
    }

    fn version_json(&self, v: &str) -> serde_json::Value {
        let p = self.path(&format!("versions/{v}/version.json"));
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn golden_a(&self) -> PathBuf {
        self.path("cow-a/pc-01.cow.golden")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.command("a", &["down"]).output();
    }
}

/// `disk` with one byte changed that the sampled fingerprint does not read.
fn unsampled_change(disk: &[u8]) -> Vec<u8> {
    let mut other = disk.to_vec();
    other[4097] ^= 0xff;
    other
}

#[test]
fn prune_through_another_room_keeps_the_version_a_down_room_runs_on() {
    let site = Site::new();
    let (v1, v2) = (Rng(11).bytes(SIZE), Rng(12).bytes(SIZE));
    site.import("a", &v1, "v1");
    site.import("a", &v2, "v2");
    site.ok("a", &["image", "promote", "g", "v2"]);
    site.ok("a", &["apply"]);
    site.write_a(0xaa, "1M", "64k");
    site.ok("a", &["down"]);

    // Room b knows nothing of room a's PCs: its manifest has only its own.
    site.import("b", &Rng(13).bytes(SIZE), "v3");
    site.ok("b", &["image", "promote", "g", "v3"]);
    let out = site.ok("b", &["image", "prune", "g"]);
    let cow = std::fs::canonicalize(site.path("cow-a/pc-01.cow")).unwrap();
    assert!(
        out.contains(&format!("keep g@v2: COW {} runs on it", cow.display()))
            && out.contains("keep g@v3: current")
            && out.contains("remove g@v1 "),
        "{out}"
    );
    assert!(site.path("versions/v2/disk.img").exists());
    assert!(!site.path("versions/v1").exists());

    // Room a comes back on v2 with its PC's changes, and moves at its next reset.
    site.ok("a", &["apply"]);
    assert_same(
        &site.read_a(),
        &filled(v2, 0xaa, 1 << 20, 64 << 10),
        "pc-01 after prune",
    );
    let status = site.ok("a", &["status"]);
    assert!(status.contains("g@v2 → v3 at next reset"), "{status}");
}

#[test]
fn another_disk_under_a_pruned_versions_name_is_never_taken_for_it() {
    let site = Site::new();
    let first = Rng(21).bytes(SIZE);
    let second = unsampled_change(&first);
    site.import("a", &first, "v1");
    site.import("a", &second, "v2");
    // The audit's premise: the sampled fingerprint cannot tell the two apart.
    let (r1, r2) = (site.version_json("v1"), site.version_json("v2"));
    assert_eq!(r1["fingerprint"], r2["fingerprint"]);
    assert_ne!(r1["sha256"], r2["sha256"]);
    site.ok("a", &["apply"]);
    site.write_a(0x5a, "2M", "4k");
    site.ok("a", &["down"]);

    // The old bug by hand: v1 removed behind the record's back, another disk imported as v1.
    let disk = site.path("versions/v1/disk.img");
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::remove_dir_all(site.path("versions/v1")).unwrap();
    site.import("a", &second, "v1");
    assert_eq!(site.version_json("v1")["fingerprint"], r1["fingerprint"]);

    let cow = site.path("cow-a/pc-01.cow");
    let said = |e: &str| {
        e.contains(&format!("pc-01: COW {} was made over g@v1", cow.display()))
            && e.contains("no longer holds")
            && e.contains("cowctl reset pc-01")
            && e.contains("put the version back")
    };
    for cmd in ["plan", "apply"] {
        let e = site.refused("a", &[cmd]);
        assert!(said(&e), "{cmd}: {e}");
    }
    let e = site.refused("a", &["image", "commit", "pc-01"]);
    assert!(said(&e), "commit: {e}");
    // status says it too, and exits 2 (needs attention).
    let status = site.command("a", &["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(2), "{text}");
    assert!(said(&text), "status: {text}");

    // A record written before versions had an identity is refused the same way.
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.golden_a()).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("version");
    std::fs::write(site.golden_a(), record.to_string()).unwrap();
    let e = site.refused("a", &["apply"]);
    assert!(said(&e), "an old record: {e}");

    // The way out the error names: the reset starts pc-01 afresh on the disk now called v1.
    site.ok("a", &["reset", "pc-01"]);
    site.ok("a", &["apply"]);
    assert_same(&site.read_a(), &second, "pc-01 reset onto the new v1");
}

#[test]
fn prune_promote_and_hash_refuse_while_another_cowctl_holds_the_lock() {
    let site = Site::new();
    site.import("a", &Rng(31).bytes(SIZE), "v1");
    site.import("a", &Rng(32).bytes(SIZE), "v2");
    let held = cowctl::room::lock::acquire(&site.path("run"), "apply").unwrap();
    for args in [
        &["image", "prune", "g"][..],
        &["image", "promote", "g", "v2"],
        &["image", "hash", "g"],
    ] {
        let e = site.refused("b", args);
        assert!(
            e.contains("another cowctl is at work")
                && e.contains("`cowctl apply`")
                && e.contains(&format!("pid {}", std::process::id())),
            "{args:?}: {e}"
        );
    }
    assert!(site.path("versions/v2").exists());
    drop(held);
    site.ok("b", &["image", "promote", "g", "v2"]);
    let out = site.ok("b", &["image", "prune", "g"]);
    assert!(out.contains("remove g@v1 "), "{out}");
}

#[test]
fn an_old_store_without_full_hashes_still_runs_and_gets_them_on_request() {
    let site = Site::new();
    let v1 = Rng(41).bytes(SIZE);
    site.import("a", &v1, "v1");
    site.ok("a", &["apply"]);
    site.write_a(0x77, "3M", "8k");
    site.ok("a", &["down"]);

    // As cowctl left a store before it hashed versions: no sha256, no identity, no .users.
    let record_path = site.path("versions/v1/version.json");
    let mut record = site.version_json("v1");
    let hash = record.as_object_mut().unwrap().remove("sha256").unwrap();
    std::fs::write(&record_path, record.to_string()).unwrap();
    let mut golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.golden_a()).unwrap()).unwrap();
    golden.as_object_mut().unwrap().remove("version");
    std::fs::write(site.golden_a(), golden.to_string()).unwrap();
    std::fs::remove_dir_all(site.path("versions/.users")).unwrap();

    site.ok("a", &["plan"]);
    let refs = std::fs::read_dir(site.path("versions/.users"))
        .unwrap()
        .count();
    assert_eq!(refs, 1, "loading the room notes its COW for prune");
    let list = site.ok("a", &["image", "list"]);
    assert!(
        list.contains("v1 without a full hash") && list.contains("`cowctl image hash g`"),
        "{list}"
    );

    let out = site.ok("a", &["image", "hash", "g"]);
    let want: String = Sha256::digest(&v1)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(out.contains(&format!("g@v1: sha256 {want} added")), "{out}");
    assert_eq!(hash, serde_json::json!(want));
    assert_eq!(site.version_json("v1")["sha256"], serde_json::json!(want));
    let list = site.ok("a", &["image", "list"]);
    assert!(!list.contains("without a full hash"), "{list}");
    assert!(site
        .ok("a", &["image", "hash", "g"])
        .contains("g@v1: sha256 verified"));

    // The old record still finds its version, and the PC its changes.
    site.ok("a", &["apply"]);
    assert_same(
        &site.read_a(),
        &filled(v1.clone(), 0x77, 3 << 20, 8 << 10),
        "pc-01 on the old store",
    );
    site.ok("a", &["down"]);

    // A disk changed after it was made: said loudly, nothing written.
    let disk = site.path("versions/v1/disk.img");
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&disk, unsampled_change(&v1)).unwrap();
    let before = std::fs::read(&record_path).unwrap();
    let e = site.refused("a", &["image", "hash", "g"]);
    assert!(
        e.contains("g@v1") && e.contains("DOES NOT MATCH") && e.contains("nothing was written"),
        "{e}"
    );
    assert_eq!(std::fs::read(&record_path).unwrap(), before);
}
