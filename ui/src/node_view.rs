//! What the pages read from a node: one trait, implemented by the running node and, in tests,
//! by a fake with sample data.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use taskmesh_core::model::{NodeSettings, Run, RunId, Settings, Task, TaskId};
use taskmesh_core::view::{DaemonStatus, Health, PeersView, RunQuery, SinkStatus};

/// Where this node keeps things, for `/node`.
#[derive(Debug, Clone, Default)]
pub struct Places {
    /// The address the UI listens on.
    pub listen: String,
    pub data_dir: String,
    pub log_path: String,
}

/// A node as the pages see it. Reads only: every write goes through the JSON API.
pub trait NodeView: Clone + Send + Sync + 'static {
    /// This node's own settings.
    fn node_settings(&self) -> NodeSettings;
    /// The cluster's settings; secrets masked unless `reveal`.
    fn settings(&self, reveal: bool) -> Settings;
    /// Every task, in list order.
    fn tasks(&self) -> Vec<Arc<Task>>;
    /// The task with this id or, failing that, this name.
    fn task(&self, key: &str) -> Option<Arc<Task>>;
    /// The names of the notification channels.
    fn channels(&self) -> Vec<String>;
    /// Unfinished runs across the cluster.
    fn active_runs(&self) -> Vec<Run>;
    /// The always-tasks this node supervises.
    fn daemons(&self) -> BTreeMap<TaskId, DaemonStatus>;
    /// For each of `tasks`, why no live node can run it, if none can (one reading of the peers
    /// for the whole list).
    fn why_unplaceable(&self, tasks: &[Arc<Task>]) -> Vec<Option<String>>;
    /// The newest run of `task` the cluster's run ledger holds (an index read: the task list
    /// asks this for every row).
    fn last_run(&self, task: &TaskId) -> Option<Run>;
    /// Runs, newest first; the error says why they could not be read.
    fn runs(&self, query: RunQuery) -> impl Future<Output = Result<Vec<Run>, String>> + Send;
    /// Runs from every live node, newest first, and the nodes that did not answer in time.
    fn cluster_runs(
        &self,
        query: RunQuery,
    ) -> impl Future<Output = Result<(Vec<Run>, Vec<String>), String>> + Send;
    /// What the runs of every live node since `since` did, added up, and the nodes that did not
    /// answer in time.
    fn cluster_stats(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> impl Future<Output = Result<(taskmesh_core::view::RunStats, Vec<String>), String>> + Send;
    /// One run; `Ok(None)` when there is no such run.
    fn run(&self, id: &RunId) -> impl Future<Output = Result<Option<Run>, String>> + Send;
    fn health(&self) -> Health;
    fn places(&self) -> Places;
    /// Bytes the run logs take on disk.
    fn log_disk_usage(&self) -> impl Future<Output = u64> + Send;
    fn sink_status(&self) -> SinkStatus;
    fn peers(&self) -> PeersView;
    /// Since when cron is paused for the cluster, while it is.
    fn cron_paused(&self) -> Option<chrono::DateTime<chrono::Utc>>;
    /// The newest `limit` changes operators made, newest first.
    fn activity(&self, limit: usize) -> Vec<taskmesh_core::model::Activity>;
    /// The cluster's named access tokens (names and rights).
    fn tokens(&self) -> Vec<taskmesh_core::model::TokenInfo>;
    /// The name of the read-only token the request being served came with (or that made its
    /// browser session), if it did: the pages say that nothing can be changed.
    fn read_only_token(&self) -> Option<String>;
}
