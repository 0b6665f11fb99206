//! `storage: rbd`: a PC's disk is a clone, in the ceph section's pool, of its image's
//! protected snapshot. Here: the clone's name, making it, checking it is a clone of the
//! snapshot the manifest names (the guard), opening it under the exclusive lock that keeps
//! any other cowctl from writing it, counting its fill, and the swap a reset makes.

use crate::base::machine::host_name;
use std::sync::Arc;
use std::time::Duration;

use crate::cow::Usage;
use crate::engine::rbddisk::RbdDisk;
use crate::manifest::{CephConfig, Manifest, Pc, RbdSnapshot};
use crate::rbd::{Image, Parent, Pool};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rbd(#[from] crate::rbd::Error),
    #[error("{pc} is on rbd storage, but the manifest has no ceph section")]
    NoCeph { pc: String },
    #[error("the image {image} is not in the cluster: import the golden disk (`rbd import FILE {image}`), then snapshot and protect it")]
    NoImage { image: String },
    #[error("the image snapshot {snapshot} is not in the cluster: make it with `rbd snap create {snapshot}` and `rbd snap protect {snapshot}`")]
    NoSnapshot { snapshot: String },
    #[error("the image snapshot {snapshot} is not protected, so no clone can be made of it: `rbd snap protect {snapshot}`")]
    NotProtected { snapshot: String },
    #[error("{pc}'s disk {clone} is not a clone of an image snapshot; cowctl serves only the clones it made (move the image away, or name another prefix)")]
    NotAClone { pc: String, clone: String },
    #[error("{pc}'s disk {clone} is a clone of {has}, but its image is {wants}: serving it would show a disk made over another image; reset {pc} to clone it anew")]
    OtherParent {
        pc: String,
        clone: String,
        has: String,
        wants: String,
    },
    #[error("{pc}'s disk {clone} is served by another gateway, {gateway} (its lock is held by {owners}); it is served from one place at a time")]
    HeldElsewhere {
        pc: String,
        clone: String,
        gateway: String,
        owners: String,
    },
    #[error("{pc}'s disk is left as {clone} by a commit that failed half way ({source}): rename it back to the PC's clone with `rbd rename`, then apply")]
    Stranded {
        pc: String,
        clone: String,
        #[source]
        source: crate::rbd::Error,
    },
    #[error("{pc} has no disk in the cluster yet ({clone}): apply on its first gateway makes it")]
    NoClone { pc: String, clone: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The leases of a gateway with floating portals (`service/floating.rs`), on the object
/// [`portal_object`]: its portal's, held by whoever has the address, and `alive`, held by the
/// gateway itself while it runs.
pub const PORTAL_LEASE: &str = "portal";
pub const ALIVE_LEASE: &str = "alive";

/// The object whose locks are `gateway`'s leases.
pub fn portal_object(m: &Manifest, gateway: &str) -> Option<String> {
    Some(format!("{}.portal.{gateway}", m.ceph.as_ref()?.prefix))
}

/// The clone's metadata keys naming the gateway that serves it, and its host and process
/// (to tell this gateway's dead predecessor from a live gateway).
const GATEWAY_KEY: &str = "cowctl.gateway";
const HOST_KEY: &str = "cowctl.host";
const PID_KEY: &str = "cowctl.pid";
/// The boot of the machine it ran on: a host name is shared by gateways cloned from one disk.
const BOOT_KEY: &str = "cowctl.boot";

/// This process, as others see it in a lease it holds: `host:pid`, and a number that
/// tells apart the leases one process takes one after another.
pub fn process_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}:{}:{n}", host_name(), std::process::id())
}

/// This gateway as others name it: its name in the gateways section, else its host name.
fn gateway_name(m: &Manifest) -> String {
    m.here.clone().unwrap_or_else(host_name)
}

/// Whether a process of this host is there and running (a zombie is gone: it only waits
/// for its parent to collect it).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command's name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    pid > 0 && !matches!(state, Some('Z' | 'X') | None)
}

/// A connection to the pool of a manifest's rbd images.
pub struct Cluster {
    pool: Arc<Pool>,
    ceph: CephConfig,
}

impl Cluster {
    /// Connects when the manifest has rbd images; None when it has none.
    pub fn connect(m: &Manifest) -> Result<Option<Cluster>> {
        let Some(ceph) = m.ceph.as_ref().filter(|_| m.uses_rbd()) else {
            return Ok(None);
        };
        Ok(Some(Cluster {
            pool: Pool::connect(&ceph.settings)?,
            ceph: ceph.clone(),
        }))
    }

    /// Whether this connection is to the cluster and pool `m` names.
    pub fn serves(&self, m: &Manifest) -> bool {
        m.ceph
            .as_ref()
            .is_some_and(|c| c.settings == self.ceph.settings)
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn names(&self, m: &Manifest, pc: &Pc) -> Result<(String, RbdSnapshot)> {
        let clone = m.rbd_clone(pc).ok_or_else(|| Error::NoCeph {
            pc: pc.name.clone(),
        })?;
        let snapshot = m.images[&pc.image]
            .rbd
            .clone()
            .ok_or_else(|| Error::NoCeph {
                pc: pc.name.clone(),
            })?;
        Ok((clone, snapshot))
    }

    /// Whether the PC's clone is there.
    pub fn has_disk(&self, m: &Manifest, pc: &Pc) -> Result<bool> {
        let (clone, _) = self.names(m, pc)?;
        Ok(self.pool.exists(&clone)?)
    }

    /// The image's snapshot is there and protected: clones can be made of it.
    pub fn check_snapshot(&self, snapshot: &RbdSnapshot) -> Result<()> {
        let spec = self.pool.spec(&snapshot.to_string());
        let image = match self.pool.open_read_only(&snapshot.image, None) {
            Err(e) if e.is_not_found() => {
                let image = self.pool.spec(&snapshot.image);
                return Err(Error::NoImage { image });
            }
            other => other?,
        };
        match image.snapshot_protected_exists(&snapshot.snap)? {
            (false, _) => Err(Error::NoSnapshot { snapshot: spec }),
            (true, false) => Err(Error::NotProtected { snapshot: spec }),
            (true, true) => Ok(()),
        }
    }

    /// Makes the PC's clone (`name`, or its own name) of its image's snapshot, with the
    /// ceph section's object size. An rbd clone is never made over an existing image.
    fn clone_as(&self, m: &Manifest, pc: &Pc, name: Option<&str>) -> Result<()> {
        let (clone, snapshot) = self.names(m, pc)?;
        self.check_snapshot(&snapshot)?;
        let order = self.ceph.order();
        let name = name.unwrap_or(&clone);
        Ok(self
            .pool
            .clone_image(&snapshot.image, &snapshot.snap, name, order)?)
    }

    pub fn make_disk(&self, m: &Manifest, pc: &Pc) -> Result<()> {
        self.clone_as(m, pc, None)
    }

    /// The guard: the clone must be of the snapshot the manifest names.
    fn check_parent(&self, m: &Manifest, pc: &Pc, image: &Image) -> Result<()> {
        let (clone, snapshot) = self.names(m, pc)?;
        let wants = Parent {
            pool: self.pool.name().to_string(),
            image: snapshot.image.clone(),
            snap: snapshot.snap.clone(),
        };
        // A PC on a family of versions may run another of them than this gateway last
        // read (another gateway committed or reset it since): its disk is still its image's.
        let family = m.images[&pc.image].rbd_versions.as_deref();
        let same_family = |has: &Parent| {
            family.is_some_and(|base| {
                has.pool == wants.pool && has.image == format!("{base}.{}", has.snap)
            })
        };
        match image.parent()? {
            None => Err(Error::NotAClone {
                pc: pc.name.clone(),
                clone: self.pool.spec(&clone),
            }),
            Some(has) if has != wants && !same_family(&has) => Err(Error::OtherParent {
                pc: pc.name.clone(),
                clone: self.pool.spec(&clone),
                has: has.to_string(),
                wants: wants.to_string(),
            }),
            Some(_) => Ok(()),
        }
    }

    fn open_image(&self, m: &Manifest, pc: &Pc, read_only: bool) -> Result<Image> {
        let (clone, _) = self.names(m, pc)?;
        self.open_image_named(pc, &clone, read_only)
    }

    /// The image `name` (the PC's clone, or a fresh one beside it), opened.
    fn open_image_named(&self, pc: &Pc, name: &str, read_only: bool) -> Result<Image> {
        let opened = if read_only {
            self.pool.open_read_only(name, None)
        } else {
            self.pool.open(name)
        };
        match opened {
            Err(e) if e.is_not_found() => Err(Error::NoClone {
                pc: pc.name.clone(),
                clone: self.pool.spec(name),
            }),
            other => Ok(other?),
        }
    }

    /// Opens the PC's clone to serve it: checked against its image, locked so no other
    /// gateway writes it, its fill counted (a `fresh` clone has none to count).
    pub fn open(&self, m: &Manifest, pc: &Pc, fresh: bool) -> Result<RbdDisk> {
        let (clone, _) = self.names(m, pc)?;
        self.open_named(m, pc, &clone, fresh)
    }

    /// [`Cluster::open`] of the image `name` (the PC's clone, or a fresh one beside it).
    pub fn open_named(&self, m: &Manifest, pc: &Pc, name: &str, fresh: bool) -> Result<RbdDisk> {
        let image = self.open_image_named(pc, name, pc.read_only)?;
        self.check_parent(m, pc, &image)?;
        if !pc.read_only {
            self.lock(m, pc, &image)?;
        }
        self.disk_of(pc, image, fresh)
    }

    /// The PC's disk over its opened (and locked) clone.
    fn disk_of(&self, pc: &Pc, image: Image, fresh: bool) -> Result<RbdDisk> {
        let own = if fresh {
            Vec::new()
        } else {
            image.own_objects()?
        };
        Ok(RbdDisk::new(
            image,
            (pc.read_only, pc.cow_size.bytes()),
            &own,
        )?)
    }

    /// Takes the clone's exclusive lock for this gateway, and says so in its metadata (the
    /// lock names only an address). A lock of this gateway's dead predecessor (this boot of
    /// this machine, a process that is gone, or this very process before a restart) is broken; anybody
    /// else's is refused, naming the holder.
    fn lock(&self, m: &Manifest, pc: &Pc, image: &Image) -> Result<()> {
        // Who holds it is asked first: asking a dead holder for its lock waits for the
        // cluster to give up on it (the watch timeout), a live one refuses.
        let owners = image.lock_owners()?;
        if !owners.is_empty() {
            if !self.held_by_dead_predecessor(image, &owners) {
                return Err(self.held_elsewhere(pc, image, &owners));
            }
            // librbd blocklists the dead client as it breaks its lock.
            for owner in &owners {
                image.break_lock(owner)?;
            }
        }
        if let Err(e) = image.lock_exclusive() {
            // Taken in between by another gateway.
            let owners = image.lock_owners().unwrap_or_default();
            if owners.is_empty() {
                return Err(e.into());
            }
            return Err(self.held_elsewhere(pc, image, &owners));
        }
        held_here().extend(image.lock_owners().unwrap_or_default());
        image.set_metadata(GATEWAY_KEY, &gateway_name(m))?;
        // The boot before the host: until the host is this one, nobody takes it for theirs.
        image.set_metadata(BOOT_KEY, &crate::base::machine::boot_id())?;
        image.set_metadata(HOST_KEY, &host_name())?;
        image.set_metadata(PID_KEY, &std::process::id().to_string())?;
        Ok(())
    }

    /// The lock was this gateway's, in a process of this boot of this machine that is gone, or this very
    /// process: before a planned restart's exec (which holds no lock yet), or as the client
    /// it was before the cluster cut it off (the owners are clients this process held the
    /// lock as; another gateway that locked it since has not yet written its name).
    fn held_by_dead_predecessor(&self, image: &Image, owners: &[String]) -> bool {
        let said = |key| image.metadata(key).ok().flatten();
        let this = |pid: i32| {
            let held = held_here();
            u32::try_from(pid) == Ok(std::process::id())
                && (held.is_empty() || owners.iter().all(|o| held.contains(o)))
        };
        crate::base::machine::ran_here(said(BOOT_KEY).as_deref(), said(HOST_KEY).as_deref())
            && said(PID_KEY)
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|pid| this(pid) || !alive(pid))
    }

    fn held_elsewhere(&self, pc: &Pc, image: &Image, owners: &[String]) -> Error {
        let gateway = image.metadata(GATEWAY_KEY).ok().flatten();
        Error::HeldElsewhere {
            pc: pc.name.clone(),
            clone: self.pool.spec(image.name()),
            gateway: gateway.unwrap_or_else(|| "one that did not say its name".into()),
            owners: owners.join(", "),
        }
    }

    /// Who holds the PC's clone (its exclusive lock): the gateway's name as it wrote it,
    /// else the lock owner's address; None when nobody does (or there is no clone).
    pub fn holder(&self, m: &Manifest, pc: &Pc) -> Result<Option<String>> {
        Ok(self.holder_of(m, pc)?.flatten())
    }

    /// One look at the PC's clone: None when it is not there, else who holds it, as
    /// [`Cluster::holder`] says.
    pub fn holder_of(&self, m: &Manifest, pc: &Pc) -> Result<Option<Option<String>>> {
        // Opened for writing (nothing is written, no lock taken): a read-only handle
        // does not see the exclusive lock.
        let image = match self.open_image(m, pc, false) {
            Err(Error::NoClone { .. }) => return Ok(None),
            other => other?,
        };
        let owners = image.lock_owners()?;
        if owners.is_empty() {
            return Ok(Some(None));
        }
        let named = image.metadata(GATEWAY_KEY).ok().flatten();
        Ok(Some(Some(named.unwrap_or_else(|| owners.join(", ")))))
    }

    /// The snapshot the PC's clone was made of; None when it has no clone (or is not one).
    pub fn parent_of(&self, m: &Manifest, pc: &Pc) -> Result<Option<Parent>> {
        let clone = m.rbd_clone(pc).ok_or_else(|| Error::NoCeph {
            pc: pc.name.clone(),
        })?;
        match self.open_image_named(pc, &clone, true) {
            Err(Error::NoClone { .. }) => Ok(None),
            other => Ok(other?.parent()?),
        }
    }

    /// A commit, while the PC is paused (or nobody serves it): its clone becomes the image
    /// `into`, with `record` in its metadata and the protected snapshot `snap`, and the PC
    /// gets a fresh clone of that snapshot under its own name (the same disk as before, so
    /// it sees no change), opened and locked before it takes the name. `disk` is the
    /// clone's handle, opened under its lock. On failure nothing was renamed and the PC
    /// keeps its clone, except [`Error::Stranded`]: then its clone has another name and
    /// must not be served.
    pub fn commit_clone(
        &self,
        m: &Manifest,
        pc: &Pc,
        disk: &Image,
        into: &str,
        snap: &str,
        record: (&str, &str),
    ) -> Result<RbdDisk> {
        let (clone, _) = self.names(m, pc)?;
        let next = format!("{clone}.next");
        let undo = |made_next: bool| {
            if made_next {
                let _ = self.pool.remove(&next);
            }
            let _ = disk.remove_snapshot(snap);
            let _ = disk.remove_metadata(record.0);
        };
        // Clones copy their parent's metadata: the version must not say which gateway
        // served it, or its clones would name a holder they never had.
        let prepared = (|| -> Result<()> {
            disk.flush()?;
            for key in [GATEWAY_KEY, HOST_KEY, BOOT_KEY, PID_KEY] {
                disk.remove_metadata(key)?;
            }
            disk.set_metadata(record.0, record.1)?;
            disk.snapshot_protected(snap)?;
            match self.pool.remove(&next) {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            undo(false);
            return Err(e);
        }
        let fresh = (|| -> Result<Image> {
            self.pool
                .clone_image(&clone, snap, &next, self.ceph.order())?;
            let image = self.open_image_named(pc, &next, false)?;
            self.lock(m, pc, &image)?;
            Ok(image)
        })();
        let fresh = match fresh {
            Ok(image) => image,
            Err(e) => {
                undo(true);
                return Err(e);
            }
        };
        if let Err(e) = self.pool.rename(&clone, into) {
            drop(fresh);
            undo(true);
            return Err(e.into());
        }
        if let Err(e) = self.pool.rename(&next, &clone) {
            drop(fresh);
            if self.pool.rename(into, &clone).is_err() {
                return Err(Error::Stranded {
                    pc: pc.name.clone(),
                    clone: self.pool.spec(into),
                    source: e,
                });
            }
            undo(true);
            return Err(e.into());
        }
        self.disk_of(pc, fresh, true)
    }

    /// Says in the clone's metadata that this host's kernel serves it (its lock names
    /// only the kernel's client): no gateway takes it for a dead predecessor's and breaks it.
    pub fn mark_kernel(&self, m: &Manifest, clone: &str) -> Result<()> {
        let image = self.pool.open(clone)?;
        image.remove_metadata(HOST_KEY)?;
        image.remove_metadata(BOOT_KEY)?;
        image.remove_metadata(PID_KEY)?;
        image.set_metadata(GATEWAY_KEY, &format!("{} (its kernel)", gateway_name(m)))?;
        Ok(())
    }

    /// The guard alone, on a clone nobody need open for I/O (the kernel maps it): it must
    /// be a clone of the snapshot the manifest names.
    pub fn check_disk(&self, m: &Manifest, pc: &Pc) -> Result<Image> {
        let image = self.open_image(m, pc, true)?;
        self.check_parent(m, pc, &image)?;
        Ok(image)
    }

    /// The fill of a PC nobody serves here: its clone's objects, against its quota.
    pub fn usage(&self, m: &Manifest, pc: &Pc) -> Result<Usage> {
        let image = self.check_disk(m, pc)?;
        let object = image.object_size()?;
        let own: u64 = image.own_objects()?.len() as u64 * object;
        Ok(Usage {
            sectors_allocated: own / 512,
            total_sectors: pc.cow_size.bytes() / 512,
            metadata_sectors: 0,
        })
    }

    /// A reset's first half, before the PC pauses: a fresh clone beside the PC's, named
    /// `<clone>.next` (one left by a reset that failed is replaced: it was never served).
    pub fn prepare_fresh(&self, m: &Manifest, pc: &Pc) -> Result<String> {
        let (clone, _) = self.names(m, pc)?;
        let next = format!("{clone}.next");
        match self.pool.remove(&next) {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
        self.clone_as(m, pc, Some(&next))?;
        Ok(next)
    }

    /// A reset's swap, while the PC is paused: its clone is renamed aside and the fresh
    /// one takes its name. Returns the name set aside.
    pub fn swap_in(&self, m: &Manifest, pc: &Pc, next: &str) -> Result<String> {
        let (clone, _) = self.names(m, pc)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let aside = format!("{clone}.reset-{stamp}");
        self.pool.rename(&clone, &aside)?;
        if let Err(e) = self.pool.rename(next, &clone) {
            let _ = self.pool.rename(&aside, &clone);
            return Err(e.into());
        }
        Ok(aside)
    }

    /// Removes a clone set aside by a reset, once its handle is closed (librbd refuses to
    /// remove an image somebody has open: the last reads of the old disk may still be
    /// finishing, so it is tried for a few seconds).
    pub fn remove_aside(&self, aside: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            match self.pool.remove(aside) {
                Err(e) if e.errno() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) if e.is_not_found() => return Ok(()),
                other => return Ok(other?),
            }
        }
    }

    /// A reset of a PC nobody serves here: a fresh clone in its place, the old one
    /// removed. The old clone's lock is held meanwhile, so a PC another gateway serves is
    /// refused (naming it), not swapped from under it.
    pub fn reset_offline(&self, m: &Manifest, pc: &Pc) -> Result<()> {
        let (clone, _) = self.names(m, pc)?;
        // Locked whatever it is a clone of (one of another snapshot is what a reset
        // replaces, one of another version what it moves): a held one is refused.
        let held = match self.open_image_named(pc, &clone, false) {
            Ok(image) => {
                self.lock(m, pc, &image)?;
                Some(image)
            }
            Err(Error::NoClone { .. }) => None,
            Err(e) => return Err(e),
        };
        let next = self.prepare_fresh(m, pc)?;
        if held.is_none() {
            return Ok(self.pool.rename(&next, &clone)?);
        }
        let aside = self.swap_in(m, pc, &next)?;
        drop(held);
        self.remove_aside(&aside)
    }
}

/// The lock owners (client addresses) this process has held clones' locks as.
fn held_here() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    static HELD: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection per process to the cluster a manifest names, shared by everything that
/// asks (the service's PCs, status, resets); made anew when the manifest names another.
pub fn shared(m: &Manifest) -> Result<Option<Arc<Cluster>>> {
    if !m.uses_rbd() {
        return Ok(None);
    }
    let mut held = shared_slot().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = held.as_ref().filter(|c| c.serves(m)) {
        return Ok(Some(c.clone()));
    }
    let fresh = Cluster::connect(m)?.map(Arc::new);
    held.clone_from(&fresh);
    Ok(fresh)
}

/// Lets go of the shared connection (a planned restart: the next process connects anew,
/// and this client's sessions must not outlive the exec). Images still open keep it alive
/// until they close.
pub fn disconnect() {
    shared_slot()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
}

fn shared_slot() -> &'static std::sync::Mutex<Option<Arc<Cluster>>> {
    static SHARED: std::sync::Mutex<Option<Arc<Cluster>>> = std::sync::Mutex::new(None);
    &SHARED
}

/// [`shared`] for a PC on rbd storage: its cluster, which must be there.
pub fn cluster_of(m: &Manifest, pc: &Pc) -> Result<Arc<Cluster>> {
    shared(m)?.ok_or_else(|| Error::NoCeph {
        pc: pc.name.clone(),
    })
}
