//! `/api/v1/notifications`: list, mark read, mark all read, delete.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::store::notifications::{self, Filter, LEVELS, Page};

/// Page size when `limit` is not given, and the largest accepted.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// Parses `?unread=&level=&since=&limit=&before=`. `level` may repeat or be a
/// comma-separated list; `since` is RFC 3339.
fn filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let mut f = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
    for (key, value) in pairs {
        match key.as_ref() {
            "unread" => {
                f.unread = Some(match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => return Err(ApiError::BadRequest(format!("unread: {other:?} is not true or false"))),
                })
            }
            "level" => {
                for level in value.split(',').filter(|l| !l.is_empty()) {
                    if !LEVELS.contains(&level) {
                        return Err(ApiError::BadRequest(format!(
                            "level: {level:?} is not one of: {}",
                            LEVELS.join(", ")
                        )));
                    }
                    f.levels.push(level.to_owned());
                }
            }
            "since" => {
                let t = chrono::DateTime::parse_from_rfc3339(&value)
                    .map_err(|_| ApiError::BadRequest(format!("since: {value:?} is not an RFC 3339 time")))?;
                f.since_ms = Some(t.timestamp_millis());
            }
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("limit: {value:?} is not a number")))?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(ApiError::BadRequest(format!("limit: must be 1..={MAX_LIMIT}")));
                }
                f.limit = n;
            }
            "before" => {
                f.before_id = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::BadRequest(format!("before: {value:?} is not an id")))?,
                );
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?} (use unread, level, since, limit, before)"
                )));
            }
        }
    }
    Ok(f)
}

fn id(raw: &str) -> Result<i64, ApiError> {
    super::body::record_id(raw, "notification")
}

/// `GET /api/v1/notifications`: newest first.
pub(crate) async fn list(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Page>, ApiError> {
    let f = filter(query.as_deref())?;
    Ok(Json(app.store.read(move |c| notifications::list(c, &f)).await?))
}

/// `POST /api/v1/notifications/{id}/read`.
pub(crate) async fn read(
    State(app): State<AppState>,
    super::guard::Acting(actor): super::guard::Acting,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = id(&raw)?;
    let (n, _) = app
        .store
        .write(move |tx| {
            let n = notifications::mark_read(tx, id)?;
            crate::store::audit::record(
                tx,
                &actor,
                "notification.read",
                &format!("notification/{id}"),
                json!({}),
            )?;
            Ok(n)
        })
        .await?;
    Ok(Json(json!(n)))
}

/// `POST /api/v1/notifications/read-all`.
pub(crate) async fn read_all(
    State(app): State<AppState>,
    super::guard::Acting(actor): super::guard::Acting,
) -> Result<Json<Value>, ApiError> {
    let (ids, _) = app
        .store
        .write(move |tx| {
            let ids = notifications::mark_all_read(tx)?;
            crate::store::audit::record(
                tx,
                &actor,
                "notification.read_all",
                "notifications",
                json!({"marked": ids.len()}),
            )?;
            Ok(ids)
        })
        .await?;
    Ok(Json(json!({"marked": ids.len(), "ids": ids})))
}

/// `DELETE /api/v1/notifications/{id}`.
pub(crate) async fn remove(
    State(app): State<AppState>,
    super::guard::Acting(actor): super::guard::Acting,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = id(&raw)?;
    let (n, _) = app
        .store
        .write(move |tx| {
            let n = notifications::delete(tx, id)?;
            crate::store::audit::record(
                tx,
                &actor,
                "notification.delete",
                &format!("notification/{id}"),
                json!({}),
            )?;
            Ok(n)
        })
        .await?;
    Ok(Json(json!({"deleted": n})))
}
