//! A room with rbd images and its Ceph cluster: reached as the manifest's client (within a
//! few seconds), its health as the monitors say it, the pool's free space against what the
//! PCs' quotas let them write, the client's keyring private, and on the kernel path the
//! kernel's rbd driver. Reading only: a connection and two monitor commands.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::modules;
use super::{Area, Check, Host};
use crate::base::units::human;
use crate::manifest::{Manifest, Storage};
use crate::rbd::{Pool, Settings};
use crate::room::choose::BackendKind;

/// How long doctor waits for a cluster that does not answer.
const CONNECT_SECONDS: u32 = 5;

pub fn checks(m: &Manifest, host: &Host, backend: BackendKind) -> Vec<Check> {
    let Some(ceph) = m.ceph.as_ref().filter(|_| m.uses_rbd()) else {
        return Vec::new();
    };
    let settings = &ceph.settings;
    let mut out = Vec::new();
    if backend == BackendKind::Kernel {
        out.push(rbd_module(host));
    }
    let pool = match Pool::connect_within(settings, CONNECT_SECONDS) {
        Ok(pool) => pool,
        Err(e) => {
            out.push(Check::fail(
                Area::Ceph,
                format!(
                    "cannot reach pool {} as client.{} within {CONNECT_SECONDS} s: {e}",
                    settings.pool, settings.client
                ),
                format!(
                    "see that the monitors in {} run and answer (ceph -s), and that the pool and the client's key exist",
                    settings.conf.display()
                ),
            ));
            return out;
        }
    };
    out.push(health(&pool, settings));
    out.push(space(&pool, m));
    if let Some(c) = keyring(&pool, settings) {
        out.push(c);
    }
    out
}

fn rbd_module(host: &Host) -> Check {
    let state = modules::state(&host.sys, &host.modules, "rbd");
    if state.available() {
        Check::ok(Area::Ceph, state.describe("rbd"))
    } else {
        Check::fail(
            Area::Ceph,
            format!(
                "the kernel backend maps rbd PCs with the kernel's rbd driver: {}",
                state.describe("rbd")
            ),
            "install the running kernel's modules (rbd), or set backend: userspace",
        )
    }
}

/// `ceph health`: HEALTH_OK, or each of the monitors' warnings and errors.
fn health(pool: &Pool, settings: &Settings) -> Check {
    let who = format!("client.{} reaches pool {}", settings.client, settings.pool);
    let answer = match pool.mon_command(r#"{"prefix": "health", "format": "json"}"#) {
        Ok(a) => a,
        Err(e) => {
            return Check::warn(
                Area::Ceph,
                format!("{who}, but the monitors do not tell its health: {e}"),
                "give the client `mon 'allow r'` (ceph auth caps)",
            )
        }
    };
    let h: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    let status = h["status"].as_str().unwrap_or("no status");
    let mut said: Vec<String> = h["checks"]
        .as_object()
        .map(|checks| {
            checks
                .iter()
                .map(|(name, c)| {
                    let message = c["summary"]["message"].as_str().unwrap_or("");
                    format!("{name}: {message}")
                })
                .collect()
        })
        .unwrap_or_default();
    said.sort();
    let says = if said.is_empty() {
        format!("{who}; the cluster says {status}")
    } else {
        format!("{who}; the cluster says {status} ({})", said.join("; "))
    };
    match status {
        "HEALTH_OK" => Check::ok(Area::Ceph, says),
        "HEALTH_WARN" => Check::warn(Area::Ceph, says, "see ceph health detail"),
        _ => Check::fail(
            Area::Ceph,
            says,
            "see ceph health detail: PCs' I/O may stop while the cluster is in error",
        ),
    }
}

/// The pool's free space (`ceph df`'s max_avail, replicas counted) against the room's rbd
/// PCs' quotas (`cow_size`): what they may still write, at most.
fn space(pool: &Pool, m: &Manifest) -> Check {
    let quotas: u64 = m
        .pcs
        .iter()
        .filter(|p| m.storage_of(p) == Storage::Rbd)
        .map(|p| p.cow_size.bytes())
        .sum();
    let df: serde_json::Value = pool
        .mon_command(r#"{"prefix": "df", "format": "json"}"#)
        .ok()
        .and_then(|a| serde_json::from_str(&a).ok())
        .unwrap_or_default();
    let avail = df["pools"].as_array().and_then(|pools| {
        pools
            .iter()
            .find(|p| p["name"].as_str() == Some(pool.name()))
            .and_then(|p| p["stats"]["max_avail"].as_u64())
    });
    let Some(avail) = avail else {
        return Check::warn(
            Area::Ceph,
            format!("the monitors do not tell pool {}'s free space", pool.name()),
            "give the client `mon 'allow r'` (ceph auth caps), or see ceph df",
        );
    };
    let says = format!(
        "pool {} has {} free; the room's rbd PCs may write up to {} (their cow_size)",
        pool.name(),
        human(avail),
        human(quotas)
    );
    if avail >= quotas {
        Check::ok(Area::Ceph, says)
    } else {
        Check::warn(
            Area::Ceph,
            says,
            "add OSDs, or lower cow_size: a full pool stops every PC's writes",
        )
    }
}

/// The keyring the client's key is read from, readable by its owner only (as Ceph makes
/// it); None when it names no file here (a key given another way).
fn keyring(pool: &Pool, settings: &Settings) -> Option<Check> {
    let named: Vec<PathBuf> = match &settings.keyring {
        Some(k) => vec![k.clone()],
        None => pool
            .conf("keyring")
            .ok()?
            .split([',', ';'])
            .map(|p| PathBuf::from(p.trim()))
            .collect(),
    };
    let (path, mode) = named.iter().find_map(|p| {
        let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o7777;
        Some((p, mode))
    })?;
    let at = format!("the keyring {}", path.display());
    Some(if mode & 0o077 == 0 {
        Check::ok(Area::Secret, format!("{at} is readable by its owner only"))
    } else {
        Check::fail(
            Area::Secret,
            format!("{at} is readable by others (mode {mode:04o})"),
            format!("chmod 600 {}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::clock::Synced;
    use crate::doctor::testing::{host, FakeClock, FakeDm, FakeNet};
    use crate::doctor::Status;

    #[test]
    fn the_kernel_path_needs_the_rbd_driver() {
        let root = tempfile::tempdir().unwrap();
        let (net, dm) = (FakeNet(Vec::new()), FakeDm(None));
        let clock = FakeClock {
            synced: Synced::Yes,
            now: 0,
        };
        let h = host(root.path(), &net, &dm, &clock);
        let missing = rbd_module(&h);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.says.contains("kernel's rbd driver"), "{missing}");
        std::fs::write(
            h.modules.join("modules.dep"),
            "kernel/drivers/block/rbd.ko: kernel/net/ceph/libceph.ko\n",
        )
        .unwrap();
        assert_eq!(rbd_module(&h).status, Status::Ok);
    }
}
