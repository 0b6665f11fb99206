//! Wake-on-LAN: a UDP broadcast to port 9 of six 0xFF bytes, then the PC's MAC sixteen
//! times. With a `pxe` section it leaves on the room's interface (the socket is bound to
//! it) to `pxe.wake_broadcast`; without one, to 255.255.255.255 by the routing table.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

pub use super::error::WakeError;
use crate::manifest::{Mac, Manifest, Pc};

pub const PORT: u16 = 9;

/// The magic packet for `mac`.
pub fn magic_packet(mac: Mac) -> [u8; 102] {
    let mut p = [0xFFu8; 102];
    for i in 0..16 {
        p[6 + i * 6..12 + i * 6].copy_from_slice(&mac.0);
    }
    p
}

/// Where the packets go: (interface to leave on, broadcast address).
fn target(m: &Manifest) -> (Option<&str>, Ipv4Addr) {
    match &m.pxe {
        Some(p) => (Some(p.interface.as_str()), p.wake_broadcast),
        None => (None, Ipv4Addr::BROADCAST),
    }
}

/// Sends each PC its magic packet (three times, as WoL tools do: it is one UDP datagram
/// that a busy switch may drop). A PC without a `mac` is an error naming it, before
/// anything is sent.
pub fn wake(m: &Manifest, pcs: &[&Pc]) -> Result<Vec<String>, WakeError> {
    let mut macs = Vec::new();
    for pc in pcs {
        let Some(mac) = pc.mac else {
            return Err(WakeError::NoMac {
                pc: pc.name.clone(),
                manifest: m.path.clone(),
            });
        };
        macs.push((pc.name.clone(), mac));
    }
    let (interface, broadcast) = target(m);
    let socket =
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(WakeError::Socket)?;
    socket.set_broadcast(true).map_err(WakeError::Broadcast)?;
    if let Some(ifname) = interface {
        let name = std::ffi::OsString::from(ifname);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::BindToDevice, &name)
            .map_err(|source| WakeError::Interface {
                interface: ifname.to_string(),
                source,
            })?;
    }
    let to = SocketAddrV4::new(broadcast, PORT);
    let mut woken = Vec::new();
    for (name, mac) in macs {
        let packet = magic_packet(mac);
        for _ in 0..3 {
            socket
                .send_to(&packet, to)
                .map_err(|source| WakeError::Send {
                    pc: name.clone(),
                    to,
                    source,
                })?;
        }
        woken.push(format!("{name} ({mac})"));
    }
    Ok(woken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let mac = Mac([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        let p = magic_packet(mac);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &mac.0, "repetition {i}");
        }
    }
}
