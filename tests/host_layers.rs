//! The layer rule of docs/ARCHITECTURE.md ("Layers"): a module imports from its own layer
//! or lower ones only, and no two modules (nor two files of one module) import each other
//! round a circle. The layers are read from the ```layers block of that document; the
//! imports from src/**/*.rs with comments and string literals removed: `crate::` and
//! `cowctl::` paths (in `use`, `pub use` and code) and `super::` paths that climb out of
//! a module. Known debt is in `ALLOWED` below, and only shrinks: an entry that no longer
//! occurs (or no longer closes a circle) fails the test too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges allowed for now: (from, to, why). A top-level module's name, or a file's path
/// under src/ for a circle between files of one module. Remove an entry once it is fixed.
#[rustfmt::skip]
const ALLOWED: &[(&str, &str, &str)] = &[
];

type Edges = BTreeMap<(String, String), Vec<String>>;

#[test]
fn imports_point_down_and_close_no_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let problems = problems(&doc, &root.join("src"), ALLOWED);
    assert!(
        problems.is_empty(),
        "the layer rule of docs/ARCHITECTURE.md is broken ({} problems):\n{}\n",
        problems.len(),
        problems.join("\n")
    );
}

/// The check itself catches what it is for: in a small tree of its own, an import that
/// points up, a circle of two modules in one layer, and a module in no layer.
#[test]
fn an_upward_import_a_circle_and_a_stray_module_are_each_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let doc =
        "```layers\nlayer 0 base: units, cow\nlayer 1 engine: engine\nlayer 2 cli: lib\n```\n";
    for (file, text) in [
        (
            "lib.rs",
            "pub mod units;\npub mod cow;\npub mod engine;\npub mod stray;\n",
        ),
        ("units.rs", "use crate::engine::Engine;\npub struct Size;\n"),
        ("cow.rs", "use crate::units::Size;\npub struct Cow;\n"),
        ("engine.rs", "pub struct Engine;\n"),
        ("stray.rs", "pub fn f() {}\n"),
    ] {
        fs::write(src.join(file), text).unwrap();
    }
    let sound = problems(doc, src, &[]);
    assert!(
        sound
            .iter()
            .any(|p| p.contains("src/units.rs:1 imports engine (layer 1) from units (layer 0)")),
        "{sound:#?}"
    );
    assert!(
        sound
            .iter()
            .any(|p| p.contains("src/stray.rs (stray) is in no layer")),
        "{sound:#?}"
    );
    assert_eq!(sound.len(), 2, "{sound:#?}");
    // cow -> units is within one layer; units -> cow as well closes a circle.
    fs::write(
        src.join("units.rs"),
        "use crate::cow::Cow;\npub struct Size;\n",
    )
    .unwrap();
    fs::remove_file(src.join("stray.rs")).unwrap();
    fs::write(
        src.join("lib.rs"),
        "pub mod units;\npub mod cow;\npub mod engine;\n",
    )
    .unwrap();
    let circle = problems(doc, src, &[]);
    assert!(
        circle
            .iter()
            .any(|p| p.starts_with("circle: ") && p.contains("cow") && p.contains("units")),
        "{circle:#?}"
    );
    assert_eq!(circle.len(), 1, "{circle:#?}");
    // An allowance that no longer occurs is itself a problem.
    let stale = problems(doc, src, &[("engine", "units", "gone")]);
    assert!(
        stale.iter().any(|p| p.contains("no longer occurs")),
        "{stale:#?}"
    );
}

/// Every breach of the layer rule in `src` against `doc`'s ```layers block, `allowed` aside.
fn problems(doc: &str, src: &Path, allowed_edges: &[(&str, &str, &str)]) -> Vec<String> {
    let layers = match parse_layers(doc) {
        Ok(l) => l,
        Err(e) => return vec![format!("docs/ARCHITECTURE.md: {e}")],
    };
    let src = src.to_path_buf();
    let mut files = Vec::new();
    walk(&src, &mut files);
    let rels: BTreeSet<String> = files.iter().map(|f| rel(&src, f)).collect();

    let mut problems = Vec::new();
    let tops: BTreeSet<String> = rels.iter().map(|r| top_of(r)).collect();
    for t in &tops {
        if !layers.contains_key(t) {
            let file = rels.iter().find(|r| top_of(r) == *t).unwrap();
            problems.push(format!(
                "src/{file} ({t}) is in no layer of docs/ARCHITECTURE.md"
            ));
        }
    }
    for t in layers.keys().filter(|t| !tops.contains(*t)) {
        problems.push(format!(
            "docs/ARCHITECTURE.md names {t}, which is not in src/"
        ));
    }

    let (mut top_edges, mut file_edges) = (Edges::new(), Edges::new());
    for r in &rels {
        let text = fs::read_to_string(src.join(r)).unwrap();
        let from = top_of(r);
        for (line, path) in imports(&strip(&text), &module_path(r), r == "main.rs") {
            let to = &path[0];
            let at = format!("src/{r}:{line}");
            if !tops.contains(to) {
                continue;
            }
            if *to != from {
                top_edges
                    .entry((from.clone(), to.clone()))
                    .or_default()
                    .push(at);
            } else if let Some(f) = file_of(&path, &rels).filter(|f| f != r) {
                if !is_mod_file(r) && !is_mod_file(&f) {
                    file_edges.entry((r.clone(), f)).or_default().push(at);
                }
            }
        }
    }
    for ats in top_edges.values_mut().chain(file_edges.values_mut()) {
        ats.dedup();
    }

    let allowed: BTreeSet<(String, String)> = allowed_edges
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    for ((a, b), ats) in &top_edges {
        let (la, lb) = (layers.get(a), layers.get(b));
        if let (Some(la), Some(lb)) = (la, lb) {
            if lb > la && !allowed.contains(&(a.clone(), b.clone())) {
                for at in ats {
                    problems.push(format!(
                        "{at} imports {b} (layer {lb}) from {a} (layer {la})"
                    ));
                }
            }
        }
    }
    for edges in [&top_edges, &file_edges] {
        let rest: Edges = edges
            .iter()
            .filter(|(e, _)| !allowed.contains(*e))
            .map(|(e, v)| (e.clone(), v.clone()))
            .collect();
        for scc in circles(&rest) {
            let mut text = format!("circle: {}", cycle_text(&scc, &rest));
            for ((a, b), ats) in rest
                .iter()
                .filter(|((a, b), _)| scc.contains(a) && scc.contains(b))
            {
                let more = if ats.len() > 3 {
                    format!(" and {} more", ats.len() - 3)
                } else {
                    String::new()
                };
                text.push_str(&format!(
                    "\n    {a} -> {b} at {}{more}",
                    ats[..ats.len().min(3)].join(", ")
                ));
            }
            problems.push(text);
        }
    }
    for (a, b, _) in allowed_edges {
        let e = (a.to_string(), b.to_string());
        let edges = if a.contains('/') {
            &file_edges
        } else {
            &top_edges
        };
        let upward = matches!((layers.get(*a), layers.get(*b)), (Some(x), Some(y)) if y > x);
        if !edges.contains_key(&e) {
            problems.push(format!(
                "ALLOWED ({a:?}, {b:?}) no longer occurs: remove it"
            ));
        } else if !upward && !reaches(edges, b, a) {
            problems.push(format!(
                "ALLOWED ({a:?}, {b:?}) closes no circle now: remove it"
            ));
        }
    }
    problems
}

/// Module name -> layer number, from the ```layers block: `layer N name: a, b, c`
/// (continued on indented lines), lowest first.
fn parse_layers(doc: &str) -> Result<BTreeMap<String, usize>, String> {
    let start = doc.lines().position(|l| l.trim() == "```layers");
    let start = start.ok_or("no ```layers block")?;
    let mut map = BTreeMap::new();
    let mut current: Option<usize> = None;
    for line in doc.lines().skip(start + 1) {
        if line.trim_start().starts_with("```") {
            return if map.is_empty() {
                Err("empty ```layers block".into())
            } else {
                Ok(map)
            };
        }
        let (body, names) = if let Some(rest) = line.strip_prefix("layer ") {
            let (head, names) = rest.split_once(':').ok_or(format!("no ':' in {line:?}"))?;
            let n: usize = head
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or(format!("no layer number in {line:?}"))?;
            if n != current.map_or(0, |c| c + 1) {
                return Err(format!("layer {n} out of order"));
            }
            current = Some(n);
            (n, names)
        } else if line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            (current.ok_or("a continued line before any layer")?, line)
        } else {
            continue;
        };
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if map.insert(name.to_string(), body).is_some() {
                return Err(format!("{name} is in two layers"));
            }
        }
    }
    Err("the ```layers block is not closed".into())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn rel(src: &Path, f: &Path) -> String {
    f.strip_prefix(src)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// The top-level module a file belongs to: `aoe` for aoe/socket.rs, `units` for units.rs.
fn top_of(rel: &str) -> String {
    let first = rel.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

fn is_mod_file(rel: &str) -> bool {
    rel.ends_with("/mod.rs")
}

/// A file's module path: [aoe, socket] for aoe/socket.rs, [aoe] for aoe/mod.rs.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    let last = parts.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap();
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The deepest file a module path names: [control, apply, run] is control/apply.rs.
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    let (mut dir, mut found) = (String::new(), None);
    for seg in path {
        let (flat, nested) = (format!("{dir}{seg}.rs"), format!("{dir}{seg}/mod.rs"));
        if files.contains(&flat) {
            found = Some(flat);
        } else if files.contains(&nested) {
            found = Some(nested);
        } else {
            break;
        }
        dir = format!("{dir}{seg}/");
    }
    found
}

/// The text with comments, string and char literals blanked out (lines kept).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let rest = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        let end = if c[i] == '/' && rest(1) == '/' {
            (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len())
        } else if c[i] == '/' && rest(1) == '*' {
            let (mut k, mut depth) = (i + 2, 1);
            while k < c.len() && depth > 0 {
                if c[k] == '/' && c.get(k + 1) == Some(&'*') {
                    depth += 1;
                    k += 1;
                } else if c[k] == '*' && c.get(k + 1) == Some(&'/') {
                    depth -= 1;
                    k += 1;
                }
                k += 1;
            }
            k
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && {
                let hashes = (i + 1..c.len()).take_while(|&k| c[k] == '#').count();
                c.get(i + 1 + hashes) == Some(&'"')
            }
        {
            let hashes = (i + 1..c.len()).take_while(|&k| c[k] == '#').count();
            let mut k = i + 2 + hashes;
            while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')))
            {
                k += 1;
            }
            (k + 1 + hashes).min(c.len())
        } else if c[i] == '"' {
            let mut k = i + 1;
            while k < c.len() && c[k] != '"' {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            (k + 1).min(c.len())
        } else if c[i] == '\'' && rest(1) == '\\' {
            ((i + 3..c.len()).find(|&k| c[k] == '\'').unwrap_or(c.len()) + 1).min(c.len())
        } else if c[i] == '\'' && rest(2) == '\'' {
            i + 3
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        out.extend(c[i..end].iter().map(|&ch| blank(ch)));
        i = end;
    }
    out
}

/// Every path into the crate in stripped text, each from the crate root, with its line.
fn imports(text: &str, own: &[String], bin: bool) -> Vec<(usize, Vec<String>)> {
    let toks = tokens(text);
    let t = |k: usize| toks.get(k).map_or("", |(s, _)| s.as_str());
    let (mut out, mut mods, mut depth, mut pending) = (Vec::new(), Vec::new(), 0usize, None);
    for i in 0..toks.len() {
        match t(i) {
            "{" => {
                depth += 1;
                if let Some(name) = pending.take() {
                    mods.push((name, depth));
                }
            }
            "}" => {
                if mods.last().is_some_and(|(_, d)| *d == depth) {
                    mods.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if is_ident(t(i + 1)) && t(i + 2) == "{" => pending = Some(t(i + 1).to_string()),
            _ => {}
        }
        if t(i + 1) != "::" || (i > 0 && t(i - 1) == "::") {
            continue;
        }
        let mut base: Vec<String> = own.to_vec();
        base.extend(mods.iter().map(|(n, _)| n.clone()));
        let mut j = i + 2;
        match t(i) {
            "crate" => base.clear(),
            "cowctl" if bin => base.clear(),
            "super" => {
                base.pop();
                while t(j) == "super" && t(j + 1) == "::" {
                    base.pop();
                    j += 2;
                }
            }
            _ => continue,
        }
        let (tails, _) = tree(&toks, j);
        for tail in tails {
            let mut path = base.clone();
            path.extend(tail.into_iter().filter(|s| s != "self"));
            if !path.is_empty() {
                out.push((toks[i].1, path));
            }
        }
    }
    out
}

/// The paths of a use tree at `j`: `a::b`, `a::{b, c::d}`, `{a, b}`.
fn tree(toks: &[(String, usize)], mut j: usize) -> (Vec<Vec<String>>, usize) {
    let t = |k: usize| toks.get(k).map_or("", |(s, _)| s.as_str());
    if t(j) == "{" {
        let mut all = Vec::new();
        j += 1;
        while j < toks.len() && t(j) != "}" {
            let (paths, next) = tree(toks, j);
            all.extend(paths);
            j = next;
            while j < toks.len() && t(j) != "," && t(j) != "}" {
                j += 1;
            }
            if t(j) == "," {
                j += 1;
            }
        }
        return (all, j + 1);
    }
    if !is_ident(t(j)) {
        return (vec![Vec::new()], j);
    }
    let seg = t(j).to_string();
    if t(j + 1) != "::" {
        return (vec![vec![seg]], j + 1);
    }
    let (rest, end) = tree(toks, j + 2);
    let paths = rest
        .into_iter()
        .map(|mut p| {
            p.insert(0, seg.clone());
            p
        })
        .collect();
    (paths, end)
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation, each with its line.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = text.chars().collect();
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        if c[i] == '\n' {
            line += 1;
            i += 1;
        } else if c[i].is_whitespace() {
            i += 1;
        } else if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((c[start..i].iter().collect(), line));
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push(("::".into(), line));
            i += 2;
        } else {
            out.push((c[i].to_string(), line));
            i += 1;
        }
    }
    out
}

fn reaches(edges: &Edges, from: &str, to: &str) -> bool {
    let (mut seen, mut todo) = (BTreeSet::new(), vec![from.to_string()]);
    while let Some(n) = todo.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n.clone()) {
            todo.extend(
                edges
                    .keys()
                    .filter(|(a, _)| *a == n)
                    .map(|(_, b)| b.clone()),
            );
        }
    }
    false
}

/// The strongly connected sets of more than one node: each holds at least one circle.
fn circles(edges: &Edges) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if done.contains(n) {
            continue;
        }
        let scc: BTreeSet<String> = edges
            .keys()
            .flat_map(|(a, b)| [a, b])
            .filter(|m| reaches(edges, n, m) && reaches(edges, m, n))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        if scc.len() > 1 {
            out.push(scc);
        }
    }
    out
}

/// One shortest circle through the set's first node, as `a -> b -> a`.
fn cycle_text(scc: &BTreeSet<String>, edges: &Edges) -> String {
    let start = scc.iter().next().unwrap().clone();
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(n) = queue.pop_front() {
        for (_, b) in edges.keys().filter(|(a, b)| *a == n && scc.contains(b)) {
            if *b == start {
                let mut path = vec![n.clone()];
                while let Some(p) = prev.get(path.last().unwrap()) {
                    path.push(p.clone());
                }
                path.reverse();
                if path[0] != start {
                    path.insert(0, start.clone());
                }
                path.push(start.clone());
                return path.join(" -> ");
            }
            if !prev.contains_key(b) && *b != start {
                prev.insert(b.clone(), n.clone());
                queue.push_back(b.clone());
            }
        }
    }
    scc.iter().cloned().collect::<Vec<_>>().join(", ")
}
