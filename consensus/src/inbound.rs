//! Answers the consensus requests other nodes send over the mesh: Raft RPCs go to the local Raft
//! instance; proposals and joins are taken if this node leads, and refused with the leader's
//! address otherwise, so the sender asks the leader next.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::sync::mpsc;

use super::raft::network::{RaftReply, RaftRpc, decode_rpc};
use super::raft::{NodeId, TypeConfig};
use super::replica::Replica;
use taskmesh_mesh::{Inbound, Request, Response};

/// How long a forwarded proposal or join may take on the leader.
pub const LEADER_TTL: Duration = Duration::from_secs(2);

/// Answers one request with the local replica.
pub async fn answer(replica: &Replica, rpc: RaftRpc) -> RaftReply {
    let raft = replica.raft();
    match rpc {
        RaftRpc::Append(req) => RaftReply::Append(append(replica, req).await),
        RaftRpc::KeepAlive(k) => RaftReply::Append(append(replica, k.request()).await),
        RaftRpc::Vote(req) => RaftReply::Vote(raft.vote(req).await),
        RaftRpc::Snapshot(req) => RaftReply::Snapshot(raft.install_snapshot(req).await),
        RaftRpc::Propose(change) => {
            RaftReply::Propose(replica.write_here(*change, LEADER_TTL).await)
        }
        RaftRpc::Join(node) => RaftReply::Join(replica.join_here(node, LEADER_TTL).await),
        RaftRpc::Ended(runs) => RaftReply::Ended(replica.hint_here(&runs)),
    }
}

/// Takes an append request, noting the leader's contact unless its term is stale.
async fn append(
    replica: &Replica,
    req: AppendEntriesRequest<TypeConfig>,
) -> Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
    let committed = req.leader_commit.map_or(0, |c| c.index);
    let response = replica.raft().append_entries(req).await;
    if matches!(&response, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        replica.note_leader_contact(committed);
    }
    response
}

/// Answers the mesh's inbound requests until the channel closes; each in its own task, so a slow
/// proposal does not hold up heartbeats.
pub async fn answer_inbound(replica: Arc<Replica>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(Inbound { request, reply, .. }) = inbound.recv().await {
        let Request::Raft(body) = request else {
            let _ = reply.send(Response::Error("not a consensus request".into()));
            continue;
        };
        let replica = replica.clone();
        tokio::spawn(async move {
            let response = match decode_rpc(body.get()) {
                Ok(rpc) => match serde_json::value::to_raw_value(&answer(&replica, rpc).await) {
                    Ok(value) => Response::Raft(value),
                    Err(e) => Response::Error(format!("encoding the Raft reply: {e}")),
                },
                Err(e) => Response::Error(format!("not a consensus request: {e}")),
            };
            let _ = reply.send(response);
        });
    }
}
