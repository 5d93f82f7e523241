//! The one handle over a running node ([`NodeHandle`]): what the API, the UI and tests read
//! and ask of it, and the errors it answers with ([`NodeError`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::cluster_key::{self, KeyError};
use crate::config::Config;
use crate::consensus::{Change, Consensus, ProposeError, State};
use crate::events::{Event, Events};
use crate::executor::{DaemonStatus, ExecutorHandle};
use crate::ledger::RunLedger;
use crate::logs::{self, LogPaths};
use crate::model::{
    AccessEvent, Invalid, NodeSettings, Origin, Parameters, Run, RunId, Settings, Task, TaskId,
    TaskInput, Trigger,
};
use crate::notify::Notifier;
use crate::scheduler::{NotScheduled, Refusal, SchedulerHandle};
use crate::store::{RunQuery, Store, StoreError, Write};
use taskmesh_core::placement::{self, Candidate};
use taskmesh_core::view::{CronPause, NodeDrain};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    /// Could not be done now: no quorum, the node is shutting down or busy.
    #[error("{0}")]
    Unavailable(String),
    /// The cluster refuses to start a run as it is now: no live node fulfils the task's
    /// dependencies, or its concurrency `forbid` holds it back (an answer, not a failure).
    #[error(transparent)]
    CannotRun(#[from] Refusal),
    /// A replacement made from an outdated copy: the task as it is now.
    #[error("{message}")]
    Stale { message: String, current: Box<Task> },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The node refuses to start (an unsafe log path, a missing cluster key).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<ProposeError> for NodeError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Rejected(invalid) => NodeError::Invalid(invalid),
            ProposeError::NoQuorum(m) | ProposeError::Failed(m) => NodeError::Unavailable(m),
            ProposeError::Shutdown => NodeError::Unavailable("the node is shutting down".into()),
        }
    }
}

impl From<NotScheduled> for NodeError {
    fn from(e: NotScheduled) -> Self {
        match e {
            NotScheduled::Refused(refusal) => NodeError::CannotRun(refusal),
            NotScheduled::NoTask(_) => NodeError::NotFound(e.to_string()),
            NotScheduled::Uncommitted(m) => NodeError::Unavailable(m),
            NotScheduled::Busy => NodeError::Unavailable(e.to_string()),
        }
    }
}

/// The one handle over a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) inner: Arc<Inner>,
}

/// What the handle holds; filled by the server's start-up.
pub(crate) struct Inner {
    pub(crate) consensus: Consensus,
    pub(crate) ledger: RunLedger,
    pub(crate) executor: ExecutorHandle,
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) daemons: watch::Receiver<BTreeMap<TaskId, DaemonStatus>>,
    pub(crate) node: watch::Sender<NodeSettings>,
    /// Weak: the database closes once the node's actors have stopped, even if handles remain.
    pub(crate) store: std::sync::Weak<dyn Store>,
    pub(crate) events: Events,
    pub(crate) notifier: Notifier,
    pub(crate) logs: LogPaths,
    pub(crate) config: Config,
    pub(crate) started_at: chrono::DateTime<Utc>,
    /// The p2p endpoint while it runs (it restarts when the cluster key or mesh settings change).
    pub(crate) mesh: watch::Receiver<Option<crate::mesh::MeshHandle>>,
    pub(crate) sink: watch::Receiver<crate::sink::SinkStatus>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

pub use taskmesh_core::view::{Health, PeersView, ThisNode};

impl NodeHandle {
    /// Commits an operator's `change`: named with who asked ([`crate::caller`]) when a request
    /// is being served, so that the cluster lists it in its activity.
    async fn propose(&self, change: Change) -> Result<(), ProposeError> {
        let change = match crate::caller::current() {
            Some(caller) => Change::By {
                origin: Origin {
                    at: Utc::now(),
                    node: self.inner.node.borrow().name.clone(),
                    via: caller.via.to_owned(),
                    client: caller.client,
                    token: caller.token,
                },
                change: Box::new(change),
            },
            None => change,
        };
        self.inner.consensus.propose(change).await
    }

    /// Lists an operator's `event` at this node's door in the cluster's activity, as done by
    /// `caller`, without waiting for it: signing in or rotating the token never waits for the
    /// cluster or fails with it; when the cluster cannot take the entry, the log says so.
    pub fn list_access(&self, event: AccessEvent, caller: crate::caller::Caller) {
        let handle = self.clone();
        tokio::spawn(crate::caller::scope(caller, async move {
            if let Err(e) = handle.propose(Change::Access(event)).await {
                warn!(what = event.kind(), error = %e, "not listed in the cluster's activity");
            }
        }));
    }

    pub fn state(&self) -> Arc<State> {
        self.inner.consensus.state()
    }

    /// The replicated state's handle: what a peer's change goes through (the tests propose
    /// changes with it as another node of the cluster would).
    pub fn consensus(&self) -> &Consensus {
        &self.inner.consensus
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn node_settings(&self) -> NodeSettings {
        self.inner.node.borrow().clone()
    }

    pub fn logs(&self) -> &LogPaths {
        &self.inner.logs
    }

    /// Sends notifications (and test messages) to the cluster's channels.
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    pub fn daemons(&self) -> BTreeMap<TaskId, DaemonStatus> {
        self.inner.daemons.borrow().clone()
    }

    pub fn health(&self) -> Health {
        Health {
            status: "ok".into(),
            node: self.inner.node.borrow().name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.inner.started_at,
            tasks: self.state().tasks.len(),
            active_runs: self.inner.ledger.active().len(),
        }
    }

    /// A task by id, or else by name.
    pub fn task(&self, key: &str) -> Result<Task, NodeError> {
        let state = self.state();
        state
            .tasks
            .get(&TaskId(key.to_owned()))
            .map(Arc::as_ref)
            .or_else(|| state.task_by_name(key))
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("there is no task `{key}`")))
    }

    pub async fn create_task(&self, input: TaskInput) -> Result<Task, NodeError> {
        let task = input.into_task(TaskId::generate(), Utc::now())?;
        self.check_targets(&task)?;
        self.propose(Change::PutTask(task.clone())).await?;
        Ok(task)
    }

    /// Replaces a task; with the `updated_at` the sender read, only if it has not changed since.
    pub async fn update_task(&self, key: &str, input: TaskInput) -> Result<Task, NodeError> {
        let id = self.task(key)?.id;
        let seen = input.updated_at;
        let task = input.into_task(id, Utc::now())?;
        self.check_targets(&task)?;
        let change = match seen {
            Some(seen) => Change::ReplaceTask {
                task: task.clone(),
                seen,
            },
            None => Change::PutTask(task.clone()),
        };
        match self.propose(change).await {
            Ok(_) => Ok(task),
            Err(ProposeError::Rejected(invalid)) if invalid.is_stale() => Err(NodeError::Stale {
                message: invalid.message,
                current: Box::new(self.task(key)?),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a task whose exit rules name a channel or a task that does not exist (a rule's
    /// target removed later fails when the rule fires, and the run shows why).
    fn check_targets(&self, task: &Task) -> Result<(), NodeError> {
        let state = self.state();
        let channels: Vec<String> = state.settings.channels.keys().cloned().collect();
        let errors = task.unknown_targets(&channels, |name| state.task_by_name(name).is_some());
        match errors.is_empty() {
            true => Ok(()),
            false => Err(Invalid::new("a rule names something that does not exist", errors).into()),
        }
    }

    /// Enables or disables a task (a change of that flag alone, so that an edit in progress
    /// elsewhere is not overwritten); the task as it is then.
    pub async fn set_enabled(&self, key: &str, enabled: bool) -> Result<Task, NodeError> {
        let mut task = self.task(key)?;
        let at = Utc::now();
        self.propose(Change::SetEnabled {
            task: task.id.clone(),
            enabled,
            at: Some(at),
        })
        .await?;
        task.enabled = enabled;
        task.updated_at = at;
        Ok(task)
    }

    /// Drains the node `key` (a name or a PeerId of this node, a live peer or a member), or
    /// ends its drain.
    pub async fn drain(&self, key: &str, drained: bool) -> Result<NodeDrain, NodeError> {
        let view = self.peers();
        let peer_id = node_of(&view, key)?;
        self.propose(Change::Drain {
            node: peer_id.clone(),
            drained,
        })
        .await?;
        if drained {
            info!(node = %key, "node drained: no new runs go there");
        }
        Ok(drain_of(&view, &peer_id, &self.state()))
    }

    /// Pauses cron for the whole cluster, or resumes it.
    pub async fn pause_cron(&self, paused: bool) -> Result<CronPause, NodeError> {
        self.propose(Change::PauseCron {
            paused,
            at: Utc::now(),
        })
        .await?;
        match paused {
            true => info!("cron paused: no cron slot fires until it is resumed"),
            false => info!("cron resumed"),
        }
        Ok(self.cron_pause())
    }

    /// Adds a named access token (read-only, or with every right; working for `lasts`, or
    /// until removed) of which the cluster keeps `hash` (`api::auth::token_hash`; the token
    /// itself is made and shown by the API). Answers when it expires.
    pub async fn add_token(
        &self,
        name: &str,
        read_only: bool,
        lasts: Option<Duration>,
        hash: String,
    ) -> Result<Option<chrono::DateTime<Utc>>, NodeError> {
        let created = Utc::now();
        let expires = match lasts {
            None => None,
            Some(lasts) => Some(
                chrono::Duration::from_std(lasts)
                    .ok()
                    .filter(|d| *d > chrono::Duration::zero())
                    .and_then(|d| created.checked_add_signed(d))
                    .ok_or_else(|| {
                        Invalid::field(
                            "expires_in",
                            "must be a duration after now that the calendar holds, like \"30d\" or \"1y\"",
                        )
                    })?,
            ),
        };
        // The state machine checks the name and refuses one in use (`State::apply`).
        self.propose(Change::PutToken(crate::model::NamedToken {
            name: name.to_owned(),
            read_only,
            hash,
            created,
            expires,
        }))
        .await?;
        info!(token = %name, read_only, expires = ?expires, "named access token added");
        Ok(expires)
    }

    /// Removes the named access token `name`: it, and every session it made, stop working on
    /// every node.
    pub async fn remove_token(&self, name: &str) -> Result<(), NodeError> {
        if !self.state().tokens.contains_key(name) {
            return Err(NodeError::NotFound(format!("no token named '{name}'")));
        }
        self.propose(Change::RemoveToken(name.to_owned())).await?;
        info!(token = %name, "named access token removed");
        Ok(())
    }

    /// The named access tokens (names and rights, never the tokens).
    pub fn tokens(&self) -> Vec<crate::model::TokenInfo> {
        self.state().tokens.values().map(|t| t.info()).collect()
    }

    /// The newest `limit` changes operators made, newest first.
    pub fn activity(&self, limit: usize) -> Vec<crate::model::Activity> {
        self.state()
            .activity
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// Whether cron is paused, and since when.
    pub fn cron_pause(&self) -> CronPause {
        let since = self.state().cron_paused;
        CronPause {
            paused: since.is_some(),
            since,
        }
    }

    /// The drain of the node `key`, and what still runs there.
    pub fn drain_status(&self, key: &str) -> Result<NodeDrain, NodeError> {
        let view = self.peers();
        let peer_id = node_of(&view, key)?;
        Ok(drain_of(&view, &peer_id, &self.state()))
    }

    pub async fn remove_task(&self, key: &str) -> Result<Task, NodeError> {
        let task = self.task(key)?;
        self.propose(Change::RemoveTask(task.id.clone())).await?;
        Ok(task)
    }

    /// Execute now.
    /// Runs the task now, with `parameters` in place of its own (only those it declares).
    pub async fn execute(&self, key: &str, parameters: Parameters) -> Result<Run, NodeError> {
        let task = self.task(key)?;
        if let Err(errors) = task.spec.with_parameters(&parameters) {
            return Err(NodeError::Invalid(Invalid::new(
                format!("{} cannot run with these parameters", task.name),
                errors,
            )));
        }
        self.inner
            .scheduler
            .request(task.id, Trigger::Manual, parameters)
            .await
            .map_err(NodeError::from)
    }

    /// Stops a queued or running run: at once when it runs here, else through the cluster
    /// (the node running it stops it).
    pub async fn stop_run(&self, id: &RunId) -> Result<Run, NodeError> {
        let run = self.run(id).await?;
        if self.active_runs().iter().any(|r| &r.id == id) {
            self.inner.executor.stop(id).await;
        } else if !run.status.is_final() {
            self.propose(Change::StopRun {
                run: id.clone(),
                at: Utc::now(),
            })
            .await?;
        }
        Ok(run)
    }

    /// Runs, newest first: this node's history, merged with the cluster's run ledger (runs on
    /// other nodes, and runs waiting for a place). This node's own record of a run wins.
    pub async fn runs(&self, query: RunQuery) -> Result<Vec<Run>, NodeError> {
        let mut runs = self.inner.ledger.list(query.clone()).await?;
        let state = self.state();
        let known: std::collections::HashSet<RunId> = runs.iter().map(|r| r.id.clone()).collect();
        // The newest `limit` of the union are among the newest `limit` of each part.
        let ledger: Box<dyn Iterator<Item = &Arc<Run>>> = match &query.task {
            Some(task) => Box::new(state.runs.of_task_before(task, query.before.as_ref())),
            None => Box::new(state.runs.newest_before(query.before.as_ref())),
        };
        runs.extend(
            ledger
                .filter(|r| query.admits(r))
                .take(query.limit)
                .filter(|r| !known.contains(&r.id))
                .map(|r| Run::clone(r)),
        );
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs.truncate(query.limit);
        Ok(runs)
    }

    pub fn active_runs(&self) -> Vec<Run> {
        self.inner.ledger.active()
    }

    /// A run: this node's record, else the cluster's run ledger.
    pub async fn run(&self, id: &RunId) -> Result<Run, NodeError> {
        if let Some(run) = self.inner.ledger.get(id).await? {
            return Ok(run);
        }
        self.state()
            .runs
            .get(id)
            .map(|r| Run::clone(r))
            .ok_or_else(|| NodeError::NotFound(format!("there is no run {id}")))
    }

    /// The run's log from byte `from` on (at most `max` bytes), or None when the file is gone
    /// (deleted by retention, or the run never wrote one).
    ///
    /// A run that ran on another node is read from that node over the mesh.
    pub async fn run_log(
        &self,
        id: &RunId,
        from: u64,
        max: usize,
    ) -> Result<Option<Vec<u8>>, NodeError> {
        let path: PathBuf = self.inner.logs.run_log(id);
        let local = tokio::task::spawn_blocking(move || logs::read_from(&path, from, max))
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?
            .map_err(|source| NodeError::Io {
                context: "reading the run log".into(),
                source,
            })?;
        if local.is_some() {
            return Ok(local);
        }
        let elsewhere = self.state().runs.get(id).and_then(|r| r.node_id.clone());
        let me = self.peers().this.peer_id;
        match elsewhere {
            Some(node) if Some(&node) != me.as_ref() => self.remote_log(id, &node, from, max).await,
            _ => Ok(None),
        }
    }

    async fn remote_log(
        &self,
        id: &RunId,
        node: &str,
        from: u64,
        max: usize,
    ) -> Result<Option<Vec<u8>>, NodeError> {
        let unavailable = |why: String| {
            NodeError::Unavailable(format!(
                "the log of run {id} is on node {node}, which {why}"
            ))
        };
        let peer: crate::mesh::PeerId = node
            .parse()
            .map_err(|_| unavailable("has no valid id".into()))?;
        let mesh = self
            .mesh()
            .ok_or_else(|| unavailable("cannot be reached: the p2p endpoint is down".into()))?;
        let request = crate::mesh::Request::RunLog {
            run: id.to_string(),
            from,
            max: max.min(logs::LOG_PIECE) as u32,
        };
        match tokio::time::timeout(Duration::from_secs(5), mesh.request(peer, request)).await {
            Ok(Ok(crate::mesh::Response::RunLog(piece))) => Ok(piece),
            Ok(Ok(crate::mesh::Response::Error(e))) => Err(unavailable(format!("answered: {e}"))),
            Ok(Ok(_)) => Err(unavailable("answered something else".into())),
            Ok(Err(e)) => Err(unavailable(format!("cannot be reached: {e}"))),
            Err(_) => Err(unavailable("did not answer within 5 s".into())),
        }
    }

    /// All settings; secrets masked unless `reveal`.
    pub fn settings(&self, reveal: bool) -> Settings {
        let settings = Settings {
            cluster: self.state().settings.clone(),
            node: self.node_settings(),
            exported_by: None,
        };
        if reveal { settings } else { settings.masked() }
    }

    /// Replaces all settings. Masked secrets keep their stored values while their destination
    /// is unchanged (see [`Settings::unmask_from`]); otherwise the save is refused.
    pub async fn put_settings(&self, mut settings: Settings) -> Result<Settings, NodeError> {
        let current = self.settings(true);
        settings.unmask_from(&current)?;
        // A node always has a cluster key: a document without one keeps the current key.
        if settings.node.cluster_key.is_none() {
            settings.node.cluster_key = current.node.cluster_key.clone();
        }
        let mut errors = settings.check();
        if let Some(path) = settings
            .node
            .log_path
            .as_deref()
            .filter(|p| p.is_absolute())
        {
            if let Err(e) = logs::check_log_path(path, nix::unistd::geteuid().as_raw()) {
                errors.push(crate::model::FieldError::new(
                    "node.log_path",
                    e.to_string(),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(Invalid::new("the settings are not valid", errors).into());
        }
        let node = settings.node.clone();
        let store = self
            .inner
            .store
            .upgrade()
            .ok_or_else(|| NodeError::Unavailable("the node has shut down".into()))?;
        // A new key goes to its file (the store never holds it) before anything uses it.
        let new_key = match &node.cluster_key {
            Some(key) if node.cluster_key != current.node.cluster_key => Some(
                key.parse::<crate::mesh::ClusterKey>()
                    .map_err(|e| Invalid::field("node.cluster_key", e))?,
            ),
            _ => None,
        };
        let key_path = self.inner.config.cluster_key_path();
        let write = node.clone();
        tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
            if let Some(key) = new_key {
                cluster_key::keep(&key_path, &key)?;
            }
            store.write(&[Write::NodeSettings(write)])?;
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Unavailable(e.to_string()))??;
        self.inner.node.send_replace(node);
        self.propose(Change::Settings(settings.cluster.clone()))
            .await?;
        let _ = self.inner.events.send(Event::State);
        Ok(self.settings(false))
    }

    /// Imports a settings document (JSON text, as exported).
    /// Imports a settings document. One exported by another node joins its mesh (see
    /// [`Settings::joined_from`]); one from this node (or without origin) replaces everything.
    pub async fn import_settings(&self, text: &str) -> Result<Settings, NodeError> {
        let settings = Settings::parse(text)?;
        let own_id = self.peers().this.peer_id;
        let settings = match &settings.exported_by {
            Some(origin) if Some(&origin.peer_id) != own_id.as_ref() => {
                info!(from = %origin.name, "importing another node's settings: joining its mesh");
                let current = self.settings(true);
                // Masked secrets in the file keep this node's values, as with any save, and
                // only for the destinations this node sends them to.
                settings.joined_from(&current)?
            }
            _ => settings,
        };
        self.put_settings(Settings {
            exported_by: None,
            ..settings
        })
        .await
    }

    /// The settings as an export file: with the exporting node's identity and addresses.
    pub fn export_settings(&self, reveal: bool) -> Settings {
        let view = self.peers();
        Settings {
            exported_by: view.this.peer_id.map(|peer_id| crate::model::ExportOrigin {
                peer_id,
                name: view.this.name.clone(),
                p2p_addrs: view.this.p2p_addrs.clone(),
            }),
            ..self.settings(reveal)
        }
    }

    /// Why no live node can run `task`, if none can ("no live node has gpu=nvidia").
    pub fn why_unplaceable(&self, tasks: &[Arc<Task>]) -> Vec<Option<String>> {
        let mesh = self.mesh();
        let peer_id = mesh.as_ref().map(|m| m.local_peer_id().to_string());
        // Whether a node can take the task at all depends on its dependencies, not its load.
        let this = Candidate::this_node(
            &peer_id.unwrap_or_default(),
            &self.node_settings(),
            None,
            0.0,
        );
        let peers = mesh.map(|m| m.peers()).unwrap_or_default();
        let state = self.state();
        let live = placement::live(this, &peers, state.cluster.map(|c| c.id), &state.drained);
        tasks.iter().map(|t| placement::why_not(t, &live)).collect()
    }

    /// What the MySQL sink is doing: its target, runs waiting, the last error.
    pub fn sink_status(&self) -> crate::sink::SinkStatus {
        self.inner.sink.borrow().clone()
    }

    /// This node's metrics in the OpenMetrics text format (`GET /metrics`, docs/metrics.md).
    pub fn metrics_text(&self) -> String {
        let mesh = self.mesh();
        let state = self.state();
        let live = crate::metrics::Live {
            node: self.inner.node.borrow().name.clone(),
            raft: Some(self.inner.consensus.figures()),
            mesh_up: mesh.is_some(),
            peers: mesh.as_ref().map_or(0, |m| m.peers().len()),
            cron_paused: state.cron_paused.is_some(),
            drained: mesh.is_some_and(|m| state.drained.contains(&m.local_peer_id().to_string())),
        };
        self.inner.metrics.render(&live)
    }

    /// The p2p endpoint, while it runs.
    pub fn mesh(&self) -> Option<crate::mesh::MeshHandle> {
        self.inner.mesh.borrow().clone()
    }

    /// This node as the mesh sees it, and its live peers.
    pub fn peers(&self) -> PeersView {
        let mesh = self.inner.mesh.borrow().clone();
        let settings = self.node_settings();
        let key = settings
            .cluster_key
            .as_deref()
            .and_then(|k| k.parse::<crate::mesh::ClusterKey>().ok());
        let peers = mesh
            .as_ref()
            .map(|m| m.peers().as_ref().clone())
            .unwrap_or_default();
        PeersView {
            this: ThisNode {
                peer_id: mesh.as_ref().map(|m| m.local_peer_id().to_string()),
                name: settings.name.clone(),
                p2p_addrs: mesh
                    .as_ref()
                    .map(|m| m.listen_addrs().iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                key_fingerprint: key.as_ref().map(crate::mesh::fingerprint),
                dependencies: settings.fulfilled(),
                mesh_up: mesh.is_some(),
            },
            cluster: self.inner.consensus.status(&peers, &settings.name),
            peers,
        }
    }

    /// Bytes used by this node's logs.
    pub async fn log_disk_usage(&self) -> u64 {
        let root = self.inner.logs.root().to_owned();
        tokio::task::spawn_blocking(move || logs::disk_usage(&root))
            .await
            .unwrap_or(0)
    }
}

/// A node's drain as `view` and `state` show it: its name, and what still runs there.
fn drain_of(view: &PeersView, peer_id: &str, state: &State) -> NodeDrain {
    let name = match view.this.peer_id.as_deref() == Some(peer_id) {
        true => Some(view.this.name.clone()),
        false => view
            .cluster
            .members
            .iter()
            .find(|m| m.peer_id == peer_id)
            .and_then(|m| m.name.clone())
            .or_else(|| {
                view.peers
                    .iter()
                    .find(|p| p.announcement.peer_id == peer_id)
                    .map(|p| p.announcement.name.clone())
            }),
    };
    let always_tasks = state
        .holders
        .iter()
        .filter(|(_, nodes)| nodes.iter().any(|n| n == peer_id))
        .filter_map(|(task, _)| state.tasks.get(task).map(|t| t.name.clone()))
        .collect();
    NodeDrain {
        peer_id: peer_id.to_owned(),
        name,
        drained: state.drained.contains(peer_id),
        unfinished_runs: state
            .runs
            .unfinished()
            .filter(|r| r.node_id.as_deref() == Some(peer_id))
            .count(),
        always_tasks,
    }
}

/// The PeerId of the node `key` names in `view`: this node, a live peer or a member of the
/// cluster, by name or PeerId.
fn node_of(view: &PeersView, key: &str) -> Result<String, NodeError> {
    let mut found = std::collections::BTreeSet::new();
    if let Some(me) = &view.this.peer_id
        && (view.this.name == key || me == key)
    {
        found.insert(me.clone());
    }
    for p in &view.peers {
        let a = &p.announcement;
        if a.name == key || a.peer_id == key {
            found.insert(a.peer_id.clone());
        }
    }
    for m in &view.cluster.members {
        if m.peer_id == key || m.name.as_deref() == Some(key) {
            found.insert(m.peer_id.clone());
        }
    }
    let mut found = found.into_iter();
    match (found.next(), found.next()) {
        (Some(peer_id), None) => Ok(peer_id),
        (None, _) => Err(NodeError::NotFound(format!(
            "no node `{key}`: name this node, a live peer or a member of the cluster, by name or PeerId"
        ))),
        (Some(_), Some(_)) => Err(NodeError::Invalid(Invalid::field(
            "node",
            format!("`{key}` names more than one node; give its PeerId"),
        ))),
    }
}

/// The pages read the node through this (the UI crate knows only the trait).
impl taskmesh_ui::NodeView for NodeHandle {
    fn node_settings(&self) -> NodeSettings {
        NodeHandle::node_settings(self)
    }

    fn settings(&self, reveal: bool) -> Settings {
        NodeHandle::settings(self, reveal)
    }

    fn tasks(&self) -> Vec<Arc<Task>> {
        self.state().tasks.values().cloned().collect()
    }

    fn task(&self, key: &str) -> Option<Arc<Task>> {
        let state = self.state();
        let by_id = state.tasks.get(&TaskId(key.to_owned()));
        by_id.or_else(|| state.tasks.by_name(key)).cloned()
    }

    fn channels(&self) -> Vec<String> {
        self.state().settings.channels.keys().cloned().collect()
    }

    fn active_runs(&self) -> Vec<Run> {
        NodeHandle::active_runs(self)
    }

    fn daemons(&self) -> BTreeMap<TaskId, DaemonStatus> {
        NodeHandle::daemons(self)
    }

    fn why_unplaceable(&self, tasks: &[Arc<Task>]) -> Vec<Option<String>> {
        NodeHandle::why_unplaceable(self, tasks)
    }

    fn last_run(&self, task: &TaskId) -> Option<Run> {
        self.state().runs.last_of(task).map(|r| Run::clone(r))
    }

    async fn runs(&self, query: RunQuery) -> Result<Vec<Run>, String> {
        NodeHandle::runs(self, query)
            .await
            .map_err(|e| e.to_string())
    }

    async fn cluster_stats(
        &self,
        since: chrono::DateTime<Utc>,
    ) -> Result<(taskmesh_core::view::RunStats, Vec<String>), String> {
        NodeHandle::cluster_stats(self, since)
            .await
            .map(|c| (c.stats, c.unanswered))
            .map_err(|e| e.to_string())
    }

    async fn cluster_runs(&self, query: RunQuery) -> Result<(Vec<Run>, Vec<String>), String> {
        NodeHandle::cluster_runs(self, query)
            .await
            .map(|c| (c.runs, c.unanswered))
            .map_err(|e| e.to_string())
    }

    async fn run(&self, id: &RunId) -> Result<Option<Run>, String> {
        match NodeHandle::run(self, id).await {
            Ok(run) => Ok(Some(run)),
            Err(NodeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn health(&self) -> Health {
        NodeHandle::health(self)
    }

    fn places(&self) -> taskmesh_ui::Places {
        taskmesh_ui::Places {
            listen: self.inner.config.listen.to_string(),
            data_dir: self.inner.config.data_dir.display().to_string(),
            log_path: self.inner.logs.root().display().to_string(),
        }
    }

    async fn log_disk_usage(&self) -> u64 {
        NodeHandle::log_disk_usage(self).await
    }

    fn sink_status(&self) -> crate::sink::SinkStatus {
        NodeHandle::sink_status(self)
    }

    fn peers(&self) -> PeersView {
        NodeHandle::peers(self)
    }

    fn cron_paused(&self) -> Option<chrono::DateTime<Utc>> {
        self.state().cron_paused
    }

    fn activity(&self, limit: usize) -> Vec<crate::model::Activity> {
        NodeHandle::activity(self, limit)
    }

    fn tokens(&self) -> Vec<crate::model::TokenInfo> {
        NodeHandle::tokens(self)
    }

    fn read_only_token(&self) -> Option<String> {
        crate::caller::current()
            .filter(|c| c.read_only)
            .and_then(|c| c.token)
    }
}
