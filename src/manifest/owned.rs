//! A PC's COW must be a file of its own: cowctl writes a snapshot store into it, so it may
//! not be any other file cowctl owns or reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::types::{HttpConfig, Image, IscsiConfig, Pc};
use super::Builder;
use crate::base::fileid::{identity, Identity};

/// The names a versioned image's store gives its files (`image::store` writes them; the
/// check here must know them to keep a COW off them).
pub const VERSION_DISK: &str = "disk.img";
pub const VERSION_RECORD: &str = "version.json";
pub const PROMOTION_RECORD: &str = "promoted.json";

/// The files of a versioned image's store as its directory lists them: every version's
/// disk and record (in place or still being made, loadable or not) and the promotion record.
fn store_files(image: &str, dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = vec![(
        dir.join(PROMOTION_RECORD),
        format!("the promotion record of image {image} (images.{image}.versions)"),
    )];
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for folder in entries.map(|e| e.path()).filter(|p| p.is_dir()) {
        let v = folder
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push((
            folder.join(VERSION_DISK),
            format!("the disk of image {image}'s version {v} (images.{image}.versions)"),
        ));
        out.push((
            folder.join(VERSION_RECORD),
            format!("the record of image {image}'s version {v} (images.{image}.versions)"),
        ));
    }
    out
}

/// Every file cowctl owns or reads besides the COWs, each with what it is.
fn owned_files(
    images: &BTreeMap<String, Image>,
    pcs: &[Pc],
    iscsi: Option<&IscsiConfig>,
    http: Option<&HttpConfig>,
) -> Vec<(Identity, String)> {
    let mut owned: Vec<(Identity, String)> = Vec::new();
    for img in images.values() {
        owned.push((
            identity(&img.path),
            format!(
                "golden image {} (images.{}.path)",
                img.path.display(),
                img.name
            ),
        ));
        if let Some(dir) = &img.store {
            owned.extend(
                store_files(&img.name, dir)
                    .into_iter()
                    .map(|(path, what)| (identity(&path), what)),
            );
        }
    }
    for pc in pcs {
        let cow = |suffix: &str| {
            let mut p = pc.cow.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        owned.push((
            identity(&cow(".golden")),
            format!("{}'s golden-image record", pc.name),
        ));
        owned.push((
            identity(&cow(".discard")),
            format!("the old COW a reset of {} sets aside", pc.name),
        ));
        owned.push((
            identity(&cow(".cloning")),
            format!(
                "the clone a reset of {} makes before it takes its place",
                pc.name
            ),
        ));
    }
    if let Some(c) = iscsi.and_then(|i| i.chap.as_ref()) {
        owned.push((identity(&c.secret_file), "the CHAP secret file".into()));
        if let Some(m) = &c.mutual_secret_file {
            owned.push((identity(m), "the mutual CHAP secret file".into()));
        }
    }
    if let Some(t) = http.and_then(|h| h.token_file.as_ref()) {
        owned.push((identity(t), "the admin token file".into()));
    }
    owned
}

impl Builder {
    /// A PC's COW must be a file of its own: not a golden image, not another PC's COW, not
    /// a `.golden` record, `.discard` or `.cloning` leftover, not a secret — compared after
    /// resolving `.`, `..`, `//` and symlinks, and by device and inode for files that exist
    /// (a hard link is the same file). A typo here would have cowctl write a snapshot over it.
    pub(super) fn files_of_their_own(
        &mut self,
        images: &BTreeMap<String, Image>,
        pcs: &[Pc],
        iscsi: Option<&IscsiConfig>,
        http: Option<&HttpConfig>,
    ) {
        let owned = owned_files(images, pcs, iscsi, http);
        let cows: Vec<Identity> = pcs.iter().map(|p| identity(&p.cow)).collect();
        for (i, (pc, id)) in pcs.iter().zip(&cows).enumerate() {
            if pc.cow.as_os_str().is_empty() {
                continue; // an rbd PC: its disk is no file
            }
            let clash = owned
                .iter()
                .find(|(other, _)| other.same(id))
                .map(|(_, what)| what.clone())
                .or_else(|| {
                    pcs.iter()
                        .zip(&cows)
                        .take(i)
                        .find(|(_, other)| other.same(id))
                        .map(|(p, _)| format!("{}'s COW", p.name))
                });
            if let Some(what) = clash {
                let field = self.field_of(i, "cow");
                self.error(
                    &field,
                    format!(
                        "{}: the COW {} is {what}; a PC's COW must be a file of its own (cowctl writes a snapshot store into it)",
                        pc.name,
                        pc.cow.display()
                    ),
                );
            }
        }
    }
}
