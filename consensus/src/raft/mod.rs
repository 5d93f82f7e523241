//! Raft (openraft 0.9) for the replicated state: the type configuration, the log (a file of its
//! own) and the state machine (redb), and the network over the mesh.
//!
//! `consensus::replica` runs the instance; this module holds its parts.

// openraft's error types are large by design; its traits return them.
#![allow(clippy::result_large_err)]

mod log_file;
pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use redb::{Database, Durability, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::Change;
use taskmesh_core::model::Invalid;

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

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Adds a note on what was being done to an error, as openraft's [`AnyError`].
pub(crate) trait Context<T> {
    fn context(self, doing: &'static str) -> std::result::Result<T, AnyError>;
}

impl<T, E: std::error::Error + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, doing: &'static str) -> std::result::Result<T, AnyError> {
        self.map_err(|e| AnyError::new(&e).add_context(|| doing))
    }
}

/// Runs `f` in one write transaction on the blocking pool and commits it with `durability`;
/// a failure is reported as a write to `subject`.
pub(crate) async fn write_txn<F>(
    db: &Arc<Database>,
    subject: ErrorSubject<NodeId>,
    durability: Durability,
    f: F,
) -> Result<()>
where
    F: FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError> + Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || commit(&db, durability, f))
        .await
        .context("running the storage writer task")
        .and_then(|result| result)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, e).into())
}

/// JSON for a table; a failure is reported as a write to `subject`.
pub(crate) fn encode<T: Serialize>(
    value: &T,
    subject: ErrorSubject<NodeId>,
    what: &'static str,
) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .context(what)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, e).into())
}

/// One write transaction, committed with `durability`.
fn commit(
    db: &Database,
    durability: Durability,
    write: impl FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError>,
) -> std::result::Result<(), AnyError> {
    let mut txn = db.begin_write().context("beginning a write transaction")?;
    txn.set_durability(durability)
        .context("setting the durability")?;
    write(&txn)?;
    txn.commit().context("committing")
}

/// Clears everything replicated from the node: the Raft log and vote (the file at `log`, see
/// [`log_store::path`]), and from its database the state machine's bookkeeping and snapshot and
/// the replicated state itself (tasks, cluster settings, fired slots, cluster identity). Node
/// settings and run history stay.
///
/// The log goes first: a crash in between leaves a node whose state is ahead of its (empty) log,
/// which openraft treats as a log purged up to the state.
pub fn clear(db: &Database, log: &Path) -> std::result::Result<(), String> {
    log_file::clear(log).map_err(|e| format!("emptying the raft log {}: {e}", log.display()))?;
    let tables = || -> std::result::Result<(), redb::Error> {
        let txn = db.begin_write()?;
        state_machine::clear_in(&txn)?;
        taskmesh_store::clear_replicated_in(&txn)?;
        txn.commit()?;
        Ok(())
    };
    tables().map_err(|e| format!("clearing the replicated tables: {e}"))
}
