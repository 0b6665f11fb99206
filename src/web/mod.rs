//! The HTTP service of `cowctl serve` (axum): what PCs ask (`/cow` for CowBell,
//! `/boot.ipxe`, their own reset) on `http.listen`, and everything for admins (dashboard,
//! API, metrics, resets with the bearer token) on `http.admin_listen`, loopback unless the
//! manifest says otherwise. Requests are logged without their headers: the token never is.

mod api;
mod boot;
mod cowbell;
mod dashboard;
mod identity;
mod live;
mod metrics;
mod who;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::base::logtext::Escaped;
use crate::manifest::HttpConfig;
use crate::service::feed::Monitor;
use crate::service::live_room::LiveRoom;
pub use boot::{script as boot_script, BootError};
pub use who::Peer;

#[derive(Clone)]
struct App {
    room: Arc<dyn LiveRoom>,
    cfg: HttpConfig,
    /// This listener serves admins (the dashboard, API, metrics, token resets).
    admin: bool,
    /// One-time boot nonces for reset on boot, shared by the listeners.
    nonces: Arc<boot::Nonces>,
    /// Fill histories and recent events, fed by the watcher and the resets.
    monitor: Arc<Monitor>,
    /// Event streams open now (capped: `live::STREAMS`).
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// A refused request: its status and one clear sentence.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        text(self.status, self.message + "\n")
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The routes one listener serves.
fn router(app: App) -> Router {
    let mut r = Router::new()
        .route("/cow", get(cowbell::cow))
        .route("/boot.ipxe", get(boot::boot))
        .route("/identity", get(identity::identity))
        .route("/api/v1/pcs/{name}/reset", post(api::reset));
    if app.admin {
        r = r
            .route("/", get(dashboard::page))
            .route("/api/v1/pcs", get(api::list))
            .route("/api/v1/pcs/{name}", get(api::one))
            .route("/metrics", get(metrics::metrics))
            .route("/api/v1/pcs/{name}/wake", post(api::wake))
            .route("/api/history", get(live::history))
            .route("/api/events", get(live::events))
            .route("/api/events/stream", get(live::stream));
    }
    let admin = app.admin;
    r.fallback(move |req: Request| async move { not_found(admin, req.uri().path()) })
        .method_not_allowed_fallback(|req: Request| async move {
            Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} does not take {}", req.uri().path(), req.method()),
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn(log))
        // No route reads a body: nothing larger is taken.
        .layer(axum::extract::DefaultBodyLimit::max(4096))
        .with_state(app)
}

/// Refuses what a browser could be made to send: a request for another site's name that
/// resolves here (DNS rebinding), a cross-site request that would change something, and,
/// where the admin routes can be reached from other machines, anything without the token.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(h) = host {
        if !who::host_allowed(h, &app.cfg.hosts) {
            return Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!("{h} is not a name of this service (add it to http.hosts if it is)"),
            )
            .into_response();
        }
    }
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if changes && who::cross_site(headers, host) {
        return Refusal::new(
            StatusCode::FORBIDDEN,
            "a request from another web site may not change anything here",
        )
        .into_response();
    }
    // Nor read the admin API (nor hold event streams open from an admin's browser).
    if app.admin && req.uri().path().starts_with("/api/") && who::cross_site(headers, host) {
        return Refusal::new(
            StatusCode::FORBIDDEN,
            "a page of another web site may not read the admin API",
        )
        .into_response();
    }
    // The page itself may load without the token; what it shows needs it.
    if app.admin && app.cfg.admin_is_remote() && req.uri().path() != "/" {
        match who::token(headers, app.cfg.token_file.as_deref()) {
            Ok(who::Token::Admin) => {}
            Ok(who::Token::Absent) => {
                return Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "this admin address can be reached from other machines: send the admin bearer token",
                )
                .into_response()
            }
            Err(r) => return r.into_response(),
        }
    }
    next.run(req).await
}

fn not_found(admin: bool, path: &str) -> Refusal {
    let message = if admin {
        format!("no such page {path}: try /, /cow, /boot.ipxe, /identity, /api/v1/pcs, /api/v1/pcs/NAME, POST /api/v1/pcs/NAME/reset, POST /api/v1/pcs/NAME/wake, /api/history, /api/events, /api/events/stream or /metrics")
    } else {
        format!("no such page {path} here: PCs may ask /cow, /boot.ipxe, /identity and POST /api/v1/pcs/NAME/reset; the rest is on the admin address")
    };
    Refusal::new(StatusCode::NOT_FOUND, message)
}

/// One line per request: who, what, the answer. Never the headers (the token is there).
async fn log(ConnectInfo(peer): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), Escaped(req.uri().path().to_string()));
    let response = next.run(req).await;
    let status = response.status();
    if status.is_success() {
        tracing::debug!("http {} {method} {path} -> {status}", peer.remote);
    } else {
        tracing::info!("http {} {method} {path} -> {status}", peer.remote);
    }
    response
}

/// A request's headers must arrive within this time of its first byte.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// No connection lasts longer (keep-alive included): a client that trickles its request or
/// its body, or just stays, is cut off.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves connections one task each, within the caps on connections per address and in
/// total, and the time limits above.
async fn accept(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Arc<crate::service::limits::ConnLimits>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("HTTP: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match limits.admit_member(remote.ip()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("HTTP: refused a connection from {remote}: {e}");
                continue;
            }
        };
        let peer = Peer {
            remote,
            local: stream.local_addr().ok(),
        };
        let service = router
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(service),
                );
            if tokio::time::timeout(CONNECTION_LIFETIME, conn)
                .await
                .is_err()
            {
                tracing::debug!(
                    "HTTP: closed {remote}'s connection after {} s",
                    CONNECTION_LIFETIME.as_secs()
                );
            }
        });
    }
}

/// Runs blocking backend work (status reads, resets) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))
}

/// Why the HTTP service did not start (defined under `service`, whose `run::StartHttp`
/// returns it).
pub use crate::service::error::HttpError;

/// Binds the listeners (one when both addresses are the same) and serves them on a
/// thread of their own; returns the bound addresses, PC-facing first.
pub fn spawn(
    cfg: HttpConfig,
    room: Arc<dyn LiveRoom>,
    monitor: Arc<Monitor>,
) -> Result<Vec<SocketAddr>, HttpError> {
    let mut listeners = Vec::new();
    let addresses = if cfg.listen == cfg.admin_listen {
        vec![(cfg.listen, true)]
    } else {
        vec![(cfg.listen, false), (cfg.admin_listen, true)]
    };
    for (addr, admin) in addresses {
        let field = if admin { "admin_listen" } else { "listen" };
        let l = crate::base::inherit::tcp(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| HttpError::Listen {
                addr,
                field,
                source,
            })?;
        listeners.push((l, admin));
    }
    let bound = listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(HttpError::Runtime)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Runtime)?;
    let nonces = Arc::new(boot::Nonces::default());
    let streams = Arc::default();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for (l, admin) in listeners {
                let app = App {
                    room: room.clone(),
                    cfg: cfg.clone(),
                    admin,
                    nonces: nonces.clone(),
                    monitor: monitor.clone(),
                    streams: Arc::clone(&streams),
                };
                // The PC-facing and the admin listener each have their own places, so
                // neither side can crowd out the other.
                let limits = crate::service::limits::ConnLimits::standard();
                tasks.push(tokio::spawn(async move {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => accept(l, router(app), limits).await,
                        Err(e) => tracing::error!("the HTTP service cannot listen: {e}"),
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    Ok(bound)
}
