//! A room with rbd images and its Ceph cluster: reached as the manifest's client (monitors
//! that do not answer within a few seconds are a finding, not a hang), its health as the
//! monitors say it, the pool's free space against what the PCs' quotas let them write, the
//! client's keyring private, and on the kernel path the kernel's rbd driver. Reading only:
//! a connection and two monitor commands (`health`, `df`), no image opened.

use std::os::unix::fs::PermissionsExt;

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
    let ask = ceph_command(settings);
    let mut out = Vec::new();
    if backend == BackendKind::Kernel {
        out.push(rbd_module(host));
    }
    if let Some(k) = settings.keyring.as_ref().filter(|k| !k.exists()) {
        out.push(Check::fail(
            Area::Secret,
            format!("ceph.keyring {} does not exist", k.display()),
            format!(
                "ceph auth get client.{} -o {}",
                settings.client,
                k.display()
            ),
        ));
    }
    let pool = match Pool::connect_within(settings, CONNECT_SECONDS) {
        Ok(pool) => pool,
        Err(e) => {
            out.push(Check::fail(
                Area::Ceph,
                format!(
                    "cannot reach pool {} as client.{}: {e}",
                    settings.pool, settings.client
                ),
                format!(
                    "{ask} -s tells whether the monitors in {} answer this client; {ask} osd pool ls whether pool {} exists",
                    settings.conf.display(),
                    settings.pool
                ),
            ));
            return out;
        }
    };
    let who = format!("client.{} reaches pool {}", settings.client, settings.pool);
    out.push(health(
        &who,
        pool.mon_command(r#"{"prefix": "health", "format": "json"}"#),
        &ask,
    ));
    out.push(space(
        pool.name(),
        pool.mon_command(r#"{"prefix": "df", "format": "json"}"#),
        writable(m),
        &ask,
    ));
    if let Some(c) = keyring(&pool, settings) {
        out.push(c);
    }
    out.extend(floating_portals(m, &pool));
    out
}

/// Where each floating portal is: at its gateway, held for it by another, or nowhere.
fn floating_portals(m: &Manifest, pool: &Pool) -> Vec<Check> {
    let floating = m.gateways.iter().filter(|g| g.interface.is_some());
    floating
        .filter_map(|g| {
            let object = crate::rbdpc::portal_object(m, &g.name)?;
            let holders: Vec<String> = match pool.lockers(&object, crate::rbdpc::PORTAL_LEASE) {
                Ok(l) => (l.iter())
                    .map(|l| crate::base::machine::cookie_gateway(&l.cookie).to_string())
                    .collect(),
                Err(e) => {
                    return Some(Check::warn(
                        Area::Ceph,
                        format!(
                            "cannot tell who holds {}'s portal {}: {e}",
                            g.name, g.portal
                        ),
                        "see that this client may read the pool's objects",
                    ))
                }
            };
            Some(portal_check(&g.name, &g.portal.to_string(), &holders))
        })
        .chain(twin(m, pool))
        .collect()
}

/// Another machine running as this one's gateway: it holds the gateway's alive lease with
/// another machine's cookie (a clone of this machine, say, with its host name). A bare
/// name is a cowctl from before cookies named the machine: this one's, likely.
fn twin(m: &Manifest, pool: &Pool) -> Option<Check> {
    let here = m.here.as_deref()?;
    m.gateways
        .iter()
        .find(|g| g.name == here)?
        .interface
        .as_ref()?;
    let object = crate::rbdpc::portal_object(m, here)?;
    let ours = crate::base::machine::lease_cookie(here);
    let holders = pool.lockers(&object, crate::rbdpc::ALIVE_LEASE).ok()?;
    let other = holders.iter().find(|l| {
        l.cookie.contains('@')
            && crate::base::machine::cookie_gateway(&l.cookie) == here
            && l.cookie != ours
    })?;
    Some(Check::fail(
        Area::Ceph,
        format!(
            "another machine runs as gateway {here} (it holds {here}'s alive lease as {}): this one cannot hold {here}'s portal or tell the others it runs",
            other.cookie
        ),
        "give one of them another name (COWCTL_GATEWAY, or its host name), or stop cowctl serve there".to_string(),
    ))
}

/// A floating portal's place, from who holds its lease (gateway names).
fn portal_check(gateway: &str, portal: &str, holders: &[String]) -> Check {
    match holders.first() {
        Some(h) if h == gateway => {
            Check::ok(Area::Ceph, format!("{gateway}'s portal {portal} is at {gateway}"))
        }
        Some(h) => Check::warn(
            Area::Ceph,
            format!("{gateway}'s portal {portal} is held by {h}: {gateway} is gone (its PCs reach {h} there)"),
            format!("start cowctl serve on {gateway}: it gets its portal back"),
        ),
        None => Check::fail(
            Area::Ceph,
            format!("nobody holds {gateway}'s portal {portal}: PCs that dial it reach no gateway"),
            format!("start cowctl serve on {gateway} (or on any gateway: it takes over the portal of one that is gone)"),
        ),
    }
}

/// The `ceph` command as this client of this cluster (for the fixes).
fn ceph_command(settings: &Settings) -> String {
    format!(
        "ceph -c {} --id {}",
        settings.conf.display(),
        settings.client
    )
}

/// What the room's rbd PCs may write at most: each one's quota, or its autoextend maximum.
fn writable(m: &Manifest) -> u64 {
    m.pcs
        .iter()
        .filter(|p| m.storage_of(p) == Storage::Rbd)
        .map(|p| {
            p.autoextend.map_or(p.cow_size.bytes(), |a| {
                a.max.bytes().max(p.cow_size.bytes())
            })
        })
        .sum()
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

/// `ceph health`: HEALTH_OK, or each of the monitors' warnings and errors (muted ones left
/// out, as `ceph health` leaves them).
fn health(who: &str, answer: crate::rbd::Result<String>, ask: &str) -> Check {
    let detail = format!("see {ask} health detail");
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            return Check::warn(
                Area::Ceph,
                format!("{who}, but the monitors did not tell its health: {e}"),
                detail,
            )
        }
    };
    let Some((status, said)) = read_health(&answer) else {
        return Check::warn(
            Area::Ceph,
            format!("{who}, but the monitors' answer to `health` is not what Ceph 16 writes"),
            detail,
        );
    };
    let says = if said.is_empty() {
        format!("{who}; the cluster says {status}")
    } else {
        format!("{who}; the cluster says {status} ({})", said.join("; "))
    };
    match status.as_str() {
        "HEALTH_OK" => Check::ok(Area::Ceph, says),
        "HEALTH_WARN" => Check::warn(Area::Ceph, says, detail),
        _ => Check::fail(
            Area::Ceph,
            says,
            format!("{detail}: PCs' I/O may stop while the cluster is in error"),
        ),
    }
}

/// The status and each check that is not muted ("NAME: message"), from `health`'s JSON.
fn read_health(answer: &str) -> Option<(String, Vec<String>)> {
    let h: serde_json::Value = serde_json::from_str(answer).ok()?;
    let status = h["status"].as_str()?.to_string();
    let mut said: Vec<String> = h["checks"]
        .as_object()
        .map(|checks| {
            checks
                .iter()
                .filter(|(_, c)| c["muted"].as_bool() != Some(true))
                .map(|(name, c)| {
                    let message = c["summary"]["message"].as_str().unwrap_or("");
                    format!("{name}: {message}")
                })
                .collect()
        })
        .unwrap_or_default();
    said.sort();
    Some((status, said))
}

/// The pool's free space (`ceph df`'s max_avail, replicas counted) against what the room's
/// rbd PCs may write at most (`writable`).
fn space(pool: &str, answer: crate::rbd::Result<String>, writable: u64, ask: &str) -> Check {
    let avail = answer.ok().and_then(|a| max_avail(&a, pool));
    let Some(avail) = avail else {
        return Check::warn(
            Area::Ceph,
            format!("the monitors did not tell pool {pool}'s free space"),
            format!("see {ask} df"),
        );
    };
    let says = format!(
        "pool {pool} has {} free; the room's rbd PCs may write up to {} (their cow_size, or autoextend.max)",
        human(avail),
        human(writable)
    );
    if avail >= writable {
        Check::ok(Area::Ceph, says)
    } else {
        Check::warn(
            Area::Ceph,
            says,
            "add OSDs, or lower cow_size: a full pool stops every PC's writes",
        )
    }
}

/// `ceph df`'s max_avail of `pool`.
fn max_avail(answer: &str, pool: &str) -> Option<u64> {
    let df: serde_json::Value = serde_json::from_str(answer).ok()?;
    df["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(pool))?["stats"]["max_avail"]
        .as_u64()
}

/// The keyring the client's key is read from, readable by its owner only (as Ceph makes
/// it); None when it names no file here (a key given another way).
fn keyring(pool: &Pool, settings: &Settings) -> Option<Check> {
    let named = pool.keyrings(settings).ok()?;
    let (path, mode) = named.iter().find_map(|p| {
        let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o7777;
        Some((p, mode))
    })?;
    let at = format!(
        "the keyring {} of client.{}",
        path.display(),
        settings.client
    );
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
    fn a_floating_portal_is_at_its_gateway_held_for_it_or_nowhere() {
        let at = |holders: &[&str]| {
            let h: Vec<String> = holders.iter().map(|s| s.to_string()).collect();
            let c = portal_check("gw-a", "10.0.0.101:3260", &h);
            (c.status, c.says)
        };
        assert_eq!(at(&["gw-a"]).0, Status::Ok);
        let (s, says) = at(&["gw-b"]);
        assert!(
            s == Status::Warn && says.contains("held by gw-b: gw-a is gone"),
            "{says}"
        );
        let (s, says) = at(&[]);
        assert!(
            s == Status::Fail && says.contains("nobody holds gw-a's portal"),
            "{says}"
        );
    }

    #[test]
    fn health_says_each_check_that_is_not_muted() {
        let ok = read_health(r#"{"status":"HEALTH_OK","checks":{},"mutes":[]}"#).unwrap();
        assert_eq!(ok, ("HEALTH_OK".to_string(), Vec::new()));
        let warn = r#"{"status":"HEALTH_WARN","checks":{
            "POOL_NO_REDUNDANCY":{"severity":"HEALTH_WARN","summary":{"message":"1 pool(s) have no replicas configured","count":1},"muted":false},
            "MON_DISK_LOW":{"severity":"HEALTH_WARN","summary":{"message":"mon a is low on available space","count":1},"muted":true}}}"#;
        let c = health(
            "client.admin reaches pool rbd",
            Ok(warn.to_string()),
            "ceph",
        );
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.says,
            "client.admin reaches pool rbd; the cluster says HEALTH_WARN (POOL_NO_REDUNDANCY: 1 pool(s) have no replicas configured)"
        );
        let err = health(
            "x",
            Ok(r#"{"status":"HEALTH_ERR","checks":{}}"#.into()),
            "ceph",
        );
        assert_eq!(err.status, Status::Fail);
        let odd = health("x", Ok("not json".into()), "ceph");
        assert_eq!(
            odd.status,
            Status::Warn,
            "an answer not read is no error of the cluster's"
        );
    }

    #[test]
    fn space_is_the_pools_max_avail_against_what_the_pcs_may_write() {
        let df = r#"{"stats":{},"pools":[{"name":"other","id":1,"stats":{"max_avail":1}},{"name":"rbd","id":2,"stats":{"stored":0,"max_avail":3758096384}}]}"#;
        assert_eq!(max_avail(df, "rbd"), Some(3_758_096_384));
        assert_eq!(max_avail(df, "nope"), None);
        let c = space("rbd", Ok(df.into()), 8 << 30, "ceph");
        assert_eq!(c.status, Status::Warn);
        assert!(c.says.starts_with("pool rbd has 3.5 GiB free"), "{c}");
        assert_eq!(
            space("rbd", Ok(df.into()), 1 << 30, "ceph").status,
            Status::Ok
        );
        assert_eq!(
            space("rbd", Ok("{}".into()), 1, "ceph").status,
            Status::Warn
        );
    }

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
