//! The userspace backend's iSCSI target: a listener per manifest portal, the directory of
//! targets (one per `export: iscsi` PC, with the same ACL and CHAP the kernel backend
//! gives LIO), and sessions tied to the PCs' slots, so a reset or down drops them.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::{Error, Result};

use super::conns::Connections;
use super::exports::Registry;
use super::handover::Handover;
use super::limits::{ConnLimits, Permit};
use crate::base::logtext::Escaped;
use crate::iscsi::chap::{Credentials, Secret};
use crate::iscsi::connection::{Admission, Handoff, Parked};
use crate::iscsi::login::{Access, Directory, Established, SessionKind};
use crate::iscsi::pdu::LoginStatus;
use crate::iscsi::scsi::{Identity, Lu, Reservation};
use crate::iscsi::{Attachment, EngineDisk, Portal};
use crate::manifest::secrets::ChapMaster;
use crate::manifest::{AclMode, Export, Manifest};

/// One PC's target as the manifest of the last apply describes it.
#[derive(Debug, Clone)]
struct Target {
    pc: String,
    /// The only initiator allowed (`acl: initiator`), or None for open mode.
    initiator: Option<String>,
    chap: Option<Credentials>,
}

/// Sessions by (target, initiator, ISID): a new login with the same three replaces the old
/// session (session reinstatement, RFC 7143 §6.3.5), as open-iscsi expects after a drop.
type SessionKey = (String, String, [u8; 6]);
/// A session's number and how to close its connection.
type SessionEntry = (u64, Box<dyn Fn() + Send>);

pub struct IscsiService {
    registry: Arc<Registry>,
    targets: RwLock<BTreeMap<String, Target>>,
    portals: Vec<SocketAddr>,
    sessions: Mutex<HashMap<SessionKey, SessionEntry>>,
    reservations: Mutex<HashMap<String, Arc<Reservation>>>,
    next_nexus: std::sync::atomic::AtomicU64,
    pub limits: Arc<ConnLimits>,
    handover: Arc<Handover>,
    /// The applied manifest, for where a PC served by another gateway is (redirects).
    manifest: RwLock<Option<Arc<Manifest>>>,
    /// Who holds each rbd PC not served here, as the gateway loop last saw it, and when:
    /// a login is redirected from this, never from a look at the cluster on its thread.
    holders: Mutex<HashMap<String, (String, Instant)>>,
    /// Floating portals this gateway holds now, each with its listener's stop switch.
    floating: Mutex<BTreeMap<SocketAddr, Floating>>,
    /// Every connection, by the address it was made to.
    connections: Arc<Connections>,
}

/// A floating portal's listener: stopped by a flag and a shutdown that wakes its accept.
struct Floating {
    stop: Arc<std::sync::atomic::AtomicBool>,
    socket: std::os::fd::OwnedFd,
    /// This gateway's own portal (not one it holds for a gateway that is gone).
    own: bool,
}

/// How long the gateway loop's word on a PC's holder is good for a redirect.
const HOLDER_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl IscsiService {
    pub fn new(
        registry: Arc<Registry>,
        portals: Vec<SocketAddr>,
        limits: Arc<ConnLimits>,
        handover: Arc<Handover>,
    ) -> Arc<IscsiService> {
        Arc::new(IscsiService {
            registry,
            targets: RwLock::new(BTreeMap::new()),
            portals,
            sessions: Mutex::new(HashMap::new()),
            reservations: Mutex::new(HashMap::new()),
            next_nexus: std::sync::atomic::AtomicU64::new(1),
            limits,
            handover,
            manifest: RwLock::new(None),
            holders: Mutex::new(HashMap::new()),
            floating: Mutex::new(BTreeMap::new()),
            connections: Arc::default(),
        })
    }

    /// Takes the targets of a newly applied manifest (each PC's own CHAP secrets are
    /// derived here, once).
    pub fn set_manifest(&self, m: &Manifest) -> Result<()> {
        *self.manifest.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m.clone()));
        let Some(cfg) = &m.iscsi else {
            *self.targets.write().unwrap_or_else(|p| p.into_inner()) = BTreeMap::new();
            return Ok(());
        };
        let master = match &cfg.chap {
            Some(c) => Some(ChapMaster::read(c)?),
            None => None,
        };
        let mut targets = BTreeMap::new();
        for pc in &m.pcs {
            let Export::Iscsi { target, initiator } = &pc.export else {
                continue;
            };
            let chap = master.as_ref().map(|master| {
                let mine = master.for_pc(&pc.name);
                Credentials {
                    initiator: Secret {
                        username: mine.initiator.username,
                        secret: mine.initiator.secret,
                    },
                    target: mine.target.map(|t| Secret {
                        username: t.username,
                        secret: t.secret,
                    }),
                }
            });
            let initiator = match cfg.acl {
                AclMode::Open => None,
                AclMode::PerInitiator => initiator.as_ref().map(|i| i.to_string()),
            };
            targets.insert(
                target.to_string(),
                Target {
                    pc: pc.name.clone(),
                    initiator,
                    chap,
                },
            );
        }
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = targets;
        Ok(())
    }

    /// The gateway loop's look at an rbd PC this gateway does not serve: who holds it
    /// (its gateway's name), or nobody.
    pub fn note_holder(&self, pc: &str, holder: Option<&str>) {
        let mut held = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        match holder {
            Some(h) => held.insert(pc.to_string(), (h.to_string(), Instant::now())),
            None => held.remove(pc),
        };
    }

    pub fn portals_configured(&self) -> Vec<SocketAddr> {
        self.portals.clone()
    }

    fn target(&self, iqn: &str) -> Option<Target> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(iqn)
            .cloned()
    }

    fn reservation(&self, pc: &str) -> Arc<Reservation> {
        self.reservations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pc.to_string())
            .or_default()
            .clone()
    }

    /// Binds every portal; the accept loops run on threads of their own.
    pub fn listen(self: &Arc<Self>, manifest_path: &std::path::Path) -> Result<Vec<SocketAddr>> {
        let mut bound = Vec::new();
        for p in &self.portals {
            let l = crate::base::inherit::tcp(*p).map_err(|source| Error::ListenIscsi {
                portal: *p,
                manifest: manifest_path.to_path_buf(),
                source,
            })?;
            bound.push(l.local_addr()?);
            let me = self.clone();
            std::thread::spawn(move || me.accept(l));
        }
        Ok(bound)
    }

    fn accept(self: Arc<Self>, l: TcpListener) {
        for stream in l.incoming() {
            let Ok(stream) = stream else { continue };
            self.clone().take(stream);
        }
    }

    fn take(self: Arc<Self>, stream: std::net::TcpStream) {
        super::limits::keepalive(&stream);
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        let tracked = self.connections.track(&stream);
        let permit = self.limits.admit(peer.ip(), super::limits::closer(&stream));
        self.spawn(peer, permit, move |portal, admission| {
            let _tracked = tracked;
            crate::iscsi::serve(stream, portal, admission)
        });
    }

    /// Listens on a floating portal this gateway has just taken (its address is on an
    /// interface here now), its `own` or a gone gateway's; nothing if it listens there already.
    pub fn listen_floating(self: &Arc<Self>, portal: SocketAddr, own: bool) -> std::io::Result<()> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut floating = self.floating.lock().unwrap_or_else(|p| p.into_inner());
        if floating.contains_key(&portal) {
            return Ok(());
        }
        let l = TcpListener::bind(portal)?;
        let socket = std::os::fd::OwnedFd::from(l.try_clone()?);
        let stop = Arc::new(AtomicBool::new(false));
        self.connections.open(portal);
        floating.insert(
            portal,
            Floating {
                stop: stop.clone(),
                socket,
                own,
            },
        );
        let me = self.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match stream {
                    Ok(stream) => me.clone().take(stream),
                    // A listener shut down under it, or out of descriptors for a moment.
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        });
        Ok(())
    }

    /// Stops listening on a floating portal this gateway gives up (its address leaves), and
    /// ends the connections made there: their initiators connect again, to whoever holds the
    /// address now, instead of talking to a socket no packet reaches any more.
    pub fn close_floating(&self, portal: SocketAddr) {
        use std::os::fd::AsRawFd;
        let taken = (self.floating.lock().unwrap_or_else(|p| p.into_inner())).remove(&portal);
        if let Some(f) = taken {
            f.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // Wakes the accept blocked on it, which then sees the flag.
            // SAFETY: shutdown on a socket descriptor owned here.
            unsafe { libc::shutdown(f.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        // Sessions a planned restart handed over may be there without a listener.
        self.connections.end_at(portal);
    }

    /// The manifest's portals and the floating ones held now.
    fn all_portals(&self) -> Vec<SocketAddr> {
        let mut all = self.portals.clone();
        all.extend(self.floating_portals());
        all
    }

    /// What discovery reports: the manifest's portals and this gateway's own floating one,
    /// never a gone gateway's it holds for a while (an initiator would keep that address).
    fn reported_portals(&self) -> Vec<SocketAddr> {
        let mut all = self.portals.clone();
        let floating = self.floating.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(floating.iter().filter(|(_, f)| f.own).map(|(p, _)| *p));
        all
    }

    /// The floating portals listened on now.
    pub fn floating_portals(&self) -> Vec<SocketAddr> {
        (self.floating.lock().unwrap_or_else(|p| p.into_inner()))
            .keys()
            .copied()
            .collect()
    }

    /// Sessions logged in to a PC's target right now.
    pub fn live_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Carries on the sessions the previous process handed over.
    pub fn resume(self: &Arc<Self>, sessions: Vec<Parked>) {
        for parked in sessions {
            let Ok(peer) = parked.stream.peer_addr() else {
                continue;
            };
            // Logged in already: straight into the members' pool, as it was.
            let permit = self.limits.admit_member(peer.ip());
            let tracked = self.connections.track(&parked.stream);
            self.clone().spawn(peer, permit, move |portal, admission| {
                let _tracked = tracked;
                crate::iscsi::connection::resume(parked, portal, admission)
            });
        }
    }

    /// A thread for one connection, counted against the limits, logging how it ended.
    fn spawn<F>(
        self: Arc<Self>,
        peer: SocketAddr,
        permit: std::result::Result<Permit, super::limits::Refused>,
        run: F,
    ) where
        F: FnOnce(&dyn Portal, &mut dyn Admission) -> std::io::Result<crate::iscsi::Ended>
            + Send
            + 'static,
    {
        let mut permit = match permit {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("iSCSI: refused a connection from {peer}: {e}");
                return;
            }
        };
        let _ = std::thread::Builder::new()
            .name(format!("iscsi {peer}"))
            .spawn(move || match run(&self, &mut Admitted(&mut permit, peer)) {
                Ok(end) => {
                    tracing::info!("iSCSI connection from {peer} ended: {}", Escaped(end))
                }
                Err(e) => {
                    tracing::info!("iSCSI connection from {peer} ended: {}", Escaped(e))
                }
            });
    }
}

/// A login moves its connection out of the strangers' pool.
struct Admitted<'a>(&'a mut Permit, SocketAddr);

impl crate::iscsi::connection::Admission for Admitted<'_> {
    fn logged_in(&mut self) -> bool {
        match self.0.promote() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("iSCSI: refused a login from {}: {e}", self.1);
                false
            }
        }
    }
}

impl Directory for IscsiService {
    fn access(&self, target: &str, initiator: &str) -> Result<Access, LoginStatus> {
        let t = self.target(target).ok_or(LoginStatus::NOT_FOUND)?;
        if t.initiator
            .as_deref()
            .is_some_and(|allowed| allowed != initiator)
        {
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        if self.registry.get(&t.pc).is_none() {
            // Not served (yet, or any more): the initiator tries again later.
            return Err(LoginStatus::SERVICE_UNAVAILABLE);
        }
        Ok(Access {
            target: target.to_string(),
            chap: t.chap,
        })
    }

    /// A PC that another gateway of the manifest holds, as the gateway loop saw it a
    /// moment ago: that gateway's portal. Only the manifest's IPv4 portals are named (iPXE
    /// cannot read a bracketed IPv6 address in a redirect); nothing here waits on the cluster.
    fn moved(&self, target: &str) -> Option<String> {
        let t = self.target(target)?;
        let (holder, seen) = (self.holders.lock().unwrap_or_else(|p| p.into_inner()))
            .get(&t.pc)
            .cloned()?;
        if seen.elapsed() > HOLDER_FRESH {
            return None;
        }
        let m = self
            .manifest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let g =
            (m.gateways.iter()).find(|g| g.name == holder && m.here.as_ref() != Some(&g.name))?;
        let portal: SocketAddr = g.portal.to_string().parse().ok()?;
        let own = self.all_portals().contains(&portal);
        (portal.is_ipv4() && !own).then(|| portal.to_string())
    }

    fn visible(&self, initiator: &str) -> Vec<String> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, t)| t.initiator.as_deref().is_none_or(|i| i == initiator))
            .filter(|(_, t)| self.registry.get(&t.pc).is_some())
            .map(|(iqn, _)| iqn.clone())
            .collect()
    }
}

/// Unregisters a session when its connection ends (unless a newer login took its place).
struct SessionGuard {
    service: Arc<IscsiService>,
    key: SessionKey,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut s = self
            .service
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if s.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            s.remove(&self.key);
        }
    }
}

impl Portal for Arc<IscsiService> {
    fn directory(&self) -> &dyn Directory {
        self.as_ref()
    }

    fn attach(
        &self,
        est: &Established,
        peer: SocketAddr,
        close: Box<dyn Fn() + Send>,
    ) -> Result<Attachment, LoginStatus> {
        let SessionKind::Normal { target } = &est.kind else {
            return Err(LoginStatus::TARGET_ERROR);
        };
        let t = self.target(target).ok_or(LoginStatus::TARGET_REMOVED)?;
        let slot = self
            .registry
            .get(&t.pc)
            .ok_or(LoginStatus::SERVICE_UNAVAILABLE)?;
        let nexus = self
            .next_nexus
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = (target.clone(), est.initiator.clone(), est.isid);
        // Reinstatement: the old session with this name and ISID is closed first.
        let old = {
            let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            s.remove(&key)
        };
        if let Some((_, close_old)) = old {
            tracing::info!(
                "iSCSI: {} logged in again to {target}: its old session is closed",
                Escaped(&est.initiator)
            );
            close_old();
        }
        let close: Arc<dyn Fn() + Send + Sync> = Arc::from(close_sync(close));
        let for_slot = close.clone();
        let (engine, read_only, conn) = slot
            .attach_checked(
                format!("{} ({peer})", est.initiator),
                Box::new(move || for_slot()),
            )
            .ok_or(LoginStatus::SERVICE_UNAVAILABLE)?;
        let for_sessions = close.clone();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), (nexus, Box::new(move || for_sessions())));
        tracing::info!(
            pc = %t.pc,
            "iSCSI: {} logged in to {target} ({}) from {peer}{}",
            Escaped(&est.initiator),
            t.pc,
            if est.authenticated { " with CHAP" } else { "" }
        );
        let lu = Lu::new(
            Identity::for_pc(&t.pc, target),
            self.reservation(&t.pc),
            Box::new(EngineDisk { engine, read_only }),
        );
        let guard = SessionGuard {
            service: self.clone(),
            key,
            id: nexus,
        };
        Ok(Attachment {
            lu: Arc::new(lu),
            nexus,
            guard: Box::new((conn, guard)),
        })
    }

    fn portals(&self) -> Vec<SocketAddr> {
        self.reported_portals()
    }

    fn handoff(&self) -> Option<&dyn Handoff> {
        Some(self.handover.as_ref())
    }
}

/// The close callback, shareable between the slot and the session table.
fn close_sync(f: Box<dyn Fn() + Send>) -> Box<dyn Fn() + Send + Sync> {
    let f = Mutex::new(f);
    Box::new(move || (f.lock().unwrap_or_else(|p| p.into_inner()))())
}
