//! The whole boot chain of a room, on this host with the userspace backend: a qemu PC whose
//! only NIC is a tap device this test makes (the room's network, 10.x.y.0/24, with this
//! host at .1) PXE-boots with its own ROM: DHCP from the dnsmasq `cowctl apply` starts,
//! which sees iPXE and chains it to the HTTP service's `/boot.ipxe`, which sanboots the PC's
//! iSCSI disk with its CHAP secret. The PC resets on boot, so two boots both count 1. dnsmasq
//! serves Debian's iPXE loaders by TFTP to PXE ROMs that are not iPXE, answers the manifest's
//! MACs only, and `down` stops it. Beside another DHCP server (a namespace on the same
//! bridge), cowctl's dnsmasq answers as a proxy, and the PC boots the same way. A PC the
//! manifest does not list is not answered, but `cowctl pcs discovered` lists it from
//! dnsmasq's log, and once `cowctl pcs adopt` has added it and apply has run, it boots.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::net::{Link, Netns};
use common::pc::{self, Boot};
use common::room::{Golden, Http, Iscsi, Pc, Room, RoomBuilder};

const BOOT_LIMIT: Duration = Duration::from_secs(180);
const PC_MAC: &str = "52:54:00:c0:ee:01";

/// How the room's network gives PCs their addresses.
#[derive(Clone, Copy, PartialEq)]
enum Lan {
    /// cowctl's dnsmasq leases them: an isolated room network.
    CowctlDhcp,
    /// Another machine (a namespace on the same bridge) runs the LAN's DHCP server, and
    /// cowctl's dnsmasq answers as a proxy with boot information only.
    OtherDhcp,
}

/// The LAN's own DHCP server, in a namespace of its own; stopped when dropped.
struct OtherDhcp {
    _ns: Netns,
    dhcp: Child,
}

impl Drop for OtherDhcp {
    fn drop(&mut self) {
        let _ = self.dhcp.kill();
        let _ = self.dhcp.wait();
    }
}

/// The common room on the room's network this test makes: down first, then the LAN's DHCP
/// server stopped, then the links removed.
struct PxeRoom {
    room: Room,
    /// The PC's NIC.
    tap: String,
    server: String,
    _lan: Option<OtherDhcp>,
    _links: Vec<Link>,
}

impl std::ops::Deref for PxeRoom {
    type Target = Room;
    fn deref(&self) -> &Room {
        &self.room
    }
}

impl PxeRoom {
    /// A room; `k` tells apart rooms of one kind that tests make at the same time.
    fn new(lan: Lan, k: u32) -> PxeRoom {
        // A /24 of 10.0.0.0/8 of this run's own, so parallel runs do not meet.
        let net = std::process::id() % 200 + 20;
        let third = if lan == Lan::CowctlDhcp { 77 } else { 78 } + 10 * k;
        let subnet = format!("10.{net}.{third}");
        let server = format!("{subnet}.1");
        let tap = Link::tap(if lan == Lan::CowctlDhcp { 7 } else { 6 } + 10 * k);
        let (interface, links, other) = match lan {
            Lan::CowctlDhcp => {
                tap.add_address(&format!("{server}/24"));
                (tap.name.clone(), vec![tap], None)
            }
            Lan::OtherDhcp => {
                let bridge = Link::bridge(8);
                bridge.add_address(&format!("{server}/24"));
                tap.join(&bridge);
                let wire = Link::veth(9, 1500);
                wire.join(&bridge);
                let ns = Netns::new(8);
                ns.take(&wire, &format!("{subnet}.2/24"));
                // The LAN's DHCP server: addresses (the PC's reserved), nothing about booting.
                let dhcp = ns
                    .command("dnsmasq")
                    .args([
                        "--keep-in-foreground",
                        "--port=0",
                        "--bind-interfaces",
                        "--pid-file=",
                        "--log-dhcp",
                        "--log-facility=-",
                    ])
                    .arg(format!("--interface={}", wire.peer()))
                    .arg(format!("--dhcp-range={subnet}.100,{subnet}.150,1h"))
                    .arg(format!("--dhcp-host={PC_MAC},{subnet}.11"))
                    .arg("--dhcp-leasefile=/dev/null")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("dnsmasq (Debian package dnsmasq-base)");
                (
                    bridge.name.clone(),
                    vec![tap, wire, bridge],
                    Some(OtherDhcp { _ns: ns, dhcp }),
                )
            }
        };
        let dhcp = match lan {
            Lan::CowctlDhcp => format!("{subnet}.100-{subnet}.150"),
            Lan::OtherDhcp => "proxy".to_string(),
        };
        let room = RoomBuilder::userspace()
            .golden(Golden::Counter(32 << 20))
            .cow("8MiB", "4KiB")
            .defaults("  initiator: iqn.2024-01.lan.pxe:init-{name}\n")
            .iscsi(
                Iscsi::new("iqn.2024-01.lan.pxe")
                    .portal(&server)
                    .acl("initiator")
                    .chap("room", "the-room-master-secret"),
            )
            .http(Http::new().listen(&server))
            .extra(&format!("pxe:\n  interface: {interface}\n  dhcp: {dhcp}\n"))
            .pc(Pc::new("pc-01")
                .mac(PC_MAC)
                .ip(&format!("{subnet}.11"))
                .set("hostname", "lab-a1")
                .initiator("iqn.2024-01.lan.pxe:init-pc-01")
                .flag("reset_on_boot"))
            .build();
        let tap = links[0].name.clone();
        let out = room.cowctl(&["apply"]);
        assert!(out.contains("started dnsmasq"), "{out}");
        PxeRoom {
            room,
            tap,
            server,
            _lan: other,
            _links: links,
        }
    }

    fn boot(&self, mac: &str, limit: Duration) -> Boot {
        pc::boot_from(
            self.dir.path(),
            &pc::tap_nic(&self.tap, mac),
            limit,
            &|| false,
        )
    }

    fn logs(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.path(p)).unwrap_or_default();
        format!(
            "serial:\n{}\ndnsmasq:\n{}\nserve:\n{}",
            pc::serial_log(self.dir.path()),
            read("run/pxe/dhcp.log"),
            read("run/serve.log")
        )
    }
}

#[test]
fn a_pc_pxe_boots_through_dnsmasq_ipxe_and_boot_ipxe_to_its_own_disk() {
    let room = PxeRoom::new(Lan::CowctlDhcp, 0);
    let golden = std::fs::read(room.path("golden.img")).unwrap();

    // PXE ROMs that are not iPXE get iPXE by TFTP: Debian's own loaders, byte for byte.
    for loader in ["undionly.kpxe", "ipxe.efi"] {
        let got = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .arg(format!("tftp://{}/{loader}", room.server))
            .output()
            .unwrap();
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(
            got.stdout,
            std::fs::read(format!("/usr/lib/ipxe/{loader}")).unwrap(),
            "{loader} by TFTP"
        );
    }
    let status = room.cowctl(&["status"]);
    assert!(status.contains("PXE: dnsmasq"), "{status}");
    assert!(status.contains("answers on"), "{status}");

    assert_eq!(
        room.boot(PC_MAC, BOOT_LIMIT),
        Boot::Counted(1),
        "{}",
        room.logs()
    );
    let logs = room.logs();
    assert!(
        logs.contains("lab-a1"),
        "dnsmasq gave the PC its name:\n{logs}"
    );
    assert!(
        logs.contains("boot.ipxe"),
        "iPXE was chained to /boot.ipxe:\n{logs}"
    );
    // Reset on boot: the second boot starts from the golden image again.
    assert_eq!(
        room.boot(PC_MAC, BOOT_LIMIT),
        Boot::Counted(1),
        "{}",
        room.logs()
    );
    assert_eq!(std::fs::read(room.path("golden.img")).unwrap(), golden);

    // A MAC the manifest does not list gets no DHCP answer, so it boots nothing.
    let stranger = room.boot("52:54:00:c0:ee:99", Duration::from_secs(60));
    assert!(matches!(stranger, Boot::Nothing(_)), "{stranger:?}");
    let log = std::fs::read_to_string(room.path("run/pxe/dhcp.log")).unwrap();
    assert!(log.contains("52:54:00:c0:ee:99 ignored"), "{log}");

    // Apply leaves a dnsmasq that serves the manifest alone, and restarts it when the
    // manifest changes what it serves.
    let plan = room.cowctl(&["plan"]);
    assert!(plan.contains("already serves the manifest"), "{plan}");
    let manifest = std::fs::read_to_string(room.path("room.yaml")).unwrap();
    std::fs::write(room.path("room.yaml"), manifest.replace("lab-a1", "lab-a2")).unwrap();
    let plan = room.cowctl(&["plan"]);
    assert!(plan.contains("PXE: restart dnsmasq"), "{plan}");
    let apply = room.cowctl(&["apply"]);
    assert!(apply.contains("restarted dnsmasq as"), "{apply}");
    let conf = std::fs::read_to_string(room.path("run/pxe/dnsmasq.conf")).unwrap();
    assert!(
        conf.contains(&format!("dhcp-host={PC_MAC},")) && conf.contains(",lab-a2"),
        "{conf}"
    );
    let apply = room.cowctl(&["apply"]);
    assert!(apply.contains("already serves it"), "{apply}");

    let down = room.cowctl(&["down"]);
    assert!(down.contains("stopped the PXE service"), "{down}");
    let status = room.cowctl(&["status"]);
    assert!(status.contains("dnsmasq is not running"), "{status}");
}

#[test]
fn beside_the_lans_dhcp_server_cowctl_answers_as_a_proxy_and_the_pc_boots() {
    let room = PxeRoom::new(Lan::OtherDhcp, 0);
    assert_eq!(
        room.boot(PC_MAC, BOOT_LIMIT),
        Boot::Counted(1),
        "{}",
        room.logs()
    );
    let log = std::fs::read_to_string(room.path("run/pxe/dhcp.log")).unwrap();
    assert!(
        log.contains("proxy"),
        "cowctl's dnsmasq answered as a proxy:\n{log}"
    );
    assert!(!log.contains("DHCPACK"), "and leased nothing:\n{log}");
    assert_eq!(
        room.boot(PC_MAC, BOOT_LIMIT),
        Boot::Counted(1),
        "{}",
        room.logs()
    );
    // A stranger beside the LAN's server gets its address there but no boot information
    // from cowctl, and is discovered all the same.
    let stranger = "52:54:00:c0:ee:98";
    let log = room.path("run/pxe/dhcp.log");
    let asked = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("{stranger} ignored"))
    };
    let nic = pc::tap_nic(&room.tap, stranger);
    let boot = pc::boot_from(room.dir.path(), &nic, Duration::from_secs(60), &asked);
    assert!(matches!(boot, Boot::Nothing(_)), "{boot:?}");
    let listed = room.cowctl(&["pcs", "discovered"]);
    assert!(listed.contains(stranger), "{listed}\n{}", room.logs());
}

#[test]
fn a_pc_the_manifest_does_not_list_is_discovered_adopted_and_then_boots() {
    let room = PxeRoom::new(Lan::CowctlDhcp, 1);
    const NEW: &str = "52:54:00:c0:ee:31";
    // Not answered: the PXE ROM asks, dnsmasq logs it as ignored, nothing boots. The boot
    // ends as soon as the log shows that, to keep the test short.
    let log = room.path("run/pxe/dhcp.log");
    let ignored = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("{NEW} ignored"))
    };
    let limit = Duration::from_secs(60);
    let stranger = pc::boot_from(
        room.dir.path(),
        &pc::tap_nic(&room.tap, NEW),
        limit,
        &ignored,
    );
    assert!(matches!(stranger, Boot::Nothing(_)), "{stranger:?}");
    assert!(ignored(), "{}", room.logs());

    let listed = room.cowctl(&["pcs", "discovered"]);
    let line = listed.lines().find(|l| l.starts_with(NEW));
    let line = line.unwrap_or_else(|| panic!("{NEW} not listed:\n{listed}\n{}", room.logs()));
    assert!(line.contains(&room.tap) && line.contains("BIOS"), "{line}");
    assert!(
        !listed.contains(PC_MAC),
        "the manifest's PC is not a stranger:\n{listed}"
    );

    let before = std::fs::read_to_string(room.path("room.yaml")).unwrap();
    let adopt = ["pcs", "adopt", NEW, "--name-from", "pc-{31..31}"];
    let out = room.cowctl(&adopt);
    assert!(out.contains("+  - name: pc-31"), "{out}");
    let after = std::fs::read_to_string(room.path("room.yaml")).unwrap();
    assert!(
        after.starts_with(&before),
        "the manifest is appended to:\n{after}"
    );
    let listed = room.cowctl(&["pcs", "discovered"]);
    assert!(
        !listed.contains(NEW),
        "adopted, so no longer a stranger:\n{listed}"
    );
    let valid = room.cowctl(&["validate"]);
    assert!(valid.contains("2 PC(s)"), "{valid}");
    let plan = room.cowctl(&["plan"]);
    assert!(plan.contains("pc-31"), "{plan}");

    let apply = room.cowctl(&["apply"]);
    assert!(apply.contains("restarted dnsmasq as"), "{apply}");
    assert_eq!(
        room.boot(NEW, BOOT_LIMIT),
        Boot::Counted(1),
        "{}",
        room.logs()
    );
}
