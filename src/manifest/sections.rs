//! The top-level sections besides pcs and pxe, each validated: images, iscsi, nbd (and
//! NBD's exposure beside a guarded iSCSI), http.

use std::collections::BTreeMap;

use super::raw::{RawChap, RawHttp, RawImages, RawIscsi, RawNbd, Text};
use super::{
    AclMode, Builder, Chap, HttpConfig, Image, IscsiConfig, NbdAcl, NbdConfig, Portal, Storage,
};
use crate::base::iqn::Iqn;

impl Builder {
    fn address(
        &mut self,
        field: &str,
        value: Option<Text>,
        example: &str,
    ) -> Option<std::net::SocketAddr> {
        let v = value?.as_string();
        v.parse()
            .map_err(|_| {
                self.error(
                    field,
                    format!("{v:?} is not an address with a port, such as {example}"),
                )
            })
            .ok()
    }

    pub(super) fn http(&mut self, r: RawHttp) -> HttpConfig {
        let mut cfg = HttpConfig::default();
        if let Some(a) = self.address("http.listen", r.listen, "0.0.0.0:8080") {
            cfg.listen = a;
        }
        if let Some(a) = self.address("http.admin_listen", r.admin_listen, "127.0.0.1:8081") {
            cfg.admin_listen = a;
        }
        if let Some(f) = r.token_file {
            if !f.is_absolute() {
                self.error(
                    "http.token_file",
                    format!("{} is not an absolute path", f.display()),
                );
            }
            cfg.token_file = Some(f);
        }
        if let Some(s) = r.server.map(|t| t.as_string()) {
            match s.parse() {
                Ok(ip) => cfg.server = Some(ip),
                Err(_) => self.error(
                    "http.server",
                    format!("{s:?} is not an IP address (the one PCs reach the iSCSI portal at)"),
                ),
            }
        }
        if cfg.listen == cfg.admin_listen {
            self.error(
                "http.admin_listen",
                format!(
                    "must differ from http.listen ({}): PCs would reach the admin routes",
                    cfg.listen
                ),
            );
        }
        if cfg.admin_is_remote() && cfg.token_file.is_none() {
            self.error(
                "http.admin_listen",
                format!(
                    "{} can be reached from other machines: set http.token_file (every admin route then needs the token), or listen on loopback",
                    cfg.admin_listen
                ),
            );
        }
        for (i, h) in r.hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                self.error(
                    &format!("http.hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                );
            }
        }
        cfg.hosts = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        cfg
    }

    pub(super) fn nbd(&mut self, r: RawNbd) -> NbdConfig {
        let mut cfg = NbdConfig::default();
        if let Some(a) = self.address("nbd.listen", r.listen, "127.0.0.1:10809") {
            cfg.listen = a;
        }
        match r.acl.as_deref() {
            None | Some("open") => {}
            Some("ip") => cfg.acl = NbdAcl::Ip,
            Some("open_to_lan") => cfg.acl = NbdAcl::OpenToLan,
            Some(other) => self.error(
                "nbd.acl",
                format!(
                    "{other:?} is not an NBD ACL mode (open, ip: each PC from its own ip only, or open_to_lan)"
                ),
            ),
        }
        if let Some(s) = r.socket {
            if !s.is_absolute() {
                self.error(
                    "nbd.socket",
                    format!("{} is not an absolute path", s.display()),
                );
            }
            cfg.socket = Some(s);
        }
        cfg
    }

    /// NBD has no authentication: open to the LAN, it would open every PC's disk to anyone
    /// while iSCSI asks for CHAP or an initiator name. Loopback and `acl: ip` are safe;
    /// `acl: open_to_lan` is the admin's explicit choice.
    pub(super) fn nbd_beside_iscsi(&mut self, nbd: &NbdConfig, iscsi: Option<&IscsiConfig>) {
        let Some(iscsi) = iscsi else { return };
        let guarded = iscsi.chap.is_some() || iscsi.acl == AclMode::PerInitiator;
        if guarded && nbd.acl == NbdAcl::Open && !nbd.listen.ip().to_canonical().is_loopback() {
            let guard = if iscsi.chap.is_some() {
                "CHAP"
            } else {
                "initiator ACLs"
            };
            self.error(
                "nbd.acl",
                format!(
                    "nbd.listen {} with acl: open lets anyone on the LAN open every PC's disk over NBD, past iSCSI's {guard}: set nbd.acl: ip (each PC from its own ip), listen on loopback, or write acl: open_to_lan to accept that",
                    nbd.listen
                ),
            );
        }
    }

    pub(super) fn images(
        &mut self,
        raw: RawImages,
        ceph: Option<&super::CephConfig>,
    ) -> BTreeMap<String, Image> {
        let mut out = BTreeMap::new();
        for (name, img) in raw {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                self.error(
                    &format!("images.{name}"),
                    format!("{name:?} is not an image name (letters, digits, '.', '_' and '-')"),
                );
            }
            if img.storage.as_deref() == Some("rbd") || img.rbd.is_some() {
                if let Some(image) = self.rbd_image(&name, img, ceph) {
                    out.insert(name, image);
                }
                continue;
            }
            let (field, path, store) = match (img.path, img.versions) {
                (Some(p), None) => ("path", p, None),
                (None, Some(d)) => {
                    if img.version.is_some() {
                        self.error(&format!("images.{name}.version"), format!("{name}: a versioned image's versions are named by `cowctl image`, not by a version label"));
                    }
                    ("versions", d.clone(), Some(d))
                }
                (Some(p), Some(_)) => {
                    self.error(&format!("images.{name}"), format!("{name}: give either path (one file) or versions (a directory of versions), not both"));
                    ("path", p, None)
                }
                (None, None) => {
                    self.error(
                        &format!("images.{name}"),
                        format!("{name}: no path (one file) or versions (a directory of versions)"),
                    );
                    continue;
                }
            };
            if !path.is_absolute() {
                self.error(
                    &format!("images.{name}.{field}"),
                    format!("{} is not an absolute path", path.display()),
                );
            }
            let storage = match img.storage.as_deref() {
                None | Some("cow") => Storage::Cow,
                Some("reflink") => Storage::Reflink,
                Some(other) => {
                    self.error(
                        &format!("images.{name}.storage"),
                        format!("{name}: storage {other:?} is not cow (COW files, the default), reflink (clones on btrfs or xfs) or rbd (clones in a Ceph pool)"),
                    );
                    Storage::Cow
                }
            };
            out.insert(
                name.clone(),
                Image {
                    family: name.clone(),
                    name,
                    path,
                    version: img.version,
                    store,
                    storage,
                    rbd: None,
                    rbd_versions: None,
                },
            );
        }
        out
    }

    pub(super) fn iscsi(&mut self, r: RawIscsi) -> Option<IscsiConfig> {
        let prefix = match r.iqn_prefix.parse::<Iqn>() {
            Ok(_) if r.iqn_prefix.contains(':') => {
                self.error(
                    "iscsi.iqn_prefix",
                    "the prefix must not contain ':' (cowctl appends :<pc name>)",
                );
                None
            }
            Ok(_) => Some(r.iqn_prefix.clone()),
            Err(e) => {
                self.error("iscsi.iqn_prefix", e.to_string());
                None
            }
        };
        let mut portals = Vec::new();
        for (i, p) in r.portals.iter().enumerate() {
            match p.parse::<Portal>() {
                Ok(p) => portals.push(p),
                Err(e) => self.error(&format!("iscsi.portals[{i}]"), e),
            }
        }
        if portals.is_empty() {
            self.error(
                "iscsi.portals",
                "list at least one portal address, such as 10.0.0.1:3260",
            );
        }
        let acl = match r.acl.as_deref() {
            None | Some("initiator") => AclMode::PerInitiator,
            Some("open") => AclMode::Open,
            Some(other) => {
                self.error(
                    "iscsi.acl",
                    format!("{other:?} is not an ACL mode (initiator or open)"),
                );
                AclMode::PerInitiator
            }
        };
        let chap = r.chap.map(|c| self.chap(c));
        Some(IscsiConfig {
            iqn_prefix: prefix?,
            portals,
            acl,
            chap,
        })
    }

    /// The iscsi section's chap: absolute secret files (the mutual one not the initiator's
    /// own), a mutual username only with a mutual secret, names CHAP can carry.
    fn chap(&mut self, c: RawChap) -> Chap {
        if !c.secret_file.is_absolute() {
            self.error("iscsi.chap.secret_file", "must be an absolute path");
        }
        if let Some(m) = &c.mutual_secret_file {
            if !m.is_absolute() {
                self.error("iscsi.chap.mutual_secret_file", "must be an absolute path");
            }
            if *m == c.secret_file {
                self.error(
                    "iscsi.chap.mutual_secret_file",
                    "must differ from secret_file: initiators refuse a target whose secret is their own",
                );
            }
        }
        if c.mutual_username.is_some() && c.mutual_secret_file.is_none() {
            self.error("iscsi.chap.mutual_username", "needs mutual_secret_file");
        }
        for (field, name) in [
            ("username", Some(&c.username)),
            ("mutual_username", c.mutual_username.as_ref()),
        ] {
            if let Some(n) = name {
                if n.is_empty() || n.len() > 255 || !crate::manifest::secrets::plain(n) {
                    self.error(
                        &format!("iscsi.chap.{field}"),
                        "must be 1 to 255 printable characters without blanks, $, quotes or backslashes",
                    );
                }
            }
        }
        Chap {
            username: c.username,
            secret_file: c.secret_file,
            mutual_secret_file: c.mutual_secret_file,
            mutual_username: c.mutual_username.unwrap_or_else(|| "cowctl".to_string()),
        }
    }
}
