//! `cowctl serve` on the kernel backend (VM only, through scripts/test-kernel.sh): the
//! boot script of a PC exported by LIO, its reset on boot on the real dm-snapshot, CowBell
//! numbers from the kernel, and auto-extend keeping a PC that writes six times its initial
//! COW from overflowing, until the maximum.

#![allow(clippy::cast_possible_truncation)] // fill bytes from small loop counters

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::http::get;
use common::kernel::{modprobe, require_vm, AlignedBuf};
use common::room::{Http, Iscsi, Pc, RoomBuilder};

const MIB: u64 = 1 << 20;
const IQN: &str = "iqn.2024-01.lan.vm:pc-1";

struct Site {
    dir: tempfile::TempDir,
    serve: Option<Child>,
    http: std::net::SocketAddr,
}

impl Site {
    /// pc-1 over iSCSI with a 16 MiB COW that auto-extends (at 25 %, by 50 %, to 128 MiB)
    /// and resets on boot; the manifest's ip is this machine's, so the tests are pc-1.
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        // Sparse: the golden image reads zeros.
        let golden = std::fs::File::create(dir.path().join("golden.img")).unwrap();
        golden.set_len(192 * MIB).unwrap();
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        common::write_private(&dir.path().join("token"), "vm-token-1234567890\n");
        let text = RoomBuilder::kernel()
            .cow("16MiB", "4KiB")
            .iscsi(
                Iscsi::new("iqn.2024-01.lan.vm")
                    .portal("127.0.0.1:3260")
                    .acl("open"),
            )
            .http(
                Http::new()
                    .listen("127.0.0.1:8080")
                    .admin("127.0.0.1:8081")
                    .token("vm-token-1234567890"),
            )
            .pc(Pc::new("pc-1")
                .ip("127.0.0.1")
                .flag("reset_on_boot")
                .set("autoextend", "{threshold: 25, step: 50, max: 128MiB}"))
            .text_for(dir.path());
        std::fs::write(dir.path().join("room.yaml"), text).unwrap();
        let mut site = Site {
            dir,
            serve: None,
            http: "127.0.0.1:8080".parse().unwrap(),
        };
        site.cowctl(&["apply"]);
        let serve = site
            .command(&["serve"])
            .stderr(std::fs::File::create(site.path("serve.log")).unwrap())
            .spawn()
            .unwrap();
        site.serve = Some(serve);
        let start = Instant::now();
        while std::net::TcpStream::connect(site.http).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "serve answers");
            std::thread::sleep(Duration::from_millis(50));
        }
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        common::room_command(self.dir.path(), args)
    }

    fn cowctl(&self, args: &[&str]) -> String {
        common::room_cowctl(self.dir.path(), args)
    }

    fn status(&self) -> serde_json::Value {
        let rows: serde_json::Value =
            serde_json::from_str(&self.cowctl(&["--json", "status"])).unwrap();
        rows[0].clone()
    }

    fn disk(&self) -> PathBuf {
        common::kernel::dm_node("cowctl-pc-1")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut s) = self.serve.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.command(&["down"]).output();
    }
}

/// Writes `len` bytes of `fill` with O_DIRECT; false when the disk refuses.
fn write(dev: &Path, offset: u64, len: u64, fill: u8) -> bool {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let buf = AlignedBuf::from(&vec![fill; usize::try_from(len).unwrap()]);
    f.write_all_at(buf.as_ref(), offset).is_ok()
}

fn read(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .unwrap();
    let mut buf = AlignedBuf::new(len);
    f.read_exact_at(buf.as_mut(), offset).unwrap();
    buf.as_ref().to_vec()
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn boot_script_and_reset_on_boot_on_the_real_kernel() {
    require_vm();
    modprobe("dm-snapshot");
    let site = Site::new();
    let dev = site.disk();
    assert!(write(&dev, 0, MIB, 0x44));
    assert_eq!(read(&dev, 0, 4096), vec![0x44; 4096]);
    let used = site.status()["used_sectors"].as_u64().unwrap();
    let r = get("127.0.0.1", site.http, "/cow");
    assert_eq!(
        r.body,
        format!("OK {used} {}", 128 * MIB / 512),
        "max is CowBell's total"
    );

    // The first request hands out a one-time nonce; the one that carries it resets.
    let first = get("127.0.0.1", site.http, "/boot.ipxe");
    assert_eq!(first.status, 200, "{}", first.body);
    let path = first
        .body
        .lines()
        .find_map(|l| l.strip_prefix("chain "))
        .unwrap_or_else(|| panic!("no chain line in {}", first.body))
        .to_string();
    assert_eq!(read(&dev, 0, 4096), vec![0x44; 4096], "not reset yet");
    let r = get("127.0.0.1", site.http, &path);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        format!("#!ipxe\n# cowctl: pc-1 on image g\nset hostname pc-1\nsanboot iscsi:127.0.0.1::::{IQN}\n")
    );
    let dev = site.disk();
    assert_eq!(
        read(&dev, 0, 4096),
        vec![0; 4096],
        "reset on boot: golden again"
    );
    let row = site.status();
    assert_eq!(row["resets"], 1);
    assert_eq!(row["state"], "active");
    assert!(row["used_sectors"].as_u64().unwrap() < used);
    let log = std::fs::read_to_string(site.path("serve.log")).unwrap();
    assert!(log.contains("pc-1: reset on boot"), "{log}");
}

#[test]
#[ignore = "needs the real kernel: scripts/test-kernel.sh"]
fn autoextend_keeps_a_pc_writing_past_its_initial_cow_from_overflowing() {
    require_vm();
    modprobe("dm-snapshot");
    let site = Site::new();
    let dev = site.disk();
    // 96 MiB, six times the initial COW, at under 6 MiB/s: from the threshold to full
    // (4 to 16 MiB at the first step) the watcher has more than 2 s, twice its period.
    for i in 0..24u64 {
        assert!(
            write(&dev, i * 4 * MIB, 4 * MIB, i as u8 + 1),
            "write {i} failed: the snapshot overflowed at {}",
            site.cowctl(&["status"])
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    let row = site.status();
    assert_eq!(row["state"], "active", "{row}");
    let total = row["total_sectors"].as_u64().unwrap();
    assert!(
        total > 96 * MIB / 512,
        "the COW grew past what was written: {row}"
    );
    assert!(total <= 128 * MIB / 512, "and not past the maximum: {row}");
    for i in [0u64, 7, 23] {
        assert_eq!(
            read(&dev, i * 4 * MIB + 4096, 4096),
            vec![i as u8 + 1; 4096]
        );
    }
    let cow = site.path("cow/pc-1.cow");
    assert_eq!(std::fs::metadata(&cow).unwrap().len(), total * 512);
    let log = std::fs::read_to_string(site.path("serve.log")).unwrap();
    assert!(
        log.contains("pc-1: COW") && log.contains("grown from 16.0 MiB to 24.0 MiB"),
        "{log}"
    );
    let text = site.cowctl(&["status"]);
    assert!(
        text.contains("pc-1's COW was grown by auto-extend from 16.0 MiB"),
        "{text}"
    );
    // Past the maximum the kernel's overflow rule is back: writes fail, reads go on.
    assert!(!write(&dev, 100 * MIB, 48 * MIB, 0x77), "the maximum holds");
    assert_eq!(site.status()["state"], "overflow");
    assert_eq!(read(&dev, 4096, 4096), vec![1; 4096]);
}
