//! A real diskless PC boots over AoE from the userspace backend: qemu's iPXE ROM fetches
//! the PC's boot script from `cowctl serve`'s HTTP service on its first NIC and sanboots
//! `aoe:e5.1` on its second, an e1000 on a tap device this test makes, where cowctl's AoE
//! target answers the PC's MAC only. The counting boot sector's count rises from boot to
//! boot, starts over after `cowctl reset`, and the golden image never changes. A PC with
//! another MAC boots nothing.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::net::Link;
use common::pc::{self, Boot, HOST};
use sha2::{Digest, Sha256};

const BOOT_LIMIT: Duration = Duration::from_secs(150);
const PC_MAC: &str = "52:54:00:a0:e0:01";

struct Room {
    dir: tempfile::TempDir,
    http: SocketAddr,
    tap: Link,
}

impl Room {
    fn new(n: u32) -> Room {
        let tap = Link::tap(n);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        pc::counter_image(&dir.path().join("golden.img"), 32 << 20);
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        let (nbd, http, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        // The PC's HTTP requests arrive from 127.0.0.1 (qemu's user network): that is its ip.
        std::fs::write(
            dir.path().join("room.yaml"),
            format!(
                "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
                 defaults:\n  image: g\n  cow_dir: {d}/cow\n  cow_size: 8MiB\n  chunk: 4KiB\n\
                 aoe:\n  interface: {}\n\
                 nbd:\n  listen: 127.0.0.1:{nbd}\n  socket: {d}/nbd.sock\n\
                 http:\n  listen: 127.0.0.1:{http}\n  admin_listen: 127.0.0.1:{admin}\n  server: {HOST}\n\
                 pcs:\n  - name: pc-01\n    ip: 127.0.0.1\n    export: aoe\n    shelf: 5\n    slot: 1\n    mac: {PC_MAC}\n",
                tap.name
            ),
        )
        .unwrap();
        let room = Room {
            dir,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            tap,
        };
        common::room_cowctl(room.dir.path(), &["apply"]);
        room
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Boots a PC whose second NIC has `mac`: iPXE opens it, then chains the boot script.
    fn boot(&self, mac: &str) -> Boot {
        let script = format!(
            "#!ipxe\nifopen net1\nchain http://{HOST}:{}/boot.ipxe\n",
            self.http.port()
        );
        pc::boot_with(
            self.dir.path(),
            &script,
            BOOT_LIMIT,
            &|| false,
            &pc::tap_nic(&self.tap.name, mac),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("run/serve.log")).unwrap_or_default()
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let _ = common::room_command(self.dir.path(), &["down"]).output();
    }
}

fn hash(path: &std::path::Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn a_pc_boots_over_aoe_writes_its_cow_and_starts_over_after_a_reset() {
    let room = Room::new(1);
    let golden = hash(&room.path("golden.img"));
    assert_eq!(
        room.boot(PC_MAC),
        Boot::Counted(1),
        "first boot; serve log:\n{}",
        room.log()
    );
    assert_eq!(
        room.boot(PC_MAC),
        Boot::Counted(2),
        "the second boot reads the first one's write"
    );
    let status = common::room_cowctl(room.dir.path(), &["status", "pc-01"]);
    assert!(status.contains("e5.1"), "{status}");
    assert!(status.contains(&format!("AoE {PC_MAC}")), "{status}");
    common::room_cowctl(room.dir.path(), &["reset", "pc-01"]);
    assert_eq!(
        room.boot(PC_MAC),
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
    let room = Room::new(2);
    let booted = pc::boot_with(
        room.dir.path(),
        "#!ipxe\nifopen net1\nset san-retries 0\nsanboot aoe:e5.1\n",
        Duration::from_secs(45),
        &|| false,
        &pc::tap_nic(&room.tap.name, "52:54:00:a0:e0:99"),
    );
    assert!(matches!(booted, Boot::Nothing(_)), "{booted:?}");
}
