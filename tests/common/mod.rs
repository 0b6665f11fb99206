//! Builders for COW images, shared by the integration tests.
#![allow(dead_code)]
#![allow(clippy::cast_possible_truncation)] // tests index small in-memory images

pub mod aoe;
pub mod aoenic;
pub mod ceph;
pub mod devtools;
pub mod disk;
pub mod http;
pub mod httproom;
pub mod iscsi;
pub mod net;
pub mod pc;
pub mod qemuio;
pub mod realos;
pub mod room;

use cowctl::cow::{DiskException, Geometry, Header};

/// An in-memory COW image of `chunks` chunks with a header and the given area entries.
pub struct CowImage {
    pub geometry: Geometry,
    pub bytes: Vec<u8>,
}

impl CowImage {
    pub fn new(chunk_sectors: u32, chunks: u64) -> Self {
        let geometry = Geometry::new(chunk_sectors).unwrap();
        let mut bytes = vec![0u8; (chunks * geometry.chunk_bytes()) as usize];
        bytes[..16].copy_from_slice(&Header::new(chunk_sectors, true).encode());
        CowImage { geometry, bytes }
    }

    pub fn header(mut self, h: Header) -> Self {
        self.bytes[..16].copy_from_slice(&h.encode());
        self
    }

    /// Puts entry `index` of area `area`.
    pub fn entry(mut self, area: u64, index: u64, old_chunk: u64, new_chunk: u64) -> Self {
        let at = (self.geometry.offset(self.geometry.area_location(area)) + index * 16) as usize;
        DiskException {
            old_chunk,
            new_chunk,
        }
        .encode_into(&mut self.bytes[at..at + 16]);
        self
    }

    /// Fills area `area` completely with entries pointing at its own data chunks.
    pub fn full_area(mut self, area: u64) -> Self {
        let per = self.geometry.exceptions_per_area();
        let first = self.geometry.area_location(area) + 1;
        for i in 0..per {
            self = self.entry(area, i, 1_000_000 + area * per + i, first + i);
        }
        self
    }

    pub fn truncate(mut self, len: usize) -> Self {
        self.bytes.truncate(len);
        self
    }
}
pub mod kernel;

/// Writes a secret file only its owner can read, as cowctl demands of secrets.
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Fails with the first byte where two disks differ, for a readable failure.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} is {} but should be {}", got[i], want[i]);
    }
}

/// `disk` with `len` bytes from `at` set to `byte`: what a disk reads after that write.
pub fn filled(mut disk: Vec<u8>, byte: u8, at: usize, len: usize) -> Vec<u8> {
    disk[at..at + len].fill(byte);
    disk
}

/// `qemu-img convert -f raw -O FORMAT FROM TO`.
pub fn qemu_img_convert(from: &str, format: &str, to: &str) {
    kernel::sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", format, from, to],
    );
}

/// A TCP port that nothing holds right now, and that this test process has not handed
/// out before. It is taken below the kernel's ephemeral range (32768 and up), where the
/// kernel never picks a port for an outgoing connection: a port from `bind(:0)`, released
/// and bound again later, could meanwhile be another test's client port, and the service's
/// `0.0.0.0:port` then fails with "address in use".
pub fn free_port() -> u16 {
    const FIRST: u16 = 20000;
    const SPAN: u16 = 12000;
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    // Each test binary starts elsewhere in the span, so two runs side by side rarely meet.
    let mut offset = next.unwrap_or((std::process::id() % u32::from(SPAN)) as u16);
    for _ in 0..SPAN {
        let port = FIRST + offset;
        offset = (offset + 1) % SPAN;
        let free = ["0.0.0.0", "127.0.0.1"]
            .iter()
            .all(|host| std::net::TcpListener::bind((*host, port)).is_ok());
        if free {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free TCP port in {FIRST}..{}", FIRST + SPAN)
}

/// Starts qemu-io writing each pattern in turn, `count` writes of `len` at `offset`
/// (qemu-io's units, e.g. "8M"), with no flush: writes in flight for a kill test.
pub fn spawn_qemu_io_writer(
    uri: &str,
    patterns: &[u8],
    count: usize,
    offset: &str,
    len: &str,
) -> std::process::Child {
    let mut args = vec!["-f".to_string(), "raw".to_string()];
    for p in patterns.iter().cycle().take(count) {
        args.extend(["-c".to_string(), format!("write -P {p} {offset} {len}")]);
    }
    args.push(uri.to_string());
    std::process::Command::new("qemu-io")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `cowctl` for the test room in `dir`: run directory `dir/run`, manifest `dir/room.yaml`.
pub fn room_command(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cowctl"));
    c.args(args)
        .env("COWCTL_RUN_DIR", dir.join("run"))
        .env("COWCTL_MANIFEST", dir.join("room.yaml"));
    c
}

/// Runs `cowctl` for the room and returns its standard output; panics with its stderr
/// unless it exited 0 or 2 (2: a PC is over the warning threshold).
pub fn room_cowctl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = room_command(dir, args).output().unwrap();
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "cowctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
