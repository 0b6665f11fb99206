//! NBD listeners (TCP and a unix socket) and one thread per connection: handshake, then
//! transmission against the PC's engine until the client leaves or a reset closes it.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use super::exports::{PeerView, Registry};
use super::handover::{Handover, ParkedNbd};
use super::limits::{ConnLimits, Permit};
use crate::base::logtext::Escaped;
use crate::iscsi::connection::Handoff;
use crate::nbd::{self, Outcome};

/// A client that has not chosen an export by then is dropped: the whole handshake, not
/// each read, so a client sending a byte at a time cannot hold a thread.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that sends no request for this long is closed (TCP keepalive finds a dead
/// peer sooner; clients such as qemu and nbd-client -persist reconnect).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const BUFFER: usize = 256 << 10;

/// What a connection needs of its socket besides reading and writing.
trait Socket: Read + Write + AsFd + Into<std::os::fd::OwnedFd> + Send + Sized + 'static {
    /// A unix socket (else TCP), as a handover records it.
    const UNIX: bool;
    fn duplicate(&self) -> std::io::Result<Self>;
    fn shut(&self);
    fn set_timeout(&self, t: Option<Duration>);
}

impl Socket for TcpStream {
    const UNIX: bool = false;
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
    fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.set_read_timeout(t);
    }
}

impl Socket for UnixStream {
    const UNIX: bool = true;
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
    fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.set_read_timeout(t);
    }
}

/// What every NBD connection shares: the PCs' slots, and the planned restart's coordinator.
#[derive(Clone)]
pub struct Nbd {
    pub registry: Arc<Registry>,
    pub handover: Arc<Handover>,
}

pub fn accept_tcp(listener: TcpListener, nbd: Nbd, limits: Arc<ConnLimits>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(addr) = stream.peer_addr() else {
            continue;
        };
        let permit = match limits.admit(addr.ip(), super::limits::closer(&stream)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("NBD: refused a connection from {addr}: {e}");
                continue;
            }
        };
        // Replies to small requests must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        super::limits::keepalive(&stream);
        let peer = addr.to_string();
        let nbd = nbd.clone();
        spawn(&peer.clone(), move || {
            let mut permit = permit;
            connection(stream, &peer, Some(addr.ip()), &nbd, Some(&mut permit))
        });
    }
}

pub fn accept_unix(listener: UnixListener, nbd: Nbd) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let nbd = nbd.clone();
        spawn("unix", move || connection(stream, "unix", None, &nbd, None));
    }
}

/// Carries on the NBD connections the previous process handed over.
pub fn resume(parked: Vec<ParkedNbd>, nbd: &Nbd, limits: &Arc<ConnLimits>) {
    for p in parked {
        let nbd = nbd.clone();
        let peer = p.peer.clone();
        if p.unix {
            let stream = UnixStream::from(p.fd);
            spawn(&peer.clone(), move || {
                transmission(stream, &peer, None, &nbd, &p.export, p.unread)
            });
            continue;
        }
        let stream = TcpStream::from(p.fd);
        // Connected already: straight into the members' pool, as it was.
        let permit = match p.ip.map(|ip| limits.admit_member(ip)).transpose() {
            Ok(permit) => permit,
            Err(e) => {
                tracing::warn!("NBD: closed {peer}'s connection handed over: {e}");
                continue;
            }
        };
        spawn(&peer.clone(), move || {
            let _permit = permit;
            transmission(stream, &peer, p.ip, &nbd, &p.export, p.unread)
        });
    }
}

fn spawn(peer: &str, run: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    let name = format!("nbd {peer}");
    let peer = peer.to_string();
    let _ = std::thread::Builder::new().name(name).spawn(move || {
        if let Err(e) = run() {
            tracing::debug!("NBD connection from {peer} ended: {}", Escaped(e));
        }
    });
}

fn connection<S: Socket>(
    stream: S,
    peer: &str,
    ip: Option<IpAddr>,
    nbd: &Nbd,
    permit: Option<&mut Permit>,
) -> std::io::Result<()> {
    let mut rw = ReadWrite {
        r: Deadline {
            inner: stream.duplicate()?,
            until: std::time::Instant::now() + HANDSHAKE_TIMEOUT,
        },
        w: stream.duplicate()?,
    };
    let view = PeerView {
        registry: &nbd.registry,
        peer: ip,
    };
    let Outcome::Go { name, .. } = nbd::handshake(&mut rw, &view)? else {
        return Ok(());
    };
    // The client chose an export it may open: it is no longer a stranger's connection.
    if let Some(Err(e)) = permit.map(Permit::promote) {
        tracing::warn!("NBD: closed {peer}'s connection to {name}: {e}");
        return Ok(());
    }
    transmission(stream, peer, ip, nbd, &name, Vec::new())
}

/// The transmission phase on export `name`, starting with `unread` (bytes a previous
/// process received and did not read), until the client leaves or a handover parks it.
fn transmission<S: Socket>(
    stream: S,
    peer: &str,
    ip: Option<IpAddr>,
    nbd: &Nbd,
    name: &str,
    unread: Vec<u8>,
) -> std::io::Result<()> {
    stream.set_timeout(Some(IDLE_TIMEOUT));
    let Some(slot) = nbd.registry.get(name) else {
        return Ok(());
    };
    let closer = stream.duplicate()?;
    let Some((engine, info, guard)) =
        slot.attach(peer.to_string(), ip, Box::new(move || closer.shut()))
    else {
        return Ok(());
    };
    let live = nbd.handover.nbd_live();
    tracing::info!(pc = %name, "{peer} connected to {name}");
    // What the engine logs (a COW grown on demand) names the PC.
    let _span = tracing::info_span!("", pc = %name).entered();
    if unread.len() > BUFFER {
        tracing::warn!("NBD: closed {peer}'s connection handed over with {} unread bytes, over the {BUFFER}-byte buffer", unread.len());
        return Ok(());
    }
    let pending = !unread.is_empty();
    let reader = std::io::Cursor::new(unread).chain(stream.duplicate()?);
    let mut r = BufReader::with_capacity(BUFFER, reader);
    if pending {
        // Into the buffer at once: requests the previous process received are answered
        // before this one waits for more, and a handover passes them on again.
        std::io::BufRead::fill_buf(&mut r)?;
    }
    let mut w = SocketSink(BufWriter::with_capacity(BUFFER, stream.duplicate()?));
    let wait = |buffered: bool, done: Option<BorrowedFd<'_>>| {
        wait_for_request(&stream, &nbd.handover, buffered, done)
    };
    let shared: nbd::SharedDevice = engine.clone();
    let end = nbd::serve_until(
        &mut r,
        &mut w,
        engine.as_ref(),
        Some(shared),
        info.size,
        info.read_only,
        &wait,
    );
    // The engine goes before the guard, so a reset that waits for this connection gets
    // the only reference to it.
    drop(engine);
    drop(guard);
    match end {
        Ok(nbd::End::ProtocolError(why)) => {
            tracing::warn!("closed {peer}'s connection to {name}: {}", Escaped(why))
        }
        Ok(nbd::End::Disconnected) => tracing::info!("{peer} disconnected from {name}"),
        Ok(nbd::End::HandedOver { unread }) => {
            drop(r);
            drop(w);
            nbd.handover.take_nbd(ParkedNbd {
                fd: stream.into(),
                unix: S::UNIX,
                peer: peer.to_string(),
                ip,
                export: name.to_string(),
                unread,
            });
            tracing::info!("{peer}'s connection to {name}: handed over to the next process");
        }
        Err(e) => tracing::info!("{peer}'s connection to {name} closed: {}", Escaped(e)),
    }
    drop(live);
    Ok(())
}

/// Between two requests: whether the connection is to stop for a planned restart, or go
/// on with the next request or with a request in flight that is done (`done` readable).
/// With nothing buffered it first waits for one of the three.
fn wait_for_request<S: Socket>(
    stream: &S,
    handover: &Handover,
    buffered: bool,
    done: Option<BorrowedFd<'_>>,
) -> nbd::Wake {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if handover.requested() {
        return nbd::Wake::HandOver;
    }
    if buffered {
        return nbd::Wake::Request;
    }
    let timeout = PollTimeout::try_from(IDLE_TIMEOUT).unwrap_or(PollTimeout::MAX);
    let mut fds = vec![
        PollFd::new(stream.as_fd(), PollFlags::POLLIN),
        PollFd::new(handover.wake_fd().as_fd(), PollFlags::POLLIN),
    ];
    fds.extend(done.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
    let _ = poll(&mut fds, timeout);
    let ready = |i: usize| {
        fds.get(i)
            .and_then(|f| f.revents())
            .is_some_and(|r| r.intersects(PollFlags::POLLIN))
    };
    if handover.requested() {
        nbd::Wake::HandOver
    } else if ready(2) && !ready(0) {
        nbd::Wake::Done
    } else {
        nbd::Wake::Request
    }
}

/// Buffered replies on a socket; large reads go out with sendfile.
struct SocketSink<S: Write + AsFd>(BufWriter<S>);

impl<S: Write + AsFd> Write for SocketSink<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<S: Write + AsFd> nbd::Sink for SocketSink<S> {
    /// The header goes with MSG_MORE, so the kernel sends it in one segment with the data.
    fn send_reply_from_files(
        &mut self,
        header: &[u8],
        extents: &[crate::engine::Extent<'_>],
    ) -> std::io::Result<()> {
        use nix::sys::socket::{send, MsgFlags};
        self.0.flush()?;
        let fd = self.0.get_ref().as_fd().as_raw_fd();
        let mut sent = 0;
        while sent < header.len() {
            sent += send(
                fd,
                &header[sent..],
                MsgFlags::from_bits_retain(nix::libc::MSG_MORE),
            )?;
        }
        for e in extents {
            self.send_file(e.fd, e.offset, e.len)?;
        }
        Ok(())
    }

    fn send_file(&mut self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> std::io::Result<()> {
        self.0.flush()?;
        let out = self.0.get_ref().as_fd();
        let (mut offset, mut left) = (offset, len);
        while left > 0 {
            let mut at = i64::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
            let n = nix::sys::sendfile::sendfile64(out, fd, Some(&mut at), left)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            offset += n as u64;
            left -= n;
        }
        Ok(())
    }
}

/// Reads that must all be done by `until`: each read gets what is left of the time.
struct Deadline<S: Socket> {
    inner: S,
    until: std::time::Instant,
}

impl<S: Socket> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the handshake took too long",
            ));
        }
        self.inner.set_timeout(Some(left));
        self.inner.read(buf)
    }
}

/// One socket as a `Read + Write` pair of handles.
struct ReadWrite<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W> Read for ReadWrite<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl<R, W: Write> Write for ReadWrite<R, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
