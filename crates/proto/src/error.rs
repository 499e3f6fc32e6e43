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
}

impl ErrorBody {
    /// Builds a body from a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}
