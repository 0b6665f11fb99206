//! The iSCSI target's connections by the address they were made to, so that those made to
//! a floating portal end when its address leaves this machine: their initiators connect
//! again, to whoever holds the address now, instead of talking to a socket no packet
//! reaches any more.

use std::collections::{BTreeSet, HashMap};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A copy of each live connection's stream, by number, with its local address.
    live: HashMap<u64, (SocketAddr, TcpStream)>,
    /// Addresses given up: a connection made there a moment before is ended at once.
    closed: BTreeSet<SocketAddr>,
    next: u64,
}

/// Forgets its connection when dropped (with the connection's thread).
pub struct Tracked(Arc<Connections>, u64);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.lock().live.remove(&self.1);
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection in, until the returned guard drops.
    pub fn track(self: &Arc<Self>, stream: &TcpStream) -> Option<Tracked> {
        let local = stream.local_addr().ok()?;
        let mut inner = self.lock();
        if inner.closed.contains(&local) {
            let _ = stream.shutdown(Shutdown::Both);
            return None;
        }
        let copy = stream.try_clone().ok()?;
        let id = inner.next;
        inner.next += 1;
        inner.live.insert(id, (local, copy));
        Some(Tracked(self.clone(), id))
    }

    /// Connections may be made to `local` again (this machine holds it again).
    pub fn open(&self, local: SocketAddr) {
        self.lock().closed.remove(&local);
    }

    /// Ends every connection made to `local`, and any made there until it is open again.
    pub fn end_at(&self, local: SocketAddr) {
        let mut inner = self.lock();
        inner.closed.insert(local);
        for (at, s) in inner.live.values() {
            if *at == local {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}
