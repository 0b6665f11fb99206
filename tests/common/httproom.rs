//! The room of the HTTP tests: two PCs served over NBD on the userspace backend, with the
//! HTTP service's PC-facing and admin listeners on loopback. Requests come from the PCs'
//! own addresses (127.0.0.11, 127.0.0.12) or from strangers.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::Value;

use super::room::{self, Golden, Http, Pc, RoomBuilder};

pub const TOKEN: &str = "tok-5f1c9a0e7d2b";
pub const PC1: &str = "127.0.0.11";
pub const PC2: &str = "127.0.0.12";
pub const STRANGER: &str = "127.0.0.99";

/// The common room with the addresses the tests ask.
pub struct Room {
    pub room: room::Room,
    pub nbd: u16,
    pub pcs: SocketAddr,
    pub admin: SocketAddr,
}

impl std::ops::Deref for Room {
    type Target = room::Room;
    fn deref(&self) -> &room::Room {
        &self.room
    }
}

/// Two PCs on a 16 MiB golden image with 4 MiB COWs; pc-1 may reset itself and
/// auto-extends (at 50 %, by 100 %, up to 16 MiB).
pub fn builder() -> RoomBuilder {
    RoomBuilder::userspace()
        .golden(Golden::Fill(0x5a, 16 << 20))
        .version("7")
        .cow("4MiB", "4KiB")
        .export("nbd")
        .defaults("  identity: {site: north}\n")
        .http(Http::new().token(TOKEN))
        .pc(Pc::new("pc-1")
            .ip(PC1)
            .flag("self_reset")
            .mac("52:54:00:00:00:01")
            .set("hostname", "lab-a1")
            .set("identity", "{room: \"101\", domain: lab.example}")
            .set("autoextend", "{threshold: 50, step: 100, max: 16MiB}"))
        .pc(Pc::new("pc-2").ip(PC2))
}

impl Room {
    /// The room of [`builder`], applied.
    pub fn new() -> Room {
        Room::with_env(&[])
    }

    /// The same room, its service started with these environment variables.
    pub fn with_env(env: &[(&str, &str)]) -> Room {
        let room = builder().build();
        room.apply_with_env(env);
        Room {
            nbd: room.nbd_port(),
            pcs: room.http(),
            admin: room.admin(),
            room,
        }
    }

    /// One PC's row of `cowctl --json status`.
    pub fn status(&self, pc: &str) -> Value {
        self.room.status_of(pc)
    }

    /// Writes `mib` MiB at `at_mib` MiB through NBD; false when the disk refused.
    pub fn write(&self, pc: &str, at_mib: u64, mib: u64) -> bool {
        self.room.nbd_write_mib(pc, at_mib, mib)
    }
}
