//! `GET /boot.ipxe`: the iPXE script that boots a PC from its export. It goes only to the
//! PC's own address (its `ip`; `?mac=` must name that same PC): it carries the PC's CHAP
//! secret. With `reset_on_boot` the first answer is a one-time nonce to chain to, and only
//! the request carrying it resets the PC: a web page that makes the PC's browser fetch
//! `/boot.ipxe` cannot read the nonce, so it cannot reset a running PC.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::who::{pc_at, Peer};
use super::{blocking, text, App, Refusal};
use crate::manifest::{Export, HttpConfig, Mac, Manifest, Pc};

/// How long a boot nonce may wait for its PC's second request.
const NONCE_LIFETIME: Duration = Duration::from_secs(120);

/// One outstanding reset-on-boot nonce per PC: (nonce, the address it went to, when).
#[derive(Default)]
pub struct Nonces(Mutex<HashMap<String, (String, IpAddr, Instant)>>);

impl Nonces {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, IpAddr, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh nonce for `pc` at `ip`; the PC's previous one is forgotten.
    fn mint(&self, pc: &str, ip: IpAddr) -> Result<String, getrandom::Error> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)?;
        let nonce: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.lock()
            .insert(pc.to_string(), (nonce.clone(), ip, Instant::now()));
        Ok(nonce)
    }

    /// True once for the nonce `pc` was given at `ip`, within its lifetime.
    fn redeem(&self, pc: &str, ip: IpAddr, nonce: &str) -> bool {
        let mut all = self.lock();
        let good = all.get(pc).is_some_and(|(n, at, when)| {
            *at == ip
                && when.elapsed() < NONCE_LIFETIME
                && super::who::same(n.as_bytes(), nonce.as_bytes())
        });
        if good {
            all.remove(pc);
        }
        good
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    #[error("{pc} is exported over NBD, which iPXE cannot sanboot; give it export: iscsi")]
    Nbd { pc: String },
    #[error("{pc} is exported over iSCSI but the manifest has no iscsi portal")]
    NoPortal { pc: String },
    #[error("{pc}'s iSCSI portal listens on every address: set http.server to the address PCs reach it at")]
    NoServer { pc: String },
    #[error("{0}")]
    Secret(String),
}

/// The boot script for `pc`. `local` is the address the PC reached the HTTP service at,
/// used for the iSCSI server when neither `http.server` nor the portal names one.
pub fn script(
    m: &Manifest,
    http: &HttpConfig,
    pc: &Pc,
    local: Option<IpAddr>,
) -> Result<String, BootError> {
    let mut out = format!("#!ipxe\n# cowctl: {} on image {}\n", pc.name, pc.image);
    // Who the PC is (also at /identity): iPXE sends the host name in its later DHCP
    // requests and puts it in the iBFT; the rest are variables, prefixed not to clash.
    out.push_str(&format!("set hostname {}\n", pc.hostname));
    for (k, v) in &pc.identity {
        out.push_str(&format!("set cowctl_{k} {v}\n"));
    }
    match &pc.export {
        Export::Nbd => {
            return Err(BootError::Nbd {
                pc: pc.name.clone(),
            })
        }
        Export::Aoe { shelf, slot, .. } => {
            out.push_str(&format!("sanboot aoe:e{shelf}.{slot}\n"));
        }
        Export::Iscsi { target, initiator } => {
            let cfg = m.iscsi.as_ref();
            let portal = cfg
                .and_then(|c| c.portals.first())
                .ok_or_else(|| BootError::NoPortal {
                    pc: pc.name.clone(),
                })?
                .0;
            let server = http
                .server
                .or_else(|| (!portal.ip().is_unspecified()).then(|| portal.ip()))
                .or(local.map(|ip| ip.to_canonical()))
                .ok_or_else(|| BootError::NoServer {
                    pc: pc.name.clone(),
                })?;
            if let Some(i) = initiator {
                out.push_str(&format!("set initiator-iqn {i}\n"));
            }
            if let Some(chap) = cfg.and_then(|c| c.chap.as_ref()) {
                // This PC's own credentials: they open its disk only.
                let mine = crate::manifest::secrets::ChapMaster::read(chap)
                    .map_err(|e| BootError::Secret(e.to_string()))?
                    .for_pc(&pc.name);
                out.push_str(&format!("set username {}\n", mine.initiator.username));
                out.push_str(&format!("set password {}\n", mine.initiator.secret));
                if let Some(t) = mine.target {
                    out.push_str(&format!("set reverse-username {}\n", t.username));
                    out.push_str(&format!("set reverse-password {}\n", t.secret));
                }
            }
            let at = std::net::SocketAddr::new(server, portal.port());
            let mut uris = vec![iscsi_uri(at, target.as_str())];
            // With gateways, each one's portal in the order they serve the PC: iPXE tries
            // the next path when one does not answer or does not serve the PC.
            if !m.gateways.is_empty() && m.storage_of(pc) == crate::manifest::Storage::Rbd {
                uris = m
                    .gateway_order(&pc.name)
                    .iter()
                    .map(|g| iscsi_uri(g.portal.0, target.as_str()))
                    .collect();
            }
            out.push_str(&format!("sanboot {}\n", uris.join(" ")));
        }
    }
    Ok(out)
}

/// `iscsi:SERVER::PORT::TARGET`, the port left out when it is 3260.
fn iscsi_uri(portal: std::net::SocketAddr, target: &str) -> String {
    let server = match portal.ip() {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let port = if portal.port() == 3260 {
        String::new()
    } else {
        portal.port().to_string()
    };
    format!("iscsi:{server}::{port}::{target}")
}

pub async fn boot(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mac = query
        .get("mac")
        .map(|m| {
            m.parse::<Mac>()
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("mac: {e}")))
        })
        .transpose()?;
    let room = app.room.clone();
    let m = blocking(move || room.manifest()).await?;
    let ip = peer.ip();
    let unknown = || Refusal::new(StatusCode::FORBIDDEN, "unknown client");
    // The script carries the PC's secret: it goes to the PC's own address only.
    let pc = pc_at(&m, ip).ok_or_else(unknown)?;
    if let Some(mac) = mac {
        if pc.mac != Some(mac) {
            return Err(unknown());
        }
    }
    if !app.room.sanboot(pc) {
        let e = BootError::Nbd {
            pc: pc.name.clone(),
        };
        return Err(Refusal::new(StatusCode::CONFLICT, e.to_string()));
    }
    let body = script(&m, &app.cfg, pc, peer.local.map(|a| a.ip()))
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // A PC that keeps its changes (a maintenance PC) is not reset on boot.
    if !pc.reset_on_boot || pc.keep {
        return Ok(text(StatusCode::OK, body));
    }
    let Some(nonce) = query.get("reset") else {
        // The first request changes nothing: it hands out the nonce to come back with.
        return nonce_script(&app, pc, ip);
    };
    if !app.nonces.redeem(&pc.name, ip, nonce) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "this reset nonce is not {}'s current one (used already, expired after {} s, or never given)",
                pc.name,
                NONCE_LIFETIME.as_secs()
            ),
        ));
    }
    let (room, name) = (app.room.clone(), pc.name.clone());
    match blocking(move || room.reset(&name)).await? {
        Ok(r) => app.monitor.feed.reset(
            &pc.name,
            "boot",
            format!(
                "{}: reset on boot ({:.1} ms paused)",
                pc.name,
                r.seconds * 1000.0
            ),
        ),
        Err(e) => {
            let e = crate::base::logtext::chain(&e);
            tracing::error!(pc = %pc.name, "{}: reset on boot failed: {e}", pc.name);
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: the reset before boot failed: {e}", pc.name),
            ));
        }
    }
    Ok(text(StatusCode::OK, body))
}

/// The script that chains back with a fresh reset nonce for the PC at `ip`.
fn nonce_script(app: &App, pc: &Pc, ip: IpAddr) -> Result<Response, Refusal> {
    let nonce = app.nonces.mint(&pc.name, ip).map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no random numbers: {e}"),
        )
    })?;
    Ok(text(
        StatusCode::OK,
        format!(
            "#!ipxe\n# cowctl: {} is reset on boot\nchain /boot.ipxe?reset={nonce}\n",
            pc.name
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::Manifest;

    #[test]
    fn with_gateways_the_script_names_each_ones_portal_in_the_pcs_order() {
        let text = "images:\n  w:\n    storage: rbd\n    rbd: golden-w@v1\nceph:\n  pool: lab\ngateways:\n  - name: gw-a\n    iscsi: 10.0.0.1\n  - name: gw-b\n    iscsi: 10.0.0.2:3261\niscsi:\n  iqn_prefix: iqn.2024-01.lan.x\n  portals: [0.0.0.0]\n  acl: open\nhttp:\n  listen: 0.0.0.0:80\n  admin_listen: 127.0.0.1:81\nbackend: userspace\ndefaults:\n  image: w\n  cow_size: 2GiB\npcs:\n  - name: pc-{1..20}\n";
        let m = Manifest::parse(Path::new("room.yaml"), text)
            .unwrap()
            .as_gateway("gw-a")
            .unwrap();
        let uri = |gateway: &str, pc: &str| match gateway {
            "gw-a" => format!("iscsi:10.0.0.1::::iqn.2024-01.lan.x:{pc}"),
            _ => format!("iscsi:10.0.0.2::3261::iqn.2024-01.lan.x:{pc}"),
        };
        let mut firsts = std::collections::BTreeSet::new();
        for pc in &m.pcs {
            let script = super::script(&m, m.http.as_ref().unwrap(), pc, None).unwrap();
            let order = m.gateway_order(&pc.name);
            let line = format!(
                "sanboot {} {}\n",
                uri(&order[0].name, &pc.name),
                uri(&order[1].name, &pc.name)
            );
            assert!(script.contains(&line), "{script}");
            firsts.insert(order[0].name.clone());
        }
        assert_eq!(firsts.len(), 2, "both gateways come first for some PCs");
    }
}
