//! The HTTP service of `cowctl serve` (axum): what PCs ask (`/cow` for CowBell,
//! `/boot.ipxe`, their own reset) on `http.listen`, and everything for admins (dashboard,
//! API, metrics, resets with the bearer token) on `http.admin_listen`, loopback unless the
//! manifest says otherwise. Requests are logged without their headers: the token never is.

mod api;
mod boot;
mod cowbell;
mod dashboard;
mod metrics;
mod who;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::manifest::HttpConfig;
use crate::service::fleet::Fleet;
pub use boot::{script as boot_script, BootError};
pub use who::Peer;

#[derive(Clone)]
struct App {
    fleet: Arc<dyn Fleet>,
    cfg: HttpConfig,
    /// This listener serves admins (the dashboard, API, metrics, token resets).
    admin: bool,
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
        .route("/api/v1/pcs/{name}/reset", post(api::reset));
    if app.admin {
        r = r
            .route("/", get(dashboard::page))
            .route("/api/v1/pcs", get(api::list))
            .route("/api/v1/pcs/{name}", get(api::one))
            .route("/metrics", get(metrics::metrics));
    }
    let admin = app.admin;
    r.fallback(move |req: Request| async move { not_found(admin, req.uri().path()) })
        .method_not_allowed_fallback(|req: Request| async move {
            Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} does not take {}", req.uri().path(), req.method()),
            )
        })
        .layer(middleware::from_fn(log))
        .with_state(app)
}

fn not_found(admin: bool, path: &str) -> Refusal {
    let message = if admin {
        format!("no such page {path}: try /, /cow, /boot.ipxe, /api/v1/pcs, /api/v1/pcs/NAME, POST /api/v1/pcs/NAME/reset or /metrics")
    } else {
        format!("no such page {path} here: PCs may ask /cow, /boot.ipxe and POST /api/v1/pcs/NAME/reset; the rest is on the admin address")
    };
    Refusal::new(StatusCode::NOT_FOUND, message)
}

/// One line per request: who, what, the answer. Never the headers (the token is there).
async fn log(ConnectInfo(peer): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let status = response.status();
    if status.is_success() {
        tracing::debug!("http {} {method} {path} -> {status}", peer.remote);
    } else {
        tracing::info!("http {} {method} {path} -> {status}", peer.remote);
    }
    response
}

/// Runs blocking backend work (status reads, resets) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))
}

/// Binds the listeners (one when both addresses are the same) and serves them on a
/// thread of their own; returns the bound addresses, PC-facing first.
pub fn spawn(cfg: HttpConfig, fleet: Arc<dyn Fleet>) -> Result<Vec<SocketAddr>> {
    let mut listeners = Vec::new();
    let addresses = if cfg.listen == cfg.admin_listen {
        vec![(cfg.listen, true)]
    } else {
        vec![(cfg.listen, false), (cfg.admin_listen, true)]
    };
    for (addr, admin) in addresses {
        let l = std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "cannot listen for HTTP on {addr} (http.{} in the manifest)",
                if admin { "admin_listen" } else { "listen" }
            )
        })?;
        l.set_nonblocking(true)?;
        listeners.push((l, admin));
    }
    let bound = listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP service's runtime")?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for (l, admin) in listeners {
                let app = App {
                    fleet: fleet.clone(),
                    cfg: cfg.clone(),
                    admin,
                };
                let service = router(app).into_make_service_with_connect_info::<Peer>();
                tasks.push(tokio::spawn(async move {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            if let Err(e) = axum::serve(l, service).await {
                                tracing::error!("the HTTP service stopped: {e}");
                            }
                        }
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
