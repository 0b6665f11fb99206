//! PCs seen PXE-booting: read back from dnsmasq's own DHCP log (`log-dhcp`, written by
//! dnsmasq to `<run dir>/pxe/dhcp.log` with its time stamps). The log is the record, so
//! cowctl keeps no state file of its own: a MAC is "discovered" while its requests are in
//! the log, and the manifest's MACs are left out by the caller.
//!
//! A request line looks like
//! `Dec  4 23:29:01 dnsmasq-dhcp[2834]: 2464920356 DHCPDISCOVER(eth1) 52:54:00:c0:ee:99 ignored`;
//! the lines before it with the same transaction id say the PXE ROM's vendor class
//! (`vendor class: PXEClient:Arch:00000:UNDI:002001`), whose `Arch` is the firmware.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::base::netaddr::Mac;

/// The file dnsmasq logs its DHCP traffic to, in the PXE run directory.
pub const LOG_NAME: &str = "dhcp.log";

/// The firmware a PXE ROM says it runs on (DHCP option 93, in its vendor class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Firmware {
    #[serde(rename = "BIOS")]
    Bios,
    #[serde(rename = "UEFI")]
    Uefi,
    /// Another architecture number.
    #[serde(rename = "other")]
    Other(u16),
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Firmware::Bios => f.write_str("BIOS"),
            Firmware::Uefi => f.write_str("UEFI"),
            Firmware::Other(n) => write!(f, "arch {n}"),
        }
    }
}

/// One MAC's requests in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub mac: Mac,
    /// dnsmasq's time stamp of its first and last request (local time, no year), if the log
    /// has time stamps.
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// The interface the requests came in on.
    pub interface: String,
    /// From the PXE ROM's vendor class, when it sent one.
    pub firmware: Option<Firmware>,
    pub requests: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read dnsmasq's DHCP log {}: {source}", path.display())]
pub struct SeenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The DHCP log of the room's dnsmasq.
pub fn log_path(run_dir: &Path) -> PathBuf {
    run_dir.join("pxe").join(LOG_NAME)
}

/// Every MAC with requests in the log at `path`, in the order first seen; none when there
/// is no log yet.
pub fn read(path: &Path) -> Result<Vec<Seen>, SeenError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SeenError {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A line's parts: its time stamp, transaction id and message.
fn split(line: &str) -> Option<(Option<&str>, &str, &str)> {
    let at = line.find("dnsmasq-dhcp")?;
    let stamp = line[..at].trim();
    let rest = &line[at..];
    let rest = rest[rest.find(": ")? + 2..].trim_start();
    let (xid, message) = rest.split_once(' ')?;
    if xid.is_empty() || !xid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        (!stamp.is_empty()).then_some(stamp),
        xid,
        message.trim_end(),
    ))
}

/// A client's request: `DHCPDISCOVER(eth1) [addr] mac …` or `PXE(eth1) [addr] mac …`.
fn request(message: &str) -> Option<(&str, Mac)> {
    let (kind, rest) = message.split_once('(')?;
    if !matches!(
        kind,
        "DHCPDISCOVER" | "DHCPREQUEST" | "DHCPINFORM" | "PXE" | "BOOTP"
    ) {
        return None;
    }
    let (interface, rest) = rest.split_once(')')?;
    let mac = rest
        .split_whitespace()
        .take(2)
        .find_map(|w| w.parse::<Mac>().ok())?;
    Some((interface, mac))
}

/// `PXEClient:Arch:00007:UNDI:003016` → the architecture's firmware.
fn firmware(message: &str) -> Option<Firmware> {
    let class = message.strip_prefix("vendor class: ")?;
    let arch = class.strip_prefix("PXEClient:Arch:")?.get(..5)?;
    Some(match arch.parse::<u16>().ok()? {
        0 => Firmware::Bios,
        6 | 7 | 9 | 10 | 11 => Firmware::Uefi,
        n => Firmware::Other(n),
    })
}

/// The MACs of a log's text (see the module's comment), in the order first seen.
pub fn parse(text: &str) -> Vec<Seen> {
    let mut order: Vec<Mac> = Vec::new();
    let mut by_mac: HashMap<Mac, Seen> = HashMap::new();
    let mut arch_of: BTreeMap<String, Firmware> = BTreeMap::new();
    for line in text.lines() {
        let Some((stamp, xid, message)) = split(line) else {
            continue;
        };
        if let Some(fw) = firmware(message) {
            arch_of.insert(xid.to_string(), fw);
            continue;
        }
        let Some((interface, mac)) = request(message) else {
            continue;
        };
        let fw = arch_of.get(xid).copied();
        let seen = by_mac.entry(mac).or_insert_with(|| {
            order.push(mac);
            Seen {
                mac,
                first_seen: stamp.map(str::to_string),
                last_seen: None,
                interface: interface.to_string(),
                firmware: None,
                requests: 0,
            }
        });
        seen.requests += 1;
        seen.last_seen = stamp.map(str::to_string);
        seen.interface = interface.to_string();
        // The PXE ROM's own class wins over iPXE's later ones (the same arch anyway).
        seen.firmware = seen.firmware.or(fw);
    }
    order
        .into_iter()
        .filter_map(|m| by_mac.remove(&m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real dnsmasq 2.90 log (tests/qemu_pxe_boot.rs's adoption test, without its option
    /// lines): qemu's iPXE ROM asks as a stranger and is ignored; then, adopted as pc-31 and
    /// dnsmasq restarted by apply, it is answered.
    const LOG: &str = "\
Dec  4 23:45:21 dnsmasq[27563]: started, version 2.90 DNS disabled
Dec  4 23:45:21 dnsmasq-dhcp[27563]: DHCP, IP range 10.167.87.100 -- 10.167.87.150, lease time 12h
Dec  4 23:45:21 dnsmasq-dhcp[27563]: DHCP, sockets bound exclusively to interface cwp2754717
Dec  4 23:45:21 dnsmasq-tftp[27563]: TFTP root is /usr/lib/ipxe  
Dec  4 23:45:23 dnsmasq-dhcp[27563]: 955772767 available DHCP range: 10.167.87.100 -- 10.167.87.150
Dec  4 23:45:23 dnsmasq-dhcp[27563]: 955772767 vendor class: PXEClient:Arch:00000:UNDI:002001
Dec  4 23:45:23 dnsmasq-dhcp[27563]: 955772767 user class: iPXE
Dec  4 23:45:23 dnsmasq-dhcp[27563]: 955772767 DHCPDISCOVER(cwp2754717) 52:54:00:c0:ee:31 ignored
Dec  4 23:45:24 dnsmasq[27563]: exiting on receipt of SIGTERM
Dec  4 23:45:24 dnsmasq[27577]: started, version 2.90 DNS disabled
Dec  4 23:45:24 dnsmasq-dhcp[27577]: DHCP, IP range 10.167.87.100 -- 10.167.87.150, lease time 12h
Dec  4 23:45:24 dnsmasq-dhcp[27577]: DHCP, sockets bound exclusively to interface cwp2754717
Dec  4 23:45:24 dnsmasq-tftp[27577]: TFTP root is /usr/lib/ipxe  
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 available DHCP range: 10.167.87.100 -- 10.167.87.150
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 vendor class: PXEClient:Arch:00000:UNDI:002001
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 user class: iPXE
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 DHCPDISCOVER(cwp2754717) 52:54:00:c0:ee:31 
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 tags: known, ipxe, cwp2754717
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 DHCPOFFER(cwp2754717) 10.167.87.100 52:54:00:c0:ee:31 
Dec  4 23:45:26 dnsmasq-dhcp[27577]: 609176867 next server: 10.167.87.1
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 available DHCP range: 10.167.87.100 -- 10.167.87.150
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 vendor class: PXEClient:Arch:00000:UNDI:002001
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 user class: iPXE
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 DHCPDISCOVER(cwp2754717) 52:54:00:c0:ee:31 
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 tags: known, ipxe, cwp2754717
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 DHCPOFFER(cwp2754717) 10.167.87.100 52:54:00:c0:ee:31 
Dec  4 23:45:27 dnsmasq-dhcp[27577]: 609176867 next server: 10.167.87.1
Dec  4 23:45:29 dnsmasq-dhcp[27577]: 609176867 available DHCP range: 10.167.87.100 -- 10.167.87.150
Dec  4 23:45:29 dnsmasq-dhcp[27577]: 609176867 vendor class: PXEClient:Arch:00000:UNDI:002001
Dec  4 23:45:29 dnsmasq-dhcp[27577]: 609176867 user class: iPXE
Dec  4 23:45:29 dnsmasq-dhcp[27577]: 609176867 DHCPREQUEST(cwp2754717) 10.167.87.100 52:54:00:c0:ee:31 
Dec  4 23:45:29 dnsmasq-dhcp[27577]: 609176867 tags: known, ipxe, cwp2754717
Dec  4 23:45:29 dnsmasq-dhcp[27577]: 609176867 DHCPACK(cwp2754717) 10.167.87.100 52:54:00:c0:ee:31 pc-31
";

    #[test]
    fn requests_are_gathered_by_mac_with_when_where_and_firmware() {
        let seen = parse(LOG);
        assert_eq!(seen.len(), 1, "{seen:?}");
        let s = &seen[0];
        assert_eq!(s.mac.to_string(), "52:54:00:c0:ee:31");
        assert_eq!(s.first_seen.as_deref(), Some("Dec  4 23:45:23"));
        assert_eq!(s.last_seen.as_deref(), Some("Dec  4 23:45:29"));
        assert_eq!(s.interface, "cwp2754717");
        assert_eq!(s.firmware, Some(Firmware::Bios));
        assert_eq!(
            s.requests, 4,
            "3 discovers and a request; offers and acks are dnsmasq's"
        );
        // A UEFI ROM's class (a line made like the ones above).
        let uefi = LOG.replace("Arch:00000:UNDI:002001", "Arch:00007:UNDI:003016");
        assert_eq!(parse(&uefi)[0].firmware, Some(Firmware::Uefi));
    }

    #[test]
    fn a_log_on_stderr_has_no_time_stamps_and_a_proxy_logs_pxe_requests() {
        let seen = parse(
            "dnsmasq-dhcp[28348]: 2464920356 vendor class: PXEClient:Arch:00000:UNDI:002001\n\
             dnsmasq-dhcp[28348]: 2464920356 DHCPDISCOVER(cowdemo0) 52:54:00:de:00:01 \n\
             dnsmasq-dhcp[28348]: 7 PXE(br0) 10.0.0.5 52:54:00:de:00:02 proxy\n\
             dnsmasq-dhcp[28348]: x DHCPDISCOVER(br0) 52:54:00:de:00:03 \n\
             garbage\n",
        );
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].first_seen, None);
        assert_eq!(seen[0].firmware, Some(Firmware::Bios));
        assert_eq!(seen[1].mac.to_string(), "52:54:00:de:00:02");
        assert_eq!(seen[1].interface, "br0");
        assert_eq!(seen[1].firmware, None);
    }

    #[test]
    fn no_log_yet_is_nothing_seen() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("none.log")).unwrap().is_empty());
    }
}
