//! The Raft log on redb: log entries, the vote, the committed log id and the last purged log id.
//!
//! Tables (in the node's one database file, next to the [`crate::store`] tables):
//!
//! - `raft_log`: log index → the JSON-encoded [`openraft::Entry`];
//! - `raft_log_meta`: `vote`, `committed`, `last_purged` → JSON-encoded [`Vote`] / [`LogId`].
//!
//! Every write goes to the log's writer thread, which runs them in order, as openraft requires.
//! `append` keeps its entries in memory (readable at once) and returns; the writer commits the
//! appends waiting at one time in one transaction and then calls their flush callbacks. The vote,
//! appended entries, truncation and purge commit with redb's default `Immediate` durability
//! (fsynced before `commit` returns). The committed log id is advisory (openraft re-applies up to
//! it at start, and a stale one only means less of that), so it is not awaited and has no
//! transaction of its own: it goes with the writer's next one.
//!
//! [`OnDisk`] tells the state machine how far the log is on disk, and where it ended when it was
//! opened: the state machine's own commits are not durable by themselves (see
//! [`super::state_machine`]), and each durable commit here makes them durable too.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};

use super::{NodeId, TypeConfig};

/// Log index → JSON-encoded entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed`, `last_purged` → JSON.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Adds a note on what was being done to an error, as openraft's [`AnyError`].
pub(super) trait Context<T> {
    fn context(self, doing: &'static str) -> std::result::Result<T, AnyError>;
}

impl<T, E: std::error::Error + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, doing: &'static str) -> std::result::Result<T, AnyError> {
        self.map_err(|e| AnyError::new(&e).add_context(|| doing))
    }
}

/// Runs `f` in one write transaction on the blocking pool and commits it with `durability`;
/// a failure is reported as a write to `subject`.
pub(super) async fn write_txn<F>(
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
pub(super) fn encode<T: Serialize>(
    value: &T,
    subject: ErrorSubject<NodeId>,
    what: &'static str,
) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .context(what)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, e).into())
}

/// The redb Raft log. Cheap to clone: replication tasks read through clones of it.
///
/// Appends return at once: the entries wait in memory (readable from then on) while the
/// log's writer thread commits them, and openraft hears of each append when it is on disk.
/// (openraft 0.9 awaits that before its next command, so the leader still replicates only after
/// its own fsync; see docs/consensus.md.) Every other write also goes through the writer, in
/// order, and (but for the advisory committed id) is awaited.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    tail: Arc<Mutex<Tail>>,
    writer: std_mpsc::Sender<Job>,
    on_disk: OnDisk,
}

/// How far this node's log is on disk. The state machine acts on an applied entry only once the
/// entry is on disk here (see [`super::state_machine`]).
#[derive(Clone)]
pub struct OnDisk {
    tail: Arc<Mutex<Tail>>,
    /// Changes after each commit of appends; closed when the writer stops.
    commits: watch::Receiver<u64>,
    /// The index of the newest entry in the log when it was opened.
    pub opened_at: Option<u64>,
}

impl OnDisk {
    /// Waits until no entry up to `index` waits for the writer.
    pub async fn through(&mut self, index: u64) -> std::result::Result<(), AnyError> {
        loop {
            self.commits.borrow_and_update();
            if !self.tail.lock().expect("log tail").waiting_through(index) {
                return Ok(());
            }
            self.commits
                .changed()
                .await
                .map_err(|_| AnyError::error("the raft log's writer has stopped"))?;
        }
    }
}

/// Recent entries, by index, kept in memory for readers.
#[derive(Default)]
struct Tail {
    /// Appended, not yet known to be on disk.
    pending: BTreeMap<u64, Entry<TypeConfig>>,
    /// The newest [`RECENT`] entries on disk, so that replication seldom decodes the table.
    recent: BTreeMap<u64, Entry<TypeConfig>>,
}

/// How many entries on disk the [`Tail`] keeps.
const RECENT: usize = 64;

impl Tail {
    /// The kept entries in `range`; a pending one wins over one on disk at its index.
    fn range(&self, range: (Bound<u64>, Bound<u64>)) -> BTreeMap<u64, Entry<TypeConfig>> {
        let mut entries: BTreeMap<u64, Entry<TypeConfig>> = self
            .recent
            .range(range)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        entries.extend(self.pending.range(range).map(|(i, e)| (*i, e.clone())));
        entries
    }

    /// Whether an entry up to `index` is appended but not yet on disk.
    fn waiting_through(&self, index: u64) -> bool {
        self.pending.range(..=index).next().is_some()
    }

    /// Drops every kept entry for which `keep` says no.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.pending.retain(|i, _| keep(*i));
        self.recent.retain(|i, _| keep(*i));
    }

    /// The entries `written` are on disk: the pending ones among them (unless a truncation has
    /// replaced them since) become recent ones.
    fn written(&mut self, written: impl Iterator<Item = LogId<NodeId>>) {
        for id in written {
            if self.pending.get(&id.index).is_some_and(|e| e.log_id == id)
                && let Some(entry) = self.pending.remove(&id.index)
            {
                self.recent.insert(id.index, entry);
            }
        }
        while self.recent.len() > RECENT {
            self.recent.pop_first();
        }
    }
}

/// Appended entries as they are stored: their log ids and JSON.
type Rows = Vec<(LogId<NodeId>, Vec<u8>)>;
/// A write for the writer thread to run in a transaction of its own.
type TxnWrite = Box<dyn FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError> + Send>;

/// One write for the log's writer thread.
enum Job {
    /// Entries to commit durably; `flushed` hears when they are on disk.
    Append {
        rows: Rows,
        flushed: LogFlushed<TypeConfig>,
    },
    /// The committed log id (JSON): it goes with the next transaction.
    Committed(Vec<u8>),
    /// Any other write, after every job before it; `done` hears how it went.
    Write {
        durability: Durability,
        write: TxnWrite,
        done: oneshot::Sender<std::result::Result<(), AnyError>>,
    },
    /// Answered once every job before it is done.
    Barrier(oneshot::Sender<()>),
}

/// The log's writer thread: runs the jobs in order. The appends among the jobs waiting at one
/// time commit together (one fsync), up to the next other write.
struct Writer {
    /// Held only during a commit, so the database closes with the last of the node's handles.
    db: Weak<Database>,
    tail: Arc<Mutex<Tail>>,
    appends: Vec<(Rows, LogFlushed<TypeConfig>)>,
    committed: Option<Vec<u8>>,
    /// Counts the commits of appends, for [`OnDisk`].
    commits: watch::Sender<u64>,
}

impl Writer {
    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            for job in std::iter::once(first).chain(jobs.try_iter()) {
                match job {
                    Job::Append { rows, flushed } => self.appends.push((rows, flushed)),
                    Job::Committed(bytes) => self.committed = Some(bytes),
                    Job::Write {
                        durability,
                        write,
                        done,
                    } => {
                        self.commit_appends();
                        let _ = done.send(self.commit(durability, write));
                    }
                    Job::Barrier(done) => {
                        self.commit_appends();
                        let _ = done.send(());
                    }
                }
            }
            self.commit_appends();
        }
    }

    /// Commits the waiting appends in one durable transaction, then tells each of them.
    fn commit_appends(&mut self) {
        if self.appends.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.appends);
        let result = self.commit(Durability::Immediate, |txn| {
            let mut log = txn.open_table(LOG).context("opening table raft_log")?;
            for (id, bytes) in batch.iter().flat_map(|(rows, _)| rows) {
                log.insert(id.index, bytes.as_slice())
                    .context("appending to raft_log")?;
            }
            Ok(())
        });
        if result.is_ok() {
            let written = batch.iter().flat_map(|(rows, _)| rows).map(|(id, _)| *id);
            self.tail.lock().expect("log tail").written(written);
        }
        self.commits.send_modify(|n| *n += 1);
        for (_, flushed) in batch {
            flushed.log_io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            });
        }
    }

    /// One transaction with `write`, and the committed log id if a newer one waits.
    fn commit(
        &mut self,
        durability: Durability,
        write: impl FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError>,
    ) -> std::result::Result<(), AnyError> {
        let db = self
            .db
            .upgrade()
            .ok_or_else(|| AnyError::error("the database is closed"))?;
        let committed = self.committed.take();
        commit(&db, durability, |txn| {
            write(txn)?;
            match committed {
                Some(bytes) => meta_write(COMMITTED, bytes)(txn),
                None => Ok(()),
            }
        })
    }
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

impl LogStore {
    /// Opens the log in `db` (the node's database, see [`crate::store::RedbStore::database`]),
    /// creating its tables on first use, and starts its writer thread (which ends with the last
    /// clone).
    pub fn open(db: Arc<Database>) -> Result<Self> {
        let create = || -> std::result::Result<Option<u64>, AnyError> {
            let txn = db.begin_write().context("beginning a write transaction")?;
            let last = txn
                .open_table(LOG)
                .context("creating table raft_log")?
                .last()
                .context("reading the last log entry")?
                .map(|(k, _)| k.value());
            txn.open_table(LOG_META)
                .context("creating table raft_log_meta")?;
            txn.commit().context("committing")?;
            Ok(last)
        };
        let opened_at = create().map_err(StorageIOError::write_logs)?;
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (writer, jobs) = std_mpsc::channel();
        let (commits, commits_rx) = watch::channel(0);
        let thread = Writer {
            db: Arc::downgrade(&db),
            tail: tail.clone(),
            appends: Vec::new(),
            committed: None,
            commits,
        };
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || thread.run(jobs))
            .context("starting the raft log's writer")
            .map_err(StorageIOError::write_logs)?;
        let on_disk = OnDisk {
            tail: tail.clone(),
            commits: commits_rx,
            opened_at,
        };
        Ok(Self {
            db,
            tail,
            writer,
            on_disk,
        })
    }

    /// How far this log is on disk.
    pub fn on_disk(&self) -> OnDisk {
        self.on_disk.clone()
    }

    /// Queues `write` after every write before it and waits until it is committed.
    async fn write(
        &self,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
        write: impl FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError> + Send + 'static,
    ) -> Result<()> {
        let (done, result) = oneshot::channel();
        let job = Job::Write {
            durability,
            write: Box::new(write),
            done,
        };
        self.queue(job, subject.clone())?;
        result
            .await
            .context("waiting for the raft log's writer")
            .and_then(|r| r)
            .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, e).into())
    }

    /// Hands `job` to the writer; a writer that has stopped is a failed write to `subject`.
    fn queue(&self, job: Job, subject: ErrorSubject<NodeId>) -> Result<()> {
        self.writer.send(job).map_err(|_| {
            let stopped = AnyError::error("the raft log's writer has stopped");
            StorageIOError::new(subject, ErrorVerb::Write, stopped).into()
        })
    }

    /// Waits until every write queued so far is done.
    async fn settle(&self) {
        let (done, settled) = oneshot::channel();
        if self.writer.send(Job::Barrier(done)).is_ok() {
            let _ = settled.await;
        }
    }

    /// Reads one JSON value from `raft_log_meta`.
    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>> {
        let read = || -> std::result::Result<Option<T>, AnyError> {
            let txn = self.db.begin_read().context("beginning a read")?;
            let table = txn
                .open_table(LOG_META)
                .context("opening table raft_log_meta")?;
            let Some(value) = table.get(key).context("reading raft_log_meta")? else {
                return Ok(None);
            };
            serde_json::from_slice(value.value())
                .map(Some)
                .context("decoding a value in raft_log_meta")
        };
        read().map_err(|e| StorageIOError::new(subject, ErrorVerb::Read, e).into())
    }

    /// Writes one JSON value to `raft_log_meta` in its own transaction, after every write queued
    /// before it.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<()> {
        let bytes = encode(value, subject.clone(), "encoding a value for raft_log_meta")?;
        self.write(subject, Durability::Immediate, meta_write(key, bytes))
            .await
    }

    fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>> {
        let entry: Entry<TypeConfig> = serde_json::from_slice(bytes)
            .context("decoding a log entry")
            .map_err(|e| StorageIOError::read_log_at_index(index, e))?;
        if entry.log_id.index != index {
            return Err(StorageIOError::read_log_at_index(
                index,
                AnyError::error(format!(
                    "the entry stored at index {index} has log id {}",
                    entry.log_id
                )),
            )
            .into());
        }
        Ok(entry)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>> {
        let read = || -> std::result::Result<_, AnyError> {
            let txn = self.db.begin_read().context("beginning a read")?;
            let table = txn.open_table(LOG).context("opening table raft_log")?;
            let last = table.last().context("reading the last log entry")?;
            Ok(last.map(|(k, v)| (k.value(), v.value().to_vec())))
        };
        match read().map_err(StorageIOError::read_logs)? {
            Some((index, bytes)) => Self::decode_entry(index, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        let empty = match end {
            Bound::Included(e) => e < start,
            Bound::Excluded(e) => e <= start,
            Bound::Unbounded => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        // The entries kept in memory first: one that reaches the disk meanwhile is then read
        // from there, and none falls between the two reads.
        let mut entries = self
            .tail
            .lock()
            .expect("log tail")
            .range((Bound::Included(start), end));
        // Replication asks for the newest entries, which are all in memory: no read transaction
        // for those.
        let wanted = match end {
            Bound::Included(e) => Some(e - start + 1),
            Bound::Excluded(e) => Some(e - start),
            Bound::Unbounded => None,
        };
        if wanted.is_some_and(|n| entries.len() as u64 == n) {
            return Ok(entries.into_values().collect());
        }
        let read = || -> std::result::Result<Vec<(u64, Vec<u8>)>, AnyError> {
            let txn = self.db.begin_read().context("beginning a read")?;
            let table = txn.open_table(LOG).context("opening table raft_log")?;
            let mut rows = Vec::new();
            for row in table
                .range((Bound::Included(start), end))
                .context("reading raft_log")?
            {
                let (k, v) = row.context("reading raft_log")?;
                if !entries.contains_key(&k.value()) {
                    rows.push((k.value(), v.value().to_vec()));
                }
            }
            Ok(rows)
        };
        for (index, bytes) in read().map_err(StorageIOError::read_logs)? {
            entries.insert(index, Self::decode_entry(index, &bytes)?);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.settle().await;
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_meta(LAST_PURGED, ErrorSubject::Logs)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        // Advisory (see the module): it goes with the next transaction, unawaited.
        let bytes = encode(
            &committed,
            ErrorSubject::Store,
            "encoding the committed log id",
        )?;
        self.queue(Job::Committed(bytes), ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        let mut kept = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .context("encoding a log entry")
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            rows.push((entry.log_id, bytes));
            kept.push(entry);
        }
        if rows.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Readable from now on; the writer calls `callback` once they are on disk.
        self.tail
            .lock()
            .expect("log tail")
            .pending
            .extend(kept.into_iter().map(|e| (e.log_id.index, e)));
        let job = Job::Append {
            rows,
            flushed: callback,
        };
        self.queue(job, ErrorSubject::Logs)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "truncating the raft log from this entry on");
        self.tail
            .lock()
            .expect("log tail")
            .retain(|index| index < log_id.index);
        self.write(ErrorSubject::Logs, Durability::Immediate, move |txn| {
            txn.open_table(LOG)
                .context("opening table raft_log")?
                .retain_in(log_id.index.., |_, _| false)
                .context("truncating raft_log")
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "purging the raft log up to this entry");
        let bytes = encode(
            &log_id,
            ErrorSubject::Logs,
            "encoding the last purged log id",
        )?;
        self.tail
            .lock()
            .expect("log tail")
            .retain(|index| index > log_id.index);
        self.write(ErrorSubject::Logs, Durability::Immediate, move |txn| {
            txn.open_table(LOG_META)
                .context("opening table raft_log_meta")?
                .insert(LAST_PURGED, bytes.as_slice())
                .context("writing the last purged log id")?;
            txn.open_table(LOG)
                .context("opening table raft_log")?
                .retain_in(..=log_id.index, |_, _| false)
                .context("purging raft_log")
        })
        .await
    }
}

/// A write of one JSON value to `raft_log_meta`.
fn meta_write(
    key: &'static str,
    bytes: Vec<u8>,
) -> impl FnOnce(&WriteTransaction) -> std::result::Result<(), AnyError> + Send + 'static {
    move |txn| {
        txn.open_table(LOG_META)
            .context("opening table raft_log_meta")?
            .insert(key, bytes.as_slice())
            .context("writing raft_log_meta")?;
        Ok(())
    }
}

/// Empties the log tables in `txn` (a node leaving its cluster).
pub(super) fn clear_in(txn: &WriteTransaction) -> std::result::Result<(), redb::Error> {
    txn.open_table(LOG)?.retain(|_, _| false)?;
    txn.open_table(LOG_META)?.retain(|_, _| false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::store::RedbStore;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 7), index)
    }

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn vote_log_committed_and_purged_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        {
            let store = RedbStore::open(&path).expect("open");
            let mut log = LogStore::open(store.database()).expect("log");
            log.save_vote(&Vote::new(3, 7)).await.expect("vote");
            log.blocking_append((1..=5).map(|i| blank(3, i)))
                .await
                .expect("append");
            log.save_committed(Some(log_id(3, 4)))
                .await
                .expect("committed");
            log.purge(log_id(3, 2)).await.expect("purge");
            log.truncate(log_id(3, 5)).await.expect("truncate");
        }
        let store = RedbStore::open(&path).expect("reopen");
        let mut log = LogStore::open(store.database()).expect("log");
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 7)));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(3, 4)),
            "the committed id rode on the durable commits after it"
        );
        let entries = log.try_get_log_entries(..).await.expect("read");
        let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
        assert_eq!(ids, vec![log_id(3, 3), log_id(3, 4)]);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 2)));
        assert_eq!(state.last_log_id, Some(log_id(3, 4)));
        assert!(
            log.try_get_log_entries(4..4)
                .await
                .expect("empty")
                .is_empty()
        );
        assert!(
            log.try_get_log_entries(u64::MAX..)
                .await
                .expect("past the end")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn on_disk_waits_for_the_writer_and_knows_where_the_log_began() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        {
            let store = RedbStore::open(&path).expect("open");
            let mut log = LogStore::open(store.database()).expect("log");
            assert_eq!(log.on_disk().opened_at, None);
            log.blocking_append((1..=3).map(|i| blank(1, i)))
                .await
                .expect("append");
        }
        let store = RedbStore::open(&path).expect("reopen");
        let db = store.database();
        let log = LogStore::open(db.clone()).expect("log");
        let mut on_disk = log.on_disk();
        assert_eq!(on_disk.opened_at, Some(3));
        on_disk.through(3).await.expect("on disk since before");

        // Hold the database's write lock, so the writer cannot commit the next appends.
        let held = db.begin_write().expect("write lock");
        let mut appender = log.clone();
        let append =
            tokio::spawn(
                async move { appender.blocking_append((4..=5).map(|i| blank(1, i))).await },
            );
        let mut reader = log.clone();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while reader
            .try_get_log_entries(5..6)
            .await
            .expect("read")
            .is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the append never arrived"
            );
            tokio::task::yield_now().await;
        }
        on_disk.through(3).await.expect("older entries are on disk");
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(200), on_disk.through(4)).await;
        assert!(waiting.is_err(), "entry 4 cannot be on disk yet");

        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), on_disk.through(5))
            .await
            .expect("on disk once the writer could commit")
            .expect("the writer runs");
        append.await.expect("task").expect("append");
    }
}
