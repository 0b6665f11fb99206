//! `cowctl doctor` on this machine: the backend it predicts and why, a port this test holds
//! named with this test's pid, a CHAP secret others may read failing with the chmod fix,
//! exit status 1, and `--json` as an array of findings.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;

mod common;

use common::free_port;

/// A room of two NBD PCs whose HTTP port `held` is taken, with a CHAP secret of mode 0644.
fn room(dir: &Path, held: u16) -> std::path::PathBuf {
    let secret = dir.join("chap.secret");
    std::fs::write(&secret, "a-long-enough-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(dir.join("cows")).unwrap();
    std::fs::File::create(dir.join("g.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let manifest = dir.join("room.yaml");
    std::fs::write(
        &manifest,
        format!(
            "images:\n  g:\n    path: {dir}/g.img\ndefaults:\n  image: g\n  cow_dir: {dir}/cows\n  cow_size: 64MiB\n  export: nbd\n\
             iscsi:\n  iqn_prefix: iqn.2024-01.lan.test\n  portals: [\"127.0.0.1:{iscsi}\"]\n  acl: open\n  chap:\n    username: room\n    secret_file: {secret}\n\
             nbd:\n  listen: 127.0.0.1:{nbd}\n\
             http:\n  listen: 127.0.0.1:{held}\n  admin_listen: 127.0.0.1:{admin}\n\
             pcs:\n  - name: pc-{{01..02}}\n",
            dir = dir.display(),
            iscsi = free_port(),
            nbd = free_port(),
            admin = free_port(),
            secret = secret.display(),
        ),
    )
    .unwrap();
    manifest
}

#[test]
fn doctor_names_the_backend_the_ports_holder_and_the_exposed_secret() {
    let dir = tempfile::tempdir().unwrap();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    let manifest = room(dir.path(), held);

    let out = Command::cargo_bin("cowctl")
        .unwrap()
        .arg("-f")
        .arg(&manifest)
        .arg("doctor")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |start: &str| {
        text.lines()
            .find(|l| l.contains(start))
            .unwrap_or_else(|| panic!("no line with {start:?} in:\n{text}"))
            .to_string()
    };

    let backend = line("backend: ");
    if Path::new("/dev/mapper/control").exists() {
        assert!(backend.contains("the kernel"), "{backend}");
    } else {
        assert!(
            backend.starts_with("ok    backend: cowctl serve's userspace engine will serve"),
            "{backend}"
        );
        assert!(
            backend.contains("no device-mapper: /dev/mapper/control is missing"),
            "{backend}"
        );
        assert!(backend.contains("dm_snapshot"), "{backend}");
    }

    let port = line(&format!("http.listen 127.0.0.1:{held}"));
    assert!(port.starts_with("FAIL  port: "), "{port}");
    let pid = std::process::id();
    // The kernel's name for this test's process: its binary's, cut to 15 bytes.
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert!(
        port.contains(&format!("is held by {}", comm.trim())),
        "this test's binary: {port}"
    );
    assert!(
        port.contains(&format!("(pid {pid})")),
        "this test's pid {pid}: {port}"
    );
    assert!(port.contains(&format!("kill {pid}")), "{port}");

    let secret = dir.path().join("chap.secret");
    let exposed = line("iscsi.chap.secret_file");
    assert_eq!(
        exposed,
        format!(
            "FAIL  secret: iscsi.chap.secret_file {0} is readable by others (mode 0644) — fix: chmod 600 {0}",
            secret.display()
        )
    );
    assert!(line("space: COWs of 2 PC(s)").starts_with("ok "), "{text}");
    assert!(line("nbd.listen").contains("is free"), "{text}");
    assert!(line("clock: ").contains("synchroni"), "{text}");

    let out = Command::cargo_bin("cowctl")
        .unwrap()
        .arg("-f")
        .arg(&manifest)
        .args(["doctor", "--json"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = checks.as_array().expect("an array of findings");
    assert_eq!(checks.len(), text.lines().count(), "one finding per line");
    let secret_check = checks
        .iter()
        .find(|c| c["area"] == "secret")
        .expect("the secret's finding");
    assert_eq!(secret_check["status"], "fail");
    assert_eq!(
        secret_check["fix"],
        format!("chmod 600 {}", secret.display())
    );
    assert!(checks.iter().all(|c| c["says"].is_string()));

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(holder);
    let out = Command::cargo_bin("cowctl")
        .unwrap()
        .arg("-f")
        .arg(&manifest)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(out.status.code(), Some(0), "warnings alone exit 0:\n{text}");
}
