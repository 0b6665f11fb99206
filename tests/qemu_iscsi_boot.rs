//! A real diskless PC boots from the userspace backend: qemu's iPXE ROM fetches the PC's
//! boot script from `cowctl serve`'s HTTP service and sanboots its disk over iSCSI with the
//! PC's own initiator name (the ACL) and CHAP secret. The golden image is a boot sector
//! that counts its boots on the disk: the count rises from boot to boot (writes reach the
//! PC's COW), starts over after `cowctl reset`, and the golden image never changes. A wrong
//! CHAP secret boots nothing.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pc::{self, Boot, HOST};
use common::room::{Golden, Http, Iscsi, Pc, Room, RoomBuilder};
use sha2::{Digest, Sha256};

const BOOT_LIMIT: Duration = Duration::from_secs(150);

/// pc-01 and pc-02 over iSCSI with initiator ACLs and CHAP, the HTTP service for their
/// boot scripts; applied.
fn room() -> Room {
    applied(room_builder().build())
}

fn room_builder() -> RoomBuilder {
    // iPXE guesses a geometry of 255 heads × 63 sectors: the disk needs a cylinder. The PC
    // reaches this host (and so the portal on loopback) at 10.0.2.2, and its connections
    // arrive from 127.0.0.1: that is its ip.
    RoomBuilder::userspace()
        .golden(Golden::Counter(32 << 20))
        .cow("8MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.boot")
                .acl("initiator")
                .chap("room", "the-room-master-secret"),
        )
        .http(Http::new().server(HOST))
        .pc(Pc::new("pc-01")
            .ip("127.0.0.1")
            .initiator("iqn.2024-01.lan.boot:init-pc-01"))
        .pc(Pc::new("pc-02").initiator("iqn.2024-01.lan.boot:init-pc-02"))
}

fn applied(room: Room) -> Room {
    room.cowctl(&["apply"]);
    room
}

fn golden_hash(room: &Room) -> Vec<u8> {
    Sha256::digest(std::fs::read(room.path("golden.img")).unwrap()).to_vec()
}

/// Boots the PC the way a room does: iPXE chains the HTTP service's boot script.
fn boot(room: &Room) -> Boot {
    let script = format!(
        "#!ipxe\nchain http://{HOST}:{}/boot.ipxe\n",
        room.http().port()
    );
    pc::boot(room.dir.path(), &script, BOOT_LIMIT, &|| false)
}

#[test]
fn a_pc_boots_over_iscsi_writes_its_cow_and_starts_over_after_a_reset() {
    boots_counts_and_starts_over(&room());
}

/// The same PC from a reflink clone of the image on xfs (`storage: reflink`): its boots
/// write into its own disk file, the reset clones the image again.
#[test]
fn a_pc_boots_over_iscsi_from_a_reflink_clone() {
    let xfs = common::kernel::Mounted::xfs(true);
    let room = applied(room_builder().storage("reflink").build_in(&xfs.mnt()));
    assert!(room.path("cow/pc-01.img").exists());
    boots_counts_and_starts_over(&room);
}

fn boots_counts_and_starts_over(room: &Room) {
    let golden = golden_hash(room);
    assert_eq!(
        boot(room),
        Boot::Counted(1),
        "first boot; serve log:\n{}",
        room.log_so_far()
    );
    assert_eq!(
        boot(room),
        Boot::Counted(2),
        "the second boot reads the first one's write"
    );
    // While it is not booted, status names the target like the kernel backend does.
    let status = room.cowctl(&["status", "pc-01"]);
    assert!(status.contains("iqn.2024-01.lan.boot:pc-01"), "{status}");
    room.cowctl(&["reset", "pc-01"]);
    assert_eq!(
        boot(room),
        Boot::Counted(1),
        "after the reset the PC is back on the golden image"
    );
    assert_eq!(
        golden_hash(room),
        golden,
        "the golden image is never written"
    );
    let log = room.log_so_far();
    assert!(
        log.contains("iqn.2024-01.lan.boot:init-pc-01"),
        "the PC logged in with the initiator name of its boot script:\n{log}"
    );
}

#[test]
fn a_wrong_chap_secret_boots_nothing() {
    let room = room();
    let script = format!(
        "#!ipxe\nset san-retries 0\nset initiator-iqn iqn.2024-01.lan.boot:init-pc-01\n\
         set username room\nset password not-the-secret-of-pc-01\n\
         sanboot iscsi:{HOST}::{}::iqn.2024-01.lan.boot:pc-01\n",
        room.iscsi_port()
    );
    let refused = || room.log_so_far().contains("authentication failure");
    let booted = pc::boot(room.dir.path(), &script, BOOT_LIMIT, &refused);
    assert!(matches!(booted, Boot::Nothing(_)), "{booted:?}");
    assert!(
        refused(),
        "the target refused the login:\n{}",
        room.log_so_far()
    );
    // pc-02's secret, from pc-02's own script, does not open pc-01's disk either.
    let pc02 = cowctl::manifest::secrets::derive("the-room-master-secret", "initiator", "pc-02");
    let script = script.replace("not-the-secret-of-pc-01", &pc02);
    let booted = pc::boot(room.dir.path(), &script, BOOT_LIMIT, &|| {
        room.log_so_far().matches("authentication failure").count() >= 2
    });
    assert!(matches!(booted, Boot::Nothing(_)), "{booted:?}");
}

/// Connections from strangers' addresses that do nothing, kept open: one that the service
/// closes is opened again, as an attacker would.
struct Strangers {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Strangers {
    /// `per_address` connections from each of `addresses` addresses of 127.0.<net>.0/24.
    fn hold(to: SocketAddr, net: u8, addresses: u8, per_address: usize) -> Strangers {
        let stop = Arc::new(AtomicBool::new(false));
        let from: Vec<IpAddr> = (1..=addresses)
            .flat_map(|a| std::iter::repeat_n(IpAddr::from([127, 0, net, a]), per_address))
            .collect();
        let open = move |ip: IpAddr| -> Option<TcpStream> {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&SocketAddr::new(ip, 0).into()).ok()?;
            s.connect(&to.into()).ok()?;
            let s: TcpStream = s.into();
            s.set_nonblocking(true).ok()?;
            Some(s)
        };
        let mut conns: Vec<Option<TcpStream>> = from.iter().map(|ip| open(*ip)).collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut reopened = 0;
            while !flag.load(Ordering::Relaxed) {
                for (c, ip) in conns.iter_mut().zip(&from) {
                    let mut buf = [0u8; 512];
                    let closed = match c.as_mut().map(|s| s.read(&mut buf)) {
                        None | Some(Ok(0)) => true,
                        Some(Ok(_)) => false,
                        Some(Err(e)) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    if closed {
                        *c = open(*ip);
                        reopened += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            reopened
        });
        Strangers {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, and says how many connections the service closed and were opened again.
    fn release(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(IpAddr::from(ip), 0).into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// How long until the service closes `s` (reading whatever it sends meanwhile).
fn closed_after(mut s: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || start.elapsed() > limit {
            break;
        }
    }
    start.elapsed()
}

fn proc_status(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_pc_logs_in_and_boots_while_strangers_hold_every_waiting_place() {
    use cowctl::service::limits::{WAITING_PER_ADDRESS, WAITING_TOTAL};
    let room = room();
    let portal = SocketAddr::from(([127, 0, 0, 1], room.iscsi_port()));
    let nbd = SocketAddr::from(([127, 0, 0, 1], room.nbd_port()));
    let pid = std::fs::read_to_string(room.path("run/serve.pid")).unwrap();
    let pid = pid.trim();
    let (threads, rss) = (proc_status(pid, "Threads:"), proc_status(pid, "VmRSS:"));
    // Every waiting place of both protocols, from as few addresses as the caps allow.
    let addresses = u8::try_from(WAITING_TOTAL / WAITING_PER_ADDRESS).unwrap();
    let iscsi_strangers = Strangers::hold(portal, 1, addresses, WAITING_PER_ADDRESS);
    let nbd_strangers = Strangers::hold(nbd, 2, addresses, WAITING_PER_ADDRESS);
    std::thread::sleep(Duration::from_millis(300));
    let held_threads = proc_status(pid, "Threads:") - threads;
    let held_kib = proc_status(pid, "VmRSS:").saturating_sub(rss);
    eprintln!(
        "{} waiting strangers cost {held_threads} threads and {held_kib} KiB ({} KiB each)",
        2 * WAITING_TOTAL,
        held_kib / (2 * WAITING_TOTAL as u64)
    );
    assert!(
        held_threads <= 2 * WAITING_TOTAL as u64 + 4,
        "{held_threads}"
    );
    // A login trickled a byte a second is cut off at the 15 s deadline, not after its 48
    // bytes; an idle discovery session ends after 10 s. Both run beside the boot, from the
    // PC's address, where no newcomer cuts them off first.
    let trickler = std::thread::spawn(move || {
        let s = from([127, 0, 0, 1], portal);
        let login = common::iscsi::leading_login(0);
        let mut w = s.try_clone().unwrap();
        let start = Instant::now();
        let writer = std::thread::spawn(move || {
            for b in login {
                if w.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let took = closed_after(s, Duration::from_secs(40)).max(start.elapsed());
        let _ = writer.join();
        took
    });
    let discoverer = std::thread::spawn(move || {
        let mut s = from([127, 0, 0, 1], portal);
        let login = common::iscsi::login(
            1,
            3,
            true,
            0,
            &common::iscsi::keys(&[
                ("InitiatorName", "iqn.2024-01.lan.x:idle"),
                ("SessionType", "Discovery"),
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
            ]),
        );
        s.write_all(&login).unwrap();
        closed_after(s, Duration::from_secs(40))
    });
    // pc-01 (127.0.0.1, an address of the manifest) boots, and reads its disk over NBD.
    assert_eq!(
        boot(&room),
        Boot::Counted(1),
        "serve log:\n{}",
        room.log_so_far()
    );
    let info = std::process::Command::new("qemu-img")
        .args([
            "info",
            &format!("nbd://127.0.0.1:{}/pc-01", room.nbd_port()),
        ])
        .output()
        .unwrap();
    assert!(info.status.success(), "{info:?}");
    // A newcomer from an address the manifest does not list gets a place too: the oldest
    // stranger (waiting over a second) is cut off for it.
    let mut newcomer = from([127, 0, 5, 1], portal);
    newcomer
        .write_all(&common::iscsi::login(
            1,
            3,
            true,
            0,
            &common::iscsi::keys(&[
                ("InitiatorName", "iqn.2024-01.lan.x:new"),
                ("SessionType", "Discovery"),
            ]),
        ))
        .unwrap();
    newcomer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = [0u8; 48];
    newcomer.read_exact(&mut reply).unwrap();
    assert_eq!(
        (reply[0] & 0x3f, reply[36]),
        (0x23, 0),
        "a Login Response, success"
    );
    let mut nbd_newcomer = from([127, 0, 5, 2], nbd);
    nbd_newcomer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut greeting = [0u8; 16];
    nbd_newcomer.read_exact(&mut greeting).unwrap();
    assert_eq!(
        &greeting, b"NBDMAGICIHAVEOPT",
        "the NBD server greets the newcomer"
    );
    let trickled = trickler.join().unwrap();
    assert!(
        (Duration::from_secs(14)..Duration::from_secs(17)).contains(&trickled),
        "the trickled login was cut off after {trickled:?}"
    );
    let idle = discoverer.join().unwrap();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(13)).contains(&idle),
        "the idle discovery session ended after {idle:?}"
    );
    // The pools were full: strangers were cut off to make room, and opened again.
    assert!(
        iscsi_strangers.release() > 0,
        "iSCSI strangers were cut off"
    );
    assert!(nbd_strangers.release() > 0, "NBD strangers were cut off");
    assert!(
        room.log_so_far().contains("to make room"),
        "{}",
        room.log_so_far()
    );
}
