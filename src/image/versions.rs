//! An image's versions wherever they are kept: a directory ([`Store`]) or a Ceph pool
//! ([`RbdStore`]). What `cowctl image` lists, promotes, imports into and prunes.

use std::path::Path;

use super::space::Space;
use super::store::{Promoted, Store, Version, VersionName};
use super::{RbdStore, Result};
use crate::manifest::Manifest;

pub enum Versions {
    Files(Store),
    Rbd(RbdStore),
}

impl Versions {
    /// The versions of the manifest's image `family` (or `family@version`).
    pub fn open(m: &Manifest, family: &str) -> Result<Versions> {
        match super::open_rbd(m, family)? {
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

    /// Read again (after a change).
    pub fn reread(self, m: &Manifest, family: &str) -> Result<Versions> {
        match self {
            Versions::Files(s) => Ok(Versions::Files(Store::open(&s.dir)?)),
            Versions::Rbd(_) => Versions::open(m, family),
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
