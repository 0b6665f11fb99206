//! Manifests: the example room, defaults and ranges, and every error at once with its place.

mod common;

use std::path::Path;

use cowctl::manifest::{Export, Manifest};

fn parse(text: &str) -> Result<Manifest, cowctl::manifest::ManifestErrors> {
    Manifest::parse(Path::new("room.yaml"), text)
}

#[test]
fn the_example_is_a_room_of_fourteen_pcs() {
    let m = Manifest::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/example.yaml"
    )))
    .unwrap();
    assert_eq!(m.pcs.len(), 14);
    let pc3 = m.pc("pc-03").unwrap();
    assert_eq!(pc3.cow, Path::new("/srv/cowctl/cow/pc-03.cow"));
    assert_eq!(pc3.ip.unwrap().to_string(), "10.0.0.103");
    assert_eq!(pc3.mac.unwrap().to_string(), "52:54:00:00:00:03");
    assert_eq!(pc3.chunk_sectors(), 64);
    match &pc3.export {
        Export::Iscsi { target, initiator } => {
            assert_eq!(target.as_str(), "iqn.2024-01.lan.classroom:pc-03");
            assert_eq!(
                initiator.as_ref().unwrap().as_str(),
                "iqn.2024-01.lan.classroom:pc-03"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.warn_percent, 75.0);
}

const BASE: &str = "images:\n  g:\n    path: /img/g.img\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [127.0.0.1]\n  acl: open\naoe:\n  interface: lo\ndefaults:\n  image: g\n  cow_dir: /cow\n  cow_size: 1GiB\n";

#[test]
fn pcs_mix_exports_and_override_defaults() {
    let m = parse(&format!(
        "{BASE}pcs:\n  - name: a\n  - name: b\n    export: aoe\n    shelf: 1\n    slot: 2\n    mac: 00:00:00:00:00:00\n    cow_size: 2GiB\n    overflow: P\n"
    ))
    .unwrap();
    assert_eq!(m.pcs.len(), 2);
    assert_eq!(m.pcs[1].export.to_string(), "e1.2");
    assert_eq!(m.pcs[1].cow_size.to_string(), "2GiB");
    assert_eq!(m.pcs[0].export.to_string(), "iqn.2024-01.lan.x:a");
}

#[test]
fn every_error_is_listed_at_once_with_line_and_column() {
    let text = format!(
        "{BASE}pcs:\n  - name: pc-{{1..3}}\n    ip: 10.0.0.{{1..2}}\n  - name: Bad_Name\n    ipp: 1.2.3.4\n  - name: c\n    image: nope\n    chunk: 3KiB\n  - name: a1\n    export: aoe\n"
    );
    let err = parse(&text).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("room.yaml has 7 errors"), "{shown}");
    let lines: Vec<&str> = shown.lines().skip(1).map(str::trim).collect();
    assert_eq!(lines.len(), 7, "{shown}");
    assert!(
        lines[0].starts_with("room.yaml:16:5: pcs[0].ip: range gives 2 values but name gives 3"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("room.yaml:18:5: pcs[1].ipp: unknown field `ipp`"),
        "{shown}"
    );
    assert!(
        lines[2].starts_with("room.yaml:20:5: pcs[2].image: c: image \"nope\" is not listed"),
        "{shown}"
    );
    assert!(
        lines[3].starts_with(
            "room.yaml:21:5: pcs[2].chunk: c: chunk size of 6 sectors is not a power of two"
        ),
        "{shown}"
    );
    assert!(
        lines[4].starts_with("room.yaml:22:")
            && lines[4].contains("pcs[3].shelf: a1: an AoE export needs a shelf"),
        "{shown}"
    );
    assert!(
        lines[5].contains("pcs[3].slot") && lines[6].contains("pcs[3].mac"),
        "{shown}"
    );
}

#[test]
fn secrets_in_the_manifest_are_refused_with_advice() {
    let text = "images: {}\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [127.0.0.1]\n  chap:\n    username: u\n    secret: hunter2\npcs: []\n";
    let shown = parse(text).unwrap_err().to_string();
    assert!(
        shown.contains("room.yaml:7:5: iscsi.chap.secret: CHAP secrets never go in the manifest"),
        "{shown}"
    );
}

#[test]
fn duplicates_are_named_with_the_first_user() {
    let text = format!(
        "{BASE}pcs:\n  - name: a\n    ip: 10.0.0.1\n  - name: b\n    ip: 10.0.0.1\n  - name: a\n"
    );
    let shown = parse(&text).unwrap_err().to_string();
    assert!(
        shown.contains("pcs[1].ip: b: ip 10.0.0.1 is already used by a"),
        "{shown}"
    );
    assert!(
        shown.contains("pcs[2].name: a: name a is already used by a"),
        "{shown}"
    );
}

#[test]
fn a_yaml_syntax_error_has_its_position() {
    let shown = parse("pcs: [\n").unwrap_err().to_string();
    assert!(
        shown.contains("room.yaml:2:1:") || shown.contains("room.yaml:1:"),
        "{shown}"
    );
}

#[test]
fn a_missing_manifest_says_how_to_name_one() {
    let err = Manifest::load(Path::new("/nonexistent/cowctl.yaml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "cannot read the manifest /nonexistent/cowctl.yaml: No such file or directory (os error 2) (name one with -f or $COWCTL_MANIFEST)"
    );
}

#[test]
fn backend_nbd_and_read_only_parse_with_defaults() {
    use cowctl::manifest::Backend;
    let m = parse(&format!("{BASE}pcs:\n  - name: a\n")).unwrap();
    assert_eq!(m.backend, Backend::Auto);
    assert_eq!(
        m.nbd.listen.to_string(),
        "127.0.0.1:10809",
        "NBD has no authentication: it stays off the LAN unless the manifest says so"
    );
    assert_eq!(m.nbd.socket, None);
    assert!(!m.pcs[0].read_only);
    let m = parse(&format!(
        "{BASE}backend: userspace\nnbd:\n  listen: \"[::1]:10900\"\n  socket: /run/x.sock\npcs:\n  - name: a\n    export: nbd\n    read_only: true\n"
    ))
    .unwrap();
    assert_eq!(m.backend, Backend::Userspace);
    assert_eq!(m.nbd.listen.to_string(), "[::1]:10900");
    assert_eq!(m.nbd.socket.as_deref(), Some(Path::new("/run/x.sock")));
    assert_eq!(m.pcs[0].export, Export::Nbd);
    assert!(m.pcs[0].read_only);
}

#[test]
fn an_image_keeps_its_pcs_disks_as_cow_files_or_as_clones() {
    use cowctl::manifest::Storage;
    let m = parse(&format!("{BASE}pcs:\n  - name: a\n")).unwrap();
    assert_eq!(m.images["g"].storage, Storage::Cow, "COW files by default");
    assert_eq!(m.pcs[0].cow, Path::new("/cow/a.cow"));
    let reflink = BASE.replace("g.img\n", "g.img\n    storage: reflink\n");
    let m = parse(&format!("{reflink}pcs:\n  - name: a\n")).unwrap();
    assert_eq!(m.storage_of(&m.pcs[0]), Storage::Reflink);
    assert_eq!(
        m.pcs[0].cow,
        Path::new("/cow/a.img"),
        "a clone is a disk image"
    );
    let bad = BASE.replace("g.img\n", "g.img\n    storage: tape\n");
    let err = parse(&format!("{bad}pcs:\n  - name: a\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("room.yaml:4:5: images.g.storage: g: storage \"tape\" is not cow"),
        "{err}"
    );
}

#[test]
fn bad_backend_and_nbd_fields_are_named() {
    let err = parse(&format!(
        "{BASE}backend: fuse\nnbd:\n  listen: 10809\n  socket: rel.sock\n  acl: mac\npcs:\n  - name: a\n    export: nfs\n"
    ))
    .unwrap_err()
    .to_string();
    for want in [
        "backend: \"fuse\" is not a backend (auto, kernel or userspace)",
        "nbd.listen: \"10809\" is not an address with a port",
        "nbd.socket: rel.sock is not an absolute path",
        "nbd.acl: \"mac\" is not an NBD ACL mode",
        "pcs[0].export: a: \"nfs\" is not an export (iscsi, aoe or nbd)",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn nbd_open_to_the_lan_beside_iscsi_chap_or_acls_is_refused_unless_accepted_by_name() {
    use cowctl::manifest::NbdAcl;
    let room = |iscsi: &str, nbd: &str| {
        format!(
            "images:\n  g:\n    path: /img/g.img\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [10.0.0.1]\n{iscsi}\
             nbd:\n{nbd}defaults:\n  image: g\n  cow_dir: /cow\n  cow_size: 1GiB\n\
             pcs:\n  - name: a\n    initiator: iqn.2024-01.lan.pc:a\n    ip: 10.0.0.11\n"
        )
    };
    let chap = "  acl: open\n  chap:\n    username: lab\n    secret_file: /etc/cowctl/chap\n";
    let acls = "  acl: initiator\n";
    for (guard, iscsi) in [("CHAP", chap), ("initiator ACLs", acls)] {
        let err = parse(&room(iscsi, "  listen: 0.0.0.0:10809\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("nbd.acl: nbd.listen 0.0.0.0:10809 with acl: open lets anyone on the LAN open every PC's disk over NBD, past iSCSI's {guard}")),
            "{err}"
        );
        // Safe: loopback (the default), each PC from its own ip, or the admin's named choice.
        for (nbd, acl) in [
            ("  acl: open\n", NbdAcl::Open),
            ("  listen: 0.0.0.0:10809\n  acl: ip\n", NbdAcl::Ip),
            (
                "  listen: 0.0.0.0:10809\n  acl: open_to_lan\n",
                NbdAcl::OpenToLan,
            ),
        ] {
            let m = parse(&room(iscsi, nbd)).unwrap_or_else(|e| panic!("{nbd}: {e}"));
            assert_eq!(m.nbd.acl, acl);
        }
    }
    // Without CHAP or ACLs NBD opens nothing iSCSI would keep closed.
    parse(&room("  acl: open\n", "  listen: 0.0.0.0:10809\n")).unwrap();
}

#[test]
fn http_and_autoextend_parse_with_defaults() {
    let m = parse(&format!(
        "{BASE}http:\n  token_file: /etc/cowctl/token\npcs:\n  - name: a\n    reset_on_boot: true\n    self_reset: true\n    autoextend:\n      max: 4GiB\n  - name: b\n"
    ))
    .unwrap();
    let http = m.http.unwrap();
    assert_eq!(http.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        http.admin_listen.to_string(),
        "127.0.0.1:8081",
        "admin stays on loopback"
    );
    let a = m.pcs[0].autoextend.unwrap();
    assert_eq!((a.threshold, a.step, a.max.bytes()), (70.0, 20.0, 4 << 30));
    assert!(m.pcs[0].reset_on_boot && m.pcs[0].self_reset);
    assert!(!m.pcs[1].reset_on_boot && !m.pcs[1].self_reset && m.pcs[1].autoextend.is_none());
    assert!(parse(&format!("{BASE}pcs:\n  - name: a\n"))
        .unwrap()
        .http
        .is_none());
}

#[test]
fn bad_http_and_autoextend_fields_are_named() {
    let err = parse(&format!(
        "{BASE}http:\n  listen: 8080\n  admin_listen: localhost\n  token_file: token\n  server: pxe\n  tls: yes\npcs:\n  - name: a\n    autoextend:\n      threshold: 100\n      step: 0\n      max: 1GiB\n  - name: b\n    autoextend: {{max: lots}}\n"
    ))
    .unwrap_err()
    .to_string();
    for want in [
        "http.tls: unknown field `tls`",
        "pcs[0].autoextend.threshold: a: 100 is not a percentage from 1 to below 100",
        "pcs[0].autoextend.step: a: 0 is not a percentage of the COW from 1 to 1000",
        "pcs[0].autoextend.max: a: a maximum of 1GiB leaves no room to grow a COW of 1GiB",
        "pcs[1].autoextend.max: b: ",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let err = parse(&format!(
        "{BASE}http:\n  listen: 8080\n  admin_listen: localhost\n  token_file: token\n  server: pxe\npcs:\n  - name: a\n"
    ))
    .unwrap_err()
    .to_string();
    for want in [
        "http.listen: \"8080\" is not an address with a port, such as 0.0.0.0:8080",
        "http.admin_listen: \"localhost\" is not an address with a port, such as 127.0.0.1:8081",
        "http.token_file: token is not an absolute path",
        "http.server: \"pxe\" is not an IP address",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn a_pxe_room_takes_names_identities_and_a_dhcp_range() {
    let m = parse(
        "images:\n  g:\n    path: /img/g.img\nhttp:\n  listen: 0.0.0.0:8080\n\
         pxe:\n  interface: eth1\n  dhcp: 10.9.0.100-10.9.0.199\n\
         defaults:\n  image: g\n  cow_dir: /cow\n  cow_size: 1GiB\n  export: nbd\n  identity: {site: north}\n\
         pcs:\n  - name: pc-{1..2}\n    mac: 52:54:00:00:00:0{1..2}\n    hostname: lab-{name}\n",
    )
    .unwrap();
    let pxe = m.pxe.as_ref().unwrap();
    assert_eq!(pxe.interface, "eth1");
    assert!(pxe.only_known);
    assert_eq!(
        serde_json::to_value(&pxe.dhcp).unwrap(),
        serde_json::json!({"range": {"first": "10.9.0.100", "last": "10.9.0.199"}})
    );
    assert_eq!(m.pcs[1].hostname, "lab-pc-2");
    assert_eq!(m.pcs[0].identity["site"], "north");
}

#[test]
fn pxe_combinations_that_cannot_boot_a_pc_are_refused_with_a_sentence() {
    let text = format!(
        "{BASE}http:\n  listen: 127.0.0.1:8080\npxe:\n  interface: eth1\n  dhcp: 10.9.0.200-10.9.0.100\n\
         pcs:\n  - name: a\n  - name: b\n    mac: 52:54:00:00:00:02\n    hostname: -bad\n    identity: {{room: \"1; reboot\"}}\n"
    );
    let shown = parse(&text).unwrap_err().to_string();
    for want in [
        "pxe.dhcp: \"10.9.0.200-10.9.0.100\": the range's first address comes after its last",
        "http.listen: 127.0.0.1:8080 is loopback, but the pxe section sends PCs to /boot.ipxe there",
        "pcs[1].hostname: b: \"-bad\" is not a host name",
        "pcs[1].identity.room: b: the value of room may hold letters, digits, spaces",
    ] {
        assert!(shown.contains(want), "{want}\nnot in\n{shown}");
    }
    // Without a range error, the PC without a MAC is named too.
    let text = format!(
        "{BASE}http:\n  listen: 0.0.0.0:8080\npxe:\n  interface: eth1\npcs:\n  - name: a\n"
    );
    let shown = parse(&text).unwrap_err().to_string();
    assert!(
        shown
            .contains("pcs[0].mac: a: no mac, and pxe.only_known answers only the manifest's MACs"),
        "{shown}"
    );
    let shown = parse(&format!(
        "{BASE}pxe:\n  interface: eth1\n  only_known: false\npcs:\n  - name: a\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(shown.contains("add an http section"), "{shown}");
}

#[test]
fn versioned_images_are_a_directory_and_take_no_label() {
    let m = parse(
        &BASE
            .replace("    path: /img/g.img\n", "    versions: /img/g\n")
            .replace("defaults:", "pcs:\n  - name: a\n    keep: true\ndefaults:"),
    )
    .unwrap();
    let g = &m.images["g"];
    assert_eq!(g.store.as_deref(), Some(Path::new("/img/g")));
    assert!(m.pcs[0].keep);
    let err = parse(
        "images:\n  g:\n    path: /img/g.img\n    versions: /img/g\n  h:\n    versions: /img/h\n    version: \"2\"\n  \"a@b\":\n    path: /img/x\n  n: {}\npcs: []\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("give either path (one file) or versions"),
        "{err}"
    );
    assert!(
        err.contains("a versioned image's versions are named by `cowctl image`"),
        "{err}"
    );
    assert!(err.contains("\"a@b\" is not an image name"), "{err}");
    assert!(err.contains("n: no path (one file) or versions"), "{err}");
}

#[test]
fn a_versioned_image_without_versions_says_how_to_make_the_first() {
    let d = tempfile::tempdir().unwrap();
    let text = BASE.replace(
        "    path: /img/g.img\n",
        &format!("    versions: {}/v\n", d.path().display()),
    ) + "pcs:\n  - name: a\n";
    std::fs::write(d.path().join("room.yaml"), &text).unwrap();
    let err = cowctl::image::load_manifest(&d.path().join("room.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("images.g.versions") && err.contains("cowctl image import FILE --image g"),
        "{err}"
    );
    // As written it is valid: import needs it before any version exists.
    Manifest::load(&d.path().join("room.yaml")).unwrap();
}

#[test]
fn control_characters_in_values_written_into_dnsmasqs_configuration_are_refused() {
    // A newline would let the manifest's author (or a template filling it) add any
    // dnsmasq option, such as a dhcp-script run as root.
    let text = format!(
        "{BASE}http:\n  listen: 0.0.0.0:8080\n\
         pxe:\n  interface: \"eth1\\ndhcp-script=/tmp/x\"\n  tftp_root: \"/srv/tftp\\rdhcp-script=/tmp/x\"\n  dhcp: 10.9.0.100-10.9.0.199\n\
         pcs:\n  - name: a\n    mac: 52:54:00:00:00:01\n    hostname: \"a\\ndhcp-script=/tmp/x\"\n  - name: b\n    mac: 52:54:00:00:00:02\n    hostname: \"b\\x7f\"\n"
    );
    let shown = parse(&text).unwrap_err().to_string();
    for want in [
        "pxe.interface: \"eth1\\ndhcp-script=/tmp/x\" holds the control character U+000A",
        "pxe.tftp_root: \"/srv/tftp\\rdhcp-script=/tmp/x\" holds the control character U+000D",
        "pcs[0].hostname: a: \"a\\ndhcp-script=/tmp/x\" is not a host name",
        "pcs[1].hostname: b: \"b\\u{7f}\" is not a host name",
    ] {
        assert!(shown.contains(want), "{want}\nnot in\n{shown}");
    }
}

#[test]
fn an_initiator_acl_without_chap_validates_with_a_warning_naming_the_risk() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path().display();
    std::fs::write(d.path().join("golden.img"), vec![1u8; 1 << 20]).unwrap();
    std::fs::create_dir(d.path().join("cow")).unwrap();
    common::write_private(&d.path().join("chap.secret"), "room-secret\n");
    let room = |iscsi_extra: &str| {
        std::fs::write(
            d.path().join("room.yaml"),
            format!(
                "backend: userspace\nimages:\n  g:\n    path: {dd}/golden.img\n\
                 iscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [127.0.0.1:{}]\n{iscsi_extra}\
                 defaults:\n  image: g\n  cow_dir: {dd}/cow\n  cow_size: 8MiB\n\
                 pcs:\n  - name: pc-1\n    initiator: iqn.2024-01.lan.pc:pc-1\n",
                common::free_port()
            ),
        )
        .unwrap();
    };
    let run = |args: &[&str]| {
        let out = common::room_command(d.path(), args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let risk = "anyone who sends a PC's initiator name opens its disk: set iscsi.chap";
    for (extra, at) in [("", "6:3"), ("  acl: initiator\n", "8:3")] {
        room(extra);
        let (_, err) = run(&["validate"]);
        let want = format!("warning: {dd}/room.yaml:{at}: iscsi.acl: ");
        assert!(
            err.contains(&want) && err.contains(risk),
            "{want}\nnot in\n{err}"
        );
        let (out, _) = run(&["--json", "validate"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["valid"], true);
        assert_eq!(v["warnings"][0]["field"], "iscsi.acl");
        assert!(v["warnings"][0]["message"].as_str().unwrap().contains(risk));
        let (_, err) = run(&["plan"]);
        assert!(err.contains(risk), "plan warns too: {err}");
    }
    for quiet in [
        "  acl: open\n".to_string(),
        format!("  chap:\n    username: lab\n    secret_file: {dd}/chap.secret\n"),
    ] {
        room(&quiet);
        let (out, err) = run(&["--json", "validate"]);
        assert!(!err.contains("warning"), "{quiet}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["warnings"], serde_json::json!([]));
    }
}

#[test]
fn a_cow_is_never_a_file_of_any_version_of_a_versioned_image() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path().display();
    std::fs::write(d.path().join("g.img"), vec![7u8; 1 << 20]).unwrap();
    std::fs::create_dir(d.path().join("cow")).unwrap();
    let room = |cow: &str| {
        std::fs::write(
            d.path().join("room.yaml"),
            format!(
                "backend: userspace\nimages:\n  g:\n    versions: {dd}/v\n\
                 defaults:\n  image: g\n  cow_size: 8MiB\n  export: nbd\n\
                 pcs:\n  - name: pc-1\n    cow: {cow}\n"
            ),
        )
        .unwrap();
        common::room_command(d.path(), &["validate"])
            .output()
            .unwrap()
    };
    room(&format!("{dd}/cow/pc-1.cow"));
    for _ in 0..2 {
        let out = common::room_command(
            d.path(),
            &["image", "import", &format!("{dd}/g.img"), "--image", "g"],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A version still being made, and a link to one that is not current.
    std::fs::create_dir(d.path().join("v/.incoming-v3-1")).unwrap();
    std::fs::write(d.path().join("v/.incoming-v3-1/disk.img"), [1u8; 512]).unwrap();
    std::os::unix::fs::symlink(
        d.path().join("v/v2/disk.img"),
        d.path().join("cow/link.cow"),
    )
    .unwrap();
    for (cow, what) in [
        (
            format!("{dd}/v/v1/disk.img"),
            "the disk of image g's version v1",
        ),
        (
            format!("{dd}/v/v2/disk.img"),
            "the disk of image g's version v2",
        ),
        (
            format!("{dd}/cow/link.cow"),
            "the disk of image g's version v2",
        ),
        (
            format!("{dd}//v/v2/../v1/version.json"),
            "the record of image g's version v1",
        ),
        (
            format!("{dd}/v/.incoming-v3-1/disk.img"),
            "the disk of image g's version .incoming-v3-1",
        ),
        (
            format!("{dd}/v/promoted.json"),
            "the promotion record of image g",
        ),
    ] {
        let out = room(&cow);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cow} validated");
        assert!(
            err.contains(&format!(
                "pcs[0].cow: pc-1: the COW {cow} is {what} (images.g.versions)"
            )),
            "{cow}: {err}"
        );
    }
    let out = room(&format!("{dd}/cow/pc-1.cow"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's tour shows a room as YAML: it is a valid manifest of fourteen PCs, each
/// with its own initiator and MAC.
#[test]
fn the_readme_tour_room_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```yaml\n").expect("a yaml block in README.md") + 8;
    let yaml = &readme[start..start + readme[start..].find("```").unwrap()];
    let m = parse(yaml).unwrap_or_else(|e| panic!("README.md's tour room: {e}"));
    assert_eq!(m.pcs.len(), 14);
    let pc7 = m.pc("pc-07").unwrap();
    assert_eq!(pc7.mac.unwrap().to_string(), "52:54:00:00:00:07");
    match &pc7.export {
        Export::Iscsi { initiator, .. } => assert_eq!(
            initiator.as_ref().unwrap().as_str(),
            "iqn.2024-01.lan.classroom:pc-07"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_rbd_image_is_a_snapshot_in_the_ceph_sections_pool() {
    let rbd = "images:\n  w:\n    storage: rbd\n    rbd: golden-w@v1\nceph:\n  conf: /etc/ceph/lab.conf\n  pool: lab\n  object_size: 128KiB\nbackend: userspace\ndefaults:\n  image: w\n  cow_size: 2GiB\n  export: nbd\npcs:\n  - name: pc-1\n";
    let m = parse(rbd).unwrap();
    let ceph = m.ceph.as_ref().unwrap();
    assert_eq!(ceph.settings.pool, "lab");
    assert_eq!(ceph.settings.client, "admin");
    assert_eq!(ceph.order(), 17);
    assert_eq!(m.images["w"].path, Path::new("rbd:lab/golden-w@v1"));
    assert_eq!(
        m.rbd_clone(m.pc("pc-1").unwrap()).as_deref(),
        Some("cowctl.pc-1")
    );
    assert!(m.uses_rbd());
    // `rbd: NAME`: versions cowctl keeps in the pool, NAME.v1@v1 …, resolved from the cluster.
    let versioned = parse(&rbd.replace("rbd: golden-w@v1", "rbd: golden-w")).unwrap();
    let w = &versioned.images["w"];
    assert_eq!(w.rbd_versions.as_deref(), Some("golden-w"));
    assert_eq!(w.rbd, None);
    assert_eq!(w.path, Path::new("rbd:lab/golden-w.*"));
    let clash = parse(&rbd.replace("rbd: golden-w@v1", "rbd: cowctl")).unwrap_err();
    assert!(
        clash
            .to_string()
            .contains("is the ceph section's prefix too"),
        "{clash}"
    );

    // Each mistake named at its field.
    let wrong = [
        (
            "    rbd: golden-w@v1\n",
            "    rbd: golden/w\n",
            "images.w.rbd",
            "is neither IMAGE@SNAPSHOT",
        ),
        (
            "    rbd: golden-w@v1\n",
            "    rbd: golden-w@\n",
            "images.w.rbd",
            "is neither IMAGE@SNAPSHOT",
        ),
        (
            "    rbd: golden-w@v1\n",
            "    rbd: golden-w@v1\n    path: /x.img\n",
            "images.w.storage",
            "not a file or a directory of versions",
        ),
        (
            "  object_size: 128KiB\n",
            "  object_size: 96KiB\n",
            "ceph.object_size",
            "not a power of two",
        ),
        (
            "  pool: lab\n",
            "  pool: a/b\n",
            "ceph.pool",
            "is not a Ceph name",
        ),
        (
            "ceph:\n  conf: /etc/ceph/lab.conf\n  pool: lab\n  object_size: 128KiB\n",
            "",
            "images.w.storage",
            "needs a ceph section",
        ),
    ];
    for (from, to, field, says) in wrong {
        let text = rbd.replace(from, to);
        let err = parse(&text).unwrap_err();
        let e = err
            .errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error at {field}: {err}"));
        assert!(e.message.contains(says), "{field}: {}", e.message);
    }
}

#[test]
fn gateways_order_each_pc_and_boot_scripts_name_them_in_that_order() {
    let text = "images:\n  w:\n    storage: rbd\n    rbd: golden-w@v1\nceph:\n  pool: lab\ngateways:\n  - name: gw-a\n    iscsi: 10.0.0.1\n    http: 10.0.0.1:8080\n  - name: gw-b\n    iscsi: 10.0.0.2:3261\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [0.0.0.0]\n  acl: open\nhttp:\n  listen: 0.0.0.0:80\n  admin_listen: 127.0.0.1:81\nbackend: userspace\ndefaults:\n  image: w\n  cow_size: 2GiB\npcs:\n  - name: pc-{1..20}\n";
    let m = parse(text).unwrap();
    let firsts: Vec<&str> = m
        .pcs
        .iter()
        .map(|p| m.gateway_order(&p.name)[0].name.as_str())
        .collect();
    let on_a = firsts.iter().filter(|g| **g == "gw-a").count();
    assert!(
        (5..=15).contains(&on_a),
        "the PCs spread over both: {firsts:?}"
    );
    // The order is the PC's own: the same however the gateways are listed.
    let swapped = text.replace("  - name: gw-a\n    iscsi: 10.0.0.1\n    http: 10.0.0.1:8080\n", "").replace("    iscsi: 10.0.0.2:3261\n", "    iscsi: 10.0.0.2:3261\n  - name: gw-a\n    iscsi: 10.0.0.1\n    http: 10.0.0.1:8080\n");
    let m2 = parse(&swapped).unwrap();
    for pc in &m.pcs {
        let names = |m: &Manifest| -> Vec<String> {
            m.gateway_order(&pc.name)
                .iter()
                .map(|g| g.name.clone())
                .collect()
        };
        assert_eq!(names(&m), names(&m2));
    }
    // Seen from gw-a, the manifest's listeners are gw-a's.
    let at_a = m.clone().as_gateway("gw-a").unwrap();
    assert_eq!(
        at_a.iscsi.as_ref().unwrap().portals[0].0.to_string(),
        "10.0.0.1:3260"
    );
    assert_eq!(
        at_a.http.as_ref().unwrap().listen.to_string(),
        "10.0.0.1:8080"
    );
    assert!(m
        .clone()
        .as_gateway("gw-c")
        .unwrap_err()
        .contains("gw-a, gw-b"));
}

#[test]
fn floating_portals_need_an_interface_on_every_gateway_and_an_ipv4_address() {
    let room = |a: &str, b: &str| {
        format!("images:\n  w:\n    storage: rbd\n    rbd: golden-w@v1\nceph:\n  pool: lab\ngateways:\n  - name: gw-a\n    iscsi: {a}\n  - name: gw-b\n    iscsi: {b}\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [0.0.0.0]\n  acl: open\nbackend: userspace\ndefaults:\n  image: w\n  cow_size: 2GiB\npcs:\n  - name: pc-{{1..4}}\n")
    };
    let m = parse(&room(
        "10.0.0.1\n    interface: eth0",
        "10.0.0.2\n    interface: enp3s0",
    ))
    .unwrap();
    assert_eq!(m.gateways[1].interface.as_deref(), Some("enp3s0"));
    // A floating portal is listened on once held, not bound from the start.
    let at_a = m.clone().as_gateway("gw-a").unwrap();
    assert!(at_a.iscsi.as_ref().unwrap().portals.is_empty());

    let half = parse(&room("10.0.0.1\n    interface: eth0", "10.0.0.2")).unwrap_err();
    assert!(
        half.to_string()
            .contains("either every gateway's portal floats"),
        "{half}"
    );
    let v6 = parse(&room(
        "\"[fd00::1]:3260\"\n    interface: eth0",
        "10.0.0.2\n    interface: eth0",
    ))
    .unwrap_err();
    assert!(
        v6.to_string().contains("gateways[0].interface")
            && v6.to_string().contains("only an IPv4 portal can float"),
        "{v6}"
    );
    let bad = parse(&room(
        "10.0.0.1\n    interface: \"eth0/1\"",
        "10.0.0.2\n    interface: eth0",
    ))
    .unwrap_err();
    assert!(
        bad.to_string().contains("not a network interface name"),
        "{bad}"
    );
}
