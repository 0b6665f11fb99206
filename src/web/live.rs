//! What the dashboard follows: `GET /api/history` (each PC's fill over the last day),
//! `GET /api/events` (the recent events as JSON) and `GET /api/events/stream` (the same, as
//! server-sent events, one JSON object each). Admin routes: the guard of `mod.rs` holds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};

use super::api::ApiError;
use super::{blocking, App, Refusal};
use crate::service::feed::{Entry, KEEP};

/// Event streams open at once; more are refused, so browsers cannot pile them up.
pub const STREAMS: usize = 32;
/// How often a stream looks for new events.
const POLL: Duration = Duration::from_millis(500);

/// `?pc=NAME`: that PC's only; `?since=T`: the samples after T (Unix seconds) only.
pub async fn history(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let pc = q.get("pc").cloned();
    if let Some(name) = &pc {
        let room = app.room.clone();
        if blocking(move || room.manifest()).await?.pc(name).is_none() {
            return Err(ApiError::from(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no PC named {name:?} in the manifest"),
            )));
        }
    }
    let since = match q.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            return Err(ApiError::from(Refusal::new(
                StatusCode::BAD_REQUEST,
                "since: not a time in Unix seconds",
            )))
        }
    };
    Ok(Json(app.monitor.history.json(pc.as_deref(), since)).into_response())
}

/// `?n=N`: the newest N (at most 500, the default).
pub async fn events(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let n = match q.get("n").map(|n| n.parse::<usize>()) {
        None => KEEP,
        Some(Ok(n)) => n.min(KEEP),
        Some(Err(_)) => {
            return Err(ApiError::from(Refusal::new(
                StatusCode::BAD_REQUEST,
                "n: not a number of events",
            )))
        }
    };
    Ok(Json(app.monitor.feed.last(n)).into_response())
}

/// One open stream's place; given back when the stream ends.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn take_place(open: &Arc<AtomicUsize>) -> Option<Place> {
    open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n < STREAMS).then_some(n + 1)
    })
    .ok()
    .map(|_| Place(open.clone()))
}

fn sse_event(e: &Entry) -> Event {
    Event::default()
        .id(e.id.to_string())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"))
}

/// The events from now on (after `Last-Event-ID` when a browser reconnects).
pub async fn stream(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(place) = take_place(&app.streams) else {
        return Err(ApiError::from(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{STREAMS} event streams are open already: close one"),
        )));
    };
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| app.monitor.feed.newest());
    let monitor = app.monitor.clone();
    let events = stream::unfold((after, place), move |(after, place)| {
        let monitor = monitor.clone();
        async move {
            loop {
                let new = monitor.feed.after(after);
                if let Some(last) = new.last() {
                    let next = last.id;
                    return Some((new, (next, place)));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    })
    .flat_map(|batch| stream::iter(batch.iter().map(sse_event).collect::<Vec<_>>()))
    .map(Ok::<_, Infallible>);
    Ok(sse(events))
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(s: S) -> Response {
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
