//! The `pxe` section and each PC's identity (`hostname`, `identity`): checked here, with
//! the combinations that cannot boot a PC refused with a sentence saying why.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::raw::{RawPc, RawPxe};
use super::types::{DhcpMode, HttpConfig, Pc, PxeConfig};
use super::Builder;

/// Where Debian's `ipxe` package puts `undionly.kpxe` and `ipxe.efi`.
pub const DEFAULT_TFTP_ROOT: &str = "/usr/lib/ipxe";

/// A DNS label: what DHCP hands a PC as its name and what Windows and Linux accept.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An identity key: also an iPXE variable name.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An identity value: it goes into iPXE scripts, so nothing iPXE would expand or split
/// (`$`, `{`, quotes, `;`, `|`, `&`, `#`, newlines).
fn valid_value(v: &str) -> bool {
    v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" ._:/@,=+-".contains(&b))
}

impl Builder {
    pub(super) fn identity(
        &mut self,
        at: &dyn Fn(&str) -> String,
        name: &str,
        defaults: &RawPc,
        raw: &RawPc,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let own = raw.identity.iter().flatten();
        for (k, v) in defaults.identity.iter().flatten().chain(own) {
            let v = v.as_string().replace("{name}", name);
            if !valid_key(k) {
                self.error(&at(&format!("identity.{k}")), format!("{name}: {k:?} is not an identity key (letters, digits, '_' and '-', at most 64)"));
            } else if !valid_value(&v) {
                self.error(&at(&format!("identity.{k}")), format!("{name}: the value of {k} may hold letters, digits, spaces and . _ : / @ , = + - only, at most 256 (it goes into the PC's iPXE script)"));
            } else {
                out.insert(k.clone(), v);
            }
        }
        out
    }

    pub(super) fn pxe(
        &mut self,
        r: RawPxe,
        http: Option<&HttpConfig>,
        pcs: &[Pc],
    ) -> Option<PxeConfig> {
        let before = self.errors.len();
        self.one_line("pxe.interface", &r.interface);
        if let Some(root) = &r.tftp_root {
            self.one_line("pxe.tftp_root", &root.display().to_string());
        }
        if r.interface.is_empty() || r.interface.len() > 15 || r.interface.contains('/') {
            self.error(
                "pxe.interface",
                format!("{:?} is not a network interface name", r.interface),
            );
        }
        let dhcp = match r.dhcp.as_deref() {
            None | Some("proxy") => Some(DhcpMode::Proxy),
            Some(range) => self.dhcp_range(range),
        };
        match http {
            None => self.error(
                "pxe",
                "PXE chains every PC to /boot.ipxe, which the HTTP service serves: add an http section",
            ),
            Some(h) if h.listen.ip().is_loopback() => self.error(
                "http.listen",
                format!(
                    "{} is loopback, but the pxe section sends PCs to /boot.ipxe there: listen on the room's address (or 0.0.0.0)",
                    h.listen
                ),
            ),
            Some(_) => {}
        }
        let only_known = r.only_known.unwrap_or(true);
        if only_known {
            for (i, pc) in pcs.iter().enumerate() {
                if pc.mac.is_none() {
                    let field = self.field_of(i, "mac");
                    self.error(&field, format!("{}: no mac, and pxe.only_known answers only the manifest's MACs (give it a mac, or set pxe.only_known: false)", pc.name));
                }
            }
        }
        let tftp_root = r
            .tftp_root
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TFTP_ROOT));
        if !tftp_root.is_absolute() {
            self.error(
                "pxe.tftp_root",
                format!("{} is not an absolute path", tftp_root.display()),
            );
        }
        let wake_broadcast = match r.wake_broadcast.map(|t| t.as_string()) {
            None => Ipv4Addr::BROADCAST,
            Some(s) => s.parse().unwrap_or_else(|_| {
                self.error(
                    "pxe.wake_broadcast",
                    format!("{s:?} is not an IPv4 address (the room's broadcast address)"),
                );
                Ipv4Addr::BROADCAST
            }),
        };
        (self.errors.len() == before).then_some(PxeConfig {
            interface: r.interface,
            dhcp: dhcp?,
            only_known,
            tftp_root,
            wake_broadcast,
        })
    }

    /// A value cowctl writes into dnsmasq's configuration must stay on its line there.
    fn one_line(&mut self, field: &str, value: &str) {
        if let Some(c) = crate::base::logtext::first_control(value) {
            self.error(
                field,
                format!(
                    "{:?} holds the control character U+{:04X}, which would start a line of its own in dnsmasq's configuration",
                    value,
                    u32::from(c)
                ),
            );
        }
    }

    fn dhcp_range(&mut self, range: &str) -> Option<DhcpMode> {
        let parsed = range.split_once('-').and_then(|(a, b)| {
            Some((
                a.trim().parse::<Ipv4Addr>().ok()?,
                b.trim().parse::<Ipv4Addr>().ok()?,
            ))
        });
        match parsed {
            Some((first, last)) if first <= last => Some(DhcpMode::Range { first, last }),
            Some(_) => {
                self.error(
                    "pxe.dhcp",
                    format!("{range:?}: the range's first address comes after its last"),
                );
                None
            }
            None => {
                self.error("pxe.dhcp", format!("{range:?} is neither proxy (beside the LAN's DHCP server) nor a range to lease from, as in 10.0.0.100-10.0.0.199"));
                None
            }
        }
    }
}
