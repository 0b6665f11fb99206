//! A PC's status row and the room's table, the same on every backend: state, fill against
//! the warning point, version, notes (a COW others can read, one removed or replaced while
//! served, one laid over a version that is gone). Each backend reads its own state and
//! usage (`control::status` from the kernel, the service from its engines).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cow::Usage;
use crate::manifest::{Manifest, Pc, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcState {
    Active,
    Overflow,
    Invalid,
    MergeFailed,
    NotApplied,
    /// A reset stopped half way: the device fails all I/O until `apply` or `reset`.
    Parked,
    /// Another gateway serves it (`gateways`, rbd storage).
    Elsewhere,
    Unknown,
}

impl PcState {
    /// The PC's disk is being served (full or not).
    pub fn is_served(self) -> bool {
        matches!(self, PcState::Active | PcState::Overflow)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PcState::Active => "active",
            PcState::Overflow => "overflow",
            PcState::Invalid => "invalid",
            PcState::MergeFailed => "merge failed",
            PcState::NotApplied => "not applied",
            PcState::Parked => "reset interrupted",
            PcState::Elsewhere => "served elsewhere",
            PcState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PcStatus {
    pub name: String,
    pub image: String,
    pub image_version: Option<String>,
    /// The image version the PC moves to at its next reset, when another than it runs.
    #[serde(default)]
    pub next_version: Option<String>,
    /// The iSCSI target IQN, eSHELF.SLOT for AoE, or the NBD URI.
    pub export: String,
    pub state: PcState,
    /// The kernel's `sectors_allocated`: header, metadata and data chunks in use.
    pub used_sectors: Option<u64>,
    pub total_sectors: Option<u64>,
    pub metadata_sectors: Option<u64>,
    /// `used_sectors / total_sectors`: at 100 % the snapshot overflows.
    pub used_percent: Option<f64>,
    pub warn: bool,
    /// iSCSI initiators logged in, or NBD clients connected.
    pub initiators: Vec<String>,
    pub cow: PathBuf,
    /// The manifest's `cow_size`; `total_sectors` is larger once auto-extend grew the COW.
    pub initial_sectors: u64,
    /// What auto-extend may grow the COW to; None without auto-extend.
    pub max_sectors: Option<u64>,
    /// Resets of this COW so far and the last one (Unix seconds), from `<cow>.golden`.
    pub resets: u64,
    pub last_reset: Option<u64>,
    /// What the admin should know that does not stop the PC, as sentences naming it (a COW
    /// other users can read).
    #[serde(default)]
    pub notes: Vec<String>,
    /// With gateways: the one that serves the PC (this one, or another).
    #[serde(default)]
    pub gateway: Option<String>,
}

impl PcStatus {
    /// A problem the admin must act on (the COW's file gone from under a served PC): said
    /// as a note, and the row warns.
    pub fn warn_of(&mut self, problem: Option<String>) {
        if let Some(p) = problem {
            self.notes.push(p);
            self.warn = true;
        }
    }

    /// How full the COW is against what it can still become: the maximum when
    /// auto-extend can grow it, else its size. What warnings and CowBell go by.
    pub fn capacity_sectors(&self) -> Option<u64> {
        let total = self.total_sectors?;
        Some(self.max_sectors.map_or(total, |m| m.max(total)))
    }
}

/// What is wrong with the file at the PC's COW path while it is served from the file
/// `opened` (st_dev, st_ino) of `bytes`: removed, replaced by another file, or cut shorter.
/// None while the path leads to that file, whole. Both backends say it alike.
pub fn cow_file_problem(pc: &Pc, opened: (u64, u64), bytes: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let (name, cow) = (&pc.name, pc.cow.display());
    match std::fs::metadata(&pc.cow) {
        Err(_) => Some(format!(
            "{name}'s COW {cow} was removed while it is served: its writes go to a file no longer on disk and are lost when it stops; restore the file or reset {name}"
        )),
        Ok(m) if (m.dev(), m.ino()) != opened => Some(format!(
            "{name}'s COW {cow} was replaced by another file while it is served: it still writes the one it opened, which is lost when it stops; restore the file or reset {name}"
        )),
        Ok(m) if m.len() < bytes => Some(format!(
            "{name}'s COW {cow} was cut to {} bytes while it is served, shorter than its store ({bytes} bytes): reads of the part cut off fail; reset {name}",
            m.len()
        )),
        Ok(_) => None,
    }
}

/// A clone may write until it holds its quota alone; when its file system has less free
/// space than that, its writes may get "no space" first.
fn clone_space_problem(pc: &Pc, u: Usage) -> Option<String> {
    let dir = pc.cow.parent()?;
    let v = nix::sys::statvfs::statvfs(dir).ok()?;
    let free = v.blocks_available() * v.fragment_size();
    let left = u.total_sectors.saturating_sub(u.sectors_allocated) * 512;
    (free < left).then(|| {
        format!(
            "its file system ({}) has {} free, less than the {} its quota (cow_size) still allows: its writes may fail with no space before that",
            dir.display(),
            crate::base::units::human(free),
            crate::base::units::human(left)
        )
    })
}

/// How many PCs' status is read at once: an rbd clone's waits on the cluster (about 8 ms
/// each here), a reflink clone's on the file system's shared-extent tree.
const STATUS_WORKERS: usize = 8;

/// `f` of each item, in their order, on up to [`STATUS_WORKERS`] threads.
pub fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(STATUS_WORKERS);
    std::thread::scope(|s| {
        let f = &f;
        let workers: Vec<_> = items
            .chunks(per)
            .map(|chunk| s.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a status worker"))
            .collect()
    })
}

/// State and usage of a PC that is not being served, read from its COW file (or, for a
/// clone, from the extents it no longer shares).
pub fn from_cow_file(m: &Manifest, pc: &Pc) -> (PcState, Option<Usage>) {
    if m.storage_of(pc) == Storage::Rbd {
        // An rbd clone's fill: its objects, as `rbd du` counts them.
        let usage = crate::rbdpc::cluster_of(m, pc).and_then(|c| c.usage(m, pc));
        return (PcState::NotApplied, usage.ok());
    }
    if m.storage_of(pc) == Storage::Reflink {
        // A clone's fill: the bytes where it is no longer its image (counted again only
        // when it was written since the last count).
        let image = &m.images[&pc.image].path;
        let run_dir = crate::base::rundir::default_dir();
        return match crate::reflink::fillcache::own_bytes(&run_dir, &pc.name, &pc.cow, image) {
            Ok(own) => (
                PcState::NotApplied,
                Some(Usage {
                    sectors_allocated: own / 512,
                    total_sectors: pc.cow_size.bytes() / 512,
                    metadata_sectors: 0,
                }),
            ),
            Err(_) => (PcState::NotApplied, None),
        };
    }
    match crate::cowfile::inspect(&pc.cow, Some(pc.chunk)) {
        Ok(i) if !i.valid => (PcState::Invalid, None),
        Ok(i) => (
            PcState::NotApplied,
            Some(Usage {
                sectors_allocated: i.sectors_allocated,
                total_sectors: i.total_sectors,
                metadata_sectors: i.metadata_sectors,
            }),
        ),
        Err(_) => (PcState::NotApplied, None),
    }
}

/// One status row: fill and warning worked out the same way for every backend.
pub fn row(
    manifest: &Manifest,
    pc: &Pc,
    state: PcState,
    usage: Option<Usage>,
    export: String,
    initiators: Vec<String>,
) -> PcStatus {
    let image = &manifest.images[&pc.image];
    // An overflowed snapshot is full by definition.
    let usage = usage.or_else(|| {
        (state == PcState::Overflow).then(|| {
            let total = std::fs::metadata(&pc.cow)
                .map(|m| m.len() / 512)
                .unwrap_or(0);
            Usage {
                sectors_allocated: total,
                total_sectors: total,
                metadata_sectors: 0,
            }
        })
    });
    let used_percent = usage.map(|u| u.allocated_percent());
    let max_sectors = pc.autoextend.map(|a| a.max.sectors());
    // Auto-extend grows the COW at its threshold: warn when the maximum is getting full.
    let risk_percent = usage.map(|u| {
        let cap = max_sectors.map_or(u.total_sectors, |m| m.max(u.total_sectors));
        crate::base::units::percent(u.sectors_allocated, cap)
    });
    let mut notes = open_to_others(pc);
    // The PC's version store, read once for both questions asked of it below.
    let store = image
        .store
        .as_deref()
        .and_then(|dir| crate::image::Store::open(dir).ok());
    let lost = store
        .as_ref()
        .and_then(|s| crate::image::cow_problem(manifest, s, pc));
    let warn = matches!(
        state,
        PcState::Overflow | PcState::Invalid | PcState::MergeFailed | PcState::Parked
    ) || risk_percent.is_some_and(|p| p >= manifest.warn_percent)
        || lost.is_some();
    notes.extend(lost);
    let short = match (image.storage, usage) {
        (Storage::Reflink, Some(u)) => clone_space_problem(pc, u),
        _ => None,
    };
    let warn = warn || short.is_some();
    notes.extend(short);
    let history = crate::image::golden_record::read(&pc.cow).ok().flatten();
    let next_version = store
        .as_ref()
        .and_then(|s| {
            crate::image::next_version_in(manifest, pc, s)
                .ok()
                .flatten()
        })
        .and_then(|(i, _)| i.version)
        .or_else(|| crate::image::rbdstore::due_name(manifest, pc));
    PcStatus {
        name: pc.name.clone(),
        image: image.family.clone(),
        image_version: image.version.clone(),
        next_version,
        export,
        state,
        used_sectors: usage.map(|u| u.sectors_allocated),
        total_sectors: usage.map(|u| u.total_sectors),
        metadata_sectors: usage.map(|u| u.metadata_sectors),
        used_percent,
        warn,
        initiators,
        cow: pc.cow.clone(),
        initial_sectors: pc.cow_size.sectors(),
        max_sectors,
        resets: history.as_ref().map_or(0, |h| h.resets),
        last_reset: history.and_then(|h| h.last_reset),
        notes,
        gateway: None,
    }
}

/// The PC's COW and record when other users may read or write them. cowctl makes them
/// 0600; one made before, or by hand, is the admin's to change, so it is only said.
fn open_to_others(pc: &Pc) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let record = crate::image::golden_record::record_path(&pc.cow);
    [("COW", pc.cow.as_path()), ("golden-image record", &record)]
        .into_iter()
        .filter_map(|(what, path)| {
            let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
            let how = match mode {
                m if m & 0o044 != 0 => "readable",
                m if m & 0o022 != 0 => "writable",
                _ => return None,
            };
            Some(format!(
                "{}: {what} {} is {how} by other users (mode {mode:04o}): chmod 600 it",
                pc.name,
                path.display()
            ))
        })
        .collect()
}

/// A table's rows as lines, each column as wide as its widest cell (in characters: cells
/// may hold an arrow), two spaces apart.
pub fn align(table: &[Vec<String>]) -> Vec<String> {
    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    table
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The status table and a warning line per PC over the threshold.
pub fn render(rows: &[PcStatus], warn_percent: f64) -> String {
    use crate::base::units::human;
    let mut table = vec![[
        "PC",
        "IMAGE",
        "EXPORT",
        "STATE",
        "USED",
        "FILL",
        "INITIATORS",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        let used = match (r.used_sectors, r.total_sectors) {
            (Some(u), Some(t)) => format!("{} / {}", human(u * 512), human(t * 512)),
            _ => "-".into(),
        };
        let fill = r.used_percent.map_or("-".into(), |p| format!("{p:.1}%"));
        let initiators = if r.initiators.is_empty() {
            "-".into()
        } else {
            // Initiator names come from the network: one cell, one line.
            crate::base::logtext::Escaped(r.initiators.join(",")).to_string()
        };
        let mut image = match &r.image_version {
            Some(v) => format!("{}@{v}", r.image),
            None => r.image.clone(),
        };
        if let Some(next) = &r.next_version {
            image.push_str(&format!(" → {next} at next reset"));
        }
        table.push(vec![
            r.name.clone(),
            image,
            r.export.clone(),
            r.state.as_str().into(),
            used,
            fill,
            initiators,
        ]);
    }
    let mut out = String::new();
    for line in align(&table) {
        out.push_str(&line);
        out.push('\n');
    }
    for r in rows {
        if let (Some(t), Some(m)) = (r.total_sectors, r.max_sectors) {
            if t > r.initial_sectors {
                out.push_str(&format!(
                    "{}'s COW was grown by auto-extend from {} to {} (at most {})\n",
                    r.name,
                    human(r.initial_sectors * 512),
                    human(t * 512),
                    human(m * 512)
                ));
            }
        }
    }
    for note in rows.iter().flat_map(|r| &r.notes) {
        out.push_str(&format!("note: {note}\n"));
    }
    for r in rows.iter().filter(|r| r.warn) {
        let why = match r.state {
            PcState::Overflow => "has overflowed: its writes fail; reset it".to_string(),
            PcState::Invalid => "is invalid: the PC cannot use its disk; reset it".to_string(),
            PcState::MergeFailed => "failed a merge".to_string(),
            _ if r.max_sectors.is_some() => format!(
                "is {:.1}% full counting all auto-extend may add (warning at {warn_percent}%): reset it or raise autoextend.max",
                crate::base::units::percent(r.used_sectors.unwrap_or(0), r.capacity_sectors().unwrap_or(0))
            ),
            _ => format!("is {:.1}% full (warning at {warn_percent}%): reset it or grow its COW before it fills", r.used_percent.unwrap_or(0.0)),
        };
        out.push_str(&format!("WARNING: {} {why}\n", r.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::in_parallel;

    #[test]
    fn rows_read_in_parallel_keep_the_pcs_order() {
        let items: Vec<u32> = (0..203).collect();
        let seen = std::sync::Mutex::new(std::collections::HashSet::new());
        let out = in_parallel(&items, |i| {
            seen.lock().unwrap().insert(std::thread::current().id());
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(seen.lock().unwrap().len() > 1, "more than one thread");
        assert_eq!(in_parallel(&[7u32], |i| i + 1), vec![8]);
        assert!(in_parallel(&Vec::<u32>::new(), |i| *i).is_empty());
    }
}
