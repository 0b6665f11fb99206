//! The exports `cowctl serve` offers: one slot per PC with its engine and the connections
//! using it. Reset and down go through [`Slot::quiesce`]: new requests wait, every
//! connection is shut down and its thread finishes the request it is in (its reply may not
//! arrive), and only then is the engine swapped or closed.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::{Error, Result};

use std::net::IpAddr;

use crate::engine::PcDisk;
use crate::manifest::{NbdAcl, Pc};
use crate::nbd::{ExportInfo, Exports};

/// How long a reset or down waits for connections to finish their current request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A PC's disk being served (its COW's engine or its clone), with the manifest entry it
/// was opened from.
pub struct Served {
    pub disk: Arc<PcDisk>,
    pub pc: Pc,
    pub image_path: std::path::PathBuf,
    pub acl: NbdAcl,
    /// The COW (or clone) file the disk has open, as (device, inode): the path may come to lead
    /// elsewhere, or nowhere, while it is served.
    pub cow_file: Option<(u64, u64)>,
}

impl Served {
    /// What is wrong with the file at the PC's COW path while it is served: removed,
    /// replaced by another file, or cut shorter than the store the engine writes. None
    /// while it is the file the engine opened, whole.
    pub fn cow_file_problem(&self) -> Option<String> {
        let bytes = match self.disk.as_ref() {
            PcDisk::Cow(engine) => engine.usage().total_sectors * 512,
            PcDisk::Clone(clone) => clone.size(),
            PcDisk::Rbd(_) => return None, // no file: the cluster holds the clone
        };
        crate::room::status::cow_file_problem(&self.pc, self.cow_file?, bytes)
    }

    /// With `nbd.acl: ip`, a TCP client must come from the PC's own address; the unix
    /// socket (`peer` None) is root's and always allowed.
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        match (self.acl, peer) {
            (NbdAcl::Open | NbdAcl::OpenToLan, _) | (_, None) => true,
            (NbdAcl::Ip, Some(ip)) => self.pc.ip.is_some_and(|own| own == canonical(ip)),
        }
    }
}

/// An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub struct Slot {
    pub name: String,
    inner: Mutex<Inner>,
    changed: Condvar,
}

struct Inner {
    served: Option<Served>,
    paused: bool,
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    /// Requests under way that came without a connection (AoE frames).
    in_flight: usize,
}

struct Conn {
    peer: String,
    close: Box<dyn Fn() + Send>,
}

/// Removes its connection from the slot when the connection's thread ends.
pub struct ConnGuard {
    slot: Arc<Slot>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut inner = self.slot.lock();
        inner.conns.remove(&self.id);
        self.slot.changed.notify_all();
    }
}

impl Slot {
    pub fn new(name: &str, served: Served) -> Arc<Slot> {
        Arc::new(Slot {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                served: Some(served),
                paused: false,
                conns: BTreeMap::new(),
                next_id: 0,
                in_flight: 0,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The export as `peer` may see it: None when it is closed or not for that peer.
    pub fn info_for(&self, peer: Option<IpAddr>) -> Option<ExportInfo> {
        let inner = self.lock();
        inner
            .served
            .as_ref()
            .filter(|s| s.allows(peer))
            .map(export_info)
    }

    /// The engine and manifest entry being served, if any.
    pub fn with_served<T>(&self, f: impl FnOnce(&Served) -> T) -> Option<T> {
        self.lock().served.as_ref().map(f)
    }

    pub fn peers(&self) -> Vec<String> {
        self.lock().conns.values().map(|c| c.peer.clone()).collect()
    }

    /// Registers an NBD connection that entered transmission; waits while a reset is
    /// under way. None when the export was closed meanwhile or is not for this peer.
    pub fn attach(
        self: &Arc<Slot>,
        peer: String,
        peer_ip: Option<IpAddr>,
        close: Box<dyn Fn() + Send>,
    ) -> Option<(Arc<PcDisk>, ExportInfo, ConnGuard)> {
        self.attach_if(peer, close, |s| s.allows(peer_ip))
            .map(|(served, engine, guard)| (engine, served, guard))
    }

    /// Registers a connection whose access was checked by its own protocol (iSCSI's ACL
    /// and CHAP); waits while a reset is under way.
    pub fn attach_checked(
        self: &Arc<Slot>,
        peer: String,
        close: Box<dyn Fn() + Send>,
    ) -> Option<(Arc<PcDisk>, bool, ConnGuard)> {
        self.attach_if(peer, close, |_| true)
            .map(|(info, engine, guard)| (engine, info.read_only, guard))
    }

    fn attach_if(
        self: &Arc<Slot>,
        peer: String,
        close: Box<dyn Fn() + Send>,
        allowed: impl Fn(&Served) -> bool,
    ) -> Option<(ExportInfo, Arc<PcDisk>, ConnGuard)> {
        let mut inner = self.lock();
        while inner.paused {
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        let served = inner.served.as_ref().filter(|s| allowed(s))?;
        let (engine, info) = (served.disk.clone(), export_info(served));
        let id = inner.next_id;
        inner.next_id += 1;
        inner.conns.insert(id, Conn { peer, close });
        Some((
            info,
            engine,
            ConnGuard {
                slot: self.clone(),
                id,
            },
        ))
    }

    /// Runs one request that has no connection (an AoE frame) on the engine and whether it
    /// is read-only; None, without waiting, while a reset or down is under way or when
    /// nothing is served (the initiator retries). A quiesce waits for requests under way.
    pub fn io<T>(&self, f: impl FnOnce(&Arc<PcDisk>, bool) -> T) -> Option<T> {
        let (engine, read_only) = {
            let mut inner = self.lock();
            if inner.paused {
                return None;
            }
            let s = inner.served.as_ref()?;
            let got = (s.disk.clone(), s.pc.read_only);
            inner.in_flight += 1;
            got
        };
        let done = InFlight(self);
        let out = f(&engine, read_only);
        // The engine first: a quiesce that follows must hold its only reference.
        drop(engine);
        drop(done);
        Some(out)
    }

    /// Stops all I/O: closes every connection, waits until each has finished, then lets
    /// `f` decide what is served next (None closes the export) and whether it went well.
    /// Returns how long I/O was paused. `f` gets the old engine as the only reference to
    /// it, so dropping it closes the file.
    pub fn quiesce(
        &self,
        f: impl FnOnce(Option<Served>) -> (Option<Served>, Result<()>),
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut inner = self.lock();
        while inner.paused {
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        inner.paused = true;
        for c in inner.conns.values() {
            (c.close)();
        }
        let deadline = start + DRAIN_TIMEOUT;
        while !inner.conns.is_empty() || inner.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                inner.paused = false;
                self.changed.notify_all();
                return Err(Error::Drain {
                    pc: self.name.clone(),
                    seconds: DRAIN_TIMEOUT.as_secs(),
                });
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let (next, result) = f(inner.served.take());
        inner.served = next;
        inner.paused = false;
        self.changed.notify_all();
        result.map(|()| start.elapsed())
    }
}

impl Slot {
    /// A planned restart is about to replace this process: stops all I/O for good (a
    /// reset under way finishes first), closes the connections still here and waits until
    /// they and every request under way have finished, so nothing is acknowledged after
    /// the disks' last flush. False when that was not done by `deadline`.
    pub fn stop_for_handover(&self, deadline: Instant) -> bool {
        let mut inner = self.lock();
        let mut stopped = false;
        loop {
            if !stopped && !inner.paused {
                inner.paused = true;
                stopped = true;
                for c in inner.conns.values() {
                    (c.close)();
                }
            }
            if stopped && inner.conns.is_empty() && inner.in_flight == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Counts a connectionless request as finished when dropped.
struct InFlight<'a>(&'a Slot);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.in_flight -= 1;
        // Only a quiesce waits for this (and it sets `paused` first, under this lock): a
        // notify costs a system call on every frame otherwise.
        if inner.in_flight == 0 && inner.paused {
            self.0.changed.notify_all();
        }
    }
}

fn export_info(s: &Served) -> ExportInfo {
    let chunk = u32::try_from(s.disk.granularity()).unwrap_or(u32::MAX);
    ExportInfo {
        size: s.disk.size(),
        read_only: s.pc.read_only,
        // A power of two of at least 512, at most the largest payload: the chunk size.
        preferred_block: chunk.clamp(4096, crate::nbd::wire::MAX_PAYLOAD),
        description: format!("cowctl PC {} on golden image {}", s.pc.name, s.pc.image),
    }
}

/// Every PC's slot, by name.
#[derive(Default)]
pub struct Registry {
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Slot>> {
        self.read().values().cloned().collect()
    }

    pub fn insert(&self, slot: Arc<Slot>) {
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot.name.clone(), slot);
    }

    pub fn remove(&self, name: &str) {
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// A planned restart: every slot's I/O stopped for good and its connections ended, all
    /// by one `deadline`; the PCs whose connections did not end by then.
    pub fn stop_all_for_handover(&self, deadline: Instant) -> Vec<String> {
        let slots = self.all();
        let late = slots.iter().filter(|s| !s.stop_for_handover(deadline));
        late.map(|s| {
            format!(
                "{}: its connections did not end by the handover's deadline",
                s.name
            )
        })
        .collect()
    }

    /// Flushes every served PC's disk; the failures, each naming its PC.
    pub fn flush_all(&self) -> Vec<String> {
        let slots = self.all();
        let failed = slots.iter().filter_map(|slot| {
            let disk = slot.with_served(|s| s.disk.clone())?;
            disk.flush().err().map(|e| format!("{}: {e}", slot.name))
        });
        failed.collect()
    }

    /// A planned restart, after the flush: every rbd clone closed (its exclusive lock
    /// let go for the next process, which opens it anew).
    pub fn release_rbd(&self) {
        for slot in self.all() {
            let mut inner = slot.lock();
            if inner
                .served
                .as_ref()
                .is_some_and(|s| matches!(*s.disk, PcDisk::Rbd(_)))
            {
                inner.served = None;
            }
        }
        crate::rbdpc::disconnect();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The registry as one client sees it: with `nbd.acl: ip`, exports of other PCs do not
/// exist for it (the handshake answers "unknown export", LIST leaves them out).
pub struct PeerView<'a> {
    pub registry: &'a Registry,
    pub peer: Option<IpAddr>,
}

impl Exports for PeerView<'_> {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        self.registry.get(name)?.info_for(self.peer)
    }

    fn names(&self) -> Vec<String> {
        self.registry
            .all()
            .into_iter()
            .filter(|s| s.info_for(self.peer).is_some())
            .map(|s| s.name.clone())
            .collect()
    }
}
