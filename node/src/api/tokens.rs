//! Named access tokens: `GET`/`POST /api/tokens`, `DELETE /api/tokens/{name}`. A token is made
//! on one node and works on every node of the cluster, which keeps only its hash.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tracing::instrument;

use super::auth::{random_hex, token_hash};
use super::openapi::{NewToken, TokenRequest};
use super::{ApiError, error, json_body};
use crate::handle::NodeHandle;

/// The named access tokens: names and rights, never the tokens.
#[utoipa::path(get, path = "/api/tokens", tag = "access",
    responses((status = 200, description = "OK", body = Vec<crate::model::TokenInfo>)))]
pub(super) async fn list_tokens(State(node): State<NodeHandle>) -> impl IntoResponse {
    Json(node.tokens())
}

/// Makes a named access token and answers it, the only time it is shown.
#[utoipa::path(post, path = "/api/tokens", tag = "access", request_body = TokenRequest,
    responses(
        (status = 201, description = "created", body = NewToken),
        (status = 400, description = "bad input: `error` (and `details`) say what and where", body = error::ErrorBody),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all)]
pub(super) async fn add_token(
    State(node): State<NodeHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: TokenRequest = json_body(&headers, &body)?;
    let token = random_hex(32).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let lasts = request.expires_in.map(|d| d.0);
    let expires = node
        .add_token(&request.name, request.read_only, lasts, token_hash(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            name: request.name,
            read_only: request.read_only,
            expires,
            token,
        }),
    ))
}

/// Removes a named access token: it and the sessions it made stop working on every node.
#[utoipa::path(delete, path = "/api/tokens/{name}", tag = "access",
    params(("name" = String, Path, description = "the token's name")),
    responses(
        (status = 204, description = "removed"),
        (status = 404, description = "no such token", body = error::ErrorBody),
        (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = error::ErrorBody),
    ))]
#[instrument(name = "api", skip_all, fields(token = %name))]
pub(super) async fn remove_token(
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    node.remove_token(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
