//! The dashboard (`/dashboard`): the last 24 hours of the whole cluster (runs, failures,
//! success rate, mean duration), what runs now and where, the next cron runs with a countdown,
//! the nodes and their load, and per task that ran a sparkline of its last 50 durations.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use chrono::{DateTime, Duration, Utc};

use super::activity::Change;
use super::view::{Layout, Moment, RunSummary, duration};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::cron::Schedule;
use taskmesh_core::model::{RunStatus, When};
use taskmesh_core::view::{RunStats, TaskRunStats};

/// How far back the figures look.
pub const WINDOW_HOURS: i64 = 24;
/// How many next cron runs and task rows the page shows.
const NEXT_RUNS: usize = 10;
const TASK_ROWS: usize = 20;

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
pub struct DashboardTemplate {
    pub layout: Layout,
    pub figures: Figures,
    pub running: Vec<RunSummary>,
    pub next: Vec<NextRun>,
    pub nodes: Vec<NodeLoad>,
    pub tasks: Vec<TaskLine>,
    /// Nodes whose runs the figures lack.
    pub unanswered: Vec<String>,
    pub error: Option<String>,
    /// The newest changes operators made.
    pub changes: Vec<Change>,
}

/// How many changes the dashboard lists.
const CHANGES: usize = 10;

impl DashboardTemplate {
    /// The notice naming the nodes whose runs are not counted.
    pub fn not_counted(&self) -> String {
        format!(
            "Not counted: the runs of {}, which did not answer in time.",
            self.unanswered.join(", ")
        )
    }
}

/// The headline figures of the window.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub runs: u64,
    pub failed: u64,
    /// "97.5 %", or "—" before any run finished.
    pub success_rate: String,
    pub mean_duration: String,
    /// The figures are lower bounds (a node stopped counting at its cap).
    pub capped: bool,
}

impl Figures {
    fn of(stats: &RunStats) -> Self {
        Self {
            runs: stats.runs,
            failed: stats.failed,
            success_rate: percent(stats.success_rate()),
            mean_duration: stats
                .mean_duration_ms()
                .map(|ms| duration(Duration::milliseconds(ms as i64)))
                .unwrap_or_else(|| "—".into()),
            capped: stats.capped,
        }
    }
}

fn percent(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r >= 99.95 || r == 0.0 => format!("{r:.0} %"),
        Some(r) => format!("{r:.1} %"),
        None => "—".into(),
    }
}

/// A cron task's next slot.
#[derive(Debug, Clone)]
pub struct NextRun {
    pub task_id: String,
    pub task_name: String,
    pub at: Moment,
}

/// A node as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct NodeLoad {
    pub name: String,
    pub this_node: bool,
    pub running: u32,
    pub slots: u32,
    /// The 1-minute load average per core, e.g. "0.42".
    pub load: String,
}

/// A task that ran in the window: its counts and a sparkline of its newest durations.
#[derive(Debug, Clone)]
pub struct TaskLine {
    pub task_id: String,
    pub name: String,
    pub runs: u64,
    pub failed: u64,
    pub success_rate: String,
    pub mean_duration: String,
    pub spark: Sparkline,
}

/// Bars of run durations, oldest left, drawn as SVG by the template.
#[derive(Debug, Clone, Default)]
pub struct Sparkline {
    pub bars: Vec<Bar>,
    /// What the picture says, for screen readers and the tooltip.
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub height: u32,
    /// ok, bad or warn.
    pub class: &'static str,
}

impl Sparkline {
    pub const WIDTH: u32 = 150;
    pub const HEIGHT: u32 = 28;

    pub fn of(task: &TaskRunStats) -> Self {
        let runs: Vec<_> = task.recent.iter().rev().collect();
        let Some(max) = runs.iter().map(|r| r.duration_ms).max() else {
            return Self::default();
        };
        let step = Self::WIDTH / TaskRunStats::RECENT as u32;
        let bars = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let height = match max {
                    0 => 2,
                    max => (run.duration_ms * u64::from(Self::HEIGHT - 2) / max) as u32 + 2,
                };
                Bar {
                    x: i as u32 * step,
                    y: Self::HEIGHT - height,
                    height,
                    class: match run.status {
                        RunStatus::Succeeded => "ok",
                        RunStatus::TimedOut | RunStatus::Killed => "warn",
                        _ => "bad",
                    },
                }
            })
            .collect();
        let min = runs.iter().map(|r| r.duration_ms).min().unwrap_or(0);
        let ms = |ms: u64| duration(Duration::milliseconds(ms as i64));
        Self {
            bars,
            label: format!(
                "durations of the last {} runs: {} to {}",
                runs.len(),
                ms(min),
                ms(max)
            ),
        }
    }

    pub fn bar_width(&self) -> u32 {
        Self::WIDTH / TaskRunStats::RECENT as u32 - 1
    }
}

impl TaskLine {
    pub fn of(id: &str, task: &TaskRunStats) -> Self {
        let finished = task.succeeded + task.failed;
        let rate = (finished > 0).then(|| task.succeeded as f64 * 100.0 / finished as f64);
        let timed: Vec<u64> = task.recent.iter().map(|r| r.duration_ms).collect();
        let mean = (!timed.is_empty()).then(|| timed.iter().sum::<u64>() / timed.len() as u64);
        Self {
            task_id: id.to_owned(),
            name: task.name.clone(),
            runs: task.runs,
            failed: task.failed,
            success_rate: percent(rate),
            mean_duration: mean
                .map(|ms| duration(Duration::milliseconds(ms as i64)))
                .unwrap_or_else(|| "—".into()),
            spark: Sparkline::of(task),
        }
    }
}

/// The soonest next slots of the enabled cron tasks.
pub fn next_runs(node: &impl NodeView, now: DateTime<Utc>, count: usize) -> Vec<NextRun> {
    let mut next: Vec<(DateTime<Utc>, String, String)> = node
        .tasks()
        .iter()
        .filter(|t| t.enabled)
        .filter_map(|t| match &t.when {
            When::Cron {
                schedule, timezone, ..
            } => {
                let at = Schedule::parse(schedule, timezone).ok()?.next_after(now)?;
                Some((at, t.id.to_string(), t.name.clone()))
            }
            _ => None,
        })
        .collect();
    next.sort();
    next.into_iter()
        .take(count)
        .map(|(at, task_id, task_name)| NextRun {
            task_id,
            task_name,
            at: Moment::new(at, now),
        })
        .collect()
}

pub async fn view_dashboard_get<N: NodeView>(
    State(node): State<N>,
    lang: Lang,
) -> DashboardTemplate {
    let now = Utc::now();
    let since = now - Duration::hours(WINDOW_HOURS);
    let (stats, unanswered, error) = match node.cluster_stats(since).await {
        Ok((stats, unanswered)) => (stats, unanswered, None),
        Err(e) => (RunStats::since(since), Vec::new(), Some(e)),
    };
    let mut lines: Vec<TaskLine> = stats
        .tasks
        .iter()
        .map(|(id, task)| TaskLine::of(&id.0, task))
        .collect();
    lines.sort_by(|a, b| (b.failed, b.runs, &a.name).cmp(&(a.failed, a.runs, &b.name)));
    lines.truncate(TASK_ROWS);
    let peers = node.peers();
    let mut nodes = vec![NodeLoad {
        name: peers.this.name.clone(),
        this_node: true,
        running: 0,
        slots: node.node_settings().slots,
        load: String::new(),
    }];
    nodes.extend(peers.peers.iter().map(|p| NodeLoad {
        name: p.announcement.name.clone(),
        this_node: false,
        running: p.announcement.running,
        slots: p.announcement.slots_total,
        load: format!("{:.2}", p.announcement.load),
    }));
    let running: Vec<RunSummary> = node
        .active_runs()
        .iter()
        .map(|r| RunSummary::of(r, now))
        .collect();
    if let Some(this) = nodes.first_mut() {
        this.running = running.iter().filter(|r| r.node == this.name).count() as u32;
    }
    DashboardTemplate {
        layout: Layout::new(&node, "dashboard", lang),
        figures: Figures::of(&stats),
        running,
        next: next_runs(&node, now, NEXT_RUNS),
        nodes,
        tasks: lines,
        unanswered,
        error,
        changes: super::activity::changes(&node, CHANGES),
    }
}
