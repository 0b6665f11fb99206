//! `GET /metrics`: Prometheus text, built from the status rows at each scrape.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{blocking, App, Refusal};
use crate::control::status::{PcState, PcStatus};

type Labels = Vec<(String, String)>;

const STATES: [PcState; 7] = [
    PcState::Active,
    PcState::Overflow,
    PcState::Invalid,
    PcState::MergeFailed,
    PcState::NotApplied,
    PcState::Parked,
    PcState::Unknown,
];

pub async fn metrics(State(app): State<App>) -> Result<Response, Refusal> {
    let fleet = app.fleet.clone();
    let rows = blocking(move || fleet.status()).await?;
    let body = render(&rows)
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

pub fn render(rows: &[PcStatus]) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("cowctl");
    let used = Family::<Labels, Gauge>::default();
    let total = Family::<Labels, Gauge>::default();
    let max = Family::<Labels, Gauge>::default();
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
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
