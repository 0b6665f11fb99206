//! `cowctl generate` (hidden): man pages and shell completion scripts from the clap
//! definitions, so they never disagree with the command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use super::examples::{self, Page};

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write cowctl.1 and a page per command (cowctl-reset.1, cowctl-image-prune.1, …)
    /// into DIR.
    Man {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        dir: PathBuf,
    },
    /// Print a shell's completion script; PC and image names complete from the manifest.
    Completions { shell: Shell },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(c: GenerateCommand) -> Result<ExitCode> {
    match c {
        GenerateCommand::Man { dir } => man(&dir)?,
        GenerateCommand::Completions { shell } => completions(shell)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn completions(shell: Shell) -> Result<()> {
    let shell: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
    };
    // "cowctl", not this binary's path: an installed script finds cowctl on $PATH.
    let mut out = std::io::stdout().lock();
    shell.write_registration(super::complete::VAR, "cowctl", "cowctl", "cowctl", &mut out)?;
    Ok(())
}

fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = super::command().disable_help_subcommand(true);
    cmd.build();
    write_pages(&cmd, "cowctl", &[], dir)
}

/// `cmd`'s page and those of its subcommands, hidden ones left out.
fn write_pages(cmd: &clap::Command, name: &str, parents: &[&str], dir: &Path) -> Result<()> {
    let mut above = parents.to_vec();
    above.push(name);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), &above, dir)?;
    }
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, render(cmd, name, parents)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// NAME, SYNOPSIS, DESCRIPTION, OPTIONS and SUBCOMMANDS as clap_mangen renders them, then
/// EXAMPLES and SEE ALSO (its own EXTRA section would run the examples into one paragraph).
fn render(cmd: &clap::Command, name: &str, parents: &[&str]) -> Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .title(name)
        .source(format!("cowctl {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::default();
    if parents.is_empty() {
        environment_and_files(&mut roff);
    }
    let page = examples::page(name).with_context(|| format!("no examples for {name}"))?;
    examples_section(&mut roff, page);
    see_also(&mut roff, parents, page);
    roff.to_writer(&mut out)?;
    Ok(one_preamble(out))
}

fn environment_and_files(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([bold("COWCTL_MANIFEST")]);
    roff.text([roman("The manifest, when no -f is given.")]);
    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([bold(crate::manifest::DEFAULT_PATH)]);
    roff.text([roman("The manifest, without -f or $COWCTL_MANIFEST.")]);
}

fn examples_section(roff: &mut Roff, page: &Page) {
    roff.control("SH", ["EXAMPLES"]);
    for (line, what) in page.examples {
        roff.control("TP", []);
        roff.text([bold(*line)]);
        roff.text([roman(*what)]);
    }
}

/// The pages above this one, then the page's own related ones: `cowctl-reset(1), …`.
fn see_also(roff: &mut Roff, parents: &[&str], page: &Page) {
    let mut names: Vec<&str> = parents.to_vec();
    names.extend(page.see_also.iter().filter(|n| !parents.contains(n)));
    if names.is_empty() {
        return;
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, n) in names.iter().enumerate() {
        line.push(bold(*n));
        line.push(roman(if i + 1 == names.len() { "(1)" } else { "(1), " }));
    }
    roff.text(line);
}

/// Each section above came with roff's two-line preamble; the page needs it once.
fn one_preamble(page: Vec<u8>) -> Vec<u8> {
    let mut preamble_lines = 0;
    let text = String::from_utf8_lossy(&page);
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| {
            let preamble = l.starts_with(".ie \\n(.g .ds Aq") || l.starts_with(".el .ds Aq");
            preamble_lines += usize::from(preamble);
            !preamble || preamble_lines <= 2
        })
        .collect();
    kept.into_bytes()
}
