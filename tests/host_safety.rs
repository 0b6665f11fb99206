//! The security review's probes (issue 11) as regression tests, each run the way it was
//! found: with the cowctl binary, as a careful admin's typo or a hostile client on the
//! room's LAN would. The kernel-side probes (resets from the live table, interrupted
//! resets) are in tests/host_control_plan.rs on the recording fake.

#![allow(clippy::cast_possible_truncation)] // tests build small byte streams

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::http::{get, request};
use common::room::{Golden, Http, Pc, Room, RoomBuilder};

fn cowctl(dir: &Path, args: &[&str]) -> Output {
    common::room_command(dir, args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A userspace room: one NBD PC, the HTTP service with a token.
fn builder() -> RoomBuilder {
    RoomBuilder::userspace()
        .golden(Golden::Fill(0x33, 4 << 20))
        .cow("8MiB", "4KiB")
        .export("nbd")
        .http(Http::new().token("room-admin-token-0123456789"))
        .pc(Pc::new("pc-1").ip("127.0.0.1").flag("self_reset"))
}

/// The room of [`builder`] with its admin listener on `host`, applied.
fn room_with_admin(host: &str) -> Room {
    let room = builder()
        .http(Http::new().admin(host).token("room-admin-token-0123456789"))
        .build();
    let out = room.output(&["apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    room
}

fn room() -> Room {
    room_with_admin("127.0.0.1")
}

/// The manifest of [`builder`]'s room in `d` with these listeners and more PCs (as
/// written), for the tests that edit it.
fn text(d: &Path, nbd: u16, http: u16, admin: &str, extra_pc: &str) -> String {
    builder()
        .nbd_at(&format!("127.0.0.1:{nbd}"), Some("nbd.sock"))
        .http(
            Http::new()
                .listen(&format!("127.0.0.1:{http}"))
                .admin(admin)
                .token("room-admin-token-0123456789"),
        )
        .text_for(d)
        + extra_pc
}

/// (resident KiB, threads) of the service.
fn footprint(room: &Room) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{}/status", room.serve_pid())).unwrap();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("Threads:"))
}

/// A manifest for `validate` only: `cow` for pc-1, and a second PC on `cow2`.
fn validate(dir: &Path, cow: &str, cow2: &str) -> Output {
    let d = dir.display();
    std::fs::write(
        dir.join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
             defaults:\n  image: g\n  cow_size: 8MiB\n  export: nbd\n\
             pcs:\n  - name: pc-1\n    cow: {cow}\n  - name: pc-2\n    cow: {cow2}\n"
        ),
    )
    .unwrap();
    cowctl(dir, &["validate"])
}

#[test]
fn a_cow_is_never_the_golden_image_or_another_file_cowctl_owns_however_it_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("golden.img"), vec![1u8; 1 << 20]).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::os::unix::fs::symlink(d.join("golden.img"), d.join("link.img")).unwrap();
    std::fs::hard_link(d.join("golden.img"), d.join("hard.img")).unwrap();
    let good = format!("{}/sub/pc-2.cow", d.display());
    for (cow, what) in [
        (format!("{}/golden.img", d.display()), "golden image"),
        (
            format!("{}//sub/../golden.img", d.display()),
            "golden image",
        ),
        (format!("{}/link.img", d.display()), "golden image"),
        (format!("{}/hard.img", d.display()), "golden image"),
        (format!("{}/sub/./pc-2.cow", d.display()), "pc-1's COW"),
        (
            format!("{}/sub/pc-2.cow.golden", d.display()),
            "pc-2's golden-image record",
        ),
        (
            format!("{}/sub/pc-2.cow.cloning", d.display()),
            "the clone a reset of pc-2 makes",
        ),
    ] {
        let out = validate(d, &cow, &good);
        assert!(!out.status.success(), "{cow} validated");
        let e = stderr(&out);
        assert!(e.contains(&format!("is {what}")), "{cow}: {e}");
        assert!(
            e.contains("pcs[0].cow") || e.contains("pcs[1].cow"),
            "names the field: {e}"
        );
    }
    assert!(validate(d, &format!("{}/sub/pc-1.cow", d.display()), &good)
        .status
        .success());
    assert_eq!(
        std::fs::read(d.join("golden.img")).unwrap(),
        vec![1u8; 1 << 20]
    );
}

#[test]
fn a_file_that_is_not_a_cow_is_never_written_or_reset_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A disk image whose first bytes are zero, with data further on: what `cow reset`
    // once punched out.
    let image = d.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[300_000..300_004].copy_from_slice(b"data");
    std::fs::write(&image, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cowctl"))
        .args(["cow", "reset", image.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a COW file: it looks like a file whose first bytes are zero but which holds data at byte 300000"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&image).unwrap(),
        bytes,
        "nothing was punched out"
    );
    // An MBR disk as a PC's COW: apply refuses before writing a header into it.
    let mut mbr = vec![0u8; 1 << 20];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr[0] = 0xeb;
    std::fs::write(d.join("golden.img"), vec![2u8; 1 << 20]).unwrap();
    std::fs::write(d.join("windows.img"), &mbr).unwrap();
    let dd = d.display();
    std::fs::write(
        d.join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {dd}/golden.img\n\
             defaults:\n  image: g\n  cow_size: 8MiB\n  export: nbd\n\
             nbd:\n  listen: 127.0.0.1:{}\n  socket: {dd}/nbd.sock\n\
             pcs:\n  - name: pc-1\n    cow: {dd}/windows.img\n",
            common::free_port()
        ),
    )
    .unwrap();
    let out = cowctl(d, &["apply"]);
    let _ = cowctl(d, &["down"]);
    assert!(!out.status.success(), "applied over a disk image");
    assert!(
        stderr(&out).contains(
            "windows.img is not a COW file: it looks like a disk image with a boot sector (MBR)"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(d.join("windows.img")).unwrap(), mbr);
}

#[test]
fn a_cow_with_data_but_no_golden_record_is_reported_then_recorded_on_request() {
    let room = room();
    let cow = room.dir.path().join("cow/pc-1.cow");
    common::spawn_qemu_io_writer(
        &format!("nbd://{}/pc-1", room.nbd()),
        &[0x44],
        1,
        "0",
        "64k",
    )
    .wait()
    .unwrap();
    let out = cowctl(room.dir.path(), &["down"]);
    assert!(out.status.success());
    std::fs::remove_file(room.dir.path().join("cow/pc-1.cow.golden")).unwrap();
    let out = cowctl(room.dir.path(), &["apply"]);
    assert!(
        !out.status.success(),
        "a COW with data and no record was trusted"
    );
    assert!(
        stderr(&out).contains("has no record of the golden image"),
        "{}",
        stderr(&out)
    );
    assert!(
        !room.dir.path().join("cow/pc-1.cow.golden").exists(),
        "nothing was recorded behind the admin's back"
    );
    let golden = room.dir.path().join("golden.img");
    let out = cowctl(
        room.dir.path(),
        &[
            "cow",
            "record",
            cow.to_str().unwrap(),
            "--base",
            golden.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cowctl(room.dir.path(), &["apply"]).status.success());
}

#[test]
fn secret_and_token_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("golden.img"), vec![2u8; 1 << 20]).unwrap();
    std::fs::create_dir(d.join("cow")).unwrap();
    std::fs::write(d.join("chap.secret"), "a-shared-secret-of-the-room\n").unwrap();
    std::fs::set_permissions(
        d.join("chap.secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let dd = d.display();
    std::fs::write(
        d.join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {dd}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {dd}/cow\n  cow_size: 8MiB\n\
             iscsi:\n  iqn_prefix: iqn.2024-01.lan.t\n  portals: [127.0.0.1:{}]\n  acl: open\n\
             \x20 chap:\n    username: u\n    secret_file: {dd}/chap.secret\n\
             nbd:\n  listen: 127.0.0.1:{}\n  socket: {dd}/nbd.sock\n\
             pcs:\n  - name: pc-1\n",
            common::free_port(),
            common::free_port()
        ),
    )
    .unwrap();
    let out = cowctl(d, &["apply"]);
    let _ = cowctl(d, &["down"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is readable by others (mode 0644): run chmod 600"),
        "{}",
        stderr(&out)
    );
    // The admin token: a readable token file accepts nothing.
    let room = room();
    let token = room.dir.path().join("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = request(
        "127.0.0.1".parse().unwrap(),
        room.admin(),
        "POST",
        "/api/v1/pcs/pc-1/reset",
        &[("Authorization", "Bearer room-admin-token-0123456789")],
    );
    assert_eq!(r.status, 500, "{}", r.body);
    let log = std::fs::read_to_string(room.dir.path().join("run/serve.log")).unwrap();
    assert!(log.contains("readable by others"), "{log}");
}

#[test]
fn admin_addresses_are_kept_from_pcs_and_need_the_token_when_others_can_reach_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("golden.img"), vec![2u8; 1 << 20]).unwrap();
    for (admin, token, wanted) in [
        ("127.0.0.1:8080", true, "must differ from http.listen"),
        (
            "0.0.0.0:8081",
            false,
            "can be reached from other machines: set http.token_file",
        ),
    ] {
        let mut text = text(d, 10809, 8080, admin, "");
        if !token {
            text = text.replace(&format!("  token_file: {}/token\n", d.display()), "");
        }
        std::fs::write(d.join("room.yaml"), text).unwrap();
        let out = cowctl(d, &["validate"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(wanted), "{}", stderr(&out));
    }
    // An admin address on every interface: even reading needs the token.
    let room = room_with_admin("0.0.0.0");
    let r = get("127.0.0.1", room.admin(), "/api/v1/pcs");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = request(
        "127.0.0.1".parse().unwrap(),
        room.admin(),
        "GET",
        "/metrics",
        &[("Authorization", "Bearer room-admin-token-0123456789")],
    );
    assert_eq!(r.status, 200);
    let page = get("127.0.0.1", room.admin(), "/");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<script id=\"data\" type=\"application/json\">null</script>"),
        "the page carries no rows without the token"
    );
}

#[test]
fn other_sites_names_and_cross_site_requests_are_refused() {
    let room = room();
    let me = "127.0.0.1".parse().unwrap();
    // DNS rebinding: a page of evil.example resolving to this machine.
    let r = request(
        me,
        room.admin(),
        "GET",
        "/api/v1/pcs",
        &[("Host", "evil.example:8081")],
    );
    assert_eq!(r.status, 421, "{}", r.body);
    // A page in the PC's own browser posting its reset.
    let r = request(
        me,
        room.http(),
        "POST",
        "/api/v1/pcs/pc-1/reset",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("another web site"), "{}", r.body);
    let r = request(
        me,
        room.http(),
        "POST",
        "/api/v1/pcs/pc-1/reset",
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(r.status, 403);
    // The PC itself (curl sends no Origin) may.
    let r = request(me, room.http(), "POST", "/api/v1/pcs/pc-1/reset", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn stalled_nbd_writes_and_idle_connections_cost_the_service_next_to_nothing() {
    let room = room();
    let (rss_before, threads_before) = footprint(&room);
    // Four clients send a 32 MiB WRITE header and stall (seen: 7 MB -> 138 MB resident).
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(room.nbd()).unwrap();
        nbd_go(&mut s, "pc-1");
        let mut req = Vec::new();
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
        req.extend_from_slice(&7u64.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&(32u32 << 20).to_be_bytes());
        s.write_all(&req).unwrap();
        s.write_all(&[0u8; 4096]).unwrap();
        stalled.push(s);
    }
    // 300 idle connections (seen: 306 threads): the cap per address turns most away.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(room.nbd()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (rss, threads) = footprint(&room);
    assert!(
        rss < rss_before + 16 * 1024,
        "resident {rss_before} KiB -> {rss} KiB"
    );
    assert!(
        threads <= threads_before + 16,
        "threads {threads_before} -> {threads}"
    );
    drop(idle);
    drop(stalled);
}

/// The fixed newstyle handshake up to NBD_OPT_GO for `name`, as a client does it.
fn nbd_go(s: &mut TcpStream, name: &str) {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap(); // fixed newstyle
    let mut opt = Vec::new();
    opt.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes());
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    // Replies until NBD_REP_ACK (1).
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).unwrap();
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        if kind == 1 {
            return;
        }
        assert!(kind < 1 << 31, "GO refused");
    }
}

#[test]
fn an_nbd_handshake_must_finish_in_time_however_slowly_it_trickles() {
    let room = room();
    let mut s = TcpStream::connect(room.nbd()).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    // One byte every 5 s: each read is quick, the handshake never ends.
    let start = Instant::now();
    let closed = loop {
        if s.write_all(&[0]).is_err() {
            break true;
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => break true,
            _ if start.elapsed() > Duration::from_secs(45) => break false,
            _ => {}
        }
    };
    assert!(closed, "the trickling client was never dropped");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "dropped after {:?}",
        start.elapsed()
    );
}

#[test]
fn http_connections_are_capped_and_a_trickled_header_times_out() {
    let room = room();
    let held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(room.http()).unwrap())
        .collect();
    let mut extra = TcpStream::connect(room.http()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET /cow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = [0u8; 64];
    assert_eq!(
        extra.read(&mut buf).unwrap_or(0),
        0,
        "the 17th connection was closed unanswered"
    );
    drop(held);
    // Half a header, then nothing: closed within the header time limit.
    std::thread::sleep(Duration::from_millis(200));
    let mut slow = TcpStream::connect(room.http()).unwrap();
    slow.write_all(b"GET /cow HTTP/1.1\r\nHost: 127.0").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    let _ = slow.read(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "held for {:?}",
        start.elapsed()
    );
}

#[test]
fn a_cow_header_cannot_make_inspect_allocate_a_gigabyte() {
    let dir = tempfile::tempdir().unwrap();
    let cow = dir.path().join("huge.cow");
    // A 16-byte header with 1 GiB chunks on a sparse 4 GiB file.
    let mut h = Vec::new();
    h.extend_from_slice(&0x7041_6e53u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&(1u32 << 21).to_le_bytes());
    let f = std::fs::File::create(&cow).unwrap();
    (&f).write_all(&h).unwrap();
    f.set_len(4 << 30).unwrap();
    // With its address space capped at 256 MiB, inspect must still end in a clean refusal
    // (a 1 GiB buffer would abort it instead).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cowctl"));
    cmd.args(["cow", "inspect", cow.to_str().unwrap()]);
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and only changes the child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_AS,
                256 << 20,
                256 << 20,
            )
            .map_err(std::io::Error::from)
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("too large"), "{}", stderr(&out));
}

#[test]
fn planted_links_and_files_in_cowctls_paths_are_never_followed_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("golden.img"), vec![2u8; 1 << 20]).unwrap();
    std::fs::create_dir(d.join("cow")).unwrap();
    std::fs::write(d.join("victim"), "keep me").unwrap();
    // nbd.socket at a regular file: serve refuses to remove it.
    let text = text(
        d,
        common::free_port(),
        common::free_port(),
        &format!("127.0.0.1:{}", common::free_port()),
        "",
    )
    .replace(
        &format!("  socket: {}/nbd.sock\n", d.display()),
        &format!("  socket: {}/victim\n", d.display()),
    );
    common::write_private(&d.join("token"), "room-admin-token-0123456789\n");
    std::fs::write(d.join("room.yaml"), text).unwrap();
    let out = cowctl(d, &["apply"]);
    let _ = cowctl(d, &["down"]);
    assert!(!out.status.success());
    let log = std::fs::read_to_string(d.join("run/serve.log")).unwrap_or_default();
    assert!(
        format!("{}{log}", stderr(&out)).contains("is not a socket"),
        "{}{log}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("victim")).unwrap(),
        "keep me"
    );
    // A run directory that is a symlink, or a planted lock file link: refused.
    let run = d.join("run2");
    std::os::unix::fs::symlink(d.join("cow"), &run).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cowctl"))
        .args(["-f", d.join("room.yaml").to_str().unwrap(), "apply"])
        .env("COWCTL_RUN_DIR", &run)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("is a symlink"), "{}", stderr(&out));
    let run3 = d.join("run3");
    std::fs::create_dir(&run3).unwrap();
    std::os::unix::fs::symlink(d.join("victim"), run3.join("lock")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cowctl"))
        .args(["-f", d.join("room.yaml").to_str().unwrap(), "apply"])
        .env("COWCTL_RUN_DIR", &run3)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not follow symlinks"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("victim")).unwrap(),
        "keep me"
    );
}

/// NBD has no authentication, so by default it is not on the LAN at all: a machine in
/// another network namespace (a stranger on the room's LAN) reaching the server at its
/// LAN address finds no NBD server, while the server itself still lists its exports on
/// loopback. The same room with `nbd.listen: 0.0.0.0` shows the path is open otherwise.
#[test]
fn a_stranger_on_the_lan_finds_no_nbd_server_by_default() {
    use common::net::{Link, Netns};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("golden.img"), vec![0x33; 4 << 20]).unwrap();
    std::fs::create_dir(dir.path().join("cow")).unwrap();
    common::write_private(&dir.path().join("token"), "room-admin-token-0123456789\n");
    let (http, admin) = (common::free_port(), common::free_port());
    let lan_default = text(dir.path(), 1, http, &format!("127.0.0.1:{admin}"), "")
        .replace("  listen: 127.0.0.1:1\n", "");
    let manifest = dir.path().join("room.yaml");
    let wire = Link::veth(7, 1500);
    wire.add_address("10.213.77.1/24");
    let stranger = Netns::new(7);
    stranger.take(&wire, "10.213.77.2/24");
    let list = |ns: Option<&Netns>, host: &str| {
        let url = format!("nbd://{host}:10809");
        let mut c = match ns {
            Some(ns) => ns.command("nbdinfo"),
            None => Command::new("nbdinfo"),
        };
        let out = c.args(["--list", &url]).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out),
        )
    };
    for (text, open_to_lan) in [
        (lan_default.clone(), false),
        (
            lan_default.replace("nbd:\n", "nbd:\n  listen: 0.0.0.0:10809\n"),
            true,
        ),
    ] {
        std::fs::write(&manifest, text).unwrap();
        let out = cowctl(dir.path(), &["apply"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let (ok, here) = list(None, "127.0.0.1");
        assert!(
            ok && here.contains("pc-1"),
            "the server lists its exports: {here}"
        );
        let (ok, there) = list(Some(&stranger), "10.213.77.1");
        assert_eq!(ok, open_to_lan, "a stranger on the LAN: {there}");
        if open_to_lan {
            assert!(there.contains("pc-1"), "{there}");
        }
        let out = cowctl(dir.path(), &["down"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
