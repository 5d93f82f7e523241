//! The node-local run history: live runs in memory, every change written behind to the store in
//! batches (group commit), so that a run costs a fraction of an fsync.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::consensus::State;
use crate::events::{Event, Events};
use crate::logs::LogPaths;
use crate::model::{Outcome, Run, RunId};
use crate::reports::Reports;
use crate::sink::Outbox;
use crate::store::{RunQuery, Store, StoreError};
use taskmesh_core::view::RunStats;

enum Msg {
    Put(Box<Run>),
    /// Store what is queued, then stop (shutdown).
    Close,
}

/// A cloneable handle on the run history.
#[derive(Clone)]
pub struct RunLedger {
    live: Arc<RwLock<HashMap<RunId, Run>>>,
    writes: mpsc::Sender<Msg>,
    /// Readers do not keep the database open; the writer owns it.
    store: Weak<dyn Store>,
    events: Events,
    /// Every change also goes to the cluster's run ledger (through the run reporter).
    report: Reports,
}

impl RunLedger {
    /// Marks runs a previous process left unfinished as lost, and starts the writer. Every change
    /// is also staged in `outbox` for the MySQL sink while `cluster.mysql` is set.
    pub async fn start(
        store: Arc<dyn Store>,
        events: Events,
        state: watch::Receiver<Arc<State>>,
        logs: LogPaths,
        report: Reports,
        outbox: Outbox,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let keep = state.borrow().settings.history_per_task;
        let orphans = {
            let store = store.clone();
            let staging = sink_outbox(&outbox, &state);
            tokio::task::spawn_blocking(move || {
                let now = chrono::Utc::now();
                let orphans: Vec<Run> = store
                    .unfinished_runs()?
                    .into_iter()
                    .map(|mut r| {
                        r.finish(Outcome::Lost, now);
                        r.actions
                            .push("the node restarted while this run was unfinished".into());
                        r
                    })
                    .collect();
                stage(staging.as_ref(), &orphans);
                store.put_runs(&orphans, keep)?;
                Ok::<_, StoreError>(orphans)
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(e.to_string())))?
        };
        if !orphans.is_empty() {
            warn!(
                count = orphans.len(),
                "runs left unfinished by the previous start are now lost"
            );
        }
        for run in orphans {
            report.push(run);
        }
        let (tx, rx) = mpsc::channel(4096);
        let live = Arc::new(RwLock::new(HashMap::new()));
        let writer = Writer {
            live: live.clone(),
            store: store.clone(),
            inbox: rx,
            state,
            logs,
            outbox,
        };
        let store = Arc::downgrade(&writer.store);
        let writer = tokio::spawn(writer.run());
        Ok((
            Self {
                live,
                writes: tx,
                store,
                events,
                report,
            },
            writer,
        ))
    }

    /// Records a new or changed run; readers see it at once, the store soon after.
    pub async fn record(&self, run: &Run) {
        self.live
            .write()
            .expect("ledger lock")
            .insert(run.id.clone(), run.clone());
        let _ = self.events.send(Event::Run(Arc::new(run.clone())));
        self.report.push(run.clone());
        if self
            .writes
            .send(Msg::Put(Box::new(run.clone())))
            .await
            .is_err()
        {
            warn!(run_id = %run.id, "run ledger writer stopped; change not stored");
        }
    }

    /// Stores what is queued and stops the writer, which closes its hold on the database.
    pub async fn close(&self) {
        let _ = self.writes.send(Msg::Close).await;
    }

    fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        self.store
            .upgrade()
            .ok_or_else(|| StoreError::Db("the node has shut down".into()))
    }

    pub async fn get(&self, id: &RunId) -> Result<Option<Run>, StoreError> {
        if let Some(run) = self.live.read().expect("ledger lock").get(id) {
            return Ok(Some(run.clone()));
        }
        let (store, id) = (self.store()?, id.clone());
        tokio::task::spawn_blocking(move || store.run(&id))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(e.to_string())))
    }

    /// Runs matching `query`, newest first, live changes included.
    pub async fn list(&self, query: RunQuery) -> Result<Vec<Run>, StoreError> {
        let store = self.store()?;
        let q = query.clone();
        let mut runs = tokio::task::spawn_blocking(move || store.runs(&q))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(e.to_string())))?;
        let live = self.live.read().expect("ledger lock");
        for run in &mut runs {
            if let Some(newer) = live.get(&run.id) {
                *run = newer.clone();
            }
        }
        // A live change may have moved a run out of the query (a status filter).
        runs.retain(|run| query.admits(run));
        for run in live.values() {
            if query.admits(run) && !runs.iter().any(|r| r.id == run.id) {
                runs.push(run.clone());
            }
        }
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs.truncate(query.limit);
        Ok(runs)
    }

    /// What this node's runs since `since` did: counts, durations, each task's recent runs
    /// (at most [`RunStats::CAP`] runs are counted; `capped` says when there were more).
    pub async fn stats(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<RunStats, StoreError> {
        let runs = self
            .list(RunQuery {
                since: Some(since),
                limit: RunStats::CAP + 1,
                ..RunQuery::default()
            })
            .await?;
        let mut stats = RunStats::since(since);
        stats.capped = runs.len() > RunStats::CAP;
        for run in runs.iter().take(RunStats::CAP) {
            stats.add(run);
        }
        Ok(stats)
    }

    /// Runs that are queued or running on this node now.
    pub fn active(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = self
            .live
            .read()
            .expect("ledger lock")
            .values()
            .filter(|r| !r.status.is_final())
            .cloned()
            .collect();
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs
    }
}

/// Writes batches of run changes and drops finished runs from memory once they are stored.
struct Writer {
    live: Arc<RwLock<HashMap<RunId, Run>>>,
    store: Arc<dyn Store>,
    inbox: mpsc::Receiver<Msg>,
    state: watch::Receiver<Arc<State>>,
    logs: LogPaths,
    outbox: Outbox,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(512);
        while self.inbox.recv_many(&mut batch, 512).await > 0 {
            let mut runs: Vec<Run> = Vec::new();
            let mut closing = false;
            for msg in batch.drain(..) {
                match msg {
                    Msg::Put(run) => match runs.iter_mut().find(|r| r.id == run.id) {
                        Some(older) => *older = *run,
                        None => runs.push(*run),
                    },
                    Msg::Close => closing = true,
                }
            }
            if !runs.is_empty() {
                self.write(runs).await;
            }
            if closing {
                break;
            }
        }
    }

    async fn write(&mut self, runs: Vec<Run>) {
        let keep = self.state.borrow().settings.history_per_task;
        let store = self.store.clone();
        let staging = sink_outbox(&self.outbox, &self.state);
        let (result, runs) = tokio::task::spawn_blocking(move || {
            stage(staging.as_ref(), &runs);
            (store.put_runs(&runs, keep), runs)
        })
        .await
        .unwrap_or_else(|e| (Err(StoreError::Db(e.to_string())), Vec::new()));
        match result {
            Ok(pruned) => {
                let mut live = self.live.write().expect("ledger lock");
                for run in runs.iter().filter(|r| r.status.is_final()) {
                    if live.get(&run.id).is_some_and(|l| l == run) {
                        live.remove(&run.id);
                    }
                }
                drop(live);
                for id in pruned {
                    let _ = std::fs::remove_file(self.logs.run_log(&id));
                }
            }
            Err(e) => {
                warn!(error = %e, count = runs.len(), "storing runs failed; they stay in memory")
            }
        }
    }
}

/// The outbox while the MySQL sink is configured.
fn sink_outbox(outbox: &Outbox, state: &watch::Receiver<Arc<State>>) -> Option<Outbox> {
    state
        .borrow()
        .settings
        .mysql
        .is_some()
        .then(|| outbox.clone())
}

/// Stages runs for the MySQL sink without an fsync: the durable commit of the same runs that
/// follows at once makes it durable too (see [`Outbox::stage`]).
fn stage(outbox: Option<&Outbox>, runs: &[Run]) {
    let Some(outbox) = outbox else { return };
    match outbox.stage(runs, redb::Durability::None) {
        Ok(0) => {}
        Ok(dropped) => warn!(
            dropped,
            limit = crate::sink::LIMIT,
            "the MySQL outbox is full: the oldest waiting runs were dropped"
        ),
        Err(e) => {
            warn!(error = %e, count = runs.len(), "staging runs for MySQL failed; they are not sent")
        }
    }
}
