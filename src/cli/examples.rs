//! Each command's examples and related pages: under its `--help` and in its man page.

/// One command's page: `cowctl-image-prune` is `cowctl image prune`.
pub(super) struct Page {
    pub name: &'static str,
    /// A command line and what it does.
    pub examples: &'static [(&'static str, &'static str)],
    /// Pages to read next, besides the ones above this one.
    pub see_also: &'static [&'static str],
}

pub(super) const PAGES: &[Page] = &[
    Page {
        name: "cowctl",
        examples: &[
            ("cowctl validate -f /etc/cowctl/cowctl.yaml", "Check a manifest; every error at once, as file:line:column."),
            ("cowctl apply", "Serve every PC of the manifest; a second apply changes nothing."),
            ("cowctl status", "Each PC's state and COW fill."),
            ("cowctl reset --all --wake", "Every PC back on the golden image, then woken: a fresh room."),
        ],
        see_also: &[],
    },
    Page {
        name: "cowctl-cow",
        examples: &[
            ("cowctl cow create /srv/cowctl/cow/pc-03.cow --size 20GiB --chunk 32KiB", "A COW file the kernel's snapshot target loads."),
            ("cowctl cow inspect /srv/cowctl/cow/pc-03.cow", "Its header and fill, as dmsetup status would print them."),
        ],
        see_also: &[],
    },
    Page {
        name: "cowctl-cow-create",
        examples: &[
            ("cowctl cow create /srv/cowctl/cow/pc-03.cow --size 20GiB --chunk 32KiB", "A sparse 20 GiB COW with 32 KiB chunks (the kernel's `snapshot ... PO 64`)."),
            ("cowctl cow create test.cow --size 200MiB", "A 200 MiB COW with the default 16 KiB chunks."),
        ],
        see_also: &["cowctl-cow-inspect"],
    },
    Page {
        name: "cowctl-cow-inspect",
        examples: &[
            ("cowctl cow inspect /srv/cowctl/cow/pc-03.cow", "The header, the exception count and the dmsetup status line."),
            ("cowctl cow inspect new.cow --chunk 32KiB", "A new (zeroed) COW, read as a table with 32 KiB chunks would."),
            ("cowctl cow inspect /srv/cowctl/cow/pc-03.cow --json", "The same as JSON."),
        ],
        see_also: &["cowctl-status"],
    },
    Page {
        name: "cowctl-cow-flatten",
        examples: &[
            ("cowctl cow flatten --base /srv/cowctl/images/win10.img /srv/cowctl/cow/pc-03.cow -o pc-03.img", "pc-03's whole disk as one raw image, e.g. to keep or to boot elsewhere."),
        ],
        see_also: &["cowctl-image-commit"],
    },
    Page {
        name: "cowctl-cow-reset",
        examples: &[
            ("cowctl cow reset /srv/cowctl/cow/pc-03.cow", "Empty a COW that nothing serves; for a served PC, use cowctl reset pc-03."),
        ],
        see_also: &["cowctl-reset"],
    },
    Page {
        name: "cowctl-cow-record",
        examples: &[
            ("cowctl cow record /srv/cowctl/cow/pc-03.cow --base /srv/cowctl/images/win10.img", "Say that pc-03's COW was written over win10.img, so apply serves it."),
        ],
        see_also: &["cowctl-apply"],
    },
    Page {
        name: "cowctl-image",
        examples: &[
            ("cowctl image import win11-built.qcow2 --image win11", "The first version of win11, converted to sparse raw."),
            ("cowctl image commit pc-maint --note \"2026-12 updates\"", "A new version holding pc-maint's disk."),
            ("cowctl image promote win11 v2", "Each PC moves to v2 at its next reset."),
            ("cowctl image list", "Every version, the current one and the PCs on each."),
        ],
        see_also: &["cowctl-reset"],
    },
    Page {
        name: "cowctl-image-list",
        examples: &[
            ("cowctl image list", "Every versioned image's versions."),
            ("cowctl image list win11 --json", "win11's versions as JSON."),
        ],
        see_also: &["cowctl-image-promote", "cowctl-image-prune"],
    },
    Page {
        name: "cowctl-image-import",
        examples: &[
            ("cowctl image import win11-built.qcow2 --image win11", "A new version (v1, v2, ...) from a qcow2 file."),
            ("cowctl image import disk.raw --image win11 --version 2026-09 --note \"term start\"", "A version with a name and a note of its own."),
        ],
        see_also: &["cowctl-image-list", "cowctl-image-promote"],
    },
    Page {
        name: "cowctl-image-commit",
        examples: &[
            ("cowctl image commit pc-maint --note \"2026-12 updates\"", "A new version holding pc-maint's disk; refused while it is in use."),
            ("cowctl image commit pc-maint --version v7 --pause", "Name it v7, and stop pc-maint's I/O for the copy."),
        ],
        see_also: &["cowctl-image-promote"],
    },
    Page {
        name: "cowctl-image-promote",
        examples: &[
            ("cowctl image promote win11 v2 pc-01 pc-02", "A test group: pc-01 and pc-02 move to v2 at their next reset."),
            ("cowctl image promote win11 v2", "The room: each PC moves to v2 at its next reset."),
            ("cowctl image promote win11 v1", "Rollback: the same, to the older version."),
        ],
        see_also: &["cowctl-image-list", "cowctl-reset"],
    },
    Page {
        name: "cowctl-image-prune",
        examples: &[
            ("cowctl image prune win11 --dry-run", "What would go; nothing is removed."),
            ("cowctl image prune win11", "Remove the versions nothing uses any more."),
        ],
        see_also: &["cowctl-image-list"],
    },
    Page {
        name: "cowctl-image-hash",
        examples: &[
            ("cowctl image hash win11", "Hash win11's old versions and verify the others."),
        ],
        see_also: &["cowctl-image-list"],
    },
    Page {
        name: "cowctl-pcs",
        examples: &[
            ("cowctl pcs discovered", "MACs that asked to PXE-boot and are not in the manifest (they were not answered)."),
            ("cowctl pcs adopt 52:54:00:c0:ee:99 --name-from 'pc-{31..40}'", "Append that PC to the manifest as pc-31; cowctl apply then boots it."),
        ],
        see_also: &["cowctl-apply"],
    },
    Page {
        name: "cowctl-pcs-discovered",
        examples: &[
            ("cowctl pcs discovered", "MAC, first and last request, interface and firmware (BIOS or UEFI), from dnsmasq's DHCP log."),
            ("cowctl pcs discovered --json", "The same as JSON, for a script that adopts them."),
        ],
        see_also: &["cowctl-pcs-adopt"],
    },
    Page {
        name: "cowctl-pcs-adopt",
        examples: &[
            ("cowctl pcs adopt 52:54:00:c0:ee:99 52:54:00:c0:ee:9a", "Append both, continuing the manifest's numbering (pc-14, pc-15 after pc-13)."),
            ("cowctl pcs adopt 52:54:00:c0:ee:99 --name-from 'pc-{31..40}' --dry-run", "Show the entry it would append (the first free name of pc-31 to pc-40); change nothing."),
            ("cowctl pcs adopt 52:54:00:c0:ee:99 && cowctl validate && cowctl apply", "Adopt, check and serve: the PC boots at its next PXE request."),
        ],
        see_also: &["cowctl-pcs-discovered", "cowctl-validate", "cowctl-plan"],
    },
    Page {
        name: "cowctl-validate",
        examples: &[
            ("cowctl validate -f manifests/example.yaml", "Check a manifest before it is used."),
            ("cowctl validate --json", "The errors and warnings of the default manifest as JSON."),
        ],
        see_also: &["cowctl-plan", "cowctl-apply"],
    },
    Page {
        name: "cowctl-plan",
        examples: &[
            ("cowctl plan", "What apply would change; changes nothing."),
            ("cowctl plan -f /etc/cowctl/cowctl.yaml --json", "The same for a named manifest, as JSON."),
        ],
        see_also: &["cowctl-apply"],
    },
    Page {
        name: "cowctl-apply",
        examples: &[
            ("cowctl apply", "Serve every PC of the manifest; a second apply changes nothing."),
            ("cowctl apply -f room.yaml", "The same for another manifest."),
        ],
        see_also: &["cowctl-validate", "cowctl-plan", "cowctl-status", "cowctl-down"],
    },
    Page {
        name: "cowctl-doctor",
        examples: &[
            ("cowctl doctor", "One line per check, each with its fix: backend, ports, PXE, space, secrets, clock, Ceph."),
            ("cowctl doctor --json", "The same findings as a JSON array, for scripts; the exit status is 1 when one FAILs."),
        ],
        see_also: &["cowctl-validate", "cowctl-apply"],
    },
    Page {
        name: "cowctl-down",
        examples: &[
            ("cowctl down pc-03", "Stop serving pc-03; its COW file stays."),
            ("cowctl down", "Stop serving every PC."),
        ],
        see_also: &["cowctl-apply"],
    },
    Page {
        name: "cowctl-status",
        examples: &[
            ("cowctl status", "Every PC; exits 2 when one is over warn_percent or broken."),
            ("cowctl status pc-03 pc-04", "Only these PCs."),
            ("cowctl status --watch", "Redraw every 2 seconds (--watch 5: every 5)."),
            ("cowctl status --json", "The rows as JSON."),
        ],
        see_also: &["cowctl-reset"],
    },
    Page {
        name: "cowctl-chap",
        examples: &[
            ("cowctl chap pc-03", "pc-03's CHAP user name and secret, for an initiator set up by hand."),
            ("cowctl chap --json", "Every iSCSI PC's credentials as JSON."),
        ],
        see_also: &["cowctl-status"],
    },
    Page {
        name: "cowctl-reset",
        examples: &[
            ("cowctl reset pc-03", "pc-03 back on the golden image, also while it is logged in."),
            ("cowctl reset pc-01 pc-02", "Two PCs."),
            ("cowctl reset --all", "Every PC without keep: true."),
            ("cowctl reset --all --wake", "The same, then wake them: a fresh room."),
        ],
        see_also: &["cowctl-status", "cowctl-wake", "cowctl-image-promote"],
    },
    Page {
        name: "cowctl-wake",
        examples: &[
            ("cowctl wake pc-03 pc-04", "Send pc-03 and pc-04 their magic packets."),
            ("cowctl wake --all", "Wake every PC of the manifest."),
        ],
        see_also: &["cowctl-reset"],
    },
    Page {
        name: "cowctl-serve",
        examples: &[
            ("cowctl serve", "Serve in the foreground (what the systemd unit cowctl-serve runs)."),
            ("cowctl serve -f /etc/cowctl/cowctl.yaml", "The same for a named manifest."),
        ],
        see_also: &["cowctl-apply", "cowctl-status"],
    },
    Page {
        name: "cowctl-generate",
        examples: &[("cowctl generate man /usr/local/share/man/man1", "Install the man pages.")],
        see_also: &[],
    },
    Page {
        name: "cowctl-generate-man",
        examples: &[("cowctl generate man /usr/local/share/man/man1", "cowctl.1 and a page per command.")],
        see_also: &[],
    },
    Page {
        name: "cowctl-generate-completions",
        examples: &[(
            "cowctl generate completions bash",
            "Bash's script; save it as /etc/bash_completion.d/cowctl.",
        )],
        see_also: &[],
    },
];

/// The page of `cowctl-image-prune` and the like.
pub(super) fn page(name: &str) -> Option<&'static Page> {
    PAGES.iter().find(|p| p.name == name)
}

/// `cmd` (whose page is `name`) and its subcommands with their examples under `--help`.
pub(super) fn attach(cmd: clap::Command) -> clap::Command {
    let name = cmd.get_name().to_owned();
    attach_at(cmd, &name)
}

fn attach_at(mut cmd: clap::Command, name: &str) -> clap::Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for sub in subs {
        let child = format!("{name}-{sub}");
        cmd = cmd.mut_subcommand(&sub, |s| attach_at(s, &child));
    }
    let Some(page) = page(name) else { return cmd };
    let mut text = String::from("Examples:\n");
    for (line, what) in page.examples {
        text.push_str(&format!("  {line}\n      {what}\n"));
    }
    cmd.after_long_help(text.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words as a shell splits them, for the examples' double quotes.
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, part) in line.split('"').enumerate() {
            if i % 2 == 1 {
                out.push(part.to_owned());
            } else {
                out.extend(part.split_whitespace().map(str::to_owned));
            }
        }
        out
    }

    /// The page of the subcommands an example runs: `cowctl-image-prune`.
    fn page_of(matches: &clap::ArgMatches) -> String {
        let mut name = String::from("cowctl");
        let mut m = matches;
        while let Some((sub, next)) = m.subcommand() {
            name = format!("{name}-{sub}");
            m = next;
        }
        name
    }

    #[test]
    fn every_example_parses_and_runs_its_own_command() {
        for page in PAGES {
            assert!(!page.examples.is_empty(), "{} has no examples", page.name);
            for (line, _) in page.examples {
                let m = crate::cli::command()
                    .try_get_matches_from(words(line))
                    .unwrap_or_else(|e| panic!("{}: {line}: {e}", page.name));
                let ran = page_of(&m);
                // A group's page (cowctl-image) shows the commands under it.
                let under = ran.starts_with(&format!("{}-", page.name));
                assert!(
                    ran == page.name || under,
                    "{}: {line} runs {ran}",
                    page.name
                );
            }
        }
    }

    #[test]
    fn every_page_is_a_command_and_every_command_has_a_page() {
        fn walk(cmd: &clap::Command, name: &str, out: &mut Vec<String>) {
            out.push(name.to_owned());
            for s in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(s, &format!("{name}-{}", s.get_name()), out);
            }
        }
        let mut names = Vec::new();
        walk(&crate::cli::command(), "cowctl", &mut names);
        let mut pages: Vec<String> = PAGES.iter().map(|p| p.name.to_owned()).collect();
        names.sort();
        pages.sort();
        assert_eq!(names, pages);
        for p in PAGES {
            for s in p.see_also {
                assert!(page(s).is_some(), "{}: no page {s}", p.name);
            }
        }
    }
}
