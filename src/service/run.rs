//! `cowctl serve`: bind the NBD and control sockets, serve the manifest, answer control
//! requests, and on SIGTERM or SIGINT commit every COW and exit.

use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Error, HttpError, Result};
use nix::sys::signal::{SigSet, Signal};

use super::autoextend;
use super::control::{self, Request, Response};
use super::exports::Registry;
use super::feed::Monitor;
use super::handover::{self, Handover};
use super::live_room::{KernelRoom, LiveRoom};
use super::{gateway, listen, nbd_socket, Service};
use crate::base::inherit;
use crate::base::logtext::chain;
use crate::manifest::{HttpConfig, Manifest};

pub struct Options {
    pub manifest: PathBuf,
    pub run_dir: PathBuf,
    /// Serve nothing until the first `apply` (how `cowctl apply` starts the service, so it
    /// can print the steps itself).
    pub start_empty: bool,
    /// The kernel serves the disks: run only HTTP and auto-extend over its snapshots.
    pub kernel: bool,
    /// Starts the HTTP service when the manifest has an `http` section: `web::spawn`,
    /// handed in from above since the web layer is built on this one.
    pub http: StartHttp,
}

/// Starts the HTTP service over the room and the event feed; returns where it listens.
pub type StartHttp =
    fn(HttpConfig, Arc<dyn LiveRoom>, Arc<Monitor>) -> Result<Vec<SocketAddr>, HttpError>;

pub fn run(opts: &Options) -> Result<()> {
    let manifest = crate::image::load_manifest(&opts.manifest)?;
    if opts.kernel {
        return run_kernel(opts, manifest);
    }
    // A planned restart: the previous process's sockets and sessions, taken first.
    let mut taken = handover::take_from_env();
    // The binary on disk when this one started: what a planned restart runs.
    let exe = std::env::current_exe()?;
    crate::base::rundir::ensure(&opts.run_dir)?;
    let control_path = control::socket_path(&opts.run_dir);
    if taken.is_none() && UnixStream::connect(&control_path).is_ok() {
        return Err(Error::AlreadyRunning {
            socket: control_path,
        });
    }
    let tcp = inherit::tcp(manifest.nbd.listen).map_err(|source| Error::ListenNbd {
        addr: manifest.nbd.listen,
        manifest: opts.manifest.clone(),
        source,
    })?;
    let nbd_path = nbd_socket(&manifest, &opts.run_dir);
    let unix = inherit::unix(&nbd_path, || bind_unix(&nbd_path))?;
    let control_listener = inherit::unix(&control_path, || bind_unix(&control_path))?;
    let pid_path = opts.run_dir.join("serve.pid");
    crate::base::rundir::write(
        &opts.run_dir,
        "serve.pid",
        &format!("{}\n", std::process::id()),
    )?;

    // Signals are taken by one thread; every thread spawned from here inherits the mask.
    let signals = block_signals()?;

    let registry = Arc::new(Registry::default());
    let service = Arc::new(Service::new(
        manifest.clone(),
        registry.clone(),
        &opts.run_dir,
        Arc::new(Handover::new()?),
    ));
    let iscsi = service.iscsi().listen(&opts.manifest)?;
    if let Some(interface) = service.aoe().listen(&opts.manifest)? {
        tracing::info!("serving AoE on {interface}");
    }
    tracing::info!(
        "serving NBD on {} and {}; control socket {}",
        manifest.nbd.listen,
        nbd_path.display(),
        control_path.display()
    );
    if !iscsi.is_empty() {
        let names: Vec<String> = iscsi.iter().map(|a| a.to_string()).collect();
        tracing::info!("serving iSCSI on {}", names.join(" and "));
    }
    let monitor = carried_monitor(&mut taken);
    start_http_and_autoextend(&manifest, service.clone(), opts.http, monitor.clone())?;
    {
        // Before the apply: after a planned restart, the leases of the floating portals
        // this machine still has the addresses of are renewed at once, not after the PCs.
        // The targets are known first, so a login meanwhile is told to come back (not that
        // its target does not exist).
        service.iscsi().set_manifest(&manifest)?;
        let s = service.clone();
        std::thread::spawn(move || super::floating::watch(s));
    }
    if !opts.start_empty {
        for step in service.apply(manifest)? {
            tracing::info!("{step}");
        }
    }
    close_unclaimed();
    {
        let s = service.clone();
        std::thread::spawn(move || gateway::watch(s));
    }
    let nbd = listen::Nbd {
        registry: registry.clone(),
        handover: service.handover.clone(),
    };
    if let Some(taken) = taken {
        let (n, m) = (taken.sessions.len(), taken.nbd.len());
        service.iscsi().resume(taken.sessions);
        listen::resume(taken.nbd, &nbd, &service.nbd_limits);
        tracing::info!(
            "handover: took over {n} iSCSI sessions and {m} NBD connections, {} ms after the handover began",
            taken.since.as_millis()
        );
    }
    let limits = service.nbd_limits.clone();
    let for_tcp = nbd.clone();
    std::thread::spawn(move || listen::accept_tcp(tcp, for_tcp, limits));
    std::thread::spawn(move || listen::accept_unix(unix, nbd));
    let sockets = [nbd_path.clone(), control_path.clone(), pid_path.clone()];
    on_signals(signals, service.clone(), sockets, exe, monitor);
    for conn in control_listener.incoming() {
        let Ok(conn) = conn else { continue };
        let s = service.clone();
        let sockets = [nbd_path.clone(), control_path.clone(), pid_path.clone()];
        std::thread::spawn(move || handle_control(&s, &conn, &sockets));
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP blocked, to be taken by one thread with `wait`; every
/// thread spawned after this inherits the mask.
fn block_signals() -> Result<SigSet> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block()?;
    Ok(signals)
}

/// A thread that takes the signals: SIGHUP hands everything over to the binary on disk
/// (a planned restart, see [`handover`]), SIGTERM and SIGINT commit every COW, remove the
/// sockets and exit.
fn on_signals(
    signals: SigSet,
    service: Arc<Service>,
    sockets: [PathBuf; 3],
    exe: PathBuf,
    monitor: Arc<Monitor>,
) {
    std::thread::spawn(move || loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                tracing::info!(
                    "SIGHUP: handing every socket and session over to {}",
                    exe.display()
                );
                let refused = upgrade(&service, &exe, &monitor);
                tracing::error!("handover refused, serving on: {refused}");
            }
            Ok(sig) => {
                tracing::info!("{sig}: committing every COW and exiting");
                shut_down(&service, &sockets, 0);
            }
            Err(_) => {}
        }
    });
}

/// The dashboard's history and events: the previous process's after a planned restart.
fn carried_monitor(taken: &mut Option<handover::Taken>) -> Arc<Monitor> {
    let monitor = Arc::new(Monitor::default());
    if let Some(saved) = taken.as_mut().and_then(|t| t.monitor.take()) {
        monitor.import(saved);
    }
    monitor
}

/// Closes the sockets a planned restart handed over that no listener took.
fn close_unclaimed() {
    for name in inherit::close_unclaimed() {
        tracing::info!("handover: {name} is not in the manifest any more: closed");
    }
}

/// The HTTP service (when the manifest has an `http` section) and the auto-extend watcher,
/// over `monitor` (the previous process's history and events after a planned restart).
fn start_http_and_autoextend(
    manifest: &Manifest,
    room: Arc<dyn LiveRoom>,
    start_http: StartHttp,
    monitor: Arc<Monitor>,
) -> Result<()> {
    if let Some(http) = &manifest.http {
        let bound = start_http(http.clone(), room.clone(), monitor.clone())?;
        let names: Vec<String> = bound.iter().map(|a| a.to_string()).collect();
        tracing::info!("HTTP on {}", names.join(" and "));
    }
    std::thread::spawn(move || autoextend::watch(room, monitor));
    Ok(())
}

/// `cowctl serve` on the kernel backend: HTTP and auto-extend over the kernel's snapshots
/// (`cowctl apply` serves the disks); SIGTERM or SIGINT ends it.
fn run_kernel(opts: &Options, manifest: Manifest) -> Result<()> {
    // A planned restart hands over the HTTP listeners (the kernel serves the disks).
    let mut taken = handover::take_from_env();
    let exe = std::env::current_exe()?;
    let signals = block_signals()?;
    let run_dir = opts.run_dir.clone();
    let kernel = Box::new(move || crate::kernel::Kernel::real(&run_dir));
    let room = Arc::new(KernelRoom::new(manifest.clone(), &opts.run_dir, kernel));
    let monitor = carried_monitor(&mut taken);
    start_http_and_autoextend(&manifest, room, opts.http, monitor.clone())?;
    close_unclaimed();
    if let Some(taken) = taken {
        tracing::info!(
            "handover: took over the HTTP listeners, {} ms after the handover began",
            taken.since.as_millis()
        );
    }
    tracing::info!(
        "watching the kernel's snapshots of {}",
        opts.manifest.display()
    );
    let handover = Handover::new()?;
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                tracing::info!(
                    "SIGHUP: handing the HTTP listeners over to {}",
                    exe.display()
                );
                let room = handover::Room {
                    live_sessions: &|| 0,
                    aoe_workers: 0,
                    stop_all: &Vec::new,
                    flush_all: &Vec::new,
                    monitor: &monitor,
                };
                let refused = handover::upgrade(&handover, room, &exe, &opts.manifest);
                tracing::error!("handover refused, serving on: {refused}");
            }
            Ok(sig) => {
                tracing::info!("{sig}: exiting");
                return Ok(());
            }
            Err(_) => {}
        }
    }
}

fn handle_control(service: &Service, conn: &UnixStream, sockets: &[PathBuf]) {
    let mut exit = false;
    let response = match control::read_request(conn) {
        Err(e) => error(e),
        Ok(req) => {
            tracing::info!("control: {req:?}");
            answer(service, req, &mut exit).unwrap_or_else(error)
        }
    };
    let _ = control::write_response(conn, &response);
    if exit {
        tracing::info!("nothing is served any more: exiting");
        shut_down(service, sockets, 0);
    }
}

fn answer(service: &Service, req: Request, exit: &mut bool) -> Result<Response> {
    Ok(match req {
        Request::Plan { manifest } => Response {
            steps: service.plan(&crate::image::load_manifest(&manifest)?)?,
            ..Response::default()
        },
        Request::Apply { manifest } => {
            let steps = service.apply(crate::image::load_manifest(&manifest)?)?;
            Response {
                steps,
                status: service.status(),
                ..Response::default()
            }
        }
        Request::Status => Response {
            status: service.status(),
            ..Response::default()
        },
        Request::Reset { pcs } => {
            let resets = service.reset(&pcs)?;
            for r in &resets {
                tracing::info!(
                    pc = %r.pc,
                    "{}: reset by cowctl reset ({:.1} ms paused)",
                    r.pc,
                    r.seconds * 1000.0
                );
            }
            Response {
                resets,
                ..Response::default()
            }
        }
        Request::Commit {
            pc,
            version,
            note,
            pause,
        } => Response {
            committed: Some(service.commit(&pc, version, &note, pause)?),
            ..Response::default()
        },
        Request::Down { pcs } => {
            let (steps, nothing_left) = service.down(&pcs)?;
            *exit = pcs.is_empty() && nothing_left;
            Response {
                steps,
                ..Response::default()
            }
        }
    })
}

/// The reply to a refused request: the error and its causes, as the CLI prints them.
fn error(e: Error) -> Response {
    Response {
        error: Some(chain(&e)),
        ..Response::default()
    }
}

/// Hands over to `exe` (one control operation at a time: none runs meanwhile); returns
/// only when the handover was refused with nothing stopped.
fn upgrade(service: &Service, exe: &Path, monitor: &Monitor) -> handover::Refused {
    let _one_at_a_time = service.ops.lock().unwrap_or_else(|p| p.into_inner());
    let manifest = service.manifest().path;
    let manifest = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let iscsi = service.iscsi();
    let live = move || iscsi.live_sessions();
    // After the flush, rbd clones are closed: their locks go to the next process.
    let flush_all = || {
        let failed = service.registry.flush_all();
        service.registry.release_rbd();
        failed
    };
    let stop_all = || {
        let deadline = std::time::Instant::now() + handover::STAND_STILL;
        service.registry.stop_all_for_handover(deadline)
    };
    let room = handover::Room {
        live_sessions: &live,
        aoe_workers: service.aoe().workers(),
        stop_all: &stop_all,
        flush_all: &flush_all,
        monitor,
    };
    handover::upgrade(&service.handover, room, exe, &manifest)
}

/// Stops serving every PC (committing its COW), removes the sockets and pid file, exits.
fn shut_down(service: &Service, sockets: &[PathBuf], code: i32) -> ! {
    // No address of a floating portal stays on a machine that stopped answering there.
    service.let_floating_portals_go();
    // The COWs and clone files first, each on its own and without waiting for a command
    // under way (one may be stuck in librbd): their commit is what must not be cut short.
    let on_rbd = |slot: &super::exports::Slot| {
        slot.with_served(|sv| matches!(&*sv.disk, crate::engine::PcDisk::Rbd(_)))
    };
    let mut rbd = false;
    for slot in service.registry.all() {
        match on_rbd(&slot) {
            Some(false) => {
                if let Err(e) = service.stop(&slot.name) {
                    tracing::error!("{}", chain(&e));
                }
            }
            Some(true) => rbd = true,
            None => {}
        }
    }
    if rbd {
        // A cluster that does not answer blocks librbd's close; every write it answered is
        // in the cluster already (its cache is off), so the process may go without it.
        let paths = sockets.to_vec();
        std::thread::spawn(move || {
            std::thread::sleep(RBD_CLOSE_WAIT);
            tracing::error!(
                "the cluster did not answer within {} s: exiting without closing the rbd clones (every write they answered is in the cluster; their locks go when the cluster drops this client)",
                RBD_CLOSE_WAIT.as_secs()
            );
            for s in &paths {
                let _ = std::fs::remove_file(s);
            }
            // Not exit(): Ceph's libraries are busy in another thread, and their exit
            // handlers could hang or crash on that.
            // SAFETY: ends the process at once; nothing of it runs after.
            unsafe { libc::_exit(code) }
        });
    }
    // Then the rbd PCs, and anything else still served.
    if let Err(e) = service.down(&[]) {
        tracing::error!("{}", chain(&e));
    }
    remove_and_exit(sockets, code)
}

/// How long an exit waits for the cluster to close the rbd clones.
const RBD_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn remove_and_exit(sockets: &[PathBuf], code: i32) -> ! {
    for s in sockets {
        let _ = std::fs::remove_file(s);
    }
    std::process::exit(code)
}

/// Binds a unix socket, replacing a stale one nobody answers on — a socket only: a file
/// (or a symlink) at that path is never removed.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            let kind = if m.file_type().is_symlink() {
                "symlink"
            } else if m.is_dir() {
                "directory"
            } else {
                "file"
            };
            let path = path.to_path_buf();
            return Err(Error::NotASocket { path, kind });
        }
        if UnixStream::connect(path).is_ok() {
            let path = path.to_path_buf();
            return Err(Error::SocketInUse { path });
        }
        std::fs::remove_file(path).map_err(|source| Error::RemoveStale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path).map_err(|source| Error::ListenUnix {
        path: path.to_path_buf(),
        source,
    })?;
    // The control socket resets disks: only its owner may use it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
