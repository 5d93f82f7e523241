//! A node made of sample data, and render tests of every page through the router: the pages
//! know the node only through [`NodeView`], so this is all they need.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::view::sample::{self, EVIL};
use crate::{NodeView, Places};
use taskmesh_core::model::{NodeSettings, Run, RunId, RunStatus, Settings, Task, TaskId};
use taskmesh_core::view::{
    ClusterStatus, DaemonStatus, Health, PeersView, RunQuery, SinkStatus, ThisNode,
};

#[derive(Clone)]
struct FakeNode {
    tasks: Vec<Arc<Task>>,
    runs: Vec<Run>,
    /// `runs` and `run` answer this error instead.
    broken: Option<String>,
    /// How often `runs` and `run` were asked (reads of a node's history).
    history_reads: Arc<AtomicUsize>,
    cron_paused: Option<chrono::DateTime<chrono::Utc>>,
    activity: Vec<taskmesh_core::model::Activity>,
    /// The read-only token the pages are served to, if any.
    read_only: Option<String>,
}

impl FakeNode {
    fn new() -> Self {
        let mut failed = sample::run("backup", RunStatus::Failed);
        failed.node = "node-a".into();
        Self {
            tasks: vec![
                Arc::new(Task::sample("t-backup", "backup")),
                Arc::new(Task::sample("t-clean", "clean")),
                Arc::new(Task::sample("t-evil", EVIL)),
            ],
            runs: vec![failed],
            broken: None,
            history_reads: Arc::default(),
            cron_paused: None,
            read_only: None,
            activity: vec![taskmesh_core::model::Activity {
                origin: taskmesh_core::model::Origin {
                    at: sample::now(),
                    node: "node-a".into(),
                    via: "api".into(),
                    client: "127.0.0.1".into(),
                    token: None,
                },
                what: "put_task".into(),
                subject: EVIL.into(),
                detail: String::new(),
            }],
        }
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            name: "node-a".into(),
            ..NodeSettings::default()
        }
    }
}

impl NodeView for FakeNode {
    fn node_settings(&self) -> NodeSettings {
        Self::settings()
    }

    fn settings(&self, _reveal: bool) -> Settings {
        Settings {
            node: Self::settings(),
            ..Settings::default()
        }
    }

    fn tasks(&self) -> Vec<Arc<Task>> {
        self.tasks.clone()
    }

    fn task(&self, key: &str) -> Option<Arc<Task>> {
        let find = |f: &dyn Fn(&Task) -> bool| self.tasks.iter().find(|t| f(t)).cloned();
        find(&|t| t.id.0 == key).or_else(|| find(&|t| t.name == key))
    }

    fn channels(&self) -> Vec<String> {
        vec!["ops".into()]
    }

    fn active_runs(&self) -> Vec<Run> {
        Vec::new()
    }

    fn daemons(&self) -> BTreeMap<TaskId, DaemonStatus> {
        BTreeMap::new()
    }

    fn why_unplaceable(&self, tasks: &[Arc<Task>]) -> Vec<Option<String>> {
        tasks
            .iter()
            .map(|task| (task.name == "clean").then(|| "no live node has gpu".into()))
            .collect()
    }

    fn last_run(&self, task: &TaskId) -> Option<Run> {
        self.runs.iter().find(|r| r.task_id == *task).cloned()
    }

    async fn runs(&self, query: RunQuery) -> Result<Vec<Run>, String> {
        self.history_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        Ok(self
            .runs
            .iter()
            .filter(|r| query.task.as_ref().is_none_or(|t| *t == r.task_id))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn cluster_runs(&self, query: RunQuery) -> Result<(Vec<Run>, Vec<String>), String> {
        self.history_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let runs = self
            .runs
            .iter()
            .filter(|r| query.admits(r))
            .take(query.limit);
        Ok((runs.cloned().collect(), vec!["node-gone".into()]))
    }

    async fn cluster_stats(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<(taskmesh_core::view::RunStats, Vec<String>), String> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let mut stats = taskmesh_core::view::RunStats::since(since);
        for run in &self.runs {
            stats.add(run);
        }
        Ok((stats, vec!["node-gone".into()]))
    }

    async fn run(&self, id: &RunId) -> Result<Option<Run>, String> {
        self.history_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        Ok(self.runs.iter().find(|r| r.id == *id).cloned())
    }

    fn health(&self) -> Health {
        Health {
            status: "ok".into(),
            node: "node-a".into(),
            version: "0.0.0".into(),
            started_at: sample::now(),
            tasks: self.tasks.len(),
            active_runs: 0,
        }
    }

    fn places(&self) -> Places {
        Places {
            listen: "127.0.0.1:8080".into(),
            data_dir: "/var/lib/taskmesh".into(),
            log_path: "/var/lib/taskmesh/logs".into(),
        }
    }

    async fn log_disk_usage(&self) -> u64 {
        4096
    }

    fn sink_status(&self) -> SinkStatus {
        SinkStatus::default()
    }

    fn cron_paused(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cron_paused
    }

    fn activity(&self, limit: usize) -> Vec<taskmesh_core::model::Activity> {
        self.activity.iter().take(limit).cloned().collect()
    }

    fn tokens(&self) -> Vec<taskmesh_core::model::TokenInfo> {
        vec![
            taskmesh_core::model::TokenInfo {
                name: EVIL.into(),
                read_only: true,
                created: sample::now(),
                expires: None,
            },
            taskmesh_core::model::TokenInfo {
                name: "old".into(),
                read_only: false,
                created: sample::now() - chrono::Duration::days(2),
                expires: Some(sample::now() - chrono::Duration::days(1)),
            },
        ]
    }

    fn read_only_token(&self) -> Option<String> {
        self.read_only.clone()
    }

    fn peers(&self) -> PeersView {
        PeersView {
            this: ThisNode {
                peer_id: Some("12D3KooWfake".into()),
                name: "node-a".into(),
                p2p_addrs: vec![],
                key_fingerprint: Some("f1ng3rpr1nt".into()),
                dependencies: vec![],
                mesh_up: true,
            },
            peers: vec![],
            cluster: ClusterStatus {
                cluster: Some("c0ffee".into()),
                role: "leader".into(),
                term: 1,
                leader: Some("12D3KooWfake".into()),
                members: vec![],
                last_log: Some(1),
                snapshot: None,
                purged: None,
                cron_paused_since: None,
            },
        }
    }
}

/// The page at `path` as rendered by the router over `node`: status and body.
async fn page(node: FakeNode, path: &str) -> (StatusCode, String) {
    let response = crate::router(node)
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

#[tokio::test]
async fn every_page_renders_what_the_node_tells() {
    let run = sample::run("backup", RunStatus::Failed).id.0;
    let cases: &[(&str, &[&str])] = &[
        ("/", &["backup", "clean", "no live node has gpu", "node-a"]),
        (
            "/settings",
            &[
                "node-a",
                "f1ng3rpr1nt",
                "id=\"token-form\"",
                "data-token-remove=",
                ">read-only<",
                ">expired<",
            ],
        ),
        (
            "/node",
            &[
                "127.0.0.1:8080",
                "/var/lib/taskmesh/logs",
                "4.0 KiB",
                "Tasks this node can run <span class=\"count\">",
                "&#34;name&#34;: &#34;node-a&#34;",
            ],
        ),
        ("/peers", &["12D3KooWfake", "leader"]),
        (
            "/tasks/backup",
            &[
                "backup",
                "form class=\"card panel\"",
                ">Save<",
                "failed",
                "node-a",
                "node-gone",
                "<b>0 %</b>",
                "<svg class=\"spark\"",
            ],
        ),
        ("/runs?status=failed", &["backup", "failed", "node-gone"]),
        (
            "/dashboard",
            &[
                "id=\"fig-runs\">1<",
                "id=\"fig-failed\">1<",
                "0 %",
                "node-gone",
                "<svg class=\"spark\"",
                "id=\"cron-pause\"",
                "task saved",
            ],
        ),
        ("/activity", &["task saved", "api on node-a from 127.0.0.1"]),
        (&format!("/runs/{run}"), &["backup", "failed"]),
    ];
    for (path, expected) in cases {
        let (status, html) = page(FakeNode::new(), path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        for text in *expected {
            assert!(html.contains(text), "{path} lacks {text:?}");
        }
        assert!(!html.contains(EVIL), "{path} shows unescaped markup");
    }
}

#[tokio::test]
async fn every_page_says_cron_is_paused_and_the_dashboard_offers_no_second_pause() {
    let paused = || FakeNode {
        cron_paused: Some(sample::now()),
        ..FakeNode::new()
    };
    for path in ["/index", "/dashboard", "/peers", "/activity"] {
        let (status, html) = page(paused(), path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            html.contains("id=\"cron-paused\"") && html.contains("id=\"cron-resume\""),
            "{path}: {html}"
        );
    }
    let (_, html) = page(paused(), "/dashboard").await;
    assert!(!html.contains("id=\"cron-pause\""), "{html}");
    let (_, html) = page(FakeNode::new(), "/index").await;
    assert!(!html.contains("id=\"cron-paused\""), "{html}");
}

#[tokio::test]
async fn every_page_shown_to_a_read_only_token_says_so() {
    let viewer = || FakeNode {
        read_only: Some("grafana".into()),
        ..FakeNode::new()
    };
    for path in ["/index", "/dashboard", "/settings", "/peers", "/activity"] {
        let (status, html) = page(viewer(), path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            html.contains("id=\"read-only\"") && html.contains("read-only: grafana"),
            "{path}: {html}"
        );
    }
    let (_, html) = page(FakeNode::new(), "/index").await;
    assert!(!html.contains("id=\"read-only\""), "{html}");
}

#[tokio::test]
async fn missing_and_unreadable_runs_are_told_apart() {
    let unknown = "f".repeat(32);
    let (status, html) = page(FakeNode::new(), &format!("/runs/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("There is no run"), "{html}");

    let (status, _) = page(FakeNode::new(), "/runs/not-an-id").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let broken = FakeNode {
        broken: Some("the history is unreadable".into()),
        ..FakeNode::new()
    };
    let (status, html) = page(broken, &format!("/runs/{unknown}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(html.contains("the history is unreadable"), "{html}");
}

#[tokio::test]
async fn an_unknown_task_or_cursor_is_told() {
    let (status, html) = page(FakeNode::new(), "/tasks/ghost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("`ghost`"), "{html}");
    let (status, html) = page(FakeNode::new(), "/tasks/t-clean?before=xyz&status=odd").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("`before=xyz` is not a run id"), "{html}");
    assert!(html.contains("status `odd` is unknown"), "{html}");
}

#[tokio::test]
async fn an_unknown_path_is_a_page_not_found() {
    let (status, html) = page(FakeNode::new(), "/no/such/page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("/no/such/page"));
}

/// The task list reads each row's last run from the ledger's index, never the history, and
/// shows one page of rows with their panels left out: its size does not grow with the tasks.
#[tokio::test]
async fn the_task_list_reads_no_history_and_its_first_page_does_not_grow() {
    let node_with = |n: usize| {
        let mut node = FakeNode::new();
        node.tasks.extend(
            (0..n).map(|i| Arc::new(Task::sample(&format!("t-{i:05}"), &format!("task-{i:05}")))),
        );
        node
    };
    let node = node_with(1000);
    let reads = node.history_reads.clone();
    let last = node.runs[0].id.0.clone();
    let (status, html) = page(node, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("task-00046"), "the first page is full");
    assert!(!html.contains("task-00047"), "one page only");
    assert!(html.contains("1–50 of 1,003 tasks"), "the count");
    assert!(html.contains(&last), "backup's last run is linked");
    assert_eq!(
        reads.load(Ordering::Relaxed),
        0,
        "history reads for one render of the task list"
    );

    let (_, small) = page(node_with(100), "/").await;
    let (_, large) = page(node_with(10_000), "/").await;
    let grown = large.len().saturating_sub(small.len());
    assert!(
        grown < 64,
        "the first page grew by {grown} bytes from 103 to 10,003 tasks"
    );
    assert!(large.len() < 200_000, "{} bytes", large.len());
    let (_, found) = page(node_with(10_000), "/?q=task-09999").await;
    assert!(found.contains("task-09999") && found.contains("1 matching, of 10,003 tasks"));
}
