//! Run changes on their way from this node's ledger to the cluster's: a coalescing mailbox.
//!
//! The ledger pushes every change of a run; the run reporter takes them in batches. A newer
//! change of a run replaces the one still waiting, so the mailbox holds at most one entry per
//! run, and never more than [`MAX_PENDING`]: past that the oldest finished runs are dropped
//! from the report (this node keeps its own full history regardless), then the oldest others.
//! Pushing never waits, so a slow cluster cannot hold up the ledger.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::model::{Run, RunId};

/// At most this many runs wait to be reported.
pub const MAX_PENDING: usize = 10_000;

/// The mailbox; clones share it.
#[derive(Clone, Default)]
pub struct Reports {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: Mutex<BTreeMap<RunId, Run>>,
    arrived: Notify,
}

impl Reports {
    /// Queues `run`, replacing an older change of it.
    pub fn push(&self, run: Run) {
        let mut waiting = self.inner.waiting.lock().expect("reports lock");
        waiting.insert(run.id.clone(), run);
        bound(&mut waiting);
        drop(waiting);
        self.inner.arrived.notify_one();
    }

    /// Everything waiting, oldest run first; the mailbox is empty after.
    pub fn take(&self) -> BTreeMap<RunId, Run> {
        std::mem::take(&mut *self.inner.waiting.lock().expect("reports lock"))
    }

    /// Returns once something was pushed since the last wake-up (at once if it was meanwhile).
    pub async fn arrived(&self) {
        self.inner.arrived.notified().await;
    }
}

/// Keeps at most [`MAX_PENDING`] runs: unfinished ones first, then the newest finished ones.
pub fn bound(pending: &mut BTreeMap<RunId, Run>) {
    let mut excess = pending.len().saturating_sub(MAX_PENDING);
    if excess == 0 {
        return;
    }
    let oldest_finished: Vec<RunId> = pending
        .values()
        .filter(|r| r.status.is_final())
        .map(|r| r.id.clone())
        .take(excess)
        .collect();
    excess -= oldest_finished.len();
    for id in oldest_finished {
        pending.remove(&id);
    }
    if excess > 0 {
        let oldest: Vec<RunId> = pending.keys().take(excess).cloned().collect();
        for id in oldest {
            pending.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunStatus, TaskId, Trigger};

    fn run(n: usize, status: RunStatus) -> Run {
        let mut run = Run::new(
            TaskId("t".into()),
            "t".into(),
            Trigger::Manual,
            1,
            "a".into(),
        );
        run.id = RunId(format!("{n:032x}"));
        run.status = status;
        run
    }

    #[test]
    fn a_newer_change_replaces_the_waiting_one() {
        let reports = Reports::default();
        reports.push(run(1, RunStatus::Running));
        reports.push(run(1, RunStatus::Succeeded));
        reports.push(run(2, RunStatus::Queued));
        let taken = reports.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(
            taken[&run(1, RunStatus::Running).id].status,
            RunStatus::Succeeded
        );
        assert!(reports.take().is_empty());
    }

    #[test]
    fn the_mailbox_is_bounded_dropping_old_finished_runs_first() {
        let reports = Reports::default();
        reports.push(run(0, RunStatus::Running));
        for n in 1..=MAX_PENDING + 5 {
            reports.push(run(n, RunStatus::Succeeded));
        }
        let taken = reports.take();
        assert_eq!(taken.len(), MAX_PENDING);
        assert!(
            taken.contains_key(&run(0, RunStatus::Running).id),
            "unfinished runs stay"
        );
        assert!(
            !taken.contains_key(&run(1, RunStatus::Succeeded).id),
            "the oldest finished go"
        );
        assert!(taken.contains_key(&run(MAX_PENDING + 5, RunStatus::Succeeded).id));
    }

    #[tokio::test]
    async fn a_push_wakes_the_reader_even_before_it_waits() {
        let reports = Reports::default();
        reports.push(run(1, RunStatus::Queued));
        tokio::time::timeout(std::time::Duration::from_secs(5), reports.arrived())
            .await
            .expect("woken");
        assert_eq!(reports.take().len(), 1);
    }
}
