//! `GET /cow`, for the CowBell tray client: the PC is known by its source address and the
//! body is exactly `OK <used_sectors> <total_sectors>` or `ERR <reason>`. For a PC with
//! auto-extend the total is the most its COW may grow to, so CowBell's warning at 75 %
//! means what cowctl's does.

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::who::{pc_at, Peer};
use super::{blocking, text, App};
use crate::room::status::PcStatus;

pub async fn cow(State(app): State<App>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let ip = peer.ip();
    let room = app.room.clone();
    let row = blocking(move || {
        let m = room.manifest();
        let name = pc_at(&m, ip)?.name.clone();
        Some(room.status_of(&name))
    })
    .await;
    let (status, body) = match row {
        Err(r) => (r.status, format!("ERR {}", r.message)),
        // Unknown addresses learn nothing about the PCs that exist.
        Ok(None) => (StatusCode::FORBIDDEN, "ERR unknown client".to_string()),
        Ok(Some(row)) => answer(row.as_ref()),
    };
    text(status, body)
}

fn answer(row: Option<&PcStatus>) -> (StatusCode, String) {
    let Some(row) = row else {
        return (StatusCode::SERVICE_UNAVAILABLE, "ERR not served".into());
    };
    match (row.used_sectors, row.capacity_sectors()) {
        (Some(used), Some(total)) if row.state.is_served() => {
            (StatusCode::OK, format!("OK {used} {total}"))
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ERR {}", row.state.as_str()),
        ),
    }
}
