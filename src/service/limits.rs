//! Caps on connections a network client can open: in total and per source address, so
//! one machine on the room's LAN cannot take every thread and descriptor of the service.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections of one protocol at once, by default.
pub const DEFAULT_TOTAL: usize = 1024;
/// Connections from one address at once, by default: a PC needs two (its boot firmware's
/// and its operating system's), an admin's tools a few more.
pub const DEFAULT_PER_ADDRESS: usize = 16;

#[derive(Debug)]
pub struct ConnLimits {
    total: usize,
    per_address: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections are open already (the limit)")]
    Total(usize),
    #[error("{1} already has {0} connections open (the limit per address)")]
    PerAddress(usize, IpAddr),
}

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(total: usize, per_address: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            total,
            per_address,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let ip = ip.to_canonical();
        let mut s = self.lock();
        if s.open >= self.total {
            return Err(Refused::Total(self.total));
        }
        let n = s.by_address.entry(ip).or_default();
        if *n >= self.per_address {
            return Err(Refused::PerAddress(self.per_address, ip));
        }
        *n += 1;
        s.open += 1;
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.lock().open
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limits.lock();
        s.open -= 1;
        if let Some(n) = s.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_address.remove(&self.ip);
            }
        }
    }
}

/// A dead peer (a PC switched off mid-session) is found within about a minute even when
/// it sends nothing.
pub fn keepalive(stream: &std::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_address_and_gives_places_back() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::PerAddress(2, a));
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refused::Total(3));
        drop(p1);
        let mapped = l.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(l.open(), 3);
        assert_eq!(
            l.admit(a).unwrap_err(),
            Refused::Total(3),
            "IPv4-mapped is the same address"
        );
        drop(mapped);
        assert_eq!(l.open(), 2);
    }
}
