//! The redb implementation of [`Store`]: JSON values in a handful of tables, fsynced on commit.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RunQuery, Store, StoreError, Write};
use taskmesh_core::model::{
    Activity, ClusterIdentity, ClusterSettings, NamedToken, NodeSettings, Run, RunId, Task, TaskId,
};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// Settings: `cluster_settings` and `cluster` (replicated), `node_settings` (node-local).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Task id → the newest fired slot, in Unix milliseconds.
const LAST_FIRED: TableDefinition<&str, i64> = TableDefinition::new("last_fired");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// `<task id>/<run id>` → (), to list and prune one task's runs.
const RUNS_BY_TASK: TableDefinition<&str, ()> = TableDefinition::new("runs_by_task");
/// Task id → how many runs `RUNS_BY_TASK` holds for it, so that keeping a task's history
/// bounded costs the runs it removes, not a walk of the history. Counted from `RUNS_BY_TASK` when
/// missing (a store written before the counts).
const RUN_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("run_counts");
/// The replicated run ledger: run id → run (every node's recent runs, bounded per task).
const CLUSTER_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster_runs");
/// The operators' changes the replicated state lists, by number.
const ACTIVITY: TableDefinition<u64, &[u8]> = TableDefinition::new("activity");
/// Ids of runs not yet final, so a restart finds what it left unfinished without reading history.
const UNFINISHED: TableDefinition<&str, ()> = TableDefinition::new("unfinished_runs");

const CLUSTER_SETTINGS: &str = "cluster_settings";
const NODE_SETTINGS: &str = "node_settings";
const CLUSTER: &str = "cluster";
const HOLDERS: &str = "holders";
const STOPS: &str = "stops";
const DRAINED: &str = "drained";
const TOKENS: &str = "tokens";
const CRON_PAUSED: &str = "cron_paused";

pub struct RedbStore {
    /// Shared with the Raft state machine (`consensus::raft`), which keeps its own tables in the
    /// same file.
    db: Arc<Database>,
    path: std::path::PathBuf,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model types always serialise")
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        source,
    })
}

/// Whether the file at `path` holds `needle` anywhere (an empty needle: no).
pub fn file_holds(path: &Path, needle: &[u8]) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    Ok(!needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle))
}

impl RedbStore {
    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // redb makes the file with the process umask; made here first, it is private (0600)
        // whatever the umask (redb takes an empty file as a new database).
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::private_files::FILE_MODE)
            .open(path)
            .map_err(|e| StoreError::Db(format!("creating {}: {e}", path.display())))?;
        let db = Database::builder()
            .set_cache_size(8 << 20)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.to_owned(),
                source: Box::new(e),
            })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(TASKS).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            txn.open_table(LAST_FIRED).map_err(db_err)?;
            txn.open_table(RUNS).map_err(db_err)?;
            txn.open_table(RUNS_BY_TASK).map_err(db_err)?;
            txn.open_table(UNFINISHED).map_err(db_err)?;
            txn.open_table(CLUSTER_RUNS).map_err(db_err)?;
            txn.open_table(ACTIVITY).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_owned(),
        })
    }

    /// Makes sure no copy of `secret` (a value this database held before) is left in its file:
    /// redb writes changes to new pages and frees the old ones, whose bytes stay in the file
    /// until a later commit reuses them. Commits (rewriting the node settings) until the file no
    /// longer contains `secret`, then compacts if it still does. Returns whether it is gone.
    ///
    /// Reads the whole file a few times: meant for a one-time migration at start.
    pub fn scrub(&mut self, secret: &[u8]) -> Result<bool, StoreError> {
        const COMMITS: usize = 8;
        let io =
            |e: std::io::Error| StoreError::Db(format!("reading {}: {e}", self.path.display()));
        let holds = |path: &Path| file_holds(path, secret).map_err(io);
        for _ in 0..COMMITS {
            if !holds(&self.path)? {
                return Ok(true);
            }
            let settings = self.node_settings()?;
            let txn = self.db.begin_write().map_err(db_err)?;
            if let Some(settings) = settings {
                write_in(&txn, &[Write::NodeSettings(settings)])?;
            }
            txn.commit().map_err(db_err)?;
        }
        if let Some(db) = Arc::get_mut(&mut self.db) {
            while db.compact().map_err(db_err)? {}
        }
        Ok(!holds(&self.path)?)
    }

    /// Stores node settings as versions before the key file did, cluster key included: the
    /// starting point of the key's migration, for its tests.
    pub fn put_node_settings_with_key(&self, settings: &NodeSettings) {
        let txn = self.db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(NODE_SETTINGS, encode(settings).as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }

    /// The database itself, for the Raft state machine, which keeps its tables in it.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// The database file's path (the Raft log's file goes beside it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(v) => decode("meta", key, v.value()).map(Some),
            None => Ok(None),
        }
    }
}

/// Stages `batch` in `txn` without committing, so that a caller can commit it together with
/// writes of its own (the Raft state machine stores its last applied log id with them).
pub fn write_in(txn: &WriteTransaction, batch: &[Write]) -> Result<(), StoreError> {
    let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
    let mut meta = txn.open_table(META).map_err(db_err)?;
    let mut fired = txn.open_table(LAST_FIRED).map_err(db_err)?;
    let mut cluster_runs = txn.open_table(CLUSTER_RUNS).map_err(db_err)?;
    let mut activity = txn.open_table(ACTIVITY).map_err(db_err)?;
    for write in batch {
        match write {
            Write::PutTask(task) => {
                tasks
                    .insert(task.id.0.as_str(), encode(task).as_slice())
                    .map_err(db_err)?;
            }
            Write::RemoveTask(id) => {
                tasks.remove(id.0.as_str()).map_err(db_err)?;
                fired.remove(id.0.as_str()).map_err(db_err)?;
            }
            Write::ClusterSettings(s) => {
                meta.insert(CLUSTER_SETTINGS, encode(s).as_slice())
                    .map_err(db_err)?;
            }
            Write::NodeSettings(s) => {
                let without_key = NodeSettings {
                    cluster_key: None,
                    ..s.clone()
                };
                meta.insert(NODE_SETTINGS, encode(&without_key).as_slice())
                    .map_err(db_err)?;
            }
            Write::Cluster(Some(c)) => {
                meta.insert(CLUSTER, encode(c).as_slice()).map_err(db_err)?;
            }
            Write::Cluster(None) => {
                meta.remove(CLUSTER).map_err(db_err)?;
            }
            Write::Stops(stops) => {
                meta.insert(STOPS, encode(stops).as_slice())
                    .map_err(db_err)?;
            }
            Write::Holders(h) => {
                meta.insert(HOLDERS, encode(h).as_slice()).map_err(db_err)?;
            }
            Write::Drained(d) => {
                meta.insert(DRAINED, encode(d).as_slice()).map_err(db_err)?;
            }
            Write::Tokens(t) => {
                meta.insert(TOKENS, encode(t).as_slice()).map_err(db_err)?;
            }
            Write::CronPaused(Some(since)) => {
                meta.insert(CRON_PAUSED, encode(since).as_slice())
                    .map_err(db_err)?;
            }
            Write::CronPaused(None) => {
                meta.remove(CRON_PAUSED).map_err(db_err)?;
            }
            Write::Activity(n, a) => {
                activity.insert(n, encode(a).as_slice()).map_err(db_err)?;
            }
            Write::ForgetActivity(n) => {
                activity.remove(n).map_err(db_err)?;
            }
            Write::ClusterRun(run) => {
                cluster_runs
                    .insert(run.id.0.as_str(), encode(run).as_slice())
                    .map_err(db_err)?;
            }
            Write::ForgetClusterRun(id) => {
                cluster_runs.remove(id.0.as_str()).map_err(db_err)?;
            }
            Write::LastFired(id, at) => {
                fired
                    .insert(id.0.as_str(), at.timestamp_millis())
                    .map_err(db_err)?;
            }
        }
    }
    Ok(())
}

/// How many runs of `task` `by_task` holds (a walk of them; see [`RUN_COUNTS`]).
fn count_runs(by_task: &redb::Table<&str, ()>, task: &TaskId) -> Result<u64, StoreError> {
    let (lo, hi) = (format!("{task}/"), format!("{task}0"));
    let mut n = 0;
    for entry in by_task.range(lo.as_str()..hi.as_str()).map_err(db_err)? {
        entry.map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

/// Empties the replicated tables in `txn`: tasks, fired slots, the run ledger, cluster settings
/// and identity.
pub fn clear_replicated_in(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(TASKS)?.retain(|_, _| false)?;
    txn.open_table(LAST_FIRED)?.retain(|_, _| false)?;
    txn.open_table(CLUSTER_RUNS)?.retain(|_, _| false)?;
    let mut meta = txn.open_table(META)?;
    meta.remove(CLUSTER_SETTINGS)?;
    meta.remove(CLUSTER)?;
    meta.remove(HOLDERS)?;
    meta.remove(STOPS)?;
    meta.remove(DRAINED)?;
    meta.remove(TOKENS)?;
    meta.remove(CRON_PAUSED)?;
    txn.open_table(ACTIVITY)?.retain(|_, _| false)?;
    Ok(())
}

impl Store for RedbStore {
    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TASKS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode("tasks", k.value(), v.value())?);
        }
        Ok(out)
    }

    fn cluster_settings(&self) -> Result<Option<ClusterSettings>, StoreError> {
        self.meta(CLUSTER_SETTINGS)
    }

    fn node_settings(&self) -> Result<Option<NodeSettings>, StoreError> {
        self.meta(NODE_SETTINGS)
    }

    fn cluster(&self) -> Result<Option<ClusterIdentity>, StoreError> {
        self.meta(CLUSTER)
    }

    fn stops(&self) -> Result<BTreeSet<RunId>, StoreError> {
        Ok(self.meta(STOPS)?.unwrap_or_default())
    }

    fn holders(&self) -> Result<BTreeMap<TaskId, Vec<String>>, StoreError> {
        Ok(self.meta(HOLDERS)?.unwrap_or_default())
    }

    fn drained(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self.meta(DRAINED)?.unwrap_or_default())
    }

    fn tokens(&self) -> Result<BTreeMap<String, NamedToken>, StoreError> {
        Ok(self.meta(TOKENS)?.unwrap_or_default())
    }

    fn cron_paused(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.meta(CRON_PAUSED)
    }

    fn activity(&self) -> Result<Vec<(u64, Activity)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(ACTIVITY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let n = k.value();
            out.push((n, decode("activity", &n.to_string(), v.value())?));
        }
        Ok(out)
    }

    fn cluster_runs(&self) -> Result<Vec<Run>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CLUSTER_RUNS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode("cluster_runs", k.value(), v.value())?);
        }
        Ok(out)
    }

    fn last_fired(&self) -> Result<BTreeMap<TaskId, DateTime<Utc>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LAST_FIRED).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if let Some(at) = DateTime::from_timestamp_millis(v.value()) {
                out.insert(TaskId(k.value().to_owned()), at);
            }
        }
        Ok(out)
    }

    fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        write_in(&txn, batch)?;
        txn.commit().map_err(db_err)
    }

    fn put_runs(&self, runs: &[Run], keep_per_task: u32) -> Result<Vec<RunId>, StoreError> {
        let mut pruned = Vec::new();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RUNS).map_err(db_err)?;
            let mut by_task = txn.open_table(RUNS_BY_TASK).map_err(db_err)?;
            let mut counts = txn.open_table(RUN_COUNTS).map_err(db_err)?;
            let mut unfinished = txn.open_table(UNFINISHED).map_err(db_err)?;
            // Runs each touched task holds, with this batch's new ones.
            let mut held: BTreeMap<&TaskId, u64> = BTreeMap::new();
            for run in runs {
                if run.status.is_final() {
                    unfinished.remove(run.id.0.as_str()).map_err(db_err)?;
                } else {
                    unfinished.insert(run.id.0.as_str(), ()).map_err(db_err)?;
                }
                table
                    .insert(run.id.0.as_str(), encode(run).as_slice())
                    .map_err(db_err)?;
                let key = format!("{}/{}", run.task_id, run.id);
                let new = by_task.insert(key.as_str(), ()).map_err(db_err)?.is_none();
                if !held.contains_key(&run.task_id) {
                    let count = match counts.get(run.task_id.0.as_str()).map_err(db_err)? {
                        Some(count) => count.value(),
                        // Counted before this run went in.
                        None => count_runs(&by_task, &run.task_id)? - u64::from(new),
                    };
                    held.insert(&run.task_id, count);
                }
                *held.get_mut(&run.task_id).expect("just inserted") += u64::from(new);
            }
            for (task, count) in held {
                let lo = format!("{task}/");
                let excess = count.saturating_sub(u64::from(keep_per_task));
                for _ in 0..excess {
                    // The oldest run of the task (run ids are time-ordered).
                    let Some((key, ())) = by_task
                        .range(lo.as_str()..format!("{task}0").as_str())
                        .map_err(db_err)?
                        .next()
                        .transpose()
                        .map_err(db_err)?
                        .map(|(k, v)| (k.value().to_owned(), v.value()))
                    else {
                        break;
                    };
                    by_task.remove(key.as_str()).map_err(db_err)?;
                    let run_id = &key[lo.len()..];
                    table.remove(run_id).map_err(db_err)?;
                    unfinished.remove(run_id).map_err(db_err)?;
                    pruned.push(RunId(run_id.to_owned()));
                }
                counts
                    .insert(task.0.as_str(), count.min(u64::from(keep_per_task)))
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(pruned)
    }

    fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let ids = txn.open_table(UNFINISHED).map_err(db_err)?;
        let table = txn.open_table(RUNS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in ids.iter().map_err(db_err)? {
            let (id, _) = entry.map_err(db_err)?;
            if let Some(v) = table.get(id.value()).map_err(db_err)? {
                out.push(decode("runs", id.value(), v.value())?);
            }
        }
        Ok(out)
    }

    fn run(&self, id: &RunId) -> Result<Option<Run>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RUNS).map_err(db_err)?;
        match table.get(id.0.as_str()).map_err(db_err)? {
            Some(v) => decode("runs", &id.0, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn runs(&self, query: &RunQuery) -> Result<Vec<Run>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RUNS).map_err(db_err)?;
        let mut out = Vec::new();
        match &query.task {
            Some(task) => {
                let by_task = txn.open_table(RUNS_BY_TASK).map_err(db_err)?;
                let lo = format!("{task}/");
                let hi = match &query.before {
                    Some(before) => format!("{task}/{before}"),
                    None => format!("{task}0"),
                };
                for entry in by_task
                    .range(lo.as_str()..hi.as_str())
                    .map_err(db_err)?
                    .rev()
                {
                    if out.len() >= query.limit {
                        break;
                    }
                    let (k, _) = entry.map_err(db_err)?;
                    let run_id = &k.value()[lo.len()..];
                    if let Some(v) = table.get(run_id).map_err(db_err)? {
                        let run: Run = decode("runs", run_id, v.value())?;
                        if query.is_past(&run) {
                            break;
                        }
                        if query.admits(&run) {
                            out.push(run);
                        }
                    }
                }
            }
            None => {
                let range = match &query.before {
                    Some(before) => table.range(..before.0.as_str()),
                    None => table.range::<&str>(..),
                }
                .map_err(db_err)?;
                for entry in range.rev() {
                    if out.len() >= query.limit {
                        break;
                    }
                    let (k, v) = entry.map_err(db_err)?;
                    let run: Run = decode("runs", k.value(), v.value())?;
                    if query.is_past(&run) {
                        break;
                    }
                    if query.admits(&run) {
                        out.push(run);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskmesh_core::model::Trigger;

    fn run(task: &str) -> Run {
        Run::new(
            TaskId(task.into()),
            task.into(),
            Trigger::Manual,
            1,
            "n".into(),
        )
    }

    #[test]
    fn runs_are_bounded_per_task_and_listed_newest_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("open");
        let a: Vec<Run> = (0..5).map(|_| run("a")).collect();
        let b = run("b");
        store.put_runs(&a[..3], 3).expect("put");
        let pruned = store
            .put_runs(&[a[3].clone(), a[4].clone(), b.clone()], 3)
            .expect("put");
        assert_eq!(pruned, vec![a[0].id.clone(), a[1].id.clone()]);
        let listed = store
            .runs(&RunQuery {
                task: Some(TaskId("a".into())),
                before: None,
                limit: 10,
                ..RunQuery::default()
            })
            .expect("list");
        let ids: Vec<_> = listed.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, vec![a[4].id.clone(), a[3].id.clone(), a[2].id.clone()]);
        let all = store
            .runs(&RunQuery {
                limit: 2,
                ..Default::default()
            })
            .expect("all");
        assert_eq!(all[0].id, b.id);
        assert!(store.run(&a[0].id).expect("get").is_none());
        let mut running = run("c");
        running.status = taskmesh_core::model::RunStatus::Running;
        store.put_runs(&[running.clone()], 3).expect("put");
        let unfinished = store.unfinished_runs().expect("unfinished");
        // The queued runs of a and b (not the pruned ones) and the running one of c.
        assert_eq!(unfinished.len(), 5, "{unfinished:?}");
        assert!(unfinished.contains(&running) && !unfinished.iter().any(|r| r.id == a[0].id));
        running.finish(
            taskmesh_core::model::Outcome::Exited { code: 0 },
            Utc::now(),
        );
        store.put_runs(&[running.clone()], 3).expect("put");
        let unfinished = store.unfinished_runs().expect("unfinished");
        assert!(!unfinished.iter().any(|r| r.id == running.id));
        let page = store
            .runs(&RunQuery {
                task: Some(TaskId("a".into())),
                before: Some(a[3].id.clone()),
                limit: 10,
                ..RunQuery::default()
            })
            .expect("page");
        assert_eq!(page.len(), 1);
    }

    #[test]
    fn the_bound_counts_new_runs_only_and_survives_a_store_without_counts() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RedbStore::open(&dir.path().join("db")).expect("open");
        let a: Vec<Run> = (0..4).map(|_| run("a")).collect();
        store.put_runs(&a[..3], 3).expect("put");
        // The same runs again (their updates) add nothing to prune.
        assert!(store.put_runs(&a[..3], 3).expect("again").is_empty());
        // A store written before the counts: counted from the index once.
        let txn = store.db.begin_write().expect("txn");
        txn.open_table(RUN_COUNTS)
            .expect("counts")
            .remove("a")
            .expect("forget");
        txn.commit().expect("commit");
        let pruned = store.put_runs(&a[3..], 3).expect("put");
        assert_eq!(pruned, vec![a[0].id.clone()]);
        let listed = store
            .runs(&RunQuery {
                task: Some(TaskId("a".into())),
                before: None,
                limit: 10,
                ..RunQuery::default()
            })
            .expect("list");
        assert_eq!(listed.len(), 3);
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let at = Utc::now();
        {
            let store = RedbStore::open(&path).expect("open");
            store
                .write(&[
                    Write::ClusterSettings(ClusterSettings {
                        retention_days: 9,
                        ..Default::default()
                    }),
                    Write::LastFired(TaskId("x".into()), at),
                ])
                .expect("write");
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store
                .cluster_settings()
                .expect("read")
                .map(|s| s.retention_days),
            Some(9)
        );
        assert_eq!(
            store
                .last_fired()
                .expect("read")
                .get(&TaskId("x".into()))
                .map(|t| t.timestamp_millis()),
            Some(at.timestamp_millis())
        );
    }

    #[test]
    fn node_settings_are_stored_without_the_cluster_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let store = RedbStore::open(&path).expect("open");
        let key = taskmesh_core::cluster_key::ClusterKey::generate().expect("key");
        let settings = NodeSettings {
            cluster_key: Some(key.to_string()),
            ..NodeSettings::default()
        };
        store
            .write(&[Write::NodeSettings(settings.clone())])
            .expect("write");
        let stored = store.node_settings().expect("read").expect("some");
        assert_eq!(stored.cluster_key, None);
        assert_eq!(stored.name, settings.name);
        drop(store);
        assert!(!file_holds(&path, key.to_string().as_bytes()).expect("read"));
        assert!(!file_holds(&path, &key.bytes()).expect("read"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn scrub_leaves_no_copy_of_a_removed_secret_in_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let key = taskmesh_core::cluster_key::ClusterKey::generate()
            .expect("key")
            .to_string();
        let mut store = RedbStore::open(&path).expect("open");
        // An older version's record, with the key, among some history.
        let old = serde_json::json!({"name": "old", "cluster_key": key});
        let txn = store.db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(NODE_SETTINGS, old.to_string().as_bytes())
            .expect("insert");
        txn.commit().expect("commit");
        let runs: Vec<Run> = (0..300).map(|i| run(&format!("t{}", i % 7))).collect();
        store.put_runs(&runs, 100).expect("runs");
        assert!(file_holds(&path, key.as_bytes()).expect("read"));
        let mut settings = store.node_settings().expect("read").expect("some");
        assert_eq!(settings.cluster_key.as_deref(), Some(key.as_str()));
        settings.cluster_key = None;
        store
            .write(&[Write::NodeSettings(settings)])
            .expect("strip");
        assert!(store.scrub(key.as_bytes()).expect("scrub"));
        drop(store);
        assert!(!file_holds(&path, key.as_bytes()).expect("read"));
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.node_settings().expect("read").expect("some").name,
            "old"
        );
        assert_eq!(
            store
                .runs(&RunQuery {
                    limit: 1000,
                    ..Default::default()
                })
                .expect("runs")
                .len(),
            300
        );
    }
}
