//! From desired and observed state to an ordered list of actions: `apply` builds bottom-up
//! (COW file, loops, snapshot, export), `down` tears down top-down (export, snapshot, loops).
//! Checks that need no kernel change (images, COW files, golden records, interfaces,
//! portals, CHAP secret) run first and are all reported at once.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use super::observe::Observed;
use super::{dm_name, Ctx, Error, Result, PREFIX};
use crate::base::fileid::same_file;
use crate::base::logtext::chain;
use crate::cow::{HeaderState, LoadedStore};
use crate::dm::DevRef;
use crate::image::golden_record;
use crate::kernel::loopdev;
use crate::manifest::{Export, Image, Manifest, Pc, Storage};
use crate::room::step::Step;

/// What `apply` would do now.
pub fn plan_apply(ctx: &Ctx, obs: &Observed) -> Result<Vec<Step>> {
    preflight(ctx)?;
    let mut actions = Vec::new();
    let mut images_attached: BTreeSet<String> = BTreeSet::new();
    for pc in &ctx.manifest.pcs {
        pc_actions(ctx, obs, pc, &mut images_attached, &mut actions)?;
    }
    // A reset that was interrupted may have left the old COW set aside on its loop
    // (FinishReset takes care of a parked PC's own).
    for pc in &ctx.manifest.pcs {
        if obs.parked.contains_key(&dm_name(&pc.name)) {
            continue;
        }
        let discard = crate::room::reset::discard_path(&pc.cow);
        if let Some(l) = obs.loops.iter().find(|l| l.backing == discard) {
            actions.push(Step::detach(l));
        }
    }
    // Devices of PCs no longer in the manifest are taken down (their COW files stay).
    let mut orphans: Vec<String> = obs
        .dm
        .keys()
        .chain(obs.linear.keys())
        .filter_map(|n| n.strip_prefix(PREFIX))
        .filter(|pc| ctx.manifest.pc(pc).is_none())
        .map(String::from)
        .collect();
    super::rbd::add_mapped_orphans(ctx, obs, &mut orphans);
    actions.extend(teardown(ctx, obs, &orphans, true).flatten());
    Ok(actions)
}

/// One PC, bottom-up: a parked one's reset finished; else its COW file and golden record,
/// the image's loop (once per image: `images_attached`), the COW's loop, resume, the
/// snapshot, then the export.
fn pc_actions(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    images_attached: &mut BTreeSet<String>,
    actions: &mut Vec<Step>,
) -> Result<()> {
    // A clone (reflink or rbd) has its own device steps; its export is any PC's.
    let clone_up = match ctx.manifest.storage_of(pc) {
        Storage::Reflink => Some(super::clone::plan_actions(ctx, obs, pc, actions)?),
        Storage::Rbd => Some(super::rbd::plan_actions(ctx, obs, pc, actions)?),
        Storage::Cow => None,
    };
    if let Some(up) = clone_up {
        return export_actions(ctx, obs, pc, up, actions);
    }
    let image = ctx.image(pc);
    let name = dm_name(&pc.name);
    if obs.parked.contains_key(&name) {
        // Its exports are checked below like any other PC's (a paused one is re-made).
        actions.push(Step::FinishReset {
            pc: pc.name.clone(),
        });
        return export_actions(ctx, obs, pc, true, actions);
    }
    if !pc.cow.exists() {
        actions.push(Step::CreateCow {
            pc: pc.name.clone(),
            path: pc.cow.clone(),
            size: pc.cow_size,
            chunk: pc.chunk,
        });
    }
    if !golden_record::record_path(&pc.cow).exists() {
        actions.push(Step::RecordGolden {
            pc: pc.name.clone(),
            image: image.name.clone(),
            image_path: image.path.clone(),
            cow: pc.cow.clone(),
        });
    }
    let image_loop = loopdev::find(&obs.loops, &image.path, true);
    if image_loop.is_none() && images_attached.insert(image.name.clone()) {
        actions.push(Step::AttachImage {
            image: image.name.clone(),
            path: image.path.clone(),
        });
    }
    let cow_loop = loopdev::find(&obs.loops, &pc.cow, false);
    if cow_loop.is_none() {
        actions.push(Step::AttachCow {
            pc: pc.name.clone(),
            path: pc.cow.clone(),
        });
    }
    if obs.suspended.contains(&name) {
        actions.push(Step::Resume {
            pc: pc.name.clone(),
        });
    }
    snapshot_action(obs, pc, image, image_loop, cow_loop, actions)?;
    export_actions(ctx, obs, pc, obs.dm.contains_key(&name), actions)
}

/// The PC's snapshot: created when missing; one whose table differs from the manifest
/// (origin, COW, mode, chunk) is refused, not replaced.
fn snapshot_action(
    obs: &Observed,
    pc: &Pc,
    image: &Image,
    image_loop: Option<&loopdev::LoopInfo>,
    cow_loop: Option<&loopdev::LoopInfo>,
    actions: &mut Vec<Step>,
) -> Result<()> {
    let name = dm_name(&pc.name);
    match obs.dm.get(&name) {
        None => actions.push(Step::CreateSnapshot {
            pc: pc.name.clone(),
            image: image.path.clone(),
            cow: pc.cow.clone(),
            mode: pc.overflow,
            chunk_sectors: pc.chunk_sectors(),
        }),
        Some(table) => {
            let s = &table.snapshot;
            let same = |d: &DevRef, l: Option<&loopdev::LoopInfo>| {
                l.is_some_and(|l| d.to_string() == l.number.to_string())
            };
            if !same(&s.origin, image_loop)
                || !same(&s.cow, cow_loop)
                || s.mode != pc.overflow
                || s.chunk_sectors != pc.chunk_sectors()
            {
                return Err(Error::OtherTable {
                    pc: pc.name.clone(),
                    name,
                    table: table.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// What the PC's export needs: made, re-made (it differs, or its device is new), or nothing;
/// each step carries the whole spec, so applying it looks nothing up.
fn export_actions(
    ctx: &Ctx,
    obs: &Observed,
    pc: &Pc,
    device_up: bool,
    actions: &mut Vec<Step>,
) -> Result<()> {
    match &pc.export {
        Export::Iscsi { target, .. } => {
            let spec = super::spec::target_spec(ctx, pc, None)?;
            match obs.target(target.as_str()) {
                None => actions.push(Step::ExportIscsi {
                    pc: pc.name.clone(),
                    spec,
                }),
                Some(t) if device_up && t.matches_ignoring_device(&spec) => {}
                Some(_) => actions.push(Step::RecreateIscsi {
                    pc: pc.name.clone(),
                    spec,
                }),
            }
        }
        Export::Aoe { .. } => {
            let spec = super::spec::vblade_spec(ctx, pc, None)?;
            let start = Step::StartVblade {
                pc: pc.name.clone(),
                address: pc.export.to_string(),
                spec: spec.clone(),
            };
            match obs.vblade(&pc.name) {
                Some(v) if same_vblade(&spec.args(), &v.args) => {}
                Some(_) => {
                    actions.push(Step::StopVblade {
                        pc: pc.name.clone(),
                    });
                    actions.push(start);
                }
                None => actions.push(start),
            }
        }
        Export::Nbd => {} // refused by preflight
    }
    Ok(())
}

/// A running vblade serves what the manifest asks when every argument but the last (the
/// device node, which may be spelled differently) is the same.
fn same_vblade(wanted: &[String], running: &[String]) -> bool {
    match (wanted.split_last(), running.split_last()) {
        (Some((_, w)), Some((_, r))) => w == r,
        _ => false,
    }
}

/// What `down` would do for these PCs.
/// A teardown: each PC's steps (in order, independent of the other PCs'), then the image
/// loops that no snapshot uses any more.
#[derive(Debug, Default)]
pub struct Teardown {
    pub pcs: Vec<Vec<Step>>,
    pub images: Vec<Step>,
}

impl Teardown {
    /// How many steps in all.
    pub fn len(&self) -> usize {
        self.pcs.iter().map(Vec::len).sum::<usize>() + self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn flatten(self) -> Vec<Step> {
        self.pcs.into_iter().flatten().chain(self.images).collect()
    }
}

/// `down` of `pcs`, as groups that may run side by side (see `apply::run_teardown`).
pub fn plan_down(ctx: &Ctx, obs: &Observed, pcs: &[&Pc]) -> Teardown {
    let names: Vec<String> = pcs.iter().map(|p| p.name.clone()).collect();
    teardown(ctx, obs, &names, names.len() < ctx.manifest.pcs.len())
}

fn teardown(ctx: &Ctx, obs: &Observed, pcs: &[String], keep_needed_images: bool) -> Teardown {
    let mut groups = Vec::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for pc in pcs {
        let mut actions = Vec::new();
        let name = dm_name(pc);
        let backstore = format!("/{name}");
        // Exports first: whatever the manifest says now, remove what serves this device.
        for t in &obs.targets {
            if t.backstore
                .as_deref()
                .is_some_and(|b| b.ends_with(&backstore))
            {
                actions.push(Step::UnexportIscsi {
                    target: t.iqn.clone(),
                });
            }
        }
        if obs.vblade(pc).is_some() {
            actions.push(Step::StopVblade { pc: pc.clone() });
        }
        if let Some(table) = obs.dm.get(&name) {
            actions.push(Step::RemoveSnapshot { name: name.clone() });
            removed.insert(name.clone());
            if let Some(l) = obs
                .loops
                .iter()
                .find(|l| table.snapshot.cow.to_string() == l.number.to_string())
            {
                actions.push(Step::detach(l));
            }
        } else if let Some(dev) = obs.linear.get(&name) {
            actions.push(Step::RemoveSnapshot { name: name.clone() });
            if let Some(l) = obs.loops.iter().find(|l| super::export::names_loop(dev, l)) {
                actions.push(Step::detach(l));
            } else if let Some(m) = super::rbd::mapping_under(obs, dev) {
                actions.push(Step::UnmapRbd {
                    id: m.id,
                    clone: format!("{}/{}", m.pool, m.name),
                });
            }
        } else if let Some(p) = ctx.manifest.pc(pc) {
            if let Some(l) = loopdev::find(&obs.loops, &p.cow, false) {
                actions.push(Step::detach(l));
            }
        }
        super::rbd::teardown(ctx, obs, pc, &mut actions);
        if !actions.is_empty() {
            groups.push(actions);
        }
    }
    let mut actions = Vec::new();
    // Golden image loops: detach those no remaining snapshot uses, except (for apply) the
    // images the manifest's PCs still need.
    let in_use: BTreeSet<String> = obs
        .dm
        .iter()
        .filter(|(n, _)| !removed.contains(*n))
        .map(|(_, t)| t.snapshot.origin.to_string())
        .collect();
    for l in obs
        .loops
        .iter()
        .filter(|l| l.read_only && !in_use.contains(&l.number.to_string()))
    {
        let was_origin = obs.dm.iter().any(|(n, t)| {
            removed.contains(n) && t.snapshot.origin.to_string() == l.number.to_string()
        });
        let image = ctx
            .manifest
            .images
            .values()
            .find(|i| i.path == l.backing || same_file(&i.path, &l.backing));
        let needed = keep_needed_images
            && image.is_some_and(|i| ctx.manifest.pcs.iter().any(|p| p.image == i.name));
        let leftover = !keep_needed_images && image.is_some();
        if (was_origin || leftover) && !needed {
            actions.push(Step::detach(l));
        }
    }
    Teardown {
        pcs: groups,
        images: actions,
    }
}

/// Checks that need no kernel change, all reported at once.
fn preflight(ctx: &Ctx) -> Result<()> {
    let mut problems = file_problems(ctx.manifest);
    for pc in ctx.manifest.pcs.iter().filter(|p| p.export == Export::Nbd) {
        problems.push(format!(
            "{}: export nbd is served by the userspace engine only (set backend: userspace)",
            pc.name
        ));
    }
    problems.extend(super::rbd::preflight(ctx.manifest));
    for pc in ctx.manifest.pcs.iter().filter(|p| p.read_only) {
        problems.push(format!(
            "{}: read_only is served by the userspace engine only (set backend: userspace): the kernel's snapshot target writes its COW",
            pc.name
        ));
    }
    problems.extend(network_problems(ctx));
    if let Some(chap) = ctx.manifest.iscsi.as_ref().and_then(|i| i.chap.as_ref()) {
        if let Err(e) = crate::manifest::secrets::ChapMaster::read(chap) {
            problems.push(e.to_string());
        }
    }
    refuse_if_any(ctx.manifest, problems)
}

/// Fails with every problem, one per line, when there are any.
pub fn refuse_if_any(manifest: &Manifest, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused {
            manifest: manifest.path.clone(),
            problems,
        })
    }
}

/// What both backends check before serving: golden images readable and whole sectors;
/// existing COW files loadable, of the manifest's chunk size, and recorded against the
/// image they are about to be laid over; new COWs' directories present.
pub fn file_problems(manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let fingerprints = image_fingerprints(manifest, &mut problems);
    let mut stores = std::collections::BTreeMap::new();
    for pc in &manifest.pcs {
        if manifest.storage_of(pc) == Storage::Reflink {
            problems.extend(clone_problem(manifest, pc, &fingerprints));
            if pc.cow.exists() {
                problems.extend(version_problem(manifest, &mut stores, pc));
            }
            continue;
        }
        if pc.cow.exists() {
            if let Some(p) = cow_kind_problem(pc) {
                problems.push(p);
                continue;
            }
            problems.extend(cow_store_problem(manifest, pc));
            if let Some(g) = fingerprints.get(&pc.image) {
                if let Err(e) = golden_record::check(&pc.name, &pc.cow, g) {
                    problems.push(chain(&e));
                }
            }
            problems.extend(version_problem(manifest, &mut stores, pc));
        } else if let Some(dir) = pc.cow.parent().filter(|d| !d.exists()) {
            problems.push(format!(
                "{}: the COW's directory {} does not exist",
                pc.name,
                dir.display()
            ));
        }
    }
    problems
}

/// A reflink PC's disk: an existing one must be its image's size and recorded against
/// it; a new one's directory must be on the image's file system, and that file system
/// able to clone.
fn clone_problem(
    manifest: &Manifest,
    pc: &Pc,
    fingerprints: &std::collections::BTreeMap<String, golden_record::Golden>,
) -> Option<String> {
    let image = &manifest.images[&pc.image].path;
    if pc.cow.exists() {
        let size = std::fs::metadata(&pc.cow).map(|m| m.len());
        let golden = fingerprints.get(&pc.image)?;
        return match size {
            Err(e) => Some(format!("{}: cannot read {}: {e}", pc.name, pc.cow.display())),
            Ok(n) if n != golden.size => Some(format!(
                "{}: its disk {} is {n} bytes, but image {} is {} bytes: a reflink PC's disk is a clone of its image (point cow: at a file of its own, or reset the PC)",
                pc.name,
                pc.cow.display(),
                pc.image,
                golden.size
            )),
            Ok(_) => golden_record::check(&pc.name, &pc.cow, golden)
                .err()
                .map(|e| chain(&e)),
        };
    }
    let dir = pc.cow.parent()?;
    if !dir.exists() {
        return Some(format!(
            "{}: the disk's directory {} does not exist",
            pc.name,
            dir.display()
        ));
    }
    let same_fs = crate::reflink::fs::of(image).and_then(|from| {
        let to = crate::reflink::fs::of(dir)?;
        if from.dev != to.dev {
            return Err(crate::reflink::ReflinkError::NotOneFileSystem {
                source_file: image.clone(),
                clone: pc.cow.clone(),
                source_mount: from.mount,
                clone_mount: to.mount,
            });
        }
        crate::reflink::clone::probe(dir)
    });
    same_fs
        .err()
        .map(|e| format!("{}: storage: reflink: {}", pc.name, chain(&e)))
}

/// The fingerprint of each golden image a PC uses, by image name; an image that cannot
/// be read or is not whole sectors is a problem instead.
fn image_fingerprints(
    manifest: &Manifest,
    problems: &mut Vec<String>,
) -> std::collections::BTreeMap<String, golden_record::Golden> {
    let mut fingerprints = std::collections::BTreeMap::new();
    for image in manifest
        .images
        .values()
        .filter(|i| i.storage != Storage::Rbd)
        .filter(|i| manifest.pcs.iter().any(|p| p.image == i.name))
    {
        match golden_record::fingerprint(&image.path) {
            Ok(g) if g.size % 512 != 0 || g.size == 0 => problems.push(format!(
                "golden image {} is {} bytes, not a whole number of sectors",
                image.path.display(),
                g.size
            )),
            Ok(g) => {
                fingerprints.insert(image.name.clone(), g);
            }
            Err(e) => problems.push(chain(&e)),
        }
    }
    fingerprints
}

/// An existing COW that is not one (or cannot be read): nothing else is checked of it.
fn cow_kind_problem(pc: &Pc) -> Option<String> {
    match crate::engine::filekind::classify(&pc.cow) {
        Ok(crate::engine::filekind::Kind::Other(what)) => Some(format!(
            "{}: {} is not a COW file: it looks like {what}; cowctl writes only to files that start with a snapshot header or that have no data yet (point cow: at a file of its own)",
            pc.name,
            pc.cow.display()
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "{}: cannot read {}: {e}",
            pc.name,
            pc.cow.display()
        )),
    }
}

/// An existing COW's store: loadable, of the manifest's chunk size, and its written chunks
/// recorded against a golden image.
fn cow_store_problem(manifest: &Manifest, pc: &Pc) -> Option<String> {
    let store = std::fs::File::open(&pc.cow)
        .map_err(|e| chain(&e))
        .and_then(|f| LoadedStore::load(&f, Some(pc.chunk_sectors())).map_err(|e| chain(&e)));
    match store {
        Ok(s)
            if s.state != HeaderState::New && s.geometry.chunk_sectors() != pc.chunk_sectors() =>
        {
            Some(format!(
                "{}: COW {} has chunks of {} sectors but the manifest says {}",
                pc.name,
                pc.cow.display(),
                s.geometry.chunk_sectors(),
                pc.chunk
            ))
        }
        Ok(s) if !s.exceptions.is_empty() && !golden_record::record_path(&pc.cow).exists() => {
            // Recording it now would vouch for data cowctl cannot place.
            Some(format!(
                "{}: COW {} holds {} written chunks but has no record of the golden image they were written over ({}); if they belong to {}, record it with `cowctl cow record {} --base {}`, else reset it",
                pc.name,
                pc.cow.display(),
                s.exceptions.len(),
                golden_record::record_path(&pc.cow).display(),
                manifest.images[&pc.image].path.display(),
                pc.cow.display(),
                manifest.images[&pc.image].path.display(),
            ))
        }
        Ok(_) => None,
        Err(e) => Some(format!(
            "{}: COW {} is not usable: {e}",
            pc.name,
            pc.cow.display()
        )),
    }
}

/// A PC's COW over a version the store does not hold (`image::cow_problem`); each store is
/// read once.
fn version_problem(
    manifest: &Manifest,
    stores: &mut std::collections::BTreeMap<PathBuf, crate::image::Store>,
    pc: &Pc,
) -> Option<String> {
    let dir = manifest.images[&pc.image].store.as_ref()?;
    if !stores.contains_key(dir) {
        match crate::image::Store::open(dir) {
            Ok(s) => stores.insert(dir.clone(), s),
            Err(e) => return Some(chain(&e)),
        };
    }
    crate::image::cow_problem(manifest, &stores[dir], pc)
}

/// Portals must be on an interface that is up (or the wildcard); AoE interfaces must be up.
fn network_problems(ctx: &Ctx) -> Vec<String> {
    let uses_iscsi = ctx
        .manifest
        .pcs
        .iter()
        .any(|p| matches!(p.export, Export::Iscsi { .. }));
    let uses_aoe = ctx
        .manifest
        .pcs
        .iter()
        .any(|p| matches!(p.export, Export::Aoe { .. }));
    if !uses_iscsi && !uses_aoe {
        return Vec::new();
    }
    let ifaces = match ctx.kernel.net.interfaces() {
        Ok(i) => i,
        Err(e) => return vec![format!("cannot read network interfaces: {}", chain(&e))],
    };
    let mut out = Vec::new();
    if let Some(iscsi) = ctx.manifest.iscsi.as_ref().filter(|_| uses_iscsi) {
        for p in &iscsi.portals {
            let ip: IpAddr = p.0.ip();
            if !ip.is_unspecified() && !ifaces.iter().any(|i| i.up && i.addresses.contains(&ip)) {
                out.push(format!(
                    "iSCSI portal {p}: no interface that is up has address {ip}"
                ));
            }
        }
    }
    if let Some(aoe) = ctx.manifest.aoe.as_ref().filter(|_| uses_aoe) {
        match ifaces.iter().find(|i| i.name == aoe.interface) {
            None => out.push(format!("AoE interface {} does not exist", aoe.interface)),
            Some(i) if !i.up => out.push(format!("AoE interface {} is down", aoe.interface)),
            Some(_) => {}
        }
    }
    out
}
