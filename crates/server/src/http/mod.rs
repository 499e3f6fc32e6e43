//! The HTTP surface: `/api/v1/*` and the WebSocket endpoints.
//!
//! Layer order is written once, here (outermost last): request id → access log
//! → request timeout → handler. Every error body, including 404 and 405, is the
//! JSON error body of [`error::ApiError`].

mod accounts;
mod body;
pub mod error;
mod events;
mod guard;
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
    /// Accounts, tokens and limits.
    pub auth: crate::auth::Auth,
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
        .merge(accounts::routes())
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
        .layer(middleware::from_fn_with_state(app.clone(), guard::authenticate))
        .layer(middleware::from_fn_with_state(app.clone(), request_timeout))
        .layer(middleware::from_fn_with_state(app.clone(), guard::client_and_rate))
        .layer(middleware::from_fn_with_state(app.clone(), guard::security_headers))
        .layer(middleware::from_fn_with_state(app.clone(), access_log))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(app)
}

/// `/ws`: checks Origin and credentials before anything is upgraded, so a bad
/// token or a foreign page gets an HTTP error (401/403) and never a 101.
async fn ws_events(
    State(app): State<AppState>,
    axum::Extension(guard::ClientIp(ip)): axum::Extension<guard::ClientIp>,
    req: Request,
) -> Result<Response, ApiError> {
    guard::origin_allowed(&app, &req)?;
    let query = req.uri().query().unwrap_or("");
    if query
        .split('&')
        .any(|p| matches!(p.split('=').next(), Some("token" | "access_token" | "api_key" | "key")))
    {
        return Err(ApiError::BadRequest(
            "tokens are not accepted in the query string; send Authorization: Bearer, the \
             bearer.<token> subprotocol, or an auth message"
                .into(),
        ));
    }
    let token = match guard::credentials(req.headers()) {
        Some(t) => Some(t),
        None => ws::subprotocol_token(req.headers())?,
    };
    let principal = token.map(|t| app.auth.authenticate(&t)).transpose()?;
    let caps = app.auth.sockets();
    let mut slots = vec![caps.take_ip(ip).ok_or_else(|| {
        ApiError::TooManySockets(format!(
            "too many WebSocket connections from {ip} (at most {})",
            caps.max_per_ip()
        ))
    })?];
    if let Some(p) = &principal {
        slots.push(caps.take_user(p.user_id).ok_or_else(|| {
            ApiError::TooManySockets(format!(
                "too many WebSocket connections for user {} (at most {})",
                p.username,
                caps.max_per_user()
            ))
        })?);
    }
    let gate = crate::hub::Gate {
        auth: Some(app.auth.clone()),
        initial: principal.as_ref().map(crate::auth::SocketAuth::from_principal),
        slots,
    };
    Ok(ws::upgrade(&app.hub, false, req, gate)?)
}

/// `/ws/echo` (test-only, `--ws-echo true`): a conformance endpoint that carries
/// no data, so the Autobahn client (which cannot send credentials) can use it.
async fn ws_echo(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let gate = crate::hub::Gate {
        auth: None,
        initial: None,
        slots: Vec::new(),
    };
    Ok(ws::upgrade(&app.hub, true, req, gate)?)
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

/// One structured line per request, with the client address as the limits and
/// the audit log see it (through `--trusted-proxy`).
async fn access_log(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| crate::auth::limits::client_ip(c.0.ip(), req.headers(), &app.config.security.trusted_proxies));
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
