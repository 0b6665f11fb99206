//! Which version a COW lies over, from its `.golden` record: by the version's exact
//! identity (name and full hash), never by the sampled fingerprint alone.

use std::path::Path;

use super::golden_record::Golden;
use super::store::{Store, Version, VersionName};

/// Which version a COW's `.golden` record names ([`Store::version_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    On(&'a VersionName),
    /// The record names a disk of this store that no version of it is now (pruned, or
    /// another disk under its name): what it names, e.g. `v2 (sha256 0a1b2c3d4e5f…)`.
    Missing(String),
    /// The record is about a file outside this store.
    Elsewhere,
}

impl Store {
    /// The version a COW's `.golden` record (written at unix time `written`) names: by its
    /// full hash (the named version, else another with the same content). Never by the
    /// sampled fingerprint alone, which two versions can share.
    ///
    /// A record without a full hash (written before versions had one, or over a version
    /// that had none) names a version only when all of these hold: the path is that
    /// version's disk, size and fingerprint agree, the version was not hashed when made
    /// (a record written since then carries the hash), and the record is no older than the
    /// version (a record written before a version existed cannot be about it: the
    /// version is another disk given a pruned version's name).
    pub fn version_of(&self, g: &Golden, written: Option<u64>) -> Found<'_> {
        let full = g
            .version
            .as_ref()
            .and_then(|id| Some((id, id.sha256.as_ref()?)));
        let found = match full {
            Some((id, hash)) => self
                .versions
                .values()
                .filter(|v| v.sha256.as_ref() == Some(hash))
                .min_by_key(|v| v.name.as_str() != id.name)
                .map(|v| &v.name),
            None => self
                .versions
                .values()
                .find(|v| self.old_record_names(v, g, written))
                .map(|v| &v.name),
        };
        match found {
            Some(v) => Found::On(v),
            None if self.holds(&g.image) => Found::Missing(match &g.version {
                Some(id) => format!(
                    "{} (sha256 {}…)",
                    id.name,
                    id.sha256
                        .as_deref()
                        .map_or("unknown", |h| &h[..12.min(h.len())])
                ),
                None => g.image.parent().and_then(Path::file_name).map_or_else(
                    || g.image.display().to_string(),
                    |n| n.to_string_lossy().into(),
                ),
            }),
            None => Found::Elsewhere,
        }
    }

    fn old_record_names(&self, v: &Version, g: &Golden, written: Option<u64>) -> bool {
        let disk = self.disk(&v.name);
        g.version
            .as_ref()
            .is_none_or(|id| id.name == v.name.as_str())
            && (g.image == disk || crate::base::fileid::same_file(&g.image, &disk))
            && g.size == v.size
            && g.fingerprint == v.fingerprint
            && (v.sha256.is_none() || v.hashed_later.is_some())
            && written.is_some_and(|w| w >= v.created)
    }

    /// Whether `disk` lies in a version folder of this store (whether or not it is one now).
    pub fn holds(&self, disk: &Path) -> bool {
        super::users::store_of(disk)
            .is_some_and(|d| d == self.dir || crate::base::fileid::same_file(d, &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::golden_record::VersionId;
    use crate::image::store::Promoted;
    use std::path::PathBuf;

    fn version(name: &str, sha256: Option<&str>, created: u64) -> Version {
        Version {
            name: name.parse().unwrap(),
            parent: None,
            created,
            note: String::new(),
            made_from: String::new(),
            size: 1 << 20,
            fingerprint: "same-samples".into(),
            sha256: sha256.map(String::from),
            hashed_later: None,
        }
    }

    fn store(versions: Vec<Version>) -> Store {
        Store {
            dir: PathBuf::from("/srv/versions"),
            versions: versions.into_iter().map(|v| (v.name.clone(), v)).collect(),
            promoted: Promoted::default(),
            pruned: Vec::new(),
        }
    }

    fn record(on: &str, id: Option<(&str, Option<&str>)>) -> Golden {
        Golden {
            image: PathBuf::from(format!("/srv/versions/{on}/disk.img")),
            size: 1 << 20,
            fingerprint: "same-samples".into(),
            resets: 0,
            last_reset: None,
            version: id.map(|(name, h)| VersionId {
                name: name.into(),
                sha256: h.map(String::from),
            }),
        }
    }

    fn on(name: &str) -> VersionName {
        name.parse().unwrap()
    }

    #[test]
    fn a_full_hash_names_the_version_and_nothing_else() {
        let s = store(vec![
            version("v1", Some("aa"), 10),
            version("v2", Some("bb"), 20),
        ]);
        let v2 = on("v2");
        assert_eq!(
            s.version_of(&record("v2", Some(("v2", Some("bb")))), Some(30)),
            Found::On(&v2)
        );
        // Same samples, same size, same path: another disk under v2's name is not v2.
        let reused = store(vec![version("v2", Some("cc"), 40)]);
        assert_eq!(
            reused.version_of(&record("v2", Some(("v2", Some("bb")))), Some(30)),
            Found::Missing("v2 (sha256 bb…)".into())
        );
        // The same content under another name is the same disk.
        let renamed = store(vec![
            version("v1", Some("aa"), 10),
            version("w", Some("bb"), 50),
        ]);
        let w = on("w");
        assert_eq!(
            renamed.version_of(&record("v2", Some(("v2", Some("bb")))), Some(30)),
            Found::On(&w)
        );
        // A record about another store's file is not this store's business.
        let mut other = record("v2", Some(("v2", Some("dd"))));
        other.image = PathBuf::from("/elsewhere/golden.img");
        assert_eq!(s.version_of(&other, Some(30)), Found::Elsewhere);
    }

    #[test]
    fn an_old_record_needs_path_size_samples_an_unhashed_version_and_its_age() {
        let old = store(vec![version("v1", None, 10), version("v2", None, 20)]);
        let v2 = on("v2");
        let legacy = record("v2", None);
        assert_eq!(old.version_of(&legacy, Some(25)), Found::On(&v2));
        // Written before v2 existed: v2 is another disk given a pruned version's name.
        assert_eq!(
            old.version_of(&legacy, Some(15)),
            Found::Missing("v2".into())
        );
        assert_eq!(old.version_of(&legacy, None), Found::Missing("v2".into()));
        let mut changed = legacy.clone();
        changed.fingerprint = "other".into();
        assert_eq!(
            old.version_of(&changed, Some(25)),
            Found::Missing("v2".into())
        );
        // A version hashed when made was never under a record without its hash.
        let hashed = store(vec![version("v2", Some("bb"), 20)]);
        assert_eq!(
            hashed.version_of(&legacy, Some(25)),
            Found::Missing("v2".into())
        );
        // One hashed later by `image hash` still carries its old records.
        let mut later = version("v2", Some("bb"), 20);
        later.hashed_later = Some(30);
        assert_eq!(
            store(vec![later]).version_of(&legacy, Some(25)),
            Found::On(&v2)
        );
        // A record naming a version without a hash: the same rules, and the name.
        let named = record("v2", Some(("v2", None)));
        assert_eq!(old.version_of(&named, Some(25)), Found::On(&v2));
        let mut misnamed = named.clone();
        misnamed.version = Some(VersionId {
            name: "v1".into(),
            sha256: None,
        });
        assert_eq!(
            old.version_of(&misnamed, Some(25)),
            Found::Missing("v1 (sha256 unknown…)".into())
        );
    }
}
