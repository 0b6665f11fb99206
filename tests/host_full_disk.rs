//! The file system holding the COWs runs out of space under the userspace backend (a small
//! tmpfs mounted over the room's COW folder, as root): the PC that needs new space gets the
//! error a thin-provisioned disk gives (ENOSPC over NBD, SPACE ALLOCATION FAILED over
//! iSCSI), what it wrote before stays, the
//! other PC keeps reading and rewriting what it has, the service carries on, and once space
//! is freed the PC writes again. Its COW loads afterwards with every acknowledged write.

mod common;

use std::process::Command;

use common::kernel::sh;
use common::qemuio::wrote;
use common::room::{Golden, Iscsi, Pc, Room, RoomBuilder};

const MIB: usize = 1 << 20;

/// tmpfs over the room's COW folder, lazily unmounted when dropped (declared after the
/// room, it goes first; open COWs stay reachable until the room's `down`).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn over(dir: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        Tmpfs(dir)
    }

    fn resize(&self, size: &str) {
        sh(
            "mount",
            &[
                "-o",
                &format!("remount,size={size}"),
                self.0.to_str().unwrap(),
            ],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// qemu-io's output for `cmd` on the PC's NBD export.
fn qemu_io(room: &Room, pc: &str, cmd: &str) -> String {
    common::qemuio::qemu_io(&room.nbd_uri(pc), cmd)
}

fn read_back(room: &Room, pc: &str, at: usize, len: usize, pattern: u8) -> bool {
    common::qemuio::reads(&room.nbd_uri(pc), at as u64, len as u64, pattern)
}

#[test]
fn a_full_file_system_refuses_new_space_and_nothing_acknowledged_is_lost() {
    let room = RoomBuilder::userspace()
        .golden(Golden::Fill(0x5a, 32 * MIB))
        .cow("64MiB", "32KiB")
        .export("nbd")
        .iscsi(Iscsi::new("iqn.2024-01.lan.test").acl("open"))
        .pc(Pc::new("pc-{1..2}"))
        .pc(Pc::new("pc-3").export("iscsi"))
        .build();
    let tmpfs = Tmpfs::over(room.path("cow"), "6m");
    room.cowctl(&["apply"]);

    assert!(wrote(&qemu_io(&room, "pc-2", "write -P 0x22 0 1M")));
    assert!(wrote(&qemu_io(&room, "pc-1", "write -P 0x11 0 1M")));
    // pc-1 asks for far more than the file system has left.
    let full = qemu_io(&room, "pc-1", "write -P 0x33 2M 16M");
    assert!(
        full.contains("No space left on device"),
        "a full file system is ENOSPC, as a thin disk says: {full}"
    );

    // Over iSCSI the same is SPACE ALLOCATION FAILED, which qemu's initiator reads as ENOSPC.
    let iscsi = format!(
        "iscsi://127.0.0.1:{}/iqn.2024-01.lan.test:pc-3/0",
        room.iscsi_port()
    );
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x66 0 16M", &iscsi])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("No space left on device"),
        "over iSCSI: {said}"
    );

    // The service, the other PC and what pc-1 wrote before are all there.
    assert!(
        read_back(&room, "pc-1", 0, MIB, 0x11),
        "pc-1's acknowledged write"
    );
    assert!(read_back(&room, "pc-2", 0, MIB, 0x22), "pc-2 reads on");
    assert!(
        wrote(&qemu_io(&room, "pc-2", "write -P 0x44 0 512k")),
        "pc-2 rewrites what it has"
    );
    assert!(read_back(&room, "pc-2", 0, MIB / 2, 0x44));
    let status = room.status_of("pc-1");
    assert_ne!(status["state"], "invalid", "{status}");

    tmpfs.resize("64m");
    let again = qemu_io(&room, "pc-1", "write -P 0x55 2M 16M");
    assert!(wrote(&again), "space freed, pc-1 writes again: {again}");
    assert!(read_back(&room, "pc-1", 2 * MIB, 16 * MIB, 0x55));
    assert!(read_back(&room, "pc-1", 0, MIB, 0x11));

    // The COW loads again after the service stops, with every acknowledged write.
    room.cowctl(&["down"]);
    let inspect = room.cowctl(&[
        "cow",
        "inspect",
        room.path("cow/pc-1.cow").to_str().unwrap(),
    ]);
    assert!(inspect.contains("valid"), "{inspect}");
    room.cowctl(&["apply"]);
    assert!(read_back(&room, "pc-1", 0, MIB, 0x11));
    assert!(read_back(&room, "pc-1", 2 * MIB, 16 * MIB, 0x55));
    assert!(read_back(&room, "pc-2", 0, MIB / 2, 0x44));
    room.cowctl(&["down"]);
}
