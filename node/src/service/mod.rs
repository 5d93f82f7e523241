//! The node service: starts every actor of a node and offers one handle ([`NodeHandle`]) over
//! them to the API, the UI and tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod cluster_key;
mod mesh;
mod run_report;

pub use cluster_key::{FILE_NAME as CLUSTER_KEY_FILE, KeyError};

use crate::api::auth::Access;
use crate::config::Config;
use crate::consensus::{self, Change, Consensus, ProposeError, State};
use crate::events::{self, Event, Events};
use crate::executor::{DaemonStatus, Executor, ExecutorHandle, Supervisor};
use crate::ledger::RunLedger;
use crate::logs::{self, LogPaths};
use crate::model::{Invalid, NodeSettings, Run, RunId, Settings, Task, TaskId, TaskInput, Trigger};
use crate::notify::Notifier;
use crate::scheduler::{NotScheduled, Refusal, Scheduler, SchedulerHandle};
use crate::store::{RedbStore, RunQuery, Store, StoreError, Write};

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// The largest piece of a run's log one mesh request carries.
const LOG_PIECE: usize = 256 * 1024;
/// How long a node without a cluster looks for peers before founding one (see the autopilot).
const DISCOVERY: Duration = Duration::from_secs(2);

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
    inner: Arc<Inner>,
}

struct Inner {
    consensus: Consensus,
    ledger: RunLedger,
    executor: ExecutorHandle,
    scheduler: SchedulerHandle,
    daemons: watch::Receiver<BTreeMap<TaskId, DaemonStatus>>,
    node: watch::Sender<NodeSettings>,
    /// Weak: the database closes once the node's actors have stopped, even if handles remain.
    store: std::sync::Weak<dyn Store>,
    events: Events,
    notifier: Notifier,
    logs: LogPaths,
    config: Config,
    started_at: chrono::DateTime<Utc>,
    /// The p2p endpoint while it runs (it restarts when the cluster key or mesh settings change).
    mesh: watch::Receiver<Option<crate::mesh::MeshHandle>>,
    sink: watch::Receiver<crate::sink::SinkStatus>,
}

/// A started node: its handle, the address its UI listens on, and its end.
pub struct Started {
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:8080`, or `https://…` with TLS.
    pub ui_url: String,
    access: Arc<Access>,
    done: JoinHandle<()>,
}

impl Started {
    /// A fresh one-time login link for the browser.
    pub fn login_link(&self) -> Result<String, crate::api::auth::LoginRefused> {
        Ok(self.access.login_url(&self.access.new_code()?))
    }

    /// Waits until the node has shut down (after its cancel token fired) and flushed its state.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Runs a node until `shutdown` is cancelled, then stops its processes and flushes its state.
/// How long the web server waits at start for the state to catch up with the Raft log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let started = start(config, shutdown).await?;
    info!(url = %started.ui_url, "taskmesh node is up");
    // On its own line after the one above (tests read the first `url=`); the field's name
    // does not contain `url=`.
    match started.login_link() {
        Ok(link) => {
            info!(login_link = %link, "open this link to log in to the UI (it works once, for 10 minutes; `taskmesh login-url` makes another)")
        }
        Err(e) => warn!(error = %e, "no login link"),
    }
    started.wait().await;
    Ok(())
}

/// Starts a node and returns once its UI is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Started, NodeError> {
    let io = |context: String| move |source| NodeError::Io { context, source };
    crate::process_setup::prepare();
    let (redb, node_settings) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_data(&config))
            .await
            .map_err(|e| NodeError::Unavailable(format!("opening the data directory: {e}")))??
    };
    let redb = Arc::new(redb);
    let store: Arc<dyn Store> = redb.clone();
    let identity = {
        let path = config.identity_path();
        crate::mesh::load_or_create_identity(&path).map_err(io(format!(
            "reading or creating the identity {}",
            path.display()
        )))?
    };
    let logs = LogPaths::new(log_root(&config, &node_settings));
    let (node_tx, node_rx) = watch::channel(node_settings);
    let events = events::bus();

    // The core (state and history) outlives the workers, so that runs ending during shutdown
    // are still recorded.
    let core = CancellationToken::new();
    let work = shutdown.child_token();
    let (mesh_tx, mesh_rx) = watch::channel(None);
    // Requests from peers: consensus requests go to the consensus layer, log requests are
    // answered from this node's log files.
    let (inbound_tx, inbound_rx) = mpsc::channel(256);
    let (consensus_tx, consensus_rx) = mpsc::channel(256);
    // A node that can find no one (no peers configured, no mDNS) founds its cluster at once;
    // others look for a moment first, so that nodes started together form one cluster.
    let alone = node_rx.borrow().peers.is_empty()
        && config.peers.is_empty()
        && !config.mdns.unwrap_or(node_rx.borrow().mdns);
    let (consensus, committer) = Consensus::start(
        consensus::Options {
            peer_id: identity.public().to_peer_id(),
            store: redb.clone(),
            mesh: mesh_rx.clone(),
            inbound: consensus_rx,
            timing: config.raft,
            discovery: if alone { Duration::ZERO } else { DISCOVERY },
            node: node_rx.clone(),
        },
        core.clone(),
    )
    .await
    .map_err(|e| NodeError::Unavailable(e.to_string()))?;
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let outbox = {
        let db = redb.database();
        tokio::task::spawn_blocking(move || crate::sink::Outbox::open(db))
            .await
            .map_err(|e| NodeError::Unavailable(format!("opening the MySQL outbox: {e}")))??
    };
    let (ledger, ledger_writer) = RunLedger::start(
        store.clone(),
        events.clone(),
        consensus.subscribe(),
        logs.clone(),
        report_tx,
        outbox.clone(),
    )
    .await?;
    // Stopped after the ledger has stored (and staged) the last runs' ends; what the sink has
    // not sent by then waits in the outbox for the next start.
    let sinking = CancellationToken::new();
    let (sink_tx, sink_rx) = watch::channel(crate::sink::SinkStatus::default());
    let sink = tokio::spawn(
        crate::sink::Sink {
            outbox,
            state: consensus.subscribe(),
            logs: logs.clone(),
            status: sink_tx,
            cancel: sinking.clone(),
        }
        .run(),
    );
    // Stopped after the ledger, so that the last runs' ends are reported too.
    let reporting = CancellationToken::new();
    let reporter = tokio::spawn(
        run_report::RunReporter {
            runs: report_rx,
            consensus: consensus.clone(),
            cancel: reporting.clone(),
        }
        .run(),
    );

    let (finished_tx, finished_rx) = mpsc::channel(1024);
    let (follow_ups_tx, follow_ups) = mpsc::channel(crate::scheduler::FOLLOW_UPS);
    let peer_id = identity.public().to_peer_id().to_string();
    let (executor, executor_handle) = Executor::new(
        ledger.clone(),
        logs.clone(),
        events.clone(),
        node_rx.clone(),
        peer_id.clone(),
        finished_tx,
        work.clone(),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("listening on {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the listen address".into()))?;
    let tls = match &config.tls {
        Some(tls) => {
            let tls = crate::api::tls::load(tls, &config.data_dir)
                .map_err(|e| NodeError::Unavailable(crate::error_text::error_text(&e)))?;
            info!(cert = %tls.cert_path.display(), sha256 = %tls.fingerprint, self_signed = tls.generated, "serving the UI over TLS");
            Some(tls)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ui_url = match addr.ip().is_unspecified() {
        true => format!("{scheme}://{}:{}", crate::model::hostname(), addr.port()),
        false => format!("{scheme}://{addr}"),
    };
    let notifier = Notifier::new(
        consensus.subscribe(),
        node_rx.clone(),
        ledger.clone(),
        logs.clone(),
        ui_url.clone(),
        work.clone(),
    );
    let (supervisor, daemons) = Supervisor::new(
        finished_rx,
        consensus.clone(),
        executor_handle.clone(),
        ledger.clone(),
        follow_ups_tx,
        events.clone(),
        notifier.clone(),
        work.clone(),
    );
    let (ready_tx, ready_rx) = watch::channel(false);
    let (scheduler, scheduler_handle) = Scheduler::new(
        crate::scheduler::Parts {
            consensus: consensus.clone(),
            node: node_rx,
            mesh: mesh_rx.clone(),
            peer_id: peer_id.clone(),
            executor: executor_handle.clone(),
            ledger: ledger.clone(),
            dispatcher_ready: ready_rx,
            follow_ups,
        },
        work.clone(),
    );
    let dispatcher = crate::executor::dispatch::Dispatcher {
        peer_id,
        consensus: consensus.clone(),
        ready: ready_tx,
        state: consensus.subscribe(),
        executor: executor_handle.clone(),
        ledger: ledger.clone(),
        cancel: work.clone(),
    };
    tokio::spawn(dispatcher.run());
    tokio::spawn(route_inbound(
        inbound_rx,
        consensus_tx,
        scheduler_handle.clone(),
        logs.clone(),
    ));
    let executor_task = tokio::spawn(executor.run());
    let supervisor_task = tokio::spawn(supervisor.run());
    let scheduler_task = tokio::spawn(scheduler.run());
    tokio::spawn(forward_state_changes(
        consensus.subscribe(),
        events.clone(),
        work.clone(),
    ));
    tokio::spawn(sweep_logs(
        logs.clone(),
        consensus.subscribe(),
        work.clone(),
    ));

    let handle = NodeHandle {
        inner: Arc::new(Inner {
            consensus,
            ledger: ledger.clone(),
            executor: executor_handle,
            scheduler: scheduler_handle,
            daemons,
            node: node_tx,
            store: Arc::downgrade(&store),
            events,
            notifier,
            logs,
            config: config.clone(),
            started_at: Utc::now(),
            mesh: mesh_rx,
            sink: sink_rx,
        }),
    };

    let runner = mesh::MeshRunner {
        config: config.clone(),
        identity,
        ui_url: ui_url.clone(),
        node: handle.inner.node.subscribe(),
        state: handle.inner.consensus.subscribe(),
        consensus: handle.inner.consensus.clone(),
        inbound: inbound_tx,
        ledger: ledger.clone(),
        current: mesh_tx,
        cancel: work.clone(),
    };
    let mesh_task = tokio::spawn(runner.run());
    let access = Access::start(crate::api::auth::AccessOptions {
        token_path: config.access_token_path(),
        session_ttl: config.session_ttl,
        secure_cookies: tls.is_some(),
        ui_url: ui_url.clone(),
    })
    .map_err(|e| NodeError::Unavailable(crate::error_text::error_text(&e)))?;
    info!(token_file = %config.access_token_path().display(), "the UI and API require the access token in this file");
    let app = crate::api::router(handle.clone())
        .merge(crate::ui::router(handle.clone()))
        .merge(crate::api::login_router(access.clone()))
        .layer(axum::middleware::from_fn_with_state(
            access.clone(),
            crate::api::auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            crate::api::guard::HostAllowlist::new(&config.allowed_hosts, Some(handle.clone())),
            crate::api::guard::guard,
        ));
    let serve_options = crate::api::serve::ServeOptions {
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections,
        tls: tls.map(|t| t.acceptor),
    };
    let server_stop = work.clone();
    let mut applied = handle.inner.consensus.subscribe();
    let server = tokio::spawn(async move {
        // After a crash the state tables may lag the Raft log (docs/consensus.md, "Applying"):
        // answer once the state holds what the log held at start, so a read right after a
        // restart sees every acknowledged write; a node cut off from its cluster answers after
        // `CATCH_UP_WAIT` with what it has. Connections wait in the listener's backlog.
        tokio::select! {
            _ = server_stop.cancelled() => {}
            _ = tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|s| s.caught_up)) => {}
        }
        crate::api::serve::serve(listener, app, serve_options, server_stop).await;
    });

    drop(store);
    let done = tokio::spawn(async move {
        work.cancelled().await;
        info!("shutting down: stopping runs");
        let _ = executor_task.await;
        let _ = supervisor_task.await;
        let _ = scheduler_task.await;
        let _ = mesh_task.await;
        ledger.close().await;
        let _ = ledger_writer.await;
        reporting.cancel();
        let _ = reporter.await;
        sinking.cancel();
        let _ = sink.await;
        core.cancel();
        let _ = committer.await;
        // Open SSE streams do not end by themselves; the server gets a moment to finish requests.
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        info!("shut down");
    });
    Ok(Started {
        handle,
        addr,
        ui_url: access.options().ui_url.clone(),
        access,
        done,
    })
}

/// Where the node's logs go: `node.log_path`, else `<data dir>/logs`.
fn log_root(config: &Config, node: &NodeSettings) -> PathBuf {
    node.log_path
        .clone()
        .unwrap_or_else(|| config.data_dir.join("logs"))
}

/// Makes the data dir private (creating it, or tightening an older install's modes), checks the
/// log path, opens the database and finds the cluster key (moving one an older version kept in
/// the database to its file). Returns the database and the node's settings, key included.
fn open_data(config: &Config) -> Result<(RedbStore, NodeSettings), NodeError> {
    let io = |context: String| move |source| NodeError::Io { context, source };
    let data_dir = &config.data_dir;
    crate::private_files::create_dir(data_dir).map_err(io(format!(
        "creating the data directory {}",
        data_dir.display()
    )))?;
    let mut fixed = crate::private_files::tighten(data_dir);
    let mut redb = RedbStore::open(&config.db_path())?;
    let stored = redb.node_settings()?;
    let mut node_settings = stored.clone().unwrap_or_else(|| {
        let mut s = NodeSettings::default();
        if let Some(name) = &config.name {
            s.name = name.clone();
        }
        s
    });
    let log_root = log_root(config, &node_settings);
    logs::check_log_path(&log_root, nix::unistd::geteuid().as_raw()).map_err(|e| {
        NodeError::Refused(format!(
            "{e} (the log path is node.log_path in the settings, or <data dir>/logs)"
        ))
    })?;
    let inside = |root: &std::path::Path| match (root.canonicalize(), data_dir.canonicalize()) {
        (Ok(root), Ok(data)) => root.starts_with(data),
        _ => false,
    };
    if !inside(&log_root) {
        fixed += crate::private_files::tighten(&log_root);
    }
    if fixed > 0 {
        info!(
            fixed,
            data_dir = %data_dir.display(),
            logs = %log_root.display(),
            "made files and folders of an older install private (folders 0700, files 0600)"
        );
    }

    let old_key = node_settings.cluster_key.take();
    let raft_log = crate::consensus::raft::log_store::path(&config.db_path());
    let in_cluster =
        redb.cluster()?.is_some() || std::fs::metadata(&raft_log).is_ok_and(|m| m.len() > 0);
    let key_path = config.cluster_key_path();
    let (key, origin) = cluster_key::resolve(&cluster_key::Sources {
        key_file: config.cluster_key_file.as_deref(),
        given: config.cluster_key.as_deref(),
        kept: &key_path,
        stored: old_key.as_deref(),
        in_cluster,
    })?;
    cluster_key::keep(&key_path, &key)?;
    if origin == cluster_key::Origin::New {
        info!(file = %key_path.display(), fingerprint = %key.fingerprint(), "made a new cluster key");
    }
    if stored.is_none() || old_key.is_some() {
        // The store never writes the key: this drops one an older version kept there.
        redb.write(&[Write::NodeSettings(node_settings.clone())])?;
    }
    if let Some(old) = old_key {
        let gone = redb.scrub(old.as_bytes())?;
        info!(file = %key_path.display(), "moved the cluster key from the database to its own file");
        if !gone {
            warn!(
                database = %config.db_path().display(),
                "the database file may still hold the old cluster key in freed pages; \
                 if copies of it may have been read, give the mesh a new key"
            );
        }
    }
    node_settings.cluster_key = Some(key.to_string());
    Ok((redb, node_settings))
}

/// Routes the requests peers send: consensus requests to the consensus layer, forwarded run
/// requests to the scheduler, and log requests are answered here, from this node's run logs.
async fn route_inbound(
    mut inbound: mpsc::Receiver<crate::mesh::Inbound>,
    consensus: mpsc::Sender<crate::mesh::Inbound>,
    scheduler: SchedulerHandle,
    logs: LogPaths,
) {
    use crate::mesh::{Request, Response};
    while let Some(request) = inbound.recv().await {
        match request.request {
            Request::Schedule(body) => {
                let scheduler = scheduler.clone();
                tokio::spawn(async move {
                    let answer = match serde_json::from_str(body.get()) {
                        Ok(forwarded) => {
                            serde_json::value::to_raw_value(&scheduler.forwarded(forwarded).await)
                                .map(Response::Schedule)
                                .unwrap_or_else(|e| Response::Error(e.to_string()))
                        }
                        Err(e) => Response::Error(format!("not a list of run requests: {e}")),
                    };
                    let _ = request.reply.send(answer);
                });
            }
            Request::RunLog { run, from, max } => {
                let path = match crate::model::RunId::parse(&run) {
                    Some(id) => logs.run_log(&id),
                    None => {
                        let _ = request
                            .reply
                            .send(Response::Error(format!("`{run}` is not a run id")));
                        continue;
                    }
                };
                let max = (max as usize).min(LOG_PIECE);
                tokio::task::spawn_blocking(move || {
                    let answer = match read_from(&path, from, max) {
                        Ok(piece) => Response::RunLog(piece),
                        Err(e) => Response::Error(format!("reading the log of {run}: {e}")),
                    };
                    let _ = request.reply.send(answer);
                });
            }
            _ => {
                if consensus.send(request).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn forward_state_changes(
    mut state: watch::Receiver<Arc<State>>,
    events: Events,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                let _ = events.send(Event::State);
            }
        }
    }
}

async fn sweep_logs(logs: LogPaths, state: watch::Receiver<Arc<State>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                let days = state.borrow().settings.retention_days;
                let logs = logs.clone();
                let report = tokio::task::spawn_blocking(move || {
                    logs::sweep(&logs, days, Utc::now().date_naive(), std::time::SystemTime::now())
                })
                .await
                .unwrap_or_default();
                if report.deleted_files > 0 {
                    info!(files = report.deleted_files, bytes = report.deleted_bytes, "old logs deleted");
                }
            }
        }
    }
}

/// This node and the peers it knows, for /peers and /api/peers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeersView {
    #[serde(rename = "self")]
    pub this: ThisNode,
    pub peers: Vec<crate::mesh::PeerInfo>,
    /// The replicated state's cluster: leader, term, voters, learners, lag.
    pub cluster: consensus::ClusterStatus,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ThisNode {
    pub peer_id: Option<String>,
    pub name: String,
    pub p2p_addrs: Vec<String>,
    /// A label of the cluster key (not the key).
    pub key_fingerprint: Option<String>,
    pub dependencies: Vec<String>,
    pub mesh_up: bool,
}

/// What the health endpoint reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub status: &'static str,
    pub node: String,
    pub version: &'static str,
    pub started_at: chrono::DateTime<Utc>,
    pub tasks: usize,
    pub active_runs: usize,
}

impl NodeHandle {
    pub fn state(&self) -> Arc<State> {
        self.inner.consensus.state()
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
            status: "ok",
            node: self.inner.node.borrow().name.clone(),
            version: env!("CARGO_PKG_VERSION"),
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
        self.inner
            .consensus
            .propose(Change::PutTask(task.clone()))
            .await?;
        Ok(task)
    }

    pub async fn update_task(&self, key: &str, input: TaskInput) -> Result<Task, NodeError> {
        let id = self.task(key)?.id;
        let task = input.into_task(id, Utc::now())?;
        self.inner
            .consensus
            .propose(Change::PutTask(task.clone()))
            .await?;
        Ok(task)
    }

    pub async fn remove_task(&self, key: &str) -> Result<Task, NodeError> {
        let task = self.task(key)?;
        self.inner
            .consensus
            .propose(Change::RemoveTask(task.id.clone()))
            .await?;
        Ok(task)
    }

    /// Execute now.
    pub async fn execute(&self, key: &str) -> Result<Run, NodeError> {
        let task = self.task(key)?;
        self.inner
            .scheduler
            .request(task.id, Trigger::Manual)
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
            self.inner
                .consensus
                .propose(Change::Stop(id.clone()))
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
        runs.extend(
            state
                .runs
                .values()
                .map(Arc::as_ref)
                .filter(|r| query.task.as_ref().is_none_or(|t| *t == r.task_id))
                .filter(|r| query.before.as_ref().is_none_or(|b| r.id < *b))
                .filter(|r| !known.contains(&r.id))
                .cloned(),
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
        let local = tokio::task::spawn_blocking(move || read_from(&path, from, max))
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
            max: max.min(LOG_PIECE) as u32,
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
        self.inner
            .consensus
            .propose(Change::Settings(settings.cluster.clone()))
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
    pub fn why_unplaceable(&self, task: &Task) -> Option<String> {
        let peer_id = self.peers().this.peer_id.unwrap_or_default();
        let this =
            crate::scheduler::placement::Candidate::this_node(&peer_id, &self.node_settings());
        let peers = self.mesh().map(|m| m.peers()).unwrap_or_default();
        let cluster = self.state().cluster.map(|c| c.id);
        let live = crate::scheduler::placement::live(this, &peers, cluster);
        crate::scheduler::placement::why_not(task, &live)
    }

    /// What the MySQL sink is doing: its target, runs waiting, the last error.
    pub fn sink_status(&self) -> crate::sink::SinkStatus {
        self.inner.sink.borrow().clone()
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
                key_fingerprint: key.map(|k| k.fingerprint()),
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

/// Up to `max` bytes of the file at `path` from byte `from` on: empty at or past its end (any
/// `from`, also one beyond the largest file offset, 2^63 - 1, which a seek would refuse), None
/// when there is no file.
fn read_from(path: &std::path::Path, from: u64, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match logs::open_log(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if from >= file.metadata()?.len() {
        return Ok(Some(Vec::new()));
    }
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(max as u64).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::store::Store;

    use super::read_from;

    #[test]
    fn a_log_path_below_a_world_writable_folder_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = crate::Config {
            data_dir: dir.path().join("data"),
            ..crate::Config::default()
        };
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        {
            let (store, mut settings) = super::open_data(&config).expect("first start");
            settings.log_path = Some(open.join("logs"));
            store
                .write(&[crate::store::Write::NodeSettings(settings)])
                .expect("settings");
        }
        let error = super::open_data(&config).map(|_| ()).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains(&format!("{} is writable by everyone", open.display())),
            "{text}"
        );
    }

    #[test]
    fn a_log_is_read_from_any_offset_without_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.log");
        std::fs::write(&path, b"hello\n").expect("write");
        let cases: &[(u64, usize, Option<&[u8]>)] = &[
            (0, 100, Some(b"hello\n")),
            (2, 2, Some(b"ll")),
            (6, 100, Some(b"")),
            (7, 100, Some(b"")),
            // Past the largest file offset: a seek there fails (EINVAL); reading gives nothing.
            (1 << 63, 100, Some(b"")),
            (u64::MAX, 100, Some(b"")),
        ];
        for (from, max, expected) in cases {
            let read = read_from(&path, *from, *max).expect("read");
            assert_eq!(read.as_deref(), *expected, "from {from}");
        }
        let missing = read_from(&dir.path().join("none.log"), u64::MAX, 1).expect("read");
        assert_eq!(missing, None);
    }
}
