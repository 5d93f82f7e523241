//! The task list (`/` and `/index`): one page of the tasks a search and filters pick, each a row
//! that expands into its editable panel (fetched from the task's page when first opened, so a
//! page costs the same with ten tasks or a hundred thousand).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};

use super::task_filter::{MODES, STATES, TaskFilter};
use super::view::{Layout, RunSummary, node_names};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::model::{Action, CatchUp, Placement, Run, Task, TaskId, When};
use taskmesh_core::view::DaemonStatus;

/// What a new task's JSON box starts with.
pub const NEW_SPEC: &str = "{\n  \"command\": [\"echo\", \"hello\"],\n  \"dependencies\": [],\n  \"parameters\": {},\n  \"priority\": 0\n}";

/// Offered in the timezone input; any IANA name is accepted.
pub const TIMEZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Paris",
    "Europe/Vienna",
    "Europe/Zurich",
    "Europe/Amsterdam",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Europe/Helsinki",
    "Europe/Moscow",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "America/Toronto",
    "Asia/Tokyo",
    "Asia/Shanghai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Dubai",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Africa/Johannesburg",
];

#[derive(Template, WebTemplate)]
#[template(path = "tasks.html")]
pub struct TasksTemplate {
    pub layout: Layout,
    pub rows: Vec<TaskRow>,
    pub list: ListView,
    /// The panel that "New Task" clones.
    pub new_panel: TaskPanel,
    /// The rule row that "Add rule" clones.
    pub blank_rule: RuleView,
    /// For the "notify" rule argument (task names are looked up as the user types).
    pub channels: Vec<String>,
    pub timezones: &'static [&'static str],
}

/// The search, filters and paging around the rows.
#[derive(Debug, Clone, Default)]
pub struct ListView {
    pub filter: TaskFilter,
    /// What the page could not read in its query.
    pub problems: Vec<String>,
    /// Tasks in the cluster, and how many of them match.
    pub total: usize,
    pub matching: usize,
    /// 1-based position of the first row among the matches, and how many rows there are.
    pub first: usize,
    pub shown: usize,
    /// Query strings of the neighbouring pages.
    pub prev: Option<String>,
    pub next: Option<String>,
    /// Node names the node filter offers.
    pub nodes: Vec<String>,
    /// The labels of the tasks, each once, sorted: what the label filter offers.
    pub labels: Vec<String>,
    pub modes: &'static [&'static str],
    pub states: &'static [&'static str],
}

impl ListView {
    /// "1–50 of 10,000 tasks", "3 of 120 tasks match", "No tasks yet".
    pub fn summary(&self) -> String {
        let total = thousands(self.total);
        let noun = if self.total == 1 { "task" } else { "tasks" };
        if self.matching == 0 {
            return if self.filter.is_active() {
                format!("none of {total} {noun} match")
            } else {
                format!("{total} {noun}")
            };
        }
        let last = self.first + self.shown.max(1) - 1;
        let range = if self.first == 1 && last == self.matching {
            thousands(self.matching)
        } else {
            format!(
                "{}–{} of {}",
                thousands(self.first),
                thousands(last),
                thousands(self.matching)
            )
        };
        match self.filter.is_active() {
            true => format!("{range} matching, of {total} {noun}"),
            false => format!("{range} {noun}"),
        }
    }
}

/// 12345 → "12,345".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One task's row: its summary and its (collapsed) panel.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub labels: Vec<String>,
    /// "manual", "always", "cron */5 * * * * (Europe/Berlin)".
    pub when_text: String,
    pub enabled: bool,
    pub last_run: Option<RunSummary>,
    pub state: StateView,
    /// Where it runs (or ran last).
    pub node: String,
    /// Why no live node can run it, when none can.
    pub unplaceable: Option<String>,
    /// The editable panel, when the page carries it (a task's own page); the list fetches it
    /// when a row is first opened.
    pub panel: Option<TaskPanel>,
}

/// The state cell: running now, crash loop, restarting, or idle.
#[derive(Debug, Clone)]
pub struct StateView {
    pub label: String,
    /// CSS class: running, queued, crash, waiting, idle.
    pub class: &'static str,
    /// Facts beside the label ("2 restarts", "next start in 3 s"), each its own text.
    pub detail: Vec<String>,
    /// The run to link to, when one is active.
    pub run_id: Option<String>,
}

/// The editable panel, as the form shows it.
#[derive(Debug, Clone)]
pub struct TaskPanel {
    /// Unique within the page; names the radio group.
    pub key: String,
    /// Empty for a task not saved yet.
    pub id: String,
    pub name: String,
    pub description: String,
    /// The labels as the input shows them: separated by spaces.
    pub labels_text: String,
    pub spec_text: String,
    /// The task declares parameters: Execute now can be given others for one run.
    pub has_parameters: bool,
    /// manual, always or cron.
    pub mode: &'static str,
    pub schedule: String,
    pub timezone: String,
    /// one, all or none.
    pub catch_up: &'static str,
    pub placement: &'static str,
    pub rules: Vec<RuleView>,
    pub enabled: bool,
    /// The saved task's `updated_at` (RFC 3339), sent back with Save so that a save over a
    /// change made since is refused; empty for a task not saved yet.
    pub updated_at: String,
}

/// One exit-code rule row.
#[derive(Debug, Clone)]
pub struct RuleView {
    pub on: String,
    /// retry, notify, run or disable.
    pub action: &'static str,
    /// The channel (notify) or task name (run).
    pub arg: String,
}

impl RuleView {
    pub fn blank() -> Self {
        Self {
            on: "!0".into(),
            action: "retry",
            arg: String::new(),
        }
    }
}

pub fn when_text(when: &When) -> String {
    match when {
        When::Manual => "manual".into(),
        When::Always => "always".into(),
        When::Cron {
            schedule, timezone, ..
        } => format!("cron {schedule} ({timezone})"),
    }
}

impl TaskPanel {
    pub fn of(task: &Task) -> Self {
        let (mode, schedule, timezone, catch_up) = match &task.when {
            When::Manual => ("manual", String::new(), "UTC".to_owned(), CatchUp::One),
            When::Always => ("always", String::new(), "UTC".to_owned(), CatchUp::One),
            When::Cron {
                schedule,
                timezone,
                catch_up,
            } => ("cron", schedule.clone(), timezone.clone(), *catch_up),
        };
        Self {
            key: task.id.to_string(),
            id: task.id.to_string(),
            name: task.name.clone(),
            description: task.description.clone(),
            labels_text: task.labels.join(" "),
            spec_text: serde_json::to_string_pretty(&task.spec).unwrap_or_else(|_| "{}".into()),
            has_parameters: !task.spec.parameters.is_empty(),
            mode,
            schedule,
            timezone,
            catch_up: match catch_up {
                CatchUp::One => "one",
                CatchUp::All => "all",
                CatchUp::None => "none",
            },
            placement: match task.placement {
                Placement::One => "one",
                Placement::All => "all",
            },
            rules: task
                .exit_rules
                .iter()
                .map(|rule| {
                    let (action, arg) = match &rule.action {
                        Action::Retry => ("retry", String::new()),
                        Action::Notify { channel } => ("notify", channel.clone()),
                        Action::Run { task } => ("run", task.clone()),
                        Action::Disable => ("disable", String::new()),
                    };
                    RuleView {
                        on: rule.on.to_string(),
                        action,
                        arg,
                    }
                })
                .collect(),
            enabled: task.enabled,
            updated_at: task
                .updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }
    }

    /// What "New Task" appends.
    pub fn blank() -> Self {
        Self {
            key: "new".into(),
            id: String::new(),
            name: String::new(),
            description: String::new(),
            labels_text: String::new(),
            spec_text: NEW_SPEC.into(),
            has_parameters: false,
            mode: "manual",
            schedule: "*/5 * * * *".into(),
            timezone: "UTC".into(),
            catch_up: "one",
            placement: "one",
            rules: Vec::new(),
            enabled: true,
            updated_at: String::new(),
        }
    }
}

impl TaskRow {
    /// A row from the task, its newest run, its active run on this node and its supervision.
    pub fn new(
        task: &Task,
        last: Option<&Run>,
        active: Option<&Run>,
        daemon: Option<&DaemonStatus>,
        now: DateTime<Utc>,
    ) -> Self {
        let last_run = last.map(|run| RunSummary::of(run, now));
        let restarts = |d: &DaemonStatus| match d.restarts {
            0 => None,
            1 => Some("1 restart".to_owned()),
            n => Some(format!("{n} restarts")),
        };
        let state = match (active, daemon) {
            (Some(run), daemon) => StateView {
                label: if run.status.as_str() == "queued" {
                    "queued".into()
                } else {
                    "running now".into()
                },
                class: if run.status.as_str() == "queued" {
                    "queued"
                } else {
                    "running"
                },
                detail: daemon.and_then(restarts).into_iter().collect(),
                run_id: Some(run.id.to_string()),
            },
            (None, Some(d)) if d.crash_loop => StateView {
                label: "crash loop".into(),
                class: "crash",
                detail: restarts(d)
                    .into_iter()
                    .chain(
                        d.restart_in_ms
                            .map(|ms| format!("next start in {}", wait(ms))),
                    )
                    .collect(),
                run_id: None,
            },
            (None, Some(d)) if d.restart_in_ms.is_some() => StateView {
                label: "restarting".into(),
                class: "waiting",
                detail: vec![format!("in {}", wait(d.restart_in_ms.unwrap_or(0)))],
                run_id: None,
            },
            _ => StateView {
                label: "idle".into(),
                class: "idle",
                detail: Vec::new(),
                run_id: None,
            },
        };
        Self {
            id: task.id.to_string(),
            name: task.name.clone(),
            description: task.description.clone(),
            labels: task.labels.clone(),
            when_text: when_text(&task.when),
            enabled: task.enabled,
            node: active.or(last).map(|r| r.node.clone()).unwrap_or_default(),
            unplaceable: None,
            last_run,
            state,
            panel: None,
        }
    }
}

fn wait(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{} s", ms.div_ceil(1000))
    }
}

pub async fn view_tasks_get<N: NodeView>(
    State(node): State<N>,
    Query(filter): Query<TaskFilter>,
    lang: Lang,
) -> TasksTemplate {
    let tasks = node.tasks();
    let active = node.active_runs();
    let daemons = node.daemons();
    let now = Utc::now();
    let mut running: HashMap<&TaskId, &Run> = HashMap::new();
    for run in &active {
        running.entry(&run.task_id).or_insert(run);
    }
    let active_ids: HashSet<TaskId> = running.keys().map(|id| (*id).clone()).collect();
    let page = filter.page(&tasks, &active_ids, |id| node.last_run(id));
    let unplaceable = node.why_unplaceable(&page.tasks);
    let mut rows = Vec::with_capacity(page.tasks.len());
    for (task, unplaceable) in page.tasks.iter().zip(unplaceable) {
        // The newest run anywhere, from the cluster's run ledger (each node reports its runs
        // there as they change; unfinished ones are in `active` already).
        let last = node.last_run(&task.id);
        let running = running.get(&task.id).copied();
        let mut row = TaskRow::new(task, last.as_ref(), running, daemons.get(&task.id), now);
        row.unplaceable = unplaceable;
        rows.push(row);
    }
    let shown = rows.len();
    let nodes = node_names(&node);
    let labels: std::collections::BTreeSet<&String> =
        tasks.iter().flat_map(|t| t.labels.iter()).collect();
    let labels = labels.into_iter().cloned().collect();
    TasksTemplate {
        layout: Layout::new(&node, "tasks", lang),
        channels: node.channels(),
        rows,
        list: ListView {
            problems: filter.problems(),
            total: tasks.len(),
            matching: page.matching,
            first: page.first,
            shown,
            prev: page.prev,
            next: page.next,
            nodes,
            labels,
            modes: MODES,
            states: STATES,
            filter,
        },
        new_panel: TaskPanel::blank(),
        blank_rule: RuleView::blank(),
        timezones: TIMEZONES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::{self, EVIL};
    use taskmesh_core::model::{ExitRule, RunStatus, Spec, TaskId};

    fn task(name: &str, when: When) -> Task {
        Task {
            id: TaskId(format!("t-{name}")),
            name: name.into(),
            description: String::new(),
            labels: Vec::new(),
            spec: Spec {
                shell: Some("echo hi".into()),
                dependencies: vec!["python3".into()],
                ..Spec::default()
            },
            when,
            placement: Placement::One,
            exit_rules: vec![
                ExitRule {
                    on: "!0".parse().expect("match"),
                    action: Action::Retry,
                },
                ExitRule {
                    on: "1-5".parse().expect("match"),
                    action: Action::Notify {
                        channel: "ops".into(),
                    },
                },
            ],
            enabled: true,
            updated_at: sample::now(),
        }
    }

    fn page(rows: Vec<TaskRow>) -> String {
        TasksTemplate {
            layout: Layout::named("node-a", "tasks"),
            list: ListView {
                total: rows.len(),
                matching: rows.len(),
                first: 1,
                shown: rows.len(),
                ..ListView::default()
            },
            channels: vec!["ops".into()],
            rows,
            new_panel: TaskPanel::blank(),
            blank_rule: RuleView::blank(),
            timezones: TIMEZONES,
        }
        .render()
        .expect("render")
    }

    #[test]
    fn a_row_shows_its_labels_as_filter_links_and_its_description_escaped() {
        let mut t = task("backup", When::Manual);
        t.labels = vec!["team=ops".into()];
        t.description = EVIL.into();
        let html = page(vec![TaskRow::new(&t, None, None, None, sample::now())]);
        assert!(html.contains(r#"href="?label=team%3Dops""#), "{html}");
        assert!(!html.contains(EVIL), "the description is escaped");
        let plain = page(vec![TaskRow::new(
            &task("plain", When::Manual),
            None,
            None,
            None,
            sample::now(),
        )]);
        assert!(!plain.contains("class=\"labels\"") && !plain.contains("class=\"description"));
    }

    #[test]
    fn renders_rows_panels_and_controls() {
        let now = sample::now();
        let backup = task(
            "backup",
            When::Cron {
                schedule: "*/5 * * * *".into(),
                timezone: "Europe/Berlin".into(),
                catch_up: CatchUp::All,
            },
        );
        let last = sample::run("backup", RunStatus::Failed);
        let mut backup_row = TaskRow::new(&backup, Some(&last), None, None, now);
        backup_row.panel = Some(TaskPanel::of(&backup));
        let daemon = task("web", When::Always);
        let crash = DaemonStatus {
            restarts: 7,
            quick_exits: 5,
            crash_loop: true,
            restart_in_ms: Some(4000),
            ..DaemonStatus::default()
        };
        let html = page(vec![
            backup_row,
            TaskRow::new(&daemon, None, None, Some(&crash), now),
        ]);
        for needle in [
            "id=\"new-task\"",
            ">New Task<",
            "id=\"task-t-backup\"",
            ">backup<",
            "cron */5 * * * * (Europe/Berlin)",
            "href=\"/runs/0123456789abcdef0123456789abcdef\"",
            "badge s-failed",
            "crash loop",
            "7 restarts",
            "value=\"manual\"",
            "value=\"always\"",
            "value=\"cron\"",
            "@reboot",
            "id=\"tz-list\"",
            "<option value=\"Europe/Berlin\">",
            "value=\"1-5\"",
            "value=\"ops\"",
            "Add rule",
            ">Save<",
            ">Execute now<",
            ">Remove<",
            "node-a",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        // The cron panel has its cron radio checked and catch-up "all" selected.
        assert!(html.contains("value=\"cron\" checked"), "cron checked");
        assert!(html.contains("<option value=\"all\" selected>"), "catch-up");
        // The spec is pretty JSON in the text box (quotes escaped for HTML).
        assert!(
            html.contains("&#34;shell&#34;: &#34;echo hi&#34;"),
            "spec text"
        );
    }

    #[test]
    fn user_text_is_escaped() {
        let mut evil = task(EVIL, When::Manual);
        evil.spec.shell = Some(EVIL.into());
        evil.exit_rules[1].action = Action::Run { task: EVIL.into() };
        let mut row = TaskRow::new(&evil, None, None, None, sample::now());
        row.panel = Some(TaskPanel::of(&evil));
        let html = page(vec![row]);
        assert!(!html.contains(EVIL), "raw user text in the page");
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    }

    #[test]
    fn a_task_no_node_can_run_says_why() {
        let mut row = TaskRow::new(&Task::sample("t", "train"), None, None, None, sample::now());
        row.unplaceable = Some(format!("no live node has {EVIL}"));
        let html = page(vec![row]);
        assert!(
            html.contains("class=\"field-error small unplaceable\">no live node has "),
            "{html}"
        );
        assert!(!html.contains(EVIL), "escaped");
    }

    #[test]
    fn an_empty_list_invites_a_new_task() {
        let html = page(Vec::new());
        assert!(html.contains("No tasks yet"));
        assert!(html.contains("id=\"new-task-template\""));
    }
}
