//! Floating portals (`gateways` whose entries name an `interface`): a gateway's iSCSI
//! portal address belongs to no machine. A gateway holds it by a lease in the cluster (a
//! RADOS lock with a duration on the object `<prefix>.portal.<gateway>`) and, while it
//! does, has the address on its interface, listens there, and has announced it with a
//! gratuitous ARP. Another lease on the same object, `alive`, says that the gateway runs.
//!
//! - A gateway always asks for its own portal.
//! - When a gateway is gone (its `alive` lease ran out), the first other gateway to ask
//!   gets its portal: an OS whose initiator reconnects to the address it booted from finds
//!   a live gateway there, which serves the PC (once it has taken it over) or redirects the
//!   login to the gateway that took it.
//! - When the gateway comes back, the one holding its portal gives it back, and ends the
//!   connections made there (their initiators connect again, to the owner, which
//!   redirects them on).
//! - A gateway that has not renewed a lease for [`fence`] drops the address, well before
//!   the lease runs out for the others, even while its call to the cluster hangs: a
//!   watchdog thread checks, not the thread that renews.
//! - Leases are taken with the gateway's name, its host name and the machine's boot as
//!   cookie (`gw-a@host:boot-id`): a gateway that restarts breaks the ones its previous process left,
//!   and goes on at once; a second machine run under the same name (a clone of the first,
//!   with its host name) breaks none of them, and says so.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{gateway, Service};
use crate::base::machine::{cookie_gateway, lease_cookie};
use crate::kernel::hostaddr;
use crate::manifest::{Gateway, Manifest};
use crate::rbd::Pool;

use crate::rbdpc::{portal_object as object, ALIVE_LEASE as ALIVE, PORTAL_LEASE as PORTAL};

/// How long a lease lasts unrenewed: five looks, and never under 3 s.
fn lease_time() -> Duration {
    (gateway::interval() * 5).max(Duration::from_secs(3))
}

/// How long a held portal may go unrenewed before its address is dropped: a look and a
/// second less than the lease, so it is gone before anyone else can take it.
fn fence() -> Duration {
    lease_time().saturating_sub(gateway::interval() + Duration::from_secs(1))
}

/// The floating portals this gateway holds, shared by the loop, its watchdog and the exit.
#[derive(Default)]
pub struct Floating {
    held: Mutex<BTreeMap<String, Held>>,
    stopped: AtomicBool,
    /// Another machine holds this gateway's alive lease under its name (said once).
    twin: AtomicBool,
}

/// A portal held: when its lease was last renewed (the call's start), and where it is.
#[derive(Clone)]
struct Held {
    renewed: Instant,
    portal: SocketAddr,
    interface: String,
}

impl Floating {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This gateway's name and its interface for floating portals, when the manifest has them.
fn interface_here(m: &Manifest) -> Option<(String, String)> {
    let here = m.here.clone()?;
    let interface = m
        .gateways
        .iter()
        .find(|g| g.name == here)?
        .interface
        .clone()?;
    Some((here, interface))
}

fn ipv4(portal: SocketAddr) -> Option<Ipv4Addr> {
    match portal.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// Runs for the life of the service; returns at once without gateways.
pub fn watch(service: Arc<Service>) {
    if service.manifest().gateways.is_empty() {
        return;
    }
    let s = service.clone();
    std::thread::spawn(move || loop {
        s.fence_unrenewed();
        std::thread::sleep(Duration::from_millis(100));
    });
    while !service.floating.stopped.load(Ordering::SeqCst) {
        service.float_round();
        std::thread::sleep(gateway::interval());
    }
}

/// Takes or renews a lease with `cookie`; one a previous process of this gateway on this
/// boot left (same cookie, another client) is broken first, as is one a cowctl from before
/// cookies named the machine left (the gateway's bare name: a reload across the upgrade).
fn take_lease(pool: &Pool, object: &str, lock: &str, cookie: &str) -> crate::rbd::Result<bool> {
    if pool.lease(object, lock, cookie, lease_time())? {
        return Ok(true);
    }
    let bare = cookie_gateway(cookie);
    let stale: Vec<_> = (pool.lockers(object, lock)?.into_iter())
        .filter(|l| (l.cookie == cookie || l.cookie == bare) && !pool.is_this_client(l))
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    for l in &stale {
        tracing::info!(
            "{object}: breaking the {lock} lease an earlier process of {cookie} left ({})",
            l.client
        );
        pool.break_lock(object, lock, l)?;
    }
    pool.lease(object, lock, cookie, lease_time())
}

/// Tells the link that `ip` is here now: twice, as one frame may be lost and a switch may
/// learn late.
fn announce(interface: &str, ip: Ipv4Addr) {
    for _ in 0..2 {
        if let Err(e) = hostaddr::announce(interface, ip) {
            tracing::warn!("{}", crate::base::logtext::chain(&e));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Service {
    fn float_round(&self) {
        let m = self.manifest();
        let Some((here, interface)) = interface_here(&m) else {
            // A manifest without floating portals was applied since.
            self.let_held_go();
            return;
        };
        // A manifest applied since may have moved or removed a portal this gateway holds.
        let moved: Vec<Held> = {
            let mut held = self.floating.held();
            let gone = |name: &String, h: &Held| {
                let g = m.gateways.iter().find(|g| g.name == *name);
                !g.is_some_and(|g| g.portal.0 == h.portal && h.interface == interface)
            };
            let out = held
                .iter()
                .filter(|(n, h)| gone(n, h))
                .map(|(_, h)| h.clone())
                .collect();
            held.retain(|n, h| !gone(n, h));
            out
        };
        for h in moved {
            self.let_portal_go(&h.interface, h.portal);
        }
        if let Ok(Some(cluster)) = crate::rbdpc::shared(&m) {
            self.lease_round(&m, cluster.pool(), &here, &interface);
        }
        // Left by an earlier process, or by one that lost its lease: not this gateway's now.
        let held: Vec<SocketAddr> = self.floating.held().values().map(|h| h.portal).collect();
        for g in m.gateways.iter().filter(|g| !held.contains(&g.portal.0)) {
            let Some(ip) = ipv4(g.portal.0) else { continue };
            if hostaddr::has(&interface, ip).unwrap_or(false) {
                self.let_portal_go(&interface, g.portal.0);
                tracing::info!(
                    "gateway {here}: took {ip} off {interface} (it does not hold {}'s portal)",
                    g.name
                );
            }
        }
    }

    /// Renews this gateway's `alive`, gives back the portals of gateways that came back,
    /// and takes or renews every other it may hold.
    fn lease_round(&self, m: &Manifest, pool: &Pool, here: &str, interface: &str) {
        let cookie = &lease_cookie(here);
        if let Some(mine) = object(m, here) {
            match take_lease(pool, &mine, ALIVE, cookie) {
                Ok(true) => self.floating.twin.store(false, Ordering::SeqCst),
                Ok(false) => {
                    if !self.floating.twin.swap(true, Ordering::SeqCst) {
                        tracing::error!(
                            "gateway {here}: another machine runs as gateway {here} too (it holds {here}'s alive lease): give one of them another name (COWCTL_GATEWAY, or its host name)"
                        );
                    }
                }
                Err(e) => tracing::warn!("gateway {here}: cannot renew its alive lease: {e}"),
            }
        }
        for g in &m.gateways {
            let Some(obj) = object(m, &g.name) else {
                continue;
            };
            if g.name != here {
                match pool.lockers(&obj, ALIVE) {
                    Ok(alive) if alive.is_empty() => {}
                    Ok(_) => {
                        if self.floating.held().remove(&g.name).is_some() {
                            self.let_portal_go(interface, g.portal.0);
                            if let Err(e) = pool.unlock(&obj, PORTAL, cookie) {
                                tracing::warn!("gateway {here}: {e}");
                            }
                            tracing::info!(
                                "gateway {} is back: gave its portal {} back",
                                g.name,
                                g.portal
                            );
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("gateway {here}: {e}");
                        continue;
                    }
                }
            }
            let asked = Instant::now();
            match take_lease(pool, &obj, PORTAL, cookie) {
                Ok(true) => self.hold(g, here, interface, asked, || {
                    let _ = pool.unlock(&obj, PORTAL, cookie);
                }),
                Ok(false) => {
                    if self.floating.held().remove(&g.name).is_some() {
                        self.let_portal_go(interface, g.portal.0);
                        tracing::warn!(
                            "gateway {here}: another gateway holds {}'s portal {} now: let it go",
                            g.name,
                            g.portal
                        );
                    }
                }
                Err(e) => tracing::warn!("gateway {here}: cannot lease {}'s portal: {e}", g.name),
            }
        }
    }

    /// A lease on `g`'s portal taken or renewed at `asked`: its address on the interface
    /// and a listener there (again, if something took them away), announced when new.
    /// `unlock` hands the lease back when the address cannot be held.
    fn hold(
        &self,
        g: &Gateway,
        here: &str,
        interface: &str,
        asked: Instant,
        unlock: impl FnOnce(),
    ) {
        if self.floating.stopped.load(Ordering::SeqCst) {
            return unlock();
        }
        // Answered too late to count: the watchdog drops it (or has), and the next look asks again.
        if asked.elapsed() >= fence() {
            return;
        }
        let new = !self.floating.held().contains_key(&g.name);
        let portal = g.portal.0;
        let Some(ip) = ipv4(portal) else { return };
        // Announced whenever it was not there: new, or put back after something took it off.
        let placed = hostaddr::add(interface, ip).map_err(|e| crate::base::logtext::chain(&e));
        let listening = placed.and_then(|added| {
            (self.iscsi.listen_floating(portal, g.name == here))
                .map(|()| added)
                .map_err(|e| format!("cannot listen on {portal}: {e}"))
        });
        let added = match listening {
            Ok(added) => added,
            Err(e) => {
                tracing::error!("gateway {here} cannot hold {}'s portal: {e}", g.name);
                if self.floating.held().remove(&g.name).is_some() || new {
                    self.let_portal_go(interface, portal);
                }
                return unlock();
            }
        };
        self.floating.held().insert(
            g.name.clone(),
            Held {
                renewed: asked,
                portal,
                interface: interface.to_string(),
            },
        );
        // The exit let go of everything meanwhile: this too.
        if self.floating.stopped.load(Ordering::SeqCst) {
            return self.let_held_go();
        }
        if added {
            announce(interface, ip);
        }
        if !new {
            return;
        }
        let whose = if g.name == here {
            "its own".to_string()
        } else {
            format!("gateway {}'s", g.name)
        };
        tracing::info!("gateway {here} holds {whose} portal {portal} on {interface}");
    }

    /// The watchdog: a portal not renewed for [`fence`] leaves this machine.
    fn fence_unrenewed(&self) {
        let late: Vec<(String, Held)> = {
            let mut held = self.floating.held();
            let late: Vec<_> = (held.iter())
                .filter(|(_, h)| h.renewed.elapsed() >= fence())
                .map(|(n, h)| (n.clone(), h.clone()))
                .collect();
            held.retain(|n, _| !late.iter().any(|(l, _)| l == n));
            late
        };
        for (name, h) in late {
            self.let_portal_go(&h.interface, h.portal);
            tracing::warn!(
                "could not renew the lease on {name}'s portal {} for {} ms: took the address off {}",
                h.portal,
                h.renewed.elapsed().as_millis(),
                h.interface
            );
        }
    }

    fn let_held_go(&self) {
        let held: Vec<Held> = std::mem::take(&mut *self.floating.held())
            .into_values()
            .collect();
        for h in held {
            self.let_portal_go(&h.interface, h.portal);
        }
    }

    /// Stops listening on a portal and takes its address off the interface.
    fn let_portal_go(&self, interface: &str, portal: SocketAddr) {
        self.iscsi.close_floating(portal);
        if let Some(ip) = ipv4(portal) {
            if let Err(e) = hostaddr::remove(interface, ip) {
                tracing::warn!("{}", crate::base::logtext::chain(&e));
            }
        }
    }

    /// On the way out: every floating portal leaves this machine, and no round takes one
    /// again. The leases are left to run out (a cluster that does not answer must not hold
    /// up the exit).
    pub fn let_floating_portals_go(&self) {
        self.floating.stopped.store(true, Ordering::SeqCst);
        self.let_held_go();
        let m = self.manifest();
        if let Some((_, interface)) = interface_here(&m) {
            for g in &m.gateways {
                self.let_portal_go(&interface, g.portal.0);
            }
        }
    }
}

/// For a serve that ended without letting go (killed, crashed; systemd's `ExecStopPost`
/// runs `cowctl serve --release-portals`): takes every floating portal's address of the
/// manifest off this gateway's interface, so a machine whose cowctl is gone never answers
/// for an address another gateway takes over. Returns the addresses it took off, and the
/// last error of those it could not (it goes on past each).
pub fn release_addresses(m: &Manifest) -> (Vec<Ipv4Addr>, Option<crate::kernel::error::NetError>) {
    let Some((_, interface)) = interface_here(m) else {
        return (Vec::new(), None);
    };
    let (mut removed, mut failed) = (Vec::new(), None);
    for ip in m.gateways.iter().filter_map(|g| ipv4(g.portal.0)) {
        match hostaddr::has(&interface, ip).and_then(|there| {
            if there {
                hostaddr::remove(&interface, ip)?;
            }
            Ok(there)
        }) {
            Ok(true) => removed.push(ip),
            Ok(false) => {}
            Err(e) => failed = Some(e),
        }
    }
    (removed, failed)
}
