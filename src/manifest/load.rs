//! Reading a manifest: the file read, parsed into a Builder's sections in order, every
//! error collected and sorted. Pure: nothing beyond the file itself is read.

use std::path::Path;

use serde_norway::Value;

use super::positions::Positions;
use super::raw::{RawAoe, RawHttp, RawImages, RawIscsi, RawNbd, RawPc, RawPxe};
use super::{AoeConfig, Backend, Builder, Manifest, ManifestError, ManifestErrors, NbdConfig};

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

impl Builder {
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
}
