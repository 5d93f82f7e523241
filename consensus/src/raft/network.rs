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
use openraft::{CommittedLeaderId, LeaderId, LogId, RaftMetrics, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{MeshNode, NodeId, TypeConfig};
use crate::Change;
use taskmesh_core::model::{Invalid, RunId};
use taskmesh_mesh::{MeshHandle, PeerId, Request, Response};

/// A request between consensus layers, as it travels in `mesh::Request::Raft`: the three Raft
/// RPCs (an append request without entries as a [`KeepAlive`]), and the three requests a
/// non-leader makes of the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    /// An append request without entries, answered as one ([`RaftReply::Append`]).
    KeepAlive(KeepAlive),
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
    last_keep_alive: Option<(KeepAlive, Instant)>,
}

/// What an append request without entries says: whose it is, where the log stands and what is
/// committed. The leader sends one to every member ten times a second, so it travels in a form of
/// its own: `[term, leader, committed, prev_log_id, leader_commit]`, where a log position is
/// `[term, index]` when the leader of its term is this request's leader, `[term, index, node]`
/// otherwise, and `null` for none. About 60 bytes of JSON, where openraft's own encoding of the
/// same request takes about 270 (see docs/performance.md, how cost grows with the nodes).
///
/// A voter needs each (its election timer waits for them); a learner elects no one, so one that
/// repeats the last it took goes to it at most once per `LEARNER_KEEP_ALIVE` and is answered
/// with that one's success meanwhile. Anything new (a new leader's first request, a commit,
/// entries) goes at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "KeepAliveWire", into = "KeepAliveWire")]
pub struct KeepAlive {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
}

/// [`KeepAlive`] on the wire.
#[derive(Serialize, Deserialize)]
struct KeepAliveWire(u64, NodeId, bool, Option<LogAt>, Option<LogAt>);

/// A log position on the wire: the node that led its term is left out when it is the leader
/// that sends the keep-alive.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LogAt {
    Leaders(u64, u64),
    Other(u64, u64, NodeId),
}

impl LogAt {
    fn of(log: LogId<NodeId>, leader: NodeId) -> Self {
        let id = log.leader_id;
        if id.node_id == leader {
            LogAt::Leaders(id.term, log.index)
        } else {
            LogAt::Other(id.term, log.index, id.node_id)
        }
    }

    fn log_id(self, leader: NodeId) -> LogId<NodeId> {
        let (term, index, node) = match self {
            LogAt::Leaders(term, index) => (term, index, leader),
            LogAt::Other(term, index, node) => (term, index, node),
        };
        LogId::new(CommittedLeaderId::new(term, node), index)
    }
}

impl From<KeepAlive> for KeepAliveWire {
    fn from(k: KeepAlive) -> Self {
        let LeaderId { term, node_id } = k.vote.leader_id;
        let at = |log: Option<LogId<NodeId>>| log.map(|log| LogAt::of(log, node_id));
        KeepAliveWire(
            term,
            node_id,
            k.vote.committed,
            at(k.prev_log_id),
            at(k.leader_commit),
        )
    }
}

impl From<KeepAliveWire> for KeepAlive {
    fn from(KeepAliveWire(term, leader, committed, prev, commit): KeepAliveWire) -> Self {
        KeepAlive {
            vote: Vote {
                leader_id: LeaderId::new(term, leader),
                committed,
            },
            prev_log_id: prev.map(|at| at.log_id(leader)),
            leader_commit: commit.map(|at| at.log_id(leader)),
        }
    }
}

impl KeepAlive {
    /// The keep-alive `rpc` is, if it carries no entries.
    fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<Self> {
        rpc.entries.is_empty().then_some(KeepAlive {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
        })
    }

    /// The append request this keep-alive stands for.
    pub fn request(self) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: self.vote,
            prev_log_id: self.prev_log_id,
            entries: Vec::new(),
            leader_commit: self.leader_commit,
        }
    }

    /// Whether this keep-alive to a learner may be answered here: it repeats the last one the
    /// learner took, less than [`LEARNER_KEEP_ALIVE`] ago.
    fn answered_by(&self, last: Option<&(KeepAlive, Instant)>, now: Instant) -> bool {
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
        let keep_alive = KeepAlive::of(&rpc);
        let to_learner = keep_alive.is_some() && self.to_learner();
        if let Some(k) = keep_alive.as_ref().filter(|_| to_learner)
            && k.answered_by(self.last_keep_alive.as_ref(), Instant::now())
        {
            return Ok(AppendEntriesResponse::Success);
        }
        let request = match keep_alive.clone() {
            Some(k) => RaftRpc::KeepAlive(k),
            None => RaftRpc::Append(rpc),
        };
        let answer = match self.call(request, option.hard_ttl()).await? {
            RaftReply::Append(result) => self.remote(result)?,
            _ => return Err(mismatch()),
        };
        self.last_keep_alive = match (keep_alive.filter(|_| to_learner), &answer) {
            (Some(k), AppendEntriesResponse::Success) => Some((k, Instant::now())),
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

    fn keep_alive(term: u64, index: u64, commit: u64) -> KeepAlive {
        let log = |i| Some(LogId::new(CommittedLeaderId::new(term, 1), i));
        KeepAlive {
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

    /// The request a keep-alive stands for, after the trip: every field as it was sent.
    fn after_the_trip(
        request: &AppendEntriesRequest<TypeConfig>,
    ) -> (String, AppendEntriesRequest<TypeConfig>) {
        let json =
            serde_json::to_string(&RaftRpc::KeepAlive(KeepAlive::of(request).unwrap())).unwrap();
        let RaftRpc::KeepAlive(k) = decode_rpc(&json).unwrap() else {
            panic!("{json} is not read back as a keep-alive");
        };
        (json, k.request())
    }

    #[test]
    fn a_keep_alive_travels_in_few_bytes_and_arrives_as_it_was_sent() {
        let leader = 13_835_058_055_282_163_712_u64;
        let other = 4_611_686_018_427_387_904_u64;
        let log = |term, node, index| LogId::new(CommittedLeaderId::new(term, node), index);
        let cases = [
            (
                Vote::new_committed(7, leader),
                Some(log(7, leader, 1_234)),
                Some(log(7, leader, 1_234)),
            ),
            (
                Vote::new_committed(8, leader),
                Some(log(7, other, 99)),
                Some(log(6, other, 98)),
            ),
            (Vote::new(9, leader), None, None),
        ];
        for (vote, prev_log_id, leader_commit) in cases {
            let request = AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id,
                entries: Vec::new(),
                leader_commit,
            };
            let (json, back) = after_the_trip(&request);
            assert_eq!(
                (back.vote, back.prev_log_id, back.leader_commit),
                (vote, prev_log_id, leader_commit),
                "{json}"
            );
            assert!(back.entries.is_empty());
            let openraft_json = serde_json::to_string(&RaftRpc::Append(request)).unwrap();
            assert!(json.len() <= 110, "{} bytes: {json}", json.len());
            assert!(
                json.len() * 2 < openraft_json.len(),
                "{json} against {openraft_json}"
            );
        }
        let own = Vote::new_committed(7, leader);
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: own,
            prev_log_id: Some(log(7, leader, 1_234)),
            entries: Vec::new(),
            leader_commit: Some(log(7, leader, 1_234)),
        };
        let (json, _) = after_the_trip(&request);
        assert!(
            json.len() <= 64,
            "the usual keep-alive: {} bytes: {json}",
            json.len()
        );
    }

    #[test]
    fn a_garbled_keep_alive_is_refused_with_a_reason() {
        for json in [
            r#"{"KeepAlive":[7]}"#,
            r#"{"KeepAlive":[7,1,true,[7],null]}"#,
            r#"{"KeepAlive":[7,1,true,[7,1,2,3],null]}"#,
            r#"{"KeepAlive":[-1,1,true,null,null]}"#,
        ] {
            assert!(decode_rpc(json).is_err(), "{json} was taken");
        }
        assert!(decode_rpc(r#"{"KeepAlive":[7,1,true,[7,3],[6,2,9]]}"#).is_ok());
    }

    #[test]
    fn an_append_with_entries_is_no_keep_alive() {
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            entries: vec![
                <openraft::Entry<TypeConfig> as openraft::entry::RaftEntry<_, _>>::new_blank(
                    LogId::new(CommittedLeaderId::new(3, 1), 1),
                ),
            ],
            leader_commit: None,
        };
        assert!(KeepAlive::of(&request).is_none());
    }
}
