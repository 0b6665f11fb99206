//! `GET /identity`: who the asking PC is, for its startup script (all PCs share one image,
//! with one name baked in): its name, host name, image and the manifest's `identity`
//! key/values. Answered to the PC's own address only; `?format=json` (or an `Accept:
//! application/json`) gives JSON, otherwise `key=value` lines a shell or batch file reads.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::who::{pc_at, Peer};
use super::{blocking, text, App, Refusal};
use crate::manifest::Pc;

/// Everything a PC is told about itself, in a stable order.
pub fn of(pc: &Pc) -> BTreeMap<String, String> {
    let mut out = pc.identity.clone();
    out.insert("name".into(), pc.name.clone());
    out.insert("hostname".into(), pc.hostname.clone());
    out.insert("image".into(), pc.image.clone());
    if let Some(mac) = pc.mac {
        out.insert("mac".into(), mac.to_string());
    }
    out
}

pub async fn identity(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let room = app.room.clone();
    let m = blocking(move || room.manifest()).await?;
    let pc = pc_at(&m, peer.ip())
        .ok_or_else(|| Refusal::new(StatusCode::FORBIDDEN, "unknown client"))?;
    let values = of(pc);
    let json = query.get("format").is_some_and(|f| f == "json")
        || headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
    if json {
        return Ok(axum::Json(values).into_response());
    }
    let body: String = values.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    Ok(text(StatusCode::OK, body))
}
