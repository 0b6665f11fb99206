//! Floating portals: two gateways, each on a "machine" of its own (its own interface on a
//! switch), whose iSCSI portal addresses float. A client machine (a network namespace on
//! the switch) writes through gw-a's address. gw-a is killed and its machine goes off the
//! switch: gw-b puts gw-a's address on its own interface and announces it (the client's ARP
//! entry moves to gw-b's interface before the client sends anything), takes the PC over,
//! and the client, dialling the same address it always did, reads every flushed write and
//! writes on. gw-a comes back: it gets its address back, and the login there is redirected
//! to gw-b, which still holds the PC; gw-a never serves it.

use std::process::Command;
use std::time::{Duration, Instant};

use super::common::ceph::cluster;
use super::common::room::{Golden, Iscsi, Pc, RoomBuilder};
use super::gateways::Gateway;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysctl(key: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
        .unwrap_or_else(|e| panic!("{key}: {e}"));
}

/// A switch (a bridge), each gateway's machine interface on it (a veth end on this host),
/// and a client machine (a namespace) on it. Removed when dropped.
struct Room {
    id: u32,
    ns: String,
    subnet: String,
}

impl Room {
    fn new() -> Room {
        let id = std::process::id() % 10_000;
        let room = Room {
            id,
            ns: format!("cwfl{id}"),
            subnet: format!("10.{}.{}", 200 + id % 50, id % 200),
        };
        room.remove();
        let sw = room.switch();
        ip(&["link", "add", &sw, "type", "bridge"]);
        // A switch, not a machine: this host's stack never answers ARP through it.
        sysctl(&format!("net.ipv4.conf.{sw}.arp_ignore"), "8");
        ip(&["link", "set", &sw, "up"]);
        for machine in ["a", "b", "c"] {
            let (nic, port) = (room.nic(machine), format!("cwfp{machine}{id}"));
            ip(&["link", "add", &nic, "type", "veth", "peer", "name", &port]);
            ip(&["link", "set", &port, "master", &sw]);
            ip(&["link", "set", &port, "up"]);
        }
        ip(&["netns", "add", &room.ns]);
        let client = room.nic("c");
        ip(&["link", "set", &client, "netns", &room.ns]);
        let inside = |args: &[&str]| {
            let mut a = vec!["-n", &room.ns];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}.100/24", room.subnet),
            "dev",
            &client,
        ]);
        inside(&["link", "set", &client, "up"]);
        inside(&["link", "set", "lo", "up"]);
        for (machine, host) in [("a", 11), ("b", 12)] {
            let nic = room.nic(machine);
            // Two machines, one network stack: each interface answers ARP only for what it holds.
            sysctl(&format!("net.ipv4.conf.{nic}.arp_ignore"), "1");
            sysctl(&format!("net.ipv4.conf.{nic}.arp_announce"), "2");
            ip(&[
                "addr",
                "add",
                &format!("{}.{host}/24", room.subnet),
                "dev",
                &nic,
            ]);
            ip(&["link", "set", &nic, "up"]);
        }
        room
    }

    fn switch(&self) -> String {
        format!("cwfs{}", self.id)
    }

    /// A machine's interface: gw-a's (`a`), gw-b's (`b`), the client's (`c`).
    fn nic(&self, machine: &str) -> String {
        format!("cwf{machine}{}", self.id)
    }

    fn portal(&self, machine: &str) -> String {
        let host = if machine == "a" { 1 } else { 2 };
        format!("{}.{host}", self.subnet)
    }

    fn has(&self, machine: &str, addr: &str) -> bool {
        ip(&["-4", "-o", "addr", "show", "dev", &self.nic(machine)])
            .split_whitespace()
            .any(|w| w == format!("{addr}/32"))
    }

    fn mac(&self, machine: &str) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", self.nic(machine)))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The MAC the client's ARP table has for `addr`, if any.
    fn client_arp(&self, addr: &str) -> Option<String> {
        let out = ip(&["-n", &self.ns, "neigh", "show", addr]);
        let words: Vec<&str> = out.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "lladdr")?;
        words.get(at + 1).map(|s| s.to_string())
    }

    /// qemu-io (libiscsi) on the client machine; whether every command worked.
    fn qemu_io(&self, uri: &str, cmds: &[&str]) -> bool {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "qemu-io", "-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = c.arg(uri).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        out.status.success() && !text.contains("failed") && !text.contains("mismatch")
    }

    fn remove(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        for l in [self.nic("a"), self.nic("b"), self.nic("c"), self.switch()] {
            let _ = Command::new("ip").args(["link", "del", &l]).output();
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.remove();
    }
}

fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "{what}, not within {within:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
}

#[test]
fn a_dead_gateways_portal_address_moves_to_a_live_one_and_comes_back_with_it() {
    let c = cluster();
    c.golden("float", "base", &vec![3; 4 << 20]);
    let net = Room::new();
    let section = format!(
        "{}gateways:\n  - name: gw-a\n    iscsi: {}:3260\n    interface: {}\n    nbd: 127.0.0.1:{}\n  - name: gw-b\n    iscsi: {}:3260\n    interface: {}\n    nbd: 127.0.0.1:{}\n",
        c.section("float"),
        net.portal("a"),
        net.nic("a"),
        super::common::free_port(),
        net.portal("b"),
        net.nic("b"),
        super::common::free_port(),
    );
    let gateway = |name: &'static str| Gateway {
        name,
        nbd: 0,
        room: RoomBuilder::userspace()
            .golden(Golden::Rbd("float@base".into()))
            .extra(&section)
            .cow("8MiB", "4KiB")
            .iscsi(Iscsi::new("iqn.2024-01.lan.float").acl("open"))
            .export("iscsi")
            .pc(Pc::new("pc-{1..4}"))
            .build(),
    };
    let (a, b) = (gateway("gw-a"), gateway("gw-b"));
    a.cowctl(&["apply"]);
    b.cowctl(&["apply"]);
    let logs = || {
        format!(
            "gw-a:\n{}\ngw-b:\n{}",
            a.room.log_so_far(),
            b.room.log_so_far()
        )
    };
    let (pa, pb) = (net.portal("a"), net.portal("b"));
    until(
        "each gateway holds its own portal",
        Duration::from_secs(20),
        || net.has("a", &pa) && net.has("b", &pb),
        logs,
    );

    let m = cowctl::manifest::Manifest::load(&a.room.manifest).unwrap();
    let pc = ["pc-1", "pc-2", "pc-3", "pc-4"]
        .into_iter()
        .find(|p| m.gateway_order(p)[0].name == "gw-a")
        .expect("gw-a serves one of four PCs first");
    let uri = format!("iscsi://{pa}/iqn.2024-01.lan.float:{pc}/0");
    assert!(
        net.qemu_io(&uri, &["write -P 7 0 64k", "flush"]),
        "the client writes through gw-a\n{}",
        logs()
    );
    assert_eq!(
        net.client_arp(&pa),
        Some(net.mac("a")),
        "a {} b {}: {}",
        net.mac("a"),
        net.mac("b"),
        ip(&["-n", &net.ns, "neigh"])
    );

    // gw-a's machine dies: the process, and the machine's link.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.room.serve_pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    ip(&["link", "set", &net.nic("a"), "down"]);
    until(
        "gw-b holds gw-a's portal",
        Duration::from_secs(30),
        || net.has("b", &pa),
        logs,
    );
    until(
        "the client's ARP entry names gw-b's interface (its gratuitous ARP)",
        Duration::from_secs(3),
        || net.client_arp(&pa) == Some(net.mac("b")),
        logs,
    );
    until(
        "the client, at the same address, reads its flushed write and writes on",
        Duration::from_secs(60),
        || net.qemu_io(&uri, &["read -P 7 0 64k", "write -P 8 64k 64k", "flush"]),
        logs,
    );
    let row = b.row(pc);
    assert_eq!(
        (row["state"].as_str(), row["gateway"].as_str()),
        (Some("active"), Some("gw-b")),
        "{row}"
    );

    // gw-a's machine comes back: its address goes back to it; gw-b keeps the PC.
    ip(&["link", "set", &net.nic("a"), "up"]);
    a.cowctl(&["apply"]);
    until(
        "gw-a holds its portal again, and gw-b does not",
        Duration::from_secs(20),
        || net.has("a", &pa) && !net.has("b", &pa),
        logs,
    );
    until(
        "a login at gw-a's address is redirected to gw-b, where the writes are",
        Duration::from_secs(20),
        || net.qemu_io(&uri, &["read -P 7 0 64k", "read -P 8 64k 64k"]),
        logs,
    );
    let row = a.row(pc);
    assert_eq!(
        (row["state"].as_str(), row["gateway"].as_str()),
        (Some("elsewhere"), Some("gw-b")),
        "{row}"
    );
    assert!(
        a.room.log_so_far().contains("gave its portal")
            || b.room.log_so_far().contains("gave its portal")
    );
}
