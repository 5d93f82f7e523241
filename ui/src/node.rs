//! The node page (`/node`), the "client" view: what this node is, fulfils, which tasks it can
//! run and why not the others, its own settings, what it runs now and ran before, how its
//! always-tasks are doing, and settings export/import.

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use chrono::{DateTime, Utc};

use super::settings::{ClusterKeyView, Dependencies};
use super::view::{Layout, Moment, RunSummary, bytes};
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::model::{Run, TaskId};
use taskmesh_core::view::DaemonStatus;
use taskmesh_core::view::RunQuery;
use taskmesh_core::view::SinkStatus;

/// Runs shown under "ran before".
const RECENT: usize = 50;

#[derive(Template, WebTemplate)]
#[template(path = "node.html")]
pub struct NodeTemplate {
    pub layout: Layout,
    pub info: NodeInfo,
    pub deps: Dependencies,
    pub active: Vec<RunSummary>,
    pub recent: Vec<RunSummary>,
    pub daemons: Vec<DaemonRow>,
    pub key: ClusterKeyView,
    pub sink: SinkView,
    pub tasks: TaskFit,
    /// This node's own settings as JSON, secrets masked.
    pub settings_json: String,
}

impl NodeTemplate {
    /// Under a shortened list: how many it leaves out.
    pub fn more(&self, n: usize) -> String {
        format!("and {n} more")
    }

    pub fn recent_note(&self) -> String {
        format!("the last {} runs on this node", self.recent.len())
    }
}

/// Which tasks this node can run by its dependencies, and what it lacks for the others.
#[derive(Debug, Clone, Default)]
pub struct TaskFit {
    pub can: usize,
    pub cannot: usize,
    /// The first [`FIT_SHOWN`] of each.
    pub runnable: Vec<(String, String)>,
    pub lacking: Vec<(String, String, String)>,
}

/// Tasks listed under each side of [`TaskFit`].
pub const FIT_SHOWN: usize = 50;

impl TaskFit {
    pub fn of(node: &impl NodeView) -> Self {
        let have = node.node_settings().fulfilled();
        let mut fit = Self::default();
        for task in node.tasks() {
            let missing: Vec<&str> = task
                .spec
                .dependencies
                .iter()
                .filter(|d| !have.contains(d))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                fit.can += 1;
                if fit.runnable.len() < FIT_SHOWN {
                    fit.runnable.push((task.id.to_string(), task.name.clone()));
                }
            } else {
                fit.cannot += 1;
                if fit.lacking.len() < FIT_SHOWN {
                    fit.lacking
                        .push((task.id.to_string(), task.name.clone(), missing.join(", ")));
                }
            }
        }
        fit
    }
}

/// The MySQL sink's card: where runs go, how many wait, what failed last.
#[derive(Debug, Clone)]
pub struct SinkView {
    /// `user@host:port/database`, or None when `cluster.mysql` is not set.
    pub target: Option<String>,
    pub pending: u64,
    pub failing: bool,
    pub delivered: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<Moment>,
}

impl SinkView {
    pub fn of(status: &SinkStatus, now: DateTime<Utc>) -> Self {
        Self {
            target: status.target.clone(),
            pending: status.pending,
            failing: status.failing,
            delivered: status.delivered,
            last_error: status.last_error.clone(),
            last_error_at: status.last_error_at.map(|at| Moment::new(at, now)),
        }
    }
}

/// Facts about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub version: String,
    pub started: Moment,
    pub listen: String,
    pub data_dir: String,
    pub log_path: String,
    pub log_usage: String,
    pub slots: u32,
    pub peers: Vec<String>,
    /// Drained by an operator: the leader places no new run here.
    pub drained: bool,
}

/// One always-task's supervision on this node.
#[derive(Debug, Clone)]
pub struct DaemonRow {
    pub task_id: String,
    pub task_name: String,
    pub run_id: Option<String>,
    pub restarts: u32,
    pub quick_exits: u32,
    pub crash_loop: bool,
    /// "in 3 s" when a restart is pending.
    pub restart_in: String,
}

impl DaemonRow {
    pub fn of(id: &TaskId, name: Option<&str>, status: &DaemonStatus) -> Self {
        Self {
            task_id: id.to_string(),
            task_name: name.unwrap_or("(removed task)").to_owned(),
            run_id: status.run.as_ref().map(ToString::to_string),
            restarts: status.restarts,
            quick_exits: status.quick_exits,
            crash_loop: status.crash_loop,
            restart_in: status
                .restart_in_ms
                .map(|ms| format!("in {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default(),
        }
    }
}

impl DaemonRow {
    pub fn run_short(&self) -> &str {
        let id = self.run_id.as_deref().unwrap_or("");
        id.get(..8).unwrap_or(id)
    }
}

/// The runs of `node_name` among `runs` (newest first), at most [`RECENT`].
pub fn recent_runs(runs: &[Run], node_name: &str, now: DateTime<Utc>) -> Vec<RunSummary> {
    runs.iter()
        .filter(|r| r.node == node_name && r.status.is_final())
        .take(RECENT)
        .map(|r| RunSummary::of(r, now))
        .collect()
}

pub async fn view_node_get<N: NodeView>(State(node): State<N>, lang: Lang) -> NodeTemplate {
    let now = Utc::now();
    let settings = node.node_settings();
    let history = node
        .runs(RunQuery {
            task: None,
            before: None,
            limit: RECENT * 4,
            ..RunQuery::default()
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the run history");
            Vec::new()
        });
    let tasks = node.tasks();
    let names: BTreeMap<&TaskId, &str> = tasks.iter().map(|t| (&t.id, t.name.as_str())).collect();
    let health = node.health();
    let places = node.places();
    NodeTemplate {
        layout: Layout::new(&node, "node", lang),
        info: NodeInfo {
            name: settings.name.clone(),
            version: health.version,
            started: Moment::new(health.started_at, now),
            listen: places.listen,
            data_dir: places.data_dir,
            log_path: places.log_path,
            log_usage: bytes(node.log_disk_usage().await),
            slots: settings.slots,
            peers: settings.peers.clone(),
            drained: node
                .peers()
                .cluster
                .members
                .iter()
                .any(|m| m.this_node && m.drained),
        },
        deps: Dependencies::of(&settings),
        active: node
            .active_runs()
            .iter()
            .filter(|r| r.node == settings.name)
            .map(|r| RunSummary::of(r, now))
            .collect(),
        recent: recent_runs(&history, &settings.name, now),
        daemons: node
            .daemons()
            .iter()
            .map(|(id, status)| DaemonRow::of(id, names.get(id).copied(), status))
            .collect(),
        key: ClusterKeyView::of(&node),
        sink: SinkView::of(&node.sink_status(), now),
        tasks: TaskFit::of(&node),
        settings_json: serde_json::to_string_pretty(&node.settings(false).node).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::{self, EVIL};
    use taskmesh_core::model::{NodeSettings, RunStatus};

    fn page(name: &str, runs: Vec<Run>, daemons: Vec<DaemonRow>) -> String {
        page_with(name, runs, daemons, SinkStatus::default())
    }

    fn page_with(name: &str, runs: Vec<Run>, daemons: Vec<DaemonRow>, sink: SinkStatus) -> String {
        let now = sample::now();
        let active = runs
            .iter()
            .filter(|r| !r.status.is_final())
            .map(|r| RunSummary::of(r, now))
            .collect();
        NodeTemplate {
            layout: Layout::named(name, "node"),
            info: NodeInfo {
                name: name.into(),
                version: "0.1.0".into(),
                started: Moment::new(now - chrono::Duration::hours(3), now),
                listen: "127.0.0.1:8080".into(),
                data_dir: "/var/lib/taskmesh".into(),
                log_path: "/var/lib/taskmesh/logs".into(),
                log_usage: bytes(3 << 20),
                slots: 8,
                peers: vec!["10.0.0.2:7946".into()],
                drained: name == "drained-node",
            },
            deps: Dependencies::of(&NodeSettings {
                dependencies: vec!["gpu=nvidia".into()],
                ..NodeSettings::default()
            }),
            active,
            recent: recent_runs(&runs, "node-a", now),
            daemons,
            key: ClusterKeyView {
                fingerprint: Some("a1b2c3".into()),
                peer_id: Some("12D3KooW".into()),
            },
            sink: SinkView::of(&sink, now),
            tasks: TaskFit {
                can: 1,
                cannot: 1,
                runnable: vec![("t-web".into(), "web".into())],
                lacking: vec![("t-train".into(), "train".into(), "gpu=amd".into())],
            },
            settings_json: "{\"name\": \"node-a\"}".into(),
        }
        .render()
        .expect("render")
    }

    #[test]
    fn renders_facts_runs_and_supervision() {
        let mut running = sample::run("web", RunStatus::Running);
        running.id = taskmesh_core::model::RunId("f".repeat(32));
        let done = sample::run("backup", RunStatus::Succeeded);
        let daemon = DaemonRow::of(
            &TaskId("t-web".into()),
            Some("web"),
            &DaemonStatus {
                restarts: 6,
                quick_exits: 5,
                crash_loop: true,
                restart_in_ms: Some(1500),
                ..DaemonStatus::default()
            },
        );
        let html = page("node-a", vec![running, done], vec![daemon]);
        for needle in [
            "aria-current=\"page\">Node<",
            "0.1.0",
            "127.0.0.1:8080",
            "/var/lib/taskmesh/logs",
            "3.0 MiB",
            "gpu=nvidia",
            "10.0.0.2:7946",
            "href=\"/runs/ffffffffffffffffffffffffffffffff\"",
            "href=\"/runs/0123456789abcdef0123456789abcdef\"",
            "badge s-succeeded",
            "crash loop",
            "in 1.5 s",
            "href=\"/api/settings/export\"",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn shows_the_mysql_sink() {
        assert!(!page("node-a", vec![], vec![]).contains("node-drained"));
        assert!(page("drained-node", vec![], vec![]).contains("This node is drained"));
        let off = page("node-a", vec![], vec![]);
        assert!(off.contains("MySQL") && off.contains("Not configured"));
        let failing = SinkStatus {
            target: Some("taskmesh@db:3306/ops".into()),
            pending: 42,
            failing: true,
            last_error: Some("connecting to MySQL taskmesh@db:3306/ops: refused".into()),
            last_error_at: Some(sample::now()),
            delivered: 7,
            ..SinkStatus::default()
        };
        let html = page_with("node-a", vec![], vec![], failing);
        for needle in [
            "taskmesh@db:3306/ops",
            "42 runs waiting",
            "retrying",
            "connecting to MySQL taskmesh@db:3306/ops: refused",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn user_text_is_escaped() {
        let mut run = sample::run(EVIL, RunStatus::Failed);
        run.node = "node-a".into();
        let daemon = DaemonRow::of(&TaskId("t".into()), Some(EVIL), &DaemonStatus::default());
        let html = page(EVIL, vec![run], vec![daemon]);
        assert!(!html.contains(EVIL));
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    }
}
