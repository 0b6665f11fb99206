//! Each `pcs` entry: its brace ranges expanded, defaults applied, every field validated
//! into a Pc; names, addresses and AoE slots used once across all PCs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::raw::{RawAutoExtend, RawPc, Text};
use super::{expand, pxe, types};
use super::{AoeConfig, AutoExtend, Builder, Export, Image, IscsiConfig, Mac, Pc};
use crate::base::units::ByteSize;
use crate::cow::Geometry;
use crate::dm::StoreMode;

impl Builder {
    pub(super) fn pcs(
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
        let image = self.pc_image(&at, name, value, images);
        let (cow_size, chunk) = self.pc_sizes(&at, name, value);
        let storage = images.get(&image).map(|i| i.storage).unwrap_or_default();
        let cow = self.pc_cow(&at, name, value, storage);
        let overflow = self.pc_overflow(&at, name, value);
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

    /// The PC's image: named, and one of the images section's.
    fn pc_image(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        images: &BTreeMap<String, Image>,
    ) -> String {
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
        image
    }

    /// cow_size and chunk: each a size, the chunk a valid one, the COW at least 3 chunks
    /// of whole sectors.
    fn pc_sizes(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
    ) -> (ByteSize, ByteSize) {
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
        (cow_size, chunk)
    }

    /// The COW's path: cow, or <name>.cow in cow_dir; absolute. A reflink PC's disk (its
    /// clone) is a disk image, <name>.img.
    fn pc_cow(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
        storage: super::Storage,
    ) -> PathBuf {
        let ext = match storage {
            super::Storage::Cow => "cow",
            super::Storage::Reflink => "img",
            // The disk is a clone in the cluster (Manifest::rbd_clone): no file.
            super::Storage::Rbd => return PathBuf::new(),
        };
        let cow = match (value("cow"), value("cow_dir")) {
            (Some(c), _) => PathBuf::from(c),
            (None, Some(d)) => Path::new(&d).join(format!("{name}.{ext}")),
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
        cow
    }

    /// overflow: PO (the default) or P.
    fn pc_overflow(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        value: &dyn Fn(&str) -> Option<String>,
    ) -> StoreMode {
        match value("overflow").as_deref() {
            None | Some("PO") => StoreMode::PO,
            Some("P") => StoreMode::P,
            Some(o) => {
                self.error(&at("overflow"), format!("{name}: {o:?} is not P or PO"));
                StoreMode::PO
            }
        }
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
    /// Names, COW files, IPs, MACs, iSCSI targets and AoE addresses are each used once.
    pub(super) fn unique(&mut self, pcs: &[Pc]) {
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
    pub(super) fn field_of(&self, pc_index: usize, what: &str) -> String {
        let what = if what == "shelf" { "slot" } else { what };
        self.origin
            .get(pc_index)
            .map_or_else(|| "pcs".to_string(), |i| format!("pcs[{i}].{what}"))
    }
}
