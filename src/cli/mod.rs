//! The command line: parsing and printing only; the work happens in the library.

mod control;
mod cow;
mod doctor;
mod image;
mod pxe;
mod userspace;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cowctl",
    version,
    about = "Serve many diskless PCs from one golden disk image"
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The manifest (default: $COWCTL_MANIFEST, else /etc/cowctl/cowctl.yaml).
    #[arg(short = 'f', long, global = true)]
    pub manifest: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work on COW files in the kernel's dm-snapshot persistent format.
    #[command(subcommand)]
    Cow(cow::CowCommand),
    /// Golden image versions: list, import, commit a PC, promote, prune, hash.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Check the manifest and list every error at once.
    Validate,
    /// Check this machine against the manifest: backend, ports, PXE, space, secrets, clock;
    /// one line each with the fix. Exits 1 when a check fails (warnings exit 0).
    Doctor,
    /// Show what `apply` would change in the kernel.
    Plan,
    /// Make the kernel serve every PC of the manifest (create COWs, loops, snapshots, exports).
    Apply,
    /// Remove exports, snapshots and loops of these PCs (all when none named); COW files stay.
    Down { pcs: Vec<String> },
    /// Each PC's state and COW fill; exits 2 when a PC is over the warning threshold or broken.
    Status {
        pcs: Vec<String>,
        /// Redraw every N seconds.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Each PC's own CHAP credentials (derived from the master secret), for initiators
    /// configured by hand; boot scripts carry them for PCs that boot with iPXE.
    Chap { pcs: Vec<String> },
    /// Return PCs to the golden image, also while they are exported and in use.
    Reset {
        pcs: Vec<String>,
        #[arg(long, conflicts_with = "pcs")]
        all: bool,
        /// Then wake the PCs with Wake-on-LAN: a fresh room in one command.
        #[arg(long)]
        wake: bool,
    },
    /// Send Wake-on-LAN magic packets to these PCs (on pxe.interface when there is one).
    Wake {
        pcs: Vec<String>,
        #[arg(long, conflicts_with = "pcs")]
        all: bool,
    },
    /// In the foreground: serve every PC with cowctl's engine over NBD (userspace backend),
    /// with the HTTP service and auto-extend; on the kernel backend only the last two.
    Serve {
        /// Serve nothing until the first `cowctl apply` (how apply starts the service).
        #[arg(long, hide = true)]
        start_empty: bool,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let f = cli.manifest.as_deref();
    match cli.command {
        Command::Cow(c) => cow::run(c, cli.json).map(|()| std::process::ExitCode::SUCCESS),
        Command::Image(c) => image::run(c, f, cli.json),
        Command::Validate => control::validate(f, cli.json),
        Command::Doctor => doctor::run(f, cli.json),
        Command::Plan => control::plan(f, cli.json),
        Command::Apply => control::apply(f, cli.json),
        Command::Down { pcs } => control::down(f, &pcs, cli.json),
        Command::Status { pcs, watch } => control::status(f, &pcs, cli.json, watch),
        Command::Reset { pcs, all, wake } => control::reset(f, &pcs, all, wake, cli.json),
        Command::Wake { pcs, all } => {
            if pcs.is_empty() && !all {
                anyhow::bail!("name the PCs to wake, or say --all");
            }
            pxe::wake(&control::load(f)?, &pcs, cli.json)
        }
        Command::Chap { pcs } => control::chap(f, &pcs, cli.json),
        Command::Serve { start_empty } => control::serve(f, start_empty),
    }
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
