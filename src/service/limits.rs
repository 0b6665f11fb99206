//! Caps on the connections a network client can open, so that nobody on the room's LAN can
//! take the service's threads and memory, or keep the PCs from logging in.
//!
//! A connection starts **waiting**: it has not yet proved it is a PC (an iSCSI login or
//! discovery session, an NBD handshake). Waiting connections have a small pool of their
//! own, capped per address, and an absolute deadline set by their protocol. When a PC has
//! logged in (or an NBD client has opened an export it may open) its connection moves to
//! the pool of **members**, which strangers cannot fill. Two rules keep strangers from
//! holding the waiting pool:
//! - addresses of the manifest's PCs wait outside the strangers' total (only their own
//!   per-address cap applies), so a PC with an `ip` always finds a place to log in;
//! - when the strangers' total is reached, the oldest waiting stranger that has waited at
//!   least [`EVICTABLE_AFTER`] is closed to make room: a real login takes milliseconds, so
//!   only a connection that sits on its place is cut off, and an attacker must open
//!   connections faster than PCs log in (flooding, out of scope) to keep one out.
//!
//! Worst case in memory (measured by `tests/slots.rs`, docs/SECURITY.md): every member and
//! every waiting connection is one thread; the buffers they allocate are touched only as
//! far as data arrives.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections of members (logged-in PCs, open NBD exports) at once.
pub const MEMBERS_TOTAL: usize = 1024;
/// Members from one address: a PC needs two (its boot firmware's and its operating
/// system's), an admin's tools a few more.
pub const MEMBERS_PER_ADDRESS: usize = 16;
/// Strangers' connections waiting to log in or to choose an export, at once: room for
/// a room of 200 PCs without an `ip` that all log in in the same second.
pub const WAITING_TOTAL: usize = 256;
/// Waiting connections from one address (fio or a boot storm opens several at once).
pub const WAITING_PER_ADDRESS: usize = 8;
/// A stranger that has waited this long may be closed to make room for a newcomer.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// A total and a per-address cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
}

/// How a connection is shut from another thread, when it is evicted.
pub type Closer = Box<dyn Fn() + Send>;

pub struct ConnLimits {
    members: Caps,
    waiting: Caps,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The manifest's PCs' addresses.
    pcs: HashSet<IpAddr>,
    members: usize,
    strangers_waiting: usize,
    by_address: HashMap<IpAddr, Counts>,
    /// Waiting strangers in the order they came, with how to close each.
    queue: BTreeMap<u64, (IpAddr, Instant, Closer)>,
    next_id: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    waiting: usize,
    members: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections of logged-in clients are open already (the limit)")]
    Members(usize),
    #[error("{1} already has {0} logged-in connections open (the limit per address)")]
    MembersPerAddress(usize, IpAddr),
    #[error("{0} connections are waiting to log in already and none has waited long enough to be cut off")]
    Waiting(usize),
    #[error("{1} already has {0} connections waiting to log in (the limit per address)")]
    WaitingPerAddress(usize, IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting; `id` is its place in the strangers' queue, None for a PC's address.
    Waiting {
        id: Option<u64>,
    },
    Member,
    Gone,
}

/// An admitted connection; dropping it gives its place back.
pub struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    stage: Stage,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({}, {:?})", self.ip, self.stage)
    }
}

impl ConnLimits {
    pub fn new(members: Caps, waiting: Caps) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            members,
            waiting,
            state: Mutex::new(State::default()),
        })
    }

    /// The caps every network protocol of the service uses.
    pub fn standard() -> Arc<ConnLimits> {
        ConnLimits::new(
            Caps {
                total: MEMBERS_TOTAL,
                per_address: MEMBERS_PER_ADDRESS,
            },
            Caps {
                total: WAITING_TOTAL,
                per_address: WAITING_PER_ADDRESS,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses of the manifest's PCs (after each apply).
    pub fn set_pc_addresses(&self, pcs: impl IntoIterator<Item = IpAddr>) {
        self.lock().pcs = pcs.into_iter().map(|ip| ip.to_canonical()).collect();
    }

    /// Admits a waiting connection from `ip`, or says which cap it hit. `close` shuts the
    /// connection if it is evicted to make room for a newcomer.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, close: Closer) -> Result<Permit, Refused> {
        let ip = ip.to_canonical();
        let mut s = self.lock();
        let counts = s.by_address.get(&ip).copied().unwrap_or_default();
        if counts.waiting >= self.waiting.per_address {
            return Err(Refused::WaitingPerAddress(self.waiting.per_address, ip));
        }
        let id = if s.pcs.contains(&ip) {
            None
        } else {
            if s.strangers_waiting >= self.waiting.total && !s.evict_oldest() {
                return Err(Refused::Waiting(self.waiting.total));
            }
            let id = s.next_id;
            s.next_id += 1;
            s.queue.insert(id, (ip, Instant::now(), close));
            s.strangers_waiting += 1;
            Some(id)
        };
        s.by_address.entry(ip).or_default().waiting += 1;
        Ok(Permit {
            limits: self.clone(),
            ip,
            stage: Stage::Waiting { id },
        })
    }

    /// Admits a connection straight into the members' pool (HTTP, which has no login).
    pub fn admit_member(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let ip = ip.to_canonical();
        let mut s = self.lock();
        s.take_member_place(ip, self.members)?;
        Ok(Permit {
            limits: self.clone(),
            ip,
            stage: Stage::Member,
        })
    }

    /// Connections open: members and waiting.
    pub fn open(&self) -> usize {
        let s = self.lock();
        s.by_address.values().map(|c| c.waiting + c.members).sum()
    }
}

impl State {
    /// Closes the oldest waiting stranger if it has waited long enough; its place is free
    /// at once (its thread ends on the closed socket).
    fn evict_oldest(&mut self) -> bool {
        let Some((&id, &(ip, since, _))) = self.queue.iter().next() else {
            return false;
        };
        if since.elapsed() < EVICTABLE_AFTER {
            return false;
        }
        let (_, _, close) = self.queue.remove(&id).expect("present");
        self.strangers_waiting -= 1;
        self.release(ip, |c| &mut c.waiting);
        tracing::warn!(
            "closed a connection from {ip} that waited {} s to log in, to make room",
            since.elapsed().as_secs()
        );
        close();
        true
    }

    fn take_member_place(&mut self, ip: IpAddr, caps: Caps) -> Result<(), Refused> {
        if self.members >= caps.total {
            return Err(Refused::Members(caps.total));
        }
        let c = self.by_address.entry(ip).or_default();
        if c.members >= caps.per_address {
            return Err(Refused::MembersPerAddress(caps.per_address, ip));
        }
        c.members += 1;
        self.members += 1;
        Ok(())
    }

    fn release(&mut self, ip: IpAddr, which: impl Fn(&mut Counts) -> &mut usize) {
        if let Some(c) = self.by_address.get_mut(&ip) {
            *which(c) -= 1;
            if c.waiting == 0 && c.members == 0 {
                self.by_address.remove(&ip);
            }
        }
    }

    /// Gives a waiting connection's place back; false when it was evicted already.
    fn leave_waiting(&mut self, ip: IpAddr, id: Option<u64>) -> bool {
        if let Some(id) = id {
            if self.queue.remove(&id).is_none() {
                return false;
            }
            self.strangers_waiting -= 1;
        }
        self.release(ip, |c| &mut c.waiting);
        true
    }
}

impl Permit {
    /// The client has proved it may be served: it moves to the members' pool (and stops
    /// counting as waiting). Refused when the members' pool or its address's share is
    /// full, or when it was evicted meanwhile; it then keeps waiting until it is dropped.
    pub fn promote(&mut self) -> Result<(), Refused> {
        let Stage::Waiting { id } = self.stage else {
            return Ok(());
        };
        let mut s = self.limits.lock();
        s.take_member_place(self.ip, self.limits.members)?;
        if !s.leave_waiting(self.ip, id) {
            s.members -= 1;
            s.release(self.ip, |c| &mut c.members);
            self.stage = Stage::Gone;
            return Err(Refused::Waiting(self.limits.waiting.total));
        }
        self.stage = Stage::Member;
        Ok(())
    }

    pub fn is_member(&self) -> bool {
        self.stage == Stage::Member
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limits.lock();
        match self.stage {
            Stage::Waiting { id } => {
                s.leave_waiting(self.ip, id);
            }
            Stage::Member => {
                s.members -= 1;
                s.release(self.ip, |c| &mut c.members);
            }
            Stage::Gone => {}
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

/// A closer for a TCP connection.
pub fn closer(stream: &std::net::TcpStream) -> Closer {
    match stream.try_clone() {
        Ok(s) => Box::new(move || {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }),
        Err(_) => Box::new(|| {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn caps(total: usize, per_address: usize) -> Caps {
        Caps { total, per_address }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn none() -> Closer {
        Box::new(|| {})
    }

    #[test]
    fn members_are_capped_in_total_and_per_address_and_give_places_back() {
        let l = ConnLimits::new(caps(3, 2), caps(10, 10));
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let p1 = l.admit_member(a).unwrap();
        let _p2 = l.admit_member(a).unwrap();
        assert_eq!(
            l.admit_member(a).unwrap_err(),
            Refused::MembersPerAddress(2, a)
        );
        let _p3 = l.admit_member(b).unwrap();
        assert_eq!(l.admit_member(b).unwrap_err(), Refused::Members(3));
        drop(p1);
        let mapped = l.admit_member(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(l.open(), 3);
        assert_eq!(
            l.admit_member(a).unwrap_err(),
            Refused::Members(3),
            "IPv4-mapped is the same address"
        );
        drop(mapped);
        assert_eq!(l.open(), 2);
    }

    #[test]
    fn waiting_connections_are_capped_per_address_and_promoted_ones_leave_the_pool() {
        let l = ConnLimits::new(caps(10, 10), caps(4, 2));
        let a = ip("10.0.0.1");
        let mut w1 = l.admit(a, none()).unwrap();
        let _w2 = l.admit(a, none()).unwrap();
        assert_eq!(
            l.admit(a, none()).unwrap_err(),
            Refused::WaitingPerAddress(2, a)
        );
        w1.promote().unwrap();
        assert!(w1.is_member());
        let _w3 = l.admit(a, none()).unwrap();
        assert_eq!(l.open(), 3);
        drop(w1);
        assert_eq!(l.open(), 2);
    }

    #[test]
    fn a_full_strangers_pool_refuses_newcomers_until_its_oldest_has_waited_long_enough() {
        let l = ConnLimits::new(caps(10, 10), caps(2, 2));
        let closed = Arc::new(AtomicUsize::new(0));
        let counting = || -> Closer {
            let c = closed.clone();
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
        };
        let mut old = l.admit(ip("10.0.0.1"), counting()).unwrap();
        let _young = l.admit(ip("10.0.0.2"), counting()).unwrap();
        assert_eq!(
            l.admit(ip("10.0.0.3"), none()).unwrap_err(),
            Refused::Waiting(2),
            "nobody has waited long enough to be cut off"
        );
        std::thread::sleep(EVICTABLE_AFTER);
        let _new = l.admit(ip("10.0.0.3"), none()).unwrap();
        assert_eq!(closed.load(Ordering::SeqCst), 1, "the oldest was closed");
        assert_eq!(old.promote().unwrap_err(), Refused::Waiting(2));
        drop(old);
        assert_eq!(
            l.open(),
            2,
            "the evicted connection's place was given back once"
        );
    }

    #[test]
    fn a_pcs_address_waits_outside_the_strangers_pool() {
        let l = ConnLimits::new(caps(10, 10), caps(1, 2));
        let pc = ip("10.0.0.11");
        l.set_pc_addresses([pc]);
        let _stranger = l.admit(ip("10.0.0.99"), none()).unwrap();
        let mut p = l.admit(pc, none()).unwrap();
        let _p2 = l.admit(pc, none()).unwrap();
        assert_eq!(
            l.admit(pc, none()).unwrap_err(),
            Refused::WaitingPerAddress(2, pc)
        );
        p.promote().unwrap();
        assert_eq!(l.open(), 3);
    }
}
