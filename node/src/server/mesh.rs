//! Keeps this node in the mesh: starts the p2p endpoint with the node's key and settings,
//! restarts it when they change (an imported key takes effect at once), and announces the node.

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::consensus::{Consensus, State};
use crate::ledger::RunLedger;
use crate::mesh::{self, Announcement, ClusterKey, Inbound, MeshConfig, MeshHandle};
use crate::model::{NodeSettings, RunStatus};

/// How often the node refreshes what it announces (the mesh sends it only when it changed, and
/// every few seconds as a sign of life).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// After a failed start, the endpoint is tried again this much later (or when settings change).
const RETRY: Duration = Duration::from_secs(10);

/// The settings the endpoint is built from; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    key: Option<String>,
    mdns: bool,
    peers: Vec<String>,
    peer_ttl: Duration,
}

impl Shape {
    fn of(node: &NodeSettings, state: &State, config: &Config) -> Self {
        let mut peers = node.peers.clone();
        peers.extend(config.peers.iter().cloned());
        Self {
            key: node.cluster_key.clone(),
            mdns: config.mdns.unwrap_or(node.mdns),
            peers,
            peer_ttl: state.settings.peer_timeout.0,
        }
    }

    fn current(runner: &mut MeshRunner) -> Self {
        let state = runner.state.borrow_and_update().clone();
        Self::of(&runner.node.borrow_and_update(), &state, &runner.config)
    }
}

pub(super) struct MeshRunner {
    pub config: Config,
    pub identity: Keypair,
    pub ui_url: String,
    /// This start of the node (`Announcement::start`).
    pub start: u64,
    pub node: watch::Receiver<NodeSettings>,
    pub state: watch::Receiver<Arc<State>>,
    pub consensus: Consensus,
    /// Where every endpoint this runner starts counts its bytes (`/metrics`).
    pub traffic: Arc<mesh::Traffic>,
    /// Where the endpoint hands the requests it does not answer itself (consensus requests).
    pub inbound: mpsc::Sender<Inbound>,
    pub ledger: RunLedger,
    pub current: watch::Sender<Option<MeshHandle>>,
    pub cancel: CancellationToken,
}

impl MeshRunner {
    pub async fn run(mut self) {
        loop {
            let shape = Shape::current(&mut self);
            let started = match self.mesh_config(&shape) {
                Ok(config) => mesh::start(config, self.cancel.child_token()).await,
                Err(e) => Err(e),
            };
            match started {
                Ok((handle, task)) => {
                    self.current.send_replace(Some(handle.clone()));
                    let stop = self.serve(&handle, &shape).await;
                    self.current.send_replace(None);
                    drop(handle);
                    task.abort();
                    let _ = task.await;
                    if stop {
                        return;
                    }
                    info!("mesh settings changed; restarting the p2p endpoint");
                }
                Err(e) => {
                    error!(error = %e, "the p2p endpoint did not start; this node is alone until it does");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = self.node.changed() => {}
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    fn mesh_config(&self, shape: &Shape) -> Result<MeshConfig, mesh::MeshError> {
        let key: ClusterKey = shape
            .key
            .as_deref()
            .ok_or_else(|| mesh::MeshError::Build("this node has no cluster key".into()))?
            .parse()
            .map_err(mesh::MeshError::Build)?;
        let listen = self
            .config
            .p2p_listen
            .parse()
            .map_err(|e| mesh::MeshError::Listen {
                addr: libp2p::Multiaddr::empty(),
                message: format!("`{}` is not a multiaddr: {e}", self.config.p2p_listen),
            })?;
        Ok(MeshConfig {
            identity: self.identity.clone(),
            key,
            listen,
            mdns: shape.mdns,
            peers: shape.peers.clone(),
            announce_every: ANNOUNCE_EVERY,
            peer_ttl: shape.peer_ttl,
            inbound: Some(self.inbound.clone()),
            traffic: self.traffic.clone(),
        })
    }

    /// Announces the node until shutdown (true) or until the mesh settings change (false).
    async fn serve(&mut self, handle: &MeshHandle, shape: &Shape) -> bool {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return true,
                changed = self.node.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                    if Shape::current(self) != *shape {
                        return false;
                    }
                    handle.announce(self.announcement()).await;
                }
                Ok(()) = self.state.changed() => {
                    if Shape::current(self) != *shape {
                        return false;
                    }
                }
                _ = tick.tick() => handle.announce(self.announcement()).await,
            }
        }
    }

    fn announcement(&self) -> Announcement {
        let node = self.node.borrow().clone();
        let state = self.state.borrow().clone();
        let active = self.ledger.active();
        let running: Vec<_> = active
            .iter()
            .filter(|r| r.status == RunStatus::Running)
            .collect();
        let busy = running
            .iter()
            .filter(|r| !state.tasks.get(&r.task_id).is_some_and(|t| t.is_always()))
            .count();
        Announcement {
            peer_id: String::new(),
            name: node.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            dependencies: node.fulfilled(),
            slots_total: node.slots,
            slots_free: node.slots.saturating_sub(busy as u32),
            load: mesh::load_average(),
            running: running.len() as u32,
            ui_url: self.ui_url.clone(),
            addrs: Vec::new(),
            seq: 0,
            cluster: self.consensus.badge(),
            start: Some(self.start),
        }
    }
}
