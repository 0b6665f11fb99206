//! NBD listeners (TCP and a unix socket) and one thread per connection: handshake, then
//! transmission against the PC's engine until the client leaves or a reset closes it.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use super::exports::{PeerView, Registry};
use super::limits::{ConnLimits, Permit};
use crate::base::logtext::Escaped;
use crate::nbd::{self, Outcome};

/// A client that has not chosen an export by then is dropped: the whole handshake, not
/// each read, so a client sending a byte at a time cannot hold a thread.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that sends no request for this long is closed (TCP keepalive finds a dead
/// peer sooner; clients such as qemu and nbd-client -persist reconnect).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const BUFFER: usize = 256 << 10;

/// What a connection needs of its socket besides reading and writing.
trait Socket: Read + Write + AsFd + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn shut(&self);
    fn set_timeout(&self, t: Option<Duration>);
}

impl Socket for TcpStream {
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

pub fn accept_tcp(listener: TcpListener, registry: Arc<Registry>, limits: Arc<ConnLimits>) {
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
        spawn(
            stream,
            addr.to_string(),
            Some(addr.ip()),
            registry.clone(),
            Some(permit),
        );
    }
}

pub fn accept_unix(listener: UnixListener, registry: Arc<Registry>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        spawn(stream, "unix".to_string(), None, registry.clone(), None);
    }
}

fn spawn<S: Socket>(
    stream: S,
    peer: String,
    ip: Option<IpAddr>,
    registry: Arc<Registry>,
    permit: Option<Permit>,
) {
    let _ = std::thread::Builder::new()
        .name(format!("nbd {peer}"))
        .spawn(move || {
            let mut permit = permit;
            if let Err(e) = connection(stream, &peer, ip, &registry, permit.as_mut()) {
                tracing::debug!("NBD connection from {peer} ended: {}", Escaped(e));
            }
        });
}

fn connection<S: Socket>(
    stream: S,
    peer: &str,
    ip: Option<IpAddr>,
    registry: &Registry,
    permit: Option<&mut Permit>,
) -> std::io::Result<()> {
    let mut rw = ReadWrite {
        r: Deadline {
            inner: stream.duplicate()?,
            until: std::time::Instant::now() + HANDSHAKE_TIMEOUT,
        },
        w: stream.duplicate()?,
    };
    let view = PeerView { registry, peer: ip };
    let Outcome::Go { name, .. } = nbd::handshake(&mut rw, &view)? else {
        return Ok(());
    };
    let rw = ReadWrite {
        r: rw.r.inner,
        w: rw.w,
    };
    stream.set_timeout(Some(IDLE_TIMEOUT));
    let Some(slot) = registry.get(&name) else {
        return Ok(());
    };
    // The client chose an export it may open: it is no longer a stranger's connection.
    if let Some(Err(e)) = permit.map(Permit::promote) {
        tracing::warn!("NBD: closed {peer}'s connection to {name}: {e}");
        return Ok(());
    }
    let closer = stream.duplicate()?;
    let Some((engine, info, guard)) =
        slot.attach(peer.to_string(), ip, Box::new(move || closer.shut()))
    else {
        return Ok(());
    };
    tracing::info!(pc = %name, "{peer} connected to {name}");
    // What the engine logs (a COW grown on demand) names the PC.
    let _span = tracing::info_span!("", pc = %name).entered();
    let mut r = BufReader::with_capacity(BUFFER, rw.r);
    let mut w = SocketSink(BufWriter::with_capacity(BUFFER, rw.w));
    let end = nbd::serve(&mut r, &mut w, engine.as_ref(), info.size, info.read_only);
    // The engine goes before the guard, so a reset that waits for this connection gets
    // the only reference to it.
    drop(engine);
    drop(guard);
    match end {
        Ok(nbd::End::ProtocolError(why)) => {
            tracing::warn!("closed {peer}'s connection to {name}: {}", Escaped(why))
        }
        Ok(nbd::End::Disconnected) => tracing::info!("{peer} disconnected from {name}"),
        Err(e) => tracing::info!("{peer}'s connection to {name} closed: {}", Escaped(e)),
    }
    Ok(())
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
