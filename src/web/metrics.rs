//! `GET /metrics`: Prometheus text, built from the status rows at each scrape. The alert
//! rules in `contrib/prometheus/` and the Grafana dashboard in `contrib/grafana/` use these
//! names; `tests/host_monitoring.rs` keeps them in step.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::{blocking, App, Refusal};
use crate::room::status::{PcState, PcStatus};

type Labels = Vec<(String, String)>;

const STATES: [PcState; 8] = [
    PcState::Active,
    PcState::Overflow,
    PcState::Invalid,
    PcState::MergeFailed,
    PcState::NotApplied,
    PcState::Parked,
    PcState::Elsewhere,
    PcState::Unknown,
];

/// What the metrics say about the room besides the rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// The manifest's `warn_percent`.
    pub warn_percent: f64,
    /// Whether the room's dnsmasq runs; None without a `pxe` section.
    pub dnsmasq_up: Option<bool>,
}

pub async fn metrics(State(app): State<App>) -> Result<Response, Refusal> {
    let live = app.room.clone();
    let (rows, room) = blocking(move || {
        let room = Room {
            warn_percent: live.manifest().warn_percent,
            dnsmasq_up: live.dnsmasq_up(),
        };
        (live.status(), room)
    })
    .await?;
    let body = render(&rows, &room)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

fn gauge(i: u64) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

pub fn render(rows: &[PcStatus], room: &Room) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("cowctl");
    let used = Family::<Labels, Gauge>::default();
    let total = Family::<Labels, Gauge>::default();
    let max = Family::<Labels, Gauge>::default();
    let autoextend_max = Family::<Labels, Gauge>::default();
    let warn = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let state = Family::<Labels, Gauge>::default();
    let resets = Family::<Labels, Counter>::default();
    let initiators = Family::<Labels, Gauge>::default();
    for r in rows {
        let pc = vec![("pc".to_string(), r.name.clone())];
        if let (Some(u), Some(t)) = (r.used_sectors, r.total_sectors) {
            used.get_or_create(&pc).set(gauge(u * 512));
            total.get_or_create(&pc).set(gauge(t * 512));
            max.get_or_create(&pc)
                .set(gauge(r.capacity_sectors().unwrap_or(t) * 512));
        }
        if let Some(m) = r.max_sectors {
            autoextend_max.get_or_create(&pc).set(gauge(m * 512));
        }
        warn.get_or_create(&pc).set(room.warn_percent / 100.0);
        for s in STATES {
            let mut l = pc.clone();
            l.push(("state".into(), s.as_str().replace(' ', "_")));
            state.get_or_create(&l).set(i64::from(s == r.state));
        }
        resets.get_or_create(&pc).inc_by(r.resets);
        initiators
            .get_or_create(&pc)
            .set(gauge(r.initiators.len() as u64));
    }
    registry.register(
        "cow_used_bytes",
        "Bytes of the COW in use (header, metadata and data chunks), as dm-snapshot counts them",
        used,
    );
    registry.register("cow_total_bytes", "Size of the COW now", total);
    registry.register(
        "cow_max_bytes",
        "What the COW may grow to: its auto-extend maximum, else its size",
        max,
    );
    registry.register(
        "cow_autoextend_max_bytes",
        "The auto-extend maximum of the PC's COW (only PCs with auto-extend)",
        autoextend_max,
    );
    registry.register(
        "cow_warn_ratio",
        "Fill (used over max bytes) at which the PC is warned about: warn_percent / 100",
        warn,
    );
    registry.register("pc_state", "1 for the state the PC's disk is in", state);
    registry.register(
        "resets",
        "Resets of the PC's COW to the golden image",
        resets,
    );
    registry.register(
        "connected_initiators",
        "iSCSI initiators logged in, or NBD clients connected",
        initiators,
    );
    if let Some(up) = room.dnsmasq_up {
        let g = Gauge::<i64>::default();
        g.set(i64::from(up));
        registry.register(
            "pxe_dnsmasq_up",
            "1 while the room's dnsmasq (the manifest's pxe section) runs, else 0",
            g,
        );
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, used: u64, total: u64, max: Option<u64>) -> PcStatus {
        PcStatus {
            name: name.into(),
            image: "g".into(),
            image_version: None,
            next_version: None,
            export: format!("nbd://127.0.0.1:10809/{name}"),
            state: PcState::Active,
            used_sectors: Some(used),
            total_sectors: Some(total),
            metadata_sectors: Some(8),
            used_percent: Some(used as f64 * 100.0 / total as f64),
            warn: false,
            initiators: Vec::new(),
            cow: format!("/cow/{name}.cow").into(),
            initial_sectors: total,
            max_sectors: max,
            resets: 0,
            last_reset: None,
            notes: Vec::new(),
            gateway: None,
        }
    }

    /// The sample lines of one metric, sorted (a family's order is its hash map's).
    fn lines(text: &str, name: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .map(String::from)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn warn_ratio_and_autoextend_maximum_per_pc() {
        let rows = [
            row("pc-1", 100, 8192, Some(32768)),
            row("pc-2", 100, 8192, None),
        ];
        let room = Room {
            warn_percent: 80.0,
            dnsmasq_up: None,
        };
        let text = render(&rows, &room).unwrap();
        assert_eq!(
            lines(&text, "cowctl_cow_warn_ratio"),
            [
                "cowctl_cow_warn_ratio{pc=\"pc-1\"} 0.8",
                "cowctl_cow_warn_ratio{pc=\"pc-2\"} 0.8"
            ]
        );
        assert_eq!(
            lines(&text, "cowctl_cow_autoextend_max_bytes"),
            ["cowctl_cow_autoextend_max_bytes{pc=\"pc-1\"} 16777216"],
            "only the PC with auto-extend has a maximum"
        );
        assert_eq!(
            lines(&text, "cowctl_cow_max_bytes"),
            [
                "cowctl_cow_max_bytes{pc=\"pc-1\"} 16777216",
                "cowctl_cow_max_bytes{pc=\"pc-2\"} 4194304"
            ]
        );
        assert!(
            !text.contains("cowctl_pxe_dnsmasq_up"),
            "no pxe section, no dnsmasq metric:\n{text}"
        );
    }

    #[test]
    fn dnsmasq_up_only_with_a_pxe_section() {
        for (up, want) in [
            (true, "cowctl_pxe_dnsmasq_up 1"),
            (false, "cowctl_pxe_dnsmasq_up 0"),
        ] {
            let room = Room {
                warn_percent: 75.0,
                dnsmasq_up: Some(up),
            };
            let text = render(&[], &room).unwrap();
            assert_eq!(lines(&text, "cowctl_pxe_dnsmasq_up"), [want], "{text}");
            assert!(
                text.contains("# TYPE cowctl_pxe_dnsmasq_up gauge"),
                "{text}"
            );
        }
    }
}
