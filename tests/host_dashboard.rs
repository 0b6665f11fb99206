//! What the dashboard follows, end to end on the userspace backend: the fill history
//! (sampled every 200 ms here, `COWCTL_HISTORY_INTERVAL_MS`), the event list and its
//! server-sent stream, and the admin guard on all of them.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{get, post, request};
use common::httproom::{Room, PC1, TOKEN};
use serde_json::Value;

const FAST: [(&str, &str); 1] = [("COWCTL_HISTORY_INTERVAL_MS", "200")];

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn history(room: &Room, query: &str) -> Value {
    let r = get("127.0.0.1", room.admin, &format!("/api/history{query}"));
    assert_eq!(r.status, 200, "{}", r.body);
    json(&r.body)
}

/// Waits up to 10 s for `f` to give Some.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_history_grows_as_a_pc_writes() {
    let room = Room::with_env(&FAST);
    let first = wait_for("first samples", || {
        let h = history(&room, "");
        (h["pc-2"].as_array()?.len() >= 2).then_some(h)
    });
    let sample = &first["pc-2"][0];
    assert_eq!(
        sample.as_array().unwrap().len(),
        3,
        "[t, used, total]: {sample}"
    );
    assert_eq!(sample[2], 4 << 20, "total bytes: the 4 MiB COW");
    assert!(first["pc-1"].is_array(), "{first}");
    let before = sample[1].as_u64().unwrap();
    assert!(room.write("pc-2", 0, 2));
    let grown = wait_for("a sample with the 2 MiB", || {
        let h = history(&room, "?pc=pc-2");
        let last = h["pc-2"].as_array()?.last()?[1].as_u64()?;
        (last >= before + (2 << 20)).then_some(h)
    });
    assert!(
        grown.get("pc-1").is_none(),
        "?pc= gives that PC's only: {grown}"
    );
    let ts: Vec<u64> = grown["pc-2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_u64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "oldest first: {ts:?}");
    // ?since=T: only the samples after T.
    let last_t = ts[ts.len() - 1];
    let newer = history(&room, &format!("?since={last_t}"));
    for s in newer
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v.as_array().unwrap())
    {
        assert!(s[0].as_u64().unwrap() > last_t, "{newer}");
    }
    let r = get("127.0.0.1", room.admin, "/api/history?since=soon");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get("127.0.0.1", room.admin, "/api/history?pc=pc-9");
    assert_eq!(r.status, 404, "{}", r.body);
}

/// Opens the event stream from `from` and returns the connection once its headers came.
fn open_stream(from: &str, to: SocketAddr) -> (std::net::TcpStream, String) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let mut s: std::net::TcpStream = s.into();
    write!(s, "GET /api/events/stream HTTP/1.1\r\nHost: {to}\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// Reads the stream's `data:` lines until one is an event of `kind`.
fn next_event(s: &mut std::net::TcpStream, kind: &str) -> Value {
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("an event within 10 s");
        assert!(n > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim()).unwrap();
                if v["kind"] == kind {
                    return v;
                }
            }
        }
    }
}

#[test]
fn the_event_stream_tells_who_reset_a_pc() {
    let room = Room::with_env(&FAST);
    let (mut s, head) = open_stream("127.0.0.1", room.admin);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let r = post(
        "127.0.0.1",
        room.admin,
        "/api/v1/pcs/pc-2/reset",
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let e = next_event(&mut s, "reset");
    assert_eq!(
        (e["pc"].as_str(), e["by"].as_str()),
        (Some("pc-2"), Some("admin"))
    );
    assert!(e["text"]
        .as_str()
        .unwrap()
        .starts_with("pc-2: reset over HTTP by an admin"));
    let r = post(PC1, room.pcs, "/api/v1/pcs/pc-1/reset", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let e = next_event(&mut s, "reset");
    assert_eq!(
        (e["pc"].as_str(), e["by"].as_str()),
        (Some("pc-1"), Some("pc"))
    );
    // The same events in the list, and in the log, one line each.
    let list = json(&get("127.0.0.1", room.admin, "/api/events?n=2").body);
    let by: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["admin", "pc"]);
    assert!(room.log().contains("pc-2: reset over HTTP by an admin"));
    // A reset the service did not do itself: the watcher sees it (every 5 s).
    room.cowctl(&["reset", "pc-2"]);
    let e = next_event(&mut s, "reset");
    assert_eq!(
        (e["pc"].as_str(), e["by"].as_str(), e["text"].as_str()),
        (
            Some("pc-2"),
            Some("cowctl"),
            Some("pc-2: reset (its reset number 2)")
        )
    );
    let by: Vec<String> = json(&get("127.0.0.1", room.admin, "/api/events").body)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "reset")
        .map(|e| format!("{} {}", e["pc"], e["by"]))
        .collect();
    assert_eq!(
        by,
        [
            "\"pc-2\" \"admin\"",
            "\"pc-1\" \"pc\"",
            "\"pc-2\" \"cowctl\""
        ],
        "each reset once"
    );
}

#[test]
fn event_streams_are_capped() {
    let room = Room::new();
    // 16 connections per address at most: the 32 streams come from 4 addresses.
    let open: Vec<_> = (0..32)
        .map(|i| open_stream(&format!("127.0.0.{}", 20 + i / 8), room.admin))
        .collect();
    assert!(open.iter().all(|(_, h)| h.starts_with("HTTP/1.1 200")));
    let r = get("127.0.0.30", room.admin, "/api/events/stream");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("32 event streams are open already"),
        "{}",
        r.body
    );
    drop(open);
    let (_s, head) = wait_for("a place again", || {
        std::thread::sleep(Duration::from_millis(600));
        let (s, head) = open_stream("127.0.0.31", room.admin);
        head.starts_with("HTTP/1.1 200").then_some((s, head))
    });
    assert!(head.contains("text/event-stream"));
}

#[test]
fn history_and_events_follow_the_admin_guard() {
    let room = Room::new();
    for path in ["/api/history", "/api/events", "/api/events/stream"] {
        // Not on the PCs' address.
        let r = get(PC1, room.pcs, path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(r.body.contains("on the admin address"), "{}", r.body);
        // Not for another site's page in an admin's browser, nor another site's name.
        let me = "127.0.0.1".parse().unwrap();
        for h in [
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ] {
            let r = request(me, room.admin, "GET", path, &[h]);
            assert_eq!(r.status, 403, "{path} {h:?}: {}", r.body);
            assert!(r.body.contains("may not read the admin API"), "{}", r.body);
        }
        let r = request(me, room.admin, "GET", path, &[("Host", "evil.example")]);
        assert_eq!(r.status, 421, "{path}: {}", r.body);
    }
    // Waking needs the token too (pc-2 has no MAC: it cannot be woken at all).
    let r = post("127.0.0.1", room.admin, "/api/v1/pcs/pc-2/wake", None);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post(
        "127.0.0.1",
        room.admin,
        "/api/v1/pcs/pc-2/wake",
        Some(TOKEN),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("pc-2 has no mac"), "{}", r.body);
}

#[test]
fn selecting_pcs_on_the_page_and_resetting_them_resets_them() {
    let room = Room::with_env(&FAST);
    assert!(room.write("pc-2", 0, 1));
    let url = format!("http://{}/", room.admin);
    let mut page = common::devtools::Page::open(&url, &room.path("chromium"), "390,844");
    // The tiles are there once the page's script has run; Chromium may still be loading it.
    page.wait_for(
        "tile for pc-2",
        "document.querySelector('.tile[data-pc=\"pc-2\"]') !== null",
    );
    // A tap on pc-2's tile selects it; the token goes in once; the reset is confirmed.
    let requests = page.eval(&format!(
        "sessionStorage.setItem('cowctl-token', '{TOKEN}'); window.confirm = () => true;
         document.querySelector('.tile[data-pc=\"pc-2\"]').click();
         document.getElementById('reset').dataset.requests"
    ));
    assert_eq!(requests, "POST /api/v1/pcs/pc-2/reset");
    // The reset's outcome is said once its requests have come back.
    page.eval("document.getElementById('reset').click()");
    let msg = page.wait_for(
        "outcome of the reset",
        "(t => t.startsWith('reset:') ? t : null)(document.getElementById('msg').textContent)",
    );
    assert_eq!(msg, "reset: pc-2: done");
    assert_eq!(room.status("pc-2")["resets"], 1);
    assert_eq!(room.status("pc-1")["resets"], 0, "only the selected PC");
    // The page's event list heard it over the stream, naming who asked.
    let event = page.wait_for(
        "reset event",
        "(li => li ? li.dataset.by + ' ' + li.textContent : null)\
         (document.querySelector('#events li[data-kind=\"reset\"]'))",
    );
    let event = event.as_str().unwrap();
    assert!(
        event.starts_with("admin ") && event.contains("pc-2: reset over HTTP by an admin"),
        "{event}"
    );
}
