//! The sink's durable buffer: run records waiting for MySQL, in the node's redb database.
//!
//! One entry per run (key: run id, value: the run's newest state as JSON). Staging a newer state
//! of a run replaces the older one, so a run that changed three times while MySQL was away is
//! sent once, in its newest state. An entry is removed only after MySQL confirmed it, and only if
//! it was not replaced in the meantime (the newer state is then sent next).

use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use redb::{TableDefinition, WriteTransaction};
use tokio::sync::Notify;

use crate::model::Run;
use crate::store::StoreError;

const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("sink_outbox");

/// At most this many runs wait; beyond it the oldest are dropped.
pub const LIMIT: u64 = 1_000_000;

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A run waiting to be sent, as it was read.
#[derive(Debug, Clone)]
pub struct Entry {
    pub run: Run,
    /// The stored bytes: an acknowledgement removes the entry only if they are unchanged.
    stored: Vec<u8>,
}

/// The outbox table, shared by the run ledger (which stages) and the sink worker (which sends
/// and acknowledges). Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    limit: u64,
    /// Woken when something was staged.
    staged: Arc<Notify>,
}

impl Outbox {
    /// Opens (or creates) the outbox table in the node's database.
    pub fn open(db: Arc<Database>) -> Result<Self, StoreError> {
        Self::with_limit(db, LIMIT)
    }

    pub fn with_limit(db: Arc<Database>, limit: u64) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(OUTBOX).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db,
            limit: limit.max(1),
            staged: Arc::new(Notify::new()),
        })
    }

    /// Stages the newest state of `runs` and returns how many old entries were dropped to stay
    /// within the limit.
    ///
    /// With `Durability::None` the commit skips the fsync and becomes durable with the next
    /// durable commit of the database: the run ledger stages right before it commits the same
    /// runs, so both survive a crash or neither does, at the cost of one fsync.
    pub fn stage(&self, runs: &[Run], durability: Durability) -> Result<u64, StoreError> {
        if runs.is_empty() {
            return Ok(0);
        }
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        let dropped = stage_in(&txn, runs, self.limit)?;
        txn.commit().map_err(db_err)?;
        self.staged.notify_one();
        Ok(dropped)
    }

    /// Resolves once something was staged since the last call (or before the first).
    pub async fn staged(&self) {
        self.staged.notified().await;
    }

    /// Up to `max` waiting runs, oldest run id first.
    pub fn peek(&self, max: usize) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OUTBOX).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)?.take(max) {
            let (key, value) = entry.map_err(db_err)?;
            let stored = value.value().to_vec();
            match serde_json::from_slice(&stored) {
                Ok(run) => out.push(Entry { run, stored }),
                Err(source) => {
                    return Err(StoreError::Corrupt {
                        table: "sink_outbox",
                        key: key.value().to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Removes `delivered` entries (durably), except those replaced by a newer state since
    /// they were read.
    pub fn ack(&self, delivered: &[Entry]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(OUTBOX).map_err(db_err)?;
            for entry in delivered {
                let key = entry.run.id.0.as_str();
                let unchanged = table
                    .get(key)
                    .map_err(db_err)?
                    .is_some_and(|v| v.value() == entry.stored.as_slice());
                if unchanged {
                    table.remove(key).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    /// How many runs wait.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OUTBOX).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

/// Stages `runs` in `txn` and drops the oldest entries beyond `limit`; returns how many.
fn stage_in(txn: &WriteTransaction, runs: &[Run], limit: u64) -> Result<u64, StoreError> {
    let mut table = txn.open_table(OUTBOX).map_err(db_err)?;
    for run in runs {
        let bytes = serde_json::to_vec(run).expect("runs always serialise");
        table
            .insert(run.id.0.as_str(), bytes.as_slice())
            .map_err(db_err)?;
    }
    let excess = table.len().map_err(db_err)?.saturating_sub(limit);
    for _ in 0..excess {
        table.pop_first().map_err(db_err)?;
    }
    Ok(excess)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, TaskId, Trigger};

    fn run(n: u32) -> Run {
        Run::new(
            TaskId("t".into()),
            format!("task {n}"),
            Trigger::Manual,
            1,
            "node".into(),
        )
    }

    fn open(path: &std::path::Path, limit: u64) -> Outbox {
        let db = Database::create(path).expect("open");
        Outbox::with_limit(Arc::new(db), limit).expect("outbox")
    }

    #[test]
    fn staged_runs_survive_reopen_and_leave_after_ack() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let runs = [run(1), run(2)];
        {
            let outbox = open(&path, LIMIT);
            outbox.stage(&runs, Durability::Immediate).expect("stage");
        }
        let outbox = open(&path, LIMIT);
        let waiting = outbox.peek(10).expect("peek");
        let ids: Vec<_> = waiting.iter().map(|e| e.run.id.clone()).collect();
        assert_eq!(ids, vec![runs[0].id.clone(), runs[1].id.clone()]);
        outbox.ack(&waiting[..1]).expect("ack");
        drop(outbox);
        let outbox = open(&path, LIMIT);
        let left = outbox.peek(10).expect("peek");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].run, runs[1]);
        assert_eq!(outbox.len().expect("len"), 1);
    }

    #[test]
    fn a_non_durable_stage_becomes_durable_with_the_next_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let r = run(1);
        {
            let outbox = open(&path, LIMIT);
            outbox
                .stage(std::slice::from_ref(&r), Durability::None)
                .expect("stage");
            // Stands for the run ledger's durable commit that follows.
            outbox.ack(&[]).expect("durable commit");
        }
        let outbox = open(&path, LIMIT);
        assert_eq!(outbox.peek(10).expect("peek")[0].run, r);
    }

    #[test]
    fn a_newer_state_replaces_the_waiting_one_and_survives_the_old_ack() {
        let dir = tempfile::tempdir().expect("tmp");
        let outbox = open(&dir.path().join("db"), LIMIT);
        let mut r = run(1);
        r.status = crate::model::RunStatus::Running;
        outbox
            .stage(&[r.clone()], Durability::Immediate)
            .expect("stage");
        let sent = outbox.peek(10).expect("peek");
        // The run ends while its running state is on the way.
        r.finish(Outcome::Exited { code: 0 }, chrono::Utc::now());
        outbox
            .stage(&[r.clone()], Durability::Immediate)
            .expect("stage");
        outbox.ack(&sent).expect("ack");
        let left = outbox.peek(10).expect("peek");
        assert_eq!(left.len(), 1, "the final state still waits");
        assert_eq!(left[0].run, r);
        outbox.ack(&left).expect("ack");
        assert!(outbox.is_empty().expect("len"));
    }

    #[test]
    fn the_oldest_runs_are_dropped_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let outbox = open(&dir.path().join("db"), 3);
        let runs: Vec<Run> = (0..5).map(run).collect();
        assert_eq!(
            outbox
                .stage(&runs[..2], Durability::Immediate)
                .expect("stage"),
            0
        );
        assert_eq!(
            outbox
                .stage(&runs[2..], Durability::Immediate)
                .expect("stage"),
            2
        );
        let ids: Vec<_> = outbox
            .peek(10)
            .expect("peek")
            .into_iter()
            .map(|e| e.run.id)
            .collect();
        let newest: Vec<_> = runs[2..].iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, newest);
    }
}
