//! The pxe section's needs (dnsmasq, the iPXE loaders in `pxe.tftp_root`, the chain URL)
//! and the interfaces the manifest names (pxe, AoE) or serves on (iSCSI portals): there,
//! up, with the address.

use std::net::IpAddr;

use super::{Area, Check, Host};
use crate::kernel::net::Interface;
use crate::manifest::{Export, Manifest, PxeConfig};
use crate::pxe::config::{BIOS_LOADER, UEFI_LOADER};

pub fn checks(m: &Manifest, host: &Host) -> Vec<Check> {
    let ifaces = match host.net.interfaces() {
        Ok(i) => i,
        Err(e) => {
            return vec![Check::fail(
                Area::Interface,
                format!(
                    "cannot read the network interfaces: {}",
                    crate::base::logtext::chain(&e)
                ),
                "run cowctl doctor where it may open a netlink socket",
            )]
        }
    };
    let mut out = Vec::new();
    if let Some(pxe) = &m.pxe {
        out.push(dnsmasq(host));
        out.push(loaders(pxe));
        out.push(interface(host, &ifaces, "pxe.interface", &pxe.interface));
        out.push(match crate::pxe::chain(m, pxe, host.net) {
            Ok(c) => Check::ok(Area::Pxe, format!("iPXE chains PCs to {}", c.url())),
            Err(e) => Check::fail(
                Area::Pxe,
                format!(
                    "PCs could not chain to /boot.ipxe: {}",
                    crate::base::logtext::chain(&e)
                ),
                "give the interface an IPv4 address, or set http.server / http.listen",
            ),
        });
    }
    if let Some(aoe) = &m.aoe {
        if m.pcs.iter().any(|p| matches!(p.export, Export::Aoe { .. })) {
            out.push(interface(host, &ifaces, "aoe.interface", &aoe.interface));
        }
    }
    if let Some(iscsi) = &m.iscsi {
        if m.pcs
            .iter()
            .any(|p| matches!(p.export, Export::Iscsi { .. }))
        {
            out.extend(
                iscsi
                    .portals
                    .iter()
                    .filter_map(|p| portal(&ifaces, p.0.ip())),
            );
        }
    }
    out.extend(floating(m, host, &ifaces, nix::unistd::geteuid().is_root()));
    out
}

/// Floating portals: this gateway's interface is there and up, with an address of the
/// machine's own beside the portals it will hold, and cowctl may add addresses (root).
fn floating(m: &Manifest, host: &Host, ifaces: &[Interface], root: bool) -> Vec<Check> {
    let Some(here) = m.here.as_deref() else {
        return Vec::new();
    };
    let Some(name) = (m.gateways.iter())
        .find(|g| g.name == here)
        .and_then(|g| g.interface.as_deref())
    else {
        return Vec::new();
    };
    let field = format!("gateways ({here}).interface");
    let mut out = vec![interface(host, ifaces, &field, name)];
    let portals: Vec<IpAddr> = m.gateways.iter().map(|g| g.portal.0.ip()).collect();
    let own = (ifaces.iter().find(|i| i.name == name)).is_some_and(|i| {
        i.addresses
            .iter()
            .any(|a| a.is_ipv4() && !portals.contains(a))
    });
    if !own {
        out.push(Check::warn(
            Area::Interface,
            format!("{field} {name} has no IPv4 address of this machine's own: a floating portal's /32 alone gives no route to the PCs' subnet"),
            format!("ip addr add <this machine's address>/<prefix> dev {name}"),
        ));
    }
    if !root {
        out.push(Check::fail(
            Area::Interface,
            "holding a floating portal means adding its address to an interface, which needs root (CAP_NET_ADMIN)",
            "run cowctl serve as root (the systemd unit does)",
        ));
    }
    out
}

fn dnsmasq(host: &Host) -> Check {
    match host.program("dnsmasq") {
        Some(p) => Check::ok(Area::Pxe, format!("dnsmasq is {}", p.display())),
        None => Check::fail(
            Area::Pxe,
            "the pxe section needs dnsmasq, which is not installed",
            "apt-get install dnsmasq-base",
        ),
    }
}

fn loaders(pxe: &PxeConfig) -> Check {
    let missing: Vec<&str> = [BIOS_LOADER, UEFI_LOADER]
        .into_iter()
        .filter(|f| !pxe.tftp_root.join(f).is_file())
        .collect();
    let root = pxe.tftp_root.display();
    if missing.is_empty() {
        return Check::ok(
            Area::Pxe,
            format!("{root} has {BIOS_LOADER} and {UEFI_LOADER}"),
        );
    }
    Check::fail(
        Area::Pxe,
        format!(
            "{root} has no {} for PXE ROMs to load",
            missing.join(" and ")
        ),
        "apt-get install ipxe (it puts them in /usr/lib/ipxe), or set pxe.tftp_root",
    )
}

/// The interface exists, is up, has a carrier and an address.
fn interface(host: &Host, ifaces: &[Interface], field: &str, name: &str) -> Check {
    let Some(i) = ifaces.iter().find(|i| i.name == name) else {
        let have: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        return Check::fail(
            Area::Interface,
            format!(
                "{field} {name} does not exist (this machine has {})",
                have.join(", ")
            ),
            format!("set {field} to one of them"),
        );
    };
    let addrs: Vec<String> = i.addresses.iter().map(IpAddr::to_string).collect();
    let addrs = if addrs.is_empty() {
        "no address".to_string()
    } else {
        addrs.join(", ")
    };
    if !i.up {
        return Check::fail(
            Area::Interface,
            format!("{field} {name} is down ({addrs})"),
            format!("ip link set {name} up"),
        );
    }
    let operstate =
        std::fs::read_to_string(host.sys.join("class/net").join(name).join("operstate"))
            .unwrap_or_default();
    if operstate.trim() == "down" {
        return Check::warn(
            Area::Interface,
            format!("{field} {name} is up but has no carrier ({addrs})"),
            format!("plug {name} into the room's switch"),
        );
    }
    if i.addresses.is_empty() && field == "pxe.interface" {
        return Check::fail(
            Area::Interface,
            format!("{field} {name} is up but has no address"),
            format!("ip addr add <address>/<prefix> dev {name}"),
        );
    }
    Check::ok(Area::Interface, format!("{field} {name} is up: {addrs}"))
}

/// An iSCSI portal on a given address needs an interface that is up with it.
fn portal(ifaces: &[Interface], ip: IpAddr) -> Option<Check> {
    if ip.is_unspecified() {
        return None;
    }
    Some(match ifaces.iter().find(|i| i.addresses.contains(&ip)) {
        Some(i) if i.up => Check::ok(
            Area::Interface,
            format!("iscsi.portals: {ip} is on {}", i.name),
        ),
        Some(i) => Check::fail(
            Area::Interface,
            format!("iscsi.portals: {ip} is on {}, which is down", i.name),
            format!("ip link set {} up", i.name),
        ),
        None => Check::fail(
            Area::Interface,
            format!("iscsi.portals: no interface has {ip}"),
            format!("ip addr add {ip}/<prefix> dev <interface>, or change iscsi.portals"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{clock::Synced, Status};
    use super::*;

    #[test]
    fn a_floating_portals_interface_needs_an_address_of_its_own_and_root() {
        let d = tempfile::tempdir().unwrap();
        let iface = |addrs: &[&str]| Interface {
            name: "eth0".into(),
            up: true,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let (dm, clock) = (
            FakeDm(None),
            FakeClock {
                synced: Synced::Yes,
                now: 0,
            },
        );
        let yaml = "images:\n  w:\n    storage: rbd\n    rbd: golden-w@v1\nceph:\n  pool: lab\ngateways:\n  - name: gw-a\n    iscsi: 10.0.0.101\n    interface: eth0\n  - name: gw-b\n    iscsi: 10.0.0.102\n    interface: eth0\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [0.0.0.0]\n  acl: open\nbackend: userspace\ndefaults:\n  image: w\n  cow_size: 2GiB\npcs:\n  - name: pc-1\n";
        let m = manifest(d.path(), yaml).as_gateway("gw-a").unwrap();
        let statuses = |net: &FakeNet, root: bool| -> Vec<(Status, String)> {
            let h = host(d.path(), net, &dm, &clock);
            floating(&m, &h, &net.0, root)
                .into_iter()
                .map(|c| (c.status, c.says))
                .collect()
        };
        let good = FakeNet(vec![iface(&["10.0.0.11", "10.0.0.101"])]);
        assert!(
            statuses(&good, true).iter().all(|(s, _)| *s == Status::Ok),
            "{:?}",
            statuses(&good, true)
        );
        let only_portal = FakeNet(vec![iface(&["10.0.0.101"])]);
        assert!(statuses(&only_portal, true)
            .iter()
            .any(|(s, says)| *s == Status::Warn
                && says.contains("no IPv4 address of this machine's own")));
        let c = statuses(&good, false);
        assert!(
            c.iter()
                .any(|(s, says)| *s == Status::Fail && says.contains("needs root")),
            "{c:?}"
        );
        let missing = FakeNet(vec![]);
        let c = statuses(&missing, true);
        assert!(
            c.iter()
                .any(|(s, says)| *s == Status::Fail && says.contains("eth0 does not exist")),
            "{c:?}"
        );
    }

    #[test]
    fn dnsmasq_loaders_interface_and_chain() {
        let d = tempfile::tempdir().unwrap();
        let net = FakeNet(vec![
            Interface {
                name: "eth1".into(),
                up: true,
                addresses: vec!["10.9.0.1".parse().unwrap()],
            },
            Interface {
                name: "eth2".into(),
                up: false,
                addresses: vec!["10.0.0.1".parse().unwrap()],
            },
        ]);
        let (dm, clock) = (
            FakeDm(None),
            FakeClock {
                synced: Synced::Yes,
                now: 0,
            },
        );
        let h = host(d.path(), &net, &dm, &clock);
        let tftp = d.path().join("tftp");
        std::fs::create_dir_all(&tftp).unwrap();
        std::fs::write(tftp.join(BIOS_LOADER), "x").unwrap();
        let yaml = |iface: &str| {
            format!(
                "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: /c\n  cow_size: 1GiB\n\
                 iscsi:\n  iqn_prefix: iqn.2024-01.lan.t\n  portals: [\"10.0.0.1:3260\", \"0.0.0.0:3261\"]\n  acl: open\n\
                 http:\n  listen: 0.0.0.0:8080\npxe:\n  interface: {iface}\n  only_known: false\n  tftp_root: {}\n\
                 pcs:\n  - name: a\n    export: iscsi\n",
                tftp.display()
            )
        };
        let m = manifest(d.path(), &yaml("eth1"));
        let c = checks(&m, &h);
        let s: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(c.len(), 5, "{s:#?}");
        assert_eq!(
            c[0].fix.as_deref(),
            Some("apt-get install dnsmasq-base"),
            "{}",
            s[0]
        );
        assert!(s[1].contains("has no ipxe.efi"), "{}", s[1]);
        assert_eq!(c[2].status, Status::Ok, "{}", s[2]);
        assert!(s[2].contains("eth1 is up: 10.9.0.1"), "{}", s[2]);
        assert!(s[3].contains("http://10.9.0.1:8080/boot.ipxe"), "{}", s[3]);
        assert!(
            s[4].contains("10.0.0.1 is on eth2, which is down"),
            "{}",
            s[4]
        );
        assert!(s[4].ends_with("ip link set eth2 up"), "{}", s[4]);

        program(&h, "dnsmasq");
        std::fs::write(tftp.join(UEFI_LOADER), "x").unwrap();
        std::fs::create_dir_all(h.sys.join("class/net/eth1")).unwrap();
        std::fs::write(h.sys.join("class/net/eth1/operstate"), "down\n").unwrap();
        let c = checks(&m, &h);
        assert_eq!(c[0].status, Status::Ok);
        assert_eq!(c[1].status, Status::Ok);
        assert_eq!(c[2].status, Status::Warn, "no carrier: {}", c[2]);

        let m = manifest(d.path(), &yaml("eth7"));
        let c = checks(&m, &h);
        assert!(
            c[2].says
                .contains("eth7 does not exist (this machine has eth1, eth2)"),
            "{}",
            c[2]
        );
        assert_eq!(c[3].status, Status::Fail);
    }
}
