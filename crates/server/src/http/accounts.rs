//! Accounts over REST: login, refresh, logout, me, password, API keys, users
//! and the audit log.
//!
//! | request | who | success |
//! |---|---|---|
//! | `POST /api/v1/auth/login` `{"username","password"}` | anyone | 200 token pair + `user` |
//! | `POST /api/v1/auth/refresh` `{"refresh_token"}` | anyone | 200 new token pair (the old refresh token is spent) |
//! | `POST /api/v1/auth/logout` | session | 200; the session's tokens and sockets end |
//! | `GET /api/v1/auth/me` | any | 200 `{"user", "auth"}` |
//! | `POST /api/v1/auth/password` `{"current_password","new_password"}` | session | 200 new token pair; every other session ends |
//! | `GET/POST /api/v1/auth/keys`, `DELETE /api/v1/auth/keys/{id}` | any (own keys; admins all) | list / 201 with the key once / 200 |
//! | `GET/POST /api/v1/users`, `GET/PATCH /api/v1/users/{id}`, `POST /api/v1/users/{id}/password` | admin | … |
//! | `GET /api/v1/audit?limit&before&after&actor&action` | admin | 200 `{"records"}` newest first |

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::guard::ClientIp;
use super::{AppState, body};
use crate::auth::{AuthError, Credential, Principal};
use crate::store::accounts::Role;
use crate::store::audit::{self, AuditQuery};

/// The account routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/auth/keys", get(list_keys).post(create_key))
        .route("/api/v1/auth/keys/{id}", delete(revoke_key))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", get(show_user).patch(update_user))
        .route("/api/v1/users/{id}/password", post(reset_password))
        .route("/api/v1/audit", get(audit_log))
}

async fn object(app: &AppState, headers: &HeaderMap, body: Body, shape: &str) -> Result<Map<String, Value>, ApiError> {
    body::json_object(headers, body, app.config.http_max_body.min(64 * 1024), false, shape).await
}

fn text_field(body: &Map<String, Value>, field: &'static str) -> Result<String, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(field, "must be a string")),
        None => Err(invalid(field, "is required")),
    }
}

fn invalid(field: &'static str, message: &str) -> ApiError {
    ApiError::Auth(AuthError::Invalid {
        field,
        message: message.to_owned(),
    })
}

fn role_field(body: &Map<String, Value>) -> Result<Option<Role>, ApiError> {
    match body.get("role") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Role::parse(s)
            .map(Some)
            .ok_or_else(|| invalid("role", "must be admin or viewer")),
        Some(_) => Err(invalid("role", "must be admin or viewer")),
    }
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Token responses must never be cached.
fn no_store(value: Value) -> Response {
    let mut r = Json(value).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

async fn login(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = object(&app, &headers, body, r#"{"username": string, "password": string}"#).await?;
    let username = text_field(&body, "username")?;
    let password = text_field(&body, "password")?;
    app.auth.check_login_rate(&username, ip)?;
    let (pair, user) = app.auth.login(&username, password, ip, &user_agent(&headers)).await?;
    let mut v = serde_json::to_value(&pair).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["user"] = serde_json::to_value(&user).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(no_store(v))
}

async fn refresh(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = object(&app, &headers, body, r#"{"refresh_token": string}"#).await?;
    let token = text_field(&body, "refresh_token")?;
    let pair = app.auth.refresh(&token, ip).await?;
    Ok(no_store(
        serde_json::to_value(&pair).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

async fn logout(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    app.auth.logout(&p, ip).await?;
    Ok(Json(json!({"logged_out": true})))
}

async fn me(State(app): State<AppState>, Extension(p): Extension<Principal>) -> Result<Json<Value>, ApiError> {
    let user = app.auth.user(p.user_id).await?;
    let (method, session_id, key_id) = match &p.credential {
        Credential::Session(s) => ("session", Some(s.to_string()), None),
        Credential::Key(k) => ("api_key", None, Some(*k)),
    };
    let expires_at = p
        .expires_at
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(Json(json!({
        "user": user,
        "auth": {"method": method, "role": p.role, "session_id": session_id, "key_id": key_id, "expires_at": expires_at},
    })))
}

async fn change_password(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = object(
        &app,
        &headers,
        body,
        r#"{"current_password": string, "new_password": string}"#,
    )
    .await?;
    let current = text_field(&body, "current_password")?;
    let new = text_field(&body, "new_password")?;
    let pair = app
        .auth
        .change_own_password(&p, ip, current, new, &user_agent(&headers))
        .await?;
    Ok(no_store(
        serde_json::to_value(&pair).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

async fn list_keys(State(app): State<AppState>, Extension(p): Extension<Principal>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"keys": app.auth.list_keys(&p).await?})))
}

async fn create_key(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = object(&app, &headers, body, r#"{"name": string, "role"?: "admin"|"viewer"}"#).await?;
    let name = text_field(&body, "name")?;
    let role = role_field(&body)?;
    let created = app.auth.create_key(&p, ip, name, role).await?;
    let location = format!("/api/v1/auth/keys/{}", created.record.id);
    let mut r = (
        StatusCode::CREATED,
        Json(serde_json::to_value(&created).map_err(|e| ApiError::Internal(e.to_string()))?),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn revoke_key(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = body::record_id(&raw, "key")?;
    let key = app.auth.revoke_key(&p, ip, id).await?;
    Ok(Json(json!({"revoked": key})))
}

fn admin(p: &Principal) -> Result<(), ApiError> {
    Ok(p.require_admin()?)
}

async fn list_users(State(app): State<AppState>, Extension(p): Extension<Principal>) -> Result<Json<Value>, ApiError> {
    admin(&p)?;
    Ok(Json(json!({"users": app.auth.list_users().await?})))
}

async fn show_user(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = body::record_id(&raw, "user")?;
    if id != p.user_id {
        admin(&p)?;
    }
    Ok(Json(json!(app.auth.user(id).await?)))
}

async fn create_user(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin(&p)?;
    let body = object(
        &app,
        &headers,
        body,
        r#"{"username": string, "password": string, "role"?: "admin"|"viewer"}"#,
    )
    .await?;
    let username = text_field(&body, "username")?;
    let password = text_field(&body, "password")?;
    let role = role_field(&body)?.unwrap_or(Role::Viewer);
    let user = app.auth.create_user(p.actor(ip), username, password, role).await?;
    let mut r = (StatusCode::CREATED, Json(json!(user))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/api/v1/users/{}", user.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn update_user(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    admin(&p)?;
    let id = body::record_id(&raw, "user")?;
    let body = object(
        &app,
        &headers,
        body,
        r#"{"role"?: "admin"|"viewer", "disabled"?: bool}"#,
    )
    .await?;
    if let Some(k) = body.keys().find(|k| !matches!(k.as_str(), "role" | "disabled")) {
        return Err(ApiError::BadJson(format!(
            "unknown field {k:?}: only role and disabled can be changed here (passwords: POST /api/v1/users/{{id}}/password)"
        )));
    }
    let role = role_field(&body)?;
    let disabled = match body.get("disabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(invalid("disabled", "must be true or false")),
    };
    Ok(Json(json!(
        app.auth.update_user(p.actor(ip), id, role, disabled).await?
    )))
}

async fn reset_password(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(p): Extension<Principal>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    admin(&p)?;
    let id = body::record_id(&raw, "user")?;
    let body = object(&app, &headers, body, r#"{"password": string}"#).await?;
    let password = text_field(&body, "password")?;
    Ok(Json(json!(app.auth.reset_password(p.actor(ip), id, password).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    limit: Option<usize>,
    before: Option<i64>,
    after: Option<i64>,
    actor: Option<String>,
    action: Option<String>,
}

async fn audit_log(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    admin(&p)?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1..=1000".into()));
    }
    let query = AuditQuery {
        before: q.before,
        after: q.after,
        actor: q.actor,
        action: q.action,
        limit,
    };
    let records = app.store.read(move |c| audit::list(c, &query)).await?;
    let next_before = (records.len() == limit).then(|| records.last().map(|r| r.id)).flatten();
    Ok(Json(json!({"records": records, "next_before": next_before})))
}
