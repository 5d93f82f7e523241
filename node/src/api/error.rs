//! API errors: a status and a JSON body that says what was wrong and where.
//!
//! The node's errors map to a status here, once: invalid input `400` (with field paths),
//! unknown `404`, a run the cluster refuses as it is now `409` (with `refused`, the reason's
//! kind), a replacement made from an outdated copy `409` (`refused: "stale"`, with the task as
//! it is now in `current`), could not be committed or done now `503`, anything else `500`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::handle::NodeError;
use crate::model::{FieldError, Invalid};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

/// Every error answer's body (the CLI reads it back as this type).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// With `400`: each invalid field, with its path (and line and column for JSON text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// With `409`: why the run was refused (`no_node`, `still_running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub refused: Option<Cow<'static, str>>,
    /// With `409` for a stale replacement: the task as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Box<crate::model::Task>>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                details: Vec::new(),
                refused: None,
                current: None,
            },
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: invalid.message,
                details: invalid.errors,
                refused: None,
                current: None,
            },
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Invalid(invalid) => invalid.into(),
            NodeError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            NodeError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            // Refusals are answers about the cluster as it is, which can change (a node with
            // the dependency joins, the earlier run ends): 409, not 422, and not 503.
            NodeError::CannotRun(refusal) => {
                let mut error = Self::new(StatusCode::CONFLICT, refusal.to_string());
                error.body.refused = Some(Cow::Borrowed(refusal.kind()));
                error
            }
            NodeError::Stale { message, current } => {
                let mut error = Self::new(StatusCode::CONFLICT, message);
                error.body.refused = Some(Cow::Borrowed("stale"));
                error.body.current = Some(current);
                error
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
