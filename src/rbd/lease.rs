//! Leases: RADOS's advisory object locks (cls_lock) taken with a duration, which the OSD
//! forgets once the holder stops renewing them. For what a gateway holds only while it is
//! alive and nothing in the cluster watches (a floating portal address), not for images:
//! those have RBD's exclusive lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{check, cstr, Pool, Result};

/// Renew the lock if this client and cookie hold it already (librados.h).
const LOCK_FLAG_MAY_RENEW: u8 = 1;
/// The longest list of lockers read (a few are expected; each is a short line).
const LOCKERS_MAX: usize = 1 << 16;

/// Who holds a lock: the client instance and the cookie it took the lock with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    /// `client.4123`: one connection of one process.
    pub client: String,
    pub cookie: String,
}

impl Pool {
    /// Takes or renews `lock` on `object` (made if missing) for `duration`, as this
    /// connection with `cookie`. False when somebody else holds it.
    pub fn lease(
        &self,
        object: &str,
        lock: &str,
        cookie: &str,
        duration: Duration,
    ) -> Result<bool> {
        let (o, l, c) = (
            cstr(object, "the object name")?,
            cstr(lock, "the lock name")?,
            cstr(cookie, "the cookie")?,
        );
        let desc = cstr("cowctl", "")?;
        let mut tv = libc::timeval {
            tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(duration.subsec_micros()),
        };
        // SAFETY: a live ioctx, C strings and a timeval that outlive the call.
        let ret = unsafe {
            (self.calls().rados_lock_exclusive)(
                self.io,
                o.as_ptr(),
                l.as_ptr(),
                c.as_ptr(),
                desc.as_ptr(),
                &mut tv,
                LOCK_FLAG_MAY_RENEW,
            )
        };
        if ret == -libc::EBUSY || ret == -libc::EEXIST {
            return Ok(false);
        }
        check(ret.into(), "lock", || format!("{lock} on {object}"))?;
        Ok(true)
    }

    /// Lets go of a lock this connection holds with `cookie` (nothing if it does not).
    pub fn unlock(&self, object: &str, lock: &str, cookie: &str) -> Result<()> {
        let (o, l, c) = (
            cstr(object, "the object name")?,
            cstr(lock, "the lock name")?,
            cstr(cookie, "the cookie")?,
        );
        // SAFETY: a live ioctx and C strings.
        let ret =
            unsafe { (self.calls().rados_unlock)(self.io, o.as_ptr(), l.as_ptr(), c.as_ptr()) };
        if ret == -libc::ENOENT {
            return Ok(());
        }
        check(ret.into(), "unlock", || format!("{lock} on {object}")).map(drop)
    }

    /// Removes another client's hold on a lock (nothing if it is gone already).
    pub fn break_lock(&self, object: &str, lock: &str, locker: &Locker) -> Result<()> {
        let (o, l, client, c) = (
            cstr(object, "the object name")?,
            cstr(lock, "the lock name")?,
            cstr(&locker.client, "the client")?,
            cstr(&locker.cookie, "the cookie")?,
        );
        // SAFETY: a live ioctx and C strings.
        let ret = unsafe {
            (self.calls().rados_break_lock)(
                self.io,
                o.as_ptr(),
                l.as_ptr(),
                client.as_ptr(),
                c.as_ptr(),
            )
        };
        if ret == -libc::ENOENT {
            return Ok(());
        }
        check(ret.into(), "break lock", || format!("{lock} on {object}")).map(drop)
    }

    /// Who holds `lock` on `object` now (the OSD leaves out leases run out).
    pub fn lockers(&self, object: &str, lock: &str) -> Result<Vec<Locker>> {
        let (o, l) = (
            cstr(object, "the object name")?,
            cstr(lock, "the lock name")?,
        );
        let mut len = 1024usize;
        loop {
            let mut exclusive = 0;
            let (mut tag, mut clients, mut cookies, mut addrs) = (
                vec![0u8; len],
                vec![0u8; len],
                vec![0u8; len],
                vec![0u8; len],
            );
            let (mut tag_len, mut clients_len, mut cookies_len, mut addrs_len) =
                (len, len, len, len);
            // SAFETY: a live ioctx, C strings, four buffers of the lengths given.
            let ret = unsafe {
                (self.calls().rados_list_lockers)(
                    self.io,
                    o.as_ptr(),
                    l.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    &mut tag_len,
                    clients.as_mut_ptr().cast(),
                    &mut clients_len,
                    cookies.as_mut_ptr().cast(),
                    &mut cookies_len,
                    addrs.as_mut_ptr().cast(),
                    &mut addrs_len,
                )
            };
            if ret == -(libc::ENOENT as isize) {
                return Ok(Vec::new());
            }
            let wanted = tag_len.max(clients_len).max(cookies_len).max(addrs_len);
            if ret == -(libc::ERANGE as isize) && wanted > len && wanted <= LOCKERS_MAX {
                len = wanted;
                continue;
            }
            let count = check(ret as i64, "list lockers", || format!("{lock} on {object}"))?;
            let names = |buf: &[u8]| -> Vec<String> {
                buf.split(|&b| b == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let (clients, cookies) = (
                names(&clients[..clients_len.min(len)]),
                names(&cookies[..cookies_len.min(len)]),
            );
            let count = usize::try_from(count).unwrap_or(0);
            return Ok(clients
                .into_iter()
                .zip(cookies)
                .take(count)
                .map(|(client, cookie)| Locker { client, cookie })
                .collect());
        }
    }

    /// Whether `locker` is this connection.
    pub fn is_this_client(&self, locker: &Locker) -> bool {
        locker.client == self.instance()
    }
}

/// How long a [`Held`] lease lasts unrenewed: a killed holder's runs out after this.
const HELD_LEASE: Duration = Duration::from_secs(30);

/// A lease renewed by a thread of its own until dropped, for work that may outlast one
/// lease (an import of a large image).
pub struct Held {
    /// Whether it was let go; the renewing thread holds this lock across each renewal,
    /// so none can land after the unlock.
    stopped: Arc<Mutex<bool>>,
    /// A renewal failed, or came later than the lease lasts: somebody else may hold it now.
    lost: Arc<std::sync::atomic::AtomicBool>,
    pool: Arc<Pool>,
    object: String,
    lock: String,
    cookie: String,
}

impl Pool {
    /// Takes `lock` on `object` as `cookie` and keeps it renewed until the [`Held`] is
    /// dropped. While somebody else holds it, asks again every half second for up to
    /// `wait`, then gives the holders' cookies.
    pub fn hold(
        self: &Arc<Self>,
        object: &str,
        lock: &str,
        cookie: &str,
        wait: Duration,
    ) -> Result<std::result::Result<Held, Vec<String>>> {
        let end = Instant::now() + wait;
        while !self.lease(object, lock, cookie, HELD_LEASE)? {
            if Instant::now() >= end {
                let holders = self.lockers(object, lock)?;
                return Ok(Err(holders.into_iter().map(|l| l.cookie).collect()));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let held = Held {
            stopped: Arc::new(Mutex::new(false)),
            lost: Arc::default(),
            pool: self.clone(),
            object: object.to_string(),
            lock: lock.to_string(),
            cookie: cookie.to_string(),
        };
        let (stopped, lost, pool) = (held.stopped.clone(), held.lost.clone(), self.clone());
        let (o, l, c) = (held.object.clone(), held.lock.clone(), held.cookie.clone());
        std::thread::spawn(move || {
            let mut renewed = Instant::now();
            loop {
                std::thread::sleep(HELD_LEASE / 3);
                let stopped = stopped.lock().unwrap_or_else(|p| p.into_inner());
                if *stopped {
                    return;
                }
                let asked = Instant::now();
                let kept = match pool.lease(&o, &l, &c, HELD_LEASE) {
                    Ok(kept) => kept,
                    Err(e) => {
                        tracing::warn!("cannot renew the {l} lease on {o}: {e}");
                        false
                    }
                };
                if !kept || asked.duration_since(renewed) >= HELD_LEASE {
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                renewed = asked;
            }
        });
        Ok(Ok(held))
    }
}

impl Held {
    /// Whether the lease may have run out: a renewal failed or came too late.
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        *stopped = true;
        if let Err(e) = self.pool.unlock(&self.object, &self.lock, &self.cookie) {
            tracing::warn!("{e}");
        }
    }
}
