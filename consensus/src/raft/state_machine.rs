//! The Raft state machine on redb: committed changes applied to [`State`], stored in the node's
//! state tables together with the last applied log id, and published on a `watch`.
//!
//! Tables (in the node's one database file):
//!
//! - the [`taskmesh_store`] tables `tasks`, `meta` (`cluster_settings`) and `last_fired` hold the
//!   state itself, exactly as the single-node committer stores it, so [`State::load`] reads it;
//! - `raft_sm_meta`: `last_applied` (a [`LogId`]) and `membership` (a [`StoredMembership`]), JSON;
//! - `raft_snapshot`: `meta` (the current snapshot's [`SnapshotMeta`], JSON) and `data` (its
//!   bytes: a JSON [`SnapshotPayload`]).
//!
//! *Invariant:* the state tables and `last_applied` change in one transaction (one for the
//! batches applied in `TABLES_EVERY` (50 ms), one before each snapshot is built, one per
//! installed snapshot), so after a crash the state on disk is exactly the state after
//! `last_applied`, and openraft re-applies from there. `meta.node_settings`, `runs` and
//! `runs_by_task` are node-local and never touched here.
//!
//! **What the node acts on is on disk in its log, not necessarily in these tables.** The tables
//! are only read at start, so applied batches are written to them together, at most every
//! `TABLES_EVERY`, without an fsync of their own (redb's `Durability::None`: the database's next
//! durable commit, of the run history, a snapshot or settings, makes them durable too). A batch
//! is published once every entry in it is on disk in this node's log (its own file, see
//! [`super::log_store`]). The log keeps every entry the tables may lack: openraft purges it only
//! up to a snapshot, and a snapshot is built only after the tables are written up to it, and
//! commits durably (an installed one too). After a crash the tables may therefore be behind
//! what the node acted on, but its log is not. [`State::caught_up`] marks the published states
//! that hold every entry the log held when the node started; the dispatcher treats runs it first
//! sees in an earlier state as runs it may have started before (see the node's `executor/dispatch.rs`).

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::OnDisk;
use super::{Applied, MeshNode, NodeId, TypeConfig};
use super::{Context, encode, write_txn};
use crate::State;
use taskmesh_core::model::Task;
use taskmesh_store::{RedbStore, Write, clear_replicated_in, write_in};

/// `last_applied`, `membership` → JSON.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_sm_meta");
/// `meta` → JSON [`SnapshotMeta`], `data` → the snapshot's bytes.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, MeshNode>;
type Meta = SnapshotMeta<NodeId, MeshNode>;

/// What a snapshot's bytes hold: the whole state and where it stands in the log.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotPayload<S> {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: Membership,
    pub state: S,
}

/// Reads a snapshot's bytes, as a follower installing a snapshot from its leader does; public
/// for the fuzz targets (`fuzz/`).
pub fn decode_snapshot(
    data: &[u8],
) -> std::result::Result<SnapshotPayload<State>, serde_json::Error> {
    serde_json::from_slice(data)
}

/// The redb state machine. Owns the `watch` on which the node sees the committed [`State`].
pub struct StateMachine {
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: watch::Sender<Arc<State>>,
    /// How far this node's log is on disk.
    log: OnDisk,
    /// What applied batches have not written to the tables yet.
    unwritten: Unwritten,
    /// Why writing the tables failed, if it did: the writes it took are gone, so nothing is
    /// applied after it (openraft stops on the error, as on any storage error).
    failed: Option<String>,
}

/// The state tables are written at most this often (and when a snapshot is built): they are only
/// read at start, and the log holds what they lack.
const TABLES_EVERY: Duration = Duration::from_millis(50);
/// ... or once this many writes wait.
const TABLES_MAX: usize = 4096;

/// Table writes of applied batches not yet written, in order.
#[derive(Default)]
struct Unwritten {
    writes: Vec<Write>,
    /// Whether the membership changed since the tables were last written.
    membership: bool,
    /// When the oldest of them was applied.
    since: Option<Instant>,
}

/// One transaction's work on the tables.
type TablesJob = Box<dyn FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError> + Send>;

impl StateMachine {
    /// Opens the state machine on `store`'s database, next to its `log`: loads the state, the
    /// last applied log id and the membership. Returns it with a receiver of the committed state.
    pub fn open(store: &RedbStore, log: OnDisk) -> Result<(Self, watch::Receiver<Arc<State>>)> {
        let (tx, rx) = watch::channel(Arc::default());
        Ok((Self::open_into(store, tx, log)?, rx))
    }

    /// Like [`Self::open`], but publishes on an existing channel (which outlives one Raft
    /// instance when a node leaves its cluster to join another).
    pub fn open_into(
        store: &RedbStore,
        state: watch::Sender<Arc<State>>,
        log: OnDisk,
    ) -> Result<Self> {
        let db = store.database();
        let create = || -> std::result::Result<(), AnyError> {
            let txn = db.begin_write().context("beginning a write transaction")?;
            txn.open_table(SM_META)
                .context("creating table raft_sm_meta")?;
            txn.open_table(SNAPSHOT)
                .context("creating table raft_snapshot")?;
            txn.commit().context("committing")
        };
        create().map_err(StorageIOError::write_state_machine)?;

        let read = || -> std::result::Result<_, AnyError> {
            let txn = db.begin_read().context("beginning a read")?;
            let meta = txn
                .open_table(SM_META)
                .context("opening table raft_sm_meta")?;
            let last_applied: Option<LogId<NodeId>> = match meta
                .get(LAST_APPLIED)
                .context("reading the last applied log id")?
            {
                Some(v) => {
                    serde_json::from_slice(v.value()).context("decoding the last applied log id")?
                }
                None => None,
            };
            let membership: Membership = match meta
                .get(MEMBERSHIP)
                .context("reading the membership")?
            {
                Some(v) => serde_json::from_slice(v.value()).context("decoding the membership")?,
                None => Membership::default(),
            };
            Ok((last_applied, membership))
        };
        let (last_applied, membership) = read().map_err(StorageIOError::read_state_machine)?;
        let mut loaded = State::load(store)
            .context("loading the state")
            .map_err(StorageIOError::read_state_machine)?;
        loaded.caught_up = reaches(&log, last_applied);
        loaded.applied = last_applied.map(|l| l.index);
        state.send_replace(Arc::new(loaded));
        Ok(Self {
            db,
            last_applied,
            membership,
            state,
            log,
            unwritten: Unwritten::default(),
            failed: None,
        })
    }

    /// The waiting table writes, with the last applied log id and (if it changed) the
    /// membership, as one transaction's work; none if nothing waits.
    fn take_unwritten(&mut self, subject: ErrorSubject<NodeId>) -> Result<Option<TablesJob>> {
        if self.unwritten.since.is_none() {
            return Ok(None);
        }
        let last_json = encode(
            &self.last_applied,
            subject.clone(),
            "encoding the last applied log id",
        )?;
        let membership_json = if self.unwritten.membership {
            Some(encode(
                &self.membership,
                subject,
                "encoding the membership",
            )?)
        } else {
            None
        };
        let writes = std::mem::take(&mut self.unwritten).writes;
        Ok(Some(Box::new(move |txn: &WriteTransaction| {
            write_in(txn, &writes).context("writing the state")?;
            stage_applied(txn, &last_json, membership_json.as_deref())
        })))
    }

    /// Writes the waiting table writes now (without an fsync; see the module).
    pub async fn write_tables(&mut self) -> Result<()> {
        let job = self.take_unwritten(ErrorSubject::StateMachine)?;
        let result = write_tables_job(&self.db, ErrorSubject::StateMachine, job).await;
        self.note_failure(&result);
        result
    }

    /// Remembers a failed table write (see [`Self::failed`]).
    fn note_failure(&mut self, result: &Result<()>) {
        if let Err(e) = result {
            self.failed.get_or_insert_with(|| e.to_string());
        }
    }

    /// Another receiver of the committed state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.subscribe()
    }

    /// The committed state now.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }
}

/// Whether a state applied up to `applied` holds every entry `log` held when it was opened.
fn reaches(log: &OnDisk, applied: Option<LogId<NodeId>>) -> bool {
    match (log.opened_at, applied) {
        (None, _) => true,
        (Some(start), Some(applied)) => applied.index >= start,
        (Some(_), None) => false,
    }
}

/// Stages the last applied log id and, if given, the membership (JSON) in `txn`.
fn stage_applied(
    txn: &WriteTransaction,
    last_applied: &[u8],
    membership: Option<&[u8]>,
) -> std::result::Result<(), AnyError> {
    let mut meta = txn
        .open_table(SM_META)
        .context("opening table raft_sm_meta")?;
    meta.insert(LAST_APPLIED, last_applied)
        .context("writing the last applied log id")?;
    if let Some(m) = membership {
        meta.insert(MEMBERSHIP, m)
            .context("writing the membership")?;
    }
    Ok(())
}

/// Writes a table job from [`StateMachine::take_unwritten`] (without an fsync; see the module).
async fn write_tables_job(
    db: &Arc<Database>,
    subject: ErrorSubject<NodeId>,
    job: Option<TablesJob>,
) -> Result<()> {
    match job {
        Some(job) => write_txn(db, subject, Durability::None, job).await,
        None => Ok(()),
    }
}

/// Stages the current snapshot in `txn`; `only_if_newer` keeps a newer one already stored (a
/// snapshot built from an older view must not replace an installed one).
fn stage_snapshot(
    txn: &WriteTransaction,
    meta: &Meta,
    meta_json: &[u8],
    data: &[u8],
    only_if_newer: bool,
) -> std::result::Result<(), AnyError> {
    let mut table = txn
        .open_table(SNAPSHOT)
        .context("opening table raft_snapshot")?;
    if only_if_newer {
        let stored = table
            .get(SNAPSHOT_META)
            .context("reading the current snapshot's meta")?
            .map(|v| serde_json::from_slice::<Meta>(v.value()))
            .transpose()
            .context("decoding the current snapshot's meta")?;
        if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
            return Ok(());
        }
    }
    table
        .insert(SNAPSHOT_META, meta_json)
        .context("writing the snapshot's meta")?;
    table
        .insert(SNAPSHOT_DATA, data)
        .context("writing the snapshot's data")?;
    Ok(())
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    /// Whether the state tables were written up to the snapshot first; without them, no snapshot.
    tables: std::result::Result<(), String>,
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: Arc<State>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        if let Err(e) = &self.tables {
            let e = AnyError::error(format!("writing the state tables before the snapshot: {e}"));
            return Err(StorageIOError::write_snapshot(None, e).into());
        }
        let data = serde_json::to_vec(&SnapshotPayload {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: &*self.state,
        })
        .context("encoding the snapshot")
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, uuid::Uuid::now_v7()),
            None => format!("none-{}", uuid::Uuid::now_v7()),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let signature = Some(meta.signature());
        let meta_json = encode(
            &meta,
            ErrorSubject::Snapshot(signature.clone()),
            "encoding the snapshot's meta",
        )?;
        {
            let (meta, data) = (meta.clone(), data.clone());
            write_txn(
                &self.db,
                ErrorSubject::Snapshot(signature),
                Durability::Immediate,
                move |txn| stage_snapshot(txn, &meta, &meta_json, &data, true),
            )
            .await?;
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(e) = &self.failed {
            let e = AnyError::error(format!("an earlier write of the state tables failed: {e}"));
            return Err(StorageIOError::write_state_machine(e).into());
        }
        let mut next: Option<State> = None;
        let mut writes: Vec<Write> = Vec::new();
        let mut replies = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Applied::Ok,
                EntryPayload::Normal(change) => {
                    let current = next.get_or_insert_with(|| {
                        let base = self.state.borrow().clone();
                        State::clone(&base)
                    });
                    // `apply` changes nothing when it refuses, so no scratch copy is needed.
                    match current.apply(change) {
                        Ok(w) => {
                            writes.extend(w);
                            Applied::Ok
                        }
                        Err(invalid) => Applied::Rejected(invalid),
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Applied::Ok
                }
            };
            replies.push(reply);
        }
        let Some(last) = last_applied else {
            return Ok(replies);
        };

        let subject = || ErrorSubject::Apply(last);
        let changed = !writes.is_empty();
        self.last_applied = last_applied;
        if let Some(m) = membership {
            self.membership = m;
            self.unwritten.membership = true;
        }
        self.unwritten.writes.extend(writes);
        let since = *self.unwritten.since.get_or_insert_with(Instant::now);
        // No fsync of its own, and only every so often: what the node acts on is on disk in its
        // log (see the module). The tables are written while the batch is published.
        let job = if since.elapsed() >= TABLES_EVERY || self.unwritten.writes.len() >= TABLES_MAX {
            self.take_unwritten(subject())?
        } else {
            None
        };
        let write = write_tables_job(&self.db, subject(), job);
        // Published once its entries are on disk here: the node acts on what it sees (starts
        // runs, records them in its history), and after a restart it must find it in its log
        // again. openraft applies an entry that a majority has on disk, and this node's own copy
        // may still be on its way there.
        let (log, state) = (&mut self.log, &self.state);
        let publish = async move {
            log.through(last.index)
                .await
                .map_err(StorageIOError::write_state_machine)?;
            let catches_up = !state.borrow().caught_up && reaches(log, last_applied);
            let next = match (changed, next) {
                (true, Some(next)) => Some(next),
                _ if catches_up => Some(State::clone(&state.borrow())),
                _ => None,
            };
            if let Some(mut next) = next {
                next.caught_up |= catches_up;
                next.applied = Some(last.index);
                state.send_replace(Arc::new(next));
            }
            Ok::<(), StorageError<NodeId>>(())
        };
        let (written, published) = tokio::join!(write, publish);
        self.note_failure(&written);
        written?;
        published?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The tables first: the snapshot commits durably, and the log is purged up to it after.
        let tables = self.write_tables().await.map_err(|e| e.to_string());
        SnapshotBuilder {
            tables,
            db: self.db.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: self.state(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let signature = Some(meta.signature());
        let read_err = |e: AnyError| StorageIOError::read_snapshot(signature.clone(), e);
        let data = snapshot.into_inner();
        let payload = decode_snapshot(&data)
            .context("decoding the snapshot")
            .map_err(read_err)?;
        if payload.last_applied != meta.last_log_id || payload.membership != meta.last_membership {
            return Err(read_err(AnyError::error(format!(
                "the snapshot's data is at {:?} with membership {}, its meta at {:?} with {}",
                payload.last_applied, payload.membership, meta.last_log_id, meta.last_membership
            )))
            .into());
        }
        let mut state = payload.state;
        state.caught_up = self.state.borrow().caught_up || reaches(&self.log, meta.last_log_id);
        state.applied = meta.last_log_id.map(|l| l.index);

        let subject = || ErrorSubject::Snapshot(signature.clone());
        let meta_json = encode(meta, subject(), "encoding the snapshot's meta")?;
        let last_json = encode(
            &meta.last_log_id,
            subject(),
            "encoding the last applied log id",
        )?;
        let membership_json = encode(&meta.last_membership, subject(), "encoding the membership")?;
        let mut writes: Vec<Write> = state
            .tasks
            .values()
            .map(|t| Write::PutTask(Task::clone(t)))
            .collect();
        writes.push(Write::ClusterSettings(state.settings.clone()));
        writes.push(Write::Cluster(state.cluster));
        writes.extend(state.runs.values().cloned().map(Write::ClusterRun));
        writes.push(Write::Holders(state.holders.clone()));
        writes.push(Write::Stops(state.stops.clone()));
        writes.push(Write::Drained(state.drained.clone()));
        writes.push(Write::Tokens(state.tokens.clone()));
        writes.push(Write::CronPaused(state.cron_paused));
        let first = state.activity_count + 1 - state.activity.len() as u64;
        writes.extend(
            state
                .activity
                .iter()
                .zip(first..)
                .map(|(a, n)| Write::Activity(n, a.clone())),
        );
        writes.extend(
            state
                .last_fired
                .iter()
                .map(|(task, slot)| Write::LastFired(task.clone(), *slot)),
        );
        let meta_owned = meta.clone();
        // The snapshot is ahead of every applied batch whose tables wait.
        self.unwritten = Unwritten::default();
        write_txn(&self.db, subject(), Durability::Immediate, move |txn| {
            clear_replicated_in(txn).context("clearing the replicated state")?;
            write_in(txn, &writes).context("writing the state")?;
            stage_applied(txn, &last_json, Some(&membership_json))?;
            stage_snapshot(txn, &meta_owned, &meta_json, &data, false)
        })
        .await?;

        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state.send_replace(Arc::new(state));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let read = || -> std::result::Result<Option<(Meta, Vec<u8>)>, AnyError> {
            let txn = self.db.begin_read().context("beginning a read")?;
            let table = txn
                .open_table(SNAPSHOT)
                .context("opening table raft_snapshot")?;
            let Some(meta) = table
                .get(SNAPSHOT_META)
                .context("reading the snapshot's meta")?
            else {
                return Ok(None);
            };
            let meta: Meta =
                serde_json::from_slice(meta.value()).context("decoding the snapshot's meta")?;
            let Some(data) = table
                .get(SNAPSHOT_DATA)
                .context("reading the snapshot's data")?
            else {
                return Err(AnyError::error(format!(
                    "snapshot {} has meta but no data",
                    meta.snapshot_id
                )));
            };
            Ok(Some((meta, data.value().to_vec())))
        };
        Ok(read()
            .map_err(|e| StorageIOError::read_snapshot(None, e))?
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

/// Empties the state machine's tables in `txn` (a node leaving its cluster).
pub(super) fn clear_in(txn: &WriteTransaction) -> std::result::Result<(), redb::Error> {
    txn.open_table(SM_META)?.retain(|_, _| false)?;
    txn.open_table(SNAPSHOT)?.retain(|_, _| false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::Utc;
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, RaftLogReader, Vote};
    use tempfile::TempDir;

    use super::*;
    use crate::Change;
    use crate::raft::log_store::LogStore;
    use taskmesh_core::model::{ClusterSettings, NodeSettings, Run, Task, TaskId, Trigger};
    use taskmesh_store::{RunQuery, Store};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().expect("tmp");
            let store = RedbStore::open(&dir.path().join("db")).expect("open");
            let log = LogStore::beside(&store)?;
            let (sm, _state) = StateMachine::open(&store, log.on_disk())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log and state-machine storage.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("suite");
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn normal(index: u64, change: Change) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(change),
        }
    }

    fn membership(index: u64) -> Entry<TypeConfig> {
        let nodes = BTreeMap::from([(1, MeshNode::default())]);
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![BTreeSet::from([1])],
                nodes,
            )),
        }
    }

    fn task(id: &str, name: &str) -> Task {
        Task::sample(id, name)
    }

    #[tokio::test]
    async fn restart_keeps_vote_log_last_applied_and_state() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let slot = Utc::now();
        let entries = vec![
            membership(1),
            normal(2, Change::PutTask(task("a", "one"))),
            normal(
                3,
                Change::Fire {
                    task: TaskId("a".into()),
                    slot,
                    runs: vec![],
                },
            ),
        ];
        let before = {
            let store = RedbStore::open(&path).expect("open");
            let mut log = LogStore::beside(&store).expect("log");
            let (mut sm, mut rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
            log.save_vote(&Vote::new(1, 1)).await.expect("vote");
            log.blocking_append(entries.clone()).await.expect("append");
            let replies = sm.apply(entries).await.expect("apply");
            assert_eq!(replies, vec![Applied::Ok; 3]);
            assert!(rx.has_changed().expect("open"), "the watch saw the batch");
            let state = rx.borrow_and_update().clone();
            assert!(state.tasks.contains_key(&TaskId("a".into())));
            // The tables are written every TABLES_EVERY; this node stops before that.
            sm.write_tables().await.expect("tables");
            state
        };

        let store = RedbStore::open(&path).expect("reopen");
        let mut log = LogStore::beside(&store).expect("log");
        let (mut sm, rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(1, 1)));
        let ids: Vec<_> = log
            .try_get_log_entries(..)
            .await
            .expect("log")
            .iter()
            .map(|e| e.log_id)
            .collect();
        assert_eq!(ids, vec![log_id(1, 1), log_id(1, 2), log_id(1, 3)]);
        let (applied, members) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(1, 3)));
        assert_eq!(members.log_id(), &Some(log_id(1, 1)));
        let after = rx.borrow().clone();
        assert_eq!(after.tasks, before.tasks);
        assert_eq!(after.digest(), before.digest(), "the same state, read back");
        assert_eq!(before.applied, Some(3), "published with its index");
        assert_eq!(after.applied, Some(3), "read back with its index");
        assert_eq!(
            after.last_fired[&TaskId("a".into())].timestamp_millis(),
            slot.timestamp_millis(),
            "stored in milliseconds"
        );
    }

    #[tokio::test]
    async fn a_state_is_caught_up_once_it_holds_every_entry_the_log_held_at_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let blank = Entry {
            log_id: log_id(1, 3),
            payload: EntryPayload::Blank,
        };
        {
            let store = RedbStore::open(&path).expect("open");
            let mut log = LogStore::beside(&store).expect("log");
            let (mut sm, rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
            assert!(
                rx.borrow().caught_up,
                "an empty log holds nothing to catch up"
            );
            log.blocking_append([
                membership(1),
                normal(2, Change::PutTask(task("a", "one"))),
                blank.clone(),
            ])
            .await
            .expect("append");
            // The node stops having applied only the first entry (its commit index was older).
            sm.apply([membership(1)]).await.expect("apply");
        }
        let store = RedbStore::open(&path).expect("reopen");
        let log = LogStore::beside(&store).expect("log");
        let (mut sm, mut rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
        assert!(
            !rx.borrow_and_update().caught_up,
            "the log holds entries 2 and 3, the state does not"
        );
        sm.apply([normal(2, Change::PutTask(task("a", "one")))])
            .await
            .expect("apply");
        let state = rx.borrow_and_update().clone();
        assert!(state.tasks.contains_key(&TaskId("a".into())));
        assert!(!state.caught_up, "entry 3 is still missing");
        // An entry that changes nothing still brings the news.
        sm.apply([blank]).await.expect("apply");
        assert!(rx.has_changed().expect("open"), "a new state was sent");
        let state = rx.borrow_and_update().clone();
        assert!(state.caught_up, "it holds everything the log held at start");
        assert!(state.tasks.contains_key(&TaskId("a".into())));

        // Opened again with everything applied (and written), it is caught up at once; a batch
        // that changes nothing then sends nothing.
        sm.write_tables().await.expect("tables");
        drop((sm, rx));
        let (mut sm, mut rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
        assert!(rx.borrow_and_update().caught_up);
        sm.apply([normal(4, Change::RemoveTask(TaskId("zz".into())))])
            .await
            .expect("apply");
        assert!(!rx.has_changed().expect("open"), "nothing new to send");
    }

    #[tokio::test]
    async fn a_rejected_change_advances_last_applied_and_leaves_the_state() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("open");
        let log = LogStore::beside(&store).expect("log");
        let (mut sm, mut rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
        sm.apply([normal(1, Change::PutTask(task("a", "one")))])
            .await
            .expect("apply");
        let before = rx.borrow_and_update().clone();

        let replies = sm
            .apply([normal(2, Change::PutTask(task("b", "one")))])
            .await
            .expect("apply");
        assert!(
            matches!(&replies[..], [Applied::Rejected(invalid)] if invalid.to_string().contains("already called")),
            "{replies:?}"
        );
        assert_eq!(
            sm.applied_state().await.expect("applied").0,
            Some(log_id(1, 2))
        );
        assert!(!rx.has_changed().expect("open"), "no new state was sent");
        assert_eq!(*sm.state(), *before);
        sm.write_tables().await.expect("tables");
        let stored: Vec<_> = store
            .tasks()
            .expect("tasks")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(stored, vec![TaskId("a".into())]);

        // A batch mixing accepted and rejected changes keeps only the accepted ones.
        let replies = sm
            .apply([
                normal(3, Change::RemoveTask(TaskId("zz".into()))),
                normal(4, Change::PutTask(task("c", "three"))),
            ])
            .await
            .expect("apply");
        assert!(matches!(replies[0], Applied::Rejected(_)));
        assert_eq!(replies[1], Applied::Ok);
        assert_eq!(sm.state().tasks.len(), 2);

        // Not in the tables yet (they follow every TABLES_EVERY): opened now, they stand at
        // entry 2, and openraft would re-apply the rest from the log.
        let (mut lagging, _rx) = StateMachine::open(&store, log.on_disk()).expect("reopen");
        assert_eq!(
            lagging.applied_state().await.expect("applied").0,
            Some(log_id(1, 2))
        );
        assert_eq!(lagging.state().tasks.len(), 1);
        // A snapshot writes them first: the log is purged up to it afterwards.
        let _builder = sm.get_snapshot_builder().await;
        drop(sm);
        let (mut sm, _rx) = StateMachine::open(&store, log.on_disk()).expect("reopen");
        assert_eq!(
            sm.applied_state().await.expect("applied").0,
            Some(log_id(1, 4))
        );
        assert_eq!(sm.state().tasks.len(), 2);
    }

    #[tokio::test]
    async fn install_snapshot_replaces_the_state_but_not_runs_or_node_settings() {
        // The leader's state: task `b`, a fired slot, and its own cluster settings.
        let leader_dir = tempfile::tempdir().expect("tmp");
        let leader_store = RedbStore::open(&leader_dir.path().join("db")).expect("open");
        let log = LogStore::beside(&leader_store).expect("log");
        let (mut leader, _rx) = StateMachine::open(&leader_store, log.on_disk()).expect("sm");
        let slot = Utc::now();
        leader
            .apply([
                membership(1),
                normal(2, Change::PutTask(task("b", "two"))),
                normal(
                    3,
                    Change::Fire {
                        task: TaskId("b".into()),
                        slot,
                        runs: vec![],
                    },
                ),
                normal(
                    4,
                    Change::Settings(ClusterSettings {
                        retention_days: 42,
                        ..Default::default()
                    }),
                ),
            ])
            .await
            .expect("apply");
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");

        // The follower: task `a` with a fired slot, a run, and its own node settings.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let node_settings = NodeSettings {
            name: "follower".into(),
            slots: 3,
            ..Default::default()
        };
        let run = Run::new(
            TaskId("a".into()),
            "one".into(),
            Trigger::Manual,
            1,
            "n".into(),
        );
        {
            let store = RedbStore::open(&path).expect("open");
            store
                .write(&[Write::NodeSettings(node_settings.clone())])
                .expect("node settings");
            store
                .put_runs(std::slice::from_ref(&run), 10)
                .expect("runs");
            let log = LogStore::beside(&store).expect("log");
            let (mut sm, mut rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
            sm.apply([
                normal(1, Change::PutTask(task("a", "one"))),
                normal(
                    2,
                    Change::Fire {
                        task: TaskId("a".into()),
                        slot,
                        runs: vec![],
                    },
                ),
            ])
            .await
            .expect("apply");
            rx.mark_unchanged();

            let mut data = sm.begin_receiving_snapshot().await.expect("begin");
            *data = *snapshot.snapshot;
            sm.install_snapshot(&snapshot.meta, data)
                .await
                .expect("install");
            assert!(
                rx.has_changed().expect("open"),
                "the watch saw the snapshot"
            );
            let state = rx.borrow().clone();
            assert_eq!(*state, *leader.state(), "the whole state came across");
            assert_eq!(state.digest(), leader.state().digest());
            assert_eq!(state.applied, Some(4));
            let ids: Vec<_> = state.tasks.keys().cloned().collect();
            assert_eq!(ids, vec![TaskId("b".into())]);
            assert_eq!(state.settings.retention_days, 42);
        }

        // After a restart: the tables hold the snapshot's state; runs and node settings stayed.
        let store = RedbStore::open(&path).expect("reopen");
        let log = LogStore::beside(&store).expect("log");
        let (mut sm, rx) = StateMachine::open(&store, log.on_disk()).expect("sm");
        let ids: Vec<_> = store
            .tasks()
            .expect("tasks")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec![TaskId("b".into())]);
        let fired: Vec<_> = store.last_fired().expect("fired").into_keys().collect();
        assert_eq!(fired, vec![TaskId("b".into())]);
        assert_eq!(
            store
                .cluster_settings()
                .expect("cluster")
                .map(|s| s.retention_days),
            Some(42)
        );
        assert_eq!(store.node_settings().expect("node"), Some(node_settings));
        assert_eq!(
            store.run(&run.id).expect("run").map(|r| r.id),
            Some(run.id.clone())
        );
        let listed = store
            .runs(&RunQuery {
                task: Some(TaskId("a".into())),
                before: None,
                limit: 10,
                ..RunQuery::default()
            })
            .expect("runs");
        assert_eq!(listed.len(), 1, "runs_by_task kept its row");
        assert_eq!(rx.borrow().tasks.len(), 1);
        assert_eq!(
            rx.borrow().digest(),
            leader.state().digest(),
            "restarted after the install, the same digest"
        );
        assert_eq!(
            sm.applied_state().await.expect("applied"),
            (
                snapshot.meta.last_log_id,
                snapshot.meta.last_membership.clone()
            )
        );
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a current snapshot");
        assert_eq!(current.meta, snapshot.meta);
    }
}
