//! A PC's disk as the service opens it (its COW's engine, or its clone), and the swap a
//! live reset makes under the paused PC.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::exports::Served;
use super::{Error, Result};
use crate::engine::clonefile::{CloneFile, BLOCK};
use crate::engine::{CommitMode, EngineOptions, PcDisk};
use crate::image::golden_record;
use crate::manifest::{Manifest, Pc, Storage};
use crate::reflink::clone::Prepared;

/// Opens a PC's disk as the service runs it. A COW's engine commits exceptions at flush
/// (NBD's contract), with the manifest's overflow rule; a clone is served as it is, its
/// quota `cow_size`. Both read-only when asked.
pub(super) fn open(m: &Manifest, pc: &Pc) -> Result<Served> {
    open_as(m, pc, false, None)
}

/// [`open`]; a `fresh` clone (just made by a reset) is its image everywhere, so its extents
/// need no comparing, which keeps that work out of the reset's pause. `image`, when given,
/// is the image file opened already (the one the fresh clone was made from).
fn open_as(m: &Manifest, pc: &Pc, fresh: bool, image: Option<&File>) -> Result<Served> {
    let image_path = m.images[&pc.image].path.clone();
    let disk = match m.storage_of(pc) {
        Storage::Cow => {
            let options = EngineOptions {
                table_chunk_sectors: Some(pc.chunk_sectors()),
                overflow: pc.overflow.overflow_policy(),
                read_only: pc.read_only,
                commit: CommitMode::OnFlush,
                grow: pc.autoextend.map(|a| a.grow_policy()),
            };
            PcDisk::Cow(crate::cowfile::open_engine_with(
                &image_path,
                &pc.cow,
                options,
            )?)
        }
        Storage::Reflink => PcDisk::Clone(open_clone(pc, (&image_path, image), fresh)?),
        Storage::Rbd => {
            let cluster = crate::rbdpc::cluster_of(m, pc)?;
            PcDisk::Rbd(cluster.open(m, pc, fresh)?)
        }
    };
    let cow_file = match disk {
        PcDisk::Rbd(_) => None,
        _ => {
            let opened = std::fs::metadata(&pc.cow).map_err(|source| Error::Read {
                path: pc.cow.clone(),
                source,
            })?;
            Some((
                std::os::unix::fs::MetadataExt::dev(&opened),
                std::os::unix::fs::MetadataExt::ino(&opened),
            ))
        }
    };
    Ok(served(m, pc, disk, cow_file))
}

/// What the service serves for `pc`: `disk`, the manifest entry, the file it opened.
pub(super) fn served(m: &Manifest, pc: &Pc, disk: PcDisk, cow_file: Option<(u64, u64)>) -> Served {
    Served {
        disk: Arc::new(disk),
        pc: pc.clone(),
        image_path: m.images[&pc.image].path.clone(),
        acl: m.nbd.acl,
        cow_file,
    }
}

/// A reflink PC's clone of `image`, with the blocks where it is no longer the image
/// (FIEMAP: other physical blocks, or a hole) counted as its own. The image is opened by
/// its path unless it comes `opened`.
fn open_clone(pc: &Pc, (image, opened): (&Path, Option<&File>), fresh: bool) -> Result<CloneFile> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Read { path, source }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!pc.read_only)
        .open(&pc.cow)
        .map_err(read(&pc.cow))?;
    let golden = match opened {
        Some(f) => f.try_clone(),
        None => File::open(image),
    }
    .map_err(read(image))?;
    let size = file.metadata().map_err(read(&pc.cow))?.len();
    let same = if fresh {
        vec![(0, size)]
    } else {
        crate::reflink::extents::same_as(&file, &golden, size, BLOCK).map_err(read(&pc.cow))?
    };
    let limits = (pc.read_only, pc.cow_size.bytes());
    Ok(CloneFile::new(file, golden, size, limits, &same))
}

/// The reset's swap, run while the PC's I/O is stopped: the old COW is set aside, a fresh
/// sparse one of the same size (or the clone `made` before the pause) takes its path and is
/// opened, and only then is the old engine abandoned (nothing more is written to it). On
/// failure the old COW keeps serving.
pub(super) fn swap_in_fresh_cow(
    (m, pc): (&Manifest, &Pc),
    old: Option<Served>,
    (discard, made): (&Path, Option<&Prepared>),
    onto: Option<&golden_record::Golden>,
) -> (Option<Served>, Result<()>) {
    let Some(old) = old else {
        let e = Error::NotServed {
            pc: pc.name.clone(),
        };
        return (None, Err(e));
    };
    let size = match std::fs::metadata(&pc.cow) {
        Ok(meta) => meta.len(),
        Err(source) => {
            let path = pc.cow.clone();
            return (Some(old), Err(Error::Read { path, source }));
        }
    };
    // Never over another file: a `.discard` that is there already stays.
    if let Err(source) = crate::base::durable::rename_new(&pc.cow, discard) {
        let e = Error::MoveAside {
            cow: pc.cow.clone(),
            discard: discard.to_path_buf(),
            source,
        };
        return (Some(old), Err(e));
    }
    let old_record = golden_record::read(&pc.cow).ok().flatten();
    // The fresh COW's record names the image it is over before the PC can write to it.
    let fresh = fresh_disk(m, pc, size, made.map(|p| p.partial.as_path()))
        .and_then(|()| open_as(m, pc, true, made.map(|p| &p.source)))
        .and_then(|s| Ok(golden_record::note_reset(&pc.cow, onto).map(|()| s)?));
    match fresh {
        Ok(s) => {
            old.disk.abandon();
            (Some(s), Ok(()))
        }
        Err(e) => {
            // The old engine still has its file open: put the name back and keep serving it.
            let _ = std::fs::remove_file(&pc.cow);
            if let Some(old) = &old_record {
                let _ = golden_record::write(&pc.cow, old);
            }
            match crate::base::durable::rename_new(discard, &pc.cow) {
                Ok(()) => (Some(old), Err(e)),
                Err(back) => (
                    Some(old),
                    Err(Error::NotMovedBack {
                        discard: discard.to_path_buf(),
                        cow: pc.cow.clone(),
                        back,
                        source: Box::new(e),
                    }),
                ),
            }
        }
    }
}

/// The reset's swap of an rbd PC, while it is paused: the old clone is closed and renamed
/// aside, the fresh clone made beforehand (`next`) takes its name and is opened. Returns
/// the name set aside, to be removed after the pause. On failure the old clone keeps
/// serving, under its own name.
pub(super) fn swap_in_fresh_rbd(
    m: &Manifest,
    pc: &Pc,
    old: Option<Served>,
    next: &str,
) -> (Option<Served>, Result<String>) {
    let cluster = match crate::rbdpc::cluster_of(m, pc) {
        Ok(c) => c,
        Err(e) => return (old, Err(e.into())),
    };
    // Locked before it takes the PC's name: no other gateway can take it in between (the
    // open handle follows the rename).
    let fresh = match cluster.open_named(m, pc, next, true) {
        Ok(disk) => disk,
        Err(e) => return (old, Err(e.into())),
    };
    let aside = match cluster.swap_in(m, pc, next) {
        Ok(aside) => aside,
        Err(e) => return (old, Err(e.into())),
    };
    // The old clone's handle closes (and its lock goes) with the last of its users.
    (Some(served(m, pc, PcDisk::Rbd(fresh), None)), Ok(aside))
}

/// What a reset makes before the PC's pause: a reflink PC's fresh clone (FICLONE waits for
/// the image's readers, and syncs), under its partial name. Other disks are made inside it.
pub(super) fn made_ahead(m: &Manifest, pc: &Pc) -> Result<Option<Prepared>> {
    match m.storage_of(pc) {
        Storage::Reflink => {
            let image = &m.images[&pc.image].path;
            Ok(Some(crate::reflink::clone::prepare(image, &pc.cow)?))
        }
        Storage::Cow | Storage::Rbd => Ok(None),
    }
}

/// A new disk for the PC at its path: an empty COW of `size` bytes, or a clone of its image
/// (the one [`made_ahead`], when there is one).
fn fresh_disk(m: &Manifest, pc: &Pc, size: u64, made: Option<&Path>) -> Result<()> {
    match m.storage_of(pc) {
        Storage::Cow => Ok(crate::cowfile::create_empty(&pc.cow, size)?),
        Storage::Rbd => Ok(crate::rbdpc::cluster_of(m, pc)?.make_disk(m, pc)?),
        Storage::Reflink => match made {
            Some(made) => Ok(crate::reflink::clone::install(made, &pc.cow)?),
            None => {
                let image = &m.images[&pc.image].path;
                Ok(crate::reflink::clone::clone_new(image, &pc.cow)?)
            }
        },
    }
}
