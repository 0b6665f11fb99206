//! Golden image versions: immutable disks in a store per image ([`store`]), made by import
//! ([`import`]) or by committing a PC's disk ([`build`]), promoted for the room or a test
//! group, pruned when nothing uses them.
//!
//! Which version a PC runs is not remembered anywhere but in its COW's `.golden` record:
//! a COW is only meaningful over the disk it was written against. [`resolve`] turns a
//! manifest's versioned images into one image per version, each PC on its COW's version
//! (or, without a COW yet, on the version it is due); resets move PCs to the promoted one.

pub mod build;
pub mod error;
pub mod golden_record;
pub mod hash;
pub mod identity;
pub mod import;
mod rbdimport;
pub mod rbdstore;
mod resolve;
pub mod space;
pub mod store;
pub mod users;
pub mod versions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::{Image, Manifest, Pc, Storage};
pub use error::{CopyError, Error};
use golden_record::Golden;
pub use identity::Found;
pub use rbdstore::RbdStore;
pub use resolve::resolve;
pub use store::{Store, Version, VersionName};
pub use versions::Versions;

type Result<T, E = Error> = std::result::Result<T, E>;

/// The key a version has among the manifest's images: `win10@v2`.
pub fn key(image: &str, v: &VersionName) -> String {
    format!("{image}@{v}")
}

/// The image entry of one version.
pub fn entry(family: &Image, store: &Store, v: &Version) -> Image {
    Image {
        name: key(&family.family, &v.name),
        path: store.disk(&v.name),
        version: Some(v.name.to_string()),
        store: Some(store.dir.clone()),
        family: family.family.clone(),
        storage: family.storage,
        rbd: family.rbd.clone(),
        rbd_versions: family.rbd_versions.clone(),
    }
}

/// One problem found while resolving: the field it is about and what is wrong.
pub type Problem = (String, String);

/// Reads and validates the manifest (`Manifest::load`), then puts each PC on its image
/// version (`resolve`); problems with versions are reported at their fields' lines, like
/// the manifest's own errors.
pub fn load_manifest(path: &Path) -> Result<Manifest, crate::manifest::ManifestErrors> {
    let text = Manifest::read_text(path)?;
    let mut m = Manifest::parse(path, &text)?;
    if let Some(here) = m.gateway_name() {
        m = m
            .as_gateway(&here)
            .map_err(|e| Manifest::located(path, &text, vec![("gateways".into(), e)]))?;
    }
    let problems = resolve(&mut m);
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(Manifest::located(path, &text, problems))
    }
}

/// The version a PC's COW was made against, when it has one of this store's.
pub(super) fn running_version<'a>(store: &'a Store, pc: &Pc) -> Found<'a> {
    match golden_record::read(&pc.cow).ok().flatten() {
        Some(g) => store.version_of(&g, golden_record::written(&pc.cow)),
        None => Found::Elsewhere,
    }
}

/// Why `pc`'s COW must not be laid over the version the manifest resolved it to: its record
/// names a version the store no longer holds, or (changed since loading) another one.
pub fn cow_problem(m: &Manifest, store: &Store, pc: &Pc) -> Option<String> {
    let image = &m.images[&pc.image];
    let on = image.version.as_deref()?;
    let family = &image.family;
    let (cow, dir) = (pc.cow.display(), store.dir.display());
    match running_version(store, pc) {
        Found::On(v) if v.as_str() == on => None,
        Found::On(v) => Some(format!(
            "{}: COW {cow} lies over {family}@{v}, not {family}@{on}: the store changed while cowctl ran; run the command again",
            pc.name
        )),
        Found::Missing(what) => Some(format!(
            "{}: COW {cow} was made over {family}@{what}, which {dir} no longer holds (pruned, or another disk now has its name); laid over any other version it would show garbage: reset {} (`cowctl reset {}`, its changes are lost) to start it on {family}@{on}, or put the version back into {dir}",
            pc.name, pc.name, pc.name
        )),
        Found::Elsewhere => None,
    }
}

/// The version `pc` moves to at its next reset when that is not the one it runs, read from
/// the store now (it may have been committed and promoted after the manifest was loaded).
pub fn next_version(m: &Manifest, pc: &Pc) -> Result<Option<(Image, Golden)>> {
    let image = &m.images[&pc.image];
    if image.rbd_versions.is_some() {
        return rbdstore::next_version(m, pc, image);
    }
    let Some(dir) = image.store.as_deref() else {
        return Ok(None);
    };
    next_version_in(m, pc, &Store::open(dir)?)
}

/// [`next_version`] with the PC's store already read (status reads it once per PC for this and for
/// [`cow_problem`]).
pub fn next_version_in(m: &Manifest, pc: &Pc, store: &Store) -> Result<Option<(Image, Golden)>> {
    let image = &m.images[&pc.image];
    let Some(v) = store.target(&pc.name) else {
        return Ok(None);
    };
    let lost = matches!(running_version(store, pc), Found::Missing(_));
    if image.version.as_deref() == Some(v.as_str()) && !lost {
        return Ok(None);
    }
    let version = store.get(v)?;
    Ok(Some((
        entry(image, store, version),
        golden_of(store, version),
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
        version: Some(v.id()),
    }
}

/// The `.golden` record of a COW made over the image file `disk` as it is now: its size and
/// fingerprint, and when `disk` is a version's (`<store>/<v>/disk.img`), that version's
/// identity.
pub fn golden_for(disk: &Path) -> Result<Golden> {
    let mut g = golden_record::fingerprint(disk)?;
    let folder = disk
        .parent()
        .filter(|_| disk.file_name() == Some(store::DISK.as_ref()));
    if let Some(record) = folder.map(|f| f.join(store::RECORD)).filter(|r| r.exists()) {
        let v = store::read_record(&record)?;
        g.version = Some(v.id());
    }
    Ok(g)
}

/// The store of a family whose versions are in a Ceph pool; None for any other image.
pub fn open_rbd(m: &Manifest, image: &str) -> Result<Option<RbdStore>> {
    open_rbd_with(m, image, RbdStore::open)
}

/// The same, to change it: under the family's change lease ([`RbdStore::open_to_change`]).
pub fn open_rbd_to_change(m: &Manifest, image: &str) -> Result<Option<RbdStore>> {
    open_rbd_with(m, image, |m, i| {
        RbdStore::open_to_change(m, i, rbdstore::Wait::AWhile)
    })
}

fn open_rbd_with(
    m: &Manifest,
    image: &str,
    open: fn(&Manifest, &Image) -> Result<RbdStore>,
) -> Result<Option<RbdStore>> {
    let family = image.split('@').next().unwrap_or(image);
    match m.images.values().find(|i| i.family == family) {
        Some(i) if i.rbd_versions.is_some() => Ok(Some(open(m, i)?)),
        _ => Ok(None),
    }
}

/// The store of a versioned image of the manifest.
pub fn open(m: &Manifest, image: &str) -> Result<Store> {
    let family = image.split('@').next().unwrap_or(image);
    let img = m
        .images
        .values()
        .find(|i| i.family == family)
        .ok_or_else(|| Error::NoImage {
            family: family.to_string(),
            manifest: m.path.clone(),
        })?;
    let Some(dir) = img.store.as_deref() else {
        return Err(Error::OneFile {
            family: family.to_string(),
            path: img.path.clone(),
            manifest: m.path.clone(),
        });
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
    let g = golden_record::fingerprint(&disk)?;
    let sha256 = hash::sha256_file(&disk)?;
    if g.size == 0 || g.size % 512 != 0 {
        return Err(Error::NotSectors { disk, size: g.size });
    }
    if let Some(other) = store.versions.values().find(|v| v.size != g.size) {
        return Err(Error::SizeDiffers {
            size: g.size,
            other: other.name.to_string(),
            other_size: other.size,
        });
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
        sha256: Some(sha256),
        hashed_later: None,
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
/// COW over it, or its clone). The COW must not change meanwhile: the caller has stopped the PC's I/O.
pub fn commit(
    store: &Store,
    parent: &VersionName,
    cow: &Path,
    changes: Changes,
    pc: &str,
    name: Option<VersionName>,
    note: &str,
) -> Result<Committed> {
    store.get(parent)?;
    let name = name.unwrap_or_else(|| store.next_name());
    let mut built = None;
    let version = make_version(store, &name, |incoming| {
        built = Some(
            match changes {
                Changes::Cow => build::build(&store.disk(parent), cow, &incoming.join(store::DISK)),
                Changes::Clone { own_bytes } => {
                    build::build_from_clone(cow, &incoming.join(store::DISK), own_bytes)
                }
            }
            .map_err(|e| Error::Commit {
                pc: pc.to_string(),
                source: Box::new(e),
            })?,
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
pub fn promote(versions: &Versions, v: &VersionName, pcs: &[String]) -> Result<store::Promoted> {
    let store = versions.view();
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
    versions.write_promoted(&p)?;
    Ok(p)
}

/// A commit of `pc`'s disk as it is on file: its COW must be quiet (nothing serves it, or
/// its I/O is stopped). Refuses a PC on an unversioned image and a COW with no changes.
pub fn commit_pc(
    m: &Manifest,
    pc: &Pc,
    name: Option<VersionName>,
    note: &str,
    wait: rbdstore::Wait,
) -> Result<Committed> {
    let image = &m.images[&pc.image];
    if image.storage == Storage::Rbd {
        if image.rbd_versions.is_none() {
            return Err(Error::CommitRbd {
                pc: pc.name.clone(),
                family: image.family.clone(),
            });
        }
        // Nobody serves it here: its clone is opened (and locked) for the commit.
        let store = RbdStore::open_to_change(m, image, wait)?;
        let disk = store.cluster.open(m, pc, false)?;
        return store.commit(m, pc, &disk, name, note).map(|(c, _fresh)| c);
    }
    let (Some(dir), Some(parent)) = (image.store.as_deref(), image.version.as_deref()) else {
        return Err(Error::CommitOneFile {
            pc: pc.name.clone(),
            family: image.family.clone(),
        });
    };
    let store = Store::open(dir)?;
    if let Some(problem) = cow_problem(m, &store, pc) {
        return Err(Error::VersionGone {
            pc: pc.name.clone(),
            problem,
        });
    }
    let parent: VersionName = parent
        .parse()
        .map_err(|reason| Error::BadVersionName { reason })?;
    let changes = match image.storage {
        // An rbd image has no store of versions in files: refused above.
        Storage::Cow | Storage::Rbd => Changes::Cow,
        Storage::Reflink => Changes::Clone {
            own_bytes: crate::reflink::extents::own_bytes(&pc.cow, &image.path).unwrap_or(0),
        },
    };
    let changed = match changes {
        Changes::Cow => std::fs::File::open(&pc.cow)
            .ok()
            .and_then(|f| crate::cow::LoadedStore::load(&f, Some(pc.chunk_sectors())).ok())
            .is_some_and(|s| !s.exceptions.is_empty()),
        Changes::Clone { own_bytes } => own_bytes > 0,
    };
    if !changed {
        return Err(Error::NothingToCommit {
            pc: pc.name.clone(),
            family: image.family.clone(),
            parent: parent.to_string(),
        });
    }
    commit(&store, &parent, &pc.cow, changes, &pc.name, name, note)
}

/// How a PC's disk holds its changes, for a commit: a COW's chunks over the parent, or a
/// whole clone that no longer shares `own_bytes` with it.
#[derive(Debug, Clone, Copy)]
pub enum Changes {
    Cow,
    Clone { own_bytes: u64 },
}

/// What `cowctl image prune` would remove, and why each other version stays.
#[derive(Debug, Serialize)]
pub struct Pruning {
    pub remove: Vec<Version>,
    pub keep: Vec<(VersionName, String)>,
    /// Folders of commits or imports that died half way (their process is gone).
    pub leftovers: Vec<std::path::PathBuf>,
    /// Back-references to COWs whose `.golden` record is gone.
    pub stale: Vec<std::path::PathBuf>,
}

/// For each version, the COWs on this server whose record names it (whichever manifest
/// they are in), from the store's back-references; and the references whose record is gone.
/// A COW whose record names a file outside the store keeps every version with that file's
/// size and fingerprint: it may have been imported from it.
fn cows_on(store: &Store) -> (BTreeMap<VersionName, Vec<String>>, Vec<PathBuf>) {
    let mut on: BTreeMap<VersionName, Vec<String>> = BTreeMap::new();
    let mut stale = Vec::new();
    for (reference, cow) in users::list(&store.dir) {
        let says = format!("COW {}", cow.display());
        let mut keep = |v: &VersionName, why: String| on.entry(v.clone()).or_default().push(why);
        match golden_record::read(&cow) {
            Ok(None) => stale.push(reference),
            Err(e) => {
                let e = e.with_causes();
                store
                    .versions
                    .keys()
                    .for_each(|v| keep(v, format!("{says} (its record is unreadable: {e})")))
            }
            Ok(Some(g)) => match store.version_of(&g, golden_record::written(&cow)) {
                Found::On(v) => keep(v, says),
                Found::Missing(_) => {}
                Found::Elsewhere => store
                    .versions
                    .values()
                    .filter(|v| v.size == g.size && v.fingerprint == g.fingerprint)
                    .for_each(|v| {
                        keep(
                            &v.name,
                            format!("{says} (its record names {})", g.image.display()),
                        )
                    }),
            },
        }
    }
    (on, stale)
}

/// Versions that are not current, not promoted to any PC, not under any COW on this
/// server, not on a loop device and not open in any process.
pub fn prune_plan(
    m: &Manifest,
    store: &Store,
    family: &str,
    loops: &dyn crate::kernel::loopdev::Loops,
) -> Pruning {
    let loops = loops.list().unwrap_or_default();
    let (cows, stale) = cows_on(store);
    let mut out = Pruning {
        remove: Vec::new(),
        keep: Vec::new(),
        leftovers: Vec::new(),
        stale,
    };
    for v in store.versions.values() {
        let disk = store.disk(&v.name);
        let why = kept_for_the_room(m, store, family, &v.name)
            .or_else(|| {
                let cows = cows.get(&v.name)?;
                Some(format!("{} runs on it", cows.join(", ")))
            })
            .or_else(|| {
                let l =
                    (loops.iter()).find(|l| crate::base::fileid::same_file(&l.backing, &disk))?;
                Some(format!("attached to {}", l.dev.display()))
            })
            .or_else(|| {
                let holders = crate::engine::filekind::open_by(&disk).unwrap_or_default();
                (!holders.is_empty()).then(|| format!("open in {}", holders.join(", ")))
            });
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

/// Why a version stays, wherever its store: it is current, promoted to PCs, or the
/// manifest's PCs run on it.
pub(super) fn kept_for_the_room(
    m: &Manifest,
    store: &Store,
    family: &str,
    v: &VersionName,
) -> Option<String> {
    let users: Vec<&str> = (m.pcs.iter())
        .filter(|p| p.image == key(family, v))
        .map(|p| p.name.as_str())
        .collect();
    let pinned: Vec<&str> = (store.promoted.pcs.iter())
        .filter(|(_, pv)| *pv == v)
        .map(|(p, _)| p.as_str())
        .collect();
    if store.current() == Some(v) {
        Some("current".to_string())
    } else if !pinned.is_empty() {
        Some(format!("promoted to {}", pinned.join(", ")))
    } else if !users.is_empty() {
        Some(format!("{} run on it", users.join(", ")))
    } else {
        None
    }
}

/// Removes one version: its record is kept under `.pruned/` (its name is never reused), its
/// folder renamed out of the store's names, so it stops being a version at once, then deleted.
pub fn remove_version(store: &Store, v: &VersionName) -> Result<()> {
    store.bury(store.get(v)?)?;
    let dir = store.version_dir(v);
    let gone = store
        .dir
        .join(format!(".pruning-{v}-{}", std::process::id()));
    crate::base::durable::rename_new(&dir, &gone)
        .map_err(|source| Error::MoveAside { path: dir, source })?;
    std::fs::remove_dir_all(&gone).map_err(|source| Error::Remove { path: gone, source })
}
