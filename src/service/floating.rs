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
//! - When the gateway comes back, the one holding its portal gives it back.
//! - A gateway that cannot renew a lease (cut off from the cluster) drops the address
//!   before the lease can run out for the others, so no two machines answer for it.
//! - Leases are taken with the gateway's name as cookie: a gateway that restarts breaks
//!   the ones its previous process left, and goes on at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{gateway, Service};
use crate::kernel::hostaddr;
use crate::manifest::{Gateway, Manifest};
use crate::rbd::Pool;

const PORTAL: &str = "portal";
const ALIVE: &str = "alive";

/// How long a lease lasts unrenewed: five looks, and never under 3 s.
fn lease_time() -> Duration {
    (gateway::interval() * 5).max(Duration::from_secs(3))
}

/// The object whose locks are `gateway`'s leases.
fn object(m: &Manifest, gateway: &str) -> Option<String> {
    Some(format!("{}.portal.{gateway}", m.ceph.as_ref()?.prefix))
}

/// This gateway's interface for floating portals, when the manifest has them.
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

/// Runs for the life of the service; returns at once when no portal floats.
pub fn watch(service: Arc<Service>) {
    if interface_here(&service.manifest()).is_none() {
        return;
    }
    // Each held portal, with when its lease was last renewed (the renewal's start).
    let mut held: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        service.float_round(&mut held);
        std::thread::sleep(gateway::interval());
    }
}

/// Takes or renews a lease with `cookie`; one a previous process of this gateway left (same
/// cookie, another client) is broken first.
fn take_lease(pool: &Pool, object: &str, lock: &str, cookie: &str) -> crate::rbd::Result<bool> {
    if pool.lease(object, lock, cookie, lease_time())? {
        return Ok(true);
    }
    let stale: Vec<_> = (pool.lockers(object, lock)?.into_iter())
        .filter(|l| l.cookie == cookie && !pool.is_this_client(l))
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

fn portal_ip(g: &Gateway) -> Option<std::net::Ipv4Addr> {
    match g.portal.0.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

impl Service {
    fn float_round(&self, held: &mut BTreeMap<String, Instant>) {
        let m = self.manifest();
        let Some((here, interface)) = interface_here(&m) else {
            return;
        };
        let start = Instant::now();
        if let Ok(Some(cluster)) = crate::rbdpc::shared(&m) {
            let pool = cluster.pool();
            if let Some(mine) = object(&m, &here) {
                if let Err(e) = take_lease(pool, &mine, ALIVE, &here) {
                    tracing::warn!("gateway {here}: cannot renew its alive lease: {e}");
                }
            }
            for g in &m.gateways {
                let Some(obj) = object(&m, &g.name) else {
                    continue;
                };
                if g.name != here {
                    match pool.lockers(&obj, ALIVE) {
                        Ok(alive) if alive.is_empty() => {}
                        Ok(_) => {
                            if held.remove(&g.name).is_some() {
                                self.let_portal_go(&interface, g);
                                if let Err(e) = pool.unlock(&obj, PORTAL, &here) {
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
                match take_lease(pool, &obj, PORTAL, &here) {
                    Ok(true) => {
                        let new = held.insert(g.name.clone(), start).is_none();
                        if new && !self.hold_portal(&interface, g) {
                            held.remove(&g.name);
                            let _ = pool.unlock(&obj, PORTAL, &here);
                        } else if new {
                            let whose = if g.name == here {
                                "its own".to_string()
                            } else {
                                format!("gateway {}'s", g.name)
                            };
                            tracing::info!(
                                "gateway {here} holds {whose} portal {} on {interface}",
                                g.portal
                            );
                        }
                    }
                    Ok(false) => {
                        if held.remove(&g.name).is_some() {
                            self.let_portal_go(&interface, g);
                            tracing::warn!("gateway {here}: another gateway holds {}'s portal {} now: let it go", g.name, g.portal);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("gateway {here}: cannot lease {}'s portal: {e}", g.name)
                    }
                }
            }
        }
        // Not renewed in time: the lease may run out for the others before long.
        let fence = lease_time().saturating_sub(gateway::interval());
        held.retain(|name, renewed| {
            if renewed.elapsed() < fence {
                return true;
            }
            if let Some(g) = m.gateways.iter().find(|g| g.name == *name) {
                self.let_portal_go(&interface, g);
                tracing::warn!("gateway {here}: could not renew the lease on {}'s portal {} for {} ms: took the address off {interface}", g.name, g.portal, renewed.elapsed().as_millis());
            }
            false
        });
        // Left by an earlier process, or by one that lost its lease: not this gateway's now.
        for g in m.gateways.iter().filter(|g| !held.contains_key(&g.name)) {
            let Some(ip) = portal_ip(g) else { continue };
            if hostaddr::has(&interface, ip).unwrap_or(false) {
                self.let_portal_go(&interface, g);
                tracing::info!(
                    "gateway {here}: took {ip} off {interface} (it does not hold {}'s portal)",
                    g.name
                );
            }
        }
    }

    /// Puts a portal it just leased on its interface, listens there and announces it.
    fn hold_portal(&self, interface: &str, g: &Gateway) -> bool {
        let Some(ip) = portal_ip(g) else { return false };
        if let Err(e) = hostaddr::add(interface, ip) {
            tracing::error!(
                "cannot hold {}'s portal: {}",
                g.name,
                crate::base::logtext::chain(&e)
            );
            return false;
        }
        if let Err(e) = self.iscsi.listen_floating(g.portal.0) {
            tracing::error!("cannot listen on {}'s portal {}: {e}", g.name, g.portal);
            let _ = hostaddr::remove(interface, ip);
            return false;
        }
        // Twice: one frame may be lost; the second tells a switch that learnt late.
        for _ in 0..2 {
            if let Err(e) = hostaddr::announce(interface, ip) {
                tracing::warn!("{}", crate::base::logtext::chain(&e));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Stops listening on a portal and takes its address off the interface.
    fn let_portal_go(&self, interface: &str, g: &Gateway) {
        self.iscsi.close_floating(g.portal.0);
        if let Some(ip) = portal_ip(g) {
            if let Err(e) = hostaddr::remove(interface, ip) {
                tracing::warn!("{}", crate::base::logtext::chain(&e));
            }
        }
    }

    /// On the way out: every floating portal leaves this machine. The leases are left to
    /// run out (a cluster that does not answer must not hold up the exit).
    pub fn let_floating_portals_go(&self) {
        let m = self.manifest();
        let Some((_, interface)) = interface_here(&m) else {
            return;
        };
        let held: Vec<SocketAddr> = self.iscsi.floating_portals();
        for g in m.gateways.iter().filter(|g| held.contains(&g.portal.0)) {
            self.let_portal_go(&interface, g);
        }
    }
}
