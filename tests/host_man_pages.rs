//! `cowctl generate`: every man page renders with man(1) and groff without warnings, and the
//! bash completion script, loaded in bash, completes commands and the manifest's PC names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cowctl")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The pages there should be: one per command that is not hidden, nested ones included.
fn expected_pages() -> Vec<String> {
    fn walk(cmd: &clap::Command, name: &str, out: &mut Vec<String>) {
        out.push(name.to_owned());
        for s in cmd.get_subcommands() {
            if !s.is_hide_set() && s.get_name() != "help" {
                walk(s, &format!("{name}-{}", s.get_name()), out);
            }
        }
    }
    let mut names = Vec::new();
    walk(&cowctl::cli::command(), "cowctl", &mut names);
    names
}

fn generate_man(dir: &Path) -> Vec<String> {
    run(Command::new(bin()).args(["generate", "man"]).arg(dir));
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    pages
}

/// The page as a reader sees it: man -l, 80 columns, plain text.
fn man(page: &Path) -> String {
    let out = run(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING"));
    text(&out.stdout)
}

/// Text with each run of white space one space.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn a_page_per_command_renders_with_man_and_groff_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let pages = generate_man(dir.path());
    let mut want: Vec<String> = expected_pages().iter().map(|n| format!("{n}.1")).collect();
    want.sort();
    assert_eq!(pages, want);
    for must in [
        "cowctl.1",
        "cowctl-reset.1",
        "cowctl-image-prune.1",
        "cowctl-cow-create.1",
    ] {
        assert!(pages.iter().any(|p| p == must), "no {must} in {pages:?}");
    }
    for page in &pages {
        let path = dir.path().join(page);
        let name = page.trim_end_matches(".1");
        let shown = man(&path);
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES"] {
            assert!(
                shown.lines().any(|l| l == section),
                "{page} has no {section}:\n{shown}"
            );
        }
        assert!(!shown.contains("EXTRA"), "{page}:\n{shown}");
        assert!(shown.starts_with(&format!("{name}(1)")), "{page}:\n{shown}");
        // The synopsis names the command as it is typed: `cowctl image prune` (in text
        // justified with runs of spaces).
        let typed = name.replace('-', " ");
        assert!(
            words(&shown).contains(&typed),
            "{page} never says {typed}:\n{shown}"
        );
        if name != "cowctl" {
            assert!(shown.lines().any(|l| l == "SEE ALSO"), "{page}:\n{shown}");
        }
        let groff = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path));
        assert_eq!(text(&groff.stderr), "", "groff warns about {page}");
    }
}

#[test]
fn the_reset_page_reads_well() {
    let dir = tempfile::tempdir().unwrap();
    generate_man(dir.path());
    let shown = man(&dir.path().join("cowctl-reset.1"));
    let headings: Vec<&str> = shown
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .collect();
    assert_eq!(
        headings,
        [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXAMPLES",
            "SEE ALSO"
        ],
        "{shown}"
    );
    for line in [
        "cowctl reset pc-03",
        "cowctl reset --all --wake",
        "--wake",
        "cowctl(1), cowctl-status(1)",
    ] {
        assert!(words(&shown).contains(line), "no {line:?} in:\n{shown}");
    }
}

/// A room of pc-01..pc-03 on one image, and a versioned image `lab`, in `dir`.
fn manifest(dir: &Path) -> PathBuf {
    let d = dir.display();
    let path = dir.join("room.yaml");
    std::fs::write(
        &path,
        format!(
            "images:\n  win:\n    path: {d}/golden.img\n  lab:\n    versions: {d}/versions\n\
             defaults:\n  image: win\n  cow_dir: {d}/cow\n  cow_size: 64MiB\n  export: nbd\n\
             pcs:\n  - name: pc-{{01..03}}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.join("versions")).unwrap();
    run(Command::new(bin()).arg("validate").arg("-f").arg(&path));
    path
}

/// What bash completes for `line` (its last word being completed), with the script of
/// `cowctl generate completions bash` loaded and cowctl on $PATH, as an installed one is.
fn bash_complete(line: &str, env: &[(&str, &Path)]) -> Vec<String> {
    let script = r#"
        source <(cowctl generate completions bash) || exit 1
        fn=$(complete -p cowctl | sed -E 's/.* -F ([^ ]+) .*/\1/')
        read -ra COMP_WORDS <<< "$LINE"
        [[ $LINE == *' ' ]] && COMP_WORDS+=('')
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        COMP_LINE=$LINE
        COMP_POINT=${#LINE}
        COMP_TYPE=9
        "$fn" cowctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        (( ${#COMPREPLY[@]} == 0 )) || printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new("bash");
    cmd.args(["--norc", "--noprofile", "-c", script])
        .env("PATH", path)
        .env("LINE", line)
        .env_remove("COWCTL_MANIFEST");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_commands_and_pc_names_from_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let m_text = m.to_str().unwrap();
    let pcs = ["pc-01", "pc-02", "pc-03"];
    assert_eq!(bash_complete("cowctl ima", &[]), ["image"]);
    assert_eq!(bash_complete("cowctl image pro", &[]), ["promote"]);
    assert_eq!(
        bash_complete(&format!("cowctl reset -f {m_text} pc-"), &[]),
        pcs
    );
    assert_eq!(
        bash_complete(&format!("cowctl --manifest={m_text} reset pc-0"), &[]),
        pcs
    );
    for line in [
        "cowctl reset pc-",
        "cowctl reset pc-01 pc-",
        "cowctl status pc-",
        "cowctl down pc-",
        "cowctl chap pc-",
        "cowctl wake pc-",
        "cowctl image commit pc-",
        "cowctl image promote lab v2 pc-",
    ] {
        let got = bash_complete(line, &[("COWCTL_MANIFEST", &m)]);
        assert_eq!(got, pcs, "{line}");
    }
    assert_eq!(
        bash_complete("cowctl image prune l", &[("COWCTL_MANIFEST", &m)]),
        ["lab"]
    );
    // No manifest to read: nothing, and nothing printed into the terminal.
    let missing = dir.path().join("missing.yaml");
    assert!(bash_complete("cowctl reset pc-", &[("COWCTL_MANIFEST", &missing)]).is_empty());
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(program).is_file())
}

#[test]
fn every_shell_gets_a_script_that_parses() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        let out = run(Command::new(bin()).args(["generate", "completions", shell]));
        let script = text(&out.stdout);
        assert!(script.contains("COWCTL_COMPLETE"), "{shell}:\n{script}");
        let file = dir.path().join(format!("cowctl.{shell}"));
        std::fs::write(&file, &script).unwrap();
        // Installed shells check the syntax; the test installs none.
        if on_path(shell) {
            run(Command::new(shell).arg(check).arg(&file));
        }
    }
}
