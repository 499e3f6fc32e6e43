//! Request bodies and path ids, read the same way by every endpoint.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Reads a JSON object body: `Content-Type: application/json` (415 otherwise;
/// `application/merge-patch+json` too when `merge_patch`), at most `limit`
/// bytes (413), valid JSON (400 `bad_json`) and an object (400, with `shape`
/// saying what was expected).
pub(crate) async fn json_object(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    merge_patch: bool,
    shape: &str,
) -> Result<Map<String, Value>, ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    let acceptable = match media.as_deref() {
        Some("application/json") => true,
        Some("application/merge-patch+json") => merge_patch,
        _ => false,
    };
    if !acceptable {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadJson(format!("could not read the request body: {e}"))
        }
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::BadJson(format!("request body must be {shape}"))),
        Err(e) => Err(ApiError::BadJson(format!("request body is not JSON: {e}"))),
    }
}

/// A record id in a URL: digits only, so `+5` or `05` never name record 5 under a
/// second URL.
pub(crate) fn record_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    let canonical = !raw.starts_with('0') && !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    canonical.then(|| raw.parse::<i64>().ok()).flatten().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{:?} is not a {what} id (a positive integer)",
            raw.chars().take(40).collect::<String>()
        ))
    })
}
