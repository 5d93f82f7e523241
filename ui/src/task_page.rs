//! A task's own page (`/tasks/{id or name}`): its row with the editable panel open, and its runs,
//! newest first, a page at a time. The task list fetches the panel from here when a row is
//! first opened.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::problem::ProblemTemplate;
use super::tasks::{RuleView, TIMEZONES, TaskPanel, TaskRow};
use super::view::{Layout, RunSummary};
use crate::NodeView;
use taskmesh_core::model::RunId;
use taskmesh_core::view::RunQuery;

/// Runs on one page of a task's history.
pub const RUNS_PAGE: usize = 50;

#[derive(Template, WebTemplate)]
#[template(path = "task.html")]
pub struct TaskTemplate {
    pub layout: Layout,
    pub row: TaskRow,
    pub runs: Vec<RunSummary>,
    /// The run this page starts below, when it is not the newest page.
    pub older_than: Option<String>,
    /// The cursor of the next older page, when there is one.
    pub older: Option<String>,
    pub history_error: Option<String>,
    pub blank_rule: RuleView,
    pub channels: Vec<String>,
    pub timezones: &'static [&'static str],
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryParams {
    /// Runs older than this one.
    pub before: Option<String>,
}

pub async fn view_task_get<N: NodeView>(
    State(node): State<N>,
    Path(key): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Response {
    let layout = Layout::new(&node, "tasks");
    let Some(task) = node.task(&key) else {
        return ProblemTemplate::new(
            layout,
            StatusCode::NOT_FOUND,
            "No such task",
            format!("There is no task with the id or name `{key}`; it may have been removed."),
        )
        .respond();
    };
    let before = match params.before.as_deref().map(|b| (b, RunId::parse(b))) {
        Some((text, None)) => {
            return ProblemTemplate::new(
                layout,
                StatusCode::BAD_REQUEST,
                "Not a run id",
                format!("`before={text}` is not a run id (run ids are 32 hex digits)."),
            )
            .respond();
        }
        Some((_, Some(id))) => Some(id),
        None => None,
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
    let (mut runs, history_error) = match node
        .runs(RunQuery {
            task: Some(task.id.clone()),
            before: before.clone(),
            limit: RUNS_PAGE + 1,
        })
        .await
    {
        Ok(runs) => (runs, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let older = (runs.len() > RUNS_PAGE).then(|| {
        runs.truncate(RUNS_PAGE);
        runs.last().map(|r| r.id.to_string()).unwrap_or_default()
    });
    TaskTemplate {
        layout,
        row,
        runs: runs.iter().map(|r| RunSummary::of(r, now)).collect(),
        older_than: before.map(|b| b.to_string()),
        older,
        history_error,
        blank_rule: RuleView::blank(),
        channels: node.channels(),
        timezones: TIMEZONES,
    }
    .into_response()
}
