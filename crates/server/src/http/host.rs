//! REST mirrors of the host data, served from the latest sample (a request never
//! touches /proc or /sys), and the breakers.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::collect::scheduler::Latest;

fn latest(app: &AppState, source: &str) -> Result<Latest, ApiError> {
    app.collectors
        .read(source)
        .ok_or_else(|| ApiError::NotReady(format!("no {source} sample has been taken yet")))
}

/// The freshness fields every mirror carries.
fn freshness(l: &Latest) -> Value {
    json!({
        "stale": l.stale,
        "last_update": l.value.get("last_update").cloned().unwrap_or(Value::Null),
        "error": l.value.get("error").cloned().unwrap_or(Value::Null),
    })
}

/// `GET /api/v1/system/status`: the latest `system.status` value.
pub(crate) async fn system_status(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(latest(&app, "system")?.value))
}

/// `GET /api/v1/system/network`: the latest `system.network` value.
pub(crate) async fn system_network(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(latest(&app, "network")?.value))
}

/// `GET /api/v1/storage/disks`.
pub(crate) async fn disks(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let l = latest(&app, "storage")?;
    let mut body = freshness(&l);
    body["disks"] = l.value.get("disks").cloned().unwrap_or_else(|| json!([]));
    Ok(Json(body))
}

/// `GET /api/v1/storage/disks/{name}`.
pub(crate) async fn disk(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let l = latest(&app, "storage")?;
    let found = l
        .value
        .get("disks")
        .and_then(Value::as_array)
        .and_then(|disks| {
            disks
                .iter()
                .find(|d| d.get("name").and_then(Value::as_str) == Some(name.as_str()))
        })
        .cloned()
        .ok_or_else(|| ApiError::NoSuch(format!("disk {:?}", name.chars().take(64).collect::<String>())))?;
    let mut body = freshness(&l);
    body["disk"] = found;
    // Its SMART health, from the disk's own source (absent until first read).
    body["smart"] = app
        .collectors
        .read(&format!("smart:{name}"))
        .map(|l| l.value)
        .unwrap_or(Value::Null);
    Ok(Json(body))
}

/// `GET /api/v1/storage/filesystems`.
pub(crate) async fn filesystems(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let l = latest(&app, "storage")?;
    let mut body = freshness(&l);
    body["filesystems"] = l.value.get("filesystems").cloned().unwrap_or_else(|| json!([]));
    Ok(Json(body))
}

/// `GET /api/v1/alerts`: active alerts, most severe first.
pub(crate) async fn alerts(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"alerts": app.alerts.list()}))
}

/// `GET /api/v1/breakers`: every source's breaker.
pub(crate) async fn breakers(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"breakers": app.collectors.breakers()}))
}
