//! The autopilot: forms, grows, heals and merges the cluster without an operator. Every few
//! hundred milliseconds it looks at the Raft metrics, the state and the peers' badges, takes the
//! decision in [`decide`], and acts on it:
//!
//! - **No cluster:** look for one during the discovery window; join the largest in sight (as a
//!   learner, through any member, which points to the leader); if there is none, the lowest
//!   PeerId among the nodes without a cluster founds one.
//! - **Leader:** names a new cluster (`Change::Found`); promotes caught-up learners while there
//!   are fewer than five voters, keeping the count odd; gives the seat of a voter unreachable past
//!   `cluster.voter_timeout` to a live learner.
//! - **Two clusters meet** (same key, started apart): the leader of the one with the higher id
//!   hands its tasks to the other (`Change::Adopt`, renaming clashes), then commits
//!   `Change::MergeInto` in its own cluster; every member that applies it clears its Raft state
//!   and joins the other one.

pub mod decide;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::raft::network::{RaftReply, RaftRpc, Refusal};
use super::raft::{MeshNode, NodeId};
use super::{Adopted, Change, Consensus, State};
use decide::{PeerSeen, Start};
use taskmesh_core::model::{NodeSettings, Task};
use taskmesh_mesh::PeerInfo;

/// How often the autopilot looks.
const TICK: Duration = Duration::from_millis(200);
/// A peer whose announcement is younger than this counts as live.
const LIVE: Duration = Duration::from_secs(5);
/// A node without a cluster asks to join at most this often.
const JOIN_EVERY: Duration = Duration::from_secs(1);
/// A learner at most this many entries behind the leader may become a voter.
const CAUGHT_UP: u64 = 10;
/// A membership change or a merge step that takes longer than this is tried again later.
const STEP_TTL: Duration = Duration::from_secs(5);

pub struct Autopilot {
    consensus: Consensus,
    discovery: Duration,
    node: watch::Receiver<NodeSettings>,
    cancel: CancellationToken,
    /// When this node began looking for a cluster.
    looking_since: Instant,
    last_join: Option<Instant>,
    /// When each member (by PeerId) was last seen live; the leader's view of who is reachable.
    last_seen: HashMap<String, Instant>,
}

impl Autopilot {
    pub fn new(
        consensus: Consensus,
        discovery: Duration,
        node: watch::Receiver<NodeSettings>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            consensus,
            discovery,
            node,
            cancel,
            looking_since: Instant::now(),
            last_join: None,
            last_seen: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => self.step().await,
            }
        }
    }

    async fn step(&mut self) {
        let replica = &self.consensus.replica;
        let metrics = replica.raft().metrics().borrow().clone();
        let state = self.consensus.state();
        let peers = replica.mesh().map(|m| m.peers()).unwrap_or_default();
        let now = Instant::now();
        let live: Vec<&PeerInfo> = peers
            .iter()
            .filter(|p| Duration::from_millis(p.last_seen_ms) < LIVE)
            .collect();
        for p in &live {
            self.last_seen.insert(p.announcement.peer_id.clone(), now);
        }

        if let Some(target) = state.cluster.and_then(|c| c.merged_into) {
            info!(into = %format!("{target:016x}"), "this cluster merged into another; leaving it to join that one");
            if let Err(e) = replica.reset().await {
                warn!(error = %e, "leaving the merged cluster failed; trying again");
                return;
            }
            self.looking_since = now;
            return;
        }
        if let Some(cluster) = state.cluster {
            if metrics.state != ServerState::Leader && left_behind(&metrics, cluster.id, &live) {
                info!(
                    "every live member of this cluster has moved to another one (a merge while this node was away); following them"
                );
                if let Err(e) = replica.reset().await {
                    warn!(error = %e, "leaving the merged cluster failed; trying again");
                }
                self.looking_since = now;
                return;
            }
        }
        let joined = metrics
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some();
        if !joined {
            self.find_cluster(&state, &live, now).await;
            return;
        }
        self.looking_since = now;
        if metrics.state != ServerState::Leader {
            return;
        }
        let Some(cluster) = state.cluster else {
            let found = Change::Found {
                cluster: replica.id,
            };
            match replica.write_here(found, STEP_TTL).await {
                Ok(_) => info!(cluster = %format!("{:016x}", replica.id), "founded a cluster"),
                Err(e) => warn!(error = %e, "naming the new cluster failed; trying again"),
            }
            return;
        };
        self.keep_voters(&metrics, &state, now).await;
        self.merge_if_not_lowest(cluster.id, &live).await;
    }

    /// A node without a cluster: wait, found one, or ask to join one.
    async fn find_cluster(&mut self, state: &State, live: &[&PeerInfo], now: Instant) {
        let replica = &self.consensus.replica;
        let peers: Vec<PeerSeen> = live
            .iter()
            .map(|p| PeerSeen {
                peer_id: p.announcement.peer_id.clone(),
                cluster: p.announcement.cluster.map(|b| b.id),
            })
            .collect();
        // A node that already holds tasks (from before it ran Raft) founds its cluster at once,
        // so they are kept; if it meets another cluster, the merge hands them over.
        let window = match state.tasks.is_empty() {
            true => self.discovery,
            false => Duration::ZERO,
        };
        let me = replica.peer_id.to_string();
        match decide::start(&me, &peers, now - self.looking_since, window) {
            Start::Wait => {}
            Start::Bootstrap => {
                let members = BTreeMap::from([(replica.id, replica.me())]);
                match replica.raft().initialize(members).await {
                    Ok(()) => info!("no cluster in sight: founded one"),
                    Err(e) => warn!(error = %e, "founding a cluster failed"),
                }
            }
            Start::Join { via, .. } => {
                if self.last_join.is_some_and(|t| now - t < JOIN_EVERY) {
                    return;
                }
                self.last_join = Some(now);
                let Some(via) = live.iter().find(|p| p.announcement.peer_id == via) else {
                    return;
                };
                self.join(member_of(via)).await;
            }
        }
    }

    /// Asks `via`'s cluster to take this node in, following its hint to the leader once.
    async fn join(&self, via: MeshNode) {
        let replica = &self.consensus.replica;
        let rpc = RaftRpc::Join(replica.me());
        let mut target = via;
        for _ in 0..2 {
            match replica.ask(&target, &rpc, STEP_TTL).await {
                Ok(RaftReply::Join(Ok(()))) => {
                    info!(via = %target, "asked to join a cluster; waiting for the leader's log");
                    return;
                }
                Ok(RaftReply::Join(Err(Refusal::NotLeader {
                    leader: Some(leader),
                }))) => target = leader,
                Ok(RaftReply::Join(Err(refusal))) => {
                    warn!(via = %target, error = %refusal, "joining was refused; trying again");
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    warn!(via = %target, error = %e, "joining failed; trying again");
                    return;
                }
            }
        }
    }

    /// On the leader: promote caught-up learners and replace dead voters, keeping an odd count.
    async fn keep_voters(
        &mut self,
        metrics: &openraft::RaftMetrics<NodeId, MeshNode>,
        state: &State,
        now: Instant,
    ) {
        let membership = metrics.membership_config.membership();
        // This leader's own changes are awaited below, so a joint membership here is one left
        // half done.
        if let Some(newest) = decide::unfinished_change(membership.get_joint_config()) {
            info!(voters = ?newest, "finishing a voter change left half done");
            self.change_voters(newest.clone()).await;
            return;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let timeout = state.settings.voter_timeout.0;
        let mut dead = BTreeSet::new();
        for (id, node) in membership.nodes() {
            if *id == metrics.id {
                continue;
            }
            // A member this leader has never seen starts its clock now.
            let seen = *self.last_seen.entry(node.peer_id.clone()).or_insert(now);
            if now - seen > timeout {
                dead.insert(*id);
            }
        }
        let last_log = metrics.last_log_index.unwrap_or(0);
        let matched: BTreeMap<NodeId, u64> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let learners: BTreeSet<NodeId> = membership
            .learner_ids()
            .filter(|id| matched.get(id).is_some_and(|m| m + CAUGHT_UP >= last_log))
            .collect();
        let desired = decide::desired_voters(&voters, &learners, &dead);
        if desired == voters {
            return;
        }
        info!(?voters, ?desired, ?dead, "changing the voters");
        self.change_voters(desired).await;
    }

    /// Makes `voters` the voters (keeping the others as learners), within [`STEP_TTL`].
    async fn change_voters(&self, voters: BTreeSet<NodeId>) {
        let raft = self.consensus.replica.raft();
        match tokio::time::timeout(STEP_TTL, raft.change_membership(voters, true)).await {
            Ok(Ok(_)) => info!("voters changed"),
            Ok(Err(e)) => warn!(error = %e, "changing the voters failed; trying again"),
            Err(_) => warn!("changing the voters took too long; trying again"),
        }
    }

    /// On the leader: if a cluster with a lower id is in sight, hand the tasks over to it and
    /// tell this cluster's members to join it.
    async fn merge_if_not_lowest(&self, mine: u64, live: &[&PeerInfo]) {
        let others: BTreeSet<u64> = live
            .iter()
            .filter_map(|p| p.announcement.cluster.map(|b| b.id))
            .collect();
        let others: Vec<u64> = others.into_iter().collect();
        let Some(target) = decide::merge_into(mine, &others) else {
            return;
        };
        // Through its leader if it announces one, else through any member.
        let Some(via) = live
            .iter()
            .filter(|p| p.announcement.cluster.is_some_and(|b| b.id == target))
            .max_by_key(|p| p.announcement.cluster.is_some_and(|b| b.leader))
        else {
            return;
        };
        let state = self.consensus.state();
        let from = self.node.borrow().name.clone();
        let tasks: Vec<Adopted> = state
            .tasks
            .values()
            .map(|task| Adopted {
                task: Task::clone(task),
                last_fired: state.last_fired.get(&task.id).copied(),
            })
            .collect();
        let count = tasks.len();
        info!(into = %format!("{target:016x}"), via = %via.announcement.name, tasks = count, "another cluster is in sight: handing this one's tasks over");
        let adopt = Change::Adopt { from, tasks };
        if let Err(e) = self.consensus.commit_elsewhere(member_of(via), adopt).await {
            warn!(error = %e, "handing the tasks over failed; trying again");
            return;
        }
        let leave = Change::MergeInto { cluster: target };
        match self.consensus.replica.write_here(leave, STEP_TTL).await {
            Ok(_) => info!(
                tasks = count,
                "tasks handed over; this cluster's members now join the other"
            ),
            Err(e) => warn!(error = %e, "telling the members to leave failed; trying again"),
        }
    }
}

/// Whether this node's cluster merged into another while it was away: members of its membership
/// are live but announce another cluster, and none announces this one. Its committed state is
/// then part of what its leader handed over, so it can leave without handing anything over.
fn left_behind(
    metrics: &openraft::RaftMetrics<NodeId, MeshNode>,
    mine: u64,
    live: &[&PeerInfo],
) -> bool {
    let membership = metrics.membership_config.membership();
    let members: BTreeSet<&str> = membership
        .nodes()
        .filter(|(id, _)| **id != metrics.id)
        .map(|(_, n)| n.peer_id.as_str())
        .collect();
    let badges: Vec<_> = live
        .iter()
        .filter(|p| members.contains(p.announcement.peer_id.as_str()))
        .filter_map(|p| p.announcement.cluster)
        .collect();
    badges.iter().any(|b| b.id != mine) && badges.iter().all(|b| b.id != mine)
}

fn member_of(peer: &PeerInfo) -> MeshNode {
    MeshNode {
        peer_id: peer.announcement.peer_id.clone(),
        addrs: peer.announcement.addrs.clone(),
    }
}
