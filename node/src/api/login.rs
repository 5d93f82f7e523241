//! The login page: trade the node's access token for a browser session.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::auth::{Access, safe_next, session_cookie};

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginTemplate {
    next: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextParam {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

pub fn login_router(access: Arc<Access>) -> Router {
    Router::new()
        .route("/login", get(view_login_get).post(view_login_post))
        .with_state(access)
}

async fn view_login_get(State(access): State<Arc<Access>>, Query(p): Query<NextParam>) -> Response {
    let next = safe_next(p.next.as_deref());
    if !access.requires_login() {
        return Redirect::to(&next).into_response();
    }
    LoginTemplate { next, error: None }.into_response()
}

async fn view_login_post(
    State(access): State<Arc<Access>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    match access.login(&form.token) {
        Some(session) => (
            [(header::SET_COOKIE, session_cookie(&session))],
            Redirect::to(&next),
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            LoginTemplate {
                next,
                error: Some("That is not this node's access token.".into()),
            },
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_page_escapes_next() {
        let html = LoginTemplate {
            next: "/\"><script>".into(),
            error: Some("wrong".into()),
        }
        .render()
        .expect("render");
        assert!(html.contains("name=\"token\""));
        assert!(!html.contains("<script>"));
        assert!(html.contains("wrong"));
    }
}
