//! The web UI: server-rendered pages (askama) with a little JavaScript that talks to the API.
//!
//! One module per page; each has a plain view model filled by its handler (`view_<page>_get`),
//! so the templates can be rendered from sample data in tests. Every write goes through the JSON
//! REST API from `static/app.js`.

mod assets;
mod node;
mod peers;
mod problem;
mod run;
mod settings;
mod tasks;
mod view;

use axum::Router;
use axum::routing::get;

use crate::NodeHandle;

pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/", get(tasks::view_tasks_get))
        .route("/index", get(tasks::view_tasks_get))
        .route("/settings", get(settings::view_settings_get))
        .route("/node", get(node::view_node_get))
        .route("/peers", get(peers::view_peers_get))
        .route("/runs/{id}", get(run::view_run_get))
        .route("/static/app.css", get(assets::app_css))
        .route("/static/app.js", get(assets::app_js))
        .route("/static/favicon.svg", get(assets::favicon))
        .fallback(view_not_found)
        .with_state(node)
}

async fn view_not_found(
    axum::extract::State(node): axum::extract::State<NodeHandle>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    problem::ProblemTemplate::new(
        view::Layout::new(&node, ""),
        axum::http::StatusCode::NOT_FOUND,
        "Not found",
        format!("There is no page at {}.", uri.path()),
    )
    .respond()
}
