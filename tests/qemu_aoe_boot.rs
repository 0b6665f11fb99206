//! A real diskless PC boots over AoE from the userspace backend: qemu's iPXE ROM fetches
//! the PC's boot script from `cowctl serve`'s HTTP service on its first NIC and sanboots
//! `aoe:e5.1` on its second, an e1000 on a tap device this test makes, where cowctl's AoE
//! target answers the PC's MAC only. The counting boot sector's count rises from boot to
//! boot, starts over after `cowctl reset`, and the golden image never changes. A PC with
//! another MAC boots nothing.

mod common;

use std::time::Duration;

use common::net::Link;
use common::pc::{self, Boot, HOST};
use common::room::{Golden, Http, Pc, Room, RoomBuilder};
use sha2::{Digest, Sha256};

const BOOT_LIMIT: Duration = Duration::from_secs(150);
const PC_MAC: &str = "52:54:00:a0:e0:01";

/// The room, applied, and the tap device the PC's second NIC is on (the room's AoE
/// interface); the room goes down before the tap is removed.
fn room(n: u32) -> (Room, Link) {
    room_in(n, None)
}

/// [`room`], in a folder under `parent` with `storage: reflink` when given one.
fn room_in(n: u32, parent: Option<&std::path::Path>) -> (Room, Link) {
    let tap = Link::tap(n);
    // The PC's HTTP requests arrive from 127.0.0.1 (qemu's user network): that is its ip.
    let builder = RoomBuilder::userspace()
        .golden(Golden::Counter(32 << 20))
        .cow("8MiB", "4KiB")
        .aoe(&tap.name)
        .http(Http::new().server(HOST))
        .pc(Pc::new("pc-01").ip("127.0.0.1").aoe(5, 1).mac(PC_MAC));
    let room = match parent {
        None => builder.build(),
        Some(dir) => builder.storage("reflink").build_in(dir),
    };
    room.cowctl(&["apply"]);
    (room, tap)
}

/// Boots a PC whose second NIC has `mac`: iPXE opens it, then chains the boot script.
fn boot(room: &Room, tap: &Link, mac: &str) -> Boot {
    let script = format!(
        "#!ipxe\nifopen net1\nchain http://{HOST}:{}/boot.ipxe\n",
        room.http().port()
    );
    pc::boot_with(
        room.dir.path(),
        &script,
        BOOT_LIMIT,
        &|| false,
        &pc::tap_nic(&tap.name, mac),
    )
}

fn hash(path: &std::path::Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn a_pc_boots_over_aoe_writes_its_cow_and_starts_over_after_a_reset() {
    let (room, tap) = room(1);
    boots_counts_and_starts_over(&room, &tap);
}

/// The same PC from a reflink clone of the image on btrfs (`storage: reflink`).
#[test]
fn a_pc_boots_over_aoe_from_a_reflink_clone() {
    let btrfs = common::kernel::Mounted::btrfs();
    let (room, tap) = room_in(3, Some(&btrfs.mnt()));
    assert!(room.path("cow/pc-01.img").exists());
    boots_counts_and_starts_over(&room, &tap);
}

fn boots_counts_and_starts_over(room: &Room, tap: &Link) {
    let golden = hash(&room.path("golden.img"));
    assert_eq!(
        boot(room, tap, PC_MAC),
        Boot::Counted(1),
        "first boot; serve log:\n{}",
        room.log_so_far()
    );
    assert_eq!(
        boot(room, tap, PC_MAC),
        Boot::Counted(2),
        "the second boot reads the first one's write"
    );
    let status = room.cowctl(&["status", "pc-01"]);
    assert!(status.contains("e5.1"), "{status}");
    assert!(status.contains(&format!("AoE {PC_MAC}")), "{status}");
    room.cowctl(&["reset", "pc-01"]);
    assert_eq!(
        boot(room, tap, PC_MAC),
        Boot::Counted(1),
        "after the reset the PC is back on the golden image"
    );
    assert_eq!(
        hash(&room.path("golden.img")),
        golden,
        "the golden image is never written"
    );
}

#[test]
fn a_pc_with_another_mac_boots_nothing() {
    let (room, tap) = room(2);
    let booted = pc::boot_with(
        room.dir.path(),
        "#!ipxe\nifopen net1\nset san-retries 0\nsanboot aoe:e5.1\n",
        Duration::from_secs(45),
        &|| false,
        &pc::tap_nic(&tap.name, "52:54:00:a0:e0:99"),
    );
    assert!(matches!(booted, Boot::Nothing(_)), "{booted:?}");
}
