//! Shell completion that cowctl answers itself: PC and image names from the manifest.
//!
//! Why clap_complete's dynamic completion and not its static scripts: a static script has
//! nothing that runs at TAB time, so PC names would need a hand-written bash hook that finds
//! `-f`/`--manifest`/`--manifest=` and which word is a PC on its own, a second parser to keep
//! in step with these definitions. Here the shell hands cowctl the words and clap parses them
//! with the same definitions the command uses, so every PC argument, `-f` anywhere and
//! `$COWCTL_MANIFEST` behave the same in bash, zsh and fish. The feature is marked unstable;
//! Cargo.lock pins it and tests/host_man_pages.rs drives the real bash script.

use std::ffi::OsString;
use std::path::PathBuf;

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::CompleteEnv;

use crate::manifest::{resolve_path, Manifest};

/// The variable the generated scripts set when they ask cowctl for completions (its own name,
/// not clap's default `COMPLETE`, which another program's environment might set).
pub(super) const VAR: &str = "COWCTL_COMPLETE";

/// Answers a completion request from a shell and exits, when this run is one.
pub fn complete_if_asked() {
    CompleteEnv::with_factory(super::command)
        .var(VAR)
        .complete();
}

/// Candidates for an argument that names PCs.
pub(super) fn pcs() -> ArgValueCandidates {
    ArgValueCandidates::new(|| names(|m| m.pcs.iter().map(|p| p.name.clone()).collect()))
}

/// Candidates for an argument that names a versioned image.
pub(super) fn images() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        names(|m| {
            let versioned = m.images.values().filter(|i| i.store.is_some());
            versioned.map(|i| i.family.clone()).collect()
        })
    })
}

/// Names from the manifest the command line being completed names; none when it cannot be
/// read, since anything printed would land in the user's terminal mid-line.
fn names(f: impl Fn(&Manifest) -> Vec<String>) -> Vec<CompletionCandidate> {
    let Ok(m) = Manifest::load(&resolve_path(manifest_flag().as_deref())) else {
        return Vec::new();
    };
    let mut names = f(&m);
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// `-f FILE` of the words being completed: what the shell passed after `--`.
fn manifest_flag() -> Option<PathBuf> {
    let words: Vec<OsString> = std::env::args_os()
        .skip_while(|a| a != "--")
        .skip(1)
        .collect();
    // The words are unfinished (a partial last word, a missing argument): parse what is there.
    let matches = super::command()
        .ignore_errors(true)
        .try_get_matches_from(words)
        .ok()?;
    matches.get_one::<PathBuf>("manifest").cloned()
}
