//! What the PXE bootstrap refuses (`PxeError`) and why a Wake-on-LAN packet could not go
//! out (`WakeError`); each variant reads as the sentence the admin sees.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use super::config::UnsafeValue;
use crate::base::rundir::RunDirError;
use crate::kernel::supervise::SuperviseError;
use crate::kernel::NetError;

#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("the pxe section needs an http section (PCs chain to its /boot.ipxe)")]
    NoHttp,
    #[error("http.server {ip} is IPv6, but PXE and iPXE's DHCP chain here are IPv4: give an IPv4 address")]
    Ipv6Server { ip: Ipv6Addr },
    #[error("http.listen is {listen}, but PCs on {interface} would reach it at {server}: listen there or on 0.0.0.0")]
    ListenElsewhere {
        listen: SocketAddr,
        interface: String,
        server: Ipv4Addr,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("pxe.interface {interface} does not exist on this machine")]
    NoInterface { interface: String },
    #[error("pxe.interface {interface} has no IPv4 address, so PCs could not reach /boot.ipxe (or set http.server)")]
    NoIpv4 { interface: String },
    #[error("{} has no {loader} for PXE ROMs to load (install Debian's ipxe package, or set pxe.tftp_root)", tftp_root.display())]
    NoLoader {
        tftp_root: PathBuf,
        loader: &'static str,
    },
    #[error(transparent)]
    Unsafe(#[from] UnsafeValue),
    /// Starting or stopping dnsmasq.
    #[error(transparent)]
    Dnsmasq(#[from] SuperviseError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("cannot write {}", path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("{pc} has no mac in {}: Wake-on-LAN needs it", manifest.display())]
    NoMac { pc: String, manifest: PathBuf },
    #[error("cannot open a UDP socket for Wake-on-LAN")]
    Socket(#[source] io::Error),
    /// The socket refused SO_BROADCAST.
    #[error(transparent)]
    Broadcast(io::Error),
    #[error("cannot send Wake-on-LAN on {interface} (pxe.interface)")]
    Interface {
        interface: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot send {pc}'s Wake-on-LAN packet to {to}")]
    Send {
        pc: String,
        to: SocketAddrV4,
        #[source]
        source: io::Error,
    },
}
