//! Raft RPCs over the mesh: the client side (`RaftNetwork` for openraft) sends them as
//! `mesh::Request::Raft`; `consensus::inbound` answers the ones that arrive.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, RaftMetrics, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{MeshNode, NodeId, TypeConfig};
use crate::Change;
use taskmesh_core::model::{Invalid, RunId};
use taskmesh_mesh::{MeshHandle, PeerId, Request, Response};

/// A request between consensus layers, as it travels in `mesh::Request::Raft`: the three Raft
/// RPCs, and the three requests a non-leader makes of the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit this change (answered by the leader only).
    Propose(Box<Change>),
    /// Take this node in as a learner (answered by the leader only).
    Join(MeshNode),
    /// These runs of the sender's have ended; the proposal that reports them follows (taken by
    /// the leader only, to count slots).
    Ended(Vec<RunId>),
}

/// The answer, in `mesh::Response::Raft`.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The log index the change was committed at.
    Propose(Result<u64, Refusal>),
    Join(Result<(), Refusal>),
    /// Whether this node leads and took the news.
    Ended(bool),
}

/// Why a node did not take a proposal or a join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The state machine refused the change (a name clash …); it was committed and changed nothing.
    #[error(transparent)]
    Rejected(Invalid),
    /// Ask the leader instead (if one is known).
    #[error("this node is not the leader")]
    NotLeader { leader: Option<MeshNode> },
    /// No majority of the voters confirmed it in time.
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Failed(String),
}

/// How often a learner hears a keep-alive that says nothing new (see [`Repeat`]).
const LEARNER_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Makes a [`MeshConnection`] per target; uses whichever mesh endpoint runs at the time.
#[derive(Clone)]
pub struct MeshNetwork {
    pub mesh: watch::Receiver<Option<MeshHandle>>,
    /// The instance's metrics, once it runs: they say which targets are voters.
    pub metrics: Arc<OnceLock<watch::Receiver<RaftMetrics<NodeId, MeshNode>>>>,
}

impl RaftNetworkFactory<TypeConfig> for MeshNetwork {
    type Network = MeshConnection;

    async fn new_client(&mut self, target: NodeId, node: &MeshNode) -> MeshConnection {
        MeshConnection {
            target,
            peer: node.peer_id.parse().ok(),
            mesh: self.mesh.clone(),
            metrics: self.metrics.clone(),
            last_keep_alive: None,
        }
    }
}

pub struct MeshConnection {
    target: NodeId,
    peer: Option<PeerId>,
    mesh: watch::Receiver<Option<MeshHandle>>,
    metrics: Arc<OnceLock<watch::Receiver<RaftMetrics<NodeId, MeshNode>>>>,
    /// The last keep-alive the target took, while it is a learner.
    last_keep_alive: Option<(Repeat, Instant)>,
}

/// What an append request without entries says: whose it is, where the log stands and what is
/// committed. The leader sends one to every member ten times a second. A voter needs each (its
/// election timer waits for them); a learner elects no one, so one that repeats the last it took
/// goes to it at most once per [`LEARNER_KEEP_ALIVE`] and is answered with that one's success
/// meanwhile. Anything new (a new leader's first request, a commit, entries) goes at once.
#[derive(Debug, Clone, PartialEq)]
struct Repeat {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
}

impl Repeat {
    fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<Self> {
        rpc.entries.is_empty().then_some(Repeat {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
        })
    }

    /// Whether this keep-alive to a learner may be answered here: it repeats the last one the
    /// learner took, less than [`LEARNER_KEEP_ALIVE`] ago.
    fn answered_by(&self, last: Option<&(Repeat, Instant)>, now: Instant) -> bool {
        last.is_some_and(|(last, at)| {
            last == self && now.saturating_duration_since(*at) < LEARNER_KEEP_ALIVE
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

/// Why a request to a peer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer could not be reached (no connection, no endpoint, no answer in time).
    #[error("{0}")]
    Unreachable(String),
    /// It answered something that is not an answer to this request.
    #[error("{0}")]
    Garbled(String),
}

/// Reads a peer's consensus request (the JSON inside `mesh::Request::Raft`), as
/// the node answering it does; public for the fuzz targets (`fuzz/`).
pub fn decode_rpc(json: &str) -> Result<RaftRpc, serde_json::Error> {
    serde_json::from_str(json)
}

/// Reads a peer's consensus answer (the JSON inside `mesh::Response::Raft`), as the node that
/// asked does; public for the fuzz targets (`fuzz/`).
pub fn decode_reply(json: &str) -> Result<RaftReply, serde_json::Error> {
    serde_json::from_str(json)
}

/// Sends `rpc` to `peer` over `mesh` and waits at most `ttl` for the reply.
pub async fn send(
    mesh: &MeshHandle,
    peer: PeerId,
    rpc: &RaftRpc,
    ttl: Duration,
) -> Result<RaftReply, SendError> {
    let body =
        serde_json::value::to_raw_value(rpc).map_err(|e| SendError::Garbled(e.to_string()))?;
    let answer = tokio::time::timeout(ttl, mesh.request(peer, Request::Raft(body)))
        .await
        .map_err(|_| SendError::Unreachable(format!("{peer} gave no answer within {ttl:?}")))?;
    match answer {
        Ok(Response::Raft(value)) => {
            decode_reply(value.get()).map_err(|e| SendError::Garbled(e.to_string()))
        }
        Ok(Response::Error(message)) => Err(SendError::Unreachable(format!("{peer}: {message}"))),
        Ok(other) => Err(SendError::Garbled(format!("unexpected answer {other:?}"))),
        Err(e) => Err(SendError::Unreachable(e.to_string())),
    }
}

impl MeshConnection {
    /// Sends `rpc`, and returns the reply, or an error openraft can act on.
    async fn call<E>(
        &self,
        rpc: RaftRpc,
        ttl: Duration,
    ) -> Result<RaftReply, RPCError<NodeId, MeshNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        let (Some(peer), Some(mesh)) = (self.peer, self.mesh.borrow().clone()) else {
            return Err(RPCError::Unreachable(Unreachable::new(&Failure(
                "no mesh endpoint or peer id".into(),
            ))));
        };
        send(&mesh, peer, &rpc, ttl).await.map_err(|e| match e {
            SendError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Failure(m))),
            SendError::Garbled(m) => RPCError::Network(NetworkError::new(&Failure(m))),
        })
    }

    /// Whether the target is a learner, as far as this instance knows.
    fn to_learner(&self) -> bool {
        self.metrics.get().is_some_and(|m| {
            !m.borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.target)
        })
    }

    fn remote<T, E: std::error::Error>(
        &self,
        result: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, MeshNode, RaftError<NodeId, E>>> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<NodeId, MeshNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&Failure(
        "the reply does not match the request".into(),
    )))
}

impl RaftNetwork<TypeConfig> for MeshConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MeshNode, RaftError<NodeId>>> {
        let repeat = Repeat::of(&rpc).filter(|_| self.to_learner());
        if repeat
            .as_ref()
            .is_some_and(|r| r.answered_by(self.last_keep_alive.as_ref(), Instant::now()))
        {
            return Ok(AppendEntriesResponse::Success);
        }
        let answer = match self.call(RaftRpc::Append(rpc), option.hard_ttl()).await? {
            RaftReply::Append(result) => self.remote(result)?,
            _ => return Err(mismatch()),
        };
        self.last_keep_alive = match (repeat, &answer) {
            (Some(repeat), AppendEntriesResponse::Success) => Some((repeat, Instant::now())),
            _ => None,
        };
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MeshNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RaftRpc::Snapshot(rpc), option.hard_ttl()).await? {
            RaftReply::Snapshot(result) => self.remote(result),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MeshNode, RaftError<NodeId>>> {
        match self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(result) => self.remote(result),
            _ => Err(mismatch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn keep_alive(term: u64, index: u64, commit: u64) -> Repeat {
        let log = |i| Some(LogId::new(CommittedLeaderId::new(term, 1), i));
        Repeat {
            vote: Vote::new_committed(term, 1),
            prev_log_id: log(index),
            leader_commit: log(commit),
        }
    }

    #[test]
    fn a_learner_hears_a_repeated_keep_alive_every_few_seconds_and_news_at_once() {
        let t0 = Instant::now();
        let last = (keep_alive(3, 10, 10), t0);
        let soon = t0 + Duration::from_millis(300);
        assert!(keep_alive(3, 10, 10).answered_by(Some(&last), soon));
        assert!(
            !keep_alive(3, 10, 10).answered_by(Some(&last), t0 + LEARNER_KEEP_ALIVE),
            "after the pause it goes"
        );
        assert!(
            !keep_alive(3, 10, 10).answered_by(None, soon),
            "the first goes"
        );
        assert!(
            !keep_alive(3, 11, 11).answered_by(Some(&last), soon),
            "a commit goes at once"
        );
        assert!(
            !keep_alive(4, 10, 10).answered_by(Some(&last), soon),
            "a new leader's first request goes at once"
        );
    }
}
