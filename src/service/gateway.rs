//! Gateways (`gateways`, rbd storage): several `cowctl serve` in front of one cluster. A
//! PC's clone is held by the exclusive lock of the gateway that serves it, so no two serve
//! it. Every few seconds each gateway looks at the rbd PCs it does not serve:
//! - held by somebody: it asks for the lock. A live holder refuses; a dead one's lock is
//!   broken by librbd once the cluster has dropped its watch (`osd client watch timeout`,
//!   30 s by default), and the holder is blocklisted, so a gateway that was only cut off
//!   can never write again. This is how a dead gateway's PCs move.
//! - held by nobody: its first gateway serves it (after an apply, or back after a
//!   takeover once the other gateway let go); any other waits until it has been free for
//!   [`GRACE`] × its rank, for a first gateway that never came.
//!
//! A gateway the cluster cut off (blocklisted: it was taken for dead, and its PCs taken
//! over) finds out from its PCs' I/O: it lets go of every PC it served on that connection
//! and connects anew, then looks at them as at any other (serving those nobody took).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::exports::Slot;
use super::{disks, Service};
use crate::engine::PcDisk;
use crate::manifest::{Pc, Storage};

/// How long an rbd PC must be nobody's before its second gateway serves it.
const GRACE: Duration = Duration::from_secs(30);

/// How often the PCs are looked at: `COWCTL_TAKEOVER_INTERVAL_MS` (a test knob), else 2 s.
pub(super) fn interval() -> Duration {
    std::env::var("COWCTL_TAKEOVER_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis)
}

/// Runs for the life of the service.
pub fn watch(service: Arc<Service>) {
    let mut free_since: HashMap<String, Instant> = HashMap::new();
    let mut let_go = BTreeSet::new();
    loop {
        std::thread::sleep(interval());
        service.take_over_round(&mut free_since, &mut let_go);
    }
}

impl Service {
    fn take_over_round(
        &self,
        free_since: &mut HashMap<String, Instant>,
        let_go: &mut BTreeSet<String>,
    ) {
        let_go.extend(self.let_go_if_cut_off());
        let m = self.manifest();
        let Some(here) = m.here.clone() else {
            // No other gateways: what it let go is its own to serve again, once it can.
            let_go.retain(|name| {
                let Some(pc) = m.pc(name) else { return false };
                match self.serve_here(&m, pc) {
                    Ok(()) => {
                        tracing::info!(pc = %pc.name, "serves {} again", pc.name);
                        false
                    }
                    Err(e) => {
                        tracing::warn!(pc = %pc.name, "could not serve {} again (tried again in a moment): {e}", pc.name);
                        true
                    }
                }
            });
            return;
        };
        // With gateways, what it let go is looked at below like any other PC.
        let_go.clear();
        let Ok(Some(cluster)) = crate::rbdpc::shared(&m) else {
            return;
        };
        let rbd = m.pcs.iter().filter(|p| m.storage_of(p) == Storage::Rbd);
        for pc in rbd {
            if self.registry.get(&pc.name).is_some() {
                free_since.remove(&pc.name);
                self.iscsi.note_holder(&pc.name, None);
                continue;
            }
            let rank = m
                .gateway_order(&pc.name)
                .iter()
                .position(|g| g.name == here)
                .unwrap_or(usize::MAX);
            let holder = match cluster.holder(&m, pc) {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(pc = %pc.name, "gateway: {e}");
                    continue;
                }
            };
            // What a login for it at this gateway is redirected by.
            self.iscsi.note_holder(&pc.name, holder.as_deref());
            let free = free_since
                .entry(pc.name.clone())
                .or_insert_with(Instant::now);
            let due = GRACE.saturating_mul(u32::try_from(rank).unwrap_or(u32::MAX));
            let ask = holder.is_some() || rank == 0 || free.elapsed() >= due;
            if holder.is_some() {
                free_since.remove(&pc.name);
            }
            if !ask {
                continue;
            }
            match self.serve_here(&m, pc) {
                Ok(()) => {
                    let was = holder.map_or_else(|| "nobody".into(), |h| h.to_string());
                    tracing::info!(pc = %pc.name, "gateway {here} serves {} now (it was held by {was})", pc.name);
                    free_since.remove(&pc.name);
                }
                Err(super::Error::Rbd(e))
                    if matches!(*e, crate::rbdpc::Error::HeldElsewhere { .. }) =>
                {
                    tracing::debug!(pc = %pc.name, "gateway: {e}");
                }
                Err(e) => {
                    tracing::warn!(pc = %pc.name, "gateway {here} could not serve {}: {e}", pc.name)
                }
            }
        }
    }

    /// When the cluster has cut this gateway's client off, lets go of every rbd PC it
    /// served (their handles can do nothing more; no flush) and, once all are let go, drops
    /// the connection, so the next look connects anew. Returns the PCs it let go of.
    ///
    /// Found out from the PCs' I/O, and by a read of one served clone each round: after a
    /// takeover the PCs' clients have gone to the other gateway, and nothing else would
    /// touch the dead handles.
    fn let_go_if_cut_off(&self) -> Vec<String> {
        let rbd_disk = |slot: &Slot| {
            slot.with_served(|sv| match &*sv.disk {
                PcDisk::Rbd(_) => Some(sv.disk.clone()),
                _ => None,
            })
            .flatten()
        };
        let cut = |disk: &Arc<PcDisk>| matches!(&**disk, PcDisk::Rbd(d) if d.is_cut_off());
        let slots: Vec<(Arc<Slot>, Arc<PcDisk>)> = (self.registry.all().into_iter())
            .filter_map(|s| rbd_disk(&s).map(|d| (s, d)))
            .collect();
        if let Some((_, disk)) = slots.first() {
            let mut probe = [0u8; 512];
            let _ = disk.read_at(&mut probe, 0);
        }
        if !slots.iter().any(|(_, d)| cut(d)) {
            return Vec::new();
        }
        // The probe ran without it: a cluster that is slow to answer holds up no command.
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        let mut all = true;
        for (slot, disk) in slots {
            drop(disk);
            // Every rbd disk opened on the connection is cut off with it.
            let on_rbd = slot.with_served(|sv| matches!(&*sv.disk, PcDisk::Rbd(_)));
            if on_rbd != Some(true) {
                continue;
            }
            match slot.quiesce(|_| (None, Ok(()))) {
                Ok(_) => {
                    self.registry.remove(&slot.name);
                    gone.push(slot.name.clone());
                }
                // Its connections did not stop: tried again next round.
                Err(e) => {
                    tracing::warn!(pc = %slot.name, "could not let go of {}: {e}", slot.name);
                    all = false;
                }
            }
        }
        if all {
            crate::rbdpc::disconnect();
        }
        tracing::warn!(
            "the cluster cut this gateway off (blocklisted; another gateway may have taken its PCs): let go of {}{}",
            gone.join(", "),
            if all { "; connecting anew" } else { "" }
        );
        gone
    }

    /// Serves `pc` here (its clone's lock taken), as apply's Serve step does.
    fn serve_here(&self, m: &crate::manifest::Manifest, pc: &Pc) -> super::Result<()> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if self.registry.get(&pc.name).is_some() {
            return Ok(());
        }
        // A PC whose first gateway never came has no clone yet: the one taking it makes it.
        let cluster = crate::rbdpc::cluster_of(m, pc)?;
        if !cluster.has_disk(m, pc)? {
            if let Err(e) = cluster.make_disk(m, pc) {
                // Another gateway may have made it meanwhile.
                if !cluster.has_disk(m, pc)? {
                    return Err(e.into());
                }
            }
        }
        let served = disks::open(m, pc)?;
        self.registry.insert(Slot::new(&pc.name, served));
        self.aoe.announce(&pc.name);
        Ok(())
    }
}
