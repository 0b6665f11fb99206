//! The userspace iSCSI target with real initiators on loopback: qemu's iSCSI driver
//! (qemu-io, qemu-img) and libiscsi's tools (iscsi-ls, iscsi-inq, iscsi-perf). Each PC's
//! ACL and CHAP secret as on the kernel backend, discovery showing an initiator only its
//! own target, status listing who is logged in, a reset under a logged-in initiator that
//! comes back to the golden image, down logging everyone out, and the caps on connections
//! and on the time a login may take; a name sent to forge a line in the service's log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::room::{Golden, Iscsi, Pc, Room, RoomBuilder};

const MASTER: &str = "master-secret-of-the-room";
const INIT1: &str = "iqn.2024-01.lan.pc:pc-1";
const INIT2: &str = "iqn.2024-01.lan.pc:pc-2";

/// Two PCs, each with its initiator ACL and CHAP; a golden image of 0x11 bytes.
fn two_pcs(acl: &str) -> Room {
    let room = RoomBuilder::userspace()
        .golden(Golden::Fill(0x11, 16 << 20))
        .cow("32MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.test")
                .acl(acl)
                .chap("lab", MASTER),
        )
        .pc(Pc::new("pc-{1..2}").initiator("iqn.2024-01.lan.pc:{name}"))
        .build();
    room.cowctl(&["apply"]);
    room
}

fn target(pc: &str) -> String {
    format!("iqn.2024-01.lan.test:{pc}")
}

/// qemu's iSCSI driver options for `pc`'s disk as `initiator` with `secret`.
fn qemu(
    room: &Room,
    pc: &str,
    initiator: &str,
    secret: &str,
    tool: &str,
    args: &[&str],
) -> std::process::Output {
    let opts = format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun=0,initiator-name={initiator},user=lab,password-secret=s0",
        room.iscsi_port(),
        target(pc)
    );
    Command::new(tool)
        .args(args)
        .args([
            "--object",
            &format!("secret,id=s0,data={secret}"),
            "--image-opts",
            &opts,
        ])
        .output()
        .unwrap()
}

fn url(room: &Room, pc: &str, secret: &str) -> String {
    format!(
        "iscsi://lab%{secret}@127.0.0.1:{}/{}/0",
        room.iscsi_port(),
        target(pc)
    )
}

fn initiators(room: &Room, pc: &str) -> Vec<String> {
    let rows: serde_json::Value =
        serde_json::from_str(&room.cowctl(&["--json", "status", pc])).unwrap();
    rows[0]["initiators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn secret(pc: &str) -> String {
    cowctl::manifest::secrets::derive(MASTER, "initiator", pc)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iscsi_perf(url: &str, initiator: &str) -> Child {
    Command::new("iscsi-perf")
        .args([
            "-i", initiator, "-m", "4", "-b", "8", "-r", "-x", "1000", url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn qemu_writes_and_reads_a_pc_disk_with_its_own_initiator_name_and_secret() {
    let room = two_pcs("initiator");
    let out = qemu(
        &room,
        "pc-1",
        INIT1,
        &secret("pc-1"),
        "qemu-io",
        &[
            "-c",
            "write -P 0x5a 1M 64k",
            "-c",
            "read -P 0x5a 1M 64k",
            "-c",
            "read -P 0x11 0 1M",
        ],
    );
    ok(&out);
    let info = ok(&qemu(
        &room,
        "pc-1",
        INIT1,
        &secret("pc-1"),
        "qemu-img",
        &["info"],
    ));
    assert!(info.contains("virtual size: 16 MiB"), "{info}");
    // The other PC's secret, the master secret, or another initiator name: refused.
    for (init, s, why) in [
        (INIT1, secret("pc-2"), "pc-2's secret"),
        (INIT1, MASTER.to_string(), "the master secret"),
        (INIT2, secret("pc-2"), "pc-2's initiator"),
    ] {
        let out = qemu(&room, "pc-1", init, &s, "qemu-img", &["info"]);
        assert!(!out.status.success(), "{why} opened pc-1's disk");
    }
    // pc-2's disk never saw pc-1's write.
    ok(&qemu(
        &room,
        "pc-2",
        INIT2,
        &secret("pc-2"),
        "qemu-io",
        &["-c", "read -P 0x11 1M 64k"],
    ));
}

#[test]
fn discovery_shows_an_initiator_only_the_targets_it_may_log_into() {
    let room = two_pcs("initiator");
    let ls = |init: &str| {
        let out = Command::new("iscsi-ls")
            .args([
                "-i",
                init,
                &format!("iscsi://127.0.0.1:{}", room.iscsi_port()),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pc1 = ls(INIT1);
    assert!(
        pc1.contains("Target:iqn.2024-01.lan.test:pc-1 Portal:127.0.0.1:"),
        "{pc1}"
    );
    assert!(!pc1.contains("pc-2"), "pc-1 sees pc-2's target: {pc1}");
    assert!(!ls("iqn.2024-01.lan.evil:stranger").contains("Target:"));
    let open = two_pcs("open");
    let out = Command::new("iscsi-ls")
        .args([
            "-i",
            "iqn.2024-01.lan.any:one",
            &format!("iscsi://127.0.0.1:{}", open.iscsi_port()),
        ])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(
        all.contains("pc-1") && all.contains("pc-2"),
        "open mode shows every target: {all}"
    );
}

#[test]
fn a_reset_under_a_logged_in_initiator_brings_it_back_to_the_golden_disk_and_down_logs_it_out() {
    let room = two_pcs("initiator");
    ok(&qemu(
        &room,
        "pc-1",
        INIT1,
        &secret("pc-1"),
        "qemu-io",
        &["-c", "write -P 0x22 0 1M"],
    ));
    let mut perf = iscsi_perf(&url(&room, "pc-1", &secret("pc-1")), INIT1);
    wait_for("status to list the initiator", || {
        initiators(&room, "pc-1")
            .iter()
            .any(|i| i.starts_with(&format!("{INIT1} (127.0.0.1:")))
    });
    let out = room.cowctl(&["reset", "pc-1"]);
    assert!(
        out.contains("iSCSI sessions and NBD connections closed"),
        "{out}"
    );
    wait_for("the initiator to log in again", || {
        !initiators(&room, "pc-1").is_empty()
    });
    assert!(
        perf.try_wait().unwrap().is_none(),
        "iscsi-perf survived the reset by logging in again"
    );
    ok(&qemu(
        &room,
        "pc-1",
        INIT1,
        &secret("pc-1"),
        "qemu-io",
        &["-c", "read -P 0x11 0 1M"],
    ));
    room.cowctl(&["down", "pc-1"]);
    assert!(
        initiators(&room, "pc-1").is_empty(),
        "down logs everyone out"
    );
    let refused = qemu(&room, "pc-1", INIT1, &secret("pc-1"), "qemu-img", &["info"]);
    assert!(
        !refused.status.success(),
        "pc-1's disk is not served after down"
    );
    let _ = perf.kill();
    let _ = perf.wait();
}

#[test]
fn connections_are_capped_per_address_and_a_login_must_finish_in_time() {
    let room = two_pcs("initiator");
    let addr = format!("127.0.0.1:{}", room.iscsi_port());
    // The cap per address on connections waiting to log in: the next one is closed at once.
    let idle: Vec<TcpStream> = (0..cowctl::service::limits::WAITING_PER_ADDRESS)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        extra.read(&mut buf).unwrap_or(1),
        0,
        "the connection over the cap was closed"
    );
    // Silent connections are dropped once the login deadline has passed.
    let start = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(
            s.read(&mut buf).unwrap_or(1),
            0,
            "an idle login was dropped"
        );
    }
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "dropped after the 15 s login deadline, not later ({waited:?})"
    );
    // With the places given back, a PC logs in again.
    ok(&qemu(
        &room,
        "pc-1",
        INIT1,
        &secret("pc-1"),
        "qemu-img",
        &["info"],
    ));
}

#[test]
fn a_newline_in_an_initiator_name_forges_no_line_in_the_log() {
    let room = two_pcs("initiator");
    let forged = "2024-01-01T00:00:00.000000Z  INFO cowctl: iSCSI: FORGED logged in with CHAP";
    let name = format!("iqn.2024-01.lan.evil:x\n{forged}\r\x1b[2K");
    let mut s = TcpStream::connect(("127.0.0.1", room.iscsi_port())).unwrap();
    let keys = common::iscsi::keys(&[
        ("InitiatorName", &name),
        ("TargetName", &target("pc-1")),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP,None"),
    ]);
    s.write_all(&common::iscsi::login(0, 1, true, 1, &keys))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 48];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0] & 0x3f, 0x23, "a Login Response");
    assert_ne!(reply[36], 0, "the stranger is refused");
    drop(s);
    let log = || std::fs::read_to_string(room.dir.path().join("run/serve.log")).unwrap();
    wait_for("the refusal in the log", || log().contains("lan.evil"));
    let log = log();
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("lan.evil")),
        "a line of the sender's making:\n{log}"
    );
    assert!(
        log.contains(&format!("iqn.2024-01.lan.evil:x\\n{forged}\\r\\x1b[2K")),
        "the name, written out on its line:\n{log}"
    );
}
