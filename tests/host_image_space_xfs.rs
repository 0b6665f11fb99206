//! `image list` on a reflink file system: a commit on xfs clones its parent's blocks (and
//! remaps its changes from the COW), and ON DISK says how much of each version is shared
//! with other files, read with the kernel's FIEMAP. The test makes its own xfs on a loop
//! device (as root, as the test command runs).

mod common;

use std::path::Path;

use common::kernel::Mounted;
use common::room::{Golden, Pc, RoomBuilder};
use cowctl::engine::{Engine, EngineOptions};

const MIB: u64 = 1 << 20;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn image_list_shows_the_blocks_a_commit_shares_with_its_parent() {
    let fs = Mounted::xfs(true);
    let m = fs.mnt();
    std::fs::create_dir(m.join("cow")).unwrap();
    // The room lives on the xfs, so the builder writes only its manifest.
    let text = RoomBuilder::userspace()
        .golden(Golden::Versions)
        .cow("16MiB", "4KiB")
        .export("nbd")
        .pc(Pc::new("pc-01"))
        .text_for(&m);
    std::fs::write(m.join("room.yaml"), text).unwrap();
    let golden: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(m.join("golden.raw"), &golden).unwrap();
    common::room_cowctl(
        &m,
        &[
            "image",
            "import",
            path(&m.join("golden.raw")),
            "--image",
            "g",
        ],
    );
    let v1 = m.join("versions/v1/disk.img");

    // pc-01 changes 1 MiB of its disk, and the change becomes v2.
    let cow = m.join("cow/pc-01.cow");
    cowctl::cowfile::create_empty(&cow, 16 * MIB).unwrap();
    let opts = EngineOptions {
        table_chunk_sectors: Some(8),
        ..EngineOptions::default()
    };
    let e = cowctl::cowfile::open_engine_with(&v1, &cow, opts).unwrap();
    e.write_at(&vec![0xee; 1 << 20], 2 * MIB).unwrap();
    e.flush().unwrap();
    drop::<Engine>(e);
    common::room_cowctl(&m, &["cow", "record", path(&cow), "--base", path(&v1)]);
    let out = common::room_cowctl(&m, &["image", "commit", "pc-01", "--version", "v2"]);
    assert!(out.contains("v2"), "{out}");

    let shared = |v: &str| {
        let list: serde_json::Value =
            serde_json::from_str(&common::room_cowctl(&m, &["image", "list", "--json"])).unwrap();
        let row = list.as_array().unwrap().iter().find(|r| r["version"] == v);
        row.unwrap_or_else(|| panic!("no {v} in {list}"))["shared"]
            .as_u64()
            .unwrap()
    };
    // All but the changed MiB is one set of blocks for both versions; the changed MiB of
    // v2 was remapped from the COW, which still holds it, until pc-01 is reset.
    assert_eq!(shared("v1"), 7 * MIB);
    assert_eq!(shared("v2"), 8 * MIB);
    common::room_cowctl(&m, &["reset", "pc-01"]);
    assert_eq!(shared("v2"), 7 * MIB);
    let table = common::room_cowctl(&m, &["image", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("v2") && l.contains("8.0 MiB (7.0 MiB shared)")),
        "{table}"
    );
}
