//! The PXE bootstrap: a dnsmasq cowctl supervises from the manifest's `pxe` section (its
//! configuration in `config`), and Wake-on-LAN (`wake`). The running dnsmasq and its
//! configuration file are the observed state: apply starts it, restarts it when the
//! manifest gives another configuration, and leaves it alone otherwise.

pub mod config;
pub mod error;
pub mod seen;
pub mod wake;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::PxeError;

use crate::kernel::net::Net;
use crate::kernel::supervise::{Helpers, Running};
use crate::manifest::{DhcpMode, Manifest, PxeConfig};
pub use config::Chain;

type Result<T, E = PxeError> = std::result::Result<T, E>;

const KEY: &str = "dnsmasq";

fn helpers(run_dir: &Path) -> Helpers {
    Helpers {
        dir: run_dir.join("pxe"),
        program: "dnsmasq",
        install_hint: "is the dnsmasq-base package installed?",
    }
}

fn conf_path(run_dir: &Path) -> PathBuf {
    run_dir.join("pxe").join("dnsmasq.conf")
}

/// The address PCs reach the HTTP service at: `http.server`, else the PXE interface's
/// IPv4 address; checked against `http.listen`.
pub fn chain(m: &Manifest, pxe: &PxeConfig, net: &dyn Net) -> Result<Chain> {
    let Some(http) = &m.http else {
        return Err(PxeError::NoHttp);
    };
    let server = match http.server {
        Some(IpAddr::V4(ip)) => ip,
        Some(IpAddr::V6(ip)) => return Err(PxeError::Ipv6Server { ip }),
        None => interface_ipv4(pxe, net)?,
    };
    let listen = http.listen.ip();
    if !listen.is_unspecified() && listen != IpAddr::V4(server) {
        return Err(PxeError::ListenElsewhere {
            listen: http.listen,
            interface: pxe.interface.clone(),
            server,
        });
    }
    Ok(Chain {
        server,
        port: http.listen.port(),
    })
}

fn interface_ipv4(pxe: &PxeConfig, net: &dyn Net) -> Result<Ipv4Addr> {
    let interfaces = net.interfaces()?;
    let Some(iface) = interfaces.iter().find(|i| i.name == pxe.interface) else {
        return Err(PxeError::NoInterface {
            interface: pxe.interface.clone(),
        });
    };
    iface
        .addresses
        .iter()
        .find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| PxeError::NoIpv4 {
            interface: pxe.interface.clone(),
        })
}

/// What apply would do about dnsmasq, from the manifest and what runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// It runs (this pid) with the manifest's configuration.
    Keep(u32),
    Start,
    /// It runs (this pid) with another configuration.
    Restart(u32),
}

/// The plan for dnsmasq: the step, one line saying what it serves, and its configuration.
pub struct Plan {
    pub step: Step,
    pub what: String,
    config: String,
}

/// Compares the manifest's dnsmasq with the running one (nothing without a `pxe` section).
pub fn plan(m: &Manifest, run_dir: &Path, net: &dyn Net) -> Result<Option<Plan>> {
    let Some(pxe) = &m.pxe else {
        return Ok(None);
    };
    let chain = chain(m, pxe, net)?;
    for f in [config::BIOS_LOADER, config::UEFI_LOADER] {
        if !pxe.tftp_root.join(f).is_file() {
            return Err(PxeError::NoLoader {
                tftp_root: pxe.tftp_root.clone(),
                loader: f,
            });
        }
    }
    let h = helpers(run_dir);
    let files = config::Files {
        leases: &h.dir.join("dnsmasq.leases"),
        log: &seen::log_path(run_dir),
    };
    let config = config::render(pxe, &chain, &m.pcs, &m.path, files)?;
    let current = std::fs::read_to_string(conf_path(run_dir)).ok();
    let step = match h.running(KEY) {
        Some(r) if current.as_deref() == Some(config.as_str()) => Step::Keep(r.pid),
        Some(r) => Step::Restart(r.pid),
        None => Step::Start,
    };
    Ok(Some(Plan {
        step,
        what: describe(pxe, &chain),
        config,
    }))
}

/// Makes the running dnsmasq match the manifest (nothing without a `pxe` section): the
/// plan it carried out, and the pid of the dnsmasq that runs now.
pub fn apply(m: &Manifest, run_dir: &Path, net: &dyn Net) -> Result<Option<(Plan, u32)>> {
    let Some(plan) = plan(m, run_dir, net)? else {
        return Ok(None);
    };
    let h = helpers(run_dir);
    match plan.step {
        Step::Keep(pid) => return Ok(Some((plan, pid))),
        Step::Restart(_) => {
            h.stop(KEY)?;
        }
        Step::Start => {}
    }
    let conf = conf_path(run_dir);
    crate::base::rundir::ensure(&h.dir)?;
    crate::base::durable::write_atomic(&conf, plan.config.as_bytes()).map_err(|source| {
        PxeError::WriteConfig {
            path: conf.clone(),
            source,
        }
    })?;
    let args = vec![
        "--keep-in-foreground".to_string(),
        format!("--conf-file={}", conf.display()),
    ];
    let pid = h.start(KEY, &args, Duration::from_millis(300))?;
    Ok(Some((plan, pid)))
}

fn describe(pxe: &PxeConfig, chain: &Chain) -> String {
    let mode = match &pxe.dhcp {
        DhcpMode::Proxy => "proxy DHCP".to_string(),
        DhcpMode::Range { first, last } => format!("DHCP {first}-{last}"),
    };
    format!(
        "PXE on {} ({mode}{}), iPXE by TFTP from {}, then {}",
        pxe.interface,
        if pxe.only_known {
            ", the manifest's MACs only"
        } else {
            ""
        },
        pxe.tftp_root.display(),
        chain.url()
    )
}

/// The live dnsmasq, if any.
pub fn running(run_dir: &Path) -> Option<Running> {
    helpers(run_dir).running(KEY)
}

/// Whether the manifest's dnsmasq runs; None without a `pxe` section.
pub fn up(m: &Manifest, run_dir: &Path) -> Option<bool> {
    m.pxe.as_ref().map(|_| running(run_dir).is_some())
}

/// One line for `status`: whether the manifest's dnsmasq runs.
pub fn status_line(m: &Manifest, run_dir: &Path) -> Option<String> {
    let pxe = m.pxe.as_ref()?;
    Some(match running(run_dir) {
        Some(r) => format!(
            "PXE: dnsmasq {} answers on {} (DHCP log: {})",
            r.pid,
            pxe.interface,
            seen::log_path(run_dir).display()
        ),
        None => format!(
            "PXE: dnsmasq is not running on {}: PCs cannot PXE-boot (run cowctl apply)",
            pxe.interface
        ),
    })
}

/// Stops the room's dnsmasq; true if one ran. Its configuration file stays.
pub fn stop(run_dir: &Path) -> Result<bool> {
    helpers(run_dir).stop(KEY).map_err(PxeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::net::Interface;

    struct OneInterface(Vec<IpAddr>);

    impl Net for OneInterface {
        fn interfaces(&self) -> Result<Vec<Interface>, crate::kernel::NetError> {
            Ok(vec![Interface {
                name: "eth1".into(),
                up: true,
                addresses: self.0.clone(),
            }])
        }
    }

    fn room(http: &str) -> Manifest {
        Manifest::parse(
            Path::new("/m.yaml"),
            &format!(
                "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: /c\n  cow_size: 1GiB\n  export: nbd\n\
                 http:\n{http}pxe:\n  interface: eth1\n  only_known: false\npcs:\n  - name: a\n"
            ),
        )
        .unwrap()
    }

    fn chain_of(http: &str, addresses: &[&str]) -> Result<Chain> {
        let m = room(http);
        let net = OneInterface(addresses.iter().map(|a| a.parse().unwrap()).collect());
        chain(&m, m.pxe.as_ref().unwrap(), &net)
    }

    #[test]
    fn pcs_are_chained_to_the_interfaces_ipv4_address_or_http_server() {
        let c = chain_of("  listen: 0.0.0.0:8080\n", &["fe80::1", "10.9.0.1"]).unwrap();
        assert_eq!(c.url(), "http://10.9.0.1:8080/boot.ipxe");
        let c = chain_of("  listen: 0.0.0.0:80\n  server: 10.9.0.5\n", &["10.9.0.1"]).unwrap();
        assert_eq!(c.url(), "http://10.9.0.5:80/boot.ipxe");
        let c = chain_of("  listen: 10.9.0.1:8080\n", &["10.9.0.1"]).unwrap();
        assert_eq!(c.url(), "http://10.9.0.1:8080/boot.ipxe");
    }

    #[test]
    fn a_chain_pcs_could_not_follow_is_refused_with_a_sentence() {
        let e = chain_of("  listen: 0.0.0.0:8080\n", &["fe80::1"]).unwrap_err();
        assert!(
            matches!(&e, PxeError::NoIpv4 { interface } if interface == "eth1"),
            "{e}"
        );
        let e = chain_of("  listen: 10.7.0.1:8080\n", &["10.9.0.1"]).unwrap_err();
        assert!(
            matches!(&e, PxeError::ListenElsewhere { listen, interface, server }
                if listen.to_string() == "10.7.0.1:8080"
                    && interface == "eth1"
                    && server.to_string() == "10.9.0.1"),
            "{e}"
        );
        let m = room("  listen: 0.0.0.0:8080\n");
        let pxe = PxeConfig {
            interface: "eth9".into(),
            ..m.pxe.clone().unwrap()
        };
        let e = chain(&m, &pxe, &OneInterface(vec![])).unwrap_err();
        assert!(
            matches!(&e, PxeError::NoInterface { interface } if interface == "eth9"),
            "{e}"
        );
    }
}
