//! The HTTP surface: `/api/v1/*` and the WebSocket endpoints.
//!
//! Layer order is written once, here (outermost last): request id → access log
//! → request timeout → handler. Every error body, including 404 and 405, is the
//! JSON error body of [`error::ApiError`].

mod body;
pub mod error;
mod events;
mod host;
mod notifications;
mod shares;
mod system;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::collect::scheduler::Collectors;
use crate::config::Config;
use crate::hub::{Hub, ws};
use crate::store::Store;
use error::ApiError;
pub use events::MAX_EVENT_DATA;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The event hub.
    pub hub: Hub,
    /// The database.
    pub store: Store,
    /// Host data: latest samples and breakers.
    pub collectors: Collectors,
    /// Active alerts.
    pub alerts: crate::alerts::Alerts,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Wall-clock start time, for `/info`.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Monotonic start time, for uptime.
    pub started: Instant,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router.
pub fn router(app: AppState) -> Router {
    let mut routes = Router::new()
        .route("/api/v1/health", get(system::health))
        .route("/api/v1/ready", get(system::ready))
        .route("/api/v1/info", get(system::info))
        .route("/api/v1/hub", get(system::hub_stats))
        .route("/api/v1/events", post(events::publish))
        .route("/api/v1/notifications", get(notifications::list))
        .route("/api/v1/notifications/read-all", post(notifications::read_all))
        .route("/api/v1/notifications/{id}", delete(notifications::remove))
        .route("/api/v1/notifications/{id}/read", post(notifications::read))
        .merge(shares::routes())
        .route("/api/v1/system/status", get(host::system_status))
        .route("/api/v1/system/network", get(host::system_network))
        .route("/api/v1/storage/disks", get(host::disks))
        .route("/api/v1/storage/disks/{name}", get(host::disk))
        .route("/api/v1/storage/filesystems", get(host::filesystems))
        .route("/api/v1/breakers", get(host::breakers))
        .route("/api/v1/alerts", get(host::alerts))
        .route("/ws", get(ws_events));
    if app.config.ws_echo {
        routes = routes.route("/ws/echo", get(ws_echo));
    }
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), request_timeout))
        .layer(middleware::from_fn(access_log))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(app)
}

async fn ws_events(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    Ok(ws::upgrade(&app.hub, false, req)?)
}

async fn ws_echo(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    Ok(ws::upgrade(&app.hub, true, req)?)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().chars().take(200).collect())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Bounds the time to produce a response (not a WebSocket's lifetime: the
/// upgrade answers 101 at once).
async fn request_timeout(State(app): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(app.config.http_request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// One structured line per request.
async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client_ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let response = next.run(req).await;
    let latency_us = start.elapsed().as_micros() as u64;
    tracing::info!(
        client_ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        %method,
        path,
        status = response.status().as_u16(),
        latency_us,
        user_agent,
        request_id,
        "request"
    );
    response
}
