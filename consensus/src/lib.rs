//! The state every node agrees on: tasks, cluster settings, each task's last fired slot, and
//! which cluster this is.
//!
//! Changes go through [`Consensus::propose`], which commits them through Raft (openraft 0.9) on
//! the leader, forwarding them over the mesh when this node does not lead, and come back as new
//! [`State`] snapshots on a watch channel. The [`autopilot`] forms, grows, heals and merges the
//! cluster without an operator. See docs/consensus.md.

pub mod autopilot;
mod ending;
mod inbound;
pub mod raft;
mod replica;
mod state;
mod status;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use taskmesh_core::model::{Invalid, NodeSettings, RunId};
use taskmesh_mesh::{ClusterBadge, Inbound, MeshHandle, PeerId};
use taskmesh_store::RedbStore;

pub use ending::Ending;
use raft::MeshNode;
use raft::network::{RaftReply, RaftRpc, Refusal};
pub use replica::{LeaderContact, Timing};
use replica::{OpenError, Replica};
pub use state::{Adopted, Change, ClusterRuns, RUNS_PER_TASK, State, Tasks};
pub use status::{ClusterStatus, MemberStatus};

/// How long a proposal may take before it fails (it fails sooner when the leader knows it has
/// no majority).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the news that runs ended may take to the leader (its report follows regardless).
const HINT_TIMEOUT: Duration = Duration::from_secs(1);

/// A node's Raft figures at one moment ([`Consensus::figures`]); indexes are 0 before the first
/// entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftFigures {
    pub term: u64,
    /// This node is the leader.
    pub leader: bool,
    /// This node knows a leader (itself or another).
    pub has_leader: bool,
    /// The newest entry in this node's log.
    pub last_log: u64,
    /// The newest entry this node knows to be committed.
    pub committed: u64,
    /// The newest entry this node's state has applied.
    pub applied: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] Invalid),
    /// No majority confirmed the change, or there is no leader to ask.
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Failed(String),
    #[error("the node is shutting down")]
    Shutdown,
}

impl From<Refusal> for ProposeError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Rejected(invalid) => Self::Rejected(invalid),
            Refusal::NoQuorum(m) => Self::NoQuorum(m),
            Refusal::NotLeader { .. } => Self::NoQuorum(
                "no quorum: there is no leader this node can reach; the change is not confirmed"
                    .into(),
            ),
            Refusal::Failed(m) => Self::Failed(m),
        }
    }
}

/// What the consensus layer needs from the node.
pub struct Options {
    pub peer_id: PeerId,
    pub store: Arc<RedbStore>,
    /// The p2p endpoint while it runs.
    pub mesh: watch::Receiver<Option<MeshHandle>>,
    /// Requests from peers that the mesh hands to the node.
    pub inbound: mpsc::Receiver<Inbound>,
    pub timing: Timing,
    /// How long a node without a cluster looks for one before the lowest PeerId founds one.
    pub discovery: Duration,
    /// The node's own settings (its name labels tasks it hands over in a merge).
    pub node: watch::Receiver<NodeSettings>,
}

/// A cloneable handle for reading the agreed state and proposing changes to it.
#[derive(Clone)]
pub struct Consensus {
    replica: Arc<Replica>,
    state: watch::Receiver<Arc<State>>,
    digest: Arc<DigestCache>,
}

/// The digest of the newest state a [`Consensus`] was asked for, with that state (see
/// [`Consensus::digest`]); the `Weak` keeps the state's allocation, so its address is not reused.
type DigestCache = Mutex<Option<(Weak<State>, u64)>>;

impl Consensus {
    /// Opens the Raft instance and starts the autopilot and the answering of peers' requests.
    /// The returned task ends after `cancel`, once Raft has shut down.
    pub async fn start(
        options: Options,
        cancel: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), OpenError> {
        let (state_tx, state_rx) = watch::channel(Arc::default());
        let replica = Arc::new(
            Replica::open(
                options.peer_id,
                options.store,
                state_tx,
                options.mesh,
                options.timing,
            )
            .await?,
        );
        tokio::spawn(inbound::answer_inbound(replica.clone(), options.inbound));
        let consensus = Self {
            replica: replica.clone(),
            state: state_rx,
            digest: Arc::default(),
        };
        let pilot =
            autopilot::Autopilot::new(consensus.clone(), options.discovery, options.node, cancel);
        let task = tokio::spawn(async move {
            pilot.run().await;
            replica.shutdown().await;
        });
        Ok((consensus, task))
    }

    /// Commits `change` through the leader; returns once this node has applied it. Fails with
    /// [`ProposeError::NoQuorum`] within [`PROPOSE_TIMEOUT`] when no majority confirms it.
    #[tracing::instrument(level = "debug", skip_all, fields(change = change.kind()))]
    pub async fn propose(&self, change: Change) -> Result<(), ProposeError> {
        let index = self.commit(None, change).await?;
        let remaining = PROPOSE_TIMEOUT;
        // Committed; wait (briefly) until this node shows it too, so a reader sees its write.
        let _ = self
            .replica
            .raft()
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "the change is applied here")
            .await;
        Ok(())
    }

    /// Commits `change` in the cluster that `via` belongs to (this node's own cluster when
    /// `None`), following the leader hints the members give. Returns the log index.
    async fn commit(&self, via: Option<MeshNode>, change: Change) -> Result<u64, ProposeError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let me = self.replica.peer_id.to_string();
        // In this node's own cluster the leader it knows is the one to ask; in another cluster
        // only the hints of that cluster's members count.
        let own = via.is_none();
        let mut target = via;
        let mut last = Refusal::NotLeader { leader: None };
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(self.give_up(last));
            }
            let result = match &target {
                Some(node) if node.peer_id != me => {
                    let rpc = RaftRpc::Propose(Box::new(change.clone()));
                    match self.replica.ask(node, &rpc, remaining).await {
                        Ok(RaftReply::Propose(result)) => result,
                        Ok(_) => Err(Refusal::Failed("the reply does not match".into())),
                        Err(e) => Err(Refusal::Failed(e.to_string())),
                    }
                }
                _ => self.replica.write_here(change.clone(), remaining).await,
            };
            match result {
                Ok(index) => return Ok(index),
                Err(Refusal::Rejected(invalid)) => return Err(ProposeError::Rejected(invalid)),
                Err(e @ Refusal::NoQuorum(_)) => return Err(e.into()),
                Err(Refusal::NotLeader { leader: Some(node) })
                    if target.as_ref() != Some(&node) && node.peer_id != me =>
                {
                    target = Some(node);
                    continue;
                }
                Err(refusal) => {
                    // No leader known (an election is on), or it did not answer: wait a moment
                    // for the leader to change, then ask whoever leads then.
                    last = refusal;
                    let mut metrics = self.replica.raft().metrics();
                    let step = remaining.min(Duration::from_millis(100));
                    let _ = tokio::time::timeout(step, metrics.changed()).await;
                    if own {
                        target = self.replica.leader();
                    }
                }
            }
        }
    }

    /// The error after the deadline passed without an answer.
    fn give_up(&self, last: Refusal) -> ProposeError {
        if self.state().cluster.is_none() {
            return ProposeError::NoQuorum(
                "this node has not joined a cluster yet (it is still looking for its peers); try again in a moment".into(),
            );
        }
        match last {
            Refusal::Failed(m) => ProposeError::NoQuorum(format!(
                "no quorum: the leader did not answer ({m}); the change is not confirmed"
            )),
            other => other.into(),
        }
    }

    /// Hands `change` to another cluster through one of its members (a merge).
    pub(crate) async fn commit_elsewhere(
        &self,
        via: MeshNode,
        change: Change,
    ) -> Result<u64, ProposeError> {
        self.commit(Some(via), change).await
    }

    /// Tells the leader that these runs of this node's have ended, ahead of the proposal that
    /// reports them, so that it gives their slots again sooner (see [`Ending`]). Best effort:
    /// the proposal is what counts.
    pub fn hint_ended(&self, runs: Vec<RunId>) {
        if runs.is_empty() || self.replica.hint_here(&runs) {
            return;
        }
        let Some(leader) = self.replica.leader() else {
            return;
        };
        let replica = self.replica.clone();
        tokio::spawn(async move {
            let _ = replica
                .ask(&leader, &RaftRpc::Ended(runs), HINT_TIMEOUT)
                .await;
        });
    }

    /// On the leader: the runs it knows to have ended before the state shows it (see
    /// [`Ending`]).
    pub fn ending(&self) -> &Ending {
        &self.replica.ending
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// This node's Raft figures now: term, leadership and how far its log is committed and
    /// applied (what `/metrics` exports).
    pub fn figures(&self) -> RaftFigures {
        let state = self.state();
        let raft = self.replica.raft();
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let applied = metrics
            .last_applied
            .map_or(0, |l| l.index)
            .max(state.applied.unwrap_or(0));
        RaftFigures {
            term: metrics.current_term,
            leader: metrics.state == openraft::ServerState::Leader,
            has_leader: metrics.current_leader.is_some(),
            last_log: metrics.last_log_index.unwrap_or(0),
            // A follower may learn of a commit after it applied the entry: never below applied.
            committed: self.replica.committed().max(applied),
            applied,
        }
    }

    /// The leader's PeerId, as this node knows it.
    pub fn leader_peer(&self) -> Option<String> {
        self.replica.leader().map(|n| n.peer_id)
    }

    /// Whether this node is the Raft leader now and its state holds everything committed before
    /// its term. A new leader's state may lag its log until it has applied the first entry of its
    /// own term; deciding from that older state could, say, fire a slot again.
    pub fn leads(&self) -> bool {
        let metrics = self.replica.raft().metrics();
        let metrics = metrics.borrow();
        metrics.state == openraft::ServerState::Leader
            && metrics
                .last_applied
                .is_some_and(|applied| applied.leader_id.term == metrics.current_term)
    }

    /// Whether this node leads and a majority of the voters acknowledged it within `within`
    /// (a leader cut off from the others keeps its role for a while, but not this).
    pub fn leads_a_majority_within(&self, within: Duration) -> bool {
        let metrics = self.replica.raft().metrics();
        let metrics = metrics.borrow();
        metrics.state == openraft::ServerState::Leader
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| Duration::from_millis(ms) < within)
    }

    /// The leader's Raft contact with this node since its start (see [`LeaderContact`]).
    pub fn leader_contact(&self) -> LeaderContact {
        self.replica.leader_contact()
    }

    /// The index of the last entry this node has applied.
    pub fn applied(&self) -> u64 {
        self.replica
            .raft()
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// The voters' PeerIds, as this node's membership says.
    pub fn voters(&self) -> Vec<String> {
        let metrics = self.replica.raft().metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.peer_id.clone()))
            .collect()
    }

    /// What this node announces about its place in the cluster, with the digest of its state.
    pub fn badge(&self) -> Option<ClusterBadge> {
        let state = self.state();
        let digest = self.digest(&state);
        status::badge(&self.replica.raft().metrics().borrow(), &state, digest)
    }

    /// `state`'s [`State::digest`], computed once per published state: announcements and /peers
    /// ask for it every few seconds, and a new state comes only with a change.
    fn digest(&self, state: &Arc<State>) -> u64 {
        let same =
            |(known, _): &(Weak<State>, u64)| std::ptr::eq(known.as_ptr(), Arc::as_ptr(state));
        if let Some((_, digest)) = self
            .digest
            .lock()
            .expect("digest lock")
            .as_ref()
            .filter(|c| same(c))
        {
            return *digest;
        }
        let digest = state.digest();
        *self.digest.lock().expect("digest lock") = Some((Arc::downgrade(state), digest));
        digest
    }

    /// Leader, term, voters, learners and lag, for /peers.
    pub fn status(&self, peers: &[taskmesh_mesh::PeerInfo], my_name: &str) -> ClusterStatus {
        let state = self.state();
        // Before borrowing the metrics: their writer waits while they are borrowed.
        let digest = self.digest(&state);
        let mut status = status::of(
            &self.replica.raft().metrics().borrow(),
            &state,
            digest,
            peers,
            &self.replica.peer_id.to_string(),
        );
        for m in status.members.iter_mut().filter(|m| m.this_node) {
            m.name = Some(my_name.to_owned());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmesh_core::model::{Task, TaskId};
    use taskmesh_mesh::{self, ClusterKey, MeshConfig};

    struct Member {
        consensus: Consensus,
        mesh: MeshHandle,
        _mesh_tx: watch::Sender<Option<MeshHandle>>,
        _dir: tempfile::TempDir,
    }

    async fn member(key: &ClusterKey, peers: Vec<String>, cancel: &CancellationToken) -> Member {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(RedbStore::open(&dir.path().join("db")).expect("store"));
        let (inbound_tx, inbound) = mpsc::channel(64);
        let identity = libp2p::identity::Keypair::generate_ed25519();
        let config = MeshConfig {
            identity: identity.clone(),
            key: key.clone(),
            listen: "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
            mdns: false,
            peers,
            announce_every: Duration::from_millis(300),
            peer_ttl: Duration::from_secs(10),
            inbound: Some(inbound_tx),
            traffic: Arc::default(),
        };
        let (mesh, _task) = taskmesh_mesh::start(config, cancel.clone())
            .await
            .expect("mesh");
        let (mesh_tx, mesh_rx) = watch::channel(Some(mesh.clone()));
        let (_node_tx, node) = watch::channel(NodeSettings::default());
        let (consensus, _task) = Consensus::start(
            Options {
                peer_id: identity.public().to_peer_id(),
                store,
                mesh: mesh_rx,
                inbound,
                timing: Timing::default(),
                discovery: Duration::from_secs(1),
                node,
            },
            cancel.clone(),
        )
        .await
        .expect("consensus");
        Member {
            consensus,
            mesh,
            _mesh_tx: mesh_tx,
            _dir: dir,
        }
    }

    /// Announces each member's badge, as the node's mesh runner does.
    fn announce(members: &[&Member], cancel: &CancellationToken) {
        for m in members {
            let (consensus, mesh, cancel) = (m.consensus.clone(), m.mesh.clone(), cancel.clone());
            tokio::spawn(async move {
                while !cancel.is_cancelled() {
                    let announcement = taskmesh_mesh::Announcement {
                        peer_id: String::new(),
                        name: "member".into(),
                        version: "test".into(),
                        dependencies: vec![],
                        slots_total: 1,
                        slots_free: 1,
                        load: 0.0,
                        running: 0,
                        ui_url: String::new(),
                        addrs: vec![],
                        seq: 0,
                        cluster: consensus.badge(),
                        start: None,
                    };
                    mesh.announce(announcement).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn three_nodes_form_one_cluster_and_writes_on_any_node_reach_all() {
        let key = ClusterKey::generate().expect("key");
        let cancel = CancellationToken::new();
        let first = member(&key, vec![], &cancel).await;
        let seed = first.mesh.listen_addrs()[0].to_string();
        let second = member(&key, vec![seed.clone()], &cancel).await;
        let third = member(&key, vec![seed], &cancel).await;
        let all = [&first, &second, &third];
        announce(&all, &cancel);

        until("one cluster with three voters", || {
            let ids: Vec<_> = all.iter().map(|m| m.consensus.badge()).collect();
            let leaders = ids.iter().flatten().filter(|b| b.leader).count();
            let voters = ids.iter().flatten().filter(|b| b.voter).count();
            ids.iter().all(|b| b.is_some())
                && ids
                    .windows(2)
                    .all(|w| w[0].map(|b| b.id) == w[1].map(|b| b.id))
                && leaders == 1
                && voters == 3
        })
        .await;

        // A write on each node, leader or not, is visible on every node when it returns.
        for (i, m) in all.iter().enumerate() {
            let task = Task::sample(&format!("t{i}"), &format!("task-{i}"));
            m.consensus
                .propose(Change::PutTask(task))
                .await
                .expect("write");
            assert!(
                m.consensus
                    .state()
                    .task_by_name(&format!("task-{i}"))
                    .is_some()
            );
        }
        until("every node has every task", || {
            all.iter().all(|m| m.consensus.state().tasks.len() == 3)
        })
        .await;

        // A change the state machine refuses is an answer, on a follower as well.
        let follower = all
            .iter()
            .find(|m| !m.consensus.badge().expect("badge").leader)
            .expect("a follower");
        let clash = Task::sample("other", "task-0");
        match follower.consensus.propose(Change::PutTask(clash)).await {
            Err(ProposeError::Rejected(invalid)) => {
                assert!(invalid.to_string().contains("already called"), "{invalid}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(
            !follower
                .consensus
                .state()
                .tasks
                .contains_key(&TaskId("other".into()))
        );

        // A follower's word that its runs ended reaches the leader's count, not its own.
        let leader = all
            .iter()
            .find(|m| m.consensus.badge().expect("badge").leader)
            .expect("a leader");
        let ended = RunId::generate();
        follower.consensus.hint_ended(vec![ended.clone()]);
        until("the leader knows the run ended", || {
            leader.consensus.ending().runs().contains(&ended)
        })
        .await;
        assert!(follower.consensus.ending().runs().is_empty());
        cancel.cancel();
    }
}
