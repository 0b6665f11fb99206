//! `GET /`: the admin dashboard. The page carries the status rows as JSON and renders them
//! itself, then refreshes them from `/api/v1/pcs`: one renderer, no stale server copy.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::{blocking, App, Refusal};

const PAGE: &str = include_str!("dashboard.html");

pub async fn page(State(app): State<App>) -> Result<Response, Refusal> {
    let fleet = app.fleet.clone();
    let remote = app.cfg.admin_is_remote();
    let (rows, warn) = blocking(move || (fleet.status(), fleet.manifest().warn_percent)).await?;
    // Reachable from other machines, the page carries no rows: it loads them with the
    // token the admin types in.
    let data = if remote {
        "null".to_string()
    } else {
        serde_json::to_string(&rows)
            .unwrap_or_else(|_| "[]".into())
            // JSON inside <script>: `</` would end the element.
            .replace("</", "<\\/")
    };
    Ok(Html(
        PAGE.replace("{{DATA}}", &data)
            .replace("{{WARN}}", &warn.to_string()),
    )
    .into_response())
}
