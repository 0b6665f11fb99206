//! The userspace backend with real NBD clients from Debian's packages (qemu-img, qemu-io,
//! nbdinfo, nbdcopy, fio's nbd engine), the way an admin runs it: `cowctl apply` starts
//! `cowctl serve`, the clients connect over TCP on loopback and over the unix socket.

#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

mod common;

use common::assert_same;
use common::kernel::sh as run;
use common::room::{Golden, Pc, Room, RoomBuilder};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const GOLDEN: usize = 32 << 20;

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 32 MiB golden image and a room of three PCs on the userspace backend: pc-1 and
/// pc-2 writable, pc-ro read-only.
fn room() -> Room {
    RoomBuilder::userspace()
        .golden(Golden::Bytes(golden()))
        .version("1")
        .cow("48MiB", "32KiB")
        .export("nbd")
        .pc(Pc::new("pc-{1..2}"))
        .pc(Pc::new("pc-ro").flag("read_only"))
        .build()
}

/// The golden image's bytes.
fn golden() -> Vec<u8> {
    pattern(7, GOLDEN)
}

fn unix_uri(room: &Room, pc: &str) -> String {
    format!(
        "nbd+unix:///{pc}?socket={}",
        room.path("nbd.sock").display()
    )
}

/// The whole export, copied out with nbdcopy.
fn read_export(room: &Room, uri: &str) -> Vec<u8> {
    let out = room.path("read.img");
    run("nbdcopy", &[uri, out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

#[test]
fn clients_read_and_write_over_tcp_and_the_unix_socket() {
    let room = room();
    let out = room.cowctl(&["apply"]);
    assert!(
        out.contains("serve pc-ro over NBD as export \"pc-ro\", read-only"),
        "{out}"
    );

    let info: serde_json::Value =
        serde_json::from_str(&run("nbdinfo", &["--json", &room.nbd_uri("pc-1")])).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], GOLDEN as u64);
    assert_eq!(export["block_size_preferred"], 32768, "the chunk size");
    assert_eq!(export["block_size_maximum"], 32 << 20);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(export[flag], true, "{flag}");
    }
    assert_eq!(export["is_read_only"], false);
    let ro: serde_json::Value =
        serde_json::from_str(&run("nbdinfo", &["--json", &room.nbd_uri("pc-ro")])).unwrap();
    assert_eq!(ro["exports"][0]["is_read_only"], true);
    let list = run("nbdinfo", &["--list", "--json", &room.nbd_uri("")]);
    for pc in ["pc-1", "pc-2", "pc-ro"] {
        assert!(
            list.contains(&format!("\"export-name\": \"{pc}\"")),
            "{list}"
        );
    }

    // qemu-io writes across chunk borders, unaligned; qemu-img compares the whole disk.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 100000 3000000",
            "-c",
            "flush",
            &room.nbd_uri("pc-1"),
        ],
    );
    let mut want = golden();
    want[100_000..3_100_000].fill(0xab);
    let expect = room.path("expect.img");
    std::fs::write(&expect, &want).unwrap();
    let cmp = ["compare", "-f", "raw", "-F", "raw"];
    run(
        "qemu-img",
        &[&cmp[..], &[&room.nbd_uri("pc-1"), expect.to_str().unwrap()]].concat(),
    );
    let golden_img = room.path("golden.img");
    run(
        "qemu-img",
        &[
            &cmp[..],
            &[&unix_uri(&room, "pc-2"), golden_img.to_str().unwrap()],
        ]
        .concat(),
    );

    // nbdcopy both ways, over the unix socket.
    let image = pattern(99, GOLDEN);
    std::fs::write(room.path("image.img"), &image).unwrap();
    run(
        "nbdcopy",
        &[
            room.path("image.img").to_str().unwrap(),
            &unix_uri(&room, "pc-2"),
        ],
    );
    assert_same(
        &read_export(&room, &room.nbd_uri("pc-2")),
        &image,
        "pc-2 after nbdcopy",
    );
    assert_same(
        &read_export(&room, &room.nbd_uri("pc-1")),
        &want,
        "pc-1 read back",
    );

    // TRIM zeroes whole chunks that have an exception (the kernel's discard_zeroes_cow) and
    // leaves the rest; WRITE_ZEROES reads back as zeros.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "discard 131072 65536",
            "-c",
            "write -z 5000000 70000",
            "-c",
            "flush",
            &room.nbd_uri("pc-1"),
        ],
    );
    want[131_072..196_608].fill(0);
    want[5_000_000..5_070_000].fill(0);
    assert_same(
        &read_export(&room, &room.nbd_uri("pc-1")),
        &want,
        "pc-1 after trim and zero",
    );

    // The read-only export refuses writes and stays golden.
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 1 0 4096",
            &room.nbd_uri("pc-ro"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() || text.contains("denied"), "{text}");
    assert_same(
        &read_export(&room, &room.nbd_uri("pc-ro")),
        &golden(),
        "pc-ro",
    );
}

#[test]
fn fio_verifies_crc32c_with_several_clients_at_once() {
    let room = room();
    room.cowctl(&["apply"]);
    // Four fio connections to pc-1 (each its own quarter) and one to pc-2, all at once.
    let job = |uri: &str, jobs: &str, size: &str, name: &str| {
        Command::new("fio")
            .args([
                &format!("--name={name}"),
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                &format!("--numjobs={jobs}"),
                &format!("--size={size}"),
                &format!("--offset_increment={size}"),
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--group_reporting",
                "--output-format=json",
            ])
            .output()
            .unwrap()
    };
    let (u1, u2) = (room.nbd_uri("pc-1"), room.nbd_uri("pc-2"));
    let a = std::thread::spawn(move || job(&u1, "4", "8m", "four"));
    let b = std::thread::spawn(move || job(&u2, "1", "16m", "one"));
    for (out, what) in [(a.join().unwrap(), "pc-1 x4"), (b.join().unwrap(), "pc-2")] {
        assert!(
            out.status.success(),
            "fio on {what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // fio's nbd engine prints a line of its own before the report.
        let text = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value =
            serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        let job = &report["jobs"][0];
        assert_eq!(job["error"], 0, "{what}");
        assert!(
            job["write"]["io_bytes"].as_u64().unwrap() > 0,
            "{what} wrote nothing"
        );
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap() > 0,
            "{what} verified nothing"
        );
    }
    // What fio wrote is what a fresh connection reads, and status counts it.
    let status: serde_json::Value =
        serde_json::from_str(&room.cowctl(&["status", "--json", "pc-1"])).unwrap();
    assert!(
        status[0]["used_percent"].as_f64().unwrap() > 50.0,
        "{status}"
    );
}

#[test]
fn status_reset_and_down_work_through_the_service_while_clients_are_connected() {
    let room = room();
    let out = room.cowctl(&["plan"]);
    assert!(
        out.contains("1. start cowctl serve (NBD on 127.0.0.1:"),
        "{out}"
    );
    room.cowctl(&["apply"]);
    assert!(room
        .cowctl(&["apply"])
        .contains("nothing to do: the service already serves the manifest"));
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xcd 0 4M",
            "-c",
            "flush",
            &room.nbd_uri("pc-1"),
        ],
    );

    // A client stays connected; status names it, reset drops it, and its next connection
    // reads the golden image.
    let client = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "read -P 0xcd 0 4096",
            "-c",
            "sleep 4000",
            "-c",
            "read 0 4096",
            &room.nbd_uri("pc-1"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s: serde_json::Value =
            serde_json::from_str(&room.cowctl(&["status", "--json"])).unwrap();
        if s[0]["initiators"].as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status[0]["name"], "pc-1");
    assert_eq!(status[0]["state"], "active");
    assert_eq!(status[0]["export"], room.nbd_uri("pc-1"));
    assert!(
        status[0]["initiators"][0]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{status}"
    );
    assert!(status[0]["used_sectors"].as_u64().unwrap() >= 8192);
    let table = room.cowctl(&["status"]);
    assert!(table.starts_with("PC "), "{table}");
    assert!(table.contains(&room.nbd_uri("pc-ro")), "{table}");

    let out = room.cowctl(&["reset", "pc-1"]);
    assert!(
        out.starts_with("reset pc-1: I/O paused ") && out.contains("NBD connections closed;"),
        "{out}"
    );
    let client = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&client.stdout) + String::from_utf8_lossy(&client.stderr);
    assert!(
        text.contains("read failed"),
        "the client's connection was closed: {text}"
    );
    assert_same(
        &read_export(&room, &room.nbd_uri("pc-1")),
        &golden(),
        "pc-1 after reset",
    );
    let s: serde_json::Value =
        serde_json::from_str(&room.cowctl(&["status", "--json", "pc-1"])).unwrap();
    assert_eq!(
        s[0]["used_sectors"], 128,
        "header and area 0 of a fresh COW"
    );
    assert!(
        !room.path("cow/pc-1.cow.discard").exists(),
        "the old COW is freed"
    );

    // down one PC: it is no longer offered; down all: the service exits, COWs stay.
    let out = room.cowctl(&["down", "pc-2"]);
    assert!(
        out.contains("stop serving pc-2 (its COW stays)") && out.contains("COW files are kept"),
        "{out}"
    );
    let list = run("nbdinfo", &["--list", "--json", &room.nbd_uri("")]);
    assert!(!list.contains("\"pc-2\""), "{list}");
    let pid = room.serve_pid();
    room.cowctl(&["down"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}/status")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            s.contains("zombie")
        },
        "the service exits after down"
    );
    let s: serde_json::Value = serde_json::from_str(&room.cowctl(&["status", "--json"])).unwrap();
    assert_eq!(s[1]["state"], "not_applied");
    assert!(room.path("cow/pc-2.cow").exists());
    // Offline, reset punches the COW file in place.
    assert!(room
        .cowctl(&["reset", "pc-2"])
        .contains("not applied: COW file reset"));
}

#[test]
fn a_killed_service_keeps_every_write_flushed_before_it_died() {
    let room = room();
    room.cowctl(&["apply"]);
    let uri = room.nbd_uri("pc-1");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x11 0 6M", "-c", "flush", &uri],
    );
    // Unflushed writes in flight, then SIGKILL.
    let mut writer = common::spawn_qemu_io_writer(&uri, &[0x22, 0x33, 0x44], 30, "8M", "16M");
    std::thread::sleep(Duration::from_millis(150));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(room.serve_pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = writer.wait();

    // The COW still loads, and a restarted service serves every flushed byte.
    let inspect: serde_json::Value = serde_json::from_str(&room.cowctl(&[
        "cow",
        "inspect",
        "--json",
        room.path("cow/pc-1.cow").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(inspect["valid"], true, "{inspect}");
    let out = room.cowctl(&["apply"]);
    assert!(out.contains("started cowctl serve"), "{out}");
    let disk = read_export(&room, &uri);
    assert!(
        disk[..6 << 20].iter().all(|&b| b == 0x11),
        "flushed writes survive"
    );
    // Unflushed writes may or may not have survived, chunk by chunk; nothing else changed.
    for (i, (&got, &gold)) in disk.iter().zip(&golden()).enumerate().skip(6 << 20) {
        let in_flight = (8 << 20..24 << 20).contains(&i) && [0x22, 0x33, 0x44].contains(&got);
        assert!(
            got == gold || in_flight,
            "byte {i} is {got}, neither golden nor written"
        );
    }
}

#[test]
fn apply_follows_manifest_changes_on_a_running_service() {
    let room = room();
    room.cowctl(&["apply"]);
    let manifest = room.path("room.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    // pc-2 becomes read-only, pc-ro leaves the manifest, pc-3 joins.
    let changed = text.replace(
        "  - name: pc-{1..2}\n  - name: pc-ro\n    read_only: true\n",
        "  - name: pc-1\n  - name: pc-2\n    read_only: true\n  - name: pc-3\n",
    );
    assert_ne!(changed, text);
    std::fs::write(&manifest, changed).unwrap();
    let plan = room.cowctl(&["plan"]);
    for want in [
        "re-open pc-2: its manifest entry changed (drops its connections)",
        "serve pc-3 over NBD",
        "stop serving pc-ro (its COW stays)",
    ] {
        assert!(plan.contains(want), "missing {want:?} in {plan}");
    }
    assert!(!plan.contains("pc-1"), "{plan}");
    room.cowctl(&["apply"]);
    let info: serde_json::Value =
        serde_json::from_str(&run("nbdinfo", &["--json", &room.nbd_uri("pc-2")])).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], true);
    let list = run("nbdinfo", &["--list", "--json", &room.nbd_uri("")]);
    assert!(
        list.contains("\"pc-3\"") && !list.contains("\"pc-ro\""),
        "{list}"
    );
    assert!(room.cowctl(&["plan"]).contains("nothing to do"));
    // A manifest that moves the NBD address needs a restart, and says so.
    let moved = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(&format!("127.0.0.1:{}", room.nbd_port()), "127.0.0.1:1");
    std::fs::write(&manifest, moved).unwrap();
    let out = room.output(&["apply"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restart cowctl serve to listen there"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_the_ip_acl_a_pc_reaches_only_its_own_export_over_tcp() {
    let room = room();
    let manifest = room.path("room.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "  - name: pc-{1..2}\n",
        "  - name: pc-1\n    ip: 127.0.0.1\n  - name: pc-2\n    ip: 10.9.9.9\n",
    ) + "";
    let text = text.replace("nbd:\n", "nbd:\n  acl: ip\n");
    std::fs::write(&manifest, text).unwrap();
    room.cowctl(&["apply"]);
    // From 127.0.0.1: pc-1 is there, pc-2 and pc-ro (no ip) do not exist.
    run("nbdinfo", &["--size", &room.nbd_uri("pc-1")]);
    let out = Command::new("nbdinfo")
        .args(["--size", &room.nbd_uri("pc-2")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no export named 'pc-2'"), "{err}");
    let list = run("nbdinfo", &["--list", "--json", &room.nbd_uri("")]);
    assert!(
        list.contains("\"pc-1\"") && !list.contains("\"pc-2\"") && !list.contains("\"pc-ro\""),
        "{list}"
    );
    // The unix socket is root's: every export.
    run("nbdinfo", &["--size", &unix_uri(&room, "pc-2")]);
}

/// `down` of the whole room returns only once the service has exited, so a script's
/// `cowctl down && cowctl apply` (or another program) finds the ports free at once.
#[test]
fn down_returns_once_the_service_has_let_go_of_its_ports() {
    let room = room();
    for round in 0..5 {
        room.cowctl(&["apply"]);
        let pid = room.serve_pid();
        room.cowctl(&["down"]);
        let gone = cowctl::service::control::has_exited(pid);
        let bound = std::net::TcpListener::bind(("127.0.0.1", room.nbd_port()));
        assert!(
            gone && bound.is_ok(),
            "round {round}: after down the service (pid {pid}) is gone: {gone}; port {} free: {bound:?}",
            room.nbd_port()
        );
    }
}

/// A COW file cut short or removed under a served PC is named in `status` (exit 2, a note
/// that says what happened and what to do), and the service carries on serving the others.
#[test]
fn a_cow_cut_or_removed_while_served_is_reported_and_the_others_carry_on() {
    let room = room();
    room.cowctl(&["apply"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(room.path("cow/pc-1.cow"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    std::fs::remove_file(room.path("cow/pc-2.cow")).unwrap();
    let out = room.output(&["--json", "status"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let notes = |pc: &str| {
        let row = rows.iter().find(|r| r["name"] == pc).unwrap();
        (row["warn"].as_bool().unwrap(), row["notes"].to_string())
    };
    let (warn, n) = notes("pc-1");
    assert!(
        warn && n.contains("was cut to 4096 bytes while it is served"),
        "{n}"
    );
    let (warn, n) = notes("pc-2");
    assert!(warn && n.contains("was removed while it is served"), "{n}");
    let (warn, n) = notes("pc-ro");
    assert!(!warn && !n.contains("while it is served"), "{n}");
    // The service still answers and serves: pc-ro reads the golden image.
    let read = read_export(&room, &room.nbd_uri("pc-ro"));
    assert_same(
        &read[..GOLDEN],
        &golden(),
        "pc-ro after the others' COWs went",
    );
    assert!(room.cowctl(&["status", "pc-ro"]).contains("pc-ro"));
}
