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
use tokio::sync::{mpsc, watch};

use super::{MeshNode, NodeId, TypeConfig};
use crate::mesh::{Inbound, MeshError, MeshHandle, PeerId, Request, Response};

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

/// Answers the Raft RPCs among the mesh's inbound requests until the channel closes.
pub async fn answer_inbound(
    raft: openraft::Raft<TypeConfig>,
    mut inbound: mpsc::Receiver<Inbound>,
) {
    while let Some(Inbound { request, reply, .. }) = inbound.recv().await {
        let Request::Raft(body) = request else {
            let _ = reply.send(Response::Error("not a Raft request".into()));
            continue;
        };
        let raft = raft.clone();
        tokio::spawn(async move {
            let response = match serde_json::from_value::<RaftRpc>(body) {
                Ok(rpc) => match serde_json::to_value(serve(&raft, rpc).await) {
                    Ok(value) => Response::Raft(value),
                    Err(e) => Response::Error(format!("encoding the Raft reply: {e}")),
                },
                Err(e) => Response::Error(format!("not a Raft RPC: {e}")),
            };
            let _ = reply.send(response);
        });
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::consensus::Change;
    use crate::consensus::raft::log_store::LogStore;
    use crate::consensus::raft::state_machine::StateMachine;
    use crate::consensus::raft::{Applied, node_id};
    use crate::mesh::{self, ClusterKey, MeshConfig};
    use crate::model::{Task, TaskId};
    use crate::store::RedbStore;

    struct Member {
        id: NodeId,
        node: MeshNode,
        raft: openraft::Raft<TypeConfig>,
        state: watch::Receiver<Arc<crate::consensus::State>>,
        _mesh: watch::Sender<Option<MeshHandle>>,
        _dir: tempfile::TempDir,
    }

    async fn member(key: &ClusterKey, peers: Vec<String>, cancel: &CancellationToken) -> Member {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("store");
        let log = LogStore::open(store.database()).expect("log store");
        let (sm, state) = StateMachine::open(&store).expect("state machine");
        let (inbound_tx, inbound_rx) = mpsc::channel(64);
        let config = MeshConfig {
            identity: libp2p::identity::Keypair::generate_ed25519(),
            key: key.clone(),
            listen: "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
            mdns: false,
            peers,
            announce_every: Duration::from_secs(2),
            peer_ttl: Duration::from_secs(10),
            inbound: Some(inbound_tx),
        };
        let (mesh, _task) = mesh::start(config, cancel.clone()).await.expect("mesh");
        let peer_id = mesh.local_peer_id().to_string();
        let node = MeshNode {
            peer_id: peer_id.clone(),
            addrs: mesh
                .listen_addrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        let (mesh_tx, rx) = watch::channel(Some(mesh));
        let raft_config = openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        };
        let id = node_id(&peer_id);
        let raft = openraft::Raft::new(
            id,
            Arc::new(raft_config.validate().expect("config")),
            MeshNetwork { mesh: rx },
            log,
            sm,
        )
        .await
        .expect("raft");
        tokio::spawn(answer_inbound(raft.clone(), inbound_rx));
        Member {
            id,
            node,
            raft,
            state,
            _mesh: mesh_tx,
            _dir: dir,
        }
    }

    fn task(name: &str) -> Task {
        Task::sample(&format!("t-{name}"), name)
    }

    #[tokio::test]
    async fn three_rafts_replicate_changes_over_the_mesh() {
        let key = ClusterKey::generate().expect("key");
        let cancel = CancellationToken::new();
        let first = member(&key, vec![], &cancel).await;
        let seed = first.node.addrs[0].clone();
        let second = member(&key, vec![seed.clone()], &cancel).await;
        let third = member(&key, vec![seed], &cancel).await;
        let members: BTreeMap<NodeId, MeshNode> = [&first, &second, &third]
            .iter()
            .map(|m| (m.id, m.node.clone()))
            .collect();
        first.raft.initialize(members).await.expect("initialize");

        // Whoever leads takes the write; rejected changes are answers, not failures.
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        let leader = loop {
            if let Some(leader) = first.raft.current_leader().await {
                break leader;
            }
            assert!(tokio::time::Instant::now() < until, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let raft = [&first, &second, &third]
            .into_iter()
            .find(|m| m.id == leader)
            .expect("leader")
            .raft
            .clone();
        let written = raft
            .client_write(Change::PutTask(task("replicated")))
            .await
            .expect("write");
        assert_eq!(written.data, Applied::Ok);
        let clash = raft
            .client_write(Change::PutTask(Task {
                id: TaskId("other".into()),
                ..task("replicated")
            }))
            .await
            .expect("write");
        assert!(
            matches!(clash.data, Applied::Rejected(_)),
            "{:?}",
            clash.data
        );

        for m in [&first, &second, &third] {
            let mut state = m.state.clone();
            tokio::time::timeout(
                Duration::from_secs(20),
                state.wait_for(|s| s.task_by_name("replicated").is_some()),
            )
            .await
            .expect("replicated in time")
            .expect("state watch");
            assert_eq!(
                m.state.borrow().tasks.len(),
                1,
                "the rejected change left no trace"
            );
        }
        for m in [first, second, third] {
            let _ = m.raft.shutdown().await;
        }
        cancel.cancel();
    }
}
