//! The doors of the HTTP surface, as layers: client address, rate limit,
//! authentication, role, origin and security headers.
//!
//! Every `/api/v1` route needs a valid access token or API key except the few
//! in [`PUBLIC`]. Reads need any role; writes (any method but GET/HEAD) need
//! `admin`, except the self-service routes in [`SELF_SERVICE`], whose handlers
//! check what they allow (a viewer may log out, change their own password, and
//! manage their own keys).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::auth::{AuthError, Principal};
use crate::config::security::normalize_origin;

/// Routes open without credentials.
const PUBLIC: &[&str] = &[
    "/api/v1/health",
    "/api/v1/ready",
    "/api/v1/info",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
];

/// Writes a viewer may make (the handlers decide the details).
const SELF_SERVICE: &[&str] = &["/api/v1/auth/"];

/// The client's address after `--trusted-proxies` (an extension on every request).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

/// The credentials a request carries: `Authorization: Bearer`, or `X-API-Key`.
/// Query-string tokens are never read (they end up in logs and browser history).
pub(crate) fn credentials(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(token.trim().to_owned());
        }
        return Some(String::new());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

fn peer(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Resolves the client address and applies the per-IP REST rate limit.
pub(crate) async fn client_and_rate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = crate::auth::limits::client_ip(peer(&req), req.headers(), &app.config.security.trusted_proxies);
    req.extensions_mut().insert(ClientIp(ip));
    if let Err(e) = app.auth.check_http_rate(ip) {
        tracing::debug!(client_ip = %ip, path = req.uri().path(), "REST rate limit");
        return ApiError::Auth(e).into_response();
    }
    next.run(req).await
}

/// Authenticates `/api/v1` requests and enforces read/write roles.
pub(crate) async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/api/v1/") || PUBLIC.contains(&path) {
        return next.run(req).await;
    }
    let principal = match credentials(req.headers()) {
        None => Err(AuthError::Missing),
        Some(token) => app.auth.authenticate(&token),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => return ApiError::Auth(e).into_response(),
    };
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && !principal.is_admin() && !SELF_SERVICE.iter().any(|p| path.starts_with(p)) {
        return ApiError::Auth(AuthError::Forbidden(format!(
            "{} {} needs the admin role; this credential is a viewer's",
            req.method(),
            path
        )))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The request's principal (set by [`authenticate`]).
pub(crate) fn principal(req_ext: &axum::http::Extensions) -> Result<Principal, ApiError> {
    req_ext
        .get::<Principal>()
        .cloned()
        .ok_or(ApiError::Auth(AuthError::Missing))
}

/// Whether a browser's `Origin` may use this server: the server's own origin
/// (the Origin's host:port equals the request's Host) or an `--allowed-origin`.
///
/// Behind a `--trusted-proxy` that terminates TLS, the server's own origin is the one
/// the browser sees: scheme from `X-Forwarded-Proto` and host from `X-Forwarded-Host`
/// (else `Host`). From any other peer those headers are ignored.
pub(crate) fn origin_allowed(app: &AppState, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let raw = origin.to_str().unwrap_or("");
    let Some(normalized) = normalize_origin(raw) else {
        return Err(ApiError::OriginNotAllowed(raw.chars().take(100).collect()));
    };
    let security = &app.config.security;
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let proxied = security.trusted_proxies.iter().any(|c| c.contains(peer(req)));
    let forwarded_proto = first("x-forwarded-proto")
        .filter(|_| proxied)
        .map(str::to_ascii_lowercase)
        .filter(|p| p == "http" || p == "https");
    let scheme = forwarded_proto.unwrap_or_else(|| if security.tls() { "https" } else { "http" }.to_owned());
    let host = first("x-forwarded-host")
        .filter(|_| proxied)
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    let own = host.and_then(|h| normalize_origin(&format!("{scheme}://{h}")));
    if own.as_deref() == Some(normalized.as_str()) || security.allowed_origins.contains(&normalized) {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed(raw.chars().take(100).collect()))
    }
}

/// Adds the security headers every response carries; CORS for allowed origins.
pub(crate) async fn security_headers(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let cross_origin_ok = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .and_then(normalize_origin)
        .is_some_and(|o| app.config.security.allowed_origins.contains(&o));
    let preflight = req.method() == Method::OPTIONS && cross_origin_ok;
    let mut response = if preflight {
        axum::http::StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if app.config.security.tls() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if cross_origin_ok && let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key, x-request-id"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, location, x-request-id"),
        );
    }
    response
}

/// The audit actor of a request (its principal and client address), as an extractor.
pub(crate) struct Acting(pub(crate) crate::store::audit::Actor);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Acting {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let p = principal(&parts.extensions)?;
        let ip = parts
            .extensions
            .get::<ClientIp>()
            .map(|c| c.0)
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(Acting(p.actor(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credentials() {
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(credentials(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(credentials(&h).as_deref(), Some(""), "another scheme is not a token");
        let mut k = HeaderMap::new();
        k.insert("x-api-key", "svk_x".parse().unwrap());
        assert_eq!(credentials(&k).as_deref(), Some("svk_x"));
    }
}
