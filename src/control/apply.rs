//! Running a plan. Each step either completes or undoes its own part; the first failure
//! stops the run and says which step failed and what was done before it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::plan::Teardown;
use super::{dm_name, Ctx, Error, Result};
use crate::dm::{DevRef, SnapshotTable, StoreMode, TableLine};
use crate::kernel::aoe::VbladeSpec;
use crate::kernel::devmapper::Target;
use crate::kernel::lio::{Lio, TargetSpec};
use crate::kernel::loopdev;
use crate::room::step::Step;
use crate::room::steps::run_steps;

/// Runs `actions` in order; `progress` hears of each before it starts.
/// With `COWCTL_STEP_TIMES` set, the time each kind of step took in all goes to stderr.
pub fn run(ctx: &Ctx, actions: &[Step], progress: &mut dyn FnMut(usize, &Step)) -> Result<()> {
    let mut loops = KnownLoops::default();
    // One fingerprint per image and run, however many PCs record it.
    let mut fingerprints = Fingerprints::new();
    let times = Timings::default();
    let result = run_steps(
        actions,
        |a| times.time(a, || step(ctx, a, &mut loops, &mut fingerprints)),
        progress,
    );
    times.report();
    Ok(result?)
}

/// Runs a teardown: the PCs' groups side by side, up to [`super::SIDE_BY_SIDE`] at a time
/// (each PC's steps in order), then the image loops. Most of a PC's teardown is the kernel
/// waiting (LIO and device-mapper wait for RCU grace periods when a LUN, a TPG or a device
/// goes), and those waits overlap. Every PC is tried; the image loops go only if every PC's
/// steps succeeded.
pub fn run_teardown(
    ctx: &Ctx,
    teardown: &Teardown,
    progress: &mut (dyn FnMut(usize, &Step) + Send),
) -> Result<()> {
    let total = teardown.len();
    let offsets: Vec<usize> = teardown
        .pcs
        .iter()
        .scan(0, |at, g| {
            let here = *at;
            *at += g.len();
            Some(here)
        })
        .collect();
    let progress = Mutex::new(progress);
    let times = Timings::default();
    let failures: Vec<String> = super::side_by_side(&teardown.pcs, |g, group| {
        let mut loops = KnownLoops::default();
        let mut fingerprints = Fingerprints::new();
        for (j, a) in group.iter().enumerate() {
            let i = offsets[g] + j;
            (lock(&progress))(i, a);
            if let Err(e) = times.time(a, || step(ctx, a, &mut loops, &mut fingerprints)) {
                let e = crate::base::logtext::chain(&e);
                return Some(format!("step {} of {total} failed: {a}: {e}", i + 1));
            }
        }
        None
    })
    .into_iter()
    .flatten()
    .collect();
    if !failures.is_empty() {
        times.report();
        return Err(Error::Teardown { failures });
    }
    let before = total - teardown.images.len();
    let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut loops = KnownLoops::default();
    let mut fingerprints = Fingerprints::new();
    let result = run_steps(
        &teardown.images,
        |a| times.time(a, || step(ctx, a, &mut loops, &mut fingerprints)),
        &mut |i, a| progress(before + i, a),
    );
    times.report();
    Ok(result?)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use crate::room::step::Fingerprints;

/// How long each kind of step took in all, printed to stderr with `COWCTL_STEP_TIMES`.
#[derive(Default)]
struct Timings(Mutex<BTreeMap<&'static str, (usize, Duration)>>);

impl Timings {
    fn time<T>(&self, a: &Step, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let r = f();
        let mut m = lock(&self.0);
        let t = m.entry(a.kind()).or_default();
        t.0 += 1;
        t.1 += started.elapsed();
        r
    }

    fn report(&self) {
        if std::env::var_os("COWCTL_STEP_TIMES").is_some() {
            for (kind, (n, took)) in lock(&self.0).iter() {
                eprintln!(
                    "step times: {kind}: {n} in {:.1} ms",
                    took.as_secs_f64() * 1e3
                );
            }
        }
    }
}

/// The loop devices as this run changed them: read from sysfs once, when a step first needs
/// them, then kept up to date by the run's own attaches and detaches, so a room's apply
/// reads the room's loops once instead of once per PC.
#[derive(Default)]
struct KnownLoops(Option<Vec<loopdev::LoopInfo>>);

impl KnownLoops {
    fn get(&mut self, ctx: &Ctx) -> Result<&[loopdev::LoopInfo]> {
        if self.0.is_none() {
            self.0 = Some(ctx.kernel.loops.list()?);
        }
        Ok(self.0.as_deref().unwrap_or_default())
    }

    fn attached(&mut self, l: loopdev::LoopInfo) {
        if let Some(known) = &mut self.0 {
            known.push(l);
        }
    }

    fn detached(&mut self, dev: &std::path::Path) {
        if let Some(known) = &mut self.0 {
            known.retain(|l| l.dev != dev);
        }
    }

    /// After a step that changed loops its own way.
    fn forget(&mut self) {
        self.0 = None;
    }
}

fn step(
    ctx: &Ctx,
    action: &Step,
    loops: &mut KnownLoops,
    fingerprints: &mut Fingerprints,
) -> Result<()> {
    let k = ctx.kernel;
    match action {
        Step::CreateCow { .. } | Step::CloneDisk { .. } | Step::RecordGolden { .. } => {
            Ok(action.run_on_files(fingerprints)?)
        }
        Step::CloneRbd { .. }
        | Step::MapRbd { .. }
        | Step::CreateLinearRbd { .. }
        | Step::UnmapRbd { .. } => super::rbd::run_step(ctx, action),
        Step::StartService { .. }
        | Step::Serve { .. }
        | Step::Reopen { .. }
        | Step::StopServing { .. } => Err(Error::ServiceStep {
            step: action.to_string(),
        }),
        Step::AttachImage { path, .. } => {
            loops.attached(k.loops.attach(path, true)?);
            Ok(())
        }
        Step::AttachCow { path, .. } => {
            loops.attached(k.loops.attach(path, false)?);
            Ok(())
        }
        Step::CreateSnapshot {
            pc,
            image,
            cow,
            mode,
            chunk_sectors,
        } => {
            let target = snapshot_target(image, cow, *mode, *chunk_sectors, loops.get(ctx)?)?;
            Ok(k.dm.create(&dm_name(pc), &target).map(drop)?)
        }
        Step::CreateLinear { pc, disk } => {
            super::clone::create_linear(ctx, pc, disk, loops.get(ctx)?)
        }
        Step::ExportIscsi { pc, spec } => export_iscsi(ctx, pc, spec),
        Step::RecreateIscsi { pc, spec } => {
            Lio {
                fs: k.configfs.as_ref(),
            }
            .delete(spec.iqn.as_str())?;
            export_iscsi(ctx, pc, spec)
        }
        Step::StartVblade { pc, spec, .. } => start_vblade(ctx, pc, spec),
        Step::StopVblade { pc } => Ok(k.vblade.stop(pc)?),
        Step::UnexportIscsi { target } => Lio {
            fs: k.configfs.as_ref(),
        }
        .delete(target)
        .map_err(Into::into),
        Step::RemoveSnapshot { name } => {
            k.dm.remove(name)?;
            let _ = std::fs::remove_file(ctx.node_dir().join(name));
            Ok(())
        }
        Step::DetachLoop { dev, backing } => detach_loop(ctx, dev, backing, loops),
        Step::Resume { pc } => Ok(k.dm.resume(&dm_name(pc))?),
        Step::FinishReset { pc: name } => finish_reset(ctx, name, loops),
    }
}

/// A vblade over the PC's snapshot device, whose node only now exists.
fn start_vblade(ctx: &Ctx, pc: &str, spec: &VbladeSpec) -> Result<()> {
    let k = ctx.kernel;
    let device = k.dm.node(&dm_name(pc), &ctx.node_dir())?;
    let spec = VbladeSpec {
        device: device.display().to_string(),
        ..spec.clone()
    };
    Ok(k.vblade.start(&spec).map(drop)?)
}

fn detach_loop(ctx: &Ctx, dev: &Path, backing: &Path, loops: &mut KnownLoops) -> Result<()> {
    ctx.kernel.loops.detach(dev)?;
    loops.detached(dev);
    // The old COW of an interrupted reset: the reset was asked for, so it goes — only a
    // PC's own `<cow>.discard`, and only when it is a COW.
    let discarded = ctx
        .manifest
        .pcs
        .iter()
        .any(|p| crate::room::reset::discard_path(&p.cow) == *backing);
    let a_cow = matches!(
        crate::engine::filekind::classify(backing),
        Ok(crate::engine::filekind::Kind::Cow | crate::engine::filekind::Kind::Fresh)
    );
    if discarded && a_cow {
        std::fs::remove_file(backing).map_err(|source| Error::Remove {
            path: backing.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// A reset that stopped half way, finished from what the kernel shows now (the loops
/// known so far are read again).
fn finish_reset(ctx: &Ctx, name: &str, loops: &mut KnownLoops) -> Result<()> {
    let pc = ctx.manifest.pc(name).ok_or_else(|| Error::NotInManifest {
        pc: name.to_string(),
    })?;
    let obs = super::observe::Observed::read(ctx.kernel)?;
    loops.forget();
    super::reset::finish_parked(ctx, &obs, pc, &dm_name(name), false)?;
    Ok(crate::image::golden_record::note_reset(&pc.cow, None)?)
}

/// The snapshot table of `image` and `cow` over the loops now attached to them.
fn snapshot_target(
    image: &Path,
    cow: &Path,
    mode: StoreMode,
    chunk_sectors: u32,
    loops: &[loopdev::LoopInfo],
) -> Result<Target> {
    let origin = loopdev::find(loops, image, true).ok_or_else(|| Error::ImageNotOnLoop {
        image: image.to_path_buf(),
    })?;
    let cow_loop = loopdev::find(loops, cow, false).ok_or_else(|| Error::CowNotOnLoop {
        cow: cow.to_path_buf(),
    })?;
    // A block device (an image given as a link to an LV) has no length in its metadata.
    let sectors = std::fs::File::open(image)
        .and_then(|f| crate::base::fileid::file_or_device_size(&f))
        .map_err(|source| Error::Read {
            path: image.to_path_buf(),
            source,
        })?
        / 512;
    let line = TableLine {
        start: 0,
        length: sectors,
        snapshot: SnapshotTable {
            origin: DevRef::Path(origin.dev.display().to_string()),
            cow: DevRef::Path(cow_loop.dev.display().to_string()),
            mode,
            chunk_sectors,
            features: Vec::new(),
        },
    };
    debug_assert!(matches!(line.snapshot.mode, StoreMode::P | StoreMode::PO));
    Ok(Target::snapshot(&line))
}

/// Creates the target with the PC's device filled in.
fn export_iscsi(ctx: &Ctx, pc: &str, spec: &TargetSpec) -> Result<()> {
    let device = ctx.kernel.dm.node(&dm_name(pc), &ctx.node_dir())?;
    let spec = TargetSpec {
        device: device.display().to_string(),
        ..spec.clone()
    };
    Lio {
        fs: ctx.kernel.configfs.as_ref(),
    }
    .create(&spec)
    .map_err(Into::into)
}
