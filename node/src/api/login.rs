//! Getting in and out: the login page (the access token, or a one-time login link), logout, and
//! the API that makes login links and rotates the token. A sign-in and a rotation are listed
//! in the cluster's activity ([`AccessEvent`]); a failed login only in the node's log and its
//! count per address (see [`super::auth`]), so that guessing cannot fill the replicated list.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use serde::Deserialize;
use taskmesh_ui::{Lang, LoginTemplate};
use tracing::info;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::auth::{Access, CODE_TTL, LoginRefused, Session, client_of, redirect, safe_next};
use crate::caller::Caller;
use crate::handle::NodeHandle;
use crate::model::AccessEvent;

/// What the login routes serve with: the node's door, and the node that lists who came in.
#[derive(Clone)]
pub(super) struct Door {
    access: Arc<Access>,
    node: NodeHandle,
}

/// `/login?next=…&code=…`. Unknown parameters are ignored (a login page must always render).
#[derive(Debug, Deserialize)]
struct LoginParams {
    next: Option<String>,
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// The login router's API routes, registered and described by their annotations (see
/// [`super::openapi`]).
pub(super) fn described_routes() -> OpenApiRouter<Door> {
    OpenApiRouter::new()
        .routes(routes!(create_login_link))
        .routes(routes!(rotate_token))
}

pub fn login_router(access: Arc<Access>, node: NodeHandle) -> Router {
    let (api, _) = described_routes().split_for_parts();
    api.route("/login", get(view_login_get).post(view_login_post))
        .route("/logout", post(view_logout_post))
        .layer(axum::middleware::from_fn(super::same_origin_writes))
        .with_state(Door { access, node })
}

/// The query string as parameters; one that cannot be read (bad percent-encoding) is treated
/// as empty rather than refused, so the page still shows.
fn params(request: &Request) -> LoginParams {
    request
        .uri()
        .query()
        .and_then(|q| Query::<LoginParams>::try_from_uri(&format!("/login?{q}").parse().ok()?).ok())
        .map(|Query(p)| p)
        .unwrap_or(LoginParams {
            next: None,
            code: None,
        })
}

/// Lists the sign-in in the activity and sends the browser on with its session.
fn logged_in(
    door: &Door,
    session: Session,
    with: AccessEvent,
    client: IpAddr,
    next: &str,
) -> Response {
    door.node.list_access(
        with,
        Caller {
            via: "ui",
            client: client.to_string(),
            token: session.token,
            read_only: session.read_only,
        },
    );
    let mut response = redirect(next);
    if let Ok(cookie) = door.access.session_cookie(&session.id).parse() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn refused_page(refused: &LoginRefused, next: String, lang: Lang) -> Response {
    let status = match refused {
        LoginRefused::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
        LoginRefused::Random(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut response = (
        status,
        LoginTemplate {
            next,
            error: Some(refused.to_string()),
            lang,
        },
    )
        .into_response();
    if let LoginRefused::Limited { retry_after, .. } = refused
        && let Ok(value) = retry_after.as_secs().to_string().parse()
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn view_login_get(State(door): State<Door>, request: Request) -> Response {
    let p = params(&request);
    let next = safe_next(p.next.as_deref());
    let lang = Lang::of_request(request.headers());
    let client = client_of(&request);
    match p.code {
        Some(code) => match door.access.login_with_code(&code, client) {
            Ok(session) => logged_in(&door, session, AccessEvent::SignInWithLink, client, &next),
            Err(refused) => refused_page(&refused, next, lang),
        },
        None => LoginTemplate {
            next,
            error: None,
            lang,
        }
        .into_response(),
    }
}

async fn view_login_post(State(door): State<Door>, request: Request) -> Response {
    let client = client_of(&request);
    let lang = Lang::of_request(request.headers());
    let Form(form) = match Form::<LoginForm>::from_request(request, &()).await {
        Ok(form) => form,
        Err(rejection) => return rejection.into_response(),
    };
    let next = safe_next(form.next.as_deref());
    match door.access.login_with_token(&form.token, client) {
        Ok(session) => logged_in(&door, session, AccessEvent::SignInWithToken, client, &next),
        Err(refused) => refused_page(&refused, next, lang),
    }
}

/// Ends the session (server-side) and deletes the cookie.
async fn view_logout_post(State(door): State<Door>, headers: HeaderMap) -> Response {
    door.access.logout(&headers);
    let mut response = redirect("/login");
    if let Ok(cookie) = door.access.cleared_cookie().parse() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// A one-time login link: 201 `{"url", "expires_in_s"}`.
#[utoipa::path(post, path = "/api/login-links", tag = "access",
    responses((status = 201, description = "created", body = super::openapi::LoginLink), (status = 503, description = "not committed: no quorum, not joined yet, or shutting down", body = super::error::ErrorBody)))]
async fn create_login_link(State(door): State<Door>) -> Result<Response, ApiError> {
    let code = door
        .access
        .new_code()
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(super::openapi::LoginLink {
            url: door.access.login_url(&code),
            expires_in_s: CODE_TTL.as_secs(),
        }),
    )
        .into_response())
}

/// Writes a new token to the token file and ends every session; the old token stops working.
/// The rotation is listed in the activity, as done by whoever asked.
#[utoipa::path(post, path = "/api/token/rotate", tag = "access",
    responses((status = 200, description = "OK", body = super::openapi::TokenRotated), (status = 500, description = "the token file could not be written", body = super::error::ErrorBody)))]
async fn rotate_token(State(door): State<Door>) -> Result<Response, ApiError> {
    let rotator = door.access.clone();
    tokio::task::spawn_blocking(move || rotator.rotate())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                crate::error_text::error_text(&e),
            )
        })?;
    let path = door.access.options().token_path.display().to_string();
    info!(token_file = %path, "access token rotated; every session ended");
    if let Some(caller) = crate::caller::current() {
        door.node.list_access(AccessEvent::RotateToken, caller);
    }
    Ok(Json(super::openapi::TokenRotated {
        rotated: true,
        token_file: path,
    })
    .into_response())
}
