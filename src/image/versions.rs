//! An image's versions wherever they are kept: a directory ([`Store`]) or a Ceph pool
//! ([`RbdStore`]). What `cowctl image` lists, promotes, imports into and prunes.

use std::path::Path;

use super::space::Space;
use super::store::{Promoted, Store, Version, VersionName};
use super::{Found, RbdStore, Result};
use crate::manifest::{Image, Manifest, Pc};

pub enum Versions {
    Files(Store),
    Rbd(RbdStore),
}

impl Versions {
    /// The versions of the manifest's image `family` (or `family@version`).
    pub fn open(m: &Manifest, family: &str) -> Result<Versions> {
        Self::rbd_or_files(super::open_rbd(m, family)?, m, family)
    }

    /// The pool's store when the family has one, else its directory's.
    fn rbd_or_files(rbd: Option<RbdStore>, m: &Manifest, family: &str) -> Result<Versions> {
        match rbd {
            Some(r) => Ok(Versions::Rbd(r)),
            None => Ok(Versions::Files(super::open(m, family)?)),
        }
    }

    /// The versions, promotion and pruned names.
    pub fn view(&self) -> &Store {
        match self {
            Versions::Files(s) => s,
            Versions::Rbd(r) => &r.view,
        }
    }

    /// The same, to change them (import, promote): the versions of a Ceph pool are read
    /// under the family's change lease, held until this is dropped.
    pub fn open_to_change(m: &Manifest, family: &str) -> Result<Versions> {
        Self::rbd_or_files(super::open_rbd_to_change(m, family)?, m, family)
    }

    /// Read again (after a change).
    pub fn reread(self, m: &Manifest, family: &str) -> Result<Versions> {
        match self {
            Versions::Files(s) => Ok(Versions::Files(Store::open(&s.dir)?)),
            Versions::Rbd(_) => Versions::open(m, family),
        }
    }

    /// The version `pc` runs: its COW's record's, or the one its clone was made of; None
    /// when it has none of these (no disk yet, or one made over something else).
    pub fn running(&self, m: &Manifest, pc: &Pc) -> Result<Option<VersionName>> {
        match self {
            Versions::Files(s) => {
                if super::golden_record::record_path(&pc.cow).exists() {
                    // Best effort (a reading command may not write the store): the COWs of
                    // stores made before back-references become visible to prune.
                    let _ = super::users::note_in(&s.dir, &pc.cow);
                }
                match super::running_version(s, pc) {
                    Found::On(v) => Ok(Some(v.clone())),
                    Found::Missing(_) | Found::Elsewhere => Ok(None),
                }
            }
            Versions::Rbd(r) => match r.running(m, pc)? {
                Found::On(v) => Ok(Some(v.clone())),
                _ => Ok(None),
            },
        }
    }

    /// The manifest's image entry of one version of `family`.
    pub fn entry(&self, family: &Image, v: &VersionName) -> Image {
        match self {
            Versions::Files(s) => super::entry(family, s, &s.versions[v]),
            Versions::Rbd(r) => r.entry(family, v),
        }
    }

    /// Where the record of which version is promoted is kept.
    pub fn promotion_record(&self) -> String {
        match self {
            Versions::Files(s) => s.dir.join(super::store::PROMOTED).display().to_string(),
            Versions::Rbd(r) => format!("the pool's record of {}", r.view.dir.display()),
        }
    }

    /// What a version takes: its file's blocks, or its image's own objects.
    pub fn space(&self, v: &VersionName) -> Space {
        match self {
            Versions::Files(s) => super::space::of(&s.disk(v)),
            Versions::Rbd(r) => Space {
                allocated: r.allocated(v),
                shared: 0,
            },
        }
    }

    pub fn write_promoted(&self, p: &Promoted) -> Result<()> {
        match self {
            Versions::Files(s) => s.write_promoted(p),
            Versions::Rbd(r) => r.write_promoted(p),
        }
    }

    /// `cowctl image import`.
    pub fn import(&self, src: &Path, name: Option<VersionName>, note: &str) -> Result<Version> {
        match self {
            Versions::Files(s) => super::import(s, src, name, note),
            Versions::Rbd(r) => super::rbdimport::import(r, src, name, note),
        }
    }
}
