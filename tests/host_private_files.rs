//! A PC's COW holds everything it wrote: cowctl makes COWs and their golden-image records
//! readable by their owner only, leaves the mode of files that are there alone, and says in
//! `status` when other users can read one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A userspace room with one NBD PC, applied.
fn room(d: &Path) {
    let dd = d.display();
    std::fs::write(d.join("golden.img"), vec![0x44; 4 << 20]).unwrap();
    std::fs::create_dir(d.join("cow")).unwrap();
    std::fs::write(
        d.join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {dd}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {dd}/cow\n  cow_size: 8MiB\n  chunk: 4KiB\n  export: nbd\n\
             nbd:\n  listen: 127.0.0.1:{}\n  socket: {dd}/nbd.sock\n\
             pcs:\n  - name: pc-1\n",
            common::free_port()
        ),
    )
    .unwrap();
    common::room_cowctl(d, &["apply"]);
}

struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = common::room_command(self.0, &["down"]).output();
    }
}

#[test]
fn cows_and_records_are_private_and_status_names_one_that_is_not() {
    // What a default umask lets through: a file made without a mode of its own is 0644.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    room(d);
    let _down = Down(d);
    let (cow, record) = (d.join("cow/pc-1.cow"), d.join("cow/pc-1.cow.golden"));
    assert_eq!((mode(&cow), mode(&record)), (0o600, 0o600));
    assert!(!common::room_cowctl(d, &["status"]).contains("note:"));

    // A COW and record made before (or by hand) are the admin's: said, not changed.
    chmod(&cow, 0o644);
    chmod(&record, 0o640);
    let shown = common::room_cowctl(d, &["status"]);
    for want in [
        format!(
            "note: pc-1: COW {} is readable by other users (mode 0644): chmod 600 it",
            cow.display()
        ),
        format!(
            "note: pc-1: golden-image record {} is readable by other users (mode 0640): chmod 600 it",
            record.display()
        ),
    ] {
        assert!(shown.contains(&want), "{want}\nnot in\n{shown}");
    }
    let rows: serde_json::Value =
        serde_json::from_str(&common::room_cowctl(d, &["--json", "status"])).unwrap();
    assert_eq!(rows[0]["notes"].as_array().unwrap().len(), 2, "{rows}");
    assert_eq!((mode(&cow), mode(&record)), (0o644, 0o640));

    // A reset makes a new COW (private) and rewrites the record, whose mode stays.
    common::room_cowctl(d, &["reset", "pc-1"]);
    assert_eq!((mode(&cow), mode(&record)), (0o600, 0o640));

    // And so does `cowctl cow create`.
    let made = d.join("made.cow");
    common::room_cowctl(
        d,
        &["cow", "create", made.to_str().unwrap(), "--size", "8MiB"],
    );
    assert_eq!(mode(&made), 0o600);
}

#[test]
fn a_run_directory_others_may_write_to_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("run")).unwrap();
    chmod(&d.join("run"), 0o777);
    let dd = d.display();
    std::fs::write(d.join("golden.img"), vec![0x44; 4 << 20]).unwrap();
    std::fs::create_dir(d.join("cow")).unwrap();
    std::fs::write(
        d.join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {dd}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {dd}/cow\n  cow_size: 8MiB\n  export: nbd\n\
             nbd:\n  listen: 127.0.0.1:{}\n  socket: {dd}/nbd.sock\npcs:\n  - name: pc-1\n",
            common::free_port()
        ),
    )
    .unwrap();
    let _down = Down(d);
    let out = common::room_command(d, &["apply"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied with a 0777 run directory");
    assert!(
        err.contains(&format!(
            "the run directory {dd}/run is writable by every user (mode 0777)"
        )) && err.contains("chmod 700 it"),
        "{err}"
    );
    assert!(!d.join("run/serve.pid").exists() && !d.join("cow/pc-1.cow").exists());
}
