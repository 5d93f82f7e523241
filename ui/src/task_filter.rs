//! Which tasks the list shows: a search by name, filters by mode, state, node and label, and one page
//! of the matches, oldest first, with links to the pages before and after it.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use taskmesh_core::model::{Run, RunStatus, Task, TaskId, When};

/// How many tasks one page of the list shows.
pub const PAGE: usize = 50;

/// The list's query string. Empty values mean "any"; every value the page cannot read is named
/// in [`TaskFilter::problems`] and ignored, so a stale bookmark still shows the list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TaskFilter {
    /// Part of the name, any case.
    pub q: String,
    /// manual, always or cron.
    pub mode: String,
    /// enabled, disabled, active (queued or running now) or failed (the last run did not
    /// succeed).
    pub state: String,
    /// The node the task runs or last ran on.
    pub node: String,
    /// One of the task's labels.
    pub label: String,
    /// The id of the last task of the previous page.
    pub after: Option<String>,
    /// The id of the first task of the next page.
    pub before: Option<String>,
}

pub const MODES: &[&str] = &["manual", "always", "cron"];
pub const STATES: &[&str] = &["enabled", "disabled", "active", "failed"];

/// What a task is matched by beyond itself: its newest run and whether one is unfinished.
pub struct Facts<'a> {
    pub last_run: Option<&'a Run>,
    pub active: bool,
}

/// One page of the matching tasks.
pub struct TaskPage {
    pub tasks: Vec<Arc<Task>>,
    /// How many tasks match in all.
    pub matching: usize,
    /// 1-based position of the page's first task among the matches (0 when there is none).
    pub first: usize,
    /// The query strings of the neighbouring pages, when there are any.
    pub prev: Option<String>,
    pub next: Option<String>,
}

impl TaskFilter {
    /// Whether a filter (not only paging) is set.
    pub fn is_active(&self) -> bool {
        !(self.q.trim().is_empty()
            && self.mode.is_empty()
            && self.state.is_empty()
            && self.node.is_empty()
            && self.label.is_empty())
    }

    /// What the page cannot read in the query, in plain words.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.mode.is_empty() && !MODES.contains(&self.mode.as_str()) {
            problems.push(format!(
                "mode `{}` is unknown (manual, always or cron); showing every mode",
                self.mode
            ));
        }
        if !self.state.is_empty() && !STATES.contains(&self.state.as_str()) {
            problems.push(format!(
                "state `{}` is unknown (enabled, disabled, active or failed); showing every state",
                self.state
            ));
        }
        problems
    }

    pub fn matches(&self, task: &Task, facts: &Facts) -> bool {
        let q = self.q.trim();
        if !q.is_empty() && !contains_ignoring_case(&task.name, q) {
            return false;
        }
        let mode_ok = match self.mode.as_str() {
            "manual" => matches!(task.when, When::Manual),
            "always" => matches!(task.when, When::Always),
            "cron" => matches!(task.when, When::Cron { .. }),
            _ => true,
        };
        let state_ok = match self.state.as_str() {
            "enabled" => task.enabled,
            "disabled" => !task.enabled,
            "active" => facts.active,
            "failed" => facts.last_run.is_some_and(|r| {
                r.status.is_final()
                    && !matches!(r.status, RunStatus::Succeeded | RunStatus::Skipped)
            }),
            _ => true,
        };
        let node_ok = self.node.is_empty() || facts.last_run.is_some_and(|r| r.node == self.node);
        let label_ok = self.label.is_empty() || task.labels.contains(&self.label);
        mode_ok && state_ok && node_ok && label_ok
    }

    /// Whether matching needs each task's newest run (an index read per task).
    pub fn needs_runs(&self) -> bool {
        self.state == "failed" || !self.node.is_empty()
    }

    /// The page of `tasks` (oldest first) this filter asks for.
    pub fn page(
        &self,
        tasks: &[Arc<Task>],
        active: &HashSet<TaskId>,
        last_run: impl Fn(&TaskId) -> Option<Run>,
    ) -> TaskPage {
        let needs_runs = self.needs_runs();
        let matching: Vec<&Arc<Task>> = tasks
            .iter()
            .filter(|task| {
                let last = needs_runs.then(|| last_run(&task.id)).flatten();
                let facts = Facts {
                    last_run: last.as_ref(),
                    active: active.contains(&task.id),
                };
                self.matches(task, &facts)
            })
            .collect();
        // Ids are time-ordered and so is the list: a cursor is a position among the matches.
        let (start, end) = match (&self.after, &self.before) {
            (Some(after), _) => {
                let start = matching.partition_point(|t| t.id.0.as_str() <= after.as_str());
                (start, (start + PAGE).min(matching.len()))
            }
            (None, Some(before)) => {
                let end = matching.partition_point(|t| t.id.0.as_str() < before.as_str());
                (end.saturating_sub(PAGE), end)
            }
            (None, None) => (0, PAGE.min(matching.len())),
        };
        let page: Vec<Arc<Task>> = matching[start..end].iter().map(|t| Arc::clone(t)).collect();
        let prev = (start > 0)
            .then(|| page.first())
            .flatten()
            .map(|t| self.link_with("before", &t.id.0));
        let next = (end < matching.len())
            .then(|| page.last())
            .flatten()
            .map(|t| self.link_with("after", &t.id.0));
        TaskPage {
            first: if page.is_empty() { 0 } else { start + 1 },
            matching: matching.len(),
            tasks: page,
            prev,
            next,
        }
    }

    /// The query string of this filter with a cursor.
    fn link_with(&self, cursor: &str, id: &str) -> String {
        let mut parts: Vec<(&str, &str)> = [
            ("q", self.q.trim()),
            ("mode", self.mode.as_str()),
            ("state", self.state.as_str()),
            ("node", self.node.as_str()),
            ("label", self.label.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        parts.push((cursor, id));
        let encoded: Vec<String> = parts
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("?{}", encoded.join("&"))
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    if haystack.is_ascii() && needle.is_ascii() {
        haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    } else {
        haystack.to_lowercase().contains(&needle.to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample;

    fn tasks(n: usize) -> Vec<Arc<Task>> {
        (0..n)
            .map(|i| Arc::new(Task::sample(&format!("id-{i:04}"), &format!("task-{i:04}"))))
            .collect()
    }

    fn names(page: &TaskPage) -> Vec<&str> {
        page.tasks.iter().map(|t| t.name.as_str()).collect()
    }

    fn query(s: &str) -> TaskFilter {
        serde_urlencoded::from_str(s.trim_start_matches('?')).expect("query")
    }

    #[test]
    fn pages_forward_and_back_keep_the_filter() {
        let all = tasks(120);
        let none = HashSet::new();
        let filter = TaskFilter::default();
        let one = filter.page(&all, &none, |_| None);
        assert_eq!((one.first, one.matching, one.tasks.len()), (1, 120, PAGE));
        assert!(one.prev.is_none());
        let two = query(one.next.as_deref().expect("next")).page(&all, &none, |_| None);
        assert_eq!(names(&two)[0], "task-0050");
        assert_eq!(two.first, 51);
        let three = query(two.next.as_deref().expect("next")).page(&all, &none, |_| None);
        assert_eq!((three.first, three.tasks.len()), (101, 20));
        assert!(three.next.is_none());
        let back = query(three.prev.as_deref().expect("prev")).page(&all, &none, |_| None);
        assert_eq!(names(&back), names(&two));

        // A search keeps its words across pages.
        let searched = query("q=TASK-00");
        let page = searched.page(&all, &none, |_| None);
        assert_eq!(page.matching, 100);
        let next = page.next.expect("next");
        assert!(next.starts_with("?q=TASK%2D00&after="), "{next}");
        assert_eq!(
            names(&query(&next).page(&all, &none, |_| None))[0],
            "task-0050"
        );
    }

    #[test]
    fn filters_by_mode_state_and_node() {
        let mut all = tasks(4);
        Arc::make_mut(&mut all[1]).when = When::Always;
        Arc::make_mut(&mut all[2]).enabled = false;
        let active: HashSet<TaskId> = [all[3].id.clone()].into();
        let mut failed = sample::run("task-0000", RunStatus::Failed);
        failed.node = "node-b".into();
        let last = |id: &TaskId| (id == &all[0].id).then(|| failed.clone());
        let pick = |q: &str| {
            names(&query(q).page(&all, &active, last))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(pick("mode=always"), ["task-0001"]);
        assert_eq!(pick("state=disabled"), ["task-0002"]);
        assert_eq!(pick("state=active"), ["task-0003"]);
        assert_eq!(pick("state=failed"), ["task-0000"]);
        assert_eq!(pick("node=node-b"), ["task-0000"]);
        assert_eq!(pick("mode=manual&state=enabled").len(), 2);
        assert_eq!(pick("q=0002"), ["task-0002"]);
        assert!(pick("q=nothing").is_empty());
    }

    #[test]
    fn unknown_values_are_named_and_ignored() {
        let filter = query("mode=hourly&state=odd");
        let problems = filter.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`hourly`"), "{problems:?}");
        assert_eq!(
            filter.page(&tasks(3), &HashSet::new(), |_| None).matching,
            3
        );
    }
}
