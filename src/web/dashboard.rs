//! `GET /`: the admin dashboard, the room as tiles (`dashboard/page.html`, its CSS and JS:
//! plain HTML, inline, nothing fetched from elsewhere). The page carries the status rows and
//! fill histories as JSON and renders them itself, then refreshes them from `/api/v1/pcs`
//! and `/api/history` and follows `/api/events/stream`: one renderer, no stale server copy.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::{blocking, App, Refusal};

const PAGE: &str = include_str!("dashboard/page.html");
const CSS: &str = include_str!("dashboard/page.css");
const JS: &str = include_str!("dashboard/page.js");

pub async fn page(State(app): State<App>) -> Result<Response, Refusal> {
    let room = app.room.clone();
    let remote = app.cfg.admin_is_remote();
    let (rows, warn) = blocking(move || (room.status(), room.manifest().warn_percent)).await?;
    // Reachable from other machines, the page carries no rows: it loads them with the
    // token the admin types in.
    let data = if remote {
        "null".to_string()
    } else {
        let data =
            serde_json::json!({ "rows": rows, "history": app.monitor.history.json(None, 0) });
        // JSON inside <script>: `</` would end the element.
        data.to_string().replace("</", "<\\/")
    };
    // The JS and CSS go in first: the data may contain anything, the page's own text not.
    let page = PAGE
        .replace("{{CSS}}", CSS)
        .replace("{{JS}}", JS)
        .replace("{{WARN}}", &warn.to_string())
        .replace("{{DATA}}", &data);
    Ok(Html(page).into_response())
}
