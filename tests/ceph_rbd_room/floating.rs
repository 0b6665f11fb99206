//! Floating portals: two gateways, each on a "machine" of its own (its own interface on a
//! switch), whose iSCSI portal addresses float; a client machine (a network namespace) on
//! the switch.
//! - libiscsi writes through gw-a's address. gw-a's cowctl is killed (its machine stays up;
//!   `serve --release-portals`, systemd's ExecStopPost, takes the address off): gw-b puts
//!   the address on its own interface and announces it (the client's ARP entry moves before
//!   the client sends anything), takes the PC over, and the client, dialling the address it
//!   always did, reads its flushed write and writes on. gw-a starts again: it gets its
//!   address back, the login there is redirected to gw-b, and gw-a never serves the PC.
//! - A real Linux booted from gw-a's address rides out gw-a's machine dying (process and
//!   link) and coming back, with no I/O error.

use std::process::Command;
use std::time::{Duration, Instant};

use super::common::ceph::cluster;
use super::common::net::ip;
use super::common::realos::{self, Firmware, Job};
use super::gateways::{first_at_a, iscsi_pair, Gateway};

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
    /// Room `n` of this test process (each test its own names and subnet).
    fn new(n: u32) -> Room {
        let id = std::process::id() % 1000 * 10 + n;
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

/// gw-a and gw-b, each on its machine's interface in `net`, serving four PCs over iSCSI from
/// clones of `golden`, both applied and holding their own portals.
fn gateways(net: &Room, golden: &str, cow: &str, iqn: &str) -> (Gateway, Gateway) {
    let c = cluster();
    let prefix = golden.split('@').next().unwrap();
    let section = format!(
        "{}gateways:\n  - name: gw-a\n    iscsi: {}:3260\n    interface: {}\n    nbd: 127.0.0.1:{}\n  - name: gw-b\n    iscsi: {}:3260\n    interface: {}\n    nbd: 127.0.0.1:{}\n",
        c.section(prefix),
        net.portal("a"),
        net.nic("a"),
        super::common::free_port(),
        net.portal("b"),
        net.nic("b"),
        super::common::free_port(),
    );
    let (a, b) = iscsi_pair(&section, golden, cow, iqn);
    let (pa, pb) = (net.portal("a"), net.portal("b"));
    until(
        "each gateway holds its own portal",
        Duration::from_secs(20),
        || net.has("a", &pa) && net.has("b", &pb),
        || logs(&a, &b),
    );
    (a, b)
}

fn logs(a: &Gateway, b: &Gateway) -> String {
    format!(
        "gw-a:\n{}\ngw-b:\n{}",
        a.room.log_so_far(),
        b.room.log_so_far()
    )
}

fn kill_serve(a: &Gateway) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.room.serve_pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// gw-a's machine dies: the process, and the machine's link.
fn kill_machine_a(net: &Room, a: &Gateway) {
    kill_serve(a);
    ip(&["link", "set", &net.nic("a"), "down"]);
}

#[test]
fn a_dead_gateways_portal_address_moves_to_a_live_one_and_comes_back_with_it() {
    let c = cluster();
    c.golden("float", "base", &vec![3; 4 << 20]);
    // gw-a's leases as a cowctl from before cookies named the machine left them (its bare
    // name), a minute long: a reload across the upgrade takes them over at once.
    for lease in ["alive", "portal"] {
        let took = Command::new("rados")
            .arg("-c")
            .arg(c.conf())
            .args(["-p", "rbd", "lock", "get", "float.portal.gw-a", lease])
            .args(["--lock-cookie", "gw-a", "--lock-duration", "60"])
            .status()
            .unwrap();
        assert!(took.success());
    }
    let net = Room::new(1);
    let (a, b) = gateways(&net, "float@base", "8MiB", "iqn.2024-01.lan.float");
    let logs = || logs(&a, &b);
    let pa = net.portal("a");
    let pc = first_at_a(&a);
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

    // A second machine set up as gw-a (a clone of it, say) is told apart from gw-a itself.
    let doctor = |boot: Option<&str>| {
        let mut cmd = a.room.command(&["doctor"]);
        cmd.env("COWCTL_GATEWAY", "gw-a");
        if let Some(boot) = boot {
            cmd.env("COWCTL_TEST_BOOT_ID", boot);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    let twin = "another machine runs as gateway gw-a";
    assert!(!doctor(None).contains(twin), "{}", doctor(None));
    let other = doctor(Some("a-clone-of-gw-a"));
    assert!(other.contains(twin), "{other}");

    // gw-a's cowctl is killed; its machine stays up, and systemd's ExecStopPost takes the
    // address off (else this machine would answer for it beside gw-b).
    kill_serve(&a);
    let released = a.cowctl(&["serve", "--release-portals"]);
    assert!(released.contains(&format!("took {pa} off")), "{released}");
    assert!(!net.has("a", &pa));
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
    b.shows(pc, "active", "gw-b");
    let doctor = String::from_utf8_lossy(&b.run(&["doctor"]).stdout).into_owned();
    assert!(
        doctor.contains(&format!("gw-a's portal {pa}:3260 is held by gw-b")),
        "{doctor}"
    );

    // gw-a's cowctl starts again: its address goes back to it; gw-b keeps the PC.
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
    a.shows(pc, "elsewhere", "gw-b");
    assert!(
        a.room.log_so_far().contains("gave its portal")
            || b.room.log_so_far().contains("gave its portal")
    );
}

/// A real Linux on a BIOS PC on the client machine boots (iPXE sanboot, then its own
/// open-iscsi from the iBFT) from gw-a's floating address and writes and syncs files. gw-a's
/// machine dies under it: the OS's initiator, reconnecting to the one address it knows,
/// reaches gw-b there, which took the PC over. gw-a comes back and takes its address back:
/// the OS reconnects again and is redirected to gw-b. No I/O error, and writes go on.
#[test]
fn a_real_linux_rides_out_its_gateways_death_and_return_at_the_one_address_it_knows() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.img");
    realos::golden(&golden);
    c.golden_from("floatos", "base", &golden);
    let net = Room::new(2);
    let (a, b) = gateways(&net, "floatos@base", "256MiB", "iqn.2024-01.lan.fos");
    let logs = || logs(&a, &b);
    let (pa, pc) = (net.portal("a"), first_at_a(&a));
    let tftp = dir.path().join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!("#!ipxe\nset initiator-iqn iqn.2024-01.lan.os:init-{pc}\nsanboot iscsi:{pa}::::iqn.2024-01.lan.fos:{pc}\n"),
    )
    .unwrap();
    let nics = realos::user_nic(&tftp, "boot.ipxe");
    let mut os = realos::Pc::start_in(
        Some(&net.ns),
        dir.path(),
        Firmware::Bios,
        &nics,
        Job::Write(30),
    );
    let wrote = |os: &mut realos::Pc, k: u32| {
        let line = format!("cowctl-os synced boot-1-w{k} ");
        assert!(
            os.wait_for(&line, Duration::from_secs(240)),
            "no {line:?}:\n{}\n{}",
            os.log(),
            logs()
        );
    };
    wrote(&mut os, 3);
    kill_machine_a(&net, &a);
    let killed = Instant::now();
    until(
        "gw-b holds gw-a's portal",
        Duration::from_secs(30),
        || net.has("b", &pa),
        logs,
    );
    wrote(&mut os, 8);
    eprintln!(
        "the OS synced again {:.1} s after gw-a died",
        killed.elapsed().as_secs_f64()
    );
    b.shows(pc, "active", "gw-b");

    ip(&["link", "set", &net.nic("a"), "up"]);
    a.cowctl(&["apply"]);
    until(
        "gw-a holds its portal again",
        Duration::from_secs(20),
        || net.has("a", &pa) && !net.has("b", &pa),
        logs,
    );
    wrote(&mut os, 13);
    let report = os.finish(Duration::from_secs(240));
    assert_eq!(report.boot(), Some((1, 0, 0)), "{}\n{}", report.log, logs());
    assert_eq!(report.io_errors(), Vec::<String>::new(), "{}", report.log);
    a.shows(pc, "elsewhere", "gw-b");
    assert!(
        a.room.log_so_far().contains("is sent there"),
        "the OS's login at gw-a was redirected to gw-b\n{}",
        logs()
    );
    eprintln!(
        "the OS synced {} files; its longest wait for a sync: {:.1} s",
        report.synced().len(),
        report.longest_stall()
    );
}
