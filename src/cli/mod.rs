//! The command line: parsing and printing only; the work happens in the library.

mod cow;

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work on COW files in the kernel's dm-snapshot persistent format.
    #[command(subcommand)]
    Cow(cow::CowCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cow(c) => cow::run(c, cli.json),
    }
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
