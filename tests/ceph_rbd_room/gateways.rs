//! Two gateways (`gateways`) in front of one cluster and one manifest: each serves the PCs
//! whose first gateway it is; the other shows them as served elsewhere. A gateway killed
//! with SIGKILL while a client writes and flushes: the other takes its PC over without an
//! admin, every flushed write is there, and the killed gateway, started again, does not
//! serve the PC twice.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::ceph::cluster;
use super::common::free_port;
use super::common::room::{Golden, Iscsi, Pc, Room, RoomBuilder};

pub(super) struct Gateway {
    pub(super) name: &'static str,
    pub(super) room: Room,
    pub(super) nbd: u16,
}

impl Gateway {
    pub(super) fn run(&self, args: &[&str]) -> std::process::Output {
        self.room
            .command(args)
            .env("COWCTL_GATEWAY", self.name)
            .env("COWCTL_TAKEOVER_INTERVAL_MS", "300")
            .output()
            .unwrap()
    }

    pub(super) fn cowctl(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts how this gateway's status shows `pc`: its state, and the gateway holding it.
    pub(super) fn shows(&self, pc: &str, state: &str, gateway: &str) {
        let row = self.row(pc);
        assert_eq!(
            (row["state"].as_str(), row["gateway"].as_str()),
            (Some(state), Some(gateway)),
            "{} shows {pc}: {row}",
            self.name
        );
    }

    pub(super) fn row(&self, pc: &str) -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(&self.cowctl(&["--json", "status"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == pc)
            .cloned()
            .unwrap()
    }

    fn uri(&self, pc: &str) -> String {
        format!("nbd://127.0.0.1:{}/{pc}", self.nbd)
    }
}

/// The room's own `down` on drop does not know which gateway it is: this one does.
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

pub(super) fn qemu_io(target: &str, cmds: &[&str]) -> bool {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(target).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && !text.contains("failed") && !text.contains("mismatch")
}

#[test]
fn a_killed_gateways_pc_is_taken_over_with_every_flushed_write_and_never_served_twice() {
    let c = cluster();
    c.golden("gw", "base", &vec![5; 8 << 20]);
    let (a_nbd, b_nbd) = (free_port(), free_port());
    let section = format!(
        "{}gateways:\n  - name: gw-a\n    iscsi: 127.0.0.1:{}\n    nbd: 127.0.0.1:{a_nbd}\n  - name: gw-b\n    iscsi: 127.0.0.1:{}\n    nbd: 127.0.0.1:{b_nbd}\n",
        c.section("gw"),
        free_port(),
        free_port()
    );
    let gateway = |name: &'static str, nbd: u16| Gateway {
        name,
        nbd,
        room: RoomBuilder::userspace()
            .golden(Golden::Rbd("gw@base".into()))
            .extra(&section)
            .cow("8MiB", "4KiB")
            .export("nbd")
            .pc(Pc::new("pc-{1..6}"))
            .build(),
    };
    let (a, b) = (gateway("gw-a", a_nbd), gateway("gw-b", b_nbd));
    a.cowctl(&["apply"]);
    b.cowctl(&["apply"]);

    // A PC gw-a serves first: gw-b shows it as served elsewhere, by gw-a.
    let m = cowctl::manifest::Manifest::load(&a.room.manifest).unwrap();
    let pc = ["pc-1", "pc-2", "pc-3", "pc-4", "pc-5", "pc-6"]
        .into_iter()
        .find(|p| m.gateway_order(p)[0].name == "gw-a")
        .expect("gw-a serves one of six PCs first");
    a.shows(pc, "active", "gw-a");
    b.shows(pc, "elsewhere", "gw-a");
    assert!(
        !qemu_io(&b.uri(pc), &["read 0 4k"]),
        "gw-b does not serve it"
    );

    // A client writes and flushes 64 KiB pieces through gw-a, each of its own pattern,
    // until gw-a is killed under it.
    let flushed = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (flushed, stop, uri) = (flushed.clone(), stop.clone(), a.uri(pc));
        std::thread::spawn(move || {
            for i in 0u64..100 {
                let cmd = format!("write -P {} {} 64k", i % 250 + 1, i * 65536);
                if stop.load(Ordering::Relaxed) || !qemu_io(&uri, &[&cmd, "flush"]) {
                    break;
                }
                flushed.lock().unwrap().push(i);
            }
        })
    };
    while flushed.lock().unwrap().len() < 5 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.room.serve_pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let flushed = flushed.lock().unwrap().clone();

    // gw-b takes it over, with no admin (the dead owner's watch expires, its lock is broken).
    loop {
        let row = b.row(pc);
        if row["state"] == "active" {
            assert_eq!(row["gateway"], "gw-b", "{row}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no takeover: {row}\n{}",
            b.room.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "gw-b took {pc} over {:.1} s after gw-a was killed",
        killed.elapsed().as_secs_f64()
    );
    for i in &flushed {
        let cmd = format!("read -P {} {} 64k", i % 250 + 1, i * 65536);
        assert!(
            qemu_io(&b.uri(pc), &[&cmd]),
            "flushed write {i} of {flushed:?} is there"
        );
    }

    // gw-a comes back: it serves its other PCs, not this one, which gw-b holds.
    a.cowctl(&["apply"]);
    std::thread::sleep(Duration::from_secs(1));
    a.shows(pc, "elsewhere", "gw-b");
    assert!(
        !qemu_io(&a.uri(pc), &["read 0 4k"]),
        "gw-a does not serve it twice"
    );
    assert!(
        qemu_io(&b.uri(pc), &["read -P 5 4M 64k"]),
        "gw-b still does"
    );
}

/// An initiator that reaches a gateway which does not serve its PC (the portal it booted
/// from came back after another took the PC over) is redirected to the gateway that holds
/// the PC's clone (Target moved temporarily, with that gateway's portal), and works there.
#[test]
fn a_login_at_a_gateway_that_does_not_serve_the_pc_is_redirected_to_the_one_that_does() {
    let c = cluster();
    c.golden("redir", "base", &vec![6; 4 << 20]);
    let (a_iscsi, b_iscsi) = (free_port(), free_port());
    let section = format!(
        "{}gateways:\n  - name: gw-a\n    iscsi: 127.0.0.1:{a_iscsi}\n    nbd: 127.0.0.1:{}\n  - name: gw-b\n    iscsi: 127.0.0.1:{b_iscsi}\n    nbd: 127.0.0.1:{}\n",
        c.section("redir"),
        free_port(),
        free_port()
    );
    let (a, b) = iscsi_pair(&section, "redir@base", "8MiB", "iqn.2024-01.lan.redir");
    let pc = first_at_a(&a);
    assert_eq!(b.row(pc)["state"], "elsewhere");
    // gw-b redirects from what its gateway loop saw (every 300 ms here), not from a look
    // at the cluster on the login's thread.
    std::thread::sleep(Duration::from_secs(1));
    let at = |port: u16| format!("iscsi://127.0.0.1:{port}/iqn.2024-01.lan.redir:{pc}/0");
    // Through gw-b's portal: redirected to gw-a, which serves the write.
    assert!(
        qemu_io(&at(b_iscsi), &["read -P 6 0 64k", "write -P 9 1M 64k"]),
        "redirected to gw-a\n{}",
        b.room.log_so_far()
    );
    assert!(
        qemu_io(&at(a_iscsi), &["read -P 9 1M 64k"]),
        "the write is gw-a's"
    );
    let log = b.room.log_so_far();
    assert!(log.contains("is sent there"), "{log}");
}

/// gw-a and gw-b of `section` (the ceph and gateways sections), serving four PCs over iSCSI
/// from clones of `golden`, both applied.
pub(super) fn iscsi_pair(section: &str, golden: &str, cow: &str, iqn: &str) -> (Gateway, Gateway) {
    let gateway = |name: &'static str| Gateway {
        name,
        nbd: 0,
        room: RoomBuilder::userspace()
            .golden(Golden::Rbd(golden.into()))
            .extra(section)
            .cow(cow, "4KiB")
            .iscsi(Iscsi::new(iqn).acl("open"))
            .export("iscsi")
            .pc(Pc::new("pc-{1..4}"))
            .build(),
    };
    let (a, b) = (gateway("gw-a"), gateway("gw-b"));
    a.cowctl(&["apply"]);
    b.cowctl(&["apply"]);
    (a, b)
}

/// A PC of [`iscsi_pair`]'s whose first gateway is gw-a.
pub(super) fn first_at_a(a: &Gateway) -> &'static str {
    let m = cowctl::manifest::Manifest::load(&a.room.manifest).unwrap();
    ["pc-1", "pc-2", "pc-3", "pc-4"]
        .into_iter()
        .find(|p| m.gateway_order(p)[0].name == "gw-a")
        .expect("gw-a serves one of four PCs first")
}
