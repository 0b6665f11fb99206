//! Network interfaces and their addresses, read with rtnetlink, so exports are checked
//! before anything in the kernel is touched.

use std::net::IpAddr;

pub use super::error::NetError;

type Result<T, E = NetError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    pub addresses: Vec<IpAddr>,
}

pub trait Net: Send + Sync {
    fn interfaces(&self) -> Result<Vec<Interface>>;
}

pub struct Netlink;

impl Net for Netlink {
    fn interfaces(&self) -> Result<Vec<Interface>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetError::Runtime)?;
        rt.block_on(read_interfaces())
    }
}

async fn read_interfaces() -> Result<Vec<Interface>> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    tokio::spawn(conn);
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(NetError::Links)? {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let up = msg.header.flags.contains(LinkFlags::Up);
        out.push((
            msg.header.index,
            Interface {
                name: name.unwrap_or_default(),
                up,
                addresses: Vec::new(),
            },
        ));
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(NetError::Addresses)? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        if let (Some(ip), Some((_, iface))) =
            (ip, out.iter_mut().find(|(i, _)| *i == msg.header.index))
        {
            if !iface.addresses.contains(&ip) {
                iface.addresses.push(ip);
            }
        }
    }
    Ok(out.into_iter().map(|(_, i)| i).collect())
}
