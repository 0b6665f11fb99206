//! A real diskless PC boots from the userspace backend: qemu's iPXE ROM fetches the PC's
//! boot script from `cowctl serve`'s HTTP service and sanboots its disk over iSCSI with the
//! PC's own initiator name (the ACL) and CHAP secret. The golden image is a boot sector
//! that counts its boots on the disk: the count rises from boot to boot (writes reach the
//! PC's COW), starts over after `cowctl reset`, and the golden image never changes. A wrong
//! CHAP secret boots nothing.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::pc::{self, Boot, HOST};
use sha2::{Digest, Sha256};

const BOOT_LIMIT: Duration = Duration::from_secs(150);

struct Room {
    dir: tempfile::TempDir,
    iscsi: u16,
    http: SocketAddr,
}

impl Room {
    fn new() -> Room {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // iPXE guesses a geometry of 255 heads × 63 sectors: the disk needs a cylinder.
        pc::counter_image(&dir.path().join("golden.img"), 32 << 20);
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        common::write_private(&dir.path().join("chap.secret"), "the-room-master-secret\n");
        let (iscsi, nbd, http, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        // The PC reaches this host (and so the portal on loopback) at 10.0.2.2, and its
        // connections arrive from 127.0.0.1: that is its ip.
        std::fs::write(
            dir.path().join("room.yaml"),
            format!(
                "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
                 defaults:\n  image: g\n  cow_dir: {d}/cow\n  cow_size: 8MiB\n  chunk: 4KiB\n\
                 iscsi:\n  iqn_prefix: iqn.2024-01.lan.boot\n  portals: [127.0.0.1:{iscsi}]\n  acl: initiator\n\
                 \x20 chap:\n    username: room\n    secret_file: {d}/chap.secret\n\
                 nbd:\n  listen: 127.0.0.1:{nbd}\n  socket: {d}/nbd.sock\n\
                 http:\n  listen: 127.0.0.1:{http}\n  admin_listen: 127.0.0.1:{admin}\n  server: {HOST}\n\
                 pcs:\n  - name: pc-01\n    ip: 127.0.0.1\n    initiator: iqn.2024-01.lan.boot:init-pc-01\n\
                 \x20 - name: pc-02\n    initiator: iqn.2024-01.lan.boot:init-pc-02\n"
            ),
        )
        .unwrap();
        let room = Room {
            dir,
            iscsi,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
        };
        common::room_cowctl(room.dir.path(), &["apply"]);
        room
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn golden_hash(&self) -> Vec<u8> {
        Sha256::digest(std::fs::read(self.path("golden.img")).unwrap()).to_vec()
    }

    /// Boots the PC the way a room does: iPXE chains the HTTP service's boot script.
    fn boot(&self) -> Boot {
        let script = format!(
            "#!ipxe\nchain http://{HOST}:{}/boot.ipxe\n",
            self.http.port()
        );
        pc::boot(self.dir.path(), &script, BOOT_LIMIT, &|| false)
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

#[test]
fn a_pc_boots_over_iscsi_writes_its_cow_and_starts_over_after_a_reset() {
    let room = Room::new();
    let golden = room.golden_hash();
    assert_eq!(
        room.boot(),
        Boot::Counted(1),
        "first boot; serve log:\n{}",
        room.log()
    );
    assert_eq!(
        room.boot(),
        Boot::Counted(2),
        "the second boot reads the first one's write"
    );
    // While it is not booted, status names the target like the kernel backend does.
    let status = common::room_cowctl(room.dir.path(), &["status", "pc-01"]);
    assert!(status.contains("iqn.2024-01.lan.boot:pc-01"), "{status}");
    common::room_cowctl(room.dir.path(), &["reset", "pc-01"]);
    assert_eq!(
        room.boot(),
        Boot::Counted(1),
        "after the reset the PC is back on the golden image"
    );
    assert_eq!(
        room.golden_hash(),
        golden,
        "the golden image is never written"
    );
    let log = room.log();
    assert!(
        log.contains("iqn.2024-01.lan.boot:init-pc-01"),
        "the PC logged in with the initiator name of its boot script:\n{log}"
    );
}

#[test]
fn a_wrong_chap_secret_boots_nothing() {
    let room = Room::new();
    let script = format!(
        "#!ipxe\nset san-retries 0\nset initiator-iqn iqn.2024-01.lan.boot:init-pc-01\n\
         set username room\nset password not-the-secret-of-pc-01\n\
         sanboot iscsi:{HOST}::{}::iqn.2024-01.lan.boot:pc-01\n",
        room.iscsi
    );
    let refused = || room.log().contains("authentication failure");
    let booted = pc::boot(room.dir.path(), &script, BOOT_LIMIT, &refused);
    assert!(matches!(booted, Boot::Nothing(_)), "{booted:?}");
    assert!(refused(), "the target refused the login:\n{}", room.log());
    // pc-02's secret, from pc-02's own script, does not open pc-01's disk either.
    let pc02 = cowctl::secrets::derive("the-room-master-secret", "initiator", "pc-02");
    let script = script.replace("not-the-secret-of-pc-01", &pc02);
    let booted = pc::boot(room.dir.path(), &script, BOOT_LIMIT, &|| {
        room.log().matches("authentication failure").count() >= 2
    });
    assert!(matches!(booted, Boot::Nothing(_)), "{booted:?}");
}
