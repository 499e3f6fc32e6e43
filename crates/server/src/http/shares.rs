//! `/api/v1/storage/shares`: share definitions (CRUD with validation).

use axum::Router;

use super::AppState;

/// The share routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
