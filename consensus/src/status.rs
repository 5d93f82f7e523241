//! What a node tells about its cluster: the badge it announces to its peers, and the status that
//! /peers shows (leader, term, voters, learners, each member's lag), built from the local Raft
//! metrics and the peers' badges.

use openraft::{RaftMetrics, ServerState};

use super::State;
use super::raft::{MeshNode, NodeId};
use taskmesh_mesh::{ClusterBadge, PeerInfo};

type Metrics = RaftMetrics<NodeId, MeshNode>;

/// The index of the last entry this node has applied: openraft's metrics, or the state's own
/// index when the state machine has published a newer state than the metrics show yet.
fn applied(metrics: &Metrics, state: &State) -> Option<u64> {
    metrics.last_applied.map(|l| l.index).max(state.applied)
}

/// The badge for this node's announcement; `None` while it has no cluster or is leaving one.
/// `state_hash` is `state`'s digest ([`State::digest`]).
pub fn badge(metrics: &Metrics, state: &State, state_hash: u64) -> Option<ClusterBadge> {
    let cluster = state.cluster?;
    if cluster.merged_into.is_some() {
        return None;
    }
    let membership = metrics.membership_config.membership();
    Some(ClusterBadge {
        id: cluster.id,
        term: metrics.current_term,
        voter: membership.voter_ids().any(|v| v == metrics.id),
        leader: metrics.state == ServerState::Leader,
        applied: applied(metrics, state).unwrap_or(0),
        last_log: metrics.last_log_index.unwrap_or(0),
        state_hash: Some(state_hash),
    })
}

pub use taskmesh_core::view::{ClusterStatus, MemberStatus, state_hash_text};

/// The cluster as /peers shows it; `state_hash` is this node's digest of `state`.
pub fn of(
    metrics: &Metrics,
    state: &State,
    state_hash: u64,
    peers: &[PeerInfo],
    me: &str,
) -> ClusterStatus {
    let membership = metrics.membership_config.membership();
    let leader_id = metrics.current_leader;
    let badge_of = |peer_id: &str| {
        peers
            .iter()
            .find(|p| p.announcement.peer_id == peer_id)
            .and_then(|p| p.announcement.cluster.map(|b| (p, b)))
    };
    let leader_log = match leader_id {
        Some(id) if id == metrics.id => metrics.last_log_index,
        Some(id) => membership
            .get_node(&id)
            .and_then(|n| badge_of(&n.peer_id))
            .map(|(_, b)| b.last_log),
        None => None,
    };
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let this_node = node.peer_id == me;
            let seen = badge_of(&node.peer_id);
            let (applied, digest) = match this_node {
                true => (applied(metrics, state), Some(state_hash)),
                false => (
                    seen.map(|(_, b)| b.applied),
                    seen.and_then(|(_, b)| b.state_hash),
                ),
            };
            MemberStatus {
                peer_id: node.peer_id.clone(),
                name: seen.map(|(p, _)| p.announcement.name.clone()),
                voter: membership.voter_ids().any(|v| v == *id),
                leader: Some(*id) == leader_id,
                this_node,
                live: this_node || seen.is_some(),
                applied,
                state_hash: digest.map(state_hash_text),
                lag: leader_log.zip(applied).map(|(l, a)| l.saturating_sub(a)),
                drained: state.drained.contains(&node.peer_id),
            }
        })
        .collect();
    let joined = state.cluster.is_some() && membership.nodes().next().is_some();
    let role = match metrics.state {
        _ if !joined => "not joined",
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Follower if membership.voter_ids().any(|v| v == metrics.id) => "follower",
        ServerState::Follower => "learner",
        ServerState::Shutdown => "stopped",
    };
    ClusterStatus {
        cluster: state.cluster.map(|c| format!("{:016x}", c.id)),
        role: role.into(),
        term: metrics.current_term,
        leader: leader_id
            .and_then(|id| membership.get_node(&id))
            .map(|n| n.peer_id.clone()),
        members,
        last_log: metrics.last_log_index,
        snapshot: metrics.snapshot.map(|l| l.index),
        purged: metrics.purged.map(|l| l.index),
        cron_paused_since: state.cron_paused,
    }
}
