//! The `gateways` section: several `cowctl serve` on different machines in front of one
//! Ceph cluster, sharing one manifest. Each PC has an order of gateways (rendezvous hashing
//! of the PC's and the gateways' names: stable, and a gateway added or removed moves only
//! its share of PCs); the first serves it, the next takes it over when the first is gone.
//! Each gateway listens on its own addresses, given here, in place of the manifest's.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Builder, Manifest, Portal};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub name: String,
    /// Its iSCSI portal: what boot scripts name for the PCs it serves.
    pub iscsi: String,
    pub http: Option<String>,
    pub admin: Option<String>,
    pub nbd: Option<String>,
    /// The interface its portal address floats on (see [`Gateway::interface`]).
    pub interface: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    pub name: String,
    pub portal: Portal,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub nbd: Option<SocketAddr>,
    /// With an interface, the portal's address is not the machine's own but floats: the
    /// gateway adds it to this interface while it holds it (a lease in the cluster), and
    /// another gateway takes it over, on its own interface, when this one is gone, so an
    /// OS's initiator that reconnects to the address finds a live gateway.
    pub interface: Option<String>,
}

/// A PC's rank at a gateway: the higher, the earlier the gateway serves it.
fn score(gateway: &str, pc: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(gateway.as_bytes())
        .chain_update([0])
        .chain_update(pc.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Manifest {
    /// The gateways in the order they serve `pc`: the first serves it, the next takes over.
    pub fn gateway_order(&self, pc: &str) -> Vec<&Gateway> {
        let mut order: Vec<&Gateway> = self.gateways.iter().collect();
        order.sort_by_key(|g| std::cmp::Reverse(score(&g.name, pc)));
        order
    }

    /// Whether this gateway (`here`) is the first to serve `pc`; always, without gateways.
    pub fn first_here(&self, pc: &str) -> bool {
        match (&self.here, self.gateway_order(pc).first()) {
            (Some(here), Some(first)) => first.name == *here,
            _ => true,
        }
    }

    /// The manifest as gateway `name` serves it: its own listeners in place of the
    /// manifest's. Errors when no gateway has that name.
    pub fn as_gateway(mut self, name: &str) -> Result<Manifest, String> {
        let Some(g) = self.gateways.iter().find(|g| g.name == name).cloned() else {
            let names: Vec<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
            return Err(format!(
                "this machine is gateway {name:?}, which the gateways section does not list ({}): set COWCTL_GATEWAY to one of them",
                names.join(", ")
            ));
        };
        if let Some(iscsi) = self.iscsi.as_mut() {
            // A floating portal is listened on while this gateway holds it, not from the start.
            iscsi.portals = if g.interface.is_some() {
                Vec::new()
            } else {
                vec![g.portal]
            };
        }
        if let Some(http) = self.http.as_mut() {
            http.listen = g.http.unwrap_or(http.listen);
            http.admin_listen = g.admin.unwrap_or(http.admin_listen);
        }
        self.nbd.listen = g.nbd.unwrap_or(self.nbd.listen);
        self.here = Some(g.name);
        Ok(self)
    }

    /// Which gateway this machine is: `$COWCTL_GATEWAY`, else its host name; None without a
    /// gateways section.
    pub fn gateway_name(&self) -> Option<String> {
        if self.gateways.is_empty() {
            return None;
        }
        std::env::var("COWCTL_GATEWAY")
            .ok()
            .or_else(crate::base::machine::known_host_name)
    }
}

impl Builder {
    pub(super) fn gateways(&mut self, raw: Vec<RawGateway>, ceph: bool) -> Vec<Gateway> {
        if !raw.is_empty() && !ceph {
            self.error("gateways", "gateways share PCs through the locks of a Ceph cluster: they need a ceph section and storage: rbd images");
        }
        let mut out: Vec<Gateway> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let at = |f: &str| format!("gateways[{i}].{f}");
            if out.iter().any(|g| g.name == r.name) {
                self.error(&at("name"), format!("gateway {} is listed twice", r.name));
            }
            let portal = match r.iscsi.parse::<Portal>() {
                Ok(p) if p.0.ip().is_unspecified() => {
                    self.error(
                        &at("iscsi"),
                        format!(
                            "{}: PCs dial this address; give the gateway's own, not {}",
                            r.name,
                            p.0.ip()
                        ),
                    );
                    continue;
                }
                Ok(p) => p,
                Err(e) => {
                    self.error(&at("iscsi"), e);
                    continue;
                }
            };
            let addr = |b: &mut Builder, field: &str, v: Option<String>| {
                v.and_then(|s| match s.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        b.error(
                            &at(field),
                            format!("{s:?} is not an address with a port (10.0.0.1:8080)"),
                        );
                        None
                    }
                })
            };
            let http = addr(self, "http", r.http);
            let admin = addr(self, "admin", r.admin);
            let nbd = addr(self, "nbd", r.nbd);
            let interface = r
                .interface
                .filter(|i| self.interface_ok(&at("interface"), &r.name, i, portal));
            out.push(Gateway {
                name: r.name,
                portal,
                http,
                admin,
                nbd,
                interface,
            });
        }
        let floating = out.iter().filter(|g| g.interface.is_some()).count();
        if floating > 0 && floating < out.len() {
            self.error(
                "gateways",
                "either every gateway's portal floats (each has an interface) or none does: a gateway without one could not take a dead one's address over",
            );
        }
        out
    }

    /// A floating portal's interface: a Linux interface name, and an IPv4 address to move.
    fn interface_ok(&mut self, at: &str, gateway: &str, interface: &str, portal: Portal) -> bool {
        let name_ok = !interface.is_empty()
            && interface.len() < 16
            && !interface.contains(['/', ':'])
            && !interface.chars().any(char::is_whitespace);
        if !name_ok {
            self.error(
                at,
                format!("{gateway}: {interface:?} is not a network interface name"),
            );
            return false;
        }
        if !portal.0.is_ipv4() {
            self.error(
                at,
                format!(
                    "{gateway}: only an IPv4 portal can float (gratuitous ARP moves it), not {}",
                    portal.0
                ),
            );
            return false;
        }
        true
    }
}
