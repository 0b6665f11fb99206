//! The HTTP service of `cowctl serve` on the userspace backend, end to end: `cowctl apply`
//! starts the service, requests come from the PCs' own addresses on loopback
//! (127.0.0.11, 127.0.0.12) or from strangers, disks are written with qemu-io over NBD.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{get, post};
use serde_json::Value;

use common::httproom::{Room, PC1, PC2, STRANGER, TOKEN};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn cowbell_knows_each_pc_by_its_address_and_strangers_get_err() {
    let room = Room::new();
    assert!(room.write("pc-2", 0, 1));
    let used = room.status("pc-2")["used_sectors"].as_u64().unwrap();
    assert!(used > 2048, "1 MiB written shows in the fill: {used}");
    let r = get(PC2, room.pcs, "/cow");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, format!("OK {used} 8192").as_str())
    );
    // pc-1 auto-extends to 16 MiB: CowBell's total is what it may grow to.
    let r = get(PC1, room.pcs, "/cow");
    let used1 = room.status("pc-1")["used_sectors"].as_u64().unwrap();
    assert_eq!(r.body, format!("OK {used1} 32768"));
    for (from, to) in [(STRANGER, room.pcs), ("127.0.0.1", room.admin)] {
        let r = get(from, to, "/cow");
        assert_eq!((r.status, r.body.as_str()), (403, "ERR unknown client"));
    }
    room.cowctl(&["down", "pc-2"]);
    let r = get(PC2, room.pcs, "/cow");
    assert_eq!((r.status, r.body.as_str()), (503, "ERR not applied"));
}

#[test]
fn each_pc_reads_its_own_identity_at_its_own_address() {
    let room = Room::new();
    let r = get(PC1, room.pcs, "/identity");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        "domain=lab.example\nhostname=lab-a1\nimage=g\nmac=52:54:00:00:00:01\nname=pc-1\nroom=101\nsite=north\n"
    );
    let r = get(PC2, room.pcs, "/identity?format=json");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r.body);
    assert_eq!(
        v["hostname"], "pc-2",
        "the default host name is the PC's name"
    );
    assert_eq!(
        v["site"], "north",
        "defaults give every PC their identity values"
    );
    assert!(
        v.get("room").is_none(),
        "pc-1's own values are pc-1's only: {v}"
    );
    let r = get(STRANGER, room.pcs, "/identity");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("unknown client"), "{}", r.body);
}

#[test]
fn the_api_gives_the_rows_of_status_json() {
    let room = Room::new();
    assert!(room.write("pc-1", 1, 1));
    let r = get("127.0.0.1", room.admin, "/api/v1/pcs");
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("application/json"), "{}", r.headers);
    let api = json(&r.body);
    let cli: Value = json(&room.cowctl(&["--json", "status"]));
    assert_eq!(api, cli, "the API and status --json agree");
    let one = json(&get("127.0.0.1", room.admin, "/api/v1/pcs/pc-1").body);
    assert_eq!(one, cli[0]);
    assert_eq!(one["image_version"], "7");
    assert_eq!(one["max_sectors"], 32768);
    let r = get("127.0.0.1", room.admin, "/api/v1/pcs/pc-9");
    assert_eq!(r.status, 404);
    assert_eq!(
        json(&r.body)["error"],
        "no PC named \"pc-9\" in the manifest"
    );
    // PCs and strangers do not list the room on the PC address.
    for from in [PC1, STRANGER] {
        let r = get(from, room.pcs, "/api/v1/pcs");
        assert_eq!(r.status, 404);
        assert!(r.body.contains("on the admin address"), "{}", r.body);
        assert!(!r.body.contains("pc-2"));
    }
}

#[test]
fn resets_need_the_admin_token_or_a_pc_resetting_itself() {
    let room = Room::new();
    assert!(room.write("pc-1", 0, 1) && room.write("pc-2", 0, 1));
    let reset = |pc: &str| format!("/api/v1/pcs/{pc}/reset");
    let refusals = [
        (
            post("127.0.0.1", room.admin, &reset("pc-2"), None),
            401,
            "a reset needs the admin bearer token (Authorization: Bearer <token>)",
        ),
        (
            post("127.0.0.1", room.admin, &reset("pc-2"), Some("guess")),
            401,
            "the bearer token is not the admin token",
        ),
        (
            post(PC1, room.pcs, &reset("pc-2"), Some(TOKEN)),
            403,
            "admin requests go to the admin address (http.admin_listen)",
        ),
        (
            post(PC1, room.pcs, &reset("pc-2"), None),
            403,
            "pc-1 may reset only itself",
        ),
        (
            post(PC2, room.pcs, &reset("pc-2"), None),
            403,
            "pc-2 may not reset itself: its manifest entry does not say self_reset: true",
        ),
        (
            post(STRANGER, room.pcs, &reset("pc-1"), None),
            403,
            "unknown client",
        ),
        (
            post(STRANGER, room.pcs, &reset("pc-9"), None),
            403,
            "unknown client",
        ),
        (
            post("127.0.0.1", room.admin, &reset("pc-9"), Some(TOKEN)),
            404,
            "no PC named \"pc-9\" in the manifest",
        ),
    ];
    for (i, (r, status, message)) in refusals.iter().enumerate() {
        assert_eq!(
            (r.status, json(&r.body)["error"].as_str()),
            (*status, Some(*message)),
            "refusal {i}"
        );
    }
    assert_eq!(
        room.status("pc-2")["resets"],
        0,
        "no refusal reset anything"
    );
    let written = room.status("pc-2")["used_sectors"].as_u64().unwrap();

    let r = post("127.0.0.1", room.admin, &reset("pc-2"), Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["live"], true);
    let row = room.status("pc-2");
    assert!(row["used_sectors"].as_u64().unwrap() < written);
    assert_eq!(row["resets"], 1);
    assert!(row["last_reset"].as_u64().is_some());

    let r = post(PC1, room.pcs, &reset("pc-1"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(room.status("pc-1")["resets"], 1);
    assert!(
        !room.log().contains(TOKEN),
        "the token never reaches the log"
    );
    assert!(!room.log().contains("guess"), "nor does a wrong one");
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let room = Room::new();
    assert!(room.write("pc-2", 2, 1));
    // A client that stays connected while the scrape runs.
    let mut client = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(format!("nbd://127.0.0.1:{}/pc-2", room.nbd))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = get("127.0.0.1", room.admin, "/metrics");
    drop(client.stdin.take());
    client.wait().unwrap();
    assert_eq!(r.status, 200);
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, pc: &str, state: Option<&str>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("pc") == Some(pc)
                    && state.is_none_or(|st| s.labels.get("state") == Some(st))
            })
            .unwrap_or_else(|| panic!("no {name} for {pc} in\n{}", r.body));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let row = room.status("pc-2");
    let used = row["used_sectors"].as_u64().unwrap() as f64 * 512.0;
    assert_eq!(value("cowctl_cow_used_bytes", "pc-2", None), used);
    assert_eq!(value("cowctl_cow_total_bytes", "pc-2", None), 4194304.0);
    assert_eq!(value("cowctl_cow_max_bytes", "pc-1", None), 16777216.0);
    assert_eq!(value("cowctl_pc_state", "pc-2", Some("active")), 1.0);
    assert_eq!(value("cowctl_pc_state", "pc-2", Some("overflow")), 0.0);
    assert_eq!(value("cowctl_resets_total", "pc-2", None), 0.0);
    assert_eq!(value("cowctl_connected_initiators", "pc-2", None), 1.0);
    assert_eq!(value("cowctl_connected_initiators", "pc-1", None), 0.0);
    room.cowctl(&["reset", "pc-2"]);
    let r = get("127.0.0.1", room.admin, "/metrics");
    assert!(
        r.body.contains("cowctl_resets_total{pc=\"pc-2\"} 1"),
        "{}",
        r.body
    );
}

#[test]
fn bad_requests_get_a_clear_4xx() {
    let room = Room::new();
    let cases = [
        (get(PC1, room.pcs, "/nope"), 404, "no such page /nope here"),
        (
            get("127.0.0.1", room.admin, "/nope"),
            404,
            "no such page /nope: try /, /cow",
        ),
        (
            post("127.0.0.1", room.admin, "/metrics", None),
            405,
            "/metrics does not take POST",
        ),
        (
            get(PC1, room.pcs, "/boot.ipxe?mac=zz"),
            400,
            "mac: \"zz\" is not a MAC address",
        ),
        (get(STRANGER, room.pcs, "/boot.ipxe"), 403, "unknown client"),
        (
            get(STRANGER, room.pcs, "/boot.ipxe?mac=52:54:00:00:00:01"),
            403,
            "unknown client",
        ),
        (
            get(PC1, room.pcs, "/boot.ipxe"),
            409,
            "pc-1 is exported over NBD, which iPXE cannot sanboot; give it export: iscsi",
        ),
    ];
    for (i, (r, status, start)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        assert!(r.body.starts_with(start), "case {i}: {}", r.body);
    }
}

#[test]
fn autoextend_grows_a_served_cow_before_it_fills_and_stops_at_the_maximum() {
    let room = Room::new();
    // 3 MiB: past the 50 % threshold, short of full. Only the watcher can grow it now (the
    // engine grows a COW on demand only when it is full).
    assert!(room.write("pc-1", 0, 3));
    let start = std::time::Instant::now();
    while room.status("pc-1")["total_sectors"] == 8192 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the watcher grew nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = room.log();
    assert!(
        log.contains("pc-1: COW") && log.contains("grown from 4.0 MiB to 8.0 MiB"),
        "{log}"
    );
    // 9 MiB more, 1 MiB at a time: 12 MiB into what was a 4 MiB COW.
    for mib in 3..12 {
        assert!(room.write("pc-1", mib, 1), "write {mib} MiB was refused");
        std::thread::sleep(Duration::from_millis(300));
    }
    let row = room.status("pc-1");
    assert_eq!(row["state"], "active");
    assert_eq!(row["total_sectors"], 32768, "grown to the 16 MiB maximum");
    let log = room.log();
    assert!(
        log.contains("pc-1: COW") && log.contains("grown from 4.0 MiB to 8.0 MiB"),
        "{log}"
    );
    let text = room.cowctl(&["status"]);
    assert!(
        text.contains(
            "pc-1's COW was grown by auto-extend from 4.0 MiB to 16.0 MiB (at most 16.0 MiB)"
        ),
        "{text}"
    );
    // Past the maximum the PC's writes fail as they would without auto-extend.
    assert!(!room.write("pc-1", 12, 4), "the maximum holds");
    assert_eq!(room.status("pc-1")["state"], "overflow");
    assert_eq!(
        room.status("pc-2")["total_sectors"],
        8192,
        "pc-2 has no auto-extend"
    );
}

#[test]
fn a_writer_faster_than_the_watcher_grows_the_cow_on_demand() {
    let room = Room::new();
    // 12 MiB in one go into the 4 MiB COW: the engine grows it as it fills.
    assert!(room.write("pc-1", 0, 12), "the write was refused");
    let row = room.status("pc-1");
    assert_eq!(row["state"], "active");
    assert!(row["total_sectors"].as_u64().unwrap() > 12 << 11, "{row}");
    let log = room.log();
    assert!(
        log.contains("pc=pc-1")
            && log.contains("the COW was full: grown on demand from 4.0 MiB to 8.0 MiB"),
        "{log}"
    );
    // pc-2 has no auto-extend: the same write overflows it.
    assert!(!room.write("pc-2", 0, 12));
    assert_eq!(room.status("pc-2")["state"], "overflow");
}

#[test]
fn the_dashboard_renders_in_headless_chromium() {
    let room = Room::with_env(&[("COWCTL_HISTORY_INTERVAL_MS", "200")]);
    // pc-2 fills a MiB at a time, so its plot climbs.
    assert!(room.write("pc-1", 0, 1));
    for mib in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        assert!(room.write("pc-2", mib, 1));
    }
    let r = post(
        "127.0.0.1",
        room.admin,
        "/api/v1/pcs/pc-1/reset",
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_millis(600));
    // `#select=pc-2`: the page starts with pc-2 selected and plotted.
    let url = format!("http://{}/#select=pc-2", room.admin);
    let chromium = |extra: &[&str]| common::http::chromium(&url, &room.path("chromium"), extra);
    let dom = chromium(&["--dump-dom", "--window-size=1280,800"]);
    let tiles: Vec<&str> = dom
        .split("<article ")
        .skip(1)
        .map(|t| t.split('>').next().unwrap())
        .collect();
    assert_eq!(tiles.len(), 2, "a tile per PC:\n{dom}");
    // In the manifest's order, with their state and fill; pc-2's 3 MiB of 4 is past 75 %.
    let mut fills = Vec::new();
    for (tile, want) in tiles.iter().zip([
        [
            "data-pc=\"pc-1\"",
            "data-state=\"active\"",
            "data-level=\"ok\"",
        ],
        [
            "data-pc=\"pc-2\"",
            "data-state=\"active\"",
            "data-level=\"warn\"",
        ],
    ]) {
        for w in want {
            assert!(tile.contains(w), "{w} not in {tile}");
        }
        let fill: f64 = tile
            .split("data-fill=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        fills.push(fill);
    }
    assert!(
        fills[0] < 1.0 && fills[1] > 75.0,
        "pc-1 was reset, pc-2 is full: {fills:?}"
    );
    assert!(tiles[1].contains("selected"), "{}", tiles[1]);
    for want in [
        "<svg class=\"spark\"",
        "<polyline points=",
        "<div class=\"line version\">g 7</div>",
        "data-requests=\"POST /api/v1/pcs/pc-2/reset\"",
        "data-requests=\"POST /api/v1/pcs/pc-2/wake\"",
        "pc-2: fill over the last day",
        "data-kind=\"reset\" data-pc=\"pc-1\" data-by=\"admin\"",
        "pc-1: reset over HTTP by an admin",
    ] {
        assert!(dom.contains(want), "the rendered page lacks {want}:\n{dom}");
    }
    let outputs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    for (file, size) in [
        ("dashboard.png", "1280,800"),
        ("dashboard-phone.png", "390,844"),
    ] {
        let png = outputs.join(file);
        let _ = std::fs::remove_file(&png);
        chromium(&[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={size}"),
        ]);
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "a real screenshot: {file}"
        );
    }
}
