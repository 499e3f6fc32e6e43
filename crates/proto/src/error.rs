//! The JSON error body shared by REST responses: `{"error":{"code":"…","message":"…"}}`.

use serde::{Deserialize, Serialize};

/// The body of every non-2xx REST response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// A stable snake_case `code` for programs and a human `message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`.
    pub code: String,
    /// Human-readable explanation; never contains internal details on 5xx.
    pub message: String,
    /// On validation errors (422): every rejected field, not just the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// One rejected field of a request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field, e.g. `path` or `allowed_hosts[2]`.
    pub field: String,
    /// Stable code, e.g. `required`, `reserved_name`, `outside_share_roots`.
    pub code: String,
    /// What is wrong with it.
    pub message: String,
}

impl ErrorBody {
    /// Builds a body from a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                fields: Vec::new(),
            },
        }
    }
}
