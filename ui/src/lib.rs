//! The web UI: server-rendered pages (askama) with a little JavaScript that talks to the API.
//!
//! One module per page; each has a plain view model filled by its handler (`view_<page>_get`),
//! so the templates can be rendered from sample data in tests. Every write goes through the JSON
//! REST API from `static/app.js`.

mod activity;
mod assets;
mod dashboard;
#[cfg(test)]
mod fake;
mod history;
mod i18n;
mod login;
mod node;
mod node_view;
mod peers;
mod problem;
mod run;
mod schedule_reading;
mod settings;
mod task_filter;
mod task_page;
mod tasks;
mod view;

use axum::Router;
use axum::routing::get;

pub use i18n::Lang;
pub use login::LoginTemplate;
pub use node_view::{NodeView, Places};
pub use schedule_reading::reading as schedule_reading;

pub fn router<N: NodeView>(node: N) -> Router {
    Router::new()
        .route("/", get(tasks::view_tasks_get::<N>))
        .route("/index", get(tasks::view_tasks_get::<N>))
        .route("/tasks/{key}", get(task_page::view_task_get::<N>))
        .route("/settings", get(settings::view_settings_get::<N>))
        .route("/node", get(node::view_node_get::<N>))
        .route("/peers", get(peers::view_peers_get::<N>))
        .route("/dashboard", get(dashboard::view_dashboard_get::<N>))
        .route("/activity", get(activity::view_activity_get::<N>))
        .route("/runs", get(history::view_runs_get::<N>))
        .route("/runs/{id}", get(run::view_run_get::<N>))
        .route("/static/app.css", get(assets::app_css))
        .route("/static/app.js", get(assets::app_js))
        .route("/static/de.js", get(assets::de_js))
        .route("/static/favicon.svg", get(assets::favicon))
        .fallback(view_not_found::<N>)
        .with_state(node)
}

async fn view_not_found<N: NodeView>(
    axum::extract::State(node): axum::extract::State<N>,
    lang: Lang,
    uri: axum::http::Uri,
) -> axum::response::Response {
    problem::ProblemTemplate::new(
        view::Layout::new(&node, "", lang),
        axum::http::StatusCode::NOT_FOUND,
        "Not found",
        format!("There is no page at {}.", uri.path()),
    )
    .respond()
}
