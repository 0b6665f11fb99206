//! The userspace backend's AoE target: one raw socket on the manifest's `aoe.interface`,
//! one shelf.slot per `export: aoe` PC with the PC's `aoe_macs` as its Mac Mask List, and
//! every ATA request run on the PC's slot, so a reset or down pauses it (frames that
//! arrive meanwhile get no answer, and the initiator's retries reach the new COW).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::exports::Registry;
use crate::aoe::ata::Identity;
use crate::aoe::socket::{Socket, MAX_FRAME};
use crate::aoe::wire::{Header, FLAG_RESPONSE};
use crate::aoe::{Port, Unit};
use crate::disk::EngineDisk;
use crate::manifest::{Export, Mac, Manifest};

/// Requests the initiator may keep outstanding (Query Config's Buffer Count); the socket's
/// receive buffer holds this many jumbo frames.
const BUFFERS: u16 = 64;
/// Threads answering frames: the engine's I/O runs on them in parallel.
const WORKERS: usize = 8;
/// How long an initiator is listed in `status` after its last frame.
const SEEN_FOR: Duration = Duration::from_secs(300);

/// A PC's target and the initiators seen lately.
struct Entry {
    pc: String,
    macs: Vec<Mac>,
    unit: Arc<Unit>,
    seen: Mutex<HashMap<[u8; 6], Instant>>,
}

pub struct AoeService {
    registry: Arc<Registry>,
    interface: Option<String>,
    entries: RwLock<BTreeMap<(u16, u8), Arc<Entry>>>,
    socket: OnceLock<Arc<Socket>>,
    mac: OnceLock<[u8; 6]>,
    mtu: AtomicUsize,
}

impl AoeService {
    pub fn new(registry: Arc<Registry>, interface: Option<String>) -> Arc<AoeService> {
        Arc::new(AoeService {
            registry,
            interface,
            entries: RwLock::new(BTreeMap::new()),
            socket: OnceLock::new(),
            mac: OnceLock::new(),
            mtu: AtomicUsize::new(1500),
        })
    }

    pub fn interface(&self) -> Option<&str> {
        self.interface.as_deref()
    }

    /// Takes the targets of a newly applied manifest. A target whose PC, address and MACs
    /// did not change keeps its config string, reservation and edited Mac Mask List.
    pub fn set_manifest(&self, m: &Manifest) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for pc in &m.pcs {
            let Export::Aoe { shelf, slot, macs } = &pc.export else {
                continue;
            };
            let kept = entries
                .get(&(*shelf, *slot))
                .filter(|e| e.pc == pc.name && &e.macs == macs)
                .cloned();
            let entry = kept.unwrap_or_else(|| {
                let allowed: Vec<[u8; 6]> = macs.iter().map(|m| m.0).collect();
                Arc::new(Entry {
                    pc: pc.name.clone(),
                    macs: macs.clone(),
                    unit: Arc::new(Unit::new(
                        *shelf,
                        *slot,
                        Identity::for_pc(&pc.name),
                        &allowed,
                    )),
                    seen: Mutex::new(HashMap::new()),
                })
            });
            next.insert((*shelf, *slot), entry);
        }
        *entries = next;
    }

    fn port(&self) -> Option<Port> {
        Some(Port {
            mac: *self.mac.get()?,
            mtu: self.mtu.load(Ordering::Relaxed),
            buffers: BUFFERS,
        })
    }

    /// Opens the socket and starts answering; nothing without an `aoe` section.
    pub fn listen(self: &Arc<Self>, manifest_path: &std::path::Path) -> Result<Option<String>> {
        let Some(interface) = &self.interface else {
            return Ok(None);
        };
        let what = || {
            format!(
                "cannot serve AoE on {interface} (aoe.interface in {})",
                manifest_path.display()
            )
        };
        let socket = Arc::new(Socket::open(interface).with_context(what)?);
        let _ = self.mac.set(socket.mac().with_context(what)?);
        self.mtu
            .store(socket.mtu().with_context(what)?, Ordering::Relaxed);
        let _ = self.socket.set(socket.clone());
        for i in 0..WORKERS {
            let me = self.clone();
            let socket = socket.clone();
            std::thread::Builder::new()
                .name(format!("aoe {i}"))
                .spawn(move || me.answer_frames(&socket))?;
        }
        Ok(Some(interface.clone()))
    }

    /// Tells the allowed initiators that a PC's target is there (as vblade does when it
    /// starts), so they need not wait for their next discovery.
    pub fn announce(&self, pc: &str) {
        let (Some(socket), Some(port)) = (self.socket.get(), self.port()) else {
            return;
        };
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        for e in entries.values().filter(|e| e.pc == pc) {
            for frame in e.unit.announcements(&port) {
                if let Err(err) = socket.send(&frame) {
                    tracing::warn!("AoE: cannot announce {pc}: {err}");
                }
            }
        }
    }

    fn answer_frames(&self, socket: &Socket) {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            match socket.recv(&mut buf) {
                Ok(Some(n)) => self.answer(socket, &buf[..n]),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("AoE: reading {} failed: {e}", socket.interface());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn answer(&self, socket: &Socket, frame: &[u8]) {
        let Some(h) = Header::parse(frame) else {
            return;
        };
        if h.flags & FLAG_RESPONSE != 0 {
            return; // another target's answer, or our own on `lo`
        }
        if h.command == crate::aoe::wire::command::QUERY_CONFIG {
            // Discovery is rare: a good time to notice a changed MTU.
            if let Ok(mtu) = socket.mtu() {
                self.mtu.store(mtu, Ordering::Relaxed);
            }
        }
        let Some(port) = self.port() else { return };
        let targets: Vec<Arc<Entry>> = {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            entries
                .values()
                .filter(|e| e.unit.addressed(&h))
                .cloned()
                .collect()
        };
        for e in targets {
            if !e.unit.admits(&h.src) {
                continue; // a stranger: silence
            }
            let Some(slot) = self.registry.get(&e.pc) else {
                continue; // not served (yet): no disk there
            };
            let reply = slot.io(|engine, read_only| {
                let disk = EngineDisk {
                    engine: engine.clone(),
                    read_only,
                };
                e.unit.answer(&h, frame, &disk, &port)
            });
            let Some(Some(reply)) = reply else { continue };
            e.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h.src, Instant::now());
            if let Err(err) = socket.send(&reply) {
                tracing::warn!("AoE: cannot answer {}: {err}", Mac(h.src));
            }
        }
    }

    /// The initiators that talked to a PC's target lately, for `status`.
    pub fn peers(&self, pc: &str) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut out = Vec::new();
        for e in entries.values().filter(|e| e.pc == pc) {
            let mut seen = e.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|_, at| now.duration_since(*at) < SEEN_FOR);
            out.extend(seen.keys().map(|mac| format!("AoE {}", Mac(*mac))));
        }
        out.sort();
        out
    }
}
