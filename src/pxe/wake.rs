//! Wake-on-LAN: a UDP broadcast to port 9 of six 0xFF bytes, then the PC's MAC sixteen
//! times. With a `pxe` section it leaves on the room's interface (the socket is bound to
//! it) to `pxe.wake_broadcast`; without one, to 255.255.255.255 by the routing table.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use anyhow::{Context, Result};

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
pub fn wake(m: &Manifest, pcs: &[&Pc]) -> Result<Vec<String>> {
    let mut macs = Vec::new();
    for pc in pcs {
        let Some(mac) = pc.mac else {
            anyhow::bail!(
                "{} has no mac in {}: Wake-on-LAN needs it",
                pc.name,
                m.path.display()
            );
        };
        macs.push((pc.name.clone(), mac));
    }
    let (interface, broadcast) = target(m);
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .context("cannot open a UDP socket for Wake-on-LAN")?;
    socket.set_broadcast(true)?;
    if let Some(ifname) = interface {
        let name = std::ffi::OsString::from(ifname);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::BindToDevice, &name)
            .with_context(|| format!("cannot send Wake-on-LAN on {ifname} (pxe.interface)"))?;
    }
    let to = SocketAddrV4::new(broadcast, PORT);
    let mut woken = Vec::new();
    for (name, mac) in macs {
        let packet = magic_packet(mac);
        for _ in 0..3 {
            socket
                .send_to(&packet, to)
                .with_context(|| format!("cannot send {name}'s Wake-on-LAN packet to {to}"))?;
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
