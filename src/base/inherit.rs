//! Sockets that outlive a process: a planned restart of `cowctl serve` (an upgrade) hands
//! its listening sockets, by name, to the binary it executes in its place, which takes them
//! instead of binding anew. No connection is refused meanwhile: the kernel keeps queueing
//! new ones on the same socket.
//!
//! Names are what the manifest says ("tcp 0.0.0.0:3260", "unix /run/cowctl/nbd.sock"),
//! so the next process finds each socket where its own manifest asks for it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Mutex;

/// Sockets this process listens on, by name (raw: each is owned by its listener, which
/// lives as long as the process).
static OWN: Mutex<Vec<(String, RawFd)>> = Mutex::new(Vec::new());
/// Sockets the previous process handed over, until a listener takes them.
static GIVEN: Mutex<Option<HashMap<String, OwnedFd>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the sockets the previous process handed over (their descriptors, by name).
///
/// # Safety
/// Each fd must be open, owned by nobody else in this process, and a socket of the kind
/// its name says.
pub unsafe fn adopt(fds: &[(String, RawFd)]) {
    let mut given = lock(&GIVEN);
    let map = given.get_or_insert_with(HashMap::new);
    for (name, fd) in fds {
        // SAFETY: the caller vouches that the fd is open and ours alone.
        map.insert(name.clone(), unsafe { take_over(*fd) });
    }
}

/// Owns a descriptor the previous process left open across the exec, close-on-exec again:
/// not passed on to the programs this process starts (dnsmasq would keep the ports).
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub unsafe fn take_over(fd: RawFd) -> OwnedFd {
    let _ = set_close_on_exec(fd, true);
    // SAFETY: the caller vouches that the fd is open and ours alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Closes every socket this process holds beyond the standard streams: what a previous
/// process handed over when its handover cannot be read (the clients connect again, and the
/// listeners can be bound anew). Called first thing, before this process has sockets of
/// its own.
pub fn close_stray_sockets() -> usize {
    use nix::sys::stat::{fstat, SFlag};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    let mut closed = 0;
    for fd in fds {
        let socket = fstat(fd).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK
        });
        if socket && nix::unistd::close(fd).is_ok() {
            closed += 1;
        }
    }
    closed
}

/// Closes the handed-over sockets no listener took (the manifest no longer names them).
pub fn close_unclaimed() -> Vec<String> {
    lock(&GIVEN)
        .take()
        .map(|m| m.into_keys().collect())
        .unwrap_or_default()
}

fn take(name: &str) -> Option<OwnedFd> {
    lock(&GIVEN).as_mut()?.remove(name)
}

fn record(name: String, fd: RawFd) {
    let mut own = lock(&OWN);
    own.retain(|(n, _)| *n != name);
    own.push((name, fd));
}

/// Every socket this process listens on, for the next one.
pub fn own() -> Vec<(String, RawFd)> {
    lock(&OWN).clone()
}

/// A TCP listener on `addr`: the one handed over under that address, or a new one.
pub fn tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let name = format!("tcp {addr}");
    let l = match take(&name) {
        Some(fd) => TcpListener::from(fd),
        None => TcpListener::bind(addr)?,
    };
    record(name, l.as_raw_fd());
    Ok(l)
}

/// A unix listener at `path`: the one handed over, or what `bind` makes.
pub fn unix<E>(
    path: &Path,
    bind: impl FnOnce() -> Result<UnixListener, E>,
) -> Result<UnixListener, E> {
    let name = format!("unix {}", path.display());
    let l = match take(&name) {
        Some(fd) => UnixListener::from(fd),
        None => bind()?,
    };
    record(name, l.as_raw_fd());
    Ok(l)
}

/// Any other socket (AoE's raw one, named by its interface): handed over, or opened.
pub fn other<E>(name: &str, open: impl FnOnce() -> Result<OwnedFd, E>) -> Result<OwnedFd, E> {
    let fd = match take(name) {
        Some(fd) => fd,
        None => open()?,
    };
    record(name.to_string(), fd.as_raw_fd());
    Ok(fd)
}

/// Whether `fd` is closed by the next exec (every descriptor Rust opens is; false lets it
/// survive into the next process).
pub fn set_close_on_exec(fd: RawFd, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_over_listener_is_taken_by_its_address_and_still_accepts() {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let raw = OwnedFd::from(first);
        let fd = nix::unistd::dup(raw.as_raw_fd()).unwrap();
        drop(raw);
        // SAFETY: fd is a fresh dup owned by nobody else.
        unsafe { adopt(&[(format!("tcp {addr}"), fd)]) };
        let second = tcp(addr).unwrap();
        // The connection made before the handover is waiting on the same socket.
        let (conn, _) = second.accept().unwrap();
        assert_eq!(conn.peer_addr().unwrap(), client.local_addr().unwrap());
        assert!(own()
            .iter()
            .any(|(n, f)| *n == format!("tcp {addr}") && *f == fd));
        assert!(close_unclaimed().is_empty());
    }
}
