//! The command line: parsing and printing only; the work happens in the library.

#[macro_use]
mod out;

mod complete;
mod control;
mod cow;
mod doctor;
mod examples;
mod generate;
mod image;
mod image_rbd;
mod image_text;
mod logging;
mod pcs;
mod pxe;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use complete::complete_if_asked;

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
    #[arg(short = 'f', long, global = true, value_hint = clap::ValueHint::FilePath)]
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
    /// PCs added by booting them: list the unknown MACs that asked to PXE-boot, adopt them.
    #[command(subcommand)]
    Pcs(pcs::PcsCommand),
    /// Check the manifest and list every error at once.
    Validate,
    /// Check this machine against the manifest: backend, ports, PXE, space, secrets, clock,
    /// the Ceph cluster of rbd images;
    /// one line each with the fix. Exits 1 when a check fails (warnings exit 0).
    Doctor,
    /// Show what `apply` would change in the kernel.
    Plan,
    /// Make the kernel serve every PC of the manifest (create COWs, loops, snapshots, exports).
    Apply,
    /// Stop serving PCs: remove their exports, snapshots and loops.
    ///
    /// All PCs when none are named. COW files stay.
    Down {
        /// PCs by name (default: every PC of the manifest).
        #[arg(add = complete::pcs())]
        pcs: Vec<String>,
    },
    /// Each PC's state and COW fill.
    ///
    /// Exits 2 when a PC is over the warning threshold (warn_percent) or broken.
    Status {
        /// PCs by name (default: every PC of the manifest).
        #[arg(add = complete::pcs())]
        pcs: Vec<String>,
        /// Redraw every N seconds.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Each PC's own CHAP credentials, for initiators configured by hand.
    ///
    /// They are derived from the master secret (iscsi.chap.secret_file); boot scripts carry
    /// them for PCs that boot with iPXE.
    Chap {
        /// PCs by name (default: every PC of the manifest).
        #[arg(add = complete::pcs())]
        pcs: Vec<String>,
    },
    /// Return PCs to the golden image, also while they are exported and in use.
    Reset {
        /// PCs by name; or --all.
        #[arg(add = complete::pcs())]
        pcs: Vec<String>,
        /// Every PC that does not keep its changes (`keep: true`).
        #[arg(long, conflicts_with = "pcs")]
        all: bool,
        /// Then wake the PCs with Wake-on-LAN: a fresh room in one command.
        #[arg(long)]
        wake: bool,
    },
    /// Send Wake-on-LAN magic packets to these PCs (on pxe.interface when there is one).
    Wake {
        /// PCs by name; or --all.
        #[arg(add = complete::pcs())]
        pcs: Vec<String>,
        /// Every PC of the manifest.
        #[arg(long, conflicts_with = "pcs")]
        all: bool,
    },
    /// Serve in the foreground: the userspace backend, the HTTP service and auto-extend.
    ///
    /// On the userspace backend it serves every PC with cowctl's engine (NBD, iSCSI, AoE),
    /// with the HTTP service and auto-extend; on the kernel backend only the last two.
    /// SIGHUP (`systemctl reload`) runs the binary on disk in its place with every socket
    /// and iSCSI session handed over; SIGTERM commits every COW and exits.
    Serve {
        /// Serve nothing until the first `cowctl apply` (how apply starts the service).
        #[arg(long, hide = true)]
        start_empty: bool,
        /// Serve nothing: take this gateway's floating portal addresses off its interface
        /// and exit (systemd's ExecStopPost, after a serve that was killed).
        #[arg(long, conflicts_with = "start_empty")]
        release_portals: bool,
    },
    /// Man pages and shell completion scripts, from these definitions.
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCommand),
}

/// The command line with each command's examples under its `--help` (the man pages show
/// the same ones).
pub fn command() -> clap::Command {
    examples::attach(Cli::command())
}

/// Parses the process's arguments, exiting with clap's message on an error.
pub fn parse() -> Cli {
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let f = cli.manifest.as_deref();
    match cli.command {
        Command::Cow(c) => cow::run(c, cli.json).map(|()| std::process::ExitCode::SUCCESS),
        Command::Image(c) => image::run(c, f, cli.json),
        Command::Pcs(c) => pcs::run(c, f, cli.json),
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
        Command::Serve {
            release_portals: true,
            ..
        } => control::release_portals(f),
        Command::Serve { start_empty, .. } => control::serve(f, start_empty),
        Command::Generate(c) => generate::run(c),
    }
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
