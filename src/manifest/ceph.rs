//! The `ceph` section (how cowctl reaches the cluster of `storage: rbd` images) and an
//! image's `rbd: NAME@SNAPSHOT`, the protected snapshot its PCs' disks are cloned from, or
//! `rbd: NAME`, a family of versions `cowctl image` keeps in the pool.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Builder;
use crate::base::units::ByteSize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCeph {
    pub conf: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
    pub client: Option<String>,
    pub pool: Option<String>,
    pub object_size: Option<String>,
    pub prefix: Option<String>,
}

/// The cluster the rbd images live in, and how cowctl makes its PCs' clones there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CephConfig {
    pub settings: crate::rbd::Settings,
    /// The PCs' clones' object size: what a first write copies up from the image and the
    /// unit their fill is counted in (rbd du's).
    pub object_size: ByteSize,
    /// A PC's clone is `<prefix>.<pc name>` in the pool.
    pub prefix: String,
}

impl CephConfig {
    /// The object size as librbd's order (a power of two's exponent).
    pub fn order(&self) -> u8 {
        u8::try_from(self.object_size.bytes().trailing_zeros()).unwrap_or(22)
    }
}

/// The default object size of the PCs' clones: 64 KiB (see docs/ceph.md for what it costs).
const DEFAULT_OBJECT_SIZE: u64 = 64 << 10;

/// An image's snapshot in the pool, `NAME@SNAPSHOT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RbdSnapshot {
    pub image: String,
    pub snap: String,
}

impl std::fmt::Display for RbdSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.image, self.snap)
    }
}

/// RBD names: no '/' or '@' (they separate pool, image and snapshot), nothing invisible.
fn rbd_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != '@')
}

impl Builder {
    pub(super) fn ceph(&mut self, r: RawCeph) -> Option<CephConfig> {
        let mut ok = true;
        let mut name = |b: &mut Builder, field: &str, value: Option<String>, default: &str| {
            let v = value.unwrap_or_else(|| default.to_string());
            if !rbd_name_ok(&v) {
                b.error(&format!("ceph.{field}"), format!("{v:?} is not a Ceph name (printable, no '/' or '@', at most 96 characters)"));
                ok = false;
            }
            v
        };
        let client = name(self, "client", r.client, "admin");
        let pool = name(self, "pool", r.pool, "rbd");
        let prefix = name(self, "prefix", r.prefix, "cowctl");
        let conf = r
            .conf
            .unwrap_or_else(|| PathBuf::from("/etc/ceph/ceph.conf"));
        for (field, p) in [("conf", Some(&conf)), ("keyring", r.keyring.as_ref())] {
            if let Some(p) = p.filter(|p| !p.is_absolute()) {
                self.error(
                    &format!("ceph.{field}"),
                    format!("{} is not an absolute path", p.display()),
                );
                ok = false;
            }
        }
        let object_size = match r.object_size.as_deref().map(str::parse::<ByteSize>) {
            None => ByteSize(DEFAULT_OBJECT_SIZE),
            Some(Ok(s))
                if s.bytes().is_power_of_two() && (4 << 10..=32 << 20).contains(&s.bytes()) =>
            {
                s
            }
            Some(Ok(s)) => {
                self.error(
                    "ceph.object_size",
                    format!("{s} is not a power of two from 4KiB to 32MiB"),
                );
                ok = false;
                ByteSize(DEFAULT_OBJECT_SIZE)
            }
            Some(Err(e)) => {
                self.error("ceph.object_size", e.to_string());
                ok = false;
                ByteSize(DEFAULT_OBJECT_SIZE)
            }
        };
        ok.then_some(CephConfig {
            settings: crate::rbd::Settings {
                conf,
                keyring: r.keyring,
                client,
                pool,
            },
            object_size,
            prefix,
        })
    }

    /// `images.<name>.rbd`: `IMAGE@SNAPSHOT` (one snapshot the admin keeps), or `NAME`
    /// (versions cowctl keeps: `NAME.<version>@<version>`).
    pub(super) fn rbd_source(&mut self, name: &str, text: &str) -> Option<RbdSource> {
        match text.split_once('@') {
            Some((image, snap)) if rbd_name_ok(image) && rbd_name_ok(snap) => {
                Some(RbdSource::Snapshot(RbdSnapshot {
                    image: image.to_string(),
                    snap: snap.to_string(),
                }))
            }
            None if rbd_name_ok(text) && text.len() <= 64 => {
                Some(RbdSource::Versions(text.to_string()))
            }
            _ => {
                self.error(
                    &format!("images.{name}.rbd"),
                    format!("{name}: rbd {text:?} is neither IMAGE@SNAPSHOT (an image in the ceph section's pool and its protected snapshot) nor NAME (at most 64 characters: the versions `cowctl image` keeps, NAME.v1@v1 …)"),
                );
                None
            }
        }
    }
}

/// What an rbd image's PCs are cloned from.
pub(super) enum RbdSource {
    Snapshot(RbdSnapshot),
    Versions(String),
}

impl Builder {
    /// An image with `storage: rbd`: its snapshot in the ceph section's pool. Its `path` is
    /// that snapshot as qemu names it (`rbd:POOL/IMAGE@SNAPSHOT`), for messages only.
    pub(super) fn rbd_image(
        &mut self,
        name: &str,
        img: super::raw::RawImage,
        ceph: Option<&CephConfig>,
    ) -> Option<super::Image> {
        let at = |f: &str| format!("images.{name}.{f}");
        if img.storage.as_deref() != Some("rbd") {
            self.error(
                &at("rbd"),
                format!("{name}: rbd names a snapshot in a Ceph pool; say storage: rbd as well"),
            );
        }
        if img.path.is_some() || img.versions.is_some() || img.version.is_some() {
            self.error(&at("storage"), format!("{name}: an rbd image is its snapshot (rbd: IMAGE@SNAPSHOT) or its versions in the pool (rbd: NAME), not a file or a directory of versions"));
        }
        let Some(text) = img.rbd else {
            self.error(&at("rbd"), format!("{name}: storage: rbd needs rbd: IMAGE@SNAPSHOT (the protected snapshot its PCs are cloned from) or rbd: NAME (versions cowctl keeps)"));
            return None;
        };
        let source = self.rbd_source(name, &text)?;
        let Some(ceph) = ceph else {
            self.error(&at("storage"), format!("{name}: storage: rbd needs a ceph section (conf, pool) saying where the cluster is"));
            return None;
        };
        let pool = &ceph.settings.pool;
        if matches!(&source, RbdSource::Versions(base) if *base == ceph.prefix) {
            self.error(&at("rbd"), format!("{name}: rbd {text:?} is the ceph section's prefix too: a PC's clone <prefix>.<pc> would look like a version <name>.<version>; name them apart"));
        }
        let (path, rbd, rbd_versions) = match source {
            RbdSource::Snapshot(s) => (format!("rbd:{pool}/{s}"), Some(s), None),
            RbdSource::Versions(base) => (format!("rbd:{pool}/{base}.*"), None, Some(base)),
        };
        Some(super::Image {
            name: name.to_string(),
            family: name.to_string(),
            path: PathBuf::from(path),
            version: None,
            store: None,
            storage: super::Storage::Rbd,
            rbd,
            rbd_versions,
        })
    }
}
