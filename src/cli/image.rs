//! `cowctl image`: list, import, commit, promote, prune, hash an image's versions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use serde::Serialize;

use super::control::load;
use super::image_text::{on_disk, prune_lines, removal_line, utc};
use super::print_json;
use crate::base::units::human;
use crate::image::{self, VersionName, Versions};
use crate::manifest::Manifest;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Every version: which is current, which PCs run on each, which move at their next reset.
    List {
        /// Only this image (default: every image with versions).
        #[arg(add = super::complete::images())]
        image: Option<String>,
    },
    /// A new version from a raw, qcow2, vmdk, vhdx or vdi file (converted to sparse raw).
    Import {
        /// The disk file to import.
        #[arg(value_hint = clap::ValueHint::FilePath)]
        src: PathBuf,
        /// The image's name in the manifest.
        #[arg(long, add = super::complete::images())]
        image: String,
        /// Its name (default: v<N+1>).
        #[arg(long)]
        version: Option<String>,
        /// A line saying what the version holds.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A new version holding a PC's disk (its version with its COW over it).
    Commit {
        /// The PC whose disk becomes the version.
        #[arg(add = super::complete::pcs())]
        pc: String,
        /// Its name (default: v<N+1>).
        #[arg(long)]
        version: Option<String>,
        /// A line saying what the version holds.
        #[arg(long, default_value = "")]
        note: String,
        /// Stop the PC's I/O for the copy instead of refusing a PC that is in use.
        #[arg(long)]
        pause: bool,
    },
    /// Make a version current for the room, or for the PCs named.
    ///
    /// Each PC moves to it at its next reset. Rolling back is promoting the older version.
    Promote {
        /// The image's name in the manifest.
        #[arg(add = super::complete::images())]
        image: String,
        /// The version, as `image list` names it.
        version: String,
        /// Only these PCs (default: the whole room).
        #[arg(add = super::complete::pcs())]
        pcs: Vec<String>,
    },
    /// Remove versions that are not current and that no COW on this server lies over.
    Prune {
        /// The image's name in the manifest.
        #[arg(add = super::complete::images())]
        image: String,
        /// List what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Add the full SHA-256 to old versions, and verify the others.
    ///
    /// Versions made before cowctl took the hash get it; a mismatch changes nothing.
    Hash {
        /// The image's name in the manifest.
        #[arg(add = super::complete::images())]
        image: String,
    },
}

pub fn run(c: ImageCommand, flag: Option<&Path>, json: bool) -> Result<ExitCode> {
    if let ImageCommand::Import { .. } = c {
        // Before an image has a version, the manifest cannot put PCs on one.
        let m = Manifest::load(&crate::manifest::resolve_path(flag))?;
        return import(&m, c, json);
    }
    // Commands that change a store hold the lock from before the manifest is read.
    let _lock = match &c {
        ImageCommand::Promote { image, .. }
        | ImageCommand::Prune { image, .. }
        | ImageCommand::Hash { image } => {
            let what = format!("image {} {image}", command_name(&c));
            Some(crate::room::lock::acquire(
                &crate::control::default_run_dir(),
                &what,
            )?)
        }
        _ => None,
    };
    let m = load(flag)?;
    match c {
        ImageCommand::List { image } => list(&m, image.as_deref(), json),
        ImageCommand::Import { .. } => unreachable!("handled above"),
        ImageCommand::Commit {
            pc,
            version,
            note,
            pause,
        } => commit(&m, &pc, version, &note, pause, json),
        ImageCommand::Promote {
            image,
            version,
            pcs,
        } => promote(&m, &image, &version, &pcs, json),
        ImageCommand::Prune { image, dry_run } => prune(&m, &image, dry_run, json),
        ImageCommand::Hash { image } => hash(&m, &image, json),
    }
}

fn command_name(c: &ImageCommand) -> &'static str {
    match c {
        ImageCommand::List { .. } => "list",
        ImageCommand::Import { .. } => "import",
        ImageCommand::Commit { .. } => "commit",
        ImageCommand::Promote { .. } => "promote",
        ImageCommand::Prune { .. } => "prune",
        ImageCommand::Hash { .. } => "hash",
    }
}

fn hash(m: &Manifest, family: &str, json: bool) -> Result<ExitCode> {
    use image::hash::Checked;
    if image::open_rbd(m, family)?.is_some() {
        bail!("{family}'s versions are images in a Ceph pool: the cluster checks their data itself (its own checksums on every object), so cowctl keeps no hash of them to verify");
    }
    let store = image::open(m, family)?;
    let checked = image::hash::hash_store(&store)?;
    if json {
        print_json(&checked)?;
    }
    let mut bad = 0;
    for c in &checked {
        match c {
            Checked::Added { version, sha256 } if !json => {
                outln!("{family}@{version}: sha256 {sha256} added")
            }
            Checked::Verified { version } if !json => {
                outln!("{family}@{version}: sha256 verified")
            }
            Checked::Mismatch {
                version,
                recorded,
                found,
            } => {
                bad += 1;
                eprintln!(
                    "{family}@{version}: {} DOES NOT MATCH its record: recorded sha256 {recorded}, found {found}; the disk changed after it was made",
                    store.disk(version).display()
                );
            }
            _ => {}
        }
    }
    if bad > 0 {
        bail!("{bad} version(s) of {family} changed on disk; nothing was written (restore them from a backup, or prune them)");
    }
    Ok(ExitCode::SUCCESS)
}

fn import(m: &Manifest, c: ImageCommand, json: bool) -> Result<ExitCode> {
    let ImageCommand::Import {
        src,
        image,
        version,
        note,
    } = c
    else {
        unreachable!("an import")
    };
    // The import takes the family's change lease itself, for its last step only.
    let versions = Versions::open(m, &image)?;
    let v = versions.import(&src, name(version)?, &note)?;
    if json {
        return print_json(&v).map(|()| ExitCode::SUCCESS);
    }
    let versions = versions.reread(m, &image)?;
    outln!(
        "imported {} as {image}@{} ({}, {} stored){}",
        src.display(),
        v.name,
        human(v.size),
        on_disk(versions.space(&v.name)),
        if versions.view().current() == Some(&v.name) {
            "; it is current"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn name(v: Option<String>) -> Result<Option<VersionName>> {
    v.map(|v| v.parse().map_err(|e: String| anyhow!(e)))
        .transpose()
}

fn commit(
    m: &Manifest,
    pc_name: &str,
    version: Option<String>,
    note: &str,
    pause: bool,
    json: bool,
) -> Result<ExitCode> {
    let pc = m
        .pc(pc_name)
        .ok_or_else(|| anyhow!("no PC named {pc_name:?} in {}", m.path.display()))?;
    let from = m.images[&pc.image].clone();
    let c = crate::backend::pick(m).commit(m, pc, name(version)?, note, pause)?;
    if json {
        return print_json(&c).map(|()| ExitCode::SUCCESS);
    }
    outln!(
        "committed {pc_name} as {}@{} (parent {}): {} changed in {} chunks, {} in {:.2} s",
        from.family,
        c.version.name,
        from.version.as_deref().unwrap_or("-"),
        human(c.built.changed_bytes),
        c.built.chunks,
        match c.built.method {
            image::build::Method::Reflink => "blocks shared with the parent (reflink)",
            image::build::Method::SparseCopy => "parent copied sparse",
            image::build::Method::RbdClone => "its clone became the version (nothing copied)",
        },
        c.built.elapsed.as_secs_f64()
    );
    outln!(
        "next: cowctl image promote {} {} [PC…]  (PCs move at their next reset)",
        from.family,
        c.version.name
    );
    Ok(ExitCode::SUCCESS)
}

fn promote(
    m: &Manifest,
    family: &str,
    version: &str,
    pcs: &[String],
    json: bool,
) -> Result<ExitCode> {
    let versions = Versions::open_to_change(m, family)?;
    let v: VersionName = version.parse().map_err(|e: String| anyhow!(e))?;
    for pc in pcs {
        match m.pc(pc) {
            None => bail!("no PC named {pc:?} in {}", m.path.display()),
            Some(p) if m.images[&p.image].family != family => {
                bail!(
                    "{pc} runs on image {}, not {family}",
                    m.images[&p.image].family
                )
            }
            Some(_) => {}
        }
    }
    let promoted = image::promote(&versions, &v, pcs)?;
    if json {
        return print_json(&promoted).map(|()| ExitCode::SUCCESS);
    }
    let versions = versions.reread(m, family)?;
    let store = versions.view();
    let moving: Vec<&str> = m
        .pcs
        .iter()
        .filter(|p| m.images[&p.image].family == family)
        .filter(|p| {
            store.target(&p.name).map(VersionName::as_str) != m.images[&p.image].version.as_deref()
        })
        .map(|p| p.name.as_str())
        .collect();
    if pcs.is_empty() {
        outln!("{family}@{v} is current for the room");
    } else {
        outln!("{family}@{v} is promoted to {}", pcs.join(", "));
    }
    if moving.is_empty() {
        outln!("no PC changes version");
    } else {
        outln!(
            "at their next reset, {} move: {}",
            moving.len(),
            moving.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct Row {
    image: String,
    version: VersionName,
    current: bool,
    parent: Option<VersionName>,
    created: u64,
    note: String,
    made_from: String,
    size: u64,
    /// SHA-256 of its disk; none for a version made before cowctl took it.
    sha256: Option<String>,
    /// `allocated` and `shared` (blocks a commit cloned) in the JSON.
    #[serde(flatten)]
    space: image::space::Space,
    /// PCs whose COW lies over this version.
    runs_on: Vec<String>,
    /// PCs that move to it at their next reset.
    moving_here: Vec<String>,
    promoted_to: Vec<String>,
}

/// One row per version, oldest first.
fn rows(m: &Manifest, family: &str, versions: &Versions) -> Vec<Row> {
    let store = versions.view();
    let on = |key: &str| -> Vec<String> {
        m.pcs
            .iter()
            .filter(|p| p.image == key)
            .map(|p| p.name.clone())
            .collect()
    };
    let mut rows: Vec<Row> = store
        .versions
        .values()
        .map(|v| {
            let key = image::key(family, &v.name);
            let moving_here = m
                .pcs
                .iter()
                .filter(|p| m.images[&p.image].family == family && p.image != key)
                .filter(|p| store.target(&p.name) == Some(&v.name))
                .map(|p| p.name.clone())
                .collect();
            let space = versions.space(&v.name);
            Row {
                image: family.to_string(),
                version: v.name.clone(),
                current: store.current() == Some(&v.name),
                parent: v.parent.clone(),
                created: v.created,
                note: v.note.clone(),
                made_from: v.made_from.clone(),
                size: v.size,
                sha256: v.sha256.clone(),
                space,
                runs_on: on(&key),
                moving_here,
                promoted_to: store
                    .promoted
                    .pcs
                    .iter()
                    .filter(|(_, pv)| **pv == v.name)
                    .map(|(p, _)| p.clone())
                    .collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (a.created, &a.version).cmp(&(b.created, &b.version)));
    rows
}

fn list(m: &Manifest, only: Option<&str>, json: bool) -> Result<ExitCode> {
    let mut families: Vec<String> = Vec::new();
    for i in m.images.values() {
        let versioned = i.store.is_some() || i.rbd_versions.is_some();
        if versioned && !families.contains(&i.family) {
            families.push(i.family.clone());
        }
    }
    if let Some(o) = only {
        families.retain(|f| f == o);
        if families.is_empty() {
            image::open(m, o)?; // says why: no such image, or one without versions
        }
    }
    let mut all = Vec::new();
    for family in &families {
        let versions = Versions::open(m, family)?;
        let store = versions.view();
        let rows = rows(m, family, &versions);
        if !json {
            outln!(
                "{family} ({}): current {}",
                store.dir.display(),
                store.current().map_or("none", VersionName::as_str)
            );
            print_table(&rows);
            let unhashed: Vec<&str> = rows
                .iter()
                .filter(|r| r.sha256.is_none())
                .map(|r| r.version.as_str())
                .collect();
            if !unhashed.is_empty() && matches!(versions, Versions::Files(_)) {
                outln!(
                    "  {} without a full hash (made before cowctl took one): add it with `cowctl image hash {family}`",
                    unhashed.join(", ")
                );
            }
        }
        all.extend(rows);
    }
    if json {
        print_json(&all)?;
    } else if families.is_empty() {
        outln!(
            "no image of {} has versions (images.NAME.versions)",
            m.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Row]) {
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let mut t = vec![[
        "VERSION",
        "CREATED (UTC)",
        "PARENT",
        "SIZE",
        "ON DISK",
        "SHA-256",
        "RUNS ON",
        "MOVING HERE",
        "NOTE",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        t.push(vec![
            format!("{}{}", r.version, if r.current { " *" } else { "" }),
            utc(r.created),
            r.parent.as_ref().map_or("-".into(), |p| p.to_string()),
            human(r.size),
            on_disk(r.space),
            r.sha256
                .as_ref()
                .map_or("none".into(), |h| h[..12.min(h.len())].to_string()),
            dash(&r.runs_on),
            dash(&r.moving_here),
            r.note.clone(),
        ]);
    }
    for line in crate::room::status::align(&t) {
        outln!("  {line}");
    }
}

fn prune(m: &Manifest, family: &str, dry_run: bool, json: bool) -> Result<ExitCode> {
    if let Some(store) = image::open_rbd_to_change(m, family)? {
        return super::image_rbd::prune(m, family, &store, dry_run, json);
    }
    let store = image::open(m, family)?;
    let plan = image::prune_plan(m, &store, family, &crate::kernel::loopdev::SysLoops);
    if json {
        print_json(&plan)?;
    }
    prune_lines(family, &plan.keep, json);
    for v in &plan.remove {
        if !json {
            let space = image::space::of(&store.disk(&v.name));
            outln!("{}", removal_line(family, v, space, (dry_run, "on disk")));
        }
        if !dry_run {
            image::remove_version(&store, &v.name)?;
        }
    }
    if !dry_run {
        for r in &plan.stale {
            std::fs::remove_file(r)?;
        }
    }
    for d in &plan.leftovers {
        if !json {
            outln!(
                "{} {} (an import or commit that died half way)",
                if dry_run { "would remove" } else { "remove" },
                d.display()
            );
        }
        if !dry_run {
            std::fs::remove_dir_all(d)?;
        }
    }
    if !json && plan.remove.is_empty() && plan.leftovers.is_empty() {
        outln!("nothing to prune in {family}");
    }
    Ok(ExitCode::SUCCESS)
}
