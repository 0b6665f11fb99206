//! A planned restart of `cowctl serve` (SIGHUP, what `systemctl reload cowctl` sends): the
//! binary on disk takes every listening socket and iSCSI session over in the same process.
//! libiscsi initiators (scripts/bench/hold.c, with libiscsi's own reconnect turned off, so a
//! broken connection fails a command) write, SYNCHRONIZE CACHE and read back all the while:
//! no command may fail and every read must return what was written.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::iscsi::rw10;
use common::room::{Golden, Http, Iscsi, Pc, Room, RoomBuilder};

const PREFIX: &str = "iqn.2024-01.lan.upgrade";

/// scripts/bench/hold.c, compiled once per test process.
fn hold_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = repo.join("target/hold");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("hold-{}", std::process::id()));
        let gcc = Command::new("gcc")
            .args(["-O2", "-Wall", "-pthread", "-o"])
            .arg(&out)
            .arg(repo.join("scripts/bench/hold.c"))
            .arg("-liscsi")
            .output()
            .unwrap();
        assert!(
            gcc.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&gcc.stderr)
        );
        out
    })
}

fn room(pcs: usize) -> Room {
    let mut b = RoomBuilder::userspace()
        // Big enough that most writes are first writes, which make new exceptions.
        .golden(Golden::Sparse(1 << 30))
        .cow("1GiB", "4KiB")
        .nbd()
        .http(Http::new())
        .iscsi(Iscsi::new(PREFIX).acl("open"));
    for i in 1..=pcs {
        b = b.pc(Pc::new(&format!("pc-{i:03}")));
    }
    b.build()
}

/// `hold` for `pcs` PCs and `seconds`, started once every PC has logged in.
fn hold(room: &Room, pcs: usize, seconds: u32) -> Child {
    let ready = room.path("ready");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(hold_binary())
        .arg(format!(
            "iscsi://127.0.0.1:{}/{PREFIX}:pc-",
            room.iscsi_port()
        ))
        .args(["1", &pcs.to_string(), "0", &seconds.to_string()])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < until, "the initiators did not log in");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// What hold printed: rounds, failed commands, read-backs that differed, the longest round.
fn held(child: Child) -> (u64, u64, u64, f64, String) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 4, "hold printed: {all}");
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        all,
    )
}

/// A JSON page of the admin listener.
fn api(room: &Room, path: &str) -> serde_json::Value {
    let r = common::http::get("127.0.0.1", room.admin(), path);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn sighup(room: &Room) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(room.serve_pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// Waits until serve's log holds `what` `count` times.
fn wait_for_log(room: &Room, what: &str, count: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while room.log_so_far().matches(what).count() < count {
        assert!(
            Instant::now() < until,
            "no {what:?} in serve's log:\n{}",
            room.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The binary a process runs, as (device, inode).
fn exe_of(pid: i32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (m.dev(), m.ino())
}

fn file_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// Puts a fresh copy of cowctl at `path` the way a package upgrade does: a new file renamed
/// over the old one, which the running process keeps.
fn install_binary(path: &Path) {
    let new = path.with_extension("new");
    std::fs::copy(env!("CARGO_BIN_EXE_cowctl"), &new).unwrap();
    std::fs::rename(&new, path).unwrap();
}

#[test]
fn a_planned_restart_runs_the_new_binary_with_every_session_and_no_write_lost() {
    const PCS: usize = 4;
    // One PC more than the initiators: its reset makes an event for the dashboard's feed.
    let room = room(PCS + 1);
    // The service runs from a copy of cowctl, so the test can upgrade it.
    let bin = room.path("bin/cowctl");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    install_binary(&bin);
    let apply = room.command(&["apply"]);
    let apply = Command::new(&bin)
        .args(apply.get_args())
        .envs(apply.get_envs().filter_map(|(k, v)| Some((k, v?))))
        // The dashboard's fill history sampled every 200 ms, so it has some to hand over.
        .env("COWCTL_HISTORY_INTERVAL_MS", "200")
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let pid = room.serve_pid();
    assert_eq!(exe_of(pid), file_id(&bin));

    // The watcher's first look at the room takes seconds: the events come before the
    // initiators start, so the restarts fall inside their run.
    room.cowctl(&["reset", "pc-005"]);
    let until = Instant::now() + Duration::from_secs(10);
    while api(&room, "/api/events")
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(Instant::now() < until, "no event for the reset");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = hold(&room, PCS, 6);
    std::thread::sleep(Duration::from_secs(1));
    let (events, history) = (api(&room, "/api/events"), api(&room, "/api/history"));
    assert!(
        history["pc-001"].as_array().is_some_and(|h| h.len() >= 2),
        "{history}"
    );
    install_binary(&bin);
    assert_ne!(
        exe_of(pid),
        file_id(&bin),
        "the running binary was replaced"
    );
    sighup(&room);
    wait_for_log(
        &room,
        &format!("handover: took over {PCS} iSCSI sessions"),
        1,
    );
    assert_eq!(room.serve_pid(), pid, "the same process serves on");
    assert_eq!(exe_of(pid), file_id(&bin), "it runs the new binary");
    // A second restart hands over what the first one took.
    std::thread::sleep(Duration::from_secs(1));
    sighup(&room);
    wait_for_log(
        &room,
        &format!("handover: took over {PCS} iSCSI sessions"),
        2,
    );

    let (rounds, errors, differ, longest, out) = held(client);
    assert_eq!(
        (errors, differ),
        (0, 0),
        "{out}\nserve log:\n{}",
        room.log_so_far()
    );
    assert!(rounds > 100, "{out}");
    println!(
        "{PCS} initiators through two planned restarts: {rounds} rounds, longest {longest} ms"
    );

    // The dashboard kept its events (same ids) and its fill history.
    let events_after = api(&room, "/api/events");
    let kept = |e: &serde_json::Value| events_after.as_array().unwrap().contains(e);
    assert!(
        !events.as_array().unwrap().is_empty() && events.as_array().unwrap().iter().all(kept),
        "{events}\nafter the restarts:\n{events_after}"
    );
    let history_after = api(&room, "/api/history");
    assert_eq!(
        history_after["pc-001"][0], history["pc-001"][0],
        "the oldest sample is still there"
    );
    // Every other socket was handed over too: control (status), NBD and HTTP answer.
    let status = room.status();
    assert_eq!(status.as_array().map(Vec::len), Some(PCS + 1), "{status}");
    assert!(room.nbd_write_mib("pc-001", 1, 1), "NBD after the restart");
    let reply = common::http::get("127.0.0.1", room.admin(), "/metrics");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn a_restart_whose_manifest_does_not_load_is_refused_and_the_room_is_served_on() {
    let room = room(2);
    room.cowctl(&["apply"]);
    let client = hold(&room, 2, 3);
    let good = std::fs::read_to_string(&room.manifest).unwrap();
    std::fs::write(&room.manifest, "pcs: [\n").unwrap();
    sighup(&room);
    wait_for_log(&room, "handover refused, serving on", 1);
    std::fs::write(&room.manifest, good).unwrap();
    let (_, errors, differ, _, out) = held(client);
    assert_eq!((errors, differ), (0, 0), "{out}");
    let log = room.log_so_far();
    assert!(
        log.contains("does not load") && !log.contains("took over"),
        "{log}"
    );
}

/// One iSCSI session driven by hand over TCP, so the test picks the moment of the restart.
struct Session {
    stream: std::net::TcpStream,
    reader: cowctl::iscsi::reader::PduReader<std::net::TcpStream>,
    cmd_sn: u32,
    stat_sn: Option<u32>,
}

impl Session {
    fn login(room: &Room, pc: &str) -> Session {
        use common::iscsi::{keys, login};
        let stream = std::net::TcpStream::connect(("127.0.0.1", room.iscsi_port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = cowctl::iscsi::reader::PduReader::new(stream.try_clone().unwrap(), 1 << 20);
        let mut s = Session {
            stream,
            reader,
            cmd_sn: 0,
            stat_sn: None,
        };
        let target = format!("{PREFIX}:{pc}");
        let text = keys(&[
            ("InitiatorName", "iqn.2024-01.lan.upgrade:by-hand"),
            ("TargetName", &target),
            ("SessionType", "Normal"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
        ]);
        let reply = s.send(&login(1, 3, true, 1, &text));
        assert_eq!(reply.bhs.0[36..38], [0, 0], "the login succeeds");
        s
    }

    /// Sends one PDU and returns the response that carries a status (after any Data-In).
    fn send(&mut self, pdu: &[u8]) -> common::iscsi::Reply {
        use std::io::Write;
        self.stream.write_all(pdu).unwrap();
        let mut data = Vec::new();
        loop {
            let p = self.reader.read_pdu().unwrap();
            data.extend_from_slice(p.data);
            let has_status = p.bhs.opcode_byte() != 0x25 || p.bhs.0[1] & 0x01 != 0;
            if has_status {
                let stat_sn = p.bhs.u32_at(24);
                if let Some(before) = self.stat_sn {
                    assert_eq!(stat_sn, before.wrapping_add(1), "StatSN goes on by one");
                }
                self.stat_sn = Some(stat_sn);
                return common::iscsi::Reply { bhs: p.bhs, data };
            }
        }
    }

    fn command(
        &mut self,
        cdb: &[u8],
        expected: u32,
        read: bool,
        data: &[u8],
    ) -> common::iscsi::Reply {
        // The login carried CmdSN 1 without taking it: the first command's is 1 too.
        self.cmd_sn += 1;
        let itt = self.cmd_sn;
        let pdu = common::iscsi::command(
            itt,
            self.cmd_sn,
            cdb,
            expected,
            read,
            !read && expected > 0,
            data,
        );
        let reply = self.send(&pdu);
        assert_eq!(reply.itt(), itt);
        assert_eq!(reply.status(), 0, "GOOD status");
        reply
    }
}

/// A write acknowledged just before the restart, with no SYNCHRONIZE CACHE yet (the disk
/// has a write cache: its exception may still be only in the old process's memory), is
/// read back after it; the session goes on with the next StatSN and CmdSN.
#[test]
fn a_write_acknowledged_before_a_restart_is_read_back_after_it_in_the_same_session() {
    let room = room(1);
    room.cowctl(&["apply"]);
    let mut s = Session::login(&room, "pc-001");
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    s.command(&rw10(0x2a, 800, 8), 4096, false, &data);
    sighup(&room);
    wait_for_log(&room, "handover: took over 1 iSCSI sessions", 1);
    let back = s.command(&rw10(0x28, 800, 8), 4096, true, &[]);
    assert!(back.data == data, "the write is there after the restart");
    // And a SYNCHRONIZE CACHE in the new process, then the data again.
    s.command(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, false, &[]);
    let again = s.command(&rw10(0x28, 800, 8), 4096, true, &[]);
    assert!(again.data == data);
}

/// On the kernel backend `cowctl serve` runs only HTTP and auto-extend (the kernel serves
/// the disks); a planned restart hands its HTTP listeners over: same process, same ports.
#[test]
fn a_planned_restart_of_the_kernel_backends_serve_keeps_its_http_listeners() {
    let room = RoomBuilder::kernel()
        .http(Http::new())
        .iscsi(Iscsi::new(PREFIX).acl("open"))
        .pc(Pc::new("pc-01"))
        .build();
    let log = room.path("serve-kernel.log");
    let mut serve = room
        .command(&["serve"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(room.path("serve-kernel.err")).unwrap())
        .spawn()
        .unwrap();
    let read_log = || {
        std::fs::read_to_string(room.path("serve-kernel.err")).unwrap_or_default()
            + &std::fs::read_to_string(&log).unwrap_or_default()
    };
    let until = Instant::now() + Duration::from_secs(20);
    while !read_log().contains("watching the kernel's snapshots") {
        assert!(
            Instant::now() < until,
            "serve did not start:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = common::http::get("127.0.0.1", room.admin(), "/metrics").status;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(serve.id()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    while !read_log().contains("took over the HTTP listeners") {
        assert!(Instant::now() < until, "no handover:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        serve.try_wait().unwrap().is_none(),
        "the same process serves on"
    );
    let after = common::http::get("127.0.0.1", room.admin(), "/metrics").status;
    assert_eq!(after, before, "{}", read_log());
    let _ = serve.kill();
    let _ = serve.wait();
}

/// qemu-io as an NBD client on `uri`: writes, then sleeps through the restart, then reads
/// its writes back, writes, flushes and reads again on the same connection.
fn qemu_io_across(uri: &str, at_mib: u64) -> Child {
    let (a, b) = (format!("{at_mib}M"), format!("{}M", at_mib + 1));
    Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", &format!("write -P 0x5a {a} 1M")])
        .args(["-c", "sleep 3000"])
        .args(["-c", &format!("read -P 0x5a {a} 1M")])
        .args(["-c", &format!("write -P 0xa5 {b} 1M")])
        .args(["-c", "flush"])
        .args(["-c", &format!("read -P 0xa5 {b} 1M")])
        .arg(uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// NBD connections (TCP and the unix socket) are handed over between two requests: qemu-io,
/// which has no reconnect unless asked, goes on through the restart on the same connection.
#[test]
fn nbd_clients_go_on_through_a_planned_restart_on_the_same_connection() {
    let room = room(2);
    room.cowctl(&["apply"]);
    let socket = room.path("nbd.sock");
    let tcp = qemu_io_across(&room.nbd_uri("pc-001"), 2);
    let unix = qemu_io_across(
        &format!("nbd+unix:///pc-002?socket={}", socket.display()),
        4,
    );
    wait_for_log(&room, "connected to pc-002", 1);
    wait_for_log(&room, "connected to pc-001", 1);
    std::thread::sleep(Duration::from_millis(500));
    sighup(&room);
    wait_for_log(&room, "and 2 NBD connections", 1);
    for (what, child) in [("TCP", tcp), ("unix", unix)] {
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success()
                && !text.contains("failed")
                && text.matches("read 1048576/1048576").count() == 2,
            "qemu-io over {what}:\n{text}\nserve log:\n{}",
            room.log_so_far()
        );
    }
    let log = room.log_so_far();
    assert!(
        log.contains("handover: took over 0 iSCSI sessions and 2 NBD connections"),
        "{log}"
    );
    assert_eq!(log.matches("connected to pc-00").count(), 4, "{log}");
}

/// Every socket `pid` holds is close-on-exec (none leaks into a program it starts).
fn sockets_close_on_exec(pid: i32) -> Vec<String> {
    let mut leaking = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let fd = e.file_name().to_string_lossy().to_string();
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & 0o2_000_000 == 0 {
            leaking.push(format!("fd {fd} ({})", target.display()));
        }
    }
    leaking
}

/// A session that does not stand still (a CmdSN it skipped never came) is cut when the
/// handover has waited 5 s, before the disks' last flush: the write it had acknowledged is
/// there after the restart. The new process's sockets are all close-on-exec.
#[test]
fn a_session_that_never_stands_still_is_cut_and_its_acknowledged_write_kept() {
    let room = room(1);
    room.cowctl(&["apply"]);
    let mut s = Session::login(&room, "pc-001");
    // CmdSN 2 where 1 is due: inside the window, so it is done, but the gap stays open.
    s.cmd_sn = 1;
    let data = vec![0x6bu8; 4096];
    s.command(&rw10(0x2a, 96, 8), 4096, false, &data);
    sighup(&room);
    wait_for_log(&room, "handover: took over", 1);
    let log = room.log_so_far();
    assert!(log.contains("(1 did not within 5 s and are cut)"), "{log}");
    // The cut connection is closed.
    let mut byte = [0u8; 1];
    let closed = std::io::Read::read(&mut s.stream, &mut byte);
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x6b 48k 4k"])
        .arg(room.nbd_uri("pc-001"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("fail") && text.contains("read 4096/4096"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sockets_close_on_exec(room.serve_pid()),
        Vec::<String>::new()
    );
}
