//! cowctl's output read by something that stops early (`cowctl --json status | head`): the
//! command ends quietly, as other command-line tools do, instead of panicking on the closed
//! pipe; `status --watch` ends too instead of redrawing for nobody.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A room of 300 PCs on the userspace backend with no service running: `status` prints a
/// row per PC from the COW files alone (none exist yet).
fn room() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("golden.img"), vec![0u8; 1 << 20]).unwrap();
    let pcs: String = (1..=300)
        .map(|i| format!("  - name: pc-{i:03}\n"))
        .collect();
    std::fs::write(
        d.join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {d}/cow\n  cow_size: 16MiB\n  export: nbd\n\
             nbd:\n  listen: 127.0.0.1:{port}\n  socket: {d}/nbd.sock\npcs:\n{pcs}",
            d = d.display(),
            port = common::free_port()
        ),
    )
    .unwrap();
    std::fs::create_dir(d.join("cow")).unwrap();
    dir
}

/// Reads a little of the child's output, closes the pipe, and waits for it (10 s at most).
fn read_a_little_then_leave(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("cowctl went on after its reader left");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn status_whose_reader_leaves_early_ends_without_a_panic() {
    let dir = room();
    for args in [&["--json", "status"][..], &["status"][..]] {
        let child = common::room_command(dir.path(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, stderr) = read_a_little_then_leave(child);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.is_empty(),
            "{args:?} says nothing of the pipe: {stderr}"
        );
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
    }
}

#[test]
fn status_watch_ends_when_its_reader_leaves() {
    let dir = room();
    let child = common::room_command(dir.path(), &["status", "--watch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = read_a_little_then_leave(child);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(status.code(), Some(101), "{stderr}");
}
