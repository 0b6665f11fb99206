//! The declarative manifest: images, PCs, exports. `Manifest::load` reads and validates it,
//! reporting every error at once, each as `file:line:column: field: message`.

pub mod adopt;
mod expand;
mod owned;
mod positions;
mod pxe;
mod raw;
mod types;
mod warnings;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use positions::Positions;
use raw::{RawAoe, RawAutoExtend, RawHttp, RawImages, RawIscsi, RawNbd, RawPc, RawPxe, Text};
pub use types::{
    AclMode, AoeConfig, AutoExtend, Backend, Chap, DhcpMode, Export, HttpConfig, Image,
    IscsiConfig, Mac, NbdAcl, NbdConfig, Pc, Portal, PxeConfig,
};

use crate::cow::Geometry;
use crate::dm::StoreMode;
use crate::iqn::Iqn;
use crate::units::ByteSize;

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
    /// What is valid but risky, each with where it is (see `warnings.rs`).
    pub warnings: Vec<ManifestWarning>,
}

/// One problem in a manifest, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Something valid but risky in a manifest, with where it is: printed, never refused.
pub type ManifestWarning = ManifestError;

/// Every problem found in one manifest.
#[derive(Debug)]
pub struct ManifestErrors {
    pub path: PathBuf,
    pub errors: Vec<ManifestError>,
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [e] = self.errors.as_slice() {
            if e.line == 0 {
                return write!(
                    f,
                    "cannot read the manifest {}: {} (name one with -f or $COWCTL_MANIFEST)",
                    self.path.display(),
                    e.message
                );
            }
        }
        let n = self.errors.len();
        write!(
            f,
            "{} has {n} error{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            let field = if e.field.is_empty() {
                String::new()
            } else {
                format!("{}: ", e.field)
            };
            write!(
                f,
                "\n  {}:{}:{}: {field}{}",
                self.path.display(),
                e.line,
                e.column,
                e.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// The manifest path: `-f`, else `$COWCTL_MANIFEST`, else /etc/cowctl/cowctl.yaml.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("COWCTL_MANIFEST").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

impl Manifest {
    /// The manifest as written, its versioned images not resolved to versions (what
    /// `cowctl image import` needs before an image has any).
    pub fn load_unresolved(path: &Path) -> Result<Manifest, ManifestErrors> {
        Manifest::parse(path, &Self::read(path)?)
    }

    fn read(path: &Path) -> Result<String, ManifestErrors> {
        std::fs::read_to_string(path).map_err(|e| ManifestErrors {
            path: path.to_path_buf(),
            errors: vec![ManifestError {
                line: 0,
                column: 0,
                field: String::new(),
                message: e.to_string(),
            }],
        })
    }

    /// Reads and validates the manifest, each PC on its image version (see
    /// `crate::image::resolve`).
    pub fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
        let text = Self::read(path)?;
        let mut m = Manifest::parse(path, &text)?;
        let problems = crate::image::resolve(&mut m);
        if problems.is_empty() {
            return Ok(m);
        }
        let positions = Positions::index(&text);
        Err(ManifestErrors {
            path: path.to_path_buf(),
            errors: problems
                .into_iter()
                .map(|(field, message)| {
                    let (line, column) = positions.find(&field);
                    ManifestError {
                        line,
                        column,
                        field,
                        message,
                    }
                })
                .collect(),
        })
    }

    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestErrors> {
        let mut b = Builder {
            positions: Positions::index(text),
            errors: Vec::new(),
            warnings: Vec::new(),
            origin: Vec::new(),
        };
        let manifest = b.build(path, text);
        if b.errors.is_empty() {
            Ok(manifest.expect("no errors means a manifest"))
        } else {
            b.errors.sort_by_key(|e| (e.line, e.column));
            Err(ManifestErrors {
                path: path.to_path_buf(),
                errors: b.errors,
            })
        }
    }

    pub fn pc(&self, name: &str) -> Option<&Pc> {
        self.pcs.iter().find(|p| p.name == name)
    }

    /// The PCs a reset of `names` resets: those named, or when none are, every PC that
    /// does not keep its changes (`keep: true`).
    pub fn select_for_reset(&self, names: &[String]) -> anyhow::Result<Vec<&Pc>> {
        if names.is_empty() {
            return Ok(self.pcs.iter().filter(|p| !p.keep).collect());
        }
        self.select(names)
    }

    /// The PCs named, in manifest order; all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> anyhow::Result<Vec<&Pc>> {
        if names.is_empty() {
            return Ok(self.pcs.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.pc(n)
                    .ok_or_else(|| anyhow::anyhow!("no PC named {n:?} in {}", self.path.display()))
            })
            .collect()
    }
}

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

    fn build(&mut self, path: &Path, text: &str) -> Option<Manifest> {
        let root: Value = match serde_norway::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                self.errors.push(ManifestError {
                    line,
                    column,
                    field: String::new(),
                    message: e.to_string(),
                });
                return None;
            }
        };
        let Value::Mapping(map) = root else {
            self.error(
                "",
                "the manifest must be a mapping with images, pcs and the other sections",
            );
            return None;
        };
        let (mut images, mut defaults, mut iscsi, mut aoe, mut warn, mut pcs) =
            (None, RawPc::default(), None, None, None, Vec::new());
        let (mut backend, mut nbd, mut http, mut pxe) = (None, None, None, None);
        for (k, v) in map {
            let key = k.as_str().unwrap_or("").to_string();
            match key.as_str() {
                "images" => images = self.section::<RawImages>("images", v),
                "defaults" => defaults = self.section::<RawPc>("defaults", v).unwrap_or_default(),
                "iscsi" => iscsi = self.section::<RawIscsi>("iscsi", v),
                "aoe" => aoe = self.section::<RawAoe>("aoe", v),
                "warn_percent" => warn = self.section::<f64>("warn_percent", v),
                "pcs" => pcs = self.section::<Vec<Value>>("pcs", v).unwrap_or_default(),
                "backend" => backend = self.section::<String>("backend", v),
                "nbd" => nbd = self.section::<RawNbd>("nbd", v),
                "http" => http = self.section::<RawHttp>("http", v),
                "pxe" => pxe = self.section::<RawPxe>("pxe", v),
                other => self.error(other, format!("unknown section {other:?} (expected images, defaults, pcs, iscsi, aoe, nbd, http, pxe, backend, warn_percent)")),
            }
        }
        if defaults.name.is_some() {
            self.error("defaults.name", "defaults cannot name a PC");
        }
        let images = self.images(images.unwrap_or_default());
        let iscsi = iscsi.and_then(|r| self.iscsi(r));
        let aoe = aoe.map(|r| AoeConfig {
            interface: r.interface,
        });
        let backend = match backend.as_deref() {
            None | Some("auto") => Backend::Auto,
            Some("kernel") => Backend::Kernel,
            Some("userspace") => Backend::Userspace,
            Some(other) => {
                self.error(
                    "backend",
                    format!("{other:?} is not a backend (auto, kernel or userspace)"),
                );
                Backend::Auto
            }
        };
        let nbd = nbd.map_or_else(NbdConfig::default, |r| self.nbd(r));
        self.nbd_beside_iscsi(&nbd, iscsi.as_ref());
        let http = http.map(|r| self.http(r));
        let warn_percent = warn.unwrap_or(75.0);
        if !(warn_percent > 0.0 && warn_percent <= 100.0) {
            self.error(
                "warn_percent",
                format!("{warn_percent} is not a percentage above 0 and at most 100"),
            );
        }
        let mut out = Vec::new();
        for (i, v) in pcs.into_iter().enumerate() {
            let field = format!("pcs[{i}]");
            if let Some(raw) = self.section::<RawPc>(&field, v) {
                let pcs = self.pcs(
                    &field,
                    &defaults,
                    raw,
                    &images,
                    iscsi.as_ref(),
                    aoe.as_ref(),
                );
                self.origin.extend(std::iter::repeat_n(i, pcs.len()));
                out.extend(pcs);
            }
        }
        if out.is_empty() && self.errors.is_empty() {
            self.error("pcs", "the manifest lists no PCs");
        }
        self.unique(&out);
        self.files_of_their_own(&images, &out, iscsi.as_ref(), http.as_ref());
        let pxe = pxe.and_then(|r| self.pxe(r, http.as_ref(), &out));
        self.warn_open_initiator_acl(iscsi.as_ref());
        Some(Manifest {
            path: path.to_path_buf(),
            images,
            pcs: out,
            iscsi,
            aoe,
            warn_percent,
            backend,
            nbd,
            http,
            pxe,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

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

    fn http(&mut self, r: RawHttp) -> HttpConfig {
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

    fn nbd(&mut self, r: RawNbd) -> NbdConfig {
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
    fn nbd_beside_iscsi(&mut self, nbd: &NbdConfig, iscsi: Option<&IscsiConfig>) {
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

    fn images(&mut self, raw: RawImages) -> BTreeMap<String, Image> {
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
            out.insert(
                name.clone(),
                Image {
                    family: name.clone(),
                    name,
                    path,
                    version: img.version,
                    store,
                },
            );
        }
        out
    }

    fn iscsi(&mut self, r: RawIscsi) -> Option<IscsiConfig> {
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
        let chap = r.chap.map(|c| {
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
            for (field, name) in [("username", Some(&c.username)), ("mutual_username", c.mutual_username.as_ref())] {
                if let Some(n) = name {
                    if n.is_empty() || n.len() > 255 || !crate::secrets::plain(n) {
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
        });
        Some(IscsiConfig {
            iqn_prefix: prefix?,
            portals,
            acl,
            chap,
        })
    }

    fn pcs(
        &mut self,
        field: &str,
        defaults: &RawPc,
        raw: RawPc,
        images: &BTreeMap<String, Image>,
        iscsi: Option<&IscsiConfig>,
        aoe: Option<&AoeConfig>,
    ) -> Vec<Pc> {
        let get = |own: &Option<Text>, def: &Option<Text>| {
            own.clone().or_else(|| def.clone()).map(|t| t.as_string())
        };
        let fields: Vec<(&str, Option<String>)> = vec![
            ("name", get(&raw.name, &None)),
            ("image", get(&raw.image, &defaults.image)),
            ("cow", get(&raw.cow, &defaults.cow)),
            ("cow_dir", get(&raw.cow_dir, &defaults.cow_dir)),
            ("cow_size", get(&raw.cow_size, &defaults.cow_size)),
            ("chunk", get(&raw.chunk, &defaults.chunk)),
            ("overflow", get(&raw.overflow, &defaults.overflow)),
            ("export", get(&raw.export, &defaults.export)),
            ("mac", get(&raw.mac, &defaults.mac)),
            ("ip", get(&raw.ip, &defaults.ip)),
            ("initiator", get(&raw.initiator, &defaults.initiator)),
            ("shelf", get(&raw.shelf, &defaults.shelf)),
            ("slot", get(&raw.slot, &defaults.slot)),
            ("hostname", get(&raw.hostname, &defaults.hostname)),
        ];
        // Expand ranges: every ranged field must give the same count.
        let mut count: Option<(usize, &str)> = None;
        let mut expanded: HashMap<&str, Vec<String>> = HashMap::new();
        for (name, value) in &fields {
            let Some(v) = value else { continue };
            match expand::expand(v) {
                Ok(Some(list)) => {
                    if let Some((n, first)) = count {
                        if n != list.len() {
                            self.error(
                                &format!("{field}.{name}"),
                                format!("range gives {} values but {first} gives {n}", list.len()),
                            );
                            return Vec::new();
                        }
                    } else {
                        count = Some((list.len(), name));
                    }
                    expanded.insert(name, list);
                }
                Ok(None) => {}
                Err(e) => {
                    self.error(&format!("{field}.{name}"), e);
                    return Vec::new();
                }
            }
        }
        let n = count.map_or(1, |(n, _)| n);
        let mut out = Vec::new();
        for i in 0..n {
            let value = |name: &str| -> Option<String> {
                expanded.get(name).map(|l| l[i].clone()).or_else(|| {
                    fields
                        .iter()
                        .find(|(f, _)| *f == name)
                        .and_then(|(_, v)| v.clone())
                })
            };
            let Some(name) = value("name") else {
                self.error(field, "a PC needs a name");
                return out;
            };
            let value = |f: &str| value(f).map(|v| v.replace("{name}", &name));
            if let Some(pc) = self.pc(field, &name, &value, &raw, defaults, images, iscsi, aoe) {
                out.push(pc);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn pc(
        &mut self,
        field: &str,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        raw: &RawPc,
        defaults: &RawPc,
        images: &BTreeMap<String, Image>,
        iscsi: Option<&IscsiConfig>,
        aoe: Option<&AoeConfig>,
    ) -> Option<Pc> {
        let before = self.errors.len();
        let at = |f: &str| format!("{field}.{f}");
        if !types::valid_pc_name(name) {
            self.error(&at("name"), format!("{name:?} is not a PC name (lower-case letters, digits and '-', at most 32, starting with a letter or digit)"));
        }
        let image = value("image").unwrap_or_default();
        if image.is_empty() {
            self.error(
                &at("image"),
                format!("{name}: no image (set image here or in defaults)"),
            );
        } else if !images.contains_key(&image) {
            self.error(
                &at("image"),
                format!("{name}: image {image:?} is not listed under images"),
            );
        }
        let mut parse_size = |f: &str, default: &str| -> ByteSize {
            let v = value(f).unwrap_or_else(|| default.to_string());
            v.parse().unwrap_or_else(|e| {
                self.error(&at(f), format!("{name}: {e}"));
                ByteSize(0)
            })
        };
        let cow_size = parse_size("cow_size", "");
        let chunk = parse_size("chunk", "32KiB");
        if let Err(e) = Geometry::from_bytes(chunk.bytes()) {
            self.error(&at("chunk"), format!("{name}: {e}"));
        } else if cow_size.bytes() < 3 * chunk.bytes() || !cow_size.bytes().is_multiple_of(512) {
            self.error(&at("cow_size"), format!("{name}: a COW of {cow_size} is too small or not whole sectors (at least 3 chunks of {chunk})"));
        }
        let cow = match (value("cow"), value("cow_dir")) {
            (Some(c), _) => PathBuf::from(c),
            (None, Some(d)) => Path::new(&d).join(format!("{name}.cow")),
            (None, None) => {
                self.error(
                    &at("cow"),
                    format!(
                        "{name}: say where the COW lives (cow, or cow_dir here or in defaults)"
                    ),
                );
                PathBuf::new()
            }
        };
        if !cow.as_os_str().is_empty() && !cow.is_absolute() {
            self.error(
                &at("cow"),
                format!("{name}: {} is not an absolute path", cow.display()),
            );
        }
        let overflow = match value("overflow").as_deref() {
            None | Some("PO") => StoreMode::PO,
            Some("P") => StoreMode::P,
            Some(o) => {
                self.error(&at("overflow"), format!("{name}: {o:?} is not P or PO"));
                StoreMode::PO
            }
        };
        let mac = value("mac").and_then(|m| {
            m.parse::<Mac>()
                .map_err(|e| self.error(&at("mac"), format!("{name}: {e}")))
                .ok()
        });
        let ip = value("ip").and_then(|v| {
            v.parse()
                .map_err(|_| self.error(&at("ip"), format!("{name}: {v:?} is not an IP address")))
                .ok()
        });
        let export = match value("export").as_deref() {
            None | Some("iscsi") => self.iscsi_export(&at, name, value, iscsi),
            Some("aoe") => self.aoe_export(&at, name, value, raw, defaults, mac, aoe),
            Some("nbd") => Some(Export::Nbd),
            Some(other) => {
                self.error(
                    &at("export"),
                    format!("{name}: {other:?} is not an export (iscsi, aoe or nbd)"),
                );
                None
            }
        };
        let autoextend = raw
            .autoextend
            .clone()
            .or_else(|| defaults.autoextend.clone())
            .and_then(|a| self.autoextend(&at, name, a, cow_size, chunk));
        let hostname = value("hostname").unwrap_or_else(|| name.to_string());
        if !pxe::valid_hostname(&hostname) {
            self.error(&at("hostname"), format!("{name}: {hostname:?} is not a host name (letters, digits and '-', at most 63, not starting or ending with '-')"));
        }
        let identity = self.identity(&at, name, defaults, raw);
        if self.errors.len() > before {
            return None;
        }
        Some(Pc {
            name: name.to_string(),
            image,
            cow,
            cow_size,
            chunk,
            overflow,
            export: export?,
            mac,
            ip,
            read_only: raw.read_only.or(defaults.read_only).unwrap_or(false),
            keep: raw.keep.or(defaults.keep).unwrap_or(false),
            reset_on_boot: raw
                .reset_on_boot
                .or(defaults.reset_on_boot)
                .unwrap_or(false),
            self_reset: raw.self_reset.or(defaults.self_reset).unwrap_or(false),
            autoextend,
            hostname,
            identity,
        })
    }

    fn autoextend(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        raw: RawAutoExtend,
        cow_size: ByteSize,
        chunk: ByteSize,
    ) -> Option<AutoExtend> {
        let before = self.errors.len();
        let threshold = raw.threshold.unwrap_or(70.0);
        if !(1.0..100.0).contains(&threshold) {
            self.error(
                &at("autoextend.threshold"),
                format!("{name}: {threshold} is not a percentage from 1 to below 100"),
            );
        }
        let step = raw.step.unwrap_or(20.0);
        if !(1.0..=1000.0).contains(&step) {
            self.error(
                &at("autoextend.step"),
                format!("{name}: {step} is not a percentage of the COW from 1 to 1000"),
            );
        }
        let max = raw.max.as_string();
        match max.parse::<ByteSize>() {
            Ok(m) if m.bytes() < cow_size.bytes() + chunk.bytes() => self.error(
                &at("autoextend.max"),
                format!("{name}: a maximum of {m} leaves no room to grow a COW of {cow_size}"),
            ),
            Ok(m) => {
                return (self.errors.len() == before).then_some(AutoExtend {
                    threshold,
                    step,
                    max: m,
                })
            }
            Err(e) => self.error(&at("autoextend.max"), format!("{name}: {e}")),
        }
        None
    }

    fn iscsi_export(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        iscsi: Option<&IscsiConfig>,
    ) -> Option<Export> {
        let Some(cfg) = iscsi else {
            self.error(
                &at("export"),
                format!("{name} is exported over iSCSI but the manifest has no iscsi section"),
            );
            return None;
        };
        let target = format!("{}:{name}", cfg.iqn_prefix).parse::<Iqn>().ok()?;
        let initiator = match value("initiator") {
            Some(i) => match i.parse::<Iqn>() {
                Ok(q) => Some(q),
                Err(e) => {
                    self.error(&at("initiator"), format!("{name}: {e}"));
                    None
                }
            },
            None if cfg.acl == AclMode::PerInitiator => {
                self.error(
                    &at("initiator"),
                    format!("{name}: needs its initiator IQN for the ACL (or set iscsi.acl: open)"),
                );
                None
            }
            None => None,
        };
        Some(Export::Iscsi { target, initiator })
    }

    #[allow(clippy::too_many_arguments)]
    fn aoe_export(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        raw: &RawPc,
        defaults: &RawPc,
        mac: Option<Mac>,
        aoe: Option<&AoeConfig>,
    ) -> Option<Export> {
        if aoe.is_none() {
            self.error(
                &at("export"),
                format!("{name} is exported over AoE but the manifest has no aoe section"),
            );
        }
        let shelf = value("shelf").and_then(|s| s.parse::<u16>().ok().filter(|&s| s < 0xffff));
        let slot = value("slot").and_then(|s| s.parse::<u8>().ok().filter(|&s| s < 0xff));
        if shelf.is_none() {
            self.error(
                &at("shelf"),
                format!("{name}: an AoE export needs a shelf from 0 to 65534"),
            );
        }
        if slot.is_none() {
            self.error(
                &at("slot"),
                format!("{name}: an AoE export needs a slot from 0 to 254"),
            );
        }
        let mut macs = Vec::new();
        match raw.aoe_macs.as_ref().or(defaults.aoe_macs.as_ref()) {
            Some(list) => {
                for (i, m) in list.iter().enumerate() {
                    match m.as_string().parse::<Mac>() {
                        Ok(m) => macs.push(m),
                        Err(e) => {
                            self.error(&at(&format!("aoe_macs[{i}]")), format!("{name}: {e}"))
                        }
                    }
                }
            }
            None => macs.extend(mac),
        }
        if macs.is_empty() {
            self.error(&at("mac"), format!("{name}: an AoE export needs the PC's mac (or aoe_macs) for vblade's allow list"));
        }
        Some(Export::Aoe {
            shelf: shelf?,
            slot: slot?,
            macs,
        })
    }

    /// Names, COW files, IPs, MACs, iSCSI targets and AoE addresses are each used once.
    fn unique(&mut self, pcs: &[Pc]) {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (n, pc) in pcs.iter().enumerate() {
            // (two PCs on one COW, by any spelling, is files_of_their_own's to catch)
            let mut keys = vec![("name", pc.name.clone())];
            keys.extend(pc.ip.map(|ip| ("ip", ip.to_string())));
            keys.extend(pc.mac.map(|m| ("mac", m.to_string())));
            if let Export::Aoe { shelf, slot, .. } = &pc.export {
                keys.push(("shelf", format!("e{shelf}.{slot}")));
            }
            for (what, key) in keys {
                if let Some(first) = seen.insert(format!("{what}={key}"), &pc.name) {
                    let field = self.field_of(n, what);
                    self.error(
                        &field,
                        format!("{}: {what} {key} is already used by {first}", pc.name),
                    );
                }
            }
        }
    }

    /// The field of the `pcs` entry a PC came from.
    fn field_of(&self, pc_index: usize, what: &str) -> String {
        let what = if what == "shelf" { "slot" } else { what };
        self.origin
            .get(pc_index)
            .map_or_else(|| "pcs".to_string(), |i| format!("pcs[{i}].{what}"))
    }
}
