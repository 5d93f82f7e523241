//! A task's own page (`/tasks/{id or name}`): its row with the editable panel open, and its runs
//! from every node ([`super::history`]). The task list fetches the panel from here when a row is
//! first opened.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::history::{HistoryFilter, HistoryView};
use super::problem::ProblemTemplate;
use super::tasks::{RuleView, TIMEZONES, TaskPanel, TaskRow};
use super::view::Layout;
use crate::NodeView;
use crate::i18n::Lang;

#[derive(Template, WebTemplate)]
#[template(path = "task.html")]
pub struct TaskTemplate {
    pub layout: Layout,
    pub row: TaskRow,
    pub history: HistoryView,
    pub blank_rule: RuleView,
    pub channels: Vec<String>,
    pub timezones: &'static [&'static str],
}

pub async fn view_task_get<N: NodeView>(
    State(node): State<N>,
    Path(key): Path<String>,
    Query(filter): Query<HistoryFilter>,
    lang: Lang,
) -> Response {
    let layout = Layout::new(&node, "tasks", lang);
    let Some(task) = node.task(&key) else {
        return ProblemTemplate::new(
            layout,
            StatusCode::NOT_FOUND,
            "No such task",
            format!("There is no task with the id or name `{key}`; it may have been removed."),
        )
        .respond();
    };
    let now = Utc::now();
    let active = node.active_runs();
    let running = active.iter().find(|r| r.task_id == task.id);
    let daemons = node.daemons();
    let last = node.last_run(&task.id);
    let mut row = TaskRow::new(&task, last.as_ref(), running, daemons.get(&task.id), now);
    row.unplaceable = node
        .why_unplaceable(std::slice::from_ref(&task))
        .pop()
        .flatten();
    row.panel = Some(TaskPanel::of(&task));
    TaskTemplate {
        layout,
        row,
        history: HistoryView::read(&node, filter, Some(task.id.clone())).await,
        blank_rule: RuleView::blank(),
        channels: node.channels(),
        timezones: TIMEZONES,
    }
    .into_response()
}
