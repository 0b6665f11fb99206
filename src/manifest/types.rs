//! The manifest after validation: typed, with ranges expanded and defaults applied.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Serialize;

use crate::base::iqn::Iqn;
pub use crate::base::netaddr::{Mac, Portal};
use crate::base::units::ByteSize;
use crate::dm::StoreMode;
pub use crate::manifest::secrets::Chap;

#[derive(Debug, Clone, Serialize)]
pub struct Image {
    /// The key PCs name it by: the manifest's name, or `name@version` for one version of a
    /// versioned image (see `crate::image::resolve`).
    pub name: String,
    /// The disk; for a versioned image not yet resolved, its directory of versions.
    pub path: PathBuf,
    pub version: Option<String>,
    /// The directory of versions, for a versioned image.
    pub store: Option<PathBuf>,
    /// The image's name in the manifest.
    pub family: String,
    /// How its PCs' disks are kept.
    pub storage: Storage,
    /// `storage: rbd`: the snapshot its PCs' clones are made from (for a family of versions,
    /// the version's; none before `crate::image::resolve`).
    pub rbd: Option<super::RbdSnapshot>,
    /// `storage: rbd` with versions (`rbd: NAME`): the name their images start with,
    /// `NAME.<version>`, each with its protected snapshot `<version>`.
    pub rbd_versions: Option<String>,
}

/// How the PCs of an image keep their writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// A COW file in dm-snapshot's persistent format over the golden image (both backends).
    #[default]
    Cow,
    /// A clone (FICLONE) of the image's disk on btrfs or xfs: a plain disk file whose
    /// blocks the file system shares with the image until the PC writes them.
    Reflink,
    /// A clone of the image's protected snapshot in a Ceph pool (`ceph` section).
    Rbd,
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::Cow => "cow",
            Storage::Reflink => "reflink",
            Storage::Rbd => "rbd",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Pc {
    pub name: String,
    /// Key into `Manifest::images`.
    pub image: String,
    pub cow: PathBuf,
    pub cow_size: ByteSize,
    pub chunk: ByteSize,
    pub overflow: StoreMode,
    pub export: Export,
    pub mac: Option<Mac>,
    pub ip: Option<IpAddr>,
    pub read_only: bool,
    /// Only a reset that names it returns it to the golden image (a maintenance PC).
    pub keep: bool,
    pub reset_on_boot: bool,
    pub self_reset: bool,
    pub autoextend: Option<AutoExtend>,
    /// Its own name although all PCs share one image: for DHCP, `/identity`, `/boot.ipxe`.
    pub hostname: String,
    /// More key/values for `/identity` (names: letters, digits, `_` and `-`).
    pub identity: std::collections::BTreeMap<String, String>,
}

/// Grow a PC's COW before it fills, as LVM's snapshot autoextend does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AutoExtend {
    /// Grow when the COW is at least this full (percent).
    pub threshold: f64,
    /// Grow by this percentage of the current size.
    pub step: f64,
    /// Never grow beyond this size.
    pub max: ByteSize,
}

impl AutoExtend {
    /// The size to grow a COW of `current` bytes to (a whole number of chunks, at most
    /// `max`), or None when it is at the maximum already.
    pub fn next_size(&self, current: u64, chunk: u64) -> Option<u64> {
        self.grow_policy().next_size(current, chunk)
    }

    /// The engine's part: grow a full COW at once rather than overflow.
    pub fn grow_policy(&self) -> crate::engine::GrowPolicy {
        crate::engine::GrowPolicy {
            step_percent: self.step,
            max_bytes: self.max.bytes(),
        }
    }
}

/// How PCs get their address and the boot file while dnsmasq answers their PXE requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DhcpMode {
    /// Beside the LAN's DHCP server, which keeps giving the addresses: boot information only.
    Proxy,
    /// cowctl's dnsmasq is the DHCP server of an isolated room network, leasing from this
    /// range (a PC with an `ip` gets that one).
    Range {
        first: std::net::Ipv4Addr,
        last: std::net::Ipv4Addr,
    },
}

/// The PXE bootstrap: a supervised dnsmasq on `interface` that hands PXE ROMs iPXE by TFTP
/// and chains iPXE to `/boot.ipxe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PxeConfig {
    pub interface: String,
    pub dhcp: DhcpMode,
    /// Only the manifest's MACs get answers.
    pub only_known: bool,
    /// Where `undionly.kpxe` and `ipxe.efi` are (Debian's `ipxe` package).
    pub tftp_root: PathBuf,
    /// Where Wake-on-LAN magic packets are sent.
    pub wake_broadcast: std::net::Ipv4Addr,
}

/// The HTTP service of `cowctl serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpConfig {
    /// What PCs use: `/cow`, `/boot.ipxe`, a PC's own reset.
    pub listen: SocketAddr,
    /// Everything, for admins: the dashboard, the API, metrics, resets with the token.
    pub admin_listen: SocketAddr,
    /// The admin bearer token lives in this file; without it no admin reset is accepted.
    pub token_file: Option<PathBuf>,
    /// The address PCs reach the iSCSI portal at, for boot scripts whose portal listens on
    /// every address; default: the address the PC reached the HTTP service at.
    pub server: Option<IpAddr>,
    /// Host names requests may carry besides IP addresses, `localhost` and this machine's
    /// name (anything else is refused: DNS rebinding).
    pub hosts: Vec<String>,
}

impl HttpConfig {
    /// Other machines can reach the admin routes: then every one of them needs the token.
    pub fn admin_is_remote(&self) -> bool {
        !self.admin_listen.ip().is_loopback()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token_file: None,
            server: None,
            hosts: Vec::new(),
        }
    }
}

impl Pc {
    pub fn chunk_sectors(&self) -> u32 {
        u32::try_from(self.chunk.sectors()).expect("validated chunk sizes fit")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Export {
    Iscsi {
        target: Iqn,
        initiator: Option<Iqn>,
    },
    Aoe {
        shelf: u16,
        slot: u8,
        macs: Vec<Mac>,
    },
    /// Only the userspace backend's NBD server (which serves every PC, whatever its export).
    Nbd,
}

impl fmt::Display for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Export::Iscsi { target, .. } => write!(f, "{target}"),
            Export::Aoe { shelf, slot, .. } => write!(f, "e{shelf}.{slot}"),
            Export::Nbd => write!(f, "nbd"),
        }
    }
}

/// Who serves the PCs' disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The kernel when it has device-mapper's snapshot target, else the userspace engine.
    Auto,
    /// loop + dm-snapshot + LIO / vblade.
    Kernel,
    /// cowctl's own engine, served over NBD by `cowctl serve`.
    Userspace,
}

/// The userspace backend's NBD server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NbdConfig {
    /// TCP address; the default is loopback on port 10809 (NBD's IANA port): NBD has no
    /// authentication, so it reaches the LAN only when the manifest says so.
    pub listen: SocketAddr,
    /// Unix socket; the default is `nbd.sock` in cowctl's run directory.
    pub socket: Option<PathBuf>,
    pub acl: NbdAcl,
}

/// Who may open a PC's export over TCP (the unix socket is root's only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NbdAcl {
    /// Any client.
    Open,
    /// Any client, on an address the LAN reaches, beside iSCSI's CHAP or ACLs: the admin's
    /// explicit acceptance that NBD opens every PC's disk to anyone (`open_to_lan`).
    OpenToLan,
    /// Only the PC's own `ip`; to others the export does not exist.
    Ip,
}

impl NbdAcl {
    /// Every client may open every export.
    pub fn is_open(self) -> bool {
        matches!(self, NbdAcl::Open | NbdAcl::OpenToLan)
    }
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 10809)),
            socket: None,
            acl: NbdAcl::Open,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AclMode {
    /// One ACL per PC's initiator IQN; other initiators are refused.
    PerInitiator,
    /// Any initiator may log in (LIO demo mode).
    Open,
}

#[derive(Debug, Clone, Serialize)]
pub struct IscsiConfig {
    pub iqn_prefix: String,
    pub portals: Vec<Portal>,
    pub acl: AclMode,
    pub chap: Option<Chap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AoeConfig {
    pub interface: String,
}

/// PC names become dm names, configfs directories and file names: keep them plain.
pub fn valid_pc_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoextend_steps_in_whole_chunks_up_to_the_maximum() {
        let a = AutoExtend {
            threshold: 70.0,
            step: 50.0,
            max: ByteSize(16 << 20),
        };
        let chunk = 4096;
        assert_eq!(a.next_size(4 << 20, chunk), Some(6 << 20));
        assert_eq!(a.next_size(12 << 20, chunk), Some(16 << 20), "capped");
        assert_eq!(a.next_size(16 << 20, chunk), None, "at the maximum");
        assert_eq!(
            a.next_size(20 << 20, chunk),
            None,
            "past it (grown by hand)"
        );
        let tiny = AutoExtend { step: 1.0, ..a };
        assert_eq!(
            tiny.next_size(64 << 10, chunk),
            Some((64 << 10) + chunk),
            "at least a chunk"
        );
        let odd = AutoExtend {
            max: ByteSize((16 << 20) + 100),
            ..a
        };
        assert_eq!(
            odd.next_size(12 << 20, chunk),
            Some(16 << 20),
            "whole chunks only"
        );
    }
}
