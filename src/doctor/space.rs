//! The file systems of the COW directories and version stores: type, free space against
//! the room's worst case (every COW at its largest: `cow_size`, or `autoextend.max`, less
//! what it takes already), and whether they share blocks (FICLONE between two small files
//! made there and removed).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Area, Check};
use crate::base::units::human;
use crate::manifest::{Manifest, Storage};

/// What statfs says of a directory's file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fs {
    pub kind: String,
    pub free: u64,
}

pub fn statfs(dir: &Path) -> std::io::Result<Fs> {
    let s = nix::sys::statfs::statfs(dir).map_err(std::io::Error::from)?;
    let v = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)]
    let magic = i64::from(s.filesystem_type().0);
    Ok(Fs {
        kind: crate::reflink::fs::FsKind::from_magic(magic).to_string(),
        free: v.blocks_available() * v.fragment_size(),
    })
}

/// Whether the directory's file system shares blocks between files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reflink {
    Yes,
    /// FICLONE refused, with the error.
    No(String),
    /// The probe's files could not be made there.
    Unknown(String),
}

/// Tries FICLONE between two files made in `dir` (both removed before it returns).
pub fn reflink(dir: &Path) -> Reflink {
    use crate::reflink::ReflinkError;
    match crate::reflink::clone::probe(dir) {
        Ok(()) => Reflink::Yes,
        Err(e @ ReflinkError::CannotClone { .. }) => Reflink::No(e.to_string()),
        Err(ReflinkError::Clone { source, .. }) => {
            Reflink::Unknown(format!("cannot make a file there: {source}"))
        }
        Err(e) => Reflink::Unknown(e.to_string()),
    }
}

/// The directory itself when it exists, else None.
fn existing(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.dev())
}

/// The PCs' COWs of one file system.
#[derive(Default)]
struct Room {
    dirs: Vec<PathBuf>,
    pcs: usize,
    worst: u64,
    used: u64,
}

pub fn checks(m: &Manifest) -> Vec<Check> {
    let mut out = Vec::new();
    let mut rooms: BTreeMap<u64, Room> = BTreeMap::new();
    for pc in m.pcs.iter().filter(|p| m.storage_of(p) != Storage::Rbd) {
        let dir = pc.cow.parent().unwrap_or(Path::new("/")).to_path_buf();
        let Some(dev) = existing(&dir) else {
            if !out
                .iter()
                .any(|c: &Check| c.says.contains(&dir.display().to_string()))
            {
                out.push(Check::fail(
                    Area::Space,
                    format!("COW directory {} does not exist", dir.display()),
                    format!("mkdir -p {}", dir.display()),
                ));
            }
            continue;
        };
        let r = rooms.entry(dev).or_default();
        if !r.dirs.contains(&dir) {
            r.dirs.push(dir);
        }
        r.pcs += 1;
        r.worst += pc.autoextend.map_or(pc.cow_size.bytes(), |a| {
            a.max.bytes().max(pc.cow_size.bytes())
        });
        // A clone's blocks are mostly its image's: only those it holds alone take room.
        r.used += match m.storage_of(pc) {
            Storage::Reflink => {
                let image = &m.images[&pc.image].path;
                crate::reflink::extents::own_bytes(&pc.cow, image).unwrap_or(0)
            }
            Storage::Cow | Storage::Rbd => {
                std::fs::metadata(&pc.cow).map_or(0, |md| md.blocks() * 512)
            }
        };
    }
    out.extend(rooms.values().map(cow_room));
    let mut stores: Vec<(&Path, u64)> = Vec::new();
    for img in m.images.values() {
        let Some(store) = img.store.as_deref() else {
            continue;
        };
        let size = std::fs::metadata(&img.path).map_or(0, |md| md.len());
        match stores.iter_mut().find(|(s, _)| *s == store) {
            Some((_, largest)) => *largest = (*largest).max(size),
            None => stores.push((store, size)),
        }
    }
    out.extend(stores.into_iter().map(|(s, size)| version_store(s, size)));
    out
}

fn cow_room(r: &Room) -> Check {
    let dirs: Vec<String> = r.dirs.iter().map(|d| d.display().to_string()).collect();
    let dirs = dirs.join(", ");
    let fs = match statfs(&r.dirs[0]) {
        Ok(fs) => fs,
        Err(e) => {
            return Check::fail(
                Area::Space,
                format!("cannot statfs {dirs}: {e}"),
                "check the mount",
            )
        }
    };
    let need = r.worst.saturating_sub(r.used);
    let share = match reflink(&r.dirs[0]) {
        Reflink::Yes => "reflink: yes".to_string(),
        Reflink::No(_) => "reflink: no".to_string(),
        Reflink::Unknown(e) => format!("reflink: unknown ({e})"),
    };
    let says = format!(
        "COWs of {} PC(s) in {dirs} ({}, {share}): {} free, the worst case needs {} more ({} at their largest, {} used)",
        r.pcs,
        fs.kind,
        human(fs.free),
        human(need),
        human(r.worst),
        human(r.used)
    );
    if fs.free >= need {
        Check::ok(Area::Space, says)
    } else {
        Check::warn(
            Area::Space,
            says,
            format!(
                "free {} there, or lower cow_size / autoextend.max (a full COW refuses writes or is invalidated)",
                human(need - fs.free)
            ),
        )
    }
}

/// A version store: commits write new versions there, sharing the parent's blocks when
/// the file system can (else copying the whole disk).
fn version_store(store: &Path, largest: u64) -> Check {
    let fs = match statfs(store) {
        Ok(fs) => fs,
        Err(e) => {
            return Check::fail(
                Area::Space,
                format!("version store {}: {e}", store.display()),
                format!("mkdir -p {}", store.display()),
            )
        }
    };
    let at = format!(
        "version store {} ({}, {} free",
        store.display(),
        fs.kind,
        human(fs.free)
    );
    match reflink(store) {
        Reflink::Yes => Check::ok(
            Area::Space,
            format!("{at}, reflink: yes): a commit shares the parent's blocks"),
        ),
        Reflink::No(_) if fs.free < largest => Check::warn(
            Area::Space,
            format!(
                "{at}, reflink: no): a commit copies the whole disk ({}), more than is free",
                human(largest)
            ),
            "free space there, or keep versions on btrfs or xfs (reflink=1)",
        ),
        Reflink::No(_) => Check::ok(
            Area::Space,
            format!(
                "{at}, reflink: no): a commit copies the whole disk ({})",
                human(largest)
            ),
        ),
        Reflink::Unknown(e) => Check::warn(
            Area::Space,
            format!("{at}): reflink unknown: {e}"),
            "run cowctl doctor as the user that runs commits",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{testing::manifest, Status};
    use super::*;

    #[test]
    fn the_worst_case_is_every_cow_at_its_largest_less_what_it_uses() {
        let d = tempfile::tempdir().unwrap();
        let cows = d.path().join("cows");
        std::fs::create_dir(&cows).unwrap();
        std::fs::write(cows.join("a.cow"), vec![1u8; 1 << 20]).unwrap();
        let yaml = |size: &str, max: &str| {
            format!(
                "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: {}\n  cow_size: {size}\n  export: nbd\n\
                 pcs:\n  - name: a\n  - name: b\n    autoextend:\n      max: {max}\n  - name: c\n    cow: {}/nope/c.cow\n",
                cows.display(),
                d.path().display()
            )
        };
        let c = checks(&manifest(d.path(), &yaml("2MiB", "3MiB")));
        let s: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(c.len(), 2, "{s:#?}");
        assert_eq!(c[0].status, Status::Fail);
        assert!(
            s[0].contains("nope does not exist") && s[0].ends_with("/nope"),
            "{}",
            s[0]
        );
        assert_eq!(c[1].status, Status::Ok, "{}", s[1]);
        assert!(s[1].contains("COWs of 2 PC(s)"), "{}", s[1]);
        assert!(
            s[1].contains("needs 4.0 MiB more (5.0 MiB at their largest, 1.0 MiB used)"),
            "{}",
            s[1]
        );
        assert!(s[1].contains("reflink: "), "{}", s[1]);
        let c = checks(&manifest(d.path(), &yaml("900TiB", "1000TiB")));
        assert_eq!(c[1].status, Status::Warn, "{}", c[1]);
        assert!(
            c[1].fix.as_deref().unwrap().starts_with("free "),
            "{}",
            c[1]
        );
        let left: Vec<_> = std::fs::read_dir(&cows)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("a.cow")],
            "the probe's files are gone"
        );
    }

    #[test]
    fn reflink_is_known_where_files_can_be_made() {
        let d = tempfile::tempdir().unwrap();
        let r = reflink(d.path());
        assert!(matches!(r, Reflink::Yes | Reflink::No(_)), "{r:?}");
        assert!(matches!(
            reflink(&d.path().join("missing")),
            Reflink::Unknown(_)
        ));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
