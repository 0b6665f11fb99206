//! The kernel path on rbd storage (VM only, through scripts/test-vm-rbd.sh, which starts a
//! real Ceph cluster on the host, bound to a tap device whose other end is the VM's NIC):
//! `backend: kernel` maps each PC's clone with the kernel's rbd driver (which holds the
//! clone's exclusive lock) and LIO exports a dm linear device over it. open-iscsi in the VM
//! writes through it; status counts the clone's objects as `rbd du` does; a live reset
//! swaps in a fresh clone while the initiator stays logged in; down unmaps everything and
//! keeps the clone, whose bytes the next apply serves again; a second cowctl cannot serve
//! a PC the kernel maps; a PC taken out of the manifest is unmapped by the next apply; an
//! admin's reset over HTTP (`cowctl serve` on the kernel backend) swaps the clone too;
//! the kernel's aoe driver reads and writes a PC vblade exports and sees its reset; the
//! client's key reaches the kernel through the keyring, never in the line it keeps.

mod common;

use std::path::{Path, PathBuf};

use common::ceph::Cluster;
use common::kernel::{
    aoe_on_lo, dm_node, modprobe, modprobe_room, read_device, require_vm, sh, write_device, Iscsid,
};
use common::room::{Golden, Http, Iscsi, Pc, RoomBuilder};

const MIB: usize = 1 << 20;
const TARGET: &str = "iqn.2024-01.lan.krbd:pc-1";
const TOKEN: &str = "vm-rbd-token-1234567890";

/// The kernel's mappings by image name, with their devices.
fn mapped() -> Vec<(String, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/rbd/devices") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| {
            let name = std::fs::read_to_string(e.path().join("name")).unwrap();
            let id = e.file_name().into_string().unwrap();
            (
                name.trim().to_string(),
                PathBuf::from(format!("/dev/rbd{id}")),
            )
        })
        .collect()
}

fn region(dev: &Path, at: usize, len: usize) -> Vec<u8> {
    read_device(dev)[at..at + len].to_vec()
}

fn write_through(dev: &Path, at: usize, byte: u8) {
    write_device(dev, at as u64, &vec![byte; MIB]);
    sh("sync", &[]);
}

#[test]
#[ignore = "needs the VM and the host's cluster: scripts/test-vm-rbd.sh"]
fn the_kernel_maps_each_pcs_clone_and_lio_exports_it() {
    require_vm();
    modprobe_room();
    modprobe("rbd");
    let dir = std::env::var("COWCTL_TEST_CEPH_DIR").expect("set by scripts/test-vm-rbd.sh");
    let c = Cluster::existing(dir.into());
    c.golden("kgold", "base", &vec![7; 16 * MIB]);
    let room = RoomBuilder::kernel()
        .golden(Golden::Rbd("kgold@base".into()))
        .extra(&c.section("kroom"))
        .cow("8MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.krbd")
                .portal("127.0.0.1:3260")
                .acl("open"),
        )
        .http(
            Http::new()
                .listen("127.0.0.1")
                .admin("127.0.0.1")
                .token(TOKEN),
        )
        .aoe("lo")
        .pc(Pc::new("pc-{1..2}"))
        .pc(Pc::new("pc-3").aoe(9, 3).mac("00:00:00:00:00:00"))
        .build();

    let applied = room.cowctl(&["apply"]);
    for step in [
        "clone pc-1's disk rbd/kroom.pc-1 from rbd/kgold@base (rbd)",
        "map pc-1's disk rbd/kroom.pc-1 (kernel rbd, exclusive lock)",
        "create dm linear cowctl-pc-1 for pc-1 over its mapped disk rbd/kroom.pc-1",
    ] {
        assert!(applied.contains(step), "{step:?} not in:\n{applied}");
    }
    assert_eq!(c.parent("kroom.pc-1").as_deref(), Some("rbd/kgold@base"));
    let mut names: Vec<String> = mapped().into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["kroom.pc-1", "kroom.pc-2", "kroom.pc-3"]);
    // The line the kernel keeps (root may read it) names the key and does not carry it.
    for dev in std::fs::read_dir("/sys/bus/rbd/devices").unwrap().flatten() {
        let line = std::fs::read_to_string(dev.path().join("config_info")).unwrap();
        assert!(
            line.contains("key=client.") && !line.contains("secret="),
            "{line}"
        );
    }
    let plan = room.cowctl(&["plan"]);
    assert!(
        !plan.contains("map "),
        "an applied room has nothing to map: {plan}"
    );

    // A second cowctl (a userspace gateway) cannot serve the clone the kernel holds.
    let other = RoomBuilder::userspace()
        .golden(Golden::Rbd("kgold@base".into()))
        .extra(&c.section("kroom"))
        .cow("8MiB", "4KiB")
        .export("nbd")
        .pc(Pc::new("pc-1"))
        .build();
    let refused = other.refused(&["apply"]);
    assert!(
        refused.contains("pc-1's disk rbd/kroom.pc-1 is served by another gateway")
            && refused.contains("(its kernel)"),
        "{refused}"
    );
    drop(other);

    // A PC taken out of the manifest: its export and device go, its clone is unmapped.
    std::fs::write(&room.manifest, room.text.replace("pc-{1..2}", "pc-1")).unwrap();
    let applied = room.cowctl(&["apply"]);
    assert!(applied.contains("unmap /dev/rbd"), "{applied}");
    let mut maps: Vec<String> = mapped().into_iter().map(|(n, _)| n).collect();
    maps.sort();
    assert_eq!(maps, ["kroom.pc-1", "kroom.pc-3"]);
    assert!(
        c.images().contains(&"kroom.pc-2".to_string()),
        "its clone stays"
    );

    // open-iscsi writes through LIO, the linear device and the mapping into the clone.
    let iscsid = Iscsid::start();
    iscsid.iface("pc", "iqn.2024-01.lan.krbd:init-1");
    let disk = iscsid.login("pc", TARGET, None).unwrap();
    assert_eq!(
        region(&disk, 0, MIB),
        vec![7; MIB],
        "a fresh clone is its image"
    );
    write_through(&disk, MIB, 0x11);
    assert_eq!(region(&disk, MIB, MIB), vec![0x11; MIB]);
    let row = room.status_of("pc-1");
    let used = row["used_sectors"].as_u64().unwrap() * 512;
    assert_eq!(used, MIB as u64, "{row}");
    assert_eq!(c.du("kroom.pc-1"), used, "status and rbd du agree");
    assert_eq!(row["total_sectors"].as_u64().unwrap() * 512, 8 * MIB as u64);
    assert_eq!(row["initiators"].as_array().map(Vec::len), Some(1), "{row}");

    // A live reset: the initiator stays logged in and finds the image again.
    let reset = room.cowctl(&["reset", "pc-1"]);
    assert!(reset.contains("paused"), "a live reset: {reset}");
    assert!(reset.contains("pc-1"), "{reset}");
    eprintln!(
        "reset on the kernel path (TCG, not a performance figure): {}",
        reset.trim()
    );
    iscsid.wait_logged_in(TARGET);
    assert_eq!(region(&disk, MIB, MIB), vec![7; MIB], "back to the image");
    assert_eq!(c.du("kroom.pc-1"), 0);
    assert_eq!(room.status_of("pc-1")["used_sectors"], 0);
    let images = c.images();
    assert!(
        !images.iter().any(|i| i.starts_with("kroom.pc-1.")),
        "the old clone is removed: {images:?}"
    );
    assert_eq!(
        mapped().len(),
        2,
        "the old clone is unmapped: {:?}",
        mapped()
    );

    // An admin's reset over HTTP (cowctl serve on the kernel backend) takes the same path.
    write_through(&disk, 3 * MIB, 0x33);
    let mut serve = room
        .command(&["serve"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(room.admin()).is_err() {
        assert!(start.elapsed().as_secs() < 20, "cowctl serve answers");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = common::http::post(
        "127.0.0.1",
        room.admin(),
        "/api/v1/pcs/pc-1/reset",
        Some(TOKEN),
    );
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(r.status, 200, "{}", r.body);
    iscsid.wait_logged_in(TARGET);
    assert_eq!(region(&disk, 3 * MIB, MIB), vec![7; MIB], "reset over HTTP");
    assert_eq!(c.du("kroom.pc-1"), 0);

    // pc-3 over AoE: vblade exports its linear device; the kernel's aoe driver reads the
    // clone, writes into it and, holding the disk, sees a reset bring the image back.
    let aoe = aoe_on_lo("e9.3", 16 * MIB as u64);
    assert!(
        read_device(&aoe) == vec![7; 16 * MIB],
        "pc-3 reads its image"
    );
    write_device(&aoe, 4 * MIB as u64, &vec![0x44; MIB]);
    assert_eq!(region(&aoe, 4 * MIB, MIB), vec![0x44; MIB]);
    // vblade writes through the device's page cache: counted once written back.
    sh(
        "blockdev",
        &["--flushbufs", dm_node("cowctl-pc-3").to_str().unwrap()],
    );
    assert_eq!(
        c.du("kroom.pc-3"),
        MIB as u64,
        "pc-3's write is in its clone"
    );
    let reset = room.cowctl(&["reset", "pc-3"]);
    assert!(reset.contains("paused"), "a live reset: {reset}");
    assert!(
        read_device(&aoe) == vec![7; 16 * MIB],
        "pc-3 reset under AoE"
    );
    assert_eq!(c.du("kroom.pc-3"), 0);

    // Down unmaps and keeps the clone; the next apply serves its bytes again.
    write_through(&disk, 2 * MIB, 0x22);
    iscsid.logout("pc", TARGET);
    let down = room.cowctl(&["down"]);
    assert!(down.contains("unmap /dev/rbd"), "{down}");
    assert!(mapped().is_empty(), "{:?}", mapped());
    assert!(!sh("dmsetup", &["ls"]).contains("cowctl-"));
    assert!(!Path::new("/sys/kernel/config/target/iscsi")
        .join(TARGET)
        .exists());
    assert_eq!(
        c.du("kroom.pc-1"),
        MIB as u64,
        "the clone and its write stay"
    );
    room.cowctl(&["apply"]);
    let maps = mapped();
    assert_eq!(maps.len(), 2, "{maps:?}");
    let pc1 = &maps.iter().find(|(n, _)| n == "kroom.pc-1").unwrap().1;
    assert_eq!(region(pc1, 2 * MIB, MIB), vec![0x22; MIB]);
    room.cowctl(&["down"]);
    assert!(mapped().is_empty());
}
