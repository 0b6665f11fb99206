use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::print_json;
use crate::base::units::{human, ByteSize};
use crate::cowfile;

#[derive(Debug, Subcommand)]
pub enum CowCommand {
    /// Create a sparse COW file ready for the kernel's snapshot target or the engine.
    Create {
        cowfile: PathBuf,
        /// Size of the COW file, e.g. 200MiB.
        #[arg(long)]
        size: ByteSize,
        /// Chunk size: a power of two number of sectors, e.g. 32KiB.
        #[arg(long, default_value = "16KiB")]
        chunk: ByteSize,
    },
    /// Show the header, the exception count and what `dmsetup status` would print.
    Inspect {
        cowfile: PathBuf,
        /// Chunk size a table would give; used only when the file is a new (zeroed) snapshot.
        #[arg(long)]
        chunk: Option<ByteSize>,
    },
    /// Write the PC's whole disk (golden image plus COW) as a raw image.
    Flatten {
        /// The golden image the COW was made against.
        #[arg(long)]
        base: PathBuf,
        cowfile: PathBuf,
        /// Output raw image; must not exist.
        #[arg(short, long)]
        output: PathBuf,
        /// Chunk size a table would give; used only when the file is a new (zeroed) snapshot.
        #[arg(long)]
        chunk: Option<ByteSize>,
    },
    /// Return a COW file to the golden state: zero the header, punch out its blocks.
    Reset { cowfile: PathBuf },
    /// Record which golden image a COW was written over.
    ///
    /// Writes the COW's `.golden` record, for a COW that has none; `apply` refuses such a
    /// COW until then.
    Record {
        cowfile: PathBuf,
        /// The golden image the COW's data lies over.
        #[arg(long)]
        base: PathBuf,
    },
}

pub fn run(cmd: CowCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        CowCommand::Record { cowfile, base } => record(&cowfile, &base, json),
        CowCommand::Create {
            cowfile,
            size,
            chunk,
        } => create(&cowfile, size, chunk, json),
        CowCommand::Inspect { cowfile, chunk } => inspect(&cowfile, chunk, json),
        CowCommand::Flatten {
            base,
            cowfile,
            output,
            chunk,
        } => flatten(&base, &cowfile, &output, chunk, json),
        CowCommand::Reset { cowfile } => reset(&cowfile, json),
    }
}

/// `cow record`: the `.golden` record of a COW that has none.
fn record(cowfile: &Path, base: &Path, json: bool) -> anyhow::Result<()> {
    use crate::image::golden_record;
    if let crate::engine::filekind::Kind::Other(what) = crate::engine::filekind::classify(cowfile)?
    {
        anyhow::bail!(
            "{} is not a COW file: it looks like {what}",
            cowfile.display()
        );
    }
    if let Some(g) = golden_record::read(cowfile)? {
        anyhow::bail!(
            "{} already records golden image {}; it is not changed",
            golden_record::record_path(cowfile).display(),
            g.image.display()
        );
    }
    let g = crate::image::golden_for(base)?;
    golden_record::write(cowfile, &g)?;
    if json {
        return print_json(&g);
    }
    outln!(
        "recorded that {} belongs to golden image {} ({} bytes)",
        cowfile.display(),
        base.display(),
        g.size
    );
    Ok(())
}

fn create(cowfile: &Path, size: ByteSize, chunk: ByteSize, json: bool) -> anyhow::Result<()> {
    let c = cowfile::create(cowfile, size, chunk)?;
    if json {
        return print_json(&c);
    }
    outln!(
        "created {}: {} sparse, chunk {} ({} sectors), room for {} data chunks ({})",
        c.path.display(),
        ByteSize(c.size_bytes),
        chunk,
        c.chunk_sectors,
        c.data_chunks,
        human(c.data_chunks * chunk.bytes())
    );
    if let Some(asked) = c.requested_bytes {
        outln!(
            "note: {} was rounded up by one chunk: at exactly that size a full COW invalidates the snapshot instead of overflowing",
            ByteSize(asked)
        );
    }
    Ok(())
}

fn inspect(cowfile: &Path, chunk: Option<ByteSize>, json: bool) -> anyhow::Result<()> {
    let i = cowfile::inspect(cowfile, chunk)?;
    if json {
        return print_json(&i);
    }
    let state = match i.state {
        crate::cow::HeaderState::New => "new (magic 0: the kernel starts an empty snapshot)",
        crate::cow::HeaderState::Valid => "valid",
        crate::cow::HeaderState::Invalid => "INVALID (valid = 0: the kernel refuses all I/O)",
    };
    outln!(
        "file          {} ({})",
        i.path.display(),
        human(i.file_bytes)
    );
    outln!("state         {state}");
    outln!("version       {}", i.version);
    outln!(
        "chunk         {} sectors ({})",
        i.chunk_sectors,
        ByteSize::from_sectors(u64::from(i.chunk_sectors))
    );
    outln!(
        "exceptions    {} in {} area(s) of {}",
        i.exceptions,
        i.areas,
        i.exceptions_per_area
    );
    outln!("dm status     {}", i.status);
    if i.fill_invalidates {
        outln!("warning       when this COW fills, the kernel invalidates the snapshot even with PO: its last chunk ends a metadata area (grow it by one chunk)");
    }
    outln!(
        "data fill     {:.1}% ({} of {})",
        i.data_fill_percent,
        human((i.sectors_allocated - i.metadata_sectors) * 512),
        human(i.total_sectors * 512)
    );
    Ok(())
}

fn flatten(
    base: &Path,
    cowfile: &Path,
    output: &Path,
    chunk: Option<ByteSize>,
    json: bool,
) -> anyhow::Result<()> {
    let f = cowfile::flatten(base, cowfile, output, chunk)?;
    if json {
        return print_json(&f);
    }
    outln!(
        "wrote {} ({}, {} of it from the COW)",
        f.output.display(),
        human(f.bytes),
        human(f.bytes_from_cow_chunks)
    );
    Ok(())
}

fn reset(cowfile: &Path, json: bool) -> anyhow::Result<()> {
    let r = cowfile::reset(cowfile, &crate::kernel::loopdev::SysLoops)?;
    if json {
        return print_json(&r);
    }
    let how = if r.holes_punched {
        "holes punched"
    } else {
        "header zeroed, file system cannot punch holes"
    };
    outln!(
        "reset {} in {:.3} ms ({how}, {} freed)",
        r.path.display(),
        r.elapsed.as_secs_f64() * 1e3,
        human(r.bytes_freed)
    );
    Ok(())
}
