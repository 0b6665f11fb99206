//! What plugs cowctl into monitoring: the Prometheus alert rules and the Grafana dashboard in
//! `contrib/` use only metric names a real `cowctl serve` exports (and the dashboard's
//! queries parse, by promtool), and `COWCTL_LOG_FORMAT=json` makes the service's log JSON
//! lines that carry each event with its PC.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::room::{Golden, Http, Pc, Room, RoomBuilder};
use serde_json::Value;

const PC1: &str = "127.0.0.11";
const PC2: &str = "127.0.0.12";

/// Metric names Prometheus makes itself, which the rules may use beside cowctl's.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

/// Two PCs on a 16 MiB golden image with 4 MiB COWs, pc-1 auto-extending up to 16 MiB;
/// `cowctl apply` starts the service with `env` added to its environment. `pxe.yaml` is
/// the same room with a pxe section.
fn room(env: &[(&str, &str)]) -> Room {
    let room = RoomBuilder::userspace()
        .golden(Golden::Fill(0x5a, 16 << 20))
        .cow("4MiB", "4KiB")
        .export("nbd")
        .http(Http::new().listen("0.0.0.0"))
        .pc(Pc::new("pc-1")
            .ip(PC1)
            .mac("52:54:00:00:00:01")
            .set("autoextend", "{threshold: 50, step: 100, max: 16MiB}"))
        .pc(Pc::new("pc-2").ip(PC2).mac("52:54:00:00:00:02"))
        .build();
    let pxe = format!("{}pxe:\n  interface: cowmon0\n  dhcp: proxy\n", room.text);
    std::fs::write(room.path("pxe.yaml"), pxe).unwrap();
    let out = room
        .command(&["apply"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "cowctl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    room
}

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

/// The metric names a PromQL expression uses: label matchers, strings, ranges, Grafana's
/// `$variables`, functions, keywords and the label lists of `by (…)`, `on (…)` and the like
/// are not names.
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
    // Aggregations may put `by (…)` between their name and their parenthesis.
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        while j < c.len() && c[j] != close {
            if c[j] == '\\' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = skip_to(i, c[i]),
            '{' => i = skip_to(i, '}'),
            '[' => i = skip_to(i, ']'),
            '$' => {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i = skip_to(i, '}');
                }
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
            ch if ch.is_ascii_digit() || ch == '.' => {
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.') {
                    i += 1;
                }
            }
            ch if ch.is_alphabetic() || ch == '_' || ch == ':' => {
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == ':') {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut next = i;
                while next < c.len() && c[next].is_whitespace() {
                    next += 1;
                }
                if LABEL_LISTS.contains(&word.as_str()) {
                    if c.get(next) == Some(&'(') {
                        i = skip_to(next, ')');
                    }
                } else if c.get(next) != Some(&'(')
                    && !KEYWORDS.contains(&word.as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` in the dashboard's panels, and its variables' `label_values(<expr>, label)`.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.starts_with("label_values(") => {
                        let inner = &s["label_values(".len()..s.len() - 1];
                        out.push(inner.rsplit_once(',').map_or(inner, |(e, _)| e).into());
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(contrib("prometheus/cowctl-alerts.yml")).unwrap();
    let rules: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            out.push((name, r["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            r#"count by (state) (cowctl_pc_state{instance=~"$instance", pc=~"a|b"} == 1) and on (pc) up"#
        ),
        ["cowctl_pc_state", "up"]
    );
    assert_eq!(
        metric_names(
            "sum without (pc) (increase(cowctl_resets_total{pc=~\"$pc\"}[$__range])) / ${x} > 0.5"
        ),
        ["cowctl_resets_total"]
    );
    assert_eq!(metric_names("absent(up{job=\"cowctl\"})"), ["up"]);
}

#[test]
fn the_alert_rules_and_the_dashboard_use_only_metrics_cowctl_serve_exports() {
    let room = room(&[]);
    // The same room with a pxe section, applied straight to the service (the CLI would
    // start dnsmasq on an interface this machine does not have): its dnsmasq is "down".
    let r = cowctl::service::control::call(
        &room.path("run"),
        &cowctl::service::control::Request::Apply {
            manifest: room.path("pxe.yaml"),
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.error, None);
    assert!(room.nbd_write_mib("pc-2", 0, 1));
    let scrape = common::http::get("127.0.0.1", room.admin(), "/metrics");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let parsed =
        prometheus_parse::Scrape::parse(scrape.body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let exported: BTreeSet<String> = parsed.samples.iter().map(|s| s.metric.clone()).collect();
    assert!(
        scrape.body.contains("cowctl_pxe_dnsmasq_up 0"),
        "{}",
        scrape.body
    );

    let known = |name: &str| exported.contains(name) || PROMETHEUS_OWN.contains(&name);
    let rules = rule_exprs();
    assert!(rules.len() >= 6, "{rules:?}");
    for (alert, expr) in &rules {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert}: no metric in {expr}");
        for n in names {
            assert!(
                known(&n),
                "alert {alert} uses {n}, which cowctl serve does not export (it exports {exported:?})"
            );
        }
    }

    let text = std::fs::read_to_string(contrib("grafana/cowctl-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for n in metric_names(expr) {
            assert!(
                known(&n),
                "the dashboard's {expr} uses {n}, which cowctl serve does not export (it exports {exported:?})"
            );
            used.insert(n);
        }
    }
    let unshown: Vec<_> = exported.iter().filter(|n| !used.contains(*n)).collect();
    assert!(unshown.is_empty(), "the dashboard shows no {unshown:?}");

    // promtool parses the dashboard's queries as recording rules (Grafana's variables filled in).
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$instance", ".*")
                .replace("$pc", ".*")
                .replace("$__range", "1h")
                .replace("$__rate_interval", "1m");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e})
        })
        .collect();
    let file = room.path("dashboard-rules.yml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package: scripts/provision.sh --tests)");
    assert!(
        out.status.success(),
        "promtool refused the dashboard's queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lines of serve.log as JSON; panics on one that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find(lines: &[Value], f: impl Fn(&Value) -> bool) -> Option<&Value> {
    lines.iter().find(|l| f(l))
}

#[test]
fn json_log_lines_carry_each_event_with_its_pc() {
    let room = room(&[("COWCTL_LOG_FORMAT", "json")]);
    // 3 MiB of pc-2's 4 MiB COW: past the 75 % warning.
    assert!(room.nbd_write_mib("pc-2", 0, 3));
    room.cowctl(&["reset", "pc-1"]);
    let past = |l: &Value| {
        l["fields"]["pc"] == "pc-2"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("past the warning at 75%"))
    };
    let start = Instant::now();
    while find(&json_lines(&room.log()), past).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no warning event for pc-2:\n{}",
            room.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = json_lines(&room.log());
    for l in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(l[key].is_string(), "no {key}: {l}");
        }
        assert!(l["fields"]["message"].is_string(), "no message: {l}");
    }
    let warned = find(&lines, past).unwrap();
    assert_eq!(warned["level"], "WARN");
    let reset = find(&lines, |l| {
        l["fields"]["pc"] == "pc-1"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("pc-1: reset by cowctl reset"))
    });
    assert!(reset.is_some(), "no reset line for pc-1:\n{}", room.log());
    // Inside the NBD connection's span, lines carry the PC as a span field.
    let in_span = find(&lines, |l| {
        l["span"]["pc"] == "pc-2"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("disconnected from pc-2"))
    });
    assert!(in_span.is_some(), "no line in pc-2's span:\n{}", room.log());
    assert!(
        lines
            .iter()
            .all(|l| l["spans"].is_array() || l.get("spans").is_none()),
        "{lines:?}"
    );
}

#[test]
fn the_log_stays_text_by_default_and_an_unknown_format_is_refused() {
    let room = room(&[]);
    let log = room.log();
    assert!(
        log.lines().next().is_some_and(|l| !l.starts_with('{')),
        "{log}"
    );
    room.cowctl(&["down"]);
    // The service answers down, then exits: wait until it no longer answers.
    let start = Instant::now();
    while cowctl::service::control::call(
        &room.path("run"),
        &cowctl::service::control::Request::Status,
    )
    .is_ok_and(|r| r.is_some())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = common::room_command(room.dir.path(), &["apply"])
        .env("COWCTL_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "COWCTL_LOG_FORMAT=\"xml\" is not a log format: use text (the default) or json"
        ),
        "{err}"
    );
}
