//! Health, readiness and build information.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// `GET /api/v1/health`: 200 with `ok` or `degraded` and each component's state;
/// 503 only when the server cannot serve (shutting down).
pub(crate) async fn health(State(app): State<AppState>) -> impl IntoResponse {
    let hub = &app.hub;
    let closing = hub.is_closing();
    let clients = hub.client_count();
    let at_capacity = hub.admitted() >= hub.config().max_connections;
    let hub_status = if closing {
        "down"
    } else if at_capacity {
        "degraded"
    } else {
        "ok"
    };
    // The store is down only if its writer thread died: every write would fail.
    let store_ok = app.store.writer_alive();
    let store_status = if closing {
        "down"
    } else if store_ok {
        "ok"
    } else {
        "failed"
    };
    let degraded_sources = app.collectors.degraded();
    let overall = if closing {
        "down"
    } else if !store_ok {
        "failed"
    } else if hub_status == "ok" && !degraded_sources.is_empty() {
        "degraded"
    } else {
        hub_status
    };
    let status = if closing || !store_ok {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": overall,
        "components": {
            "hub": {
                "status": hub_status,
                "clients": clients,
                "max_connections": hub.config().max_connections,
                "seq": hub.head(),
            },
            "store": {
                "status": store_status,
                "durable_history": app.store.durable(),
            },
            "collectors": {
                "status": if degraded_sources.is_empty() { "ok" } else { "degraded" },
                "degraded": degraded_sources,
            },
        },
    });
    (status, Json(body))
}

/// `GET /api/v1/ready`: 200 once serving, 503 while shutting down.
pub(crate) async fn ready(State(app): State<AppState>) -> impl IntoResponse {
    if app.hub.is_closing() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "shutting_down"})),
        )
    } else if !app.store.writer_alive() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "store_failed"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"ready": true})))
    }
}

/// `GET /api/v1/info`: name, version, environment, start time and uptime.
pub(crate) async fn info(State(app): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "name": "sigmavault",
        "version": crate::VERSION,
        "protocol_version": sigmavault_proto::PROTOCOL_VERSION,
        "environment": app.config.environment,
        "started_at": app.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "epoch": app.hub.epoch(),
    }))
}

/// `GET /api/v1/hub`: hub statistics.
pub(crate) async fn hub_stats(State(app): State<AppState>) -> impl IntoResponse {
    Json(app.hub.stats())
}
