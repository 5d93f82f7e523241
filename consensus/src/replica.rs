//! This node's Raft member: the Raft instance on the node's redb file, how it reaches the others,
//! and the leader-side answers to proposals and joins.
//!
//! The instance is replaced (not mutated) when the node leaves its cluster to join another after
//! a merge: [`Replica::reset`] shuts it down, clears the Raft tables and the replicated state, and
//! opens a fresh, uninitialised one that publishes on the same state channel.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};
use tokio::sync::watch;

use super::State;
use super::ending::Ending;
use super::raft::log_store::{self, LogStore};
use super::raft::network::{MeshNetwork, RaftReply, RaftRpc, Refusal, SendError, send};
use super::raft::state_machine::StateMachine;
use super::raft::{Applied, MeshNode, NodeId, TypeConfig};
use crate::Change;
use taskmesh_core::model::RunId;
use taskmesh_mesh::{MeshHandle, PeerId};
use taskmesh_store::RedbStore;

/// Raft timing and log bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// A snapshot is built every this many log entries at least (`replica::snapshot_interval`); older
    /// entries are then purged.
    pub snapshot_every: u64,
    /// Entries kept behind the snapshot, so a briefly absent follower catches up from the log.
    pub keep_behind_snapshot: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            snapshot_every: 1000,
            keep_behind_snapshot: 200,
        }
    }
}

impl Timing {
    fn raft_config(&self) -> Arc<openraft::Config> {
        let config = openraft::Config {
            cluster_name: "taskmesh".into(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            // Snapshots are asked for by `follow_snapshots`, at an interval that grows with
            // the state.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.keep_behind_snapshot,
            // One append request stays well below the mesh's message limit.
            max_payload_entries: 256,
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        };
        Arc::new(
            config
                .validate()
                .expect("the built-in Raft timing is valid"),
        )
    }

    /// How long a leader may go without hearing from a majority before it refuses writes.
    pub fn quorum_lost_after(&self) -> Duration {
        self.election_max * 2
    }
}

/// What a running Raft instance is made of (kept to open a fresh one after a reset).
struct Parts {
    store: Arc<RedbStore>,
    state: watch::Sender<Arc<State>>,
    config: Arc<openraft::Config>,
    snapshot_every: u64,
    /// The newest committed index, kept across reopenings of the Raft instance.
    committed: Arc<std::sync::atomic::AtomicU64>,
}

pub struct Replica {
    pub id: NodeId,
    pub peer_id: PeerId,
    pub timing: Timing,
    raft: RwLock<Raft<TypeConfig>>,
    mesh: watch::Receiver<Option<MeshHandle>>,
    parts: Parts,
    pub ending: Ending,
    contact: watch::Sender<LeaderContact>,
}

/// The leader's Raft contact with this node: how many of its append requests (entries or a
/// keep-alive) this node has taken since its start, and the leader's commit index in the
/// latest. A request taken after a moment carries every entry committed before it was sent, so
/// a node that has applied up to it knows every decision made before that moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaderContact {
    pub count: u64,
    pub committed: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("starting Raft: {0}")]
pub struct OpenError(String);

impl Replica {
    /// Opens the Raft instance on `store`, publishing the committed state on `state`.
    pub async fn open(
        peer_id: PeerId,
        store: Arc<RedbStore>,
        state: watch::Sender<Arc<State>>,
        mesh: watch::Receiver<Option<MeshHandle>>,
        timing: Timing,
    ) -> Result<Self, OpenError> {
        let id = super::raft::node_id(&peer_id.to_string());
        let parts = Parts {
            store,
            state,
            config: timing.raft_config(),
            snapshot_every: timing.snapshot_every,
            committed: Arc::default(),
        };
        let raft = open_raft(id, &parts, mesh.clone()).await?;
        Ok(Self {
            id,
            peer_id,
            timing,
            raft: RwLock::new(raft),
            mesh,
            parts,
            ending: Ending::default(),
            contact: watch::Sender::default(),
        })
    }

    /// Notes an append request taken from a leader whose term this node accepts.
    pub fn note_leader_contact(&self, committed: u64) {
        self.contact.send_modify(|c| {
            c.count += 1;
            c.committed = c.committed.max(committed);
        });
    }

    pub fn leader_contact(&self) -> LeaderContact {
        *self.contact.borrow()
    }

    /// The current Raft instance.
    pub fn raft(&self) -> Raft<TypeConfig> {
        self.raft
            .read()
            .expect("the raft lock is never poisoned")
            .clone()
    }

    /// The index of the newest entry this node knows to be committed.
    pub fn committed(&self) -> u64 {
        self.parts
            .committed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn mesh(&self) -> Option<MeshHandle> {
        self.mesh.borrow().clone()
    }

    /// This node as a Raft member: its PeerId and current p2p addresses.
    pub fn me(&self) -> MeshNode {
        MeshNode {
            peer_id: self.peer_id.to_string(),
            addrs: self
                .mesh()
                .map(|m| m.listen_addrs().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        }
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<MeshNode> {
        let metrics = self.raft().metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    /// Commits `change` if this node leads and hears from a majority; answers within `ttl`.
    pub async fn write_here(&self, change: Change, ttl: Duration) -> Result<u64, Refusal> {
        let raft = self.raft();
        let metrics = raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(Refusal::NotLeader {
                leader: self.leader(),
            });
        }
        let limit = self.timing.quorum_lost_after();
        if let Some(ms) = metrics.millis_since_quorum_ack {
            if Duration::from_millis(ms) > limit {
                return Err(no_quorum(format!(
                    "the leader has not heard from a majority of the voters for {ms} ms"
                )));
            }
        }
        // Until the change is applied (client_write answers after that) or refused.
        let _ending = self.ending.hold(&change);
        match tokio::time::timeout(ttl, raft.client_write(change)).await {
            Err(_) => Err(no_quorum(format!(
                "a majority of the voters did not confirm the change within {} ms",
                ttl.as_millis()
            ))),
            Ok(Ok(written)) => match written.data {
                Applied::Ok => Ok(written.log_id.index),
                Applied::Rejected(invalid) => Err(Refusal::Rejected(invalid)),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Refusal::NotLeader {
                    leader: f.leader_node,
                })
            }
            Ok(Err(e)) => Err(Refusal::Failed(e.to_string())),
        }
    }

    /// Notes runs that their node says have ended (see [`Ending`]), if this node leads.
    pub fn hint_here(&self, ended: &[RunId]) -> bool {
        let leads = self.raft().metrics().borrow().state == ServerState::Leader;
        if leads {
            self.ending.hint(ended);
        }
        leads
    }

    /// Adds `node` as a learner if this node leads. The autopilot promotes it later.
    pub async fn join_here(&self, node: MeshNode, ttl: Duration) -> Result<(), Refusal> {
        let raft = self.raft();
        let metrics = raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(Refusal::NotLeader {
                leader: self.leader(),
            });
        }
        let id = super::raft::node_id(&node.peer_id);
        let membership = metrics.membership_config.membership().clone();
        if let Some(known) = membership.get_node(&id) {
            if known.peer_id != node.peer_id {
                return Err(Refusal::Failed(format!(
                    "{} has the same Raft id as member {}; one of them needs a new identity",
                    node.peer_id, known.peer_id
                )));
            }
            return Ok(());
        }
        match tokio::time::timeout(ttl, raft.add_learner(id, node, false)).await {
            Err(_) => Err(no_quorum(format!(
                "the membership change was not confirmed within {} ms",
                ttl.as_millis()
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Refusal::NotLeader {
                    leader: f.leader_node,
                })
            }
            Ok(Err(e)) => Err(Refusal::Failed(e.to_string())),
        }
    }

    /// Sends a request to another member over the mesh.
    pub async fn ask(
        &self,
        node: &MeshNode,
        rpc: &RaftRpc,
        ttl: Duration,
    ) -> Result<RaftReply, SendError> {
        let peer: PeerId = node
            .peer_id
            .parse()
            .map_err(|e| SendError::Garbled(format!("member {node}: {e}")))?;
        let mesh = self
            .mesh()
            .ok_or_else(|| SendError::Unreachable("the p2p endpoint is not running".into()))?;
        send(&mesh, peer, rpc, ttl).await
    }

    /// Leaves the cluster: shuts the Raft instance down, clears the Raft tables and the
    /// replicated state, and starts a fresh, uninitialised instance.
    pub async fn reset(&self) -> Result<(), OpenError> {
        let old = self.raft();
        let _ = old.shutdown().await;
        let db = self.parts.store.database();
        let log = log_store::path(self.parts.store.path());
        tokio::task::spawn_blocking(move || super::raft::clear(&db, &log))
            .await
            .map_err(|e| OpenError(e.to_string()))?
            .map_err(|e| OpenError(format!("clearing the Raft state: {e}")))?;
        let fresh = open_raft(self.id, &self.parts, self.mesh.clone()).await?;
        *self.raft.write().expect("the raft lock is never poisoned") = fresh;
        Ok(())
    }

    pub async fn shutdown(&self) {
        let _ = self.raft().shutdown().await;
    }
}

fn no_quorum(detail: String) -> Refusal {
    Refusal::NoQuorum(format!(
        "no quorum: {detail}; the change is not confirmed (this node may be cut off from most of the cluster)"
    ))
}

async fn open_raft(
    id: NodeId,
    parts: &Parts,
    mesh: watch::Receiver<Option<MeshHandle>>,
) -> Result<Raft<TypeConfig>, OpenError> {
    let log = LogStore::beside(&parts.store)
        .map_err(|e| OpenError(e.to_string()))?
        .report_committed(parts.committed.clone());
    let sm = StateMachine::open_into(&parts.store, parts.state.clone(), log.on_disk())
        .map_err(|e| OpenError(e.to_string()))?;
    let network = MeshNetwork {
        mesh,
        metrics: Arc::default(),
    };
    let metrics = network.metrics.clone();
    let raft = Raft::new(id, parts.config.clone(), network, log, sm)
        .await
        .map_err(|e| OpenError(e.to_string()))?;
    let _ = metrics.set(raft.metrics());
    tokio::spawn(follow_snapshots(
        raft.clone(),
        parts.snapshot_every,
        parts.state.subscribe(),
    ));
    Ok(raft)
}

/// How many log entries after a snapshot the next one is built: `every`, or a tenth of the
/// state's size (its tasks and runs) once that is more. A snapshot costs in proportion to the
/// state, so with its interval growing alike each entry pays the same share of it, however
/// large the state.
pub fn snapshot_interval(every: u64, state_size: u64) -> u64 {
    every.max(state_size / 10)
}

/// Asks Raft for a snapshot whenever the log since the last one reached [`snapshot_interval`],
/// until the instance shuts down. A request that brought no snapshot is repeated after a
/// minute.
async fn follow_snapshots(raft: Raft<TypeConfig>, every: u64, state: watch::Receiver<Arc<State>>) {
    const RETRY: Duration = Duration::from_secs(60);
    let mut metrics = raft.metrics();
    let mut asked: Option<(u64, std::time::Instant)> = None;
    loop {
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            let index = |l: Option<openraft::LogId<NodeId>>| l.map_or(0, |l| l.index);
            (index(m.last_applied), index(m.snapshot))
        };
        if asked.is_some_and(|(at, when)| snapshot >= at || when.elapsed() > RETRY) {
            asked = None;
        }
        let size = {
            let state = state.borrow();
            (state.tasks.len() + state.runs.len()) as u64
        };
        if asked.is_none() && applied.saturating_sub(snapshot) >= snapshot_interval(every, size) {
            asked = Some((applied, std::time::Instant::now()));
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_interval;

    #[test]
    fn the_snapshot_interval_grows_with_the_state() {
        assert_eq!(snapshot_interval(1000, 0), 1000);
        assert_eq!(snapshot_interval(1000, 10_000), 1000);
        assert_eq!(snapshot_interval(1000, 100_000), 10_000);
        assert_eq!(snapshot_interval(40, 1_000), 100);
    }
}
