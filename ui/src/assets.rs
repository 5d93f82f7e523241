//! The UI's static assets (one stylesheet, one script), embedded in the binary and served with
//! long cache lifetimes; their URLs carry a content hash so that a new build is fetched.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;

pub const APP_CSS: &str = include_str!("../static/app.css");
pub const APP_JS: &str = include_str!("../static/app.js");
/// The tab icon (the header's logo square); an own file because the CSP allows no `data:` URLs.
const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"4\" fill=\"#2458d6\"/></svg>";

/// URLs are versioned (`?v=…`), so a year is safe.
const CACHE: &str = "public, max-age=31536000, immutable";

/// A short hash of the assets and the German catalog, for `?v=` in their URLs.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        APP_CSS.hash(&mut hasher);
        APP_JS.hash(&mut hasher);
        crate::i18n::DE_JSON.hash(&mut hasher);
        format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
    })
}

pub async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        APP_CSS,
    )
}

pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        APP_JS,
    )
}

pub async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
}

/// The German catalog for app.js, `window.TASKMESH_TEXT`; pages in German load it first.
pub async fn de_js() -> impl IntoResponse {
    const DE_JS: &str = concat!(
        "window.TASKMESH_TEXT = ",
        include_str!("../static/de.json"),
        ";\n"
    );
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        DE_JS,
    )
}
