//! The page shown when something cannot be shown: an unknown run, a failed read.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::view::Layout;

#[derive(Template, WebTemplate)]
#[template(path = "problem.html")]
pub struct ProblemTemplate {
    pub layout: Layout,
    pub status: u16,
    pub title: String,
    pub message: String,
}

impl ProblemTemplate {
    pub fn new(
        layout: Layout,
        status: StatusCode,
        title: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            layout,
            status: status.as_u16(),
            title: title.into(),
            message: message.into(),
        }
    }

    /// The page with its status code.
    pub fn respond(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::EVIL;

    #[test]
    fn renders_escaped() {
        let page = ProblemTemplate::new(
            Layout::named("node-a", ""),
            StatusCode::NOT_FOUND,
            "No such run",
            format!("there is no run {EVIL}"),
        );
        let html = page.render().expect("render");
        assert!(html.contains("404"), "{html}");
        assert!(html.contains("No such run"));
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(!html.contains(EVIL));
    }
}
