//! Reading a manifest: the file read, parsed into a Builder's sections in order, every
//! error collected and sorted. Pure: nothing beyond the file itself is read.

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::{Mapping, Value};

use super::positions::Positions;
use super::raw::{RawAoe, RawHttp, RawImages, RawIscsi, RawNbd, RawPc, RawPxe};
use super::{
    AoeConfig, Backend, Builder, Image, IscsiConfig, Manifest, ManifestError, ManifestErrors,
    NbdConfig, Pc,
};

impl Manifest {
    /// Reads and validates the manifest as written: parsing and checks of the text only,
    /// nothing on disk. Versioned images are resolved to versions one layer up, by
    /// `crate::image::load_manifest`, which every command that serves PCs uses.
    pub fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
        Manifest::parse(path, &Self::read_text(path)?)
    }

    /// The manifest's text, or the error that names the file.
    pub fn read_text(path: &Path) -> Result<String, ManifestErrors> {
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

    /// Problems found beyond the text (field, message), placed at their fields' lines.
    pub fn located(path: &Path, text: &str, problems: Vec<(String, String)>) -> ManifestErrors {
        let positions = Positions::index(text);
        ManifestErrors {
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
        }
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
}

/// The top-level sections as written, each parsed into its raw form (None: absent, or an
/// error already reported).
#[derive(Default)]
struct RawSections {
    images: Option<RawImages>,
    defaults: RawPc,
    iscsi: Option<RawIscsi>,
    aoe: Option<RawAoe>,
    warn: Option<f64>,
    pcs: Vec<Value>,
    backend: Option<String>,
    nbd: Option<RawNbd>,
    http: Option<RawHttp>,
    pxe: Option<RawPxe>,
    ceph: Option<super::ceph::RawCeph>,
    gateways: Vec<super::gateways::RawGateway>,
}

impl Builder {
    fn build(&mut self, path: &Path, text: &str) -> Option<Manifest> {
        let map = self.root(text)?;
        let raw = self.sections(map);
        if raw.defaults.name.is_some() {
            self.error("defaults.name", "defaults cannot name a PC");
        }
        let ceph = raw.ceph.and_then(|r| self.ceph(r));
        let gateways = self.gateways(raw.gateways, ceph.is_some());
        let images = self.images(raw.images.unwrap_or_default(), ceph.as_ref());
        let iscsi = raw.iscsi.and_then(|r| self.iscsi(r));
        let aoe = raw.aoe.map(|r| AoeConfig {
            interface: r.interface,
        });
        let backend = self.backend(raw.backend.as_deref());
        let nbd = raw.nbd.map_or_else(NbdConfig::default, |r| self.nbd(r));
        self.nbd_beside_iscsi(&nbd, iscsi.as_ref());
        let http = raw.http.map(|r| self.http(r));
        let warn_percent = raw.warn.unwrap_or(75.0);
        if !(warn_percent > 0.0 && warn_percent <= 100.0) {
            self.error(
                "warn_percent",
                format!("{warn_percent} is not a percentage above 0 and at most 100"),
            );
        }
        let out = self.every_pc(
            raw.pcs,
            &raw.defaults,
            &images,
            iscsi.as_ref(),
            aoe.as_ref(),
        );
        if out.is_empty() && self.errors.is_empty() {
            self.error("pcs", "the manifest lists no PCs");
        }
        self.unique(&out);
        self.files_of_their_own(&images, &out, iscsi.as_ref(), http.as_ref());
        let pxe = raw.pxe.and_then(|r| self.pxe(r, http.as_ref(), &out));
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
            ceph,
            gateways,
            here: None,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// The text as YAML, which must be a mapping.
    fn root(&mut self, text: &str) -> Option<Mapping> {
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
        Some(map)
    }

    /// Each section parsed in the order written; unknown ones refused.
    fn sections(&mut self, map: Mapping) -> RawSections {
        let mut raw = RawSections::default();
        for (k, v) in map {
            let key = k.as_str().unwrap_or("").to_string();
            match key.as_str() {
                "images" => raw.images = self.section::<RawImages>("images", v),
                "defaults" => {
                    raw.defaults = self.section::<RawPc>("defaults", v).unwrap_or_default()
                }
                "iscsi" => raw.iscsi = self.section::<RawIscsi>("iscsi", v),
                "aoe" => raw.aoe = self.section::<RawAoe>("aoe", v),
                "warn_percent" => raw.warn = self.section::<f64>("warn_percent", v),
                "pcs" => raw.pcs = self.section::<Vec<Value>>("pcs", v).unwrap_or_default(),
                "backend" => raw.backend = self.section::<String>("backend", v),
                "nbd" => raw.nbd = self.section::<RawNbd>("nbd", v),
                "http" => raw.http = self.section::<RawHttp>("http", v),
                "pxe" => raw.pxe = self.section::<RawPxe>("pxe", v),
                "ceph" => raw.ceph = self.section("ceph", v),
                "gateways" => raw.gateways = self.section("gateways", v).unwrap_or_default(),
                other => self.error(other, format!("unknown section {other:?} (expected images, defaults, pcs, iscsi, aoe, nbd, http, pxe, ceph, gateways, backend, warn_percent)")),
            }
        }
        raw
    }

    fn backend(&mut self, backend: Option<&str>) -> Backend {
        match backend {
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
        }
    }

    /// Every entry of pcs, ranges expanded; `origin` says which entry each PC came from.
    fn every_pc(
        &mut self,
        pcs: Vec<Value>,
        defaults: &RawPc,
        images: &BTreeMap<String, Image>,
        iscsi: Option<&IscsiConfig>,
        aoe: Option<&AoeConfig>,
    ) -> Vec<Pc> {
        let mut out = Vec::new();
        for (i, v) in pcs.into_iter().enumerate() {
            let field = format!("pcs[{i}]");
            if let Some(raw) = self.section::<RawPc>(&field, v) {
                let pcs = self.pcs(&field, defaults, raw, images, iscsi, aoe);
                self.origin.extend(std::iter::repeat_n(i, pcs.len()));
                out.extend(pcs);
            }
        }
        out
    }
}
