//! The HTTP service and auto-extend over the kernel backend, on the recording fake kernel:
//! boot scripts with their exact sanboot URIs, reset on boot, PCs found by address or MAC,
//! CowBell numbers from dm status, and auto-extend growing the file and its loop device.
//! The same code runs on the real kernel in the VM (tests/vm_kernel_http.rs).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::http::get;
use common::room::{Iscsi, Pc, RoomBuilder};
use cowctl::control::observe::Observed;
use cowctl::control::plan::plan_apply;
use cowctl::control::{apply, Ctx};
use cowctl::image::golden_record;
use cowctl::kernel::fake::Fake;
use cowctl::manifest::HttpConfig;
use cowctl::service::autoextend;
use cowctl::service::live_room::{KernelRoom, LiveRoom};

const PC1: &str = "127.0.0.21";
const PC2: &str = "127.0.0.22";
const STRANGER: &str = "127.0.0.99";

struct Room {
    dir: tempfile::TempDir,
    fake: Fake,
    fleet: Arc<KernelRoom>,
    http: SocketAddr,
}

fn manifest_text(d: &Path, portal: &str) -> String {
    RoomBuilder::new()
        .version("3")
        .cow("1MiB", "4KiB")
        .iscsi(
            Iscsi::new("iqn.2024-01.lan.t")
                .portal(&format!("\"{portal}\""))
                .acl("initiator")
                .chap("lab", "a-secret-of-16ch"),
        )
        .aoe("eth0")
        .extra("http:\n  listen: 127.0.0.1:0\n")
        .pc(Pc::new("pc-01")
            .ip(PC1)
            .initiator("iqn.2024-01.lan.t:init-01")
            .flag("reset_on_boot")
            .set("autoextend", "{threshold: 70, step: 50, max: 4MiB}"))
        .pc(Pc::new("pc-02")
            .ip(PC2)
            .initiator("iqn.2024-01.lan.t:init-02")
            .mac("52:54:00:00:00:02")
            .set("hostname", "lab-b2")
            .set("identity", "{room: \"Room 101\", domain: lab.example}"))
        .pc(Pc::new("pc-03").aoe(1, 3).mac("52:54:00:00:00:03"))
        .text_for(d)
}

impl Room {
    /// Three PCs applied on the fake kernel, and the HTTP service over them.
    fn new(portal: &str) -> Room {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("golden.img"), vec![7u8; 1 << 20]).unwrap();
        common::write_private(&d.join("chap.secret"), "a-secret-of-16ch\n");
        std::fs::create_dir(d.join("cow")).unwrap();
        std::fs::write(d.join("room.yaml"), manifest_text(d, portal)).unwrap();
        let manifest = cowctl::image::load_manifest(&d.join("room.yaml")).unwrap();
        let fake = Fake::new();
        let kernel = fake.kernel();
        let ctx = Ctx {
            manifest: &manifest,
            kernel: &kernel,
            run_dir: d.join("run"),
        };
        let actions = plan_apply(&ctx, &Observed::read(&kernel).unwrap()).unwrap();
        apply::run(&ctx, &actions, &mut |_, _| {}).unwrap();
        let f = fake.clone();
        let fleet = Arc::new(KernelRoom::new(
            manifest.clone(),
            &d.join("run"),
            Box::new(move || f.kernel()),
        ));
        // One listener on a free port with every route (listen = admin_listen).
        let cfg = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..manifest.http.clone().unwrap()
        };
        let http = cowctl::web::spawn(cfg, fleet.clone(), Default::default()).unwrap()[0];
        Room {
            dir,
            fake,
            fleet,
            http,
        }
    }

    fn cow(&self, pc: &str) -> PathBuf {
        self.dir.path().join(format!("cow/{pc}.cow"))
    }

    fn set_status(&self, pc: &str, status: &str) {
        self.fake
            .state()
            .dm
            .get_mut(&format!("cowctl-{pc}"))
            .unwrap()
            .status = Some(status.into());
    }
}

#[test]
fn boot_scripts_sanboot_each_pc_exactly_and_reset_on_boot() {
    let room = Room::new("10.0.0.1:3260");
    room.fake.clear_log();
    // pc-01 resets on boot: the first answer only hands out a nonce to chain to, so a
    // GET that a web page in the PC's browser could make changes nothing.
    let first = get(PC1, room.http, "/boot.ipxe");
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        room.fake.log().is_empty(),
        "nothing is reset by the first request"
    );
    let path = first
        .body
        .lines()
        .find_map(|l| l.strip_prefix("chain "))
        .unwrap_or_else(|| panic!("no chain line in {}", first.body));
    assert!(path.starts_with("/boot.ipxe?reset="), "{path}");
    // Another PC with pc-01's nonce gets its own script, and pc-01 is not reset.
    let stolen = get(PC2, room.http, path);
    assert!(stolen.body.contains("# cowctl: pc-02"), "{}", stolen.body);
    assert!(
        room.fake.log().is_empty(),
        "pc-01's nonce from pc-02 resets nothing"
    );
    let r = get(PC1, room.http, path);
    assert_eq!(r.status, 200, "{}", r.body);
    // pc-01's own secret, derived from the master: it opens pc-01's disk only.
    let own = cowctl::manifest::secrets::derive("a-secret-of-16ch", "initiator", "pc-01");
    assert_ne!(
        own,
        cowctl::manifest::secrets::derive("a-secret-of-16ch", "initiator", "pc-02")
    );
    assert_eq!(
        r.body,
        format!(
            "#!ipxe\n# cowctl: pc-01 on image g\nset hostname pc-01\n\
             set initiator-iqn iqn.2024-01.lan.t:init-01\n\
             set username lab\nset password {own}\n\
             sanboot iscsi:10.0.0.1::::iqn.2024-01.lan.t:pc-01\n"
        )
    );
    assert!(
        !r.body.contains("a-secret-of-16ch"),
        "the master secret never leaves"
    );
    let log = room.fake.log();
    assert!(
        log.iter().any(|l| l.contains("cowctl-pc-01")),
        "reset_on_boot reset pc-01 live: {log:?}"
    );
    assert_eq!(
        golden_record::read(&room.cow("pc-01"))
            .unwrap()
            .unwrap()
            .resets,
        1
    );
    let again = get(PC1, room.http, path);
    assert_eq!(again.status, 403, "a nonce works once: {}", again.body);
    assert!(
        again.body.contains("not pc-01's current one"),
        "{}",
        again.body
    );
    let forged = get(
        PC1,
        room.http,
        "/boot.ipxe?reset=00112233445566778899aabbccddeeff",
    );
    assert_eq!(forged.status, 403);
    assert_eq!(
        golden_record::read(&room.cow("pc-01"))
            .unwrap()
            .unwrap()
            .resets,
        1,
        "no reset without the nonce"
    );

    room.fake.clear_log();
    let r = get(PC2, room.http, "/boot.ipxe");
    assert!(
        r.body
            .ends_with("sanboot iscsi:10.0.0.1::::iqn.2024-01.lan.t:pc-02\n"),
        "{}",
        r.body
    );
    // Who the PC is, for iPXE (and the iBFT): its host name, then its identity values.
    assert!(
        r.body.starts_with(
            "#!ipxe\n# cowctl: pc-02 on image g\nset hostname lab-b2\n\
             set cowctl_domain lab.example\nset cowctl_room Room 101\n"
        ),
        "{}",
        r.body
    );
    assert!(room.fake.log().is_empty(), "pc-02 is not reset on boot");
    assert_eq!(
        golden_record::read(&room.cow("pc-02"))
            .unwrap()
            .unwrap()
            .resets,
        0
    );

    // The script goes to the PC's own address only: pc-03 has no ip, so its MAC from
    // anywhere gets nothing; pc-02's MAC from elsewhere is refused, and a MAC that is not
    // the asking PC's is too.
    let r = get(STRANGER, room.http, "/boot.ipxe?mac=52-54-00-00-00-03");
    assert_eq!((r.status, r.body.as_str()), (403, "unknown client\n"));
    let r = get(STRANGER, room.http, "/boot.ipxe?mac=52:54:00:00:00:02");
    assert_eq!((r.status, r.body.as_str()), (403, "unknown client\n"));
    let r = get(PC2, room.http, "/boot.ipxe?mac=52:54:00:00:00:03");
    assert_eq!(r.status, 403);
    let r = get(PC2, room.http, "/boot.ipxe?mac=52:54:00:00:00:02");
    assert_eq!(r.status, 200);
}

#[test]
fn a_portal_on_every_address_boots_from_the_address_the_pc_asked() {
    let room = Room::new("0.0.0.0:3261");
    let r = get(PC2, room.http, "/boot.ipxe");
    assert!(
        r.body
            .ends_with("sanboot iscsi:127.0.0.1::3261::iqn.2024-01.lan.t:pc-02\n"),
        "{}",
        r.body
    );
}

#[test]
fn cowbell_reads_the_kernels_status_line() {
    let room = Room::new("10.0.0.1:3260");
    room.set_status("pc-02", "1200/2048 16");
    let r = get(PC2, room.http, "/cow");
    assert_eq!((r.status, r.body.as_str()), (200, "OK 1200 2048"));
    // pc-01 may grow to 4 MiB: CowBell's total is that.
    room.set_status("pc-01", "24/2048 16");
    assert_eq!(get(PC1, room.http, "/cow").body, "OK 24 8192");
    room.set_status("pc-02", "Overflow");
    assert_eq!(get(PC2, room.http, "/cow").body, "OK 2048 2048");
    room.set_status("pc-02", "Invalid");
    assert_eq!(get(PC2, room.http, "/cow").body, "ERR invalid");
    assert_eq!(get(STRANGER, room.http, "/cow").body, "ERR unknown client");
}

#[test]
fn autoextend_grows_the_file_and_its_loop_when_past_the_threshold() {
    let room = Room::new("10.0.0.1:3260");
    let cow = room.cow("pc-01");
    room.set_status("pc-01", "1400/2048 16"); // 68 %: under the threshold
    assert!(autoextend::check(room.fleet.as_ref()).is_empty());
    room.set_status("pc-01", "1450/2048 16"); // 70.8 %
    room.set_status("pc-02", "2000/2048 16"); // full, but no autoextend
    room.fake.clear_log();
    let grown = autoextend::check(room.fleet.as_ref());
    assert_eq!(grown.len(), 1, "{grown:?}");
    assert_eq!(
        (grown[0].pc.as_str(), grown[0].from, grown[0].to),
        ("pc-01", 1 << 20, 3 << 19)
    );
    assert_eq!(std::fs::metadata(&cow).unwrap().len(), 3 << 19);
    let cow_loop = room
        .fake
        .state()
        .loops
        .iter()
        .find(|l| l.backing == cow)
        .unwrap()
        .dev
        .clone();
    assert_eq!(
        room.fake.log(),
        vec![format!("loop set-capacity {}", cow_loop.display())]
    );
    let row = room.fleet.status_of("pc-01").unwrap();
    assert_eq!(row.max_sectors, Some(8192));
    room.set_status("pc-01", "Overflow");
    assert!(
        autoextend::check(room.fleet.as_ref()).is_empty(),
        "only active snapshots grow"
    );
}
