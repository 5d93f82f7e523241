//! Raft (openraft 0.9) for the replicated state: the type configuration, the redb log and
//! state-machine storage, and the network over the mesh.
//!
//! `consensus::replica` runs the instance; this module holds its parts.

// openraft's error types are large by design; its traits return them.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::Change;
use crate::model::Invalid;

/// A node's Raft id: derived from its PeerId (see [`node_id`]).
pub type NodeId = u64;

/// What Raft knows about a member: how to reach it over the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshNode {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

impl std::fmt::Display for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.peer_id)
    }
}

/// The answer to an applied change: accepted, or refused by the state machine (name clash …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    #[default]
    Ok,
    Rejected(Invalid),
}

openraft::declare_raft_types!(
    /// The Raft types of taskmesh.
    pub TypeConfig:
        D = Change,
        R = Applied,
        NodeId = NodeId,
        Node = MeshNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A stable u64 from a PeerId's text: the first 8 bytes of its SHA-256-free FNV-1a hash. Ids
/// only need to be distinct within one cluster; a clash is detected when a node joins.
pub fn node_id(peer_id: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in peer_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Clears everything replicated from the node's database: the Raft log and vote, the state
/// machine's bookkeeping and snapshot, and the replicated state itself (tasks, cluster settings,
/// fired slots, cluster identity). Node settings and run history stay.
pub fn clear(db: &redb::Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    log_store::clear_in(&txn)?;
    state_machine::clear_in(&txn)?;
    crate::store::clear_replicated_in(&txn)?;
    txn.commit()?;
    Ok(())
}
