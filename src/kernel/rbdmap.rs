//! The kernel's `rbd` driver: RBD images mapped as block devices (`/dev/rbdN`) through
//! sysfs (`/sys/bus/rbd/add_single_major`, `remove_single_major`, `devices/N/*`), as
//! `rbd device map` does, without its wait for udev (the test VM has none). A mapping
//! takes the image's exclusive lock and keeps it (`exclusive`): no other client writes
//! the image while the kernel serves it. The client's key goes to the kernel through this
//! process's keyring, as `rbd device map` hands it over: the add line, which the kernel
//! keeps and shows in `config_info`, names the key instead of carrying it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::RbdMapError;
use super::{keyring, DevNum};

/// An image mapped by the kernel, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The N of `/dev/rbdN` and `/sys/bus/rbd/devices/N`.
    pub id: u32,
    pub pool: String,
    /// The name it was mapped by (a later rename does not change it).
    pub name: String,
    /// The image's id in its pool: what names it across renames.
    pub image_id: String,
    pub number: DevNum,
    /// Its size in bytes.
    pub size: u64,
}

impl Mapped {
    pub fn dev(&self) -> PathBuf {
        PathBuf::from(format!("/dev/rbd{}", self.id))
    }
}

/// How the kernel's client reaches the cluster: the monitors' addresses, msgr2 or the
/// legacy protocol, and the client's name and secret (cephx).
#[derive(Clone, PartialEq, Eq)]
pub struct MapRequest {
    pub monitors: Vec<SocketAddr>,
    pub msgr2: bool,
    pub client: String,
    pub secret: String,
    pub pool: String,
    pub image: String,
}

impl fmt::Debug for MapRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "map {}/{} (client.{})",
            self.pool, self.image, self.client
        )
    }
}

/// A value the add line carries in one field: no space, comma or control character (a
/// name or secret that had one would change the line's meaning).
fn plain(what: &'static str, value: &str) -> Result<(), RbdMapError> {
    let bad = |c: char| c.is_whitespace() || c == ',' || c.is_control();
    if value.is_empty() || value.contains(bad) {
        return Err(RbdMapError::Field { what });
    }
    Ok(())
}

/// How the add line hands the kernel the client's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `key=client.NAME`: the secret waits in this process's keyring (`hand_over_key`).
    Keyring,
    /// `secret=…` in the line itself: for a kernel without keyrings.
    Inline,
}

impl MapRequest {
    /// Each field fits the add line: a value with a space or comma would change its meaning.
    pub fn check(&self) -> Result<(), RbdMapError> {
        if self.monitors.is_empty() {
            return Err(RbdMapError::Field { what: "monitors" });
        }
        plain("client name", &self.client)?;
        plain("secret", &self.secret)?;
        plain("pool", &self.pool)?;
        plain("image", &self.image)?;
        self.secret_bytes().map(|_| ())
    }

    /// The key itself: the keyring's base64 decoded.
    fn secret_bytes(&self) -> Result<Vec<u8>, RbdMapError> {
        crate::base::base64::decode(&self.secret)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| RbdMapError::Secret {
                client: self.client.clone(),
            })
    }

    /// The line written to `add_single_major`: "MONS OPTIONS POOL IMAGE -" (no snapshot:
    /// the image itself, read-write). Checked field by field first.
    pub fn line(&self, credential: Credential) -> Result<String, RbdMapError> {
        self.check()?;
        let mons: Vec<String> = self.monitors.iter().map(ToString::to_string).collect();
        let key = match credential {
            Credential::Keyring => format!("key=client.{}", self.client),
            Credential::Inline => format!("secret={}", self.secret),
        };
        // A lock held by a live peer is refused (EROFS) rather than waited for forever.
        let mut options = format!("name={},{key},exclusive,lock_timeout=30", self.client);
        if self.msgr2 {
            options.push_str(",ms_mode=prefer-crc");
        }
        Ok(format!(
            "{} {options} {} {} -",
            mons.join(","),
            self.pool,
            self.image
        ))
    }

    /// Puts the client's key where libceph looks it up by name (the process keyring, key
    /// type "ceph", the decoded secret), as `rbd device map` does; the add line must be
    /// written by this thread next. A kernel whose keyring refuses it (none built in,
    /// libceph not loaded) gets the secret in the line instead: a PC mapped, with its
    /// secret in `config_info` (root's), rather than one left unmapped in a reset's pause.
    fn hand_over_key(&self) -> Result<Credential, RbdMapError> {
        let payload = self.secret_bytes()?;
        let name = format!("client.{}", self.client);
        match keyring::add_to_process("ceph", &name, &payload) {
            Ok(()) => Ok(Credential::Keyring),
            Err(e) => {
                tracing::warn!(
                    "the kernel's keyring refused {name}'s key ({e}): the rbd mapping carries it in its add line, which the kernel shows root in config_info"
                );
                Ok(Credential::Inline)
            }
        }
    }
}

/// Monitors as ceph.conf's `mon_host` names them ("v2:1.2.3.4:3300",
/// "[v2:1.2.3.4:3300/0,v1:1.2.3.4:6789/0]", "1.2.3.4:6789, 5.6.7.8", "[::1]:6789"): the
/// msgr2 addresses when there are any, else the legacy ones; a missing port is the
/// protocol's (3300 for msgr2, 6789 for legacy). The kernel takes addresses, not names.
pub fn monitors(mon_host: &str) -> Result<(Vec<SocketAddr>, bool), RbdMapError> {
    let (mut v2, mut v1) = (Vec::new(), Vec::new());
    for token in mon_host
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        let bad = || RbdMapError::Monitor {
            token: token.to_string(),
        };
        // A monitor's address vector is bracketed: "[v2:…" opens it, "…]" closes it.
        let mut t = token.strip_prefix("[v").map_or(token, |_| &token[1..]);
        if t.ends_with(']') && t.matches('[').count() < t.matches(']').count() {
            t = &t[..t.len() - 1];
        }
        let (msgr2, addr) = match t.split_at_checked(3) {
            Some(("v2:", rest)) => (true, rest),
            Some(("v1:", rest)) => (false, rest),
            _ => (false, t),
        };
        // The nonce after the address ("/0") is not the kernel's business.
        let addr = addr.split('/').next().unwrap_or(addr);
        let port = if msgr2 { 3300 } else { 6789 };
        let parsed = addr
            .parse::<SocketAddr>()
            .or_else(|_| {
                let ip = addr.trim_start_matches('[').trim_end_matches(']');
                ip.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, port))
            })
            .map_err(|_| bad())?;
        if msgr2 { &mut v2 } else { &mut v1 }.push(parsed);
    }
    match (v2.is_empty(), v1.is_empty()) {
        (false, _) => Ok((v2, true)),
        (true, false) => Ok((v1, false)),
        (true, true) => Err(RbdMapError::Field { what: "monitors" }),
    }
}

/// The client's key in a keyring file (`[client.NAME]` … `key = …`).
pub fn key_in_keyring(text: &str, client: &str) -> Option<String> {
    let section = format!("[client.{client}]");
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == section;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "key" {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// Images mapped by the kernel.
pub trait RbdMaps: Send + Sync {
    fn list(&self) -> Result<Vec<Mapped>, RbdMapError>;
    /// Maps the image; returns its device once the kernel made it.
    fn map(&self, req: &MapRequest) -> Result<Mapped, RbdMapError>;
    /// Unmaps device `id` (refused while something holds it open, as dm does).
    fn unmap(&self, id: u32) -> Result<(), RbdMapError>;
}

/// The real driver under `/sys/bus/rbd`.
pub struct SysRbd {
    root: PathBuf,
}

impl SysRbd {
    pub fn new(root: impl Into<PathBuf>) -> SysRbd {
        SysRbd { root: root.into() }
    }

    fn read(&self, path: &Path) -> Result<String, RbdMapError> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|source| RbdMapError::Sysfs {
                path: path.to_path_buf(),
                source,
            })
    }

    fn device(&self, id: u32) -> Result<Mapped, RbdMapError> {
        let dir = self.root.join("devices").join(id.to_string());
        let num = |f: &str| -> Result<u32, RbdMapError> {
            let path = dir.join(f);
            let text = self.read(&path)?;
            text.parse().map_err(|_| RbdMapError::Value { path, text })
        };
        let size_path = dir.join("size");
        let size = self.read(&size_path)?;
        Ok(Mapped {
            id,
            pool: self.read(&dir.join("pool"))?,
            name: self.read(&dir.join("name"))?,
            image_id: self.read(&dir.join("image_id"))?,
            number: DevNum {
                major: num("major")?,
                minor: num("minor")?,
            },
            size: size.parse().map_err(|_| RbdMapError::Value {
                path: size_path,
                text: size.clone(),
            })?,
        })
    }

    fn write(&self, file: &str, line: &str) -> Result<(), RbdMapError> {
        use std::io::Write;
        let path = self.root.join(file);
        let failed = |source| RbdMapError::Write {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(failed)?;
        // One write: sysfs takes the line whole, and answers with the kernel's errno.
        f.write_all(line.as_bytes()).map_err(failed)
    }
}

impl RbdMaps for SysRbd {
    fn list(&self) -> Result<Vec<Mapped>, RbdMapError> {
        let dir = self.root.join("devices");
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(|source| RbdMapError::Sysfs { path: dir, source })?,
        };
        let mut ids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort_unstable();
        // A device unmapped while listed is skipped, not an error.
        Ok(ids
            .into_iter()
            .filter_map(|id| self.device(id).ok())
            .collect())
    }

    fn map(&self, req: &MapRequest) -> Result<Mapped, RbdMapError> {
        req.check()?;
        // libceph, loaded with rbd, brings the key type "ceph".
        super::modprobe("rbd");
        let line = req.line(req.hand_over_key()?)?;
        let before: Vec<u32> = self.list()?.iter().map(|m| m.id).collect();
        self.write("add_single_major", &line)
            .map_err(|e| RbdMapError::Map {
                image: format!("{}/{}", req.pool, req.image),
                source: Box::new(e),
            })?;
        self.list()?
            .into_iter()
            .find(|m| !before.contains(&m.id) && m.pool == req.pool && m.name == req.image)
            .ok_or_else(|| RbdMapError::Vanished {
                image: format!("{}/{}", req.pool, req.image),
            })
    }

    fn unmap(&self, id: u32) -> Result<(), RbdMapError> {
        self.write("remove_single_major", &id.to_string())
            .map_err(|e| RbdMapError::Unmap {
                id,
                source: Box::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_are_read_as_ceph_writes_them() {
        let (m, v2) = monitors("v2:10.97.0.1:5568").unwrap();
        assert_eq!((m, v2), (vec!["10.97.0.1:5568".parse().unwrap()], true));
        let (m, v2) =
            monitors("[v2:10.0.0.1:3300,v1:10.0.0.1:6789],[v2:10.0.0.2:3300,v1:10.0.0.2:6789]")
                .unwrap();
        assert!(v2);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1], "10.0.0.2:3300".parse().unwrap());
        let (m, v2) = monitors("[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0] [v2:10.0.0.2/0]").unwrap();
        assert!(v2);
        assert_eq!(m[0], "10.0.0.1:3300".parse().unwrap());
        assert_eq!(m[1], "10.0.0.2:3300".parse().unwrap(), "msgr2's own port");
        let (m, v2) = monitors("[v2:[fd00::1]:3300/0,v1:[fd00::1]:6789/0]").unwrap();
        assert!(v2);
        assert_eq!(m, vec!["[fd00::1]:3300".parse().unwrap()]);
        let (m, v2) = monitors("[::1]:6789 ::2").unwrap();
        assert!(!v2);
        assert_eq!(m[0], "[::1]:6789".parse().unwrap());
        assert_eq!(m[1], "[::2]:6789".parse().unwrap());
        let (m, v2) = monitors("10.0.0.1, 10.0.0.2:6790").unwrap();
        assert!(!v2);
        assert_eq!(m[0], "10.0.0.1:6789".parse().unwrap());
        assert_eq!(m[1], "10.0.0.2:6790".parse().unwrap());
        assert!(matches!(
            monitors("mon.example:3300"),
            Err(RbdMapError::Monitor { .. })
        ));
        assert!(monitors(" ").is_err());
    }

    #[test]
    fn the_add_line_carries_each_field_in_its_place() {
        let mut req = MapRequest {
            monitors: vec!["10.0.0.1:3300".parse().unwrap()],
            msgr2: true,
            client: "admin".into(),
            secret: "AQAo==".into(),
            pool: "rbd".into(),
            image: "room.pc-1".into(),
        };
        assert_eq!(
            req.line(Credential::Keyring).unwrap(),
            "10.0.0.1:3300 name=admin,key=client.admin,exclusive,lock_timeout=30,ms_mode=prefer-crc rbd room.pc-1 -"
        );
        assert_eq!(
            req.line(Credential::Inline).unwrap(),
            "10.0.0.1:3300 name=admin,secret=AQAo==,exclusive,lock_timeout=30,ms_mode=prefer-crc rbd room.pc-1 -"
        );
        assert!(
            !format!("{req:?}").contains("AQAo"),
            "the secret stays out of logs"
        );
        req.image = "a b".into();
        assert!(matches!(
            req.line(Credential::Keyring),
            Err(RbdMapError::Field { what: "image" })
        ));
        req.image = "x".into();
        req.client = "admin,secret=x".into();
        assert!(matches!(
            req.line(Credential::Inline),
            Err(RbdMapError::Field {
                what: "client name"
            })
        ));
        req.client = "admin".into();
        req.secret = "not*base64".into();
        assert!(
            matches!(req.check(), Err(RbdMapError::Secret { .. })),
            "checked before a reset's pause, not in it"
        );
    }

    #[test]
    fn the_clients_key_is_found_in_its_section() {
        let text = "[client.other]\n\tkey = AAA\n[client.admin]\n\tkey = BBB==\n\tcaps mon = \"allow *\"\n";
        assert_eq!(key_in_keyring(text, "admin").as_deref(), Some("BBB=="));
        assert_eq!(key_in_keyring(text, "nobody"), None);
    }

    #[test]
    fn sysfs_devices_are_read_and_the_add_line_written() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("devices/3");
        std::fs::create_dir_all(&dev).unwrap();
        for (f, v) in [
            ("pool", "rbd\n"),
            ("name", "room.pc-1\n"),
            ("image_id", "101b43df8214\n"),
            ("major", "254\n"),
            ("minor", "48\n"),
            ("size", "8388608\n"),
        ] {
            std::fs::write(dev.join(f), v).unwrap();
        }
        let sys = SysRbd::new(root.path());
        let listed = sys.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].image_id, "101b43df8214");
        assert_eq!(listed[0].number.to_string(), "254:48");
        assert_eq!(listed[0].dev(), Path::new("/dev/rbd3"));
        std::fs::write(root.path().join("remove_single_major"), "").unwrap();
        sys.unmap(3).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("remove_single_major")).unwrap(),
            "3"
        );
    }
}
