//! A host address (/32) that moves between machines, such as a gateway's floating iSCSI
//! portal: added to and removed from one interface over rtnetlink, and announced with a
//! gratuitous ARP, so the hosts on the link send to this machine at once instead of to the
//! old one until their ARP entry goes stale.

use std::io;
use std::mem::zeroed;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::NetError;

type Result<T, E = NetError> = std::result::Result<T, E>;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetError::Runtime)
}

fn index(interface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(interface).map_err(|_| NetError::NoInterface {
        interface: interface.to_string(),
    })
}

/// Whether the kernel refused because the address is there already (or gone already).
fn errno_is(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Adds `ip`/32 to `interface`; nothing if it is there. Whether it was added (it was not
/// there).
pub fn add(interface: &str, ip: Ipv4Addr) -> Result<bool> {
    let idx = index(interface)?;
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        match handle
            .address()
            .add(idx, IpAddr::V4(ip), 32)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if errno_is(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(NetError::AddAddress {
                ip,
                interface: interface.to_string(),
                source: e,
            }),
        }
    })
}

/// The addresses `ip`/32 on interface `idx` (none or one).
async fn found(
    handle: &rtnetlink::Handle,
    idx: u32,
    ip: Ipv4Addr,
) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>> {
    use futures_util::TryStreamExt;
    let mut found = (handle.address().get())
        .set_link_index_filter(idx)
        .set_address_filter(IpAddr::V4(ip))
        .set_prefix_length_filter(32)
        .execute();
    let mut messages = Vec::new();
    while let Some(m) = found.try_next().await.map_err(NetError::Addresses)? {
        messages.push(m);
    }
    Ok(messages)
}

/// Removes `ip`/32 from `interface`; nothing if it is not there. The same address with
/// another prefix (a machine's own, on its subnet) is not this and stays.
pub fn remove(interface: &str, ip: Ipv4Addr) -> Result<()> {
    let idx = index(interface)?;
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        for m in found(&handle, idx, ip).await? {
            match handle.address().del(m).execute().await {
                Err(e) if !errno_is(&e, libc::EADDRNOTAVAIL) => {
                    return Err(NetError::RemoveAddress {
                        ip,
                        interface: interface.to_string(),
                        source: e,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    })
}

/// Whether `interface` has `ip`/32.
pub fn has(interface: &str, ip: Ipv4Addr) -> Result<bool> {
    let idx = index(interface)?;
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        Ok(!found(&handle, idx, ip).await?.is_empty())
    })
}

/// The ARP request a host sends for its own address (sender = target = `ip`): every host
/// on the link that knows `ip` takes `mac` for it.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// The interface's MAC address, as sysfs shows it.
fn mac_of(interface: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))?;
    let bytes: Vec<u8> = (text.trim().split(':'))
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not an Ethernet address"))
}

/// Broadcasts a gratuitous ARP for `ip` on `interface`.
pub fn announce(interface: &str, ip: Ipv4Addr) -> Result<()> {
    let failed = |source| NetError::Announce {
        ip,
        interface: interface.to_string(),
        source,
    };
    let idx = index(interface)?;
    let frame = gratuitous_arp(mac_of(interface).map_err(failed)?, ip);
    let protocol = ETH_P_ARP.to_be();
    // SAFETY: plain system calls on values owned here; the fd is owned from its creation.
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        );
        if raw < 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        OwnedFd::from_raw_fd(raw)
    };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut to: libc::sockaddr_ll = unsafe { zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
    to.sll_protocol = protocol;
    to.sll_ifindex =
        libc::c_int::try_from(idx).map_err(|_| failed(io::ErrorKind::InvalidInput.into()))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the frame and the address live across the call, with the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("small"),
        )
    };
    if sent < 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let p = gratuitous_arp([2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 9, 8, 7));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0, 0, 0, 0, 7]);
        assert_eq!(&p[14..18], &[10, 9, 8, 7]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 9, 8, 7]);
    }
}
