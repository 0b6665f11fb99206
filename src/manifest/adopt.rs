//! `cowctl pcs adopt`: new PCs appended to the manifest's `pcs:` sequence by editing its
//! text, so every comment, blank line and quirk of layout stays byte for byte. The entries
//! take the indentation of the existing ones and the file's line ending; the new text is
//! checked with `Manifest::parse` before anyone writes it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{DhcpMode, Manifest};
use crate::base::netaddr::Mac;

/// A PC to add: what its entry says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewPc {
    pub name: String,
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The argument and netaddr's sentence about it.
    #[error("{1}")]
    BadMac(String, String),
    #[error("{mac} is already in the manifest, as {name}")]
    Listed { mac: Mac, name: String },
    #[error("{0} is named twice")]
    Twice(Mac),
    #[error("--name-from {0:?}: {1}")]
    BadPattern(String, String),
    #[error("the manifest's PC names do not count up (as pc-01, pc-02): say which names to give, e.g. --name-from 'pc-{{31..40}}'")]
    NoNumbering,
    #[error("{pattern} has {free} free name(s) for {wanted} PC(s)")]
    TooFewNames {
        pattern: String,
        free: usize,
        wanted: usize,
    },
    #[error("the pxe range has no free address left for {0}")]
    NoAddress(String),
    #[error("the manifest has no top-level `pcs:` block sequence to append to")]
    NoPcs,
    #[error("line {0}: `pcs:` is written in flow style ([...]): cowctl appends only to a block sequence (one `- name: …` entry per PC); rewrite it that way first")]
    FlowStyle(usize),
    #[error("fix the manifest before adopting PCs into it:\n{0}")]
    Current(String),
    #[error("the manifest with the new PCs would not be valid:\n{0}")]
    Invalid(String),
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The names and addresses `macs` would get in `m` (see `cowctl pcs adopt --help`).
pub fn plan(
    m: &Manifest,
    macs: &[String],
    name_from: Option<&str>,
) -> Result<Vec<NewPc>, AdoptError> {
    let mut parsed: Vec<Mac> = Vec::new();
    for s in macs {
        let mac: Mac = s.parse().map_err(|e| AdoptError::BadMac(s.clone(), e))?;
        if let Some(pc) = m.pcs.iter().find(|p| p.mac == Some(mac)) {
            return Err(AdoptError::Listed {
                mac,
                name: pc.name.clone(),
            });
        }
        if parsed.contains(&mac) {
            return Err(AdoptError::Twice(mac));
        }
        parsed.push(mac);
    }
    let names = names(m, name_from, parsed.len())?;
    let mut ips = free_ips(m);
    let mut out = Vec::new();
    for (mac, name) in parsed.into_iter().zip(names) {
        let ip = match &mut ips {
            None => None,
            Some(free) => Some(
                free.next()
                    .ok_or_else(|| AdoptError::NoAddress(name.clone()))?,
            ),
        };
        out.push(NewPc { name, mac, ip });
    }
    Ok(out)
}

/// `count` names not taken: from the pattern, else continuing the manifest's numbering.
fn names(m: &Manifest, pattern: Option<&str>, count: usize) -> Result<Vec<String>, AdoptError> {
    let taken = |n: &String| m.pcs.iter().any(|p| &p.name == n);
    let (label, candidates) = match pattern {
        Some(p) => {
            let bad = |e: String| AdoptError::BadPattern(p.to_string(), e);
            let all = super::expand::expand(p)
                .map_err(bad)?
                .ok_or_else(|| bad("it has no range, as in pc-{31..40}".into()))?;
            (p.to_string(), all)
        }
        None => {
            let (prefix, next, width) = numbering(m).ok_or(AdoptError::NoNumbering)?;
            let all = (next..next + count as u64)
                .map(|n| format!("{prefix}{n:0width$}"))
                .collect();
            (format!("{prefix}{{{next}..}}"), all)
        }
    };
    let free: Vec<String> = candidates.into_iter().filter(|n| !taken(n)).collect();
    if free.len() < count {
        return Err(AdoptError::TooFewNames {
            pattern: label,
            free: free.len(),
            wanted: count,
        });
    }
    Ok(free.into_iter().take(count).collect())
}

/// When every PC is one prefix and a number: the prefix, the next number and its width.
fn numbering(m: &Manifest) -> Option<(String, u64, usize)> {
    let mut prefix: Option<&str> = None;
    let (mut max, mut width) = (0u64, 0usize);
    for pc in &m.pcs {
        let digits = pc.name.len() - pc.name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (p, n) = pc.name.split_at(pc.name.len() - digits);
        if digits == 0 || prefix.is_some_and(|q| q != p) {
            return None;
        }
        prefix = Some(p);
        max = max.max(n.parse().ok()?);
        if n.starts_with('0') {
            width = width.max(n.len());
        }
    }
    Some((prefix?.to_string(), max + 1, width))
}

/// The addresses new PCs take, in order: in a DHCP range room whose PCs all have an `ip`,
/// the range's addresses no PC has; otherwise none (proxy mode: the LAN's server decides).
fn free_ips(m: &Manifest) -> Option<impl Iterator<Item = Ipv4Addr>> {
    let Some(DhcpMode::Range { first, last }) = m.pxe.as_ref().map(|p| p.dhcp.clone()) else {
        return None;
    };
    if m.pcs.is_empty() || m.pcs.iter().any(|p| p.ip.is_none()) {
        return None;
    }
    let used: Vec<IpAddr> = m.pcs.iter().filter_map(|p| p.ip).collect();
    Some(
        (u32::from(first)..=u32::from(last))
            .map(Ipv4Addr::from)
            .filter(move |a| !used.contains(&IpAddr::V4(*a))),
    )
}

/// `text` with `new` appended at the end of its top-level `pcs:` block sequence.
pub fn append(text: &str, new: &[NewPc]) -> Result<String, AdoptError> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let key = lines
        .iter()
        .position(|l| l.starts_with("pcs:"))
        .ok_or(AdoptError::NoPcs)?;
    let after_key = strip_comment(&lines[key]["pcs:".len()..]);
    if !after_key.trim().is_empty() {
        return Err(AdoptError::FlowStyle(key + 1));
    }
    // The sequence's lines: up to the next top-level line that is not one of its items.
    let (mut dash, mut indent, mut last) = (None, None, key);
    for (i, l) in lines.iter().enumerate().skip(key + 1) {
        let body = l.trim_end_matches(['\n', '\r']);
        let content = body.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let col = body.len() - content.len();
        let is_item = content == "-" || content.starts_with("- ");
        if col == 0 && !(is_item && dash == Some(0)) && !(is_item && dash.is_none()) {
            break;
        }
        if is_item && dash.is_none() {
            dash = Some(col);
            let after = content[1..].trim_start();
            indent = Some(col + (content.len() - after.len()));
        }
        last = i;
    }
    let eol = if lines[key].ends_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let (dash, indent) = (dash.unwrap_or(2), indent.unwrap_or(4));
    let gap = " ".repeat(indent.saturating_sub(dash + 1).max(1));
    let (dash, indent) = (" ".repeat(dash), " ".repeat(indent));
    let mut entries = String::new();
    for pc in new {
        entries.push_str(&format!(
            "{dash}-{gap}name: {}{eol}{indent}mac: {}{eol}",
            pc.name, pc.mac
        ));
        if let Some(ip) = pc.ip {
            entries.push_str(&format!("{indent}ip: {ip}{eol}"));
        }
    }
    let mut out = String::with_capacity(text.len() + entries.len() + 2);
    for l in &lines[..=last] {
        out.push_str(l);
    }
    if !lines[last].ends_with('\n') {
        // No newline at the end of the file: the entries go on lines of their own, and
        // the file still ends without one.
        out.push_str(eol);
        entries.truncate(entries.len() - eol.len());
    }
    out.push_str(&entries);
    for l in &lines[last + 1..] {
        out.push_str(l);
    }
    Ok(out)
}

/// A line without its `# comment` (a `#` after a space, outside quotes is close enough for
/// the line of a key).
fn strip_comment(s: &str) -> &str {
    match s.find(" #").or_else(|| s.starts_with('#').then_some(0)) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// What `adopt` did (or would do, with `dry_run`).
#[derive(Debug, Serialize)]
pub struct Adoption {
    pub added: Vec<NewPc>,
    /// What is left to do by hand (a PXE-booted PC without an `ip` gets no /boot.ipxe).
    pub notes: Vec<String>,
    #[serde(skip)]
    pub text: String,
}

/// Adds `macs` to the manifest at `path`: the new text is parsed as a manifest first, and
/// written atomically unless `dry_run`.
pub fn adopt(
    path: &Path,
    macs: &[String],
    name_from: Option<&str>,
    dry_run: bool,
) -> Result<Adoption, AdoptError> {
    let io = |source| AdoptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let m = Manifest::parse(path, &text).map_err(|e| AdoptError::Current(e.to_string()))?;
    append(&text, &[])?; // a flow-style or missing pcs: is said first
    let added = plan(&m, macs, name_from)?;
    let new_text = append(&text, &added)?;
    let after = Manifest::parse(path, &new_text).map_err(|e| AdoptError::Invalid(e.to_string()))?;
    // The text must say what was meant: the same PCs before, then exactly the new ones.
    let read_back: Vec<(&str, Option<Mac>)> = after
        .pcs
        .iter()
        .skip(m.pcs.len())
        .map(|p| (p.name.as_str(), p.mac))
        .collect();
    let meant: Vec<(&str, Option<Mac>)> = added
        .iter()
        .map(|p| (p.name.as_str(), Some(p.mac)))
        .collect();
    if after.pcs.len() != m.pcs.len() + added.len() || read_back != meant {
        return Err(AdoptError::Invalid(format!(
            "the edited text reads back as {read_back:?}, not {meant:?}: cowctl misread the pcs: sequence, or a name needs quoting"
        )));
    }
    if !dry_run {
        crate::base::durable::write_atomic(path, new_text.as_bytes()).map_err(io)?;
    }
    let notes = added
        .iter()
        .filter(|p| p.ip.is_none() && m.pxe.is_some())
        .map(|p| format!("{} has no ip: /boot.ipxe answers a PC at its ip, so add the address the LAN gives it", p.name))
        .collect();
    Ok(Adoption {
        added,
        notes,
        text: new_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: /c\n  cow_size: 1GiB\n  export: nbd\n";

    fn pc(name: &str, mac: &str, ip: Option<&str>) -> NewPc {
        NewPc {
            name: name.into(),
            mac: mac.parse().unwrap(),
            ip: ip.map(|i| i.parse().unwrap()),
        }
    }

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(Path::new("/m.yaml"), text).unwrap()
    }

    #[test]
    fn entries_go_after_the_last_pc_and_every_other_byte_stays() {
        let text = format!(
            "# The room.\n{HEAD}pcs:   # the room's PCs\n  # front row\n  - name: pc-01   # by the door\n    mac: 52:54:00:00:00:01\n\n  # spare\n\n# HTTP next\nhttp:\n  listen: 0.0.0.0:80\n"
        );
        let out = append(&text, &[pc("pc-02", "52:54:00:00:00:02", None)]).unwrap();
        let want = text.replace(
            "    mac: 52:54:00:00:00:01\n",
            "    mac: 52:54:00:00:00:01\n  - name: pc-02\n    mac: 52:54:00:00:00:02\n",
        );
        assert_eq!(out, want);
        assert_eq!(manifest(&out).pcs.len(), 2);
    }

    #[test]
    fn the_existing_indentation_a_compact_sequence_and_ips_are_kept() {
        let text = format!(
            "{HEAD}pcs:\n- name: a1\n  mac: 52:54:00:00:00:01\nnbd:\n  listen: 0.0.0.0:10809\n"
        );
        let out = append(&text, &[pc("a2", "52:54:00:00:00:02", Some("10.0.0.12"))]).unwrap();
        assert!(
            out.contains("  mac: 52:54:00:00:00:01\n- name: a2\n  mac: 52:54:00:00:00:02\n  ip: 10.0.0.12\nnbd:\n"),
            "{out}"
        );
        let text = format!("{HEAD}pcs:\n    -   name: a1\n        mac: 52:54:00:00:00:01\n");
        let out = append(&text, &[pc("a2", "52:54:00:00:00:02", None)]).unwrap();
        assert!(out.ends_with("    -   name: a1\n        mac: 52:54:00:00:00:01\n    -   name: a2\n        mac: 52:54:00:00:00:02\n"), "{out}");
        assert_eq!(manifest(&out).pcs[1].name, "a2");
    }

    #[test]
    fn crlf_stays_crlf_and_no_final_newline_stays_so() {
        let text =
            format!("{HEAD}pcs:\n  - name: a1\n    mac: 52:54:00:00:00:01").replace('\n', "\r\n");
        let out = append(&text, &[pc("a2", "52:54:00:00:00:02", None)]).unwrap();
        assert!(out.starts_with(&text), "the old bytes stay");
        assert_eq!(
            &out[text.len()..],
            "\r\n  - name: a2\r\n    mac: 52:54:00:00:00:02"
        );
        let text = format!("{HEAD}pcs:\n  - name: a1\n    mac: 52:54:00:00:00:01");
        let out = append(&text, &[pc("a2", "52:54:00:00:00:02", None)]).unwrap();
        assert_eq!(
            &out[text.len()..],
            "\n  - name: a2\n    mac: 52:54:00:00:00:02"
        );
        assert_eq!(manifest(&out).pcs.len(), 2);
    }

    #[test]
    fn a_flow_sequence_is_refused_with_a_sentence() {
        let text = format!("{HEAD}pcs: [{{name: a1}}]  # one\n");
        let e = append(&text, &[pc("a2", "52:54:00:00:00:02", None)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 9: `pcs:` is written in flow style"),
            "{e}"
        );
        let e = append(HEAD, &[]).unwrap_err();
        assert!(matches!(e, AdoptError::NoPcs), "{e}");
    }

    #[test]
    fn names_continue_the_numbering_or_come_from_the_range() {
        let m = manifest(&format!(
            "{HEAD}pcs:\n  - name: pc-{{01..09}}\n    mac: 52:54:00:00:00:{{01..09}}\n"
        ));
        let got = plan(
            &m,
            &["52:54:00:00:01:00".into(), "52-54-00-00-01-01".into()],
            None,
        )
        .unwrap();
        let names: Vec<_> = got.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pc-10", "pc-11"]);
        let got = plan(&m, &["52:54:00:00:01:00".into()], Some("pc-{31..40}")).unwrap();
        assert_eq!(got[0].name, "pc-31");
        assert_eq!(got[0].ip, None);
        let e = plan(&m, &["52:54:00:00:00:03".into()], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "52:54:00:00:00:03 is already in the manifest, as pc-03"
        );
        let e = plan(&m, &["52:54:00:zz".into()], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("\"52:54:00:zz\" is not a MAC address"),
            "{e}"
        );
        let e = plan(
            &m,
            &["52:54:00:00:01:00".into(), "52:54:00:00:01:01".into()],
            Some("pc-{09..10}"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "pc-{09..10} has 1 free name(s) for 2 PC(s)");
        let m = manifest(&format!("{HEAD}pcs:\n  - name: front\n  - name: back\n"));
        let e = plan(&m, &["52:54:00:00:01:00".into()], None).unwrap_err();
        assert!(matches!(e, AdoptError::NoNumbering), "{e}");
    }

    #[test]
    fn a_dhcp_range_room_gives_the_next_free_address_of_the_range() {
        let m = manifest(&format!(
            "{HEAD}http:\n  listen: 0.0.0.0:80\npxe:\n  interface: eth1\n  dhcp: 10.0.0.100-10.0.0.102\n\
             pcs:\n  - name: pc-1\n    mac: 52:54:00:00:00:01\n    ip: 10.0.0.100\n"
        ));
        let got = plan(
            &m,
            &["52:54:00:00:01:00".into(), "52:54:00:00:01:01".into()],
            None,
        )
        .unwrap();
        assert_eq!(got[0], pc("pc-2", "52:54:00:00:01:00", Some("10.0.0.101")));
        assert_eq!(got[1].ip, Some("10.0.0.102".parse().unwrap()));
        let e = plan(
            &m,
            &[
                "52:54:00:00:01:06".into(),
                "52:54:00:00:01:07".into(),
                "52:54:00:00:01:08".into(),
            ],
            None,
        );
        assert!(matches!(e.unwrap_err(), AdoptError::NoAddress(n) if n == "pc-4"));
    }

    #[test]
    fn adopt_writes_the_file_unless_dry_run_and_refuses_what_would_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        let text = format!("{HEAD}pcs:\n  - name: pc-1\n    mac: 52:54:00:00:00:01\n");
        std::fs::write(&path, &text).unwrap();
        let a = adopt(&path, &["52:54:00:00:00:02".into()], None, true).unwrap();
        assert_eq!(a.added[0].name, "pc-2");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        adopt(&path, &["52:54:00:00:00:02".into()], None, false).unwrap();
        assert_eq!(Manifest::load(&path).unwrap().pcs[1].name, "pc-2");
    }
}
