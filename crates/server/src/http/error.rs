//! `ApiError`: every REST failure, mapped once to a status and the JSON body
//! `{"error":{"code":"…","message":"…"}}`. The match is exhaustive so a new
//! variant cannot ship without a status and a stable code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use sigmavault_proto::{ErrorBody, FieldError};

use crate::auth::AuthError;
use crate::store::StoreError;

use crate::hub::PublishError;
use crate::hub::ws::UpgradeError;

/// A REST error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// The body is not valid JSON of the expected shape.
    #[error("{0}")]
    BadJson(String),
    /// A field is invalid.
    #[error("{0}")]
    InvalidEvent(String),
    /// The body is larger than the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The batch has too many events.
    #[error("a batch may hold at most {0} events")]
    TooManyEvents(usize),
    /// Wrong or missing Content-Type.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// A WebSocket upgrade problem.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// The request took longer than the request timeout.
    #[error("the request took too long")]
    Timeout,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store refused or failed (404, 409, 422 or 503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The body has invalid fields; every one is listed.
    #[error("{} field(s) are invalid: {}", .0.len(), .0.iter().map(|f| f.field.as_str()).collect::<Vec<_>>().join(", "))]
    Validation(Vec<FieldError>),
    /// A named thing (a disk, …) does not exist.
    #[error("{0} not found")]
    NoSuch(String),
    /// The data asked for does not exist yet (no sample taken yet).
    #[error("{0}")]
    NotReady(String),
    /// A path parameter or query is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Authentication or authorization refused the request (401, 403, 429, 422).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A browser page from another origin.
    #[error("origin {0:?} is not allowed; only the server's own origin and --allowed-origin entries are")]
    OriginNotAllowed(String),
    /// Too many WebSockets from one address or user.
    #[error("{0}")]
    TooManySockets(String),
    /// Anything unexpected; the message is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::ShuttingDown => ApiError::ShuttingDown,
            PublishError::Store(StoreError::Invalid(m)) => ApiError::InvalidEvent(m),
            PublishError::Store(e) => ApiError::Store(e),
        }
    }
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            ApiError::InvalidEvent(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_event"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::TooManyEvents(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Upgrade(UpgradeError::NotUpgrade) => (StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            ApiError::Upgrade(UpgradeError::BadVersion) => {
                (StatusCode::UPGRADE_REQUIRED, "unsupported_websocket_version")
            }
            ApiError::Upgrade(UpgradeError::BadKey) => (StatusCode::BAD_REQUEST, "bad_websocket_key"),
            ApiError::Upgrade(UpgradeError::BadQuery(_)) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Upgrade(UpgradeError::Full) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            ApiError::Upgrade(UpgradeError::ShuttingDown) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Upgrade(UpgradeError::Internal(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Store(e) => match e {
                StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                StoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                other => (StatusCode::SERVICE_UNAVAILABLE, other.code()),
            },
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NoSuch(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::OriginNotAllowed(_) => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            ApiError::TooManySockets(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            ApiError::Auth(e) => {
                let status = match e {
                    AuthError::Missing
                    | AuthError::InvalidToken
                    | AuthError::Expired
                    | AuthError::Revoked
                    | AuthError::InvalidCredentials => StatusCode::UNAUTHORIZED,
                    AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
                    AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                    AuthError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                    AuthError::Secret(_) | AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    AuthError::Store(s) => return ApiError::Store(clone_store_error(s)).status_and_code(),
                };
                (status, e.code())
            }
        }
    }
}

/// A copy of a store error for classification (StoreError holds only text).
fn clone_store_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Full(m) => StoreError::Full(m.clone()),
        StoreError::ReadOnly(m) => StoreError::ReadOnly(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Sqlite(other.to_string()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A store failure or a bad field inside an account operation is reported
        // exactly like one anywhere else.
        let this = match self {
            ApiError::Auth(AuthError::Store(e)) => ApiError::Store(e),
            ApiError::Auth(AuthError::Invalid { field, message }) => ApiError::Validation(vec![FieldError {
                field: field.to_owned(),
                code: "invalid".to_owned(),
                message,
            }]),
            other => other,
        };
        this.render()
    }
}

impl ApiError {
    fn render(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Auth(AuthError::Internal(detail) | AuthError::Secret(detail)) = &self {
            tracing::error!(detail, "internal error in an account operation");
        }
        if let ApiError::Internal(detail) | ApiError::Upgrade(UpgradeError::Internal(detail)) = &self {
            tracing::error!(detail, "internal error while serving a request");
        }
        if let ApiError::Store(e) = &self
            && e.is_unavailable()
        {
            tracing::error!(error = %e, "storage failure while serving a request");
        }
        let message = match &self {
            // Say what kind of failure, not the SQLite detail.
            ApiError::Store(e) if e.is_unavailable() => match e {
                StoreError::Full(_) => "the database is full; free disk space (or raise --db-max-size)".to_owned(),
                StoreError::ReadOnly(_) => "the database is read-only; check the data directory".to_owned(),
                StoreError::Corrupt(_) => "the database is damaged; see the server log".to_owned(),
                _ => "the database is unavailable; see the server log".to_owned(),
            },
            ApiError::Auth(AuthError::Internal(_) | AuthError::Secret(_)) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut body = ErrorBody::new(code, message);
        if let ApiError::Validation(fields) = &self {
            body.error.fields = fields.clone();
        }
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Upgrade(UpgradeError::NotUpgrade) => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            }
            ApiError::Upgrade(UpgradeError::BadVersion) => {
                headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            ApiError::Upgrade(UpgradeError::Full | UpgradeError::ShuttingDown) | ApiError::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Store(e) if e.is_unavailable() => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Auth(AuthError::RateLimited(wait)) => {
                let secs = crate::auth::limits::retry_after_secs(*wait);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::Auth(AuthError::Missing | AuthError::InvalidToken | AuthError::Expired | AuthError::Revoked) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sigmavault\""),
                );
            }
            _ => {}
        }
        response
    }
}
