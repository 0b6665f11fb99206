//! Wake-on-LAN leaves on the room's interface: `cowctl wake` and `reset --all --wake` send
//! each PC's magic packet (UDP to port 9 of the broadcast address, six 0xFF then the MAC
//! sixteen times) out of `pxe.interface`, one end of a veth pair this test makes; the test
//! reads what arrives at the other end, as a PC's NIC on that wire would.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::net::Link;

const MACS: [[u8; 6]; 2] = [
    [0x52, 0x54, 0x00, 0xd0, 0x00, 0x01],
    [0x52, 0x54, 0x00, 0xd0, 0x00, 0x02],
];

/// An AF_PACKET socket for the IPv4 packets that reach `interface`.
fn listen(interface: &str) -> OwnedFd {
    let proto = u16::try_from(libc::ETH_P_IP).unwrap().to_be();
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new descriptor no one else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {interface}");
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).unwrap();
    // SAFETY: addr is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
        );
    }
    fd
}

/// The MACs of the magic packets that arrive within `wait` (each packet once per copy).
fn magic_packets(fd: &OwnedFd, wait: Duration) -> Vec<[u8; 6]> {
    let mut out = Vec::new();
    let until = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        let p = &buf[..n];
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if p.len() < ihl + 8 + 102 || p[9] != 17 {
            continue; // not UDP, or too short to be a magic packet
        }
        let (udp, payload) = (&p[ihl..ihl + 8], &p[ihl + 8..]);
        if u16::from_be_bytes([udp[2], udp[3]]) != 9 || payload[..6] != [0xFF; 6] {
            continue;
        }
        let mac: [u8; 6] = payload[6..12].try_into().unwrap();
        assert!(
            (0..16).all(|i| payload[6 + 6 * i..12 + 6 * i] == mac),
            "the MAC sixteen times"
        );
        out.push(mac);
    }
    out
}

struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = common::room_command(&self.0, &["down"]).output();
    }
}

#[test]
fn wake_sends_each_pc_its_magic_packet_on_the_rooms_interface() {
    let link = Link::veth(3, 1500);
    link.add_address("10.231.9.1/24");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("golden.img"), vec![0u8; 1 << 20]).unwrap();
    let (nbd, http, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    std::fs::write(
        dir.path().join("room.yaml"),
        format!(
            "backend: userspace\nimages:\n  g:\n    path: {d}/golden.img\n\
             defaults:\n  image: g\n  cow_dir: {d}\n  cow_size: 1MiB\n  chunk: 4KiB\n  export: nbd\n\
             nbd:\n  listen: 127.0.0.1:{nbd}\n  socket: {d}/nbd.sock\n\
             http:\n  listen: 10.231.9.1:{http}\n  admin_listen: 127.0.0.1:{admin}\n\
             pxe:\n  interface: {}\n  wake_broadcast: 10.231.9.255\n\
             pcs:\n  - name: pc-01\n    mac: 52:54:00:d0:00:01\n  - name: pc-02\n    mac: 52:54:00:d0:00:02\n",
            link.name
        ),
    )
    .unwrap();
    let rx = listen(link.peer());
    common::room_cowctl(dir.path(), &["apply"]);
    let _down = Down(dir.path().to_path_buf());

    let out = common::room_cowctl(dir.path(), &["wake", "pc-02"]);
    assert!(
        out.contains("sent Wake-on-LAN to pc-02 (52:54:00:d0:00:02)"),
        "{out}"
    );
    assert_eq!(magic_packets(&rx, Duration::from_secs(1)), vec![MACS[1]; 3]);

    let out = common::room_cowctl(dir.path(), &["reset", "--all", "--wake"]);
    assert!(
        out.contains("reset pc-01") && out.contains("reset pc-02"),
        "{out}"
    );
    assert!(out.contains("sent Wake-on-LAN to pc-01"), "{out}");
    let mut got = magic_packets(&rx, Duration::from_secs(1));
    got.sort_unstable();
    assert_eq!(got, [vec![MACS[0]; 3], vec![MACS[1]; 3]].concat());

    let no_mac = common::room_command(dir.path(), &["wake", "--all"])
        .output()
        .unwrap();
    assert!(no_mac.status.success());
    let refused = common::room_command(dir.path(), &["wake"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("name the PCs to wake, or say --all"));
}
