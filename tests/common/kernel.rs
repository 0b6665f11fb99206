//! Driving the real kernel from tests that run in the VM (scripts/test-kernel.sh):
//! loop devices, dm snapshots and direct I/O. Every test resource is named `cowtest-*`.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cowctl::dm::{SnapshotStatus, StatusLine, TableLine};

/// Fails (never skips) when not inside the test VM.
pub fn require_vm() {
    assert!(
        std::env::var_os("COWCTL_IN_VM").is_some(),
        "kernel tests need the real kernel: run scripts/test-kernel.sh"
    );
}

pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn cowctl(args: &[&str]) -> String {
    sh(env!("CARGO_BIN_EXE_cowctl"), args)
}

pub fn modprobe(module: &str) {
    sh("modprobe", &[module]);
}

/// Appends a line the kernel printed to the results folder, for the parser's round-trip data.
pub fn record_line(line: &str) {
    if let Some(dir) = std::env::var_os("COWCTL_RESULTS") {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join("dm-lines.txt"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let mut args = vec!["-f", "--show"];
        if read_only {
            args.push("-r");
        }
        let f = file.to_str().unwrap();
        args.push(f);
        Loop {
            dev: sh("losetup", &args).trim().to_string(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A dm snapshot over two loop devices. Removed on drop.
pub struct Snapshot {
    pub name: String,
    pub node: PathBuf,
    _origin: Loop,
    _cow: Loop,
}

impl Snapshot {
    pub fn create(
        name: &str,
        golden: &Path,
        cow: &Path,
        mode: &str,
        chunk_sectors: u32,
    ) -> Snapshot {
        let origin = Loop::attach(golden, true);
        let cow_loop = Loop::attach(cow, false);
        let sectors = std::fs::metadata(golden).unwrap().len() / 512;
        let table = format!(
            "0 {sectors} snapshot {} {} {mode} {chunk_sectors}",
            origin.dev, cow_loop.dev
        );
        sh(
            "dmsetup",
            &["create", "--noudevsync", name, "--table", &table],
        );
        // No udev: find the node devtmpfs made for the dm device.
        let minor = sh(
            "dmsetup",
            &["info", "-c", "--noheadings", "-o", "minor", name],
        );
        let node = PathBuf::from(format!("/dev/dm-{}", minor.trim()));
        assert!(node.exists(), "{} missing", node.display());
        let s = Snapshot {
            name: name.to_string(),
            node,
            _origin: origin,
            _cow: cow_loop,
        };
        let t = sh("dmsetup", &["table", name]);
        record_line(t.trim());
        let parsed: TableLine = t.trim().parse().unwrap();
        assert_eq!(parsed.to_string(), t.trim(), "table line round trip");
        s
    }

    /// Parses `dmsetup status` with the typed parser and checks it prints back the same.
    pub fn status(&self) -> SnapshotStatus {
        let line = sh("dmsetup", &["status", &self.name]);
        let line = line.trim();
        record_line(line);
        let parsed: StatusLine = line.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.to_string(), line, "status line round trip");
        parsed.status
    }

    pub fn open(&self, direct: bool) -> File {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            o.custom_flags(nix::libc::O_DIRECT);
        }
        o.open(&self.node).unwrap()
    }

    /// The whole device, read with O_DIRECT so no page cache hides what the kernel holds.
    pub fn read_all(&self) -> Vec<u8> {
        let f = self.open(true);
        let len = cowctl::backing::file_or_device_size(&f).unwrap() as usize;
        let mut buf = AlignedBuf::new(len);
        f.read_exact_at(buf.as_mut(), 0).unwrap();
        buf.as_ref().to_vec()
    }

    pub fn remove(self) {}
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let ok = Command::new("dmsetup")
            .args(["remove", "--noudevsync", &self.name])
            .status()
            .map(|s| s.success());
        assert!(
            matches!(ok, Ok(true)) || std::thread::panicking(),
            "dmsetup remove {} failed",
            self.name
        );
    }
}

/// A 4096-aligned buffer for O_DIRECT.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        AlignedBuf { raw, start, len }
    }
    pub fn from(data: &[u8]) -> Self {
        let mut b = Self::new(data.len());
        b.as_mut().copy_from_slice(data);
        b
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
    pub fn as_ref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// A small deterministic generator, so failures replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
