//! dnsmasq's configuration for a room, made from the manifest alone (so the same manifest
//! always gives the same text, and apply can tell whether the running dnsmasq is current).
//!
//! A PC's PXE ROM asks for DHCP; dnsmasq answers with iPXE to load by TFTP (`undionly.kpxe`
//! for a BIOS, `ipxe.efi` for UEFI). iPXE asks again, saying it is iPXE (user class `iPXE`,
//! option 175), and gets `http://<server>:<port>/boot.ipxe` instead, so nothing loops.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::manifest::{DhcpMode, Pc, PxeConfig};

/// Where iPXE fetches its script: the HTTP service as the PCs reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub server: Ipv4Addr,
    pub port: u16,
}

impl Chain {
    pub fn url(&self) -> String {
        format!("http://{}:{}/boot.ipxe", self.server, self.port)
    }
}

pub const BIOS_LOADER: &str = "undionly.kpxe";
pub const UEFI_LOADER: &str = "ipxe.efi";

/// A value that would have split dnsmasq's configuration into lines of its own choosing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} ({value}) holds a control character, which would start a line of its own in dnsmasq's configuration: it is not written")]
pub struct UnsafeValue {
    /// The manifest field (or file) the value came from.
    pub field: String,
    /// The value with its control characters written out.
    pub value: String,
}

/// `value` when it is one line's worth of text.
fn one_line(field: &str, value: String) -> Result<String, UnsafeValue> {
    match crate::base::logtext::first_control(&value) {
        None => Ok(value),
        Some(_) => Err(UnsafeValue {
            field: field.to_string(),
            value: crate::base::logtext::Escaped(&value).to_string(),
        }),
    }
}

/// dnsmasq's files in the run directory: its lease file (DHCP mode) and the log of its DHCP
/// traffic, with time stamps (what `cowctl pcs discovered` reads).
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub leases: &'a Path,
    pub log: &'a Path,
}

/// The whole configuration file. Every value from outside is checked to be one line (the
/// manifest refuses such values already).
pub fn render(
    pxe: &PxeConfig,
    chain: &Chain,
    pcs: &[Pc],
    manifest: &Path,
    files: Files,
) -> Result<String, UnsafeValue> {
    let interface = one_line("pxe.interface", pxe.interface.clone())?;
    let tftp_root = one_line("pxe.tftp_root", pxe.tftp_root.display().to_string())?;
    let manifest = one_line("the manifest's path", manifest.display().to_string())?;
    let leases = one_line("the lease file's path", files.leases.display().to_string())?;
    let log = one_line("the log file's path", files.log.display().to_string())?;
    let mut c = String::new();
    let mut line = |s: String| {
        c.push_str(&s);
        c.push('\n');
    };
    line(format!(
        "# Written by cowctl apply from {manifest}: edit the manifest, not this file."
    ));
    line("port=0".into()); // no DNS: only DHCP and TFTP
    line(format!("interface={interface}"));
    line("bind-interfaces".into());
    line("pid-file=".into()); // cowctl keeps the pid; do not touch the system's dnsmasq's
    line("log-dhcp".into());
    // A file of its own, so each line has dnsmasq's time stamp; unknown MACs' requests
    // ("ignored") stay there for `cowctl pcs discovered`.
    line(format!("log-facility={log}"));
    line("enable-tftp".into());
    line(format!("tftp-root={tftp_root}"));
    line("dhcp-userclass=set:ipxe,iPXE".into());
    line("dhcp-match=set:ipxe,175".into());
    line("dhcp-match=set:efi,option:client-arch,7".into());
    line("dhcp-match=set:efi,option:client-arch,9".into());
    let url = chain.url();
    match &pxe.dhcp {
        DhcpMode::Proxy => {
            // Beside the LAN's DHCP server: boot information only, through the PXE menu
            // that proxy mode answers with (one entry, so no prompt).
            line(format!("dhcp-range={},proxy", chain.server));
            line(format!(
                "pxe-service=tag:!ipxe,x86PC,\"cowctl: loading iPXE\",{BIOS_LOADER}"
            ));
            line(format!(
                "pxe-service=tag:!ipxe,X86-64_EFI,\"cowctl: loading iPXE\",{UEFI_LOADER}"
            ));
            line(format!("dhcp-boot=tag:ipxe,{url}"));
            line(format!("pxe-service=tag:ipxe,x86PC,\"cowctl\",{url}"));
            line(format!("pxe-service=tag:ipxe,X86-64_EFI,\"cowctl\",{url}"));
        }
        DhcpMode::Range { first, last } => {
            line(format!("dhcp-range={first},{last},12h"));
            line(format!("dhcp-leasefile={leases}"));
            line("dhcp-authoritative".into());
            line(format!("dhcp-boot=tag:!ipxe,tag:!efi,{BIOS_LOADER}"));
            line(format!("dhcp-boot=tag:!ipxe,tag:efi,{UEFI_LOADER}"));
            line(format!("dhcp-boot=tag:ipxe,{url}"));
        }
    }
    for pc in pcs {
        let Some(mac) = pc.mac else { continue };
        let mut host = format!("dhcp-host={mac}");
        if let (DhcpMode::Range { .. }, Some(ip)) = (&pxe.dhcp, pc.ip) {
            let _ = write!(host, ",{ip}");
        }
        if matches!(pxe.dhcp, DhcpMode::Range { .. }) {
            let field = format!("{}'s hostname", pc.name);
            let _ = write!(host, ",{}", one_line(&field, pc.hostname.clone())?);
        }
        line(host);
    }
    if pxe.only_known {
        line("dhcp-ignore=tag:!known".into());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pxe(dhcp: DhcpMode, only_known: bool) -> PxeConfig {
        PxeConfig {
            interface: "eth1".into(),
            dhcp,
            only_known,
            tftp_root: "/usr/lib/ipxe".into(),
            wake_broadcast: Ipv4Addr::BROADCAST,
        }
    }

    fn pcs() -> Vec<Pc> {
        let m = crate::manifest::Manifest::parse(
            Path::new("/m.yaml"),
            "images:\n  g:\n    path: /srv/g.img\ndefaults:\n  image: g\n  cow_dir: /srv/cow\n  cow_size: 1GiB\n  export: nbd\n\
             pcs:\n  - name: pc-01\n    mac: 52:54:00:00:00:01\n    ip: 10.9.0.11\n    hostname: lab-a1\n  - name: pc-02\n    mac: 52:54:00:00:00:02\n  - name: pc-03\n",
        )
        .unwrap();
        m.pcs
    }

    fn files() -> Files<'static> {
        Files {
            leases: Path::new("/l"),
            log: Path::new("/d.log"),
        }
    }

    const CHAIN: Chain = Chain {
        server: Ipv4Addr::new(10, 9, 0, 1),
        port: 8080,
    };

    #[test]
    fn a_dhcp_room_leases_fixed_addresses_and_names_and_ignores_strangers() {
        let text = render(
            &pxe(
                DhcpMode::Range {
                    first: Ipv4Addr::new(10, 9, 0, 100),
                    last: Ipv4Addr::new(10, 9, 0, 199),
                },
                true,
            ),
            &CHAIN,
            &pcs(),
            Path::new("/etc/cowctl/cowctl.yaml"),
            Files {
                leases: Path::new("/run/cowctl/pxe/dnsmasq.leases"),
                log: Path::new("/run/cowctl/pxe/dhcp.log"),
            },
        )
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "interface=eth1",
            "dhcp-range=10.9.0.100,10.9.0.199,12h",
            "dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe",
            "dhcp-boot=tag:!ipxe,tag:efi,ipxe.efi",
            "dhcp-boot=tag:ipxe,http://10.9.0.1:8080/boot.ipxe",
            "dhcp-host=52:54:00:00:00:01,10.9.0.11,lab-a1",
            "dhcp-host=52:54:00:00:00:02,pc-02",
            "dhcp-ignore=tag:!known",
            "tftp-root=/usr/lib/ipxe",
            "log-dhcp",
            "log-facility=/run/cowctl/pxe/dhcp.log",
        ] {
            assert!(lines.contains(&want), "{want} missing from\n{text}");
        }
        assert!(!text.contains("proxy"));
        assert_eq!(text.matches("dhcp-host=").count(), 2, "pc-03 has no MAC");
    }

    #[test]
    fn a_proxy_room_gives_boot_information_only() {
        let text = render(
            &pxe(DhcpMode::Proxy, false),
            &CHAIN,
            &pcs(),
            Path::new("/m.yaml"),
            files(),
        )
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"dhcp-range=10.9.0.1,proxy"));
        assert!(
            lines.contains(&"pxe-service=tag:!ipxe,x86PC,\"cowctl: loading iPXE\",undionly.kpxe")
        );
        assert!(lines.contains(&"dhcp-host=52:54:00:00:00:01"), "{text}");
        assert!(!text.contains("dhcp-ignore"));
        assert!(!text.contains("dhcp-leasefile"));
    }

    #[test]
    fn a_value_with_a_control_character_is_refused_not_written() {
        let mut p = pxe(DhcpMode::Proxy, true);
        p.interface = "eth1\ndhcp-script=/tmp/x".into();
        let e = render(&p, &CHAIN, &pcs(), Path::new("/m"), files()).unwrap_err();
        assert_eq!(e.field, "pxe.interface");
        assert!(e.to_string().contains("eth1\\ndhcp-script"), "{e}");
        let mut p = pxe(DhcpMode::Proxy, true);
        p.tftp_root = "/srv/tftp\rdhcp-script=/tmp/x".into();
        let e = render(&p, &CHAIN, &pcs(), Path::new("/m"), files()).unwrap_err();
        assert_eq!(e.field, "pxe.tftp_root");
        let mut pcs = pcs();
        pcs[1].hostname = "pc\x7f".into();
        let range = DhcpMode::Range {
            first: Ipv4Addr::new(10, 9, 0, 100),
            last: Ipv4Addr::new(10, 9, 0, 199),
        };
        let e = render(&pxe(range, true), &CHAIN, &pcs, Path::new("/m"), files());
        assert_eq!(e.unwrap_err().field, "pc-02's hostname");
        let e = render(
            &pxe(DhcpMode::Proxy, true),
            &CHAIN,
            &[],
            Path::new("/m\n"),
            files(),
        );
        assert_eq!(e.unwrap_err().field, "the manifest's path");
    }
}
