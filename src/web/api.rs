//! The JSON API: `GET /api/v1/pcs` and `/api/v1/pcs/{name}` (the rows of
//! `cowctl status --json`), and `POST /api/v1/pcs/{name}/reset`, which an admin may do with
//! the bearer token (on the admin address) and a PC only to itself, where its manifest says
//! `self_reset: true`.

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::who::{pc_at, token, Peer, Token};
use super::{blocking, App, Refusal};

/// API refusals are JSON: `{"error": "…"}`.
pub struct ApiError(Refusal);

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError(r)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.0.message });
        (self.0.status, Json(body)).into_response()
    }
}

fn no_pc(name: &str) -> ApiError {
    ApiError(Refusal::new(
        StatusCode::NOT_FOUND,
        format!("no PC named {name:?} in the manifest"),
    ))
}

pub async fn list(State(app): State<App>) -> Result<Response, ApiError> {
    let room = app.room.clone();
    let rows = blocking(move || room.status()).await?;
    Ok(Json(rows).into_response())
}

pub async fn one(State(app): State<App>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let room = app.room.clone();
    let n = name.clone();
    let row = blocking(move || room.status_of(&n)).await?;
    row.map(|r| Json(r).into_response())
        .ok_or_else(|| no_pc(&name))
}

pub async fn reset(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let forbidden = |m: String| ApiError(Refusal::new(StatusCode::FORBIDDEN, m));
    let admin = token(&headers, app.cfg.token_file.as_deref())? == Token::Admin;
    let room = app.room.clone();
    let m = blocking(move || room.manifest()).await?;
    if admin && !app.admin {
        return Err(forbidden(
            "admin requests go to the admin address (http.admin_listen)".into(),
        ));
    }
    if !admin {
        match pc_at(&m, peer.ip()) {
            None if app.admin => {
                return Err(ApiError(Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "a reset needs the admin bearer token (Authorization: Bearer <token>)",
                )))
            }
            None => return Err(forbidden("unknown client".into())),
            Some(pc) if pc.name != name => {
                return Err(forbidden(format!("{} may reset only itself", pc.name)))
            }
            Some(pc) if !pc.self_reset => {
                return Err(forbidden(format!(
                    "{} may not reset itself: its manifest entry does not say self_reset: true",
                    pc.name
                )))
            }
            Some(_) => {}
        }
    }
    match m.pc(&name) {
        None => return Err(no_pc(&name)),
        Some(pc) if pc.keep => {
            return Err(ApiError(Refusal::new(
                StatusCode::CONFLICT,
                format!("{name} keeps its changes (keep: true in the manifest): only `cowctl reset {name}` resets it"),
            )))
        }
        Some(_) => {}
    }
    let room = app.room.clone();
    let n = name.clone();
    let done = blocking(move || room.reset(&n)).await?;
    match done {
        Ok(r) => {
            app.monitor.feed.reset(
                &name,
                if admin { "admin" } else { "pc" },
                format!(
                    "{name}: reset over HTTP by {} ({:.1} ms paused)",
                    if admin { "an admin" } else { "itself" },
                    r.seconds * 1000.0
                ),
            );
            Ok(Json(r).into_response())
        }
        Err(e) => Err(ApiError(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name}: reset failed: {}", crate::base::logtext::chain(&e)),
        ))),
    }
}

/// `POST /api/v1/pcs/{name}/wake`: sends the PC its Wake-on-LAN packet (as `cowctl wake`);
/// admins only, with the bearer token, on the admin address.
pub async fn wake(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if token(&headers, app.cfg.token_file.as_deref())? != Token::Admin {
        return Err(ApiError(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "waking a PC needs the admin bearer token (Authorization: Bearer <token>)",
        )));
    }
    let room = app.room.clone();
    let m = blocking(move || room.manifest()).await?;
    let Some(pc) = m.pc(&name).cloned() else {
        return Err(no_pc(&name));
    };
    let woken = blocking(move || crate::pxe::wake::wake(&m, &[&pc])).await?;
    match woken {
        Ok(w) => {
            let text = format!("{name}: woken over HTTP by an admin ({})", w.join(", "));
            app.monitor.feed.reset_like("wake", &name, "admin", text);
            Ok(Json(serde_json::json!({ "woken": w })).into_response())
        }
        Err(e) => Err(ApiError(Refusal::new(
            StatusCode::CONFLICT,
            crate::base::logtext::chain(&e),
        ))),
    }
}
