//! The manifest as written: serde structs that reject unknown fields. Per-PC fields are
//! strings (or numbers) until ranges are expanded.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    /// One file: the image never changes under cowctl.
    pub path: Option<PathBuf>,
    /// A directory of versions (`cowctl image`): PCs move between them at their resets.
    pub versions: Option<PathBuf>,
    pub version: Option<String>,
    /// `cow` (dm-snapshot COW files, the default) or `reflink` (clones of the disk).
    pub storage: Option<String>,
    /// `storage: rbd`: the image's protected snapshot in the ceph section's pool.
    pub rbd: Option<String>,
}

/// A field that may hold a range: a string or a plain number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Str(String),
    Int(u64),
}

impl Text {
    pub fn as_string(&self) -> String {
        match self {
            Text::Str(s) => s.clone(),
            Text::Int(n) => n.to_string(),
        }
    }
}

/// Fields of a PC; also the `defaults` every PC starts from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPc {
    pub name: Option<Text>,
    pub image: Option<Text>,
    /// The COW file; default `<cow_dir>/<name>.cow`.
    pub cow: Option<Text>,
    pub cow_dir: Option<Text>,
    pub cow_size: Option<Text>,
    pub chunk: Option<Text>,
    /// `P` or `PO`.
    pub overflow: Option<Text>,
    /// `iscsi` or `aoe`.
    pub export: Option<Text>,
    pub mac: Option<Text>,
    pub ip: Option<Text>,
    /// The PC's iSCSI initiator name, for its ACL.
    pub initiator: Option<Text>,
    pub shelf: Option<Text>,
    pub slot: Option<Text>,
    /// MACs allowed to reach an AoE export; default: the PC's `mac`.
    pub aoe_macs: Option<Vec<Text>>,
    /// Serve the disk read-only (the COW is never written).
    pub read_only: Option<bool>,
    /// Keep the COW across `reset --all`, reset on boot and HTTP resets (a maintenance PC).
    pub keep: Option<bool>,
    /// Reset the COW when the PC fetches its iPXE boot script.
    pub reset_on_boot: Option<bool>,
    /// The PC may reset its own disk over HTTP, from its own `ip`.
    pub self_reset: Option<bool>,
    pub autoextend: Option<RawAutoExtend>,
    /// The PC's host name (default: its name), for DHCP and `/identity`.
    pub hostname: Option<Text>,
    /// More key/values the PC reads at `/identity` (and iPXE as variables).
    pub identity: Option<BTreeMap<String, Text>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoExtend {
    /// Grow when the COW is this full (percent).
    pub threshold: Option<f64>,
    /// Grow by this percentage of the current size.
    pub step: Option<f64>,
    /// Never beyond this size.
    pub max: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<Text>,
    pub admin_listen: Option<Text>,
    pub token_file: Option<PathBuf>,
    pub server: Option<Text>,
    /// Host names the service answers to besides IP addresses and this machine's name.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIscsi {
    pub iqn_prefix: String,
    #[serde(default)]
    pub portals: Vec<String>,
    /// `initiator` (an ACL per PC) or `open`.
    pub acl: Option<String>,
    pub chap: Option<RawChap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChap {
    pub username: String,
    /// The master secret each PC's secret is derived from.
    pub secret_file: PathBuf,
    /// Mutual CHAP: the target proves itself with a secret derived from this one.
    pub mutual_secret_file: Option<PathBuf>,
    pub mutual_username: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAoe {
    pub interface: String,
}

/// The PXE bootstrap cowctl supervises (dnsmasq).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPxe {
    pub interface: String,
    /// `proxy` (beside the LAN's DHCP server) or a range `FIRST-LAST` to lease from.
    pub dhcp: Option<String>,
    /// Answer only the manifest's MACs (default true).
    pub only_known: Option<bool>,
    pub tftp_root: Option<PathBuf>,
    /// Where Wake-on-LAN packets go (default 255.255.255.255).
    pub wake_broadcast: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNbd {
    pub listen: Option<Text>,
    pub socket: Option<PathBuf>,
    /// `open` or `ip`.
    pub acl: Option<String>,
}

pub type RawImages = BTreeMap<String, RawImage>;
