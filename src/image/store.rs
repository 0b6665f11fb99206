//! An image's versions on disk. A store is one directory:
//!
//! ```text
//! <versions>/
//!   v1/disk.img  v1/version.json    a version: its disk (never written once made) and record
//!   v2/...
//!   promoted.json                   which version is current, and the test group's pins
//!   .incoming-v3-<pid>/             a version being made; renamed to v3/ only when whole
//!   .users/<hash>                   the COWs made over its versions ([`super::users`])
//!   .pruned/v0                      the record of a pruned version: its name is not reused
//! ```
//!
//! A version exists exactly when its directory does: it is made under another name and
//! renamed into place, so a crash leaves no half version.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::Error;
use super::golden_record::VersionId;

type Result<T, E = Error> = std::result::Result<T, E>;

/// A version's name: letters, digits, `.`, `_` and `-`, not starting with `.`, at most 64.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionName(String);

impl VersionName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `v<N>` as a number, for naming the next one.
    fn number(&self) -> Option<u64> {
        self.0.strip_prefix('v').and_then(|n| n.parse().ok())
    }
}

impl std::str::FromStr for VersionName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(VersionName(s.to_string()))
        } else {
            Err(format!("{s:?} is not a version name (letters, digits, '.', '_' and '-', at most 64, not starting with '.')"))
        }
    }
}

impl TryFrom<String> for VersionName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<VersionName> for String {
    fn from(v: VersionName) -> String {
        v.0
    }
}

impl fmt::Display for VersionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A version's record, `version.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub name: VersionName,
    pub parent: Option<VersionName>,
    /// Unix seconds.
    pub created: u64,
    #[serde(default)]
    pub note: String,
    /// How it was made: "import of <file>" or "commit of <pc>".
    pub made_from: String,
    pub size: u64,
    /// The `.golden` guard's fingerprint of `disk.img`.
    pub fingerprint: String,
    /// SHA-256 of the whole `disk.img`: taken when the version is made; absent in versions
    /// made before cowctl hashed them, until `cowctl image hash` adds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When `cowctl image hash` added `sha256` (Unix seconds); absent when taken at making.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_later: Option<u64>,
}

impl Version {
    /// What a COW's record names this version by.
    pub fn id(&self) -> VersionId {
        VersionId {
            name: self.name.to_string(),
            sha256: self.sha256.clone(),
        }
    }
}

/// Which version PCs move to at their next reset: the room's, or a test group's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub current: Option<VersionName>,
    #[serde(default)]
    pub pcs: BTreeMap<String, VersionName>,
}

impl Promoted {
    /// The version `pc` moves to at its next reset: its own pin, else the room's.
    pub fn target(&self, pc: &str) -> Option<&VersionName> {
        self.pcs.get(pc).or(self.current.as_ref())
    }
}

pub use crate::manifest::{
    PROMOTION_RECORD as PROMOTED, VERSION_DISK as DISK, VERSION_RECORD as RECORD,
};
const PRUNED: &str = ".pruned";
pub const INCOMING: &str = ".incoming-";

#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub versions: BTreeMap<VersionName, Version>,
    pub promoted: Promoted,
    /// Names of pruned versions, never given to a new one by [`Store::next_name`].
    pub pruned: Vec<VersionName>,
}

/// A version's record (`<version>/version.json`).
pub fn read_record(record: &Path) -> Result<Version> {
    let text = std::fs::read_to_string(record).map_err(|source| Error::Read {
        path: record.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::NotARecord {
        path: record.to_path_buf(),
        source,
    })
}

impl Store {
    /// Reads the store; a directory that does not exist yet is an empty store.
    pub fn open(dir: &Path) -> Result<Store> {
        let mut versions = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Read {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(|source| Error::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.parse::<VersionName>().ok())
            else {
                continue;
            };
            if !entry.path().is_dir() {
                continue;
            }
            let record = entry.path().join(RECORD);
            let v = read_record(&record)?;
            if v.name != name {
                return Err(Error::Misplaced {
                    record,
                    named: v.name.to_string(),
                    dir: entry.path(),
                });
            }
            versions.insert(name, v);
        }
        let promoted_path = dir.join(PROMOTED);
        let promoted = match std::fs::read_to_string(&promoted_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|source| Error::NotAPromotion {
                path: promoted_path,
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Promoted::default(),
            Err(source) => {
                return Err(Error::Read {
                    path: promoted_path,
                    source,
                })
            }
        };
        let pruned = std::fs::read_dir(dir.join(PRUNED))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        Ok(Store {
            dir: dir.to_path_buf(),
            versions,
            promoted,
            pruned,
        })
    }

    pub fn disk(&self, v: &VersionName) -> PathBuf {
        self.dir.join(v.as_str()).join(DISK)
    }

    pub fn version_dir(&self, v: &VersionName) -> PathBuf {
        self.dir.join(v.as_str())
    }

    pub fn get(&self, v: &VersionName) -> Result<&Version> {
        self.versions.get(v).ok_or_else(|| Error::NoVersion {
            store: self.dir.clone(),
            version: v.to_string(),
            have: self.names(),
        })
    }

    fn names(&self) -> String {
        if self.versions.is_empty() {
            return "none".into();
        }
        self.versions
            .keys()
            .map(VersionName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The room's current version.
    pub fn current(&self) -> Option<&VersionName> {
        self.promoted.current.as_ref()
    }

    /// The version `pc` moves to at its next reset (or starts on, without a COW).
    pub fn target(&self, pc: &str) -> Option<&VersionName> {
        self.promoted.target(pc)
    }

    /// `v<N+1>` after the highest `v<N>` there is or was (a pruned name is not reused).
    pub fn next_name(&self) -> VersionName {
        let n = self
            .versions
            .keys()
            .chain(&self.pruned)
            .filter_map(VersionName::number)
            .max()
            .unwrap_or(0);
        VersionName(format!("v{}", n + 1))
    }

    /// Refuses a name that is taken, by a version or by anything else in the directory.
    pub fn check_free(&self, v: &VersionName) -> Result<()> {
        let dir = self.version_dir(v);
        if self.versions.contains_key(v) || dir.symlink_metadata().is_ok() {
            return Err(Error::Taken {
                store: self.dir.clone(),
                version: v.to_string(),
                dir,
            });
        }
        Ok(())
    }

    /// Writes the promotion record durably.
    pub fn write_promoted(&self, p: &Promoted) -> Result<()> {
        let path = self.dir.join(PROMOTED);
        let text = serde_json::to_string_pretty(p)? + "\n";
        crate::base::durable::write_atomic(&path, text.as_bytes())
            .map_err(|source| Error::Write { path, source })
    }

    /// Rewrites a version's record with a field added (`image hash`); its disk is untouched.
    pub fn rewrite_record(&self, v: &Version) -> Result<()> {
        let record = self.version_dir(&v.name).join(RECORD);
        let text = serde_json::to_string_pretty(v)? + "\n";
        crate::base::durable::write_atomic(&record, text.as_bytes()).map_err(|source| {
            Error::Write {
                path: record,
                source,
            }
        })
    }

    /// Keeps a pruned version's record under `.pruned/`, so its name is never reused.
    pub fn bury(&self, v: &Version) -> Result<()> {
        let dir = self.dir.join(PRUNED);
        if !dir.is_dir() {
            std::fs::create_dir(&dir)
                .and_then(|()| crate::base::durable::sync_dir(&self.dir))
                .map_err(|source| Error::Create {
                    path: dir.clone(),
                    source,
                })?;
        }
        let path = dir.join(v.name.as_str());
        let text = serde_json::to_string_pretty(v)? + "\n";
        crate::base::durable::write_atomic(&path, text.as_bytes())
            .map_err(|source| Error::Write { path, source })
    }

    /// Folders of versions whose making was interrupted (left by a crash).
    pub fn incoming(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(INCOMING))
            .map(|e| e.path())
            .collect()
    }

    /// Puts a version made in `incoming` (holding `disk.img`) in place as `v`: its record is
    /// written and synced, then the folder is renamed to `v` without replacing anything.
    pub fn publish(&self, incoming: &Path, v: &Version) -> Result<()> {
        let record = incoming.join(RECORD);
        let text = serde_json::to_string_pretty(v)? + "\n";
        crate::base::durable::write_atomic(&record, text.as_bytes()).map_err(|source| {
            Error::Write {
                path: record,
                source,
            }
        })?;
        crate::base::durable::rename_new(incoming, &self.version_dir(&v.name)).map_err(|source| {
            Error::Publish {
                from: incoming.to_path_buf(),
                to: self.version_dir(&v.name),
                source,
            }
        })
    }

    /// A fresh folder to make version `v` in.
    pub fn begin(&self, v: &VersionName) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Create {
            path: self.dir.clone(),
            source,
        })?;
        let incoming = self
            .dir
            .join(format!("{INCOMING}{v}-{}", std::process::id()));
        std::fs::create_dir(&incoming).map_err(|source| Error::Create {
            path: incoming.clone(),
            source,
        })?;
        Ok(incoming)
    }
}

impl Store {
    /// Every version disk of the manifest's versioned images (as resolved).
    pub fn disks_of(m: &crate::manifest::Manifest) -> Vec<PathBuf> {
        m.images
            .values()
            .filter(|i| i.store.is_some() && i.version.is_some())
            .map(|i| i.path.clone())
            .collect()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_numbered() {
        assert!("v1".parse::<VersionName>().is_ok());
        assert!("2026-12.lab".parse::<VersionName>().is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(bad.parse::<VersionName>().is_err(), "{bad:?}");
        }
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("none")).unwrap();
        assert!(s.versions.is_empty());
        assert_eq!(s.next_name().as_str(), "v1");
        for n in ["v1", "v7", "golden"] {
            let name: VersionName = n.parse().unwrap();
            s.versions.insert(
                name.clone(),
                Version {
                    name,
                    parent: None,
                    created: 0,
                    note: String::new(),
                    made_from: String::new(),
                    size: 512,
                    fingerprint: String::new(),
                    sha256: None,
                    hashed_later: None,
                },
            );
        }
        assert_eq!(s.next_name().as_str(), "v8");
        s.pruned.push("v9".parse().unwrap());
        assert_eq!(s.next_name().as_str(), "v10", "a pruned name is not reused");
    }

    #[test]
    fn a_version_appears_only_when_published() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let v1: VersionName = "v1".parse().unwrap();
        let inc = s.begin(&v1).unwrap();
        std::fs::write(inc.join(DISK), vec![7u8; 4096]).unwrap();
        // Interrupted here: nothing is a version yet.
        let s = Store::open(d.path()).unwrap();
        assert!(s.versions.is_empty());
        assert_eq!(s.incoming(), vec![inc.clone()]);
        let record = Version {
            name: v1.clone(),
            parent: None,
            created: now(),
            note: "first".into(),
            made_from: "test".into(),
            size: 4096,
            fingerprint: "f".into(),
            sha256: Some("h".into()),
            hashed_later: None,
        };
        s.publish(&inc, &record).unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.get(&v1).unwrap(), &record);
        assert!(matches!(s.check_free(&v1), Err(Error::Taken { .. })));
        // A second publish under the same name never replaces the first.
        let inc2 = s.begin(&v1).unwrap();
        assert!(matches!(
            s.publish(&inc2, &record),
            Err(Error::Publish { .. })
        ));
        assert_eq!(std::fs::read(s.disk(&v1)).unwrap(), vec![7u8; 4096]);
    }

    #[test]
    fn targets_follow_pins_then_the_room() {
        let mut p = Promoted {
            current: Some("v1".parse().unwrap()),
            ..Promoted::default()
        };
        p.pcs.insert("pc-01".into(), "v2".parse().unwrap());
        let s = Store {
            dir: PathBuf::from("/x"),
            versions: BTreeMap::new(),
            promoted: p,
            pruned: Vec::new(),
        };
        assert_eq!(s.target("pc-01").unwrap().as_str(), "v2");
        assert_eq!(s.target("pc-02").unwrap().as_str(), "v1");
    }
}
