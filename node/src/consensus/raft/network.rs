//! Raft RPCs over the mesh: the client side (`RaftNetwork` for openraft) sends them as
//! `mesh::Request::Raft`, and [`serve`] answers the ones that arrive.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{MeshNode, NodeId, TypeConfig};
use crate::mesh::{MeshError, MeshHandle, PeerId, Request, Response};

/// A Raft RPC as it travels in `mesh::Request::Raft`.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer, in `mesh::Response::Raft`.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Answers one Raft RPC with the local Raft instance.
pub async fn serve(raft: &openraft::Raft<TypeConfig>, rpc: RaftRpc) -> RaftReply {
    match rpc {
        RaftRpc::Append(req) => RaftReply::Append(raft.append_entries(req).await),
        RaftRpc::Vote(req) => RaftReply::Vote(raft.vote(req).await),
        RaftRpc::Snapshot(req) => RaftReply::Snapshot(raft.install_snapshot(req).await),
    }
}

/// Makes a [`MeshConnection`] per target; uses whichever mesh endpoint runs at the time.
#[derive(Clone)]
pub struct MeshNetwork {
    pub mesh: watch::Receiver<Option<MeshHandle>>,
}

impl RaftNetworkFactory<TypeConfig> for MeshNetwork {
    type Network = MeshConnection;

    async fn new_client(&mut self, target: NodeId, node: &MeshNode) -> MeshConnection {
        MeshConnection {
            target,
            peer: node.peer_id.parse().ok(),
            mesh: self.mesh.clone(),
        }
    }
}

pub struct MeshConnection {
    target: NodeId,
    peer: Option<PeerId>,
    mesh: watch::Receiver<Option<MeshHandle>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

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
        let body =
            serde_json::to_value(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = tokio::time::timeout(ttl, mesh.request(peer, Request::Raft(body)))
            .await
            .map_err(|_| {
                RPCError::Unreachable(Unreachable::new(&Failure(format!(
                    "no answer within {ttl:?}"
                ))))
            })?;
        match answer {
            Ok(Response::Raft(value)) => decode(value),
            Ok(other) => Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "unexpected answer {other:?}"
            ))))),
            Err(e @ MeshError::Request { .. }) | Err(e @ MeshError::Stopped) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn remote<T, E: std::error::Error>(
        &self,
        result: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, MeshNode, RaftError<NodeId, E>>> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn decode<T: DeserializeOwned, E: std::error::Error>(
    value: serde_json::Value,
) -> Result<T, RPCError<NodeId, MeshNode, RaftError<NodeId, E>>> {
    serde_json::from_value(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
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
        match self.call(RaftRpc::Append(rpc), option.hard_ttl()).await? {
            RaftReply::Append(result) => self.remote(result),
            _ => Err(mismatch()),
        }
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
