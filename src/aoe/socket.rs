//! Raw Ethernet frames of the AoE ethertype on one interface, through an AF_PACKET socket.
//! Only frames addressed to this host (its MAC or broadcast) are returned: the frames the
//! socket sends itself, and other hosts' frames a promiscuous interface passes up, are not.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::wire::ETHERTYPE;

/// The largest frame read: a 64 KiB MTU (`lo`) plus the Ethernet header.
pub const MAX_FRAME: usize = 65536 + 14;
/// The most frames one receive or send call moves.
pub const BATCH: usize = BATCH_C as usize;
/// [`BATCH`] as the kernel's count type.
const BATCH_C: libc::c_uint = 16;
/// The receive buffer the socket asks for, so a burst of outstanding requests is not dropped.
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

/// The length of a struct passed to the kernel.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("a small struct")
}

pub struct Socket {
    fd: OwnedFd,
    interface: String,
    ifindex: libc::c_int,
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Socket {
    pub fn open(interface: &str) -> io::Result<Socket> {
        Socket::from_fd(Socket::open_fd(interface)?, interface)
    }

    /// A socket opened earlier (by [`open_fd`](Self::open_fd), perhaps in the process
    /// this one replaced) on `interface`.
    pub fn from_fd(fd: OwnedFd, interface: &str) -> io::Result<Socket> {
        Ok(Socket {
            fd,
            interface: interface.to_string(),
            ifindex: Socket::ifindex(interface)?,
        })
    }

    fn ifindex(interface: &str) -> io::Result<libc::c_int> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface {interface:?} ({e})"),
            )
        })?;
        libc::c_int::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput.into())
    }

    /// A raw socket for AoE frames, bound to `interface`.
    pub fn open_fd(interface: &str) -> io::Result<OwnedFd> {
        let ifindex = Socket::ifindex(interface)?;
        let protocol = ETHERTYPE.to_be();
        // SAFETY: plain system calls on values owned here; the fd is owned from its creation.
        let fd = unsafe {
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(raw)
        };
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex;
        // SAFETY: addr is a valid sockaddr_ll of the length given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = Socket {
            fd,
            interface: interface.to_string(),
            ifindex,
        };
        // Root may exceed rmem_max; anyone else gets what the system allows.
        if s.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER)
            .is_err()
        {
            let _ = s.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER);
        }
        // Linux 4.20 and later; older kernels' own frames are filtered by packet type.
        let _ = s.set_int(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
        Ok(s.fd)
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: value is a c_int that lives across the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                socklen::<libc::c_int>(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Makes [`Socket::recv`] give up after `timeout` (an initiator's retry timer).
    pub fn set_read_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        // SAFETY: tv is a timeval that lives across the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                socklen::<libc::timeval>(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    fn sysfs(&self, what: &str) -> io::Result<String> {
        let p = PathBuf::from("/sys/class/net")
            .join(&self.interface)
            .join(what);
        Ok(std::fs::read_to_string(p)?.trim().to_string())
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> io::Result<[u8; 6]> {
        let text = self.sysfs("address")?;
        let mac: crate::base::netaddr::Mac = text
            .parse()
            .map_err(|e: String| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(mac.0)
    }

    /// The interface's MTU now (an admin may change it while we serve).
    pub fn mtu(&self) -> io::Result<usize> {
        self.sysfs("mtu")?
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable MTU"))
    }

    /// The next frame addressed to this host, into `buf` (at least [`MAX_FRAME`] long).
    /// None for a frame this host does not answer, or one longer than `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = socklen::<libc::sockaddr_ll>();
        // SAFETY: buf and from are valid for the lengths given; MSG_TRUNC makes the call
        // return the frame's real length without writing past buf.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        Ok((self.addressed(&from) && n <= buf.len()).then_some(n))
    }

    /// Takes the frames already queued, up to [`BATCH`], in one call (an initiator keeps
    /// many requests outstanding); WouldBlock when there are none (the caller waits with
    /// poll, where a planned restart can wake it too).
    pub fn recv_batch(&self, batch: &mut Batch) -> io::Result<()> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut from: [libc::sockaddr_ll; BATCH] = unsafe { zeroed() };
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iov[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr().cast(),
                iov_len: batch.bufs[i].len(),
            };
            msgs[i].msg_hdr.msg_name = (&mut from[i] as *mut libc::sockaddr_ll).cast();
            msgs[i].msg_hdr.msg_namelen = socklen::<libc::sockaddr_ll>();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, iovec and address of this frame, valid
        // for the lengths given; the kernel writes no more than that.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH_C,
                libc::MSG_WAITFORONE | libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        batch.count = usize::try_from(n).unwrap_or(0).min(BATCH);
        for i in 0..batch.count {
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let ours = self.addressed(&from[i]) && !truncated;
            batch.lens[i] = ours.then_some(msgs[i].msg_len as usize);
        }
        Ok(())
    }

    /// Sends the frames with as few calls as the kernel allows.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<()> {
        let mut left = frames;
        while !left.is_empty() {
            let n = left.len().min(BATCH);
            // SAFETY: all-zero is a valid value of these plain C structs.
            let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for i in 0..n {
                iov[i] = libc::iovec {
                    iov_base: left[i].as_ptr().cast_mut().cast(),
                    iov_len: left[i].len(),
                };
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: each header points at a frame valid for its length, which the
            // kernel only reads; the socket is bound to its interface.
            let sent = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    libc::c_uint::try_from(n).unwrap_or(BATCH_C),
                    0,
                )
            };
            if sent <= 0 {
                return Err(io::Error::last_os_error());
            }
            left = &left[usize::try_from(sent).unwrap_or(n).min(n)..];
        }
        Ok(())
    }

    fn addressed(&self, from: &libc::sockaddr_ll) -> bool {
        matches!(
            from.sll_pkttype,
            libc::PACKET_HOST | libc::PACKET_BROADCAST | libc::PACKET_MULTICAST
        ) && from.sll_ifindex == self.ifindex
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for its length; the socket is bound to its interface.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// The frames of one [`Socket::recv_batch`], each in a buffer of [`MAX_FRAME`] bytes.
pub struct Batch {
    bufs: Vec<Box<[u8]>>,
    /// The length of each frame received that is for this host.
    lens: [Option<usize>; BATCH],
    count: usize,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            bufs: (0..BATCH)
                .map(|_| vec![0u8; MAX_FRAME].into_boxed_slice())
                .collect(),
            lens: [None; BATCH],
            count: 0,
        }
    }
}

impl Batch {
    /// How many frames the last receive took (some may not be for this host).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frame `i` of the last receive, if it is for this host.
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let n = (*self.lens.get(i)?)?;
        (i < self.count).then(|| &self.bufs[i][..n])
    }
}
