//! Golden image versions: immutable disks in a store per image ([`store`]), made by import
//! ([`import`]) or by committing a PC's disk ([`build`]), promoted for the room or a test
//! group, pruned when nothing uses them.
//!
//! Which version a PC runs is not remembered anywhere but in its COW's `.golden` record:
//! a COW is only meaningful over the disk it was written against. [`resolve`] turns a
//! manifest's versioned images into one image per version, each PC on its COW's version
//! (or, without a COW yet, on the version it is due); resets move PCs to the promoted one.

pub mod build;
pub mod import;
pub mod space;
pub mod store;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::control::sidecar::{self, Golden};
use crate::manifest::{Image, Manifest, Pc};
pub use store::{Store, Version, VersionName};

/// The key a version has among the manifest's images: `win10@v2`.
pub fn key(image: &str, v: &VersionName) -> String {
    format!("{image}@{v}")
}

/// The image entry of one version.
pub fn entry(family: &str, store: &Store, v: &Version) -> Image {
    Image {
        name: key(family, &v.name),
        path: store.disk(&v.name),
        version: Some(v.name.to_string()),
        store: Some(store.dir.clone()),
        family: family.to_string(),
    }
}

/// One problem found while resolving: the field it is about and what is wrong.
pub type Problem = (String, String);

/// Replaces each versioned image by one image per version and puts every PC on its own:
/// the version its COW was made against, else the one it is due.
pub fn resolve(m: &mut Manifest) -> Vec<Problem> {
    let mut problems = Vec::new();
    let versioned: Vec<Image> = m
        .images
        .values()
        .filter(|i| i.store.is_some())
        .cloned()
        .collect();
    for image in versioned {
        let dir = image.store.as_deref().expect("filtered");
        let field = format!("images.{}.versions", image.name);
        let store = match Store::open(dir) {
            Ok(s) => s,
            Err(e) => {
                problems.push((field, format!("{e:#}")));
                continue;
            }
        };
        let users: Vec<usize> = (0..m.pcs.len())
            .filter(|&i| m.pcs[i].image == image.name)
            .collect();
        if store.versions.is_empty() {
            if !users.is_empty() {
                problems.push((field, format!("{} holds no version of {} yet: make the first with `cowctl image import FILE --image {}`", dir.display(), image.name, image.name)));
            }
            continue;
        }
        m.images.remove(&image.name);
        for v in store.versions.values() {
            let e = entry(&image.name, &store, v);
            m.images.insert(e.name.clone(), e);
        }
        for i in users {
            let pc = &m.pcs[i];
            let running = running_version(&store, pc);
            match running.or_else(|| store.target(&pc.name).cloned()) {
                Some(v) if store.versions.contains_key(&v) => m.pcs[i].image = key(&image.name, &v),
                Some(v) => problems.push((field.clone(), format!("{}: {} promotes version {v}, which {} does not hold", pc.name, dir.join("promoted.json").display(), dir.display()))),
                None => problems.push((field.clone(), format!("no version of {} is current yet: make one current with `cowctl image promote {} VERSION`", image.name, image.name))),
            }
        }
    }
    problems
}

/// The version a PC's COW was made against, when it has one of this store's.
fn running_version(store: &Store, pc: &Pc) -> Option<VersionName> {
    sidecar::read(&pc.cow)
        .ok()
        .flatten()
        .and_then(|g| store.version_of(&g).cloned())
}

/// The version `pc` moves to at its next reset when that is not the one it runs, read from
/// the store now (it may have been committed and promoted after the manifest was loaded).
pub fn due(m: &Manifest, pc: &Pc) -> Result<Option<(Image, Golden)>> {
    let image = &m.images[&pc.image];
    let Some(dir) = image.store.as_deref() else {
        return Ok(None);
    };
    let store = Store::open(dir)?;
    let Some(v) = store.target(&pc.name) else {
        return Ok(None);
    };
    if image.version.as_deref() == Some(v.as_str()) {
        return Ok(None);
    }
    let version = store.get(v)?;
    Ok(Some((
        entry(&image.family, &store, version),
        golden_of(&store, version),
    )))
}

/// The `.golden` record of a COW made over this version.
pub fn golden_of(store: &Store, v: &Version) -> Golden {
    Golden {
        image: store.disk(&v.name),
        size: v.size,
        fingerprint: v.fingerprint.clone(),
        resets: 0,
        last_reset: None,
    }
}

/// The store of a versioned image of the manifest.
pub fn open(m: &Manifest, image: &str) -> Result<Store> {
    let family = image.split('@').next().unwrap_or(image);
    let img = m
        .images
        .values()
        .find(|i| i.family == family)
        .ok_or_else(|| anyhow!("no image named {family:?} in {}", m.path.display()))?;
    let Some(dir) = img.store.as_deref() else {
        bail!(
            "image {family} is one file (images.{family}.path: {}): give it `versions: DIR` in {} to keep versions",
            img.path.display(),
            m.path.display()
        );
    };
    Store::open(dir)
}

/// What a new version records, made of the disk in `incoming` (already synced).
fn record(
    store: &Store,
    incoming: &Path,
    name: VersionName,
    parent: Option<VersionName>,
    note: &str,
    made_from: String,
) -> Result<Version> {
    let disk = incoming.join(store::DISK);
    let g = sidecar::fingerprint(&disk)?;
    if g.size == 0 || g.size % 512 != 0 {
        bail!(
            "{} is {} bytes, not a whole number of sectors",
            disk.display(),
            g.size
        );
    }
    if let Some(other) = store.versions.values().find(|v| v.size != g.size) {
        bail!(
            "the new disk is {} bytes but version {} is {}: every version of an image has one size, since PCs move between them under a live export",
            g.size,
            other.name,
            other.size
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o444))?;
    Ok(Version {
        name,
        parent,
        created: store::now(),
        note: note.to_string(),
        made_from,
        size: g.size,
        fingerprint: g.fingerprint,
    })
}

/// Runs `make` in a fresh incoming folder and publishes the result; on failure the folder
/// (this run's own, half made) is removed and no version appears.
fn make_version(
    store: &Store,
    name: &VersionName,
    make: impl FnOnce(&Path) -> Result<Version>,
) -> Result<Version> {
    store.check_free(name)?;
    let incoming = store.begin(name)?;
    let made = make(&incoming).and_then(|v| store.publish(&incoming, &v).map(|()| v));
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&incoming);
    }
    made
}

/// `cowctl image import`: a new version from a disk image file.
pub fn import(store: &Store, src: &Path, name: Option<VersionName>, note: &str) -> Result<Version> {
    let format = import::format_of(src)?;
    let name = name.unwrap_or_else(|| store.next_name());
    let v = make_version(store, &name, |incoming| {
        import::convert(src, &format, &incoming.join(store::DISK))?;
        let made_from = format!("import of {} ({format})", src.display());
        record(store, incoming, name.clone(), None, note, made_from)
    })?;
    if store.current().is_none() {
        // The first version: nothing can run before one is current.
        let mut p = store.promoted.clone();
        p.current = Some(v.name.clone());
        store.write_promoted(&p)?;
    }
    Ok(v)
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Committed {
    pub version: Version,
    pub built: build::Built,
}

/// `cowctl image commit`: a new version holding the disk a PC sees (its version with its
/// COW over it). The COW must not change meanwhile: the caller has stopped the PC's I/O.
pub fn commit(
    store: &Store,
    parent: &VersionName,
    cow: &Path,
    pc: &str,
    name: Option<VersionName>,
    note: &str,
) -> Result<Committed> {
    store.get(parent)?;
    let name = name.unwrap_or_else(|| store.next_name());
    let mut built = None;
    let version = make_version(store, &name, |incoming| {
        built = Some(
            build::build(&store.disk(parent), cow, &incoming.join(store::DISK))
                .with_context(|| format!("committing {pc}"))?,
        );
        record(
            store,
            incoming,
            name.clone(),
            Some(parent.clone()),
            note,
            format!("commit of {pc}"),
        )
    })?;
    Ok(Committed {
        version,
        built: built.expect("made"),
    })
}

/// `cowctl image promote`: `v` becomes the room's version (clearing the test group's pins),
/// or the version of the PCs named.
pub fn promote(store: &Store, v: &VersionName, pcs: &[String]) -> Result<store::Promoted> {
    store.get(v)?;
    let mut p = store.promoted.clone();
    if pcs.is_empty() {
        p.current = Some(v.clone());
        p.pcs.clear();
    } else {
        for pc in pcs {
            if p.current.as_ref() == Some(v) {
                p.pcs.remove(pc);
            } else {
                p.pcs.insert(pc.clone(), v.clone());
            }
        }
    }
    store.write_promoted(&p)?;
    Ok(p)
}

/// A commit of `pc`'s disk as it is on file: its COW must be quiet (nothing serves it, or
/// its I/O is stopped). Refuses a PC on an unversioned image and a COW with no changes.
pub fn commit_pc(
    m: &Manifest,
    pc: &Pc,
    name: Option<VersionName>,
    note: &str,
) -> Result<Committed> {
    let image = &m.images[&pc.image];
    let (Some(dir), Some(parent)) = (image.store.as_deref(), image.version.as_deref()) else {
        bail!(
            "{}: image {} is one file (images.{}.path): give it `versions: DIR` to commit PCs into new versions",
            pc.name,
            image.family,
            image.family
        );
    };
    let store = Store::open(dir)?;
    let parent: VersionName = parent.parse().map_err(|e: String| anyhow!(e))?;
    let changed = std::fs::File::open(&pc.cow)
        .ok()
        .and_then(|f| crate::cow::LoadedStore::load(&f, Some(pc.chunk_sectors())).ok())
        .is_some_and(|s| !s.exceptions.is_empty());
    if !changed {
        bail!(
            "{}: its disk has no changes over {}@{parent}: there is nothing to commit",
            pc.name,
            image.family
        );
    }
    commit(&store, &parent, &pc.cow, &pc.name, name, note)
}

/// What `cowctl image prune` would remove, and why each other version stays.
#[derive(Debug, Serialize)]
pub struct Pruning {
    pub remove: Vec<Version>,
    pub keep: Vec<(VersionName, String)>,
    /// Folders of commits or imports that died half way (their process is gone).
    pub leftovers: Vec<std::path::PathBuf>,
}

/// Versions that are not current, not promoted to any PC, not under any PC's COW, not on a
/// loop device and not open in any process.
pub fn prune_plan(m: &Manifest, store: &Store, family: &str) -> Pruning {
    let loops =
        crate::kernel::loopdev::Loops::list(&crate::kernel::loopdev::SysLoops).unwrap_or_default();
    let mut out = Pruning {
        remove: Vec::new(),
        keep: Vec::new(),
        leftovers: Vec::new(),
    };
    for v in store.versions.values() {
        let disk = store.disk(&v.name);
        let users: Vec<&str> = m
            .pcs
            .iter()
            .filter(|p| p.image == key(family, &v.name))
            .map(|p| p.name.as_str())
            .collect();
        let pinned: Vec<&str> = store
            .promoted
            .pcs
            .iter()
            .filter(|(_, pv)| **pv == v.name)
            .map(|(p, _)| p.as_str())
            .collect();
        let holders = crate::filekind::open_by(&disk).unwrap_or_default();
        let why = if store.current() == Some(&v.name) {
            Some("current".to_string())
        } else if !pinned.is_empty() {
            Some(format!("promoted to {}", pinned.join(", ")))
        } else if !users.is_empty() {
            Some(format!("{} run on it", users.join(", ")))
        } else if let Some(l) = loops
            .iter()
            .find(|l| crate::fileid::same_file(&l.backing, &disk))
        {
            Some(format!("attached to {}", l.dev.display()))
        } else if !holders.is_empty() {
            Some(format!("open in {}", holders.join(", ")))
        } else {
            None
        };
        match why {
            Some(w) => out.keep.push((v.name.clone(), w)),
            None => out.remove.push(v.clone()),
        }
    }
    for dir in store.incoming() {
        let pid = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            out.leftovers.push(dir);
        }
    }
    out
}

/// Removes one version: its folder is renamed out of the store's names first, so it stops
/// being a version at once, then deleted.
pub fn remove_version(store: &Store, v: &VersionName) -> Result<()> {
    let dir = store.version_dir(v);
    let gone = store
        .dir
        .join(format!(".pruning-{v}-{}", std::process::id()));
    crate::durable::rename_new(&dir, &gone)
        .with_context(|| format!("cannot move {} aside", dir.display()))?;
    std::fs::remove_dir_all(&gone).with_context(|| format!("cannot remove {}", gone.display()))
}
