//! Durable storage behind a small trait: task definitions, settings, fired slots, and run history.
//!
//! The one implementation is [`RedbStore`]. DESIGN.md says why redb and not sled: sled has had no
//! release since 2021 and calls itself beta, while redb is crash-safe by default.

pub mod private_files;
mod redb_store;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use taskmesh_core::model::{
    Activity, ClusterIdentity, ClusterSettings, NamedToken, NodeSettings, Run, RunId, Task, TaskId,
};

pub use redb_store::RedbStore;
pub use redb_store::{clear_replicated_in, file_holds, write_in};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("database: {0}")]
    Db(String),
    #[error("corrupt record {key} in {table}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One change to durable state; a batch of them commits atomically.
#[derive(Debug, Clone)]
pub enum Write {
    PutTask(Task),
    RemoveTask(TaskId),
    ClusterSettings(ClusterSettings),
    /// This node's settings, without the cluster key: the key is never stored in the database
    /// (it lives in `<data dir>/cluster-key`, see `service::cluster_key`).
    NodeSettings(NodeSettings),
    LastFired(TaskId, DateTime<Utc>),
    /// `None` clears it (a node that leaves its cluster to join another).
    Cluster(Option<ClusterIdentity>),
    /// Runs asked to stop (see `consensus::State::stops`).
    Stops(BTreeSet<RunId>),
    /// Which nodes hold each always-task (see `consensus::State::holders`).
    Holders(BTreeMap<TaskId, Vec<String>>),
    /// The drained nodes (see `consensus::State::drained`).
    Drained(BTreeSet<String>),
    /// The named access tokens (see `consensus::State::tokens`).
    Tokens(BTreeMap<String, NamedToken>),
    /// Since when cron is paused, if it is (see `consensus::State::cron_paused`).
    CronPaused(Option<DateTime<Utc>>),
    /// An operator's change, by its number (see `consensus::State::activity`).
    Activity(u64, Activity),
    /// The change of this number leaves the list.
    ForgetActivity(u64),
    /// A run in the replicated run ledger (see `consensus::State::runs`).
    ClusterRun(std::sync::Arc<Run>),
    ForgetClusterRun(RunId),
}

pub use taskmesh_core::view::RunQuery;

/// Everything stored durably; what replication later replaces sits behind the first nine methods.
pub trait Store: Send + Sync + 'static {
    fn tasks(&self) -> Result<Vec<Task>, StoreError>;
    fn cluster_settings(&self) -> Result<Option<ClusterSettings>, StoreError>;
    fn node_settings(&self) -> Result<Option<NodeSettings>, StoreError>;
    fn last_fired(&self) -> Result<BTreeMap<TaskId, DateTime<Utc>>, StoreError>;
    fn cluster(&self) -> Result<Option<ClusterIdentity>, StoreError>;
    /// The replicated run ledger.
    fn cluster_runs(&self) -> Result<Vec<Run>, StoreError>;
    fn holders(&self) -> Result<BTreeMap<TaskId, Vec<String>>, StoreError>;
    fn stops(&self) -> Result<BTreeSet<RunId>, StoreError>;
    fn drained(&self) -> Result<BTreeSet<String>, StoreError>;
    fn tokens(&self) -> Result<BTreeMap<String, NamedToken>, StoreError>;
    fn cron_paused(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// The operators' changes the list holds, with their numbers, oldest first.
    fn activity(&self) -> Result<Vec<(u64, Activity)>, StoreError>;
    /// Commits the writes in one durable transaction before returning.
    fn write(&self, batch: &[Write]) -> Result<(), StoreError>;

    /// Inserts or updates runs in one durable transaction, keeps at most `keep_per_task` runs
    /// per task, and returns the ids of the runs it pruned.
    fn put_runs(&self, runs: &[Run], keep_per_task: u32) -> Result<Vec<RunId>, StoreError>;
    /// Runs stored while queued or running, without reading the whole history.
    fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError>;
    fn run(&self, id: &RunId) -> Result<Option<Run>, StoreError>;
    fn runs(&self, query: &RunQuery) -> Result<Vec<Run>, StoreError>;
}
