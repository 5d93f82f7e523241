//! Run history from every live node: the runs of one task on its page, all runs on `/runs`,
//! filtered by status, node and trigger, a page of 50 at a time, newest first. Nodes that did
//! not answer in time are named on the page.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};
use chrono::Utc;
use serde::Deserialize;

use super::dashboard::TaskLine;
use super::view::{Layout, RunSummary, node_names};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::model::{RunId, RunStatus, TaskId, Trigger};
use taskmesh_core::view::{RunQuery, RunStats};

/// Runs on one page of a history.
pub const RUNS_PAGE: usize = 50;

pub const STATUSES: &[&str] = &[
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "killed",
    "lost",
    "skipped",
];

/// A history's query string. Empty values mean "any"; what the page cannot read is named in
/// [`HistoryView::problems`] and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HistoryFilter {
    /// A task's id or name (`/runs` only; a task's page is about its task).
    pub task: String,
    pub status: String,
    pub node: String,
    pub trigger: String,
    /// Runs older than this one.
    pub before: String,
}

/// One page of a history, as the template shows it.
#[derive(Debug, Clone, Default)]
pub struct HistoryView {
    pub filter: HistoryFilter,
    pub problems: Vec<String>,
    pub runs: Vec<RunSummary>,
    /// Nodes whose history is missing from the page: they did not answer in time.
    pub unanswered: Vec<String>,
    pub error: Option<String>,
    /// The query string of the next older page, when there is one.
    pub older: Option<String>,
    /// Whether this is a later page (there is a newest page to go back to).
    pub paged: bool,
    /// The page lists one task's runs (no task filter, no task column needed).
    pub one_task: bool,
    pub nodes: Vec<String>,
    pub statuses: &'static [&'static str],
    pub triggers: &'static [&'static str],
    /// On a task's page: the success rate, mean duration and sparkline of the runs listed.
    pub summary: Option<TaskLine>,
}

impl HistoryView {
    /// The notice naming the nodes whose runs the page lacks.
    pub fn not_shown(&self) -> String {
        format!(
            "Not shown: the runs kept only on {}, which did not answer in time.",
            self.unanswered.join(", ")
        )
    }

    /// What the summary's mean is over.
    pub fn mean_note(&self) -> String {
        let finished = self.summary.as_ref().map_or(0, |t| t.spark.bars.len());
        format!("mean duration, over the {finished} finished runs below")
    }

    /// Whether a filter narrows the list.
    pub fn is_filtered(&self) -> bool {
        let f = &self.filter;
        !(f.status.is_empty() && f.node.is_empty() && f.trigger.is_empty())
            || (!self.one_task && !f.task.is_empty())
    }

    /// One page of the history `filter` asks for; `task` for a task's own page.
    pub async fn read(node: &impl NodeView, filter: HistoryFilter, task: Option<TaskId>) -> Self {
        let mut problems = Vec::new();
        let mut query = RunQuery {
            limit: RUNS_PAGE + 1,
            node: Some(filter.node.clone()).filter(|n| !n.is_empty()),
            ..RunQuery::default()
        };
        let one_task = task.is_some();
        query.task = task.or_else(|| {
            let key = filter.task.trim();
            (!key.is_empty()).then(|| {
                node.task(key)
                    .map(|t| t.id.clone())
                    .unwrap_or_else(|| TaskId(key.to_owned()))
            })
        });
        if !filter.status.is_empty() {
            match serde_json::from_value::<RunStatus>(serde_json::Value::String(
                filter.status.clone(),
            )) {
                Ok(status) => query.status = Some(status),
                Err(_) => problems.push(format!(
                    "status `{}` is unknown ({}); showing every status",
                    filter.status,
                    STATUSES.join(", ")
                )),
            }
        }
        if !filter.trigger.is_empty() {
            match Trigger::KINDS.contains(&filter.trigger.as_str()) {
                true => query.trigger = Some(filter.trigger.clone()),
                false => problems.push(format!(
                    "trigger `{}` is unknown ({}); showing every trigger",
                    filter.trigger,
                    Trigger::KINDS.join(", ")
                )),
            }
        }
        if !filter.before.is_empty() {
            match RunId::parse(&filter.before) {
                Some(id) => query.before = Some(id),
                None => problems.push(format!(
                    "`before={}` is not a run id; showing the newest runs",
                    filter.before
                )),
            }
        }
        let paged = query.before.is_some();
        let (mut runs, unanswered, error) = match node.cluster_runs(query).await {
            Ok((runs, unanswered)) => (runs, unanswered, None),
            Err(e) => (Vec::new(), Vec::new(), Some(e)),
        };
        let older = (runs.len() > RUNS_PAGE).then(|| {
            runs.truncate(RUNS_PAGE);
            let last = runs.last().map(|r| r.id.to_string()).unwrap_or_default();
            filter.query_with_before(&last, one_task)
        });
        let nodes = node_names(node);
        let now = Utc::now();
        let summary = one_task
            .then(|| {
                let mut stats = RunStats::default();
                for run in &runs {
                    stats.add(run);
                }
                stats
                    .tasks
                    .iter()
                    .next()
                    .map(|(id, t)| TaskLine::of(&id.0, t))
            })
            .flatten()
            .filter(|line| !line.spark.bars.is_empty());
        Self {
            summary,
            problems,
            runs: runs.iter().map(|r| RunSummary::of(r, now)).collect(),
            unanswered,
            error,
            older,
            paged,
            one_task,
            nodes,
            statuses: STATUSES,
            triggers: Trigger::KINDS,
            filter,
        }
    }
}

impl HistoryFilter {
    /// This filter's query string with the page cursor `before`.
    fn query_with_before(&self, before: &str, one_task: bool) -> String {
        let task = if one_task { "" } else { self.task.trim() };
        let parts: Vec<String> = [
            ("task", task),
            ("status", self.status.as_str()),
            ("node", self.node.as_str()),
            ("trigger", self.trigger.as_str()),
            ("before", before),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let v = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC);
            format!("{k}={v}")
        })
        .collect();
        format!("?{}", parts.join("&"))
    }
}

/// `/runs`: every run of the cluster, filtered.
#[derive(Template, WebTemplate)]
#[template(path = "runs.html")]
pub struct RunsTemplate {
    pub layout: Layout,
    pub history: HistoryView,
}

pub async fn view_runs_get<N: NodeView>(
    State(node): State<N>,
    Query(filter): Query<HistoryFilter>,
    lang: Lang,
) -> RunsTemplate {
    RunsTemplate {
        layout: Layout::new(&node, "runs", lang),
        history: HistoryView::read(&node, filter, None).await,
    }
}
