//! Returning a PC to the golden image while it is exported. The pause does not grow with the
//! COW: freeing a full COW's blocks takes time in proportion to its size (about 180 ms per GiB
//! on ext4), so the old file is set aside and freed only after the PC is back.
//!
//! 1. stop I/O (disable the target's TPG, or stop the vblade);
//! 2. park the dm device on an `error` table (a plain reload would hand the old snapshot's
//!    exceptions over to the new one);
//! 3. rename the COW to `<cow>.discard` (its loop keeps the old file open) and create a fresh
//!    sparse COW at the same path, on a new loop device;
//! 4. load a fresh snapshot on it and resume I/O — the PC is back;
//! 5. detach the old loop and delete `<cow>.discard`, which frees the space.
//!
//! What is reset is what the kernel serves: the COW and image come from the live table and
//! must be the manifest's, or nothing is touched. A reset that died half way (the device
//! still parked, a `.discard` left) is finished by the next reset or apply. A PC that is
//! not applied has its COW file reset in place, unless a loop device still holds it.

use std::path::Path;
use std::time::{Duration, Instant};

use super::export::{loop_of, names_loop, resume_export, while_paused, Resume};
use super::observe::Observed;
use super::{dm_name, Ctx, Error, Result};
use crate::base::fileid::same_file;
use crate::dm::{DevRef, SnapshotTable, TableLine};
use crate::engine::filekind::{classify, Kind};
use crate::image::golden_record::Golden;
use crate::kernel::devmapper::Target;
use crate::kernel::loopdev::{LoopInfo, Loops};
use crate::manifest::Manifest;
use crate::manifest::{Pc, Storage};
use crate::room::reset::{discard_path, Reset};

/// The image version a reset moves a PC to, and the read-only loop that serves it.
struct NextVersion {
    golden: Golden,
    /// The version (its disk, or its rbd snapshot).
    image: crate::manifest::Image,
    /// None for a PC that is not applied (only its COW file is reset).
    origin: Option<LoopInfo>,
}

/// Resets one PC (see [`reset_many`]).
pub fn reset(ctx: &Ctx, obs: &Observed, pc: &Pc) -> Result<Reset> {
    reset_many(ctx, obs, &[pc])
        .pop()
        .expect("one result per PC")
}

fn reset_one(ctx: &Ctx, obs: &Observed, pc: &Pc, onto: Option<&NextVersion>) -> Result<Reset> {
    let start = Instant::now();
    let name = dm_name(&pc.name);
    // A reset that died half way is finished on the version it was on; the PC moves at
    // its next reset.
    let onto = onto.filter(|_| !obs.parked.contains_key(&name));
    if obs.parked.contains_key(&name) && ctx.manifest.storage_of(pc) == Storage::Rbd {
        // Its reset stopped in the pause; apply maps its clone and loads its table again.
        return Err(Error::RbdParked {
            pc: pc.name.clone(),
        });
    }
    let paused = if obs.parked.contains_key(&name) {
        let paused = finish_parked(ctx, obs, pc, &name, true)?;
        crate::image::golden_record::note_reset(&pc.cow, None)?;
        paused
    } else if obs.dm.contains_key(&name) {
        // The record is written with the fresh COW, before the PC's I/O resumes.
        live_reset(ctx, obs, pc, &name, onto)?
    } else if let Some(dev) = obs.linear.get(&name) {
        if ctx.manifest.storage_of(pc) == Storage::Rbd {
            super::rbd::live_reset(ctx, obs, pc, dev, onto.map(|o| &o.image))?
        } else {
            let image = onto.map_or(&ctx.image(pc).path, |o| &o.image.path);
            super::clone::live_reset(ctx, obs, pc, dev, image, onto.map(|o| &o.golden))?
        }
    } else {
        if let Some(l) = obs.loops.iter().find(|l| same_file(&l.backing, &pc.cow)) {
            return Err(Error::CowAttachedAlone {
                pc: pc.name.clone(),
                cow: pc.cow.clone(),
                dev: l.dev.clone(),
            });
        }
        let loops = ctx.kernel.loops.as_ref();
        let due = onto.map(|o| (o.image.clone(), o.golden.clone()));
        return reset_unserved(ctx.manifest, pc, due.as_ref(), loops);
    };
    Ok(Reset::live(&pc.name, paused, start))
}

/// Resets `pcs` (all observed in `obs` beforehand), up to [`super::SIDE_BY_SIDE`] at a time;
/// each pauses only its own PC.
/// Every PC is tried; the results come back in `pcs`' order.
/// PCs whose promoted image version is another than the one they run move to it: its loop
/// is attached first (once, before any PC pauses), and loops of versions that no PC uses
/// any more are detached after.
pub fn reset_many(ctx: &Ctx, obs: &Observed, pcs: &[&Pc]) -> Vec<Result<Reset>> {
    let mut loops = obs.loops.clone();
    let onto: Vec<Result<Option<NextVersion>>> = pcs
        .iter()
        .map(|pc| {
            let Some((image, golden)) = crate::image::next_version(ctx.manifest, pc)? else {
                return Ok(None);
            };
            if !obs.dm.contains_key(&dm_name(&pc.name)) {
                return Ok(Some(NextVersion {
                    golden,
                    image,
                    origin: None,
                }));
            }
            let origin = match loops
                .iter()
                .find(|l| l.read_only && same_file(&l.backing, &image.path))
            {
                Some(l) => l.clone(),
                None => {
                    let l = ctx.kernel.loops.attach(&image.path, true)?;
                    loops.push(l.clone());
                    l
                }
            };
            Ok(Some(NextVersion {
                golden,
                image,
                origin: Some(origin),
            }))
        })
        .collect();
    let moved = onto.iter().any(|o| matches!(o, Ok(Some(_))));
    let done = super::side_by_side(pcs, |i, pc| match &onto[i] {
        Ok(o) => Some(reset_one(ctx, obs, pc, o.as_ref())),
        Err(_) => None,
    });
    let done = (done.into_iter().zip(onto).zip(pcs))
        .map(|((done, onto), pc)| match (done, onto) {
            (Some(r), _) => r,
            (None, Err(e)) => Err(Error::Due {
                pc: pc.name.clone(),
                error: Box::new(e),
            }),
            (None, Ok(_)) => unreachable!("each PC is reset or its version failed"),
        })
        .collect();
    if moved {
        if let Err(e) = detach_unused_versions(ctx) {
            tracing::warn!("after the resets: {}", crate::base::logtext::chain(&e));
        }
    }
    done
}

/// Detaches the loops of image versions that no snapshot has as its origin any more.
fn detach_unused_versions(ctx: &Ctx) -> Result<()> {
    let k = ctx.kernel;
    let mut origins = Vec::new();
    for name in k.dm.list(super::PREFIX)? {
        if let Ok(t) = k.dm.table(&name) {
            origins.push(t.snapshot.origin);
        }
    }
    let versions = crate::image::Store::disks_of(ctx.manifest);
    for l in k.loops.list()? {
        let unused = !origins.iter().any(|o| names_loop(o, &l));
        if l.read_only && unused && versions.iter().any(|v| same_file(v, &l.backing)) {
            k.loops.detach(&l.dev)?;
        }
    }
    Ok(())
}

/// Resets a PC's disk that nothing serves here, onto the version it is `due` (when it
/// moves): an rbd PC's clone made anew of that version's snapshot, a file as
/// [`reset_file`] does.
pub fn reset_unserved(
    m: &Manifest,
    pc: &Pc,
    due: Option<&(crate::manifest::Image, Golden)>,
    loops: &dyn Loops,
) -> Result<Reset> {
    if m.storage_of(pc) == Storage::Rbd {
        let start = Instant::now();
        let (m, pc) = m.with_pc_on(pc, due.map(|(i, _)| i));
        crate::rbdpc::cluster_of(&m, &pc)?.reset_offline(&m, &pc)?;
        return Ok(Reset::offline(&pc.name, start.elapsed()));
    }
    let image = due.map_or(&m.images[&pc.image], |(i, _)| i);
    reset_file(m, pc, &image.path, due.map(|(_, g)| g), loops)
}

/// Resets a PC's disk that nothing serves: a COW in place, a clone replaced by a fresh
/// clone of `image` (the disk of the version it runs next). When the PC moves to another
/// image version, `onto` is the one its record names now.
pub fn reset_file(
    m: &Manifest,
    pc: &Pc,
    image: &Path,
    onto: Option<&Golden>,
    loops: &dyn Loops,
) -> Result<Reset> {
    let start = Instant::now();
    match m.storage_of(pc) {
        Storage::Rbd => {
            let cluster = crate::rbdpc::cluster_of(m, pc)?;
            cluster.reset_offline(m, pc)?;
            return Ok(Reset::offline(&pc.name, start.elapsed()));
        }
        Storage::Cow => drop(crate::cowfile::reset(&pc.cow, loops)?),
        Storage::Reflink => {
            crate::reflink::clone::replace_with_clone(image, &pc.cow, &discard_path(&pc.cow))?
        }
    }
    crate::image::golden_record::note_reset(&pc.cow, onto)?;
    Ok(Reset::offline(&pc.name, start.elapsed()))
}

/// Returns how long the PC's I/O was paused.
fn live_reset(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    name: &str,
    onto: Option<&NextVersion>,
) -> Result<Duration> {
    let k = ctx.kernel;
    let table = &obs.dm[name];
    let old_loop =
        loop_of(obs, &table.snapshot.cow)
            .cloned()
            .ok_or_else(|| Error::CowOnNoLoop {
                pc: pc.name.clone(),
                name: name.to_string(),
                cow: table.snapshot.cow.to_string(),
            })?;
    // The file to be thrown away is the one the kernel uses, and it must be the manifest's.
    if !same_file(&old_loop.backing, &pc.cow) {
        return Err(Error::OtherCow {
            pc: pc.name.clone(),
            served: old_loop.backing.clone(),
            manifest: pc.cow.clone(),
        });
    }
    let image = ctx.image(pc);
    if let Some(origin) = loop_of(obs, &table.snapshot.origin) {
        if !same_file(&origin.backing, &image.path) {
            return Err(Error::OtherImage {
                pc: pc.name.clone(),
                served: origin.backing.clone(),
                manifest: image.path.clone(),
            });
        }
    }
    let discard = discard_path(&pc.cow);
    let size = std::fs::metadata(&pc.cow)
        .map_err(|source| Error::Read {
            path: pc.cow.clone(),
            source,
        })?
        .len();

    // 1. Stop I/O (the initiator retries its login); 2-4 in swap; 4b. resume I/O whatever
    // happened, so a failed reset leaves the PC as it was.
    let paused = while_paused(ctx, obs, pc, name, || {
        swap(ctx, pc, name, table, &discard, size, onto)
    })?;
    // 5. Free the old COW now that the PC is back.
    k.loops.detach(&old_loop.dev)?;
    remove_discard(&discard)?;
    Ok(paused)
}

fn swap(
    ctx: &Ctx,
    pc: &Pc,
    name: &str,
    table: &TableLine,
    discard: &Path,
    size: u64,
    onto: Option<&NextVersion>,
) -> Result<()> {
    let k = ctx.kernel;
    let old_table = Target::snapshot(table);
    let old_record = crate::image::golden_record::read(&pc.cow)?;
    // 2. Park the device: the old snapshot is destroyed, nothing can write.
    k.dm.replace(name, &Target::error(table.length))?;
    // 3. A fresh COW at the same path, the old one set aside (never over another file).
    let mut created = false;
    let fresh = (|| -> Result<LoopInfo> {
        crate::base::durable::rename_new(&pc.cow, discard).map_err(|source| Error::MoveAside {
            cow: pc.cow.clone(),
            discard: discard.to_path_buf(),
            source,
        })?;
        crate::cowfile::create_empty(&pc.cow, size)?;
        created = true;
        let l = k.loops.attach(&pc.cow, false)?;
        // Before anything can write the fresh COW, its record names the image it is over:
        // a crash from here on finishes the reset on that image.
        crate::image::golden_record::note_reset(&pc.cow, onto.map(|o| &o.golden))?;
        Ok(l)
    })();
    match fresh {
        // 4. A fresh snapshot on the fresh COW (magic 0: the kernel starts a new store).
        Ok(new_loop) => {
            let mut line = table.clone();
            line.snapshot.cow = DevRef::Path(new_loop.dev.display().to_string());
            if let Some(origin) = onto.and_then(|o| o.origin.as_ref()) {
                line.snapshot.origin = DevRef::Path(origin.dev.display().to_string());
            }
            Ok(k.dm.replace(name, &Target::snapshot(&line))?)
        }
        // Put everything back as it was.
        Err(e) => {
            if discard.exists() {
                if created {
                    let _ = std::fs::remove_file(&pc.cow);
                }
                let _ = crate::base::durable::rename_new(discard, &pc.cow);
                if let Some(old) = &old_record {
                    let _ = crate::image::golden_record::write(&pc.cow, old);
                }
            }
            k.dm.replace(name, &old_table)?;
            Err(e)
        }
    }
}

/// Deletes a COW that a reset set aside, after checking it is one.
pub fn remove_discard(discard: &Path) -> Result<()> {
    match classify(discard) {
        Ok(Kind::Cow | Kind::Fresh) => {
            std::fs::remove_file(discard).map_err(|source| Error::Remove {
                path: discard.to_path_buf(),
                source,
            })
        }
        Ok(Kind::Other(what)) => Err(Error::DiscardNotCow {
            path: discard.to_path_buf(),
            what,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Read {
            path: discard.to_path_buf(),
            source,
        }),
    }
}

/// Finishes a reset that stopped with the device parked on its `error` table: the PC gets
/// a fresh snapshot (on the fresh COW the reset made, or one made now), its export back
/// (`re_export`; apply re-creates exports itself), and the old COW goes. Returns how long
/// it took.
pub fn finish_parked(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    name: &str,
    re_export: bool,
) -> Result<Duration> {
    let start = Instant::now();
    let k = ctx.kernel;
    let discard = discard_path(&pc.cow);
    if !pc.cow.exists() {
        let size = std::fs::metadata(&discard)
            .map(|m| m.len())
            .unwrap_or(pc.cow_size.bytes());
        crate::cowfile::create_empty(&pc.cow, size)?;
    } else if let Kind::Other(what) = classify(&pc.cow)? {
        return Err(Error::ParkedNotCow {
            pc: pc.name.clone(),
            cow: pc.cow.clone(),
            what,
        });
    }
    let loops = k.loops.list()?;
    let cow_loop = match loops.iter().find(|l| same_file(&l.backing, &pc.cow)) {
        Some(l) => l.clone(),
        None => k.loops.attach(&pc.cow, false)?,
    };
    let image = ctx.image(pc);
    let origin = match loops
        .iter()
        .find(|l| l.read_only && same_file(&l.backing, &image.path))
    {
        Some(l) => l.clone(),
        None => k.loops.attach(&image.path, true)?,
    };
    let line = TableLine {
        start: 0,
        length: obs.parked[name],
        snapshot: SnapshotTable {
            origin: DevRef::Path(origin.dev.display().to_string()),
            cow: DevRef::Path(cow_loop.dev.display().to_string()),
            mode: pc.overflow,
            chunk_sectors: pc.chunk_sectors(),
            features: Vec::new(),
        },
    };
    k.dm.replace(name, &Target::snapshot(&line))
        .map_err(|e| Error::Finishing {
            pc: pc.name.clone(),
            source: Box::new(e.into()),
        })?;
    if re_export {
        resume_export(ctx, pc, name, Resume::All(obs))?;
    }
    for l in loops.iter().filter(|l| same_file(&l.backing, &discard)) {
        k.loops.detach(&l.dev)?;
    }
    remove_discard(&discard)?;
    tracing::info!("{}: finished an interrupted reset", pc.name);
    Ok(start.elapsed())
}
