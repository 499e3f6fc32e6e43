//! `/api/v1/storage/shares`: share definitions (CRUD with validation).
//!
//! | request | success |
//! |---|---|
//! | `GET /api/v1/storage/shares` | 200 `{"shares": [record, …]}`, oldest first |
//! | `POST /api/v1/storage/shares` | 201 record, `Location: /api/v1/storage/shares/{id}` |
//! | `GET /api/v1/storage/shares/{id}` | 200 record |
//! | `PUT /api/v1/storage/shares/{id}` | 200 record (full replace: absent optional fields take their defaults) |
//! | `PATCH /api/v1/storage/shares/{id}` | 200 record (given fields merged over it, then all validated; null resets) |
//! | `DELETE /api/v1/storage/shares/{id}` | 200 `{"deleted": record}`, like notifications, so a client can offer undo |
//!
//! Failures: a body that is not a JSON object is 400 `bad_json`; a malformed id
//! 400 `bad_request`; an unknown id 404 `not_found`; invalid fields 422
//! `validation_failed` listing every one. A duplicate name is one of those
//! fields (`name`/`duplicate`, 422), so a form shows it with the rest; only a
//! concurrent writer that takes the name between the check and the write, or
//! changes the record under a PATCH, gets 409 `conflict` (retry).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::guard::Acting;
use super::{AppState, body};
use crate::shares::{self as rules, PathPolicy, Rejected};
use crate::store::shares::{self, Share};

/// The share routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/storage/shares", get(list).post(create))
        .route(
            "/api/v1/storage/shares/{id}",
            get(show).put(replace).patch(modify).delete(remove),
        )
}

fn share_id(raw: &str) -> Result<i64, ApiError> {
    body::record_id(raw, "share")
}

/// PATCH also takes `application/merge-patch+json`, whose semantics (given fields
/// replace, `null` resets) are what PATCH does here.
async fn read_object(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    merge_patch: bool,
) -> Result<Map<String, Value>, ApiError> {
    body::json_object(
        headers,
        body,
        app.config.http_max_body,
        merge_patch,
        "a JSON object of share fields",
    )
    .await
}

fn rejected(r: Rejected) -> ApiError {
    match r {
        Rejected::Fields(fields) => ApiError::Validation(fields),
        Rejected::Internal(detail) => ApiError::Internal(detail),
    }
}

/// Whether another share already has the body's name. Asked before validating
/// so the answer is reported with the other field errors.
async fn name_taken(app: &AppState, body: &Map<String, Value>, except: Option<i64>) -> Result<bool, ApiError> {
    let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(false);
    };
    Ok(app.store.read(move |c| shares::name_taken(c, &name, except)).await?)
}

async fn get_share(app: &AppState, id: i64) -> Result<Share, ApiError> {
    Ok(app.store.read(move |c| shares::get(c, id)).await?)
}

/// Validates a full definition (name check included).
async fn checked(app: &AppState, body: Map<String, Value>, except: Option<i64>) -> Result<shares::NewShare, ApiError> {
    let taken = name_taken(app, &body, except).await?;
    rules::validate(body, PathPolicy::from_config(&app.config), taken)
        .await
        .map_err(rejected)
}

/// `GET /api/v1/storage/shares`.
async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = app.store.read(shares::list).await?;
    Ok(Json(json!({ "shares": all })))
}

/// `POST /api/v1/storage/shares`.
async fn create(
    State(app): State<AppState>,
    Acting(actor): Acting,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_object(&app, &headers, body, false).await?;
    let new = checked(&app, body, None).await?;
    let (share, _) = app.store.write(move |tx| shares::insert(tx, &actor, &new)).await?;
    let location = format!("/api/v1/storage/shares/{}", share.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(share)).into_response())
}

/// `GET /api/v1/storage/shares/{id}`.
async fn show(State(app): State<AppState>, Path(raw): Path<String>) -> Result<Json<Share>, ApiError> {
    let id = share_id(&raw)?;
    Ok(Json(get_share(&app, id).await?))
}

/// `PUT /api/v1/storage/shares/{id}`: last writer wins, as a full replace should.
async fn replace(
    State(app): State<AppState>,
    Acting(actor): Acting,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Share>, ApiError> {
    let id = share_id(&raw)?;
    let body = read_object(&app, &headers, body, false).await?;
    get_share(&app, id).await?;
    let new = checked(&app, body, Some(id)).await?;
    let (share, _) = app
        .store
        .write(move |tx| shares::update(tx, &actor, id, &new, None))
        .await?;
    Ok(Json(share))
}

/// `PATCH /api/v1/storage/shares/{id}`: the merge is made against the record as
/// read here, and the write is refused (409) if the record changed meanwhile,
/// so a partial update never undoes someone else's change to another field.
async fn modify(
    State(app): State<AppState>,
    Acting(actor): Acting,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Share>, ApiError> {
    let id = share_id(&raw)?;
    let patch = read_object(&app, &headers, body, true).await?;
    let before = get_share(&app, id).await?;
    let mut merged = rules::body_of(&before);
    merged.extend(patch);
    let new = checked(&app, merged, Some(id)).await?;
    let (share, _) = app
        .store
        .write(move |tx| shares::update(tx, &actor, id, &new, Some(&before)))
        .await?;
    Ok(Json(share))
}

/// `DELETE /api/v1/storage/shares/{id}`.
async fn remove(
    State(app): State<AppState>,
    Acting(actor): Acting,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = share_id(&raw)?;
    let (share, _) = app.store.write(move |tx| shares::delete(tx, &actor, id)).await?;
    Ok(Json(json!({ "deleted": share })))
}
