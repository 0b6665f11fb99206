//! The room of the HTTP tests: two PCs served over NBD on the userspace backend, with the
//! HTTP service's PC-facing and admin listeners on loopback. Requests come from the PCs'
//! own addresses (127.0.0.11, 127.0.0.12) or from strangers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super as common;

pub const TOKEN: &str = "tok-5f1c9a0e7d2b";
pub const PC1: &str = "127.0.0.11";
pub const PC2: &str = "127.0.0.12";
pub const STRANGER: &str = "127.0.0.99";

pub struct Room {
    pub dir: tempfile::TempDir,
    pub nbd: u16,
    pub pcs: SocketAddr,
    pub admin: SocketAddr,
}

impl Room {
    /// Two PCs on a 16 MiB golden image with 4 MiB COWs; pc-1 may reset itself and
    /// auto-extends (at 50 %, by 100 %, up to 16 MiB).
    pub fn new() -> Room {
        Room::with_env(&[])
    }

    /// The same room, its service started with these environment variables.
    pub fn with_env(env: &[(&str, &str)]) -> Room {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("golden.img"), vec![0x5a; 16 << 20]).unwrap();
        std::fs::create_dir(dir.path().join("cow")).unwrap();
        common::write_private(&dir.path().join("token"), &format!("{TOKEN}\n"));
        let (nbd, pcs, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        std::fs::write(
            dir.path().join("room.yaml"),
            format!(
                "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n    version: \"7\"\n\
                 defaults:\n  image: g\n  cow_dir: {d}/cow\n  cow_size: 4MiB\n  chunk: 4KiB\n  export: nbd\n\
                 \x20 identity: {{site: north}}\n\
                 nbd:\n  listen: 127.0.0.1:{nbd}\n  socket: {d}/nbd.sock\n\
                 http:\n  listen: 127.0.0.1:{pcs}\n  admin_listen: 127.0.0.1:{admin}\n  token_file: {d}/token\n\
                 pcs:\n  - name: pc-1\n    ip: {PC1}\n    self_reset: true\n    mac: 52:54:00:00:00:01\n\
                 \x20   hostname: lab-a1\n    identity: {{room: \"101\", domain: lab.example}}\n\
                 \x20   autoextend: {{threshold: 50, step: 100, max: 16MiB}}\n\
                 \x20 - name: pc-2\n    ip: {PC2}\n"
            ),
        )
        .unwrap();
        let room = Room {
            dir,
            nbd,
            pcs: SocketAddr::from(([127, 0, 0, 1], pcs)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        };
        let out = common::room_command(room.dir.path(), &["apply"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        room
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cowctl(&self, args: &[&str]) -> String {
        common::room_cowctl(self.dir.path(), args)
    }

    pub fn status(&self, pc: &str) -> Value {
        let all: Value = serde_json::from_str(&self.cowctl(&["--json", "status"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == pc)
            .unwrap()
            .clone()
    }

    /// Writes `mib` MiB at `at_mib` MiB through NBD; false when the disk refused.
    pub fn write(&self, pc: &str, at_mib: u64, mib: u64) -> bool {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P 0x33 {at_mib}M {mib}M"))
            .arg(format!("nbd://127.0.0.1:{}/{pc}", self.nbd))
            .output()
            .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("error"))
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("run/serve.log")).unwrap()
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let _ = common::room_command(self.dir.path(), &["down"]).output();
    }
}
