//! A planned restart of `cowctl serve` (`systemctl reload cowctl`, or SIGHUP): the
//! binary now on disk takes over in the same process (exec, so the pid, the log and
//! systemd's view stay), with every listening socket and every iSCSI session as it stood.
//!
//! 1. The manifest of the last apply must load, and the binary must be there; otherwise
//!    nothing changes and the reason is logged.
//! 2. Every iSCSI connection stops at a moment its session stands still (no command
//!    waiting for data, no ping unanswered), flushes its answers and parks its socket with
//!    its StatSN, ExpCmdSN and unread bytes; every NBD connection between two requests. The AoE workers stop between batches of frames;
//!    frames that come meanwhile wait in the same raw socket, which is handed over too.
//! 3. Every PC's disk is flushed: a write acknowledged under a write cache (iSCSI with WCE,
//!    NBD) is in the COW's data but its exception only in this process's memory until a
//!    flush, and the initiator's SYNCHRONIZE CACHE may come to the next process. Then the
//!    sockets are kept across exec and their names, fds, the sessions and the dashboard's
//!    history and events are written to a memfd whose number is in `COWCTL_HANDOVER_FD`.
//! 4. The new binary takes the sockets instead of binding, applies the manifest (opening
//!    every COW again) and resumes each session where it stood. The initiator sees a pause
//!    and no broken connection. NBD connections are handed over the same way, between two
//!    requests (NBD keeps no state between them beyond the export).

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::feed::{Monitor, SavedMonitor};
use crate::base::inherit;
use crate::iscsi::connection::{Handoff, Parked};
use crate::iscsi::Established;

/// The environment variable that tells the new process where the handover is.
pub const ENV: &str = "COWCTL_HANDOVER_FD";
/// Raised when the format changes; a new binary refuses a handover it does not know.
const FORMAT: u32 = 1;
/// How long the sessions have to stand still before the exec goes ahead without the rest
/// (those see a broken connection and log in again, as after a crash).
pub const STAND_STILL: Duration = Duration::from_secs(5);
/// The largest handover a new process reads (sessions carry at most a buffer each).
const MAX_STATE: u64 = 256 << 20;

/// What one process hands the next.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    format: u32,
    /// When the handover began (ms since the epoch), for the log of the pause.
    began_ms: u64,
    /// Listening sockets by name (see [`inherit`]).
    listeners: Vec<(String, RawFd)>,
    iscsi: Vec<ParkedSession>,
    #[serde(default)]
    nbd: Vec<NbdState>,
    /// The dashboard's fill history and event feed.
    #[serde(default)]
    monitor: Option<SavedMonitor>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NbdState {
    fd: RawFd,
    unix: bool,
    peer: String,
    ip: Option<std::net::IpAddr>,
    export: String,
    unread: Vec<u8>,
}

/// An NBD connection stopped between two requests: its socket (TCP, or the unix socket),
/// who it is, its export, and what was received and not yet read.
pub struct ParkedNbd {
    pub fd: OwnedFd,
    pub unix: bool,
    pub peer: String,
    pub ip: Option<std::net::IpAddr>,
    pub export: String,
    pub unread: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ParkedSession {
    fd: RawFd,
    est: Established,
    unread: Vec<u8>,
}

/// The coordinator: what connections and workers watch, and where they park.
pub struct Handover {
    wake: Arc<OwnedFd>,
    requested: AtomicBool,
    parked: Mutex<Vec<Parked>>,
    /// Sessions that stood still and are on their way to `parked`.
    parking: AtomicUsize,
    parked_nbd: Mutex<Vec<ParkedNbd>>,
    /// NBD connections in their transmission phase.
    nbd_live: AtomicUsize,
    /// AoE workers that have stopped between batches.
    aoe_stopped: AtomicUsize,
}

/// Counts an NBD connection as live while it is held.
pub struct NbdLive<'a>(&'a Handover);

impl Drop for NbdLive<'_> {
    fn drop(&mut self) {
        self.0.nbd_live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Handoff for Handover {
    fn wake(&self) -> Arc<OwnedFd> {
        self.wake.clone()
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn parking(&self) {
        self.parking.fetch_add(1, Ordering::AcqRel);
    }

    fn take(&self, parked: Option<Parked>) {
        if let Some(parked) = parked {
            self.parked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(parked);
        }
        self.parking.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Handover {
    pub fn new() -> std::io::Result<Handover> {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )?;
        Ok(Handover {
            wake: Arc::new(OwnedFd::from(fd)),
            requested: AtomicBool::new(false),
            parked: Mutex::new(Vec::new()),
            parking: AtomicUsize::new(0),
            parked_nbd: Mutex::new(Vec::new()),
            nbd_live: AtomicUsize::new(0),
            aoe_stopped: AtomicUsize::new(0),
        })
    }

    /// The fd that becomes readable when a handover is asked for.
    pub fn wake_fd(&self) -> &OwnedFd {
        &self.wake
    }

    /// An NBD connection entered transmission: the handover waits for it to park.
    pub fn nbd_live(&self) -> NbdLive<'_> {
        self.nbd_live.fetch_add(1, Ordering::AcqRel);
        NbdLive(self)
    }

    /// Takes an NBD connection that stopped between two requests.
    pub fn take_nbd(&self, parked: ParkedNbd) {
        self.parked_nbd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(parked);
    }

    /// An AoE worker stops here for good once a handover is asked for.
    pub fn stop_aoe_worker(&self) -> ! {
        self.aoe_stopped.fetch_add(1, Ordering::AcqRel);
        loop {
            std::thread::park();
        }
    }

    fn request(&self) -> std::io::Result<()> {
        self.requested.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        nix::unistd::write(&*self.wake, &one)?;
        Ok(())
    }

    /// Waits until every session has parked and every AoE worker has stopped (`live`
    /// counts the sessions still running), at most [`STAND_STILL`].
    fn wait_for_stillness(&self, live: &dyn Fn() -> usize, aoe_workers: usize) -> bool {
        let until = Instant::now() + STAND_STILL;
        while Instant::now() < until {
            let nbd = self.nbd_live.load(Ordering::Acquire);
            let parking = self.parking.load(Ordering::Acquire);
            if live() + nbd + parking == 0
                && self.aoe_stopped.load(Ordering::Acquire) >= aoe_workers
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

/// Why a handover did not happen (the service carries on as it was).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the manifest of the last apply, {path}, does not load: {why}")]
    Manifest { path: PathBuf, why: String },
    #[error("the binary to run, {path}, is not there: {source}")]
    Binary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot ask the connections to stand still: {0}")]
    Wake(std::io::Error),
}

/// What the service above provides: how many sessions still run, how many AoE workers
/// there are, a stop of all I/O (every PC's connections still there closed, and waited
/// for, so nothing is acknowledged after the flush), and a flush of every PC's disk
/// (writes acknowledged under a write cache are on disk only after one; the next process
/// must find them); both return their failures.
pub struct Room<'a> {
    pub live_sessions: &'a dyn Fn() -> usize,
    pub aoe_workers: usize,
    pub stop_all: &'a dyn Fn() -> Vec<String>,
    pub flush_all: &'a dyn Fn() -> Vec<String>,
    /// The dashboard's history and events, carried over.
    pub monitor: &'a Monitor,
}

/// Hands everything over to `exe`, serving `manifest`; returns only if the handover was
/// refused before anything stopped. Once connections have stopped it never returns: if
/// the exec fails the old binary (still `/proc/self/exe`) is executed instead.
pub fn upgrade(handover: &Handover, room: Room<'_>, exe: &Path, manifest: &Path) -> Refused {
    if let Err(e) = crate::image::load_manifest(manifest) {
        return Refused::Manifest {
            path: manifest.to_path_buf(),
            why: crate::base::logtext::chain(&e),
        };
    }
    if let Err(source) = std::fs::metadata(exe) {
        return Refused::Binary {
            path: exe.to_path_buf(),
            source,
        };
    }
    let began = Instant::now();
    let began_ms = unix_ms();
    if let Err(e) = handover.request() {
        return Refused::Wake(e);
    }
    let still = handover.wait_for_stillness(room.live_sessions, room.aoe_workers);
    let left = (room.live_sessions)() + handover.nbd_live.load(Ordering::Acquire);
    // Connections that did not stand still are cut here, before the flush: none of them
    // may acknowledge a write the flush does not cover.
    for failure in (room.stop_all)() {
        tracing::error!("handover: stopping {failure}");
    }
    for failure in (room.flush_all)() {
        tracing::error!("handover: flushing {failure}");
    }
    let parked = std::mem::take(&mut *handover.parked.lock().unwrap_or_else(|p| p.into_inner()));
    let nbd = std::mem::take(
        &mut *handover
            .parked_nbd
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    tracing::info!(
        "handover: {} iSCSI sessions and {} NBD connections stood still in {:.1} ms{}; running {}",
        parked.len(),
        nbd.len(),
        began.elapsed().as_secs_f64() * 1000.0,
        if still {
            String::new()
        } else {
            format!(
                " ({left} did not within {} s and are cut)",
                STAND_STILL.as_secs()
            )
        },
        exe.display()
    );
    let state = State {
        format: FORMAT,
        began_ms,
        listeners: inherit::own(),
        iscsi: parked
            .into_iter()
            .map(|p| ParkedSession {
                fd: OwnedFd::from(p.stream).into_raw_fd(),
                est: p.est,
                unread: p.unread,
            })
            .collect(),
        nbd: nbd
            .into_iter()
            .map(|p| NbdState {
                fd: p.fd.into_raw_fd(),
                unix: p.unix,
                peer: p.peer,
                ip: p.ip,
                export: p.export,
                unread: p.unread,
            })
            .collect(),
        monitor: Some(room.monitor.export()),
    };
    let err = exec(&state, exe, manifest);
    tracing::error!(
        "handover: cannot run {}: {err}; running the old binary again",
        exe.display()
    );
    let err = exec(&state, Path::new("/proc/self/exe"), manifest);
    tracing::error!("handover: cannot run the old binary either: {err}; exiting");
    std::process::exit(1)
}

/// Writes the state to a memfd, keeps every fd across the exec and runs `exe serve`.
fn exec(state: &State, exe: &Path, manifest: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let memfd = match write_state(state) {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let fds = state
        .listeners
        .iter()
        .map(|(_, fd)| *fd)
        .chain(state.iscsi.iter().map(|s| s.fd))
        .chain(state.nbd.iter().map(|s| s.fd))
        .chain([memfd.as_raw_fd()]);
    for fd in fds {
        if let Err(e) = inherit::set_close_on_exec(fd, false) {
            return e;
        }
    }
    std::process::Command::new(exe)
        .arg("serve")
        .arg("-f")
        .arg(manifest)
        .env(ENV, memfd.as_raw_fd().to_string())
        .exec()
}

fn write_state(state: &State) -> std::io::Result<OwnedFd> {
    let text = serde_json::to_vec(state)?;
    // SAFETY: a plain system call with a NUL-terminated name; the fd is owned from here.
    let fd = unsafe {
        let raw = libc::memfd_create(c"cowctl-handover".as_ptr(), 0);
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(raw)
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(&text)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// What the previous process handed over: its listening sockets are adopted (see
/// [`inherit`]) and its sessions returned, to resume once the manifest is applied.
pub struct Taken {
    pub sessions: Vec<Parked>,
    pub nbd: Vec<ParkedNbd>,
    /// The dashboard's history and events, for the new Monitor.
    pub monitor: Option<SavedMonitor>,
    /// How long ago the handover began.
    pub since: Duration,
}

/// Takes the handover named in the environment, if there is one. A handover that cannot
/// be read is logged and dropped: its sessions' initiators log in again.
pub fn take_from_env() -> Option<Taken> {
    let value = std::env::var(ENV).ok()?;
    // Removed at once, so the processes this one starts do not see it.
    std::env::remove_var(ENV);
    match read_state(&value) {
        Ok(state) => Some(adopt(state)),
        Err(why) => {
            // Its sockets are closed, so the listeners can be bound anew and the clients
            // connect again, as after a restart.
            let closed = inherit::close_stray_sockets();
            tracing::error!("handover: cannot read what the previous process handed over ({ENV}={value}): {why}; its {closed} sockets are closed");
            None
        }
    }
}

fn read_state(value: &str) -> Result<State, String> {
    let fd: RawFd = value
        .parse()
        .map_err(|_| "not a file descriptor".to_string())?;
    if fd < 3 {
        return Err("not a file descriptor of a handover".into());
    }
    // SAFETY: the previous process left this memfd open for this one alone.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = Vec::new();
    file.take(MAX_STATE)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    let state: State = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if state.format != FORMAT {
        return Err(format!(
            "format {} where this binary knows {FORMAT}",
            state.format
        ));
    }
    Ok(state)
}

fn adopt(mut state: State) -> Taken {
    // Never the standard streams, whatever the state says.
    state.listeners.retain(|(_, fd)| *fd > 2);
    state.iscsi.retain(|s| s.fd > 2);
    state.nbd.retain(|s| s.fd > 2);
    // SAFETY: the previous process kept these fds open across the exec for this one, and
    // nothing in this process has opened them (the state is read before anything else).
    unsafe { inherit::adopt(&state.listeners) };
    let sessions = state
        .iscsi
        .into_iter()
        .map(|s| Parked {
            // SAFETY: as above: an open TCP socket of a parked session, ours alone.
            stream: std::net::TcpStream::from(unsafe { inherit::take_over(s.fd) }),
            est: s.est,
            unread: s.unread,
        })
        .collect();
    let nbd = state
        .nbd
        .into_iter()
        .map(|s| ParkedNbd {
            // SAFETY: as above: an open socket of a parked NBD connection, ours alone.
            fd: unsafe { inherit::take_over(s.fd) },
            unix: s.unix,
            peer: s.peer,
            ip: s.ip,
            export: s.export,
            unread: s.unread,
        })
        .collect();
    Taken {
        sessions,
        nbd,
        monitor: state.monitor,
        since: Duration::from_millis(unix_ms().saturating_sub(state.began_ms)),
    }
}

/// Milliseconds since the epoch: a time both processes of a handover read alike.
fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    u64::try_from(since.unwrap_or_default().as_millis()).unwrap_or(0)
}
