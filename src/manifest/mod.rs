//! The declarative manifest: images, PCs, exports. `Manifest::load` reads and validates it,
//! reporting every error at once, each as `file:line:column: field: message`; resolving
//! versioned images to versions is `image::load_manifest`'s, one layer up.
//!
//! This file: the model's root, and the Builder the other files each add a part of the
//! checking to (reading in `load.rs`, the sections in `sections.rs`, PCs in `pc.rs`).

pub mod adopt;
mod ceph;
mod error;
mod expand;
mod exports;
mod gateways;
mod load;
mod owned;
mod pc;
mod positions;
mod pxe;
mod raw;
pub mod secrets;
mod sections;
mod types;
mod warnings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::Value;

pub use ceph::{CephConfig, RbdSnapshot};
pub use error::{ManifestError, ManifestErrors, ManifestWarning};
pub use gateways::Gateway;
pub use owned::{PROMOTION_RECORD, VERSION_DISK, VERSION_RECORD};
use positions::Positions;
pub use types::{
    AclMode, AoeConfig, AutoExtend, Backend, Chap, DhcpMode, Export, HttpConfig, Image,
    IscsiConfig, Mac, NbdAcl, NbdConfig, Pc, Portal, PxeConfig, Storage,
};

pub const DEFAULT_PATH: &str = "/etc/cowctl/cowctl.yaml";

#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub images: BTreeMap<String, Image>,
    pub pcs: Vec<Pc>,
    pub iscsi: Option<IscsiConfig>,
    pub aoe: Option<AoeConfig>,
    /// Warn when a PC's COW is this full (percent).
    pub warn_percent: f64,
    pub backend: Backend,
    pub nbd: NbdConfig,
    /// `cowctl serve`'s HTTP service; none without an `http` section.
    pub http: Option<HttpConfig>,
    /// The supervised dnsmasq that boots PCs into `/boot.ipxe`; none without a `pxe` section.
    pub pxe: Option<PxeConfig>,
    /// The Ceph cluster of `storage: rbd` images; none without a `ceph` section.
    pub ceph: Option<CephConfig>,
    /// Several `cowctl serve` in front of the ceph section's cluster; none without a
    /// `gateways` section.
    pub gateways: Vec<Gateway>,
    /// The gateway this manifest is served by (`as_gateway`).
    pub here: Option<String>,
    /// What is valid but risky, each with where it is (see `warnings.rs`).
    pub warnings: Vec<ManifestWarning>,
}

/// The manifest path: `-f`, else `$COWCTL_MANIFEST`, else /etc/cowctl/cowctl.yaml.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("COWCTL_MANIFEST").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

impl Manifest {
    pub fn pc(&self, name: &str) -> Option<&Pc> {
        self.pcs.iter().find(|p| p.name == name)
    }

    /// How a PC's disk is kept: its image's storage.
    pub fn storage_of(&self, pc: &Pc) -> Storage {
        self.images
            .get(&pc.image)
            .map(|i| i.storage)
            .unwrap_or_default()
    }

    /// A PC's disk on rbd storage: its clone's name in the ceph section's pool.
    pub fn rbd_clone(&self, pc: &Pc) -> Option<String> {
        let ceph = self.ceph.as_ref()?;
        (self.storage_of(pc) == Storage::Rbd).then(|| format!("{}.{}", ceph.prefix, pc.name))
    }

    /// This manifest with `pc` on `image` (a version it moves to), when one is given.
    pub fn with_pc_on(&self, pc: &Pc, image: Option<&Image>) -> (Manifest, Pc) {
        let (mut m, mut pc) = (self.clone(), pc.clone());
        if let Some(image) = image {
            m.images.insert(image.name.clone(), image.clone());
            pc.image = image.name.clone();
        }
        (m, pc)
    }

    /// Whether any image keeps its PCs' disks on rbd.
    pub fn uses_rbd(&self) -> bool {
        self.images.values().any(|i| i.storage == Storage::Rbd)
    }

    /// The PCs a reset of `names` resets: those named, or when none are, every PC that
    /// does not keep its changes (`keep: true`).
    pub fn select_for_reset(&self, names: &[String]) -> Result<Vec<&Pc>, UnknownPc> {
        if names.is_empty() {
            return Ok(self.pcs.iter().filter(|p| !p.keep).collect());
        }
        self.select(names)
    }

    /// The PCs named, in manifest order; all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Pc>, UnknownPc> {
        if names.is_empty() {
            return Ok(self.pcs.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.pc(n).ok_or_else(|| UnknownPc {
                    name: n.clone(),
                    manifest: self.path.clone(),
                })
            })
            .collect()
    }
}

/// A PC named on the command line that the manifest does not list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no PC named {name:?} in {}", manifest.display())]
pub struct UnknownPc {
    pub name: String,
    pub manifest: PathBuf,
}

/// One manifest being checked: every error and warning found so far, each at its place.
/// The other files of this module each add their part of the checking to it.
struct Builder {
    positions: Positions,
    errors: Vec<ManifestError>,
    warnings: Vec<ManifestWarning>,
    /// For each PC built so far, the index of the `pcs` entry it came from.
    origin: Vec<usize>,
}

impl Builder {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        let (line, column) = self.positions.find(field);
        self.errors.push(ManifestError {
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Deserialises one section, pointing an unknown field at its own line.
    fn section<T: serde::de::DeserializeOwned>(&mut self, field: &str, v: Value) -> Option<T> {
        match serde_norway::from_value(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = e.to_string();
                let at = msg
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                    .map_or(field.to_string(), |f| {
                        self.positions
                            .key_under(field, f)
                            .unwrap_or_else(|| format!("{field}.{f}"))
                    });
                let msg = if at.ends_with(".secret") || at.ends_with(".password") {
                    "CHAP secrets never go in the manifest: put the secret in a file readable only by root and name it with secret_file".to_string()
                } else {
                    msg
                };
                self.error(&at, msg);
                None
            }
        }
    }
}
