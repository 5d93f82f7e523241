//! The node's wiring: starts every layer and actor of a node in phases, serves its UI and API,
//! and stops them in order. The handle over the running node is [`NodeHandle`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod mesh;
mod run_report;
pub(crate) mod storage;

pub use crate::handle::{NodeError, NodeHandle};

use crate::api::auth::Access;
use crate::config::Config;
use crate::consensus::{self, Consensus, State};
use crate::events::{self, Event, Events};
use crate::executor::{DaemonStatus, Executor, ExecutorHandle, ProcessGroups, Supervisor};
use crate::handle::Inner;
use crate::ledger::RunLedger;
use crate::logs::{self, LogPaths};
use crate::model::{NodeSettings, TaskId};
use crate::notify::Notifier;
use crate::scheduler::{Scheduler, SchedulerHandle};
use crate::store::{RedbStore, RunQuery, Store};

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long a node without a cluster looks for peers before founding one (see the autopilot).
const DISCOVERY: Duration = Duration::from_secs(2);

/// A started node: its handle, the address its UI listens on, and its end.
pub struct Started {
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:8080`, or `https://…` with TLS.
    pub ui_url: String,
    access: Arc<Access>,
    done: JoinHandle<()>,
    /// Fires when the web server begins to answer.
    answering: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Started {
    /// A fresh one-time login link for the browser.
    pub fn login_link(&self) -> Result<String, crate::api::auth::LoginRefused> {
        Ok(self.access.login_url(&self.access.new_code()?))
    }

    /// Waits until the UI and API answer (the state has caught up with the log, at most
    /// 3 s after the start): `true`, or `false` when the node stopped first.
    pub async fn answering(&mut self) -> bool {
        match self.answering.take() {
            Some(answering) => answering.await.is_ok(),
            None => false,
        }
    }

    /// Waits until the node has shut down (after its cancel token fired) and flushed its state.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// How long the web server waits at start for the state to catch up with the Raft log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

/// Runs a node until `shutdown` is cancelled, then stops its processes and flushes its state.
/// Under systemd (`Type=notify`), it says `READY=1` once the UI and API answer and
/// `STOPPING=1` when `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let mut started = start(config, shutdown.clone()).await?;
    info!(url = %started.ui_url, "taskmesh node is up");
    // On its own line after the one above (tests read the first `url=`); the field's name
    // does not contain `url=`.
    match started.login_link() {
        Ok(link) => {
            info!(login_link = %link, "open this link to log in to the UI (it works once, for 10 minutes; `taskmesh login-url` makes another)")
        }
        Err(e) => warn!(error = %e, "no login link"),
    }
    let ui_url = started.ui_url.clone();
    let answering = tokio::select! {
        _ = shutdown.cancelled() => false,
        answering = started.answering() => answering,
    };
    if answering {
        crate::service::sd_notify::ready(&ui_url);
        shutdown.cancelled().await;
    }
    crate::service::sd_notify::stopping();
    started.wait().await;
    Ok(())
}

/// Starts a node and returns once its UI is listening. The start goes in phases, each a
/// function below: `open_storage` (data dir, database, identity, logs), `listen` (the UI's
/// socket, so its URL is known), `start_consensus` (Raft over the mesh), `start_history`
/// (the run ledger, the MySQL sink, the reporter), `start_workers` (executor, supervisor,
/// scheduler, dispatcher, notifier), then the mesh and `serve`. The last phase,
/// `shut_down`, stops them in the reverse order once `shutdown` fires.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Started, NodeError> {
    crate::process_setup::prepare();
    let storage = open_storage(&config).await?;
    let listening = listen(&config).await?;
    // The core (state and history) outlives the workers, so that runs ending during shutdown
    // are still recorded.
    let core = CancellationToken::new();
    let work = shutdown.child_token();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (consensus, inbound) = start_consensus(&config, &storage, core.clone()).await?;
    let history = start_history(&storage, &consensus, &metrics).await?;
    let workers = start_workers(
        &storage,
        &consensus,
        inbound,
        &history,
        &listening.ui_url,
        &metrics,
        work.clone(),
    );
    let handle = NodeHandle {
        inner: Arc::new(Inner {
            consensus: consensus.consensus.clone(),
            ledger: history.ledger.clone(),
            executor: workers.executor.clone(),
            scheduler: workers.scheduler.clone(),
            daemons: workers.daemons.clone(),
            node: storage.node.clone(),
            store: Arc::downgrade(&(storage.redb.clone() as Arc<dyn Store>)),
            events: storage.events.clone(),
            notifier: workers.notifier.clone(),
            logs: storage.logs.clone(),
            config: config.clone(),
            started_at: Utc::now(),
            mesh: consensus.mesh_rx.clone(),
            sink: history.sink_status.clone(),
            metrics: metrics.clone(),
        }),
    };
    // The mesh outlives the workers, so that the ends of the runs stopped at shutdown still
    // reach the cluster, and peers see this node's connections close only once its processes
    // are gone (they take a refused dial for a dead node).
    let meshing = CancellationToken::new();
    let mesh_task = tokio::spawn(
        mesh::MeshRunner {
            config: config.clone(),
            identity: storage.identity,
            ui_url: listening.ui_url.clone(),
            start: storage.start,
            node: storage.node.subscribe(),
            state: consensus.consensus.subscribe(),
            consensus: consensus.consensus.clone(),
            traffic: metrics.traffic(),
            inbound: consensus.inbound_tx,
            ledger: history.ledger.clone(),
            current: consensus.mesh_tx,
            cancel: meshing.clone(),
        }
        .run(),
    );
    let addr = listening.addr;
    let Serving {
        access,
        server,
        answering,
    } = serve(&config, listening, handle.clone(), work.clone())?;
    let done = tokio::spawn(shut_down(
        work,
        core,
        Stopping {
            workers: workers.tasks,
            mesh: mesh_task,
            meshing,
            history,
            committer: consensus.committer,
            server,
        },
    ));
    Ok(Started {
        handle,
        addr,
        ui_url: access.options().ui_url.clone(),
        access,
        done,
        answering: Some(answering),
    })
}

/// What [`open_storage`] opened.
struct Storage {
    redb: Arc<RedbStore>,
    identity: libp2p::identity::Keypair,
    logs: LogPaths,
    node: watch::Sender<NodeSettings>,
    events: Events,
    groups: ProcessGroups,
    /// This start of the node: microseconds since the epoch when it began, new at every start
    /// (`Announcement::start`; a run placed on an earlier start never starts on this one).
    start: u64,
}

/// Phase 1: the data directory, the database, the node's identity and its log folder, and the
/// runs' process groups: what a previous process of this node left running is killed here,
/// before the run history reports those runs `lost`.
async fn open_storage(config: &Config) -> Result<Storage, NodeError> {
    let (redb, node_settings) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || storage::open_data(&config))
            .await
            .map_err(|e| NodeError::Unavailable(format!("opening the data directory: {e}")))??
    };
    let identity = {
        let path = config.identity_path();
        crate::mesh::load_or_create_identity(&path).map_err(|source| NodeError::Io {
            context: format!("reading or creating the identity {}", path.display()),
            source,
        })?
    };
    let logs = LogPaths::new(storage::log_root(config, &node_settings));
    let groups = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || ProcessGroups::open(&dir))
            .await
            .map_err(|e| NodeError::Unavailable(format!("opening the process-group journal: {e}")))?
            .map(|(groups, _swept)| groups)
            .map_err(|source| NodeError::Io {
                context: format!(
                    "reading the process-group journal in {}",
                    config.data_dir.display()
                ),
                source,
            })?
    };
    Ok(Storage {
        redb: Arc::new(redb),
        identity,
        logs,
        node: watch::Sender::new(node_settings),
        events: events::bus(),
        groups,
        start: node_start(),
    })
}

/// A value for `Storage::start`: the time now in microseconds since the epoch.
fn node_start() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(1, |d| d.as_micros() as u64)
}

/// Where the UI listens, bound before the workers start so that its URL (which notifications
/// link to) is known; connections wait in the backlog until [`serve`] answers them.
struct Listening {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    /// `http://host:port`, or `https://…` with TLS.
    ui_url: String,
    tls: Option<crate::api::tls::Tls>,
}

/// Phase 2: the UI's socket and its TLS.
async fn listen(config: &Config) -> Result<Listening, NodeError> {
    let io = |context: String| move |source| NodeError::Io { context, source };
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
    Ok(Listening {
        listener,
        addr,
        ui_url,
        tls,
    })
}

/// What [`start_consensus`] started.
struct Replication {
    consensus: Consensus,
    committer: JoinHandle<()>,
    /// The p2p endpoint while it runs; the mesh runner fills it.
    mesh_tx: watch::Sender<Option<crate::mesh::MeshHandle>>,
    mesh_rx: watch::Receiver<Option<crate::mesh::MeshHandle>>,
    /// Requests from peers (the mesh sends them here); [`route_inbound`] hands the consensus
    /// layer its own through `consensus_tx`.
    inbound_tx: mpsc::Sender<crate::mesh::Inbound>,
    consensus_tx: mpsc::Sender<crate::mesh::Inbound>,
}

/// Phase 3: the replicated state (Raft over the mesh), stopped by `core` after everything else.
/// Returns it with the receiving end of the peers' requests.
async fn start_consensus(
    config: &Config,
    storage: &Storage,
    core: CancellationToken,
) -> Result<(Replication, mpsc::Receiver<crate::mesh::Inbound>), NodeError> {
    let (mesh_tx, mesh_rx) = watch::channel(None);
    // Requests from peers: consensus requests go to the consensus layer, log requests are
    // answered from this node's log files.
    let (inbound_tx, inbound_rx) = mpsc::channel(256);
    let (consensus_tx, consensus_rx) = mpsc::channel(256);
    let node = storage.node.subscribe();
    // A node that can find no one (no peers configured, no mDNS) founds its cluster at once;
    // others look for a moment first, so that nodes started together form one cluster.
    let alone = node.borrow().peers.is_empty()
        && config.peers.is_empty()
        && !config.mdns.unwrap_or(node.borrow().mdns);
    let (consensus, committer) = Consensus::start(
        consensus::Options {
            peer_id: storage.identity.public().to_peer_id(),
            store: storage.redb.clone(),
            mesh: mesh_rx.clone(),
            inbound: consensus_rx,
            timing: config.raft,
            discovery: if alone { Duration::ZERO } else { DISCOVERY },
            node,
        },
        core,
    )
    .await
    .map_err(|e| NodeError::Unavailable(e.to_string()))?;
    let replication = Replication {
        consensus,
        committer,
        mesh_tx,
        mesh_rx,
        inbound_tx,
        consensus_tx,
    };
    Ok((replication, inbound_rx))
}

/// What [`start_history`] started: the run history and what reports it.
struct History {
    ledger: RunLedger,
    ledger_writer: JoinHandle<()>,
    reporter: JoinHandle<()>,
    reporting: CancellationToken,
    sink: JoinHandle<()>,
    sinking: CancellationToken,
    sink_status: watch::Receiver<crate::sink::SinkStatus>,
}

/// Phase 4: the run ledger (this node's history), the reporter (runs to the cluster) and the
/// MySQL sink. Each has its own stop, so that the last runs' ends still reach them.
async fn start_history(
    storage: &Storage,
    replication: &Replication,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<History, NodeError> {
    let consensus = &replication.consensus;
    let reports = crate::reports::Reports::default();
    let outbox = {
        let db = storage.redb.database();
        tokio::task::spawn_blocking(move || crate::sink::Outbox::open(db))
            .await
            .map_err(|e| NodeError::Unavailable(format!("opening the MySQL outbox: {e}")))??
    };
    let store: Arc<dyn Store> = storage.redb.clone();
    let (ledger, ledger_writer) = RunLedger::start(
        store,
        storage.events.clone(),
        consensus.subscribe(),
        storage.logs.clone(),
        reports.clone(),
        outbox.clone(),
    )
    .await?;
    // Stopped after the ledger has stored (and staged) the last runs' ends; what the sink has
    // not sent by then waits in the outbox for the next start.
    let sinking = CancellationToken::new();
    let (sink_tx, sink_status) = watch::channel(crate::sink::SinkStatus::default());
    let sink = tokio::spawn(
        crate::sink::Sink {
            outbox,
            state: consensus.subscribe(),
            logs: storage.logs.clone(),
            status: sink_tx,
            metrics: metrics.clone(),
            cancel: sinking.clone(),
        }
        .run(),
    );
    // Stopped after the ledger, so that the last runs' ends are reported too.
    let reporting = CancellationToken::new();
    let reporter = tokio::spawn(
        run_report::RunReporter {
            runs: reports,
            consensus: consensus.clone(),
            cancel: reporting.clone(),
        }
        .run(),
    );
    Ok(History {
        ledger,
        ledger_writer,
        reporter,
        reporting,
        sink,
        sinking,
        sink_status,
    })
}

/// What [`start_workers`] started.
struct Workers {
    executor: ExecutorHandle,
    scheduler: SchedulerHandle,
    notifier: Notifier,
    daemons: watch::Receiver<BTreeMap<TaskId, DaemonStatus>>,
    /// Awaited at shutdown, in this order.
    tasks: Vec<JoinHandle<()>>,
}

/// Phase 5: the actors that run tasks: executor, supervisor, scheduler, dispatcher and
/// notifier, plus the background loops (peer requests, state events, log retention). All stop
/// with `work`.
fn start_workers(
    storage: &Storage,
    replication: &Replication,
    inbound: mpsc::Receiver<crate::mesh::Inbound>,
    history: &History,
    ui_url: &str,
    metrics: &Arc<crate::metrics::Metrics>,
    work: CancellationToken,
) -> Workers {
    let consensus = &replication.consensus;
    let ledger = &history.ledger;
    let logs = &storage.logs;
    let node = storage.node.subscribe();
    let (finished_tx, finished_rx) = mpsc::channel(1024);
    let (follow_ups_tx, follow_ups) = mpsc::channel(crate::scheduler::FOLLOW_UPS);
    let peer_id = storage.identity.public().to_peer_id().to_string();
    let (executor, executor_handle) = Executor::new(
        crate::executor::Parts {
            ledger: ledger.clone(),
            logs: logs.clone(),
            events: storage.events.clone(),
            node: node.clone(),
            peer_id: peer_id.clone(),
            finished: finished_tx,
            groups: storage.groups.clone(),
            metrics: metrics.clone(),
        },
        work.clone(),
    );
    let notifier = Notifier::new(
        consensus.subscribe(),
        node.clone(),
        ledger.clone(),
        logs.clone(),
        ui_url.to_owned(),
        metrics.clone(),
        work.clone(),
    );
    let (lease_tx, lease) = watch::channel(false);
    let lease_keeper = crate::executor::lease::LeaseKeeper {
        consensus: consensus.clone(),
        mesh: replication.mesh_rx.clone(),
        peer_id: peer_id.clone(),
        held: lease_tx,
        cancel: work.clone(),
    };
    let (supervisor, daemons) = Supervisor::new(
        finished_rx,
        consensus.clone(),
        executor_handle.clone(),
        ledger.clone(),
        follow_ups_tx,
        storage.events.clone(),
        notifier.clone(),
        lease,
        work.clone(),
    );
    let (ready_tx, ready_rx) = watch::channel(false);
    let (scheduler, scheduler_handle) = Scheduler::new(
        crate::scheduler::Parts {
            consensus: consensus.clone(),
            node,
            mesh: replication.mesh_rx.clone(),
            peer_id: peer_id.clone(),
            start: storage.start,
            executor: executor_handle.clone(),
            ledger: ledger.clone(),
            dispatcher_ready: ready_rx,
            follow_ups,
        },
        work.clone(),
    );
    let dispatcher = crate::executor::dispatch::Dispatcher {
        peer_id,
        start: storage.start,
        consensus: consensus.clone(),
        ready: ready_tx,
        state: consensus.subscribe(),
        executor: executor_handle.clone(),
        ledger: ledger.clone(),
        cancel: work.clone(),
    };
    tokio::spawn(dispatcher.run());
    tokio::spawn(route_inbound(
        inbound,
        replication.consensus_tx.clone(),
        scheduler_handle.clone(),
        logs.clone(),
        ledger.clone(),
    ));
    let tasks = vec![
        tokio::spawn(executor.run()),
        tokio::spawn(supervisor.run()),
        tokio::spawn(lease_keeper.run()),
        tokio::spawn(scheduler.run()),
    ];
    tokio::spawn(forward_state_changes(
        consensus.subscribe(),
        storage.events.clone(),
        work.clone(),
    ));
    tokio::spawn(sweep_logs(logs.clone(), consensus.subscribe(), work));
    Workers {
        executor: executor_handle,
        scheduler: scheduler_handle,
        notifier,
        daemons,
        tasks,
    }
}

/// What [`serve`] started: the access check, the server's task, and a signal that fires when
/// the server begins to answer.
struct Serving {
    access: Arc<Access>,
    server: JoinHandle<()>,
    answering: tokio::sync::oneshot::Receiver<()>,
}

/// Phase 6: the web server (API, UI and login behind the access check and the Host guard),
/// answering once the state has caught up with the Raft log.
fn serve(
    config: &Config,
    listening: Listening,
    handle: NodeHandle,
    work: CancellationToken,
) -> Result<Serving, NodeError> {
    let access = Access::start(crate::api::auth::AccessOptions {
        token_path: config.access_token_path(),
        session_ttl: config.session_ttl,
        secure_cookies: listening.tls.is_some(),
        ui_url: listening.ui_url.clone(),
        node: Some(handle.inner.node.subscribe()),
        state: Some(handle.inner.consensus.subscribe()),
    })
    .map_err(|e| NodeError::Unavailable(crate::error_text::error_text(&e)))?;
    info!(token_file = %config.access_token_path().display(), "the UI and API require the access token in this file");
    let app = crate::api::router(handle.clone())
        .merge(crate::ui::router(handle.clone()))
        .merge(crate::api::login_router(access.clone(), handle.clone()))
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
        tls: listening.tls.map(|t| t.acceptor),
    };
    let listener = listening.listener;
    let mut applied = handle.inner.consensus.subscribe();
    let (answering_tx, answering) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        // After a crash the state tables may lag the Raft log (docs/consensus.md, "Applying"):
        // answer once the state holds what the log held at start, so a read right after a
        // restart sees every acknowledged write; a node cut off from its cluster answers after
        // `CATCH_UP_WAIT` with what it has. Connections wait in the listener's backlog.
        tokio::select! {
            _ = work.cancelled() => {}
            _ = tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|s| s.caught_up)) => {}
        }
        if !work.is_cancelled() {
            // The listener is bound and this task accepts from here on: a connection made
            // after this answer is served.
            let _ = answering_tx.send(());
        }
        crate::api::serve::serve(listener, app, serve_options, work).await;
    });
    Ok(Serving {
        access,
        server,
        answering,
    })
}

/// What [`shut_down`] stops, in order.
struct Stopping {
    workers: Vec<JoinHandle<()>>,
    mesh: JoinHandle<()>,
    /// Stops the mesh runner, once the last runs' ends are reported.
    meshing: CancellationToken,
    history: History,
    committer: JoinHandle<()>,
    server: JoinHandle<()>,
}

/// The last phase: once `work` is cancelled, the workers stop (their runs with them), then the
/// history records the last ends and reports them, the sink stages what it has not sent, and
/// consensus (`core`) stops last.
async fn shut_down(work: CancellationToken, core: CancellationToken, parts: Stopping) {
    work.cancelled().await;
    info!("shutting down: stopping runs");
    for task in parts.workers {
        let _ = task.await;
    }
    let history = parts.history;
    history.ledger.close().await;
    let _ = history.ledger_writer.await;
    history.reporting.cancel();
    let _ = history.reporter.await;
    parts.meshing.cancel();
    let _ = parts.mesh.await;
    history.sinking.cancel();
    let _ = history.sink.await;
    core.cancel();
    let _ = parts.committer.await;
    // Open SSE streams do not end by themselves; the server gets a moment to finish requests.
    let _ = tokio::time::timeout(Duration::from_secs(2), parts.server).await;
    info!("shut down");
}

/// Routes the requests peers send: consensus requests to the consensus layer, forwarded run
/// requests to the scheduler; log and history requests are answered here, from this node's run
/// logs and history.
async fn route_inbound(
    mut inbound: mpsc::Receiver<crate::mesh::Inbound>,
    consensus: mpsc::Sender<crate::mesh::Inbound>,
    scheduler: SchedulerHandle,
    logs: LogPaths,
    ledger: RunLedger,
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
            Request::Runs(body) => {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let answer = match serde_json::from_str::<RunQuery>(body.get()) {
                        Ok(mut query) => {
                            query.limit = query.limit.min(crate::history::RUNS_ASKED_MAX);
                            match ledger.list(query).await {
                                Ok(runs) => serde_json::value::to_raw_value(&runs)
                                    .map(Response::Runs)
                                    .unwrap_or_else(|e| Response::Error(e.to_string())),
                                Err(e) => Response::Error(format!("reading the history: {e}")),
                            }
                        }
                        Err(e) => Response::Error(format!("not a query of runs: {e}")),
                    };
                    let _ = request.reply.send(answer);
                });
            }
            Request::RunStats(body) => {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let answer =
                        match serde_json::from_str::<chrono::DateTime<chrono::Utc>>(body.get()) {
                            Ok(since) => match ledger.stats(since).await {
                                Ok(stats) => serde_json::value::to_raw_value(&stats)
                                    .map(Response::RunStats)
                                    .unwrap_or_else(|e| Response::Error(e.to_string())),
                                Err(e) => Response::Error(format!("reading the history: {e}")),
                            },
                            Err(e) => Response::Error(format!("not a time: {e}")),
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
                let max = (max as usize).min(logs::LOG_PIECE);
                tokio::task::spawn_blocking(move || {
                    let answer = match logs::read_from(&path, from, max) {
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
