//! The versions of an rbd image (`rbd: NAME`), kept in the cluster so every gateway sees
//! the same ones: each version is an image `NAME.<version>` with its protected snapshot
//! `<version>` and its record in the image's metadata; which version is current, the test
//! group's pins and the names of pruned versions are in the pool's metadata. No file.
//!
//! A PC runs the version its clone was made of (the clone's parent, which the cluster
//! keeps); an import writes a new image; a commit turns the PC's clone itself into the
//! new version (nothing is copied) and gives the PC a fresh clone of it. A version with
//! clones (PCs', or later versions made by commit) cannot be removed: the cluster refuses.

use std::sync::Arc;

use super::golden_record::Golden;
use super::store::{now, Promoted, Store, Version, VersionName};
use super::{Error, Found, Result};
use crate::manifest::{Image, Manifest, Pc, RbdSnapshot};
use crate::rbdpc::Cluster;

/// The version image's metadata key holding its record (JSON, as `version.json`).
pub const RECORD_KEY: &str = "cowctl.version";
/// The object size of an imported version: what librbd reads from the cluster in one piece
/// when a PC first reads it (the PCs' clones have their own, smaller ones).
pub(super) const IMPORT_ORDER: u8 = 22;

pub struct RbdStore {
    /// The versions, promotion and pruned names, as a file store would hold them; its `dir`
    /// names the place (`rbd:POOL/NAME`) for messages.
    pub view: Store,
    pub cluster: Arc<Cluster>,
    pub base: String,
    /// The family's change lease, for a store opened to change it.
    _change: Option<crate::rbd::Held>,
}

/// Whether a change waits for another under way to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Up to a minute (`COWCTL_VERSIONS_WAIT_MS`, a test knob): a command of the admin's.
    AWhile,
    /// Not at all: the service, which must not hold up its other work.
    No,
}

impl Wait {
    fn time(self) -> std::time::Duration {
        match self {
            Wait::No => std::time::Duration::ZERO,
            Wait::AWhile => std::env::var("COWCTL_VERSIONS_WAIT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(
                    std::time::Duration::from_secs(60),
                    std::time::Duration::from_millis,
                ),
        }
    }
}

/// Takes the change lease of the versions `base` (of image `family`, for messages).
fn lease(cluster: &Cluster, base: &str, family: &str, wait: Wait) -> Result<crate::rbd::Held> {
    let cookie = crate::rbdpc::process_name();
    let object = change_object(base);
    match rbd(cluster.pool().hold(&object, "change", &cookie, wait.time()))? {
        Ok(held) => Ok(held),
        Err(holders) => Err(Error::VersionsBusy {
            family: family.to_string(),
            holders: holders.join(", "),
        }),
    }
}

/// The object whose lock is a family's change lease.
fn change_object(base: &str) -> String {
    format!("cowctl.versions.{base}.change")
}

fn promoted_key(base: &str) -> String {
    format!("cowctl.versions.{base}.promoted")
}

fn pruned_key(base: &str) -> String {
    format!("cowctl.versions.{base}.pruned")
}

/// A librbd result as the store's.
pub(super) fn rbd<T>(r: crate::rbd::Result<T>) -> Result<T> {
    r.map_err(|e| Error::Rbd(e.into()))
}

fn bad_record(what: String) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| Error::RbdRecord {
        what,
        reason: e.to_string(),
    }
}

impl RbdStore {
    /// The store of a family with `rbd_versions`, read from the cluster.
    pub fn open(m: &Manifest, image: &Image) -> Result<RbdStore> {
        Self::open_with(m, image, None)
    }

    /// The same, to change it (import, commit, promote, prune): read under the family's
    /// change lease, held in the cluster until the store is dropped, so no other cowctl
    /// (another gateway, another admin) changes the versions meanwhile and a change made
    /// from an older read never undoes another's.
    pub fn open_to_change(m: &Manifest, image: &Image, wait: Wait) -> Result<RbdStore> {
        Self::open_with(m, image, Some(wait))
    }

    fn open_with(m: &Manifest, image: &Image, change: Option<Wait>) -> Result<RbdStore> {
        let base = image.rbd_versions.clone().ok_or_else(|| Error::OneFile {
            family: image.family.clone(),
            path: image.path.clone(),
            manifest: m.path.clone(),
        })?;
        let cluster = crate::rbdpc::shared(m)?.ok_or_else(|| Error::NoCeph {
            family: image.family.clone(),
        })?;
        let held = match change {
            Some(wait) => Some(lease(&cluster, &base, &image.family, wait)?),
            None => None,
        };
        let view = read(&cluster, &base)?;
        Ok(RbdStore {
            view,
            cluster,
            base,
            _change: held,
        })
    }

    /// The same store read again under the family's change lease (waiting a while).
    pub(super) fn reopen_to_change(&self) -> Result<RbdStore> {
        let held = lease(&self.cluster, &self.base, &self.base, Wait::AWhile)?;
        Ok(RbdStore {
            view: read(&self.cluster, &self.base)?,
            cluster: self.cluster.clone(),
            base: self.base.clone(),
            _change: Some(held),
        })
    }

    pub fn image_name(&self, v: &VersionName) -> String {
        self.image_name_of(v.as_str())
    }

    fn image_name_of(&self, v: &str) -> String {
        format!("{}.{v}", self.base)
    }

    pub fn snapshot(&self, v: &VersionName) -> RbdSnapshot {
        RbdSnapshot {
            image: self.image_name(v),
            snap: v.to_string(),
        }
    }

    /// The manifest's image entry of one version (`family@version`).
    pub fn entry(&self, family: &Image, v: &VersionName) -> Image {
        let snapshot = self.snapshot(v);
        Image {
            name: super::key(&family.family, v),
            path: format!("rbd:{}/{snapshot}", self.cluster.pool().name()).into(),
            version: Some(v.to_string()),
            store: None,
            family: family.family.clone(),
            storage: family.storage,
            rbd: Some(snapshot),
            rbd_versions: Some(self.base.clone()),
        }
    }

    /// A store opened to change: its lease is still held (renewed in time), so what it
    /// read is still what the cluster has.
    pub(super) fn still_changing(&self) -> Result<()> {
        match &self._change {
            Some(held) if held.lost() => Err(Error::VersionsLeaseLost {
                family: self.view.dir.display().to_string(),
            }),
            _ => Ok(()),
        }
    }

    pub fn write_promoted(&self, p: &Promoted) -> Result<()> {
        self.still_changing()?;
        let text = serde_json::to_string(p).expect("serializable");
        let pool = self.cluster.pool();
        rbd(pool.set_metadata(&promoted_key(&self.base), &text))
    }

    /// The version `pc` runs: the one its clone was made of, when it is one of these.
    pub fn running(&self, m: &Manifest, pc: &Pc) -> Result<Found<'_>> {
        let Some(parent) = self.cluster.parent_of(m, pc)? else {
            return Ok(Found::Elsewhere);
        };
        let on = self
            .view
            .versions
            .keys()
            .find(|v| parent.image == self.image_name(v) && parent.snap == v.as_str());
        Ok(match on {
            Some(v) => Found::On(v),
            None => Found::Elsewhere,
        })
    }

    /// Refuses a name that a version has, had (pruned) or any image of the pool has.
    pub(super) fn check_free(&self, name: &VersionName) -> Result<()> {
        let image = self.image_name(name);
        let taken = self.view.versions.contains_key(name)
            || self.view.pruned.contains(name)
            || rbd(self.cluster.pool().exists(&image))?;
        if taken {
            return Err(Error::Taken {
                store: self.view.dir.clone(),
                version: name.to_string(),
                dir: self.cluster.pool().spec(&image).into(),
            });
        }
        Ok(())
    }

    /// `cowctl image commit` of an rbd PC whose clone is open in `disk` (under its lock,
    /// its I/O stopped): the clone becomes version `name` over the version it was made of,
    /// and the PC gets a fresh clone of it, returned opened and locked for serving.
    pub fn commit(
        &self,
        m: &Manifest,
        pc: &Pc,
        disk: &crate::engine::rbddisk::RbdDisk,
        name: Option<VersionName>,
        note: &str,
    ) -> Result<(super::Committed, crate::engine::rbddisk::RbdDisk)> {
        let start = std::time::Instant::now();
        let image = &m.images[&pc.image];
        // What the clone says, not what this gateway read last (another may have moved it).
        let parent = rbd(disk.image().parent())?
            .filter(|p| p.image == self.image_name_of(&p.snap))
            .and_then(|p| p.snap.parse::<VersionName>().ok())
            .filter(|v| self.view.versions.contains_key(v))
            .ok_or_else(|| Error::NotOnAVersion {
                pc: pc.name.clone(),
                family: image.family.clone(),
            })?;
        let own = disk.own_bytes();
        if own == 0 {
            return Err(Error::NothingToCommit {
                pc: pc.name.clone(),
                family: image.family.clone(),
                parent: parent.to_string(),
            });
        }
        let name = name.unwrap_or_else(|| self.view.next_name());
        self.check_free(&name)?;
        let version = Version {
            name: name.clone(),
            parent: Some(parent),
            created: now(),
            note: note.to_string(),
            made_from: format!("commit of {}", pc.name),
            size: disk.size(),
            fingerprint: String::new(),
            sha256: None,
            hashed_later: None,
        };
        let text = serde_json::to_string(&version).expect("serializable");
        self.still_changing()?;
        let fresh = self.cluster.commit_clone(
            m,
            pc,
            disk.image(),
            &self.image_name(&name),
            name.as_str(),
            (RECORD_KEY, &text),
        )?;
        let committed = super::Committed {
            version,
            built: super::build::Built {
                method: super::build::Method::RbdClone,
                chunks: own / disk.object_size().max(1),
                changed_bytes: own,
                elapsed: start.elapsed(),
            },
        };
        Ok((committed, fresh))
    }

    /// The clones of a version's snapshot: PCs' disks (of any manifest or gateway) and
    /// versions committed over it.
    pub fn clones_of(&self, v: &VersionName) -> Result<Vec<String>> {
        let pool = self.cluster.pool();
        let image = pool.open_read_only(&self.image_name(v), Some(v.as_str()));
        rbd(rbd(image)?.children())
    }

    /// Removes a version that nothing is cloned from. Read again first: one made current or
    /// promoted meanwhile (on another gateway) stays. Its name is recorded as pruned (never
    /// reused), its record dropped (it is no version from then on), then its snapshot and
    /// image go; the cluster refuses a snapshot with clones, so a PC made meanwhile keeps it.
    pub fn remove(&self, v: &VersionName) -> Result<()> {
        self.still_changing()?;
        let now = read(&self.cluster, &self.base)?;
        if now.current() == Some(v) || now.promoted.pcs.values().any(|p| p == v) {
            return Err(Error::PromotedMeanwhile {
                version: v.to_string(),
            });
        }
        let mut pruned = now.pruned;
        if !pruned.contains(v) {
            pruned.push(v.clone());
        }
        let pool = self.cluster.pool();
        let name = self.image_name(v);
        let image = rbd(pool.open(&name))?;
        // The snapshot first: refused while anything is cloned from it, so a PC reset onto
        // this version a moment ago keeps a version under it.
        rbd(image.remove_snapshot(v.as_str()))?;
        let text = serde_json::to_string(&pruned).expect("serializable");
        rbd(pool.set_metadata(&pruned_key(&self.base), &text))?;
        rbd(image.remove_metadata(RECORD_KEY))?;
        drop(image);
        rbd(pool.remove(&name))
    }

    /// What `cowctl image prune` would remove: versions that are not current, promoted,
    /// run by a PC of the manifest, or cloned (by any PC's disk, on any gateway, or by a
    /// version committed over it).
    pub fn prune_plan(&self, m: &Manifest, family: &str) -> Result<RbdPruning> {
        let mut out = RbdPruning::default();
        let store = &self.view;
        for v in store.versions.values() {
            let why = match super::kept_for_the_room(m, store, family, &v.name) {
                Some(why) => Some(why),
                None => {
                    let clones: Vec<String> = self
                        .clones_of(&v.name)?
                        .into_iter()
                        .map(|c| match c.strip_prefix(&format!("{}.", self.base)) {
                            Some(later) if store.versions.keys().any(|k| k.as_str() == later) => {
                                format!("{family}@{later}")
                            }
                            _ => c,
                        })
                        .collect();
                    (!clones.is_empty()).then(|| format!("cloned by {}", clones.join(", ")))
                }
            };
            match why {
                Some(w) => out.keep.push((v.name.clone(), w)),
                None => out.remove.push(v.clone()),
            }
        }
        out.leftovers = self.leftovers();
        Ok(out)
    }

    /// The bytes a version's image holds itself (its objects, as `rbd du` counts them).
    pub fn allocated(&self, v: &VersionName) -> u64 {
        let pool = self.cluster.pool();
        pool.open_read_only(&self.image_name(v), None)
            .and_then(|i| Ok(i.own_objects()?.len() as u64 * i.object_size()?))
            .unwrap_or(0)
    }

    /// Images an import or commit left half made (`NAME.incoming-*`).
    pub fn leftovers(&self) -> Vec<String> {
        let prefix = format!("{}.incoming-", self.base);
        let names = self.cluster.pool().list().unwrap_or_default();
        names
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }
}

/// The version `pc` moves to at its next reset when that is not the one it runs: only the
/// pool's promotion record is read (status asks this for every PC).
pub fn due_name(m: &Manifest, pc: &Pc) -> Option<String> {
    let image = &m.images[&pc.image];
    let base = image.rbd_versions.as_deref()?;
    let cluster = crate::rbdpc::shared(m).ok().flatten()?;
    let text = cluster
        .pool()
        .metadata(&promoted_key(base))
        .ok()
        .flatten()?;
    let promoted: Promoted = serde_json::from_str(&text).ok()?;
    let due = promoted.target(&pc.name)?.to_string();
    (image.version.as_deref() != Some(due.as_str())).then_some(due)
}

/// [`super::next_version`] of a PC on an rbd family's version.
pub(super) fn next_version(
    m: &Manifest,
    pc: &Pc,
    image: &Image,
) -> Result<Option<(Image, Golden)>> {
    let store = RbdStore::open(m, image)?;
    let Some(v) = store.view.target(&pc.name) else {
        return Ok(None);
    };
    if image.version.as_deref() == Some(v.as_str()) {
        return Ok(None);
    }
    let version = store.view.get(v)?;
    let due = store.entry(image, v);
    let golden = Golden {
        image: due.path.clone(),
        size: version.size,
        fingerprint: String::new(),
        resets: 0,
        last_reset: None,
        version: Some(version.id()),
    };
    Ok(Some((due, golden)))
}

/// What a prune of an rbd family would do.
#[derive(Debug, Default, serde::Serialize)]
pub struct RbdPruning {
    pub remove: Vec<Version>,
    pub keep: Vec<(VersionName, String)>,
    /// Images an import or commit left half made (or one under way): named, not removed.
    pub leftovers: Vec<String>,
}

/// The versions (images `base.<v>` whose record names `<v>`), promotion and pruned names.
fn read(cluster: &Cluster, base: &str) -> Result<Store> {
    let pool = cluster.pool();
    let mut view = Store {
        dir: format!("rbd:{}/{base}", pool.name()).into(),
        versions: Default::default(),
        promoted: Promoted::default(),
        pruned: Vec::new(),
    };
    let prefix = format!("{base}.");
    for name in rbd(pool.list())? {
        let Some(v) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(v) = v.parse::<VersionName>() else {
            continue;
        };
        let image = match pool.open_read_only(&name, None) {
            Err(e) if e.is_not_found() => continue,
            other => rbd(other)?,
        };
        let Some(text) = rbd(image.metadata(RECORD_KEY))? else {
            continue;
        };
        // Half made or half removed: not a version until its snapshot can be cloned.
        if rbd(image.snapshot_protected_exists(v.as_str()))? != (true, true) {
            continue;
        }
        let record: Version = serde_json::from_str(&text).map_err(bad_record(pool.spec(&name)))?;
        if record.name == v {
            view.versions.insert(v, record);
        }
    }
    if let Some(text) = rbd(pool.metadata(&promoted_key(base)))? {
        view.promoted = serde_json::from_str(&text).map_err(bad_record(promoted_key(base)))?;
    }
    if let Some(text) = rbd(pool.metadata(&pruned_key(base)))? {
        view.pruned = serde_json::from_str(&text).map_err(bad_record(pruned_key(base)))?;
    }
    Ok(view)
}
