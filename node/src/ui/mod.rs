//! The web UI: server-rendered pages (askama) with a little JavaScript that talks to the API.
pub fn router(_node: crate::NodeHandle) -> axum::Router {
    axum::Router::new()
}
