//! The Raft log: entries, the vote, the committed log id and the last purged log id, in an
//! append-only file beside the node's database (`raft.log`, see `log_file.rs`).
//!
//! Every write goes to the log's writer thread, which runs them in order, as openraft requires.
//! `append` keeps its entries in memory (readable at once) and returns; the writer writes the
//! records of every job waiting at one time in one append and one `fdatasync`, and then calls
//! their flush callbacks and answers the other writes (vote, truncation, purge). The committed log
//! id is advisory (openraft re-applies up to it at start, and a stale one only means less of
//! that), so it is not awaited and forces no fsync: it goes with the writer's next write.
//!
//! Readers find the vote and the log ids in memory, the newest entries decoded in memory too,
//! and older ones by their place in the file.
//!
//! [`OnDisk`] tells the state machine how far the log is on disk, and where it ended when it was
//! opened: the state machine's own commits are not durable by themselves (see
//! [`super::state_machine`]).
//!
//! Earlier versions kept the log in redb tables (`raft_log`, `raft_log_meta`) in the node's
//! database; [`LogStore::open`] moves such a log into the file once.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

use super::log_file::{self, Batch, Contents, LogFile, Record, Slot};
use super::{Context, NodeId, TypeConfig};
use taskmesh_store::RedbStore;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log file for the node database at `db_path`: `raft.log` in the same folder.
pub fn path(db_path: &Path) -> PathBuf {
    db_path.with_file_name("raft.log")
}

/// The Raft log. Cheap to clone: replication tasks read through clones of it.
///
/// Appends return at once: the entries wait in memory (readable from then on) while the
/// log's writer thread writes them, and openraft hears of each append when it is on disk.
/// (openraft 0.9 awaits that before its next command, so the leader still replicates only after
/// its own fsync; see docs/consensus.md.) Every other write also goes through the writer, in
/// order, and (but for the advisory committed id) is awaited.
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<Log>>,
    writer: std_mpsc::Sender<Job>,
    on_disk: OnDisk,
    /// The index of the newest committed entry openraft told the log of (0 before any).
    committed: Arc<std::sync::atomic::AtomicU64>,
}

/// How far this node's log is on disk. The state machine acts on an applied entry only once the
/// entry is on disk here (see [`super::state_machine`]).
#[derive(Clone)]
pub struct OnDisk {
    log: Arc<Mutex<Log>>,
    /// Changes after each write of the writer; closed when the writer stops.
    writes: watch::Receiver<u64>,
    /// The index of the newest entry in the log when it was opened.
    pub opened_at: Option<u64>,
}

impl OnDisk {
    /// Waits until no entry up to `index` waits for the writer.
    pub async fn through(&mut self, index: u64) -> std::result::Result<(), AnyError> {
        loop {
            self.writes.borrow_and_update();
            if !self.log.lock().expect("log").waiting_through(index) {
                return Ok(());
            }
            self.writes
                .changed()
                .await
                .map_err(|_| AnyError::error("the raft log's writer has stopped"))?;
        }
    }
}

/// The log as readers see it: what the file holds (from the writer, after each write), the
/// entries waiting for the writer, and the newest entries on disk, decoded.
struct Log {
    disk: Contents,
    /// The file the entries in `disk` are in (compaction replaces it).
    file: Arc<File>,
    /// Appended, not yet known to be on disk.
    pending: BTreeMap<u64, Entry<TypeConfig>>,
    /// The newest [`RECENT`] entries on disk, so that replication seldom reads the file.
    recent: BTreeMap<u64, Entry<TypeConfig>>,
}

/// How many entries on disk the [`Log`] keeps decoded.
const RECENT: usize = 64;

impl Log {
    /// The entries in `range` kept decoded (a pending one wins over one on disk at its index),
    /// and the places of the others on disk.
    fn range(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> (BTreeMap<u64, Entry<TypeConfig>>, Vec<Slot>) {
        let mut entries: BTreeMap<u64, Entry<TypeConfig>> = self
            .recent
            .range(range)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        entries.extend(self.pending.range(range).map(|(i, e)| (*i, e.clone())));
        let slots = self
            .disk
            .entries
            .range(range)
            .filter(|(i, _)| !entries.contains_key(i))
            .map(|(_, slot)| *slot)
            .collect();
        (entries, slots)
    }

    /// Whether an entry up to `index` is appended but not yet on disk.
    fn waiting_through(&self, index: u64) -> bool {
        self.pending.range(..=index).next().is_some()
    }

    /// The newest log id, appended or on disk, else the last purged one.
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let pending = self.pending.last_key_value().map(|(_, e)| e.log_id);
        let disk = self.disk.entries.last_key_value().map(|(_, s)| s.log_id);
        pending.max(disk).or(self.disk.last_purged)
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

/// How a job hears that its write is done.
type Done = oneshot::Sender<std::result::Result<(), String>>;

/// One write for the log's writer thread.
enum Job {
    /// Entries (log id and JSON) to write durably; `flushed` hears when they are on disk.
    Append {
        rows: Vec<(LogId<NodeId>, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// The committed log id: it goes with the next write, which need not be synced for it.
    Committed(Option<LogId<NodeId>>),
    /// A durable write of one record; `done` hears how it went.
    Write(Record, Done),
    /// Answered once every job before it is done.
    Barrier(oneshot::Sender<()>),
    /// Holds the writer until the sender is dropped (tests stall the writer with it).
    #[cfg(test)]
    Hold(std_mpsc::Receiver<()>),
}

/// Who hears about a write when it is done.
enum Notice {
    Flushed(LogFlushed<TypeConfig>),
    Done(Done),
    Barrier(oneshot::Sender<()>),
}

/// The log's writer thread: runs the jobs in order. The jobs waiting at one time go to disk in
/// one write and (unless all of them are committed ids) one fsync.
struct Writer {
    file: LogFile,
    log: Arc<Mutex<Log>>,
    /// Counts the writes, for [`OnDisk`].
    writes: watch::Sender<u64>,
}

impl Writer {
    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = Batch::default();
            let mut notices = Vec::new();
            let mut sync = false;
            for job in std::iter::once(first).chain(jobs.try_iter()) {
                match job {
                    Job::Append { rows, flushed } => {
                        for (id, json) in rows {
                            batch.push(Record::Entry(id, json));
                        }
                        notices.push(Notice::Flushed(flushed));
                        sync = true;
                    }
                    Job::Committed(id) => batch.push(Record::Committed(id)),
                    Job::Write(record, done) => {
                        batch.push(record);
                        notices.push(Notice::Done(done));
                        sync = true;
                    }
                    Job::Barrier(done) => notices.push(Notice::Barrier(done)),
                    #[cfg(test)]
                    Job::Hold(held) => {
                        self.write(
                            std::mem::take(&mut batch),
                            sync,
                            std::mem::take(&mut notices),
                        );
                        let _ = held.recv();
                    }
                }
            }
            self.write(batch, sync, notices);
        }
    }

    /// Writes `batch` (fsynced with `sync`), updates what readers see, and tells `notices`.
    fn write(&mut self, batch: Batch, sync: bool, notices: Vec<Notice>) {
        let result = self.file.write(&batch, sync).map(|at| {
            let mut log = self.log.lock().expect("log");
            batch.apply(&mut log.disk, at);
            log.written(batch.entry_ids());
        });
        if result.is_ok()
            && batch.drops_entries()
            && let Err(e) = self.compact_if_due()
        {
            tracing::warn!(error = %e, "compacting the raft log failed; it goes on in the old file");
        }
        self.writes.send_modify(|n| *n += 1);
        let error = result.err().map(|e| {
            tracing::error!(error = %e, "writing the raft log failed");
            e.to_string()
        });
        for notice in notices {
            match notice {
                Notice::Flushed(flushed) => flushed.log_io_completed(match &error {
                    None => Ok(()),
                    Some(e) => Err(std::io::Error::other(e.clone())),
                }),
                Notice::Done(done) => {
                    let _ = done.send(error.clone().map_or(Ok(()), Err));
                }
                Notice::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Rewrites the file once dead records take most of it.
    fn compact_if_due(&mut self) -> std::io::Result<()> {
        let disk = {
            let log = self.log.lock().expect("log");
            if !self.file.wants_compaction(&log.disk) {
                return Ok(());
            }
            log.disk.clone()
        };
        let compacted = self.file.compact(&disk)?;
        tracing::debug!(entries = compacted.entries.len(), "compacted the raft log");
        let mut log = self.log.lock().expect("log");
        log.disk = compacted;
        log.file = self.file.reader();
        Ok(())
    }
}

/// The tables the log lived in before it had its own file (see the module).
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const LEGACY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");

/// Moves a log from the legacy tables in `db` into a new file at `path`, unless that file
/// exists; then drops the tables. Each step is durable before the next, so a crash repeats
/// at most the last.
fn migrate(db: &Database, path: &Path) -> std::result::Result<(), AnyError> {
    let read = db.begin_read().context("beginning a read")?;
    let log = match read.open_table(LEGACY_LOG) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(AnyError::new(&e).add_context(|| "opening table raft_log")),
    };
    if !path.exists() {
        let mut records = Vec::new();
        if let Ok(meta) = read.open_table(LEGACY_META) {
            let json = |key: &str| -> std::result::Result<Option<Vec<u8>>, AnyError> {
                Ok(meta
                    .get(key)
                    .context("reading raft_log_meta")?
                    .map(|v| v.value().to_vec()))
            };
            if let Some(vote) = json("vote")? {
                records.push(Record::Vote(decode_meta(&vote)?));
            }
            if let Some(committed) = json("committed")? {
                records.push(Record::Committed(decode_meta(&committed)?));
            }
            if let Some(purged) = json("last_purged")? {
                records.push(Record::Purge(decode_meta(&purged)?));
            }
        }
        for row in log.iter().context("reading raft_log")? {
            let (_, json) = row.context("reading raft_log")?;
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(json.value()).context("decoding a log entry")?;
            records.push(Record::Entry(entry.log_id, json.value().to_vec()));
        }
        tracing::info!(path = %path.display(), records = records.len(), "moving the raft log from the database into its own file");
        LogFile::create(path, records).context("writing the raft log file")?;
    }
    drop(log);
    drop(read);
    let txn = db.begin_write().context("beginning a write transaction")?;
    txn.delete_table(LEGACY_LOG)
        .context("dropping table raft_log")?;
    txn.delete_table(LEGACY_META)
        .context("dropping table raft_log_meta")?;
    txn.commit().context("committing")
}

fn decode_meta<T: serde::de::DeserializeOwned>(json: &[u8]) -> std::result::Result<T, AnyError> {
    serde_json::from_slice(json).context("decoding raft_log_meta")
}

impl LogStore {
    /// Opens the log file at `path` (see [`path`]), creating it on first use (or moving a log
    /// from the legacy tables of `db` into it), and starts its writer thread (which ends with the
    /// last clone).
    pub fn open(db: &Database, path: &Path) -> Result<Self> {
        migrate(db, path).map_err(StorageIOError::write_logs)?;
        let (file, disk) = LogFile::open(path)
            .context("opening the raft log")
            .map_err(StorageIOError::read_logs)?;
        let opened_at = disk.entries.last_key_value().map(|(i, _)| *i);
        let log = Arc::new(Mutex::new(Log {
            disk,
            file: file.reader(),
            pending: BTreeMap::new(),
            recent: BTreeMap::new(),
        }));
        let (writer, jobs) = std_mpsc::channel();
        let (writes, writes_rx) = watch::channel(0);
        let thread = Writer {
            file,
            log: log.clone(),
            writes,
        };
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || thread.run(jobs))
            .context("starting the raft log's writer")
            .map_err(StorageIOError::write_logs)?;
        let on_disk = OnDisk {
            log: log.clone(),
            writes: writes_rx,
            opened_at,
        };
        Ok(Self {
            log,
            writer,
            on_disk,
            committed: Arc::default(),
        })
    }

    /// Opens the log of the node whose database is `store`, beside it (see [`path`]).
    pub fn beside(store: &RedbStore) -> Result<Self> {
        Self::open(&store.database(), &path(store.path()))
    }

    /// Tells `committed` the index of the newest committed entry from now on, starting with
    /// the one the log holds (the node's metrics read it; openraft 0.9's own metrics lack it).
    pub fn report_committed(mut self, committed: Arc<std::sync::atomic::AtomicU64>) -> Self {
        let index = self
            .log
            .lock()
            .expect("log")
            .disk
            .committed
            .map_or(0, |c| c.index);
        committed.store(index, std::sync::atomic::Ordering::Relaxed);
        self.committed = committed;
        self
    }

    /// How far this log is on disk.
    pub fn on_disk(&self) -> OnDisk {
        self.on_disk.clone()
    }

    /// Writes `record` after every write queued before it and waits until it is on disk.
    async fn write(&self, record: Record, subject: ErrorSubject<NodeId>) -> Result<()> {
        let (done, result) = oneshot::channel();
        self.queue(Job::Write(record, done), subject.clone())?;
        result
            .await
            .context("waiting for the raft log's writer")
            .and_then(|r| r.map_err(AnyError::error))
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
        // One look under the lock: the entries kept decoded, and the places of the others in
        // the file they are in. (Replication asks for the newest entries, all kept decoded.)
        let (mut entries, slots, file) = {
            let log = self.log.lock().expect("log");
            let (entries, slots) = log.range((Bound::Included(start), end));
            (entries, slots, log.file.clone())
        };
        for slot in slots {
            let index = slot.log_id.index;
            let entry = log_file::read_entry(&file, &slot)
                .context("reading the raft log")
                .and_then(|json| log_file::decode_entry(&slot, &json).map_err(AnyError::error))
                .map_err(|e| StorageIOError::read_log_at_index(index, e))?;
            entries.insert(index, entry);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.settle().await;
        let log = self.log.lock().expect("log");
        Ok(LogState {
            last_purged_log_id: log.disk.last_purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write(Record::Vote(*vote), ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(self.log.lock().expect("log").disk.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        // Advisory (see the module): it goes with the next write, unawaited.
        if let Some(id) = committed {
            self.committed
                .store(id.index, std::sync::atomic::Ordering::Relaxed);
        }
        self.queue(Job::Committed(committed), ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.settle().await;
        Ok(self.log.lock().expect("log").disk.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        let mut kept = Vec::new();
        for entry in entries {
            let json = serde_json::to_vec(&entry)
                .context("encoding a log entry")
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            rows.push((entry.log_id, json));
            kept.push(entry);
        }
        if rows.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Readable from now on; the writer calls `callback` once they are on disk.
        self.log
            .lock()
            .expect("log")
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
        self.log
            .lock()
            .expect("log")
            .retain(|index| index < log_id.index);
        self.write(Record::Truncate(log_id.index), ErrorSubject::Logs)
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        tracing::debug!(%log_id, "purging the raft log up to this entry");
        self.log
            .lock()
            .expect("log")
            .retain(|index| index > log_id.index);
        self.write(Record::Purge(log_id), ErrorSubject::Logs).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use taskmesh_store::RedbStore;

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
            let mut log = LogStore::beside(&store).expect("log");
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
        let mut log = LogStore::beside(&store).expect("log");
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 7)));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(3, 4)),
            "the committed id rode on the durable writes after it"
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
            let mut log = LogStore::beside(&store).expect("log");
            assert_eq!(log.on_disk().opened_at, None);
            log.blocking_append((1..=3).map(|i| blank(1, i)))
                .await
                .expect("append");
        }
        let store = RedbStore::open(&path).expect("reopen");
        let log = LogStore::beside(&store).expect("log");
        let mut on_disk = log.on_disk();
        assert_eq!(on_disk.opened_at, Some(3));
        on_disk.through(3).await.expect("on disk since before");

        // Hold the writer, so that it cannot write the next appends.
        let (held, hold) = std_mpsc::channel::<()>();
        log.queue(Job::Hold(hold), ErrorSubject::Logs)
            .expect("hold");
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

    /// Entries 1..=n of term 1, appended and on disk.
    async fn filled(n: u64) -> (tempfile::TempDir, RedbStore, LogStore) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("open");
        let mut log = LogStore::beside(&store).expect("log");
        log.blocking_append((1..=n).map(|i| blank(1, i)))
            .await
            .expect("append");
        (dir, store, log)
    }

    async fn ids(log: &mut LogStore) -> Vec<u64> {
        let entries = log.try_get_log_entries(..).await.expect("read");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn a_torn_record_at_the_end_is_cut_off_and_the_log_goes_on() {
        let (dir, store, log) = filled(3).await;
        drop(log);
        let file = path(store.path());
        let whole = std::fs::metadata(&file).expect("file").len();
        // A crash in the middle of the next write: a header that promises more than follows.
        let mut torn = std::fs::read(&file).expect("read");
        torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 1, b'{']);
        std::fs::write(&file, &torn).expect("write");

        let mut log = LogStore::beside(&store).expect("reopens");
        assert_eq!(ids(&mut log).await, vec![1, 2, 3]);
        assert_eq!(
            std::fs::metadata(&file).expect("file").len(),
            whole,
            "cut at the torn record"
        );
        log.blocking_append([blank(1, 4)]).await.expect("append");
        drop(log);
        let mut log = LogStore::beside(&store).expect("reopens");
        assert_eq!(ids(&mut log).await, vec![1, 2, 3, 4]);
        drop(dir);
    }

    #[tokio::test]
    async fn a_record_that_checks_out_but_does_not_decode_is_an_error_naming_the_file() {
        let (_dir, store, log) = filled(1).await;
        drop(log);
        let file = path(store.path());
        let mut batch = Batch::default();
        batch.push(Record::Entry(log_id(1, 2), b"not json".to_vec()));
        let mut bytes = std::fs::read(&file).expect("read");
        let at = bytes.len();
        bytes.extend_from_slice(batch.bytes());
        std::fs::write(&file, &bytes).expect("write");

        let error = LogStore::beside(&store).err().expect("refused").to_string();
        assert!(
            error.contains("raft.log") && error.contains(&format!("at byte {at}")),
            "{error}"
        );
        assert_eq!(
            std::fs::read(&file).expect("read"),
            bytes,
            "nothing was cut"
        );
    }

    #[tokio::test]
    async fn purges_compact_the_file_and_readers_follow_it() {
        // Entries big enough that the purged ones pass the compaction's slack.
        let big = |index| Entry::<TypeConfig> {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(crate::Change::Adopt {
                from: "x".repeat(4000),
                tasks: Vec::new(),
            }),
        };
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("open");
        let mut log = LogStore::beside(&store).expect("log");
        log.save_vote(&Vote::new(1, 7)).await.expect("vote");
        log.blocking_append((1..=600).map(big))
            .await
            .expect("append");
        let file = path(store.path());
        let before = std::fs::metadata(&file).expect("file").len();
        let mut reader = log.clone();

        log.purge(log_id(1, 590)).await.expect("purge");
        let after = std::fs::metadata(&file).expect("file").len();
        assert!(after < before / 10, "{before} bytes became {after}");
        assert_eq!(ids(&mut reader).await, (591..=600).collect::<Vec<_>>());
        log.blocking_append([big(601)]).await.expect("append after");
        assert_eq!(ids(&mut reader).await, (591..=601).collect::<Vec<_>>());

        drop((log, reader));
        let mut log = LogStore::beside(&store).expect("reopen");
        assert_eq!(ids(&mut log).await, (591..=601).collect::<Vec<_>>());
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(1, 7)));
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 590)));
    }

    #[tokio::test]
    async fn a_log_in_the_legacy_tables_moves_into_the_file_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("open");
        let db = store.database();
        fn json(value: &impl serde::Serialize) -> Vec<u8> {
            serde_json::to_vec(value).expect("json")
        }
        {
            let txn = db.begin_write().expect("write");
            {
                let mut log = txn.open_table(LEGACY_LOG).expect("raft_log");
                for i in 3..=5 {
                    let entry = serde_json::to_vec(&blank(2, i)).expect("json");
                    log.insert(i, entry.as_slice()).expect("insert");
                }
                let mut meta = txn.open_table(LEGACY_META).expect("raft_log_meta");
                meta.insert("vote", json(&Vote::<NodeId>::new(2, 7)).as_slice())
                    .expect("vote");
                meta.insert("committed", json(&Some(log_id(2, 4))).as_slice())
                    .expect("committed");
                meta.insert("last_purged", json(&log_id(1, 2)).as_slice())
                    .expect("purged");
            }
            txn.commit().expect("commit");
        }

        for _ in 0..2 {
            let mut log = LogStore::beside(&store).expect("log");
            assert_eq!(ids(&mut log).await, vec![3, 4, 5]);
            assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 7)));
            assert_eq!(
                log.read_committed().await.expect("committed"),
                Some(log_id(2, 4))
            );
            let state = log.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
            assert_eq!(state.last_log_id, Some(log_id(2, 5)));
            let read = db.begin_read().expect("read");
            assert!(
                read.open_table(LEGACY_LOG).is_err(),
                "the legacy table is gone"
            );
        }
    }
}
