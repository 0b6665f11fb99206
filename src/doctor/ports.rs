//! Every address the manifest listens on: free, or held by whom. Listening sockets come
//! from /proc/net/tcp{,6}, their owners from the socket inodes in /proc/<pid>/fd; a socket
//! without an inode is the kernel's (LIO's portals).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::{Area, Check, Host};
use crate::manifest::{Export, Manifest};
use crate::room::choose::BackendKind;

/// A TCP socket in the LISTEN state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub inode: u64,
}

const LISTEN: &str = "0A";

/// `0100007F:1F90` (an address as the kernel's 32-bit words in this machine's byte order).
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The listening sockets of one /proc/net/tcp-style table.
pub fn parse_table(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&LISTEN) {
                return None;
            }
            Some(Listener {
                addr: parse_addr(f.get(1)?)?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every listening TCP socket, IPv4 and IPv6.
pub fn listeners(proc: &Path) -> Vec<Listener> {
    ["net/tcp", "net/tcp6"]
        .iter()
        .flat_map(|t| parse_table(&std::fs::read_to_string(proc.join(t)).unwrap_or_default()))
        .collect()
}

/// Whether binding `want` would collide with a socket bound to `held` (same port): the
/// same address, or a wildcard on either side (an IPv6 wildcard takes IPv4 too).
pub fn overlaps(want: IpAddr, held: IpAddr) -> bool {
    let v6_any = |ip: IpAddr| ip.is_ipv6() && ip.is_unspecified();
    want == held
        || (want.is_ipv4() == held.is_ipv4() && (want.is_unspecified() || held.is_unspecified()))
        || v6_any(want)
        || v6_any(held)
}

/// A process: its pid, its short name and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub args: Vec<String>,
}

impl Process {
    fn read(proc: &Path, pid: u32) -> Process {
        let dir = proc.join(pid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let args = std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).to_string())
            .collect();
        Process {
            pid,
            comm: comm.trim().to_string(),
            args,
        }
    }

    /// `cowctl serve`, the userspace backend's service (and the kernel backend's HTTP).
    pub fn is_cowctl_serve(&self) -> bool {
        let program = self.args.first().map(|a| a.rsplit('/').next().unwrap_or(a));
        program == Some("cowctl") && self.args.iter().skip(1).any(|a| a == "serve")
    }
}

/// The process holding socket `inode`, if this user may see it.
pub fn holder(proc: &Path, inode: u64) -> Option<Process> {
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let found = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()));
        if found {
            return Some(Process::read(proc, pid));
        }
    }
    None
}

/// What the manifest listens on, with the field that says so.
pub fn wanted(m: &Manifest, backend: BackendKind) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    if let Some(iscsi) = &m.iscsi {
        if m.pcs
            .iter()
            .any(|p| matches!(p.export, Export::Iscsi { .. }))
        {
            out.extend(
                iscsi
                    .portals
                    .iter()
                    .map(|p| ("iscsi.portals".to_string(), p.0)),
            );
        }
    }
    if backend == BackendKind::Userspace {
        out.push(("nbd.listen".into(), m.nbd.listen));
    }
    if let Some(http) = &m.http {
        out.push(("http.listen".into(), http.listen));
        out.push(("http.admin_listen".into(), http.admin_listen));
    }
    out
}

/// One line per address the manifest listens on.
pub fn checks(m: &Manifest, host: &Host, backend: BackendKind) -> Vec<Check> {
    let held = listeners(&host.proc);
    wanted(m, backend)
        .into_iter()
        .map(|(field, addr)| {
            let found = held
                .iter()
                .find(|l| l.addr.port() == addr.port() && overlaps(addr.ip(), l.addr.ip()));
            match found {
                None => Check::ok(Area::Port, format!("{field} {addr} is free")),
                Some(l) => held_by(host, backend, &field, addr, l),
            }
        })
        .collect()
}

fn held_by(
    host: &Host,
    backend: BackendKind,
    field: &str,
    addr: SocketAddr,
    l: &Listener,
) -> Check {
    let at = if l.addr == addr {
        format!("{field} {addr}")
    } else {
        format!("{field} {addr} (as {})", l.addr)
    };
    let change = format!("or give {field} another address in the manifest");
    if l.inode == 0 {
        return if backend == BackendKind::Kernel && field == "iscsi.portals" {
            Check::ok(
                Area::Port,
                format!("{at} is held by the kernel: LIO's portal"),
            )
        } else {
            Check::fail(
                Area::Port,
                format!("{at} is held by the kernel (an LIO portal?)"),
                format!("remove that portal (targetcli), {change}"),
            )
        };
    }
    match holder(&host.proc, l.inode) {
        Some(p) if p.is_cowctl_serve() => Check::ok(
            Area::Port,
            format!(
                "{at} is held by cowctl serve (pid {}): this room's own service",
                p.pid
            ),
        ),
        Some(p) => Check::fail(
            Area::Port,
            format!("{at} is held by {} (pid {})", p.comm, p.pid),
            format!("stop {} (kill {}), {change}", p.comm, p.pid),
        ),
        None => Check::fail(
            Area::Port,
            format!("{at} is held by a process this user cannot see"),
            format!("run cowctl doctor as root to name it, {change}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{clock::Synced, Status};
    use super::*;

    /// A /proc/net/tcp line as this machine's kernel writes it.
    fn line(addr: SocketAddr, state: &str, inode: u64) -> String {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => v6
                .octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes(c.try_into().unwrap())))
                .collect(),
        };
        format!(
            "   0: {ip}:{:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n",
            addr.port()
        )
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    #[test]
    fn tables_parse_in_both_families_and_only_listeners_count() {
        let t = format!(
            "{HEADER}{}{}",
            line("127.0.0.1:8080".parse().unwrap(), "0A", 42),
            line("10.0.0.1:22".parse().unwrap(), "01", 43)
        );
        assert_eq!(
            parse_table(&t),
            vec![Listener {
                addr: "127.0.0.1:8080".parse().unwrap(),
                inode: 42
            }]
        );
        let t6 = format!(
            "{HEADER}{}",
            line("[fe80::1]:3260".parse().unwrap(), "0A", 7)
        );
        assert_eq!(parse_table(&t6)[0].addr, "[fe80::1]:3260".parse().unwrap());
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let v6any: IpAddr = "::".parse().unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(overlaps(a, any) && overlaps(any, a) && overlaps(a, v6any) && overlaps(a, a));
        assert!(!overlaps(a, b));
        assert!(!overlaps("::1".parse().unwrap(), a));
    }

    fn process(h: &Host, pid: u32, args: &[&str], inode: u64) {
        let dir = h.proc.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::write(
            dir.join("comm"),
            format!("{}\n", args[0].rsplit('/').next().unwrap()),
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), args.join("\0") + "\0").unwrap();
        std::os::unix::fs::symlink(format!("socket:[{inode}]"), dir.join("fd/3")).unwrap();
    }

    /// Listening sockets as /proc shows them: 0.0.0.0:8080 held by nginx, 127.0.0.1:10809
    /// by cowctl serve, 127.0.0.1:3260 by the kernel (inode 0), [::]:8081 by a process
    /// this user cannot see.
    fn hold_ports(h: &Host) {
        std::fs::create_dir_all(h.proc.join("net")).unwrap();
        std::fs::write(
            h.proc.join("net/tcp"),
            format!(
                "{HEADER}{}{}{}",
                line("0.0.0.0:8080".parse().unwrap(), "0A", 100),
                line("127.0.0.1:10809".parse().unwrap(), "0A", 200),
                line("127.0.0.1:3260".parse().unwrap(), "0A", 0),
            ),
        )
        .unwrap();
        std::fs::write(
            h.proc.join("net/tcp6"),
            format!("{HEADER}{}", line("[::]:8081".parse().unwrap(), "0A", 300)),
        )
        .unwrap();
        process(h, 41, &["/usr/sbin/nginx", "-g", "daemon off;"], 100);
        process(
            h,
            42,
            &[
                "/usr/local/bin/cowctl",
                "-f",
                "/etc/cowctl/room.yaml",
                "serve",
            ],
            200,
        );
    }

    #[test]
    fn each_address_is_free_ours_or_held_by_someone_named() {
        let d = tempfile::tempdir().unwrap();
        let (net, dm, clock) = (
            FakeNet(vec![]),
            FakeDm(None),
            FakeClock {
                synced: Synced::Yes,
                now: 0,
            },
        );
        let h = host(d.path(), &net, &dm, &clock);
        hold_ports(&h);
        let m = manifest(
            d.path(),
            "images:\n  g:\n    path: /g.img\ndefaults:\n  image: g\n  cow_dir: /c\n  cow_size: 1GiB\n\
             iscsi:\n  iqn_prefix: iqn.2024-01.lan.t\n  portals: [\"127.0.0.1:3260\"]\n  acl: open\n\
             http:\n  listen: 10.0.0.1:8080\n  admin_listen: 127.0.0.1:8081\npcs:\n  - name: a\n    export: iscsi\n",
        );
        let c = checks(&m, &h, BackendKind::Userspace);
        let says: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(c.len(), 4, "{says:#?}");
        assert_eq!(
            c[0].status,
            Status::Fail,
            "the kernel holds what serve wants: {}",
            says[0]
        );
        assert!(
            says[1].contains("nbd.listen 127.0.0.1:10809 is held by cowctl serve (pid 42)"),
            "{}",
            says[1]
        );
        assert_eq!(c[1].status, Status::Ok);
        assert!(
            says[2]
                .contains("http.listen 10.0.0.1:8080 (as 0.0.0.0:8080) is held by nginx (pid 41)"),
            "{}",
            says[2]
        );
        assert!(says[2].contains("kill 41"), "{}", says[2]);
        assert!(
            says[3].contains("held by a process this user cannot see"),
            "{}",
            says[3]
        );
        let c = checks(&m, &h, BackendKind::Kernel);
        assert_eq!(
            c[0].status,
            Status::Ok,
            "LIO's own portal on the kernel backend: {}",
            c[0]
        );
        assert_eq!(c.len(), 3, "no NBD on the kernel backend");
        std::fs::write(h.proc.join("net/tcp"), HEADER).unwrap();
        std::fs::write(h.proc.join("net/tcp6"), HEADER).unwrap();
        let c = checks(&m, &h, BackendKind::Userspace);
        assert!(
            c.iter()
                .all(|c| c.status == Status::Ok && c.says.ends_with("is free")),
            "{c:?}"
        );
    }
}
