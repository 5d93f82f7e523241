//! The login page: the access token, or a one-time login link. The node's API module handles
//! the form; this is only the page.

use askama::Template;
use askama_web::WebTemplate;

use crate::i18n::Lang;

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginTemplate {
    /// Where to go after logging in (a local path).
    pub next: String,
    pub error: Option<String>,
    pub lang: Lang,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_page_escapes_next() {
        let html = LoginTemplate {
            next: "/\"><script>".into(),
            error: Some("wrong".into()),
            lang: Lang::En,
        }
        .render()
        .expect("render");
        assert!(html.contains("name=\"token\""));
        assert!(!html.contains("<script>"));
        assert!(html.contains("wrong"));
    }
}
