//! Reports this node's runs to the cluster's run ledger (`consensus::State::runs`): every change
//! the node's `RunLedger` records is coalesced by run id and proposed in batches
//! (`Change::Runs`), so a run costs a small share of one Raft entry. While there is no quorum the
//! changes wait (the newest per run) and go out when one is back.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consensus::{Change, Consensus, ProposeError};
use crate::model::{Run, RunId};

/// Changes arriving within this time go out in one proposal.
const GATHER: Duration = Duration::from_millis(20);
/// After a failed proposal, the next try comes this much later.
const RETRY: Duration = Duration::from_secs(1);
/// At most this many runs wait; beyond it the oldest finished ones are dropped from the report
/// (each node keeps its own full history regardless).
const MAX_PENDING: usize = 10_000;

pub(super) struct RunReporter {
    pub runs: mpsc::UnboundedReceiver<Run>,
    pub consensus: Consensus,
    pub cancel: CancellationToken,
}

impl RunReporter {
    /// Reports until `cancel`, then proposes what still waits once more and returns.
    pub async fn run(mut self) {
        let mut pending: BTreeMap<RunId, Run> = BTreeMap::new();
        let mut failing = false;
        loop {
            let pause = match (pending.is_empty(), failing) {
                (true, _) => None,
                (false, false) => Some(GATHER),
                (false, true) => Some(RETRY),
            };
            let until = pause.map(|p| tokio::time::Instant::now() + p);
            let stop = loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => break true,
                    _ = async { tokio::time::sleep_until(until.expect("set")).await }, if until.is_some() => break false,
                    run = self.runs.recv() => match run {
                        Some(run) => {
                            pending.insert(run.id.clone(), run);
                            if until.is_none() {
                                break false;
                            }
                        }
                        None => break true,
                    },
                }
            };
            if stop {
                if !pending.is_empty() {
                    self.report(&mut pending, &mut failing).await;
                }
                return;
            }
            if until.is_some() {
                self.report(&mut pending, &mut failing).await;
            }
        }
    }

    async fn report(&self, pending: &mut BTreeMap<RunId, Run>, failing: &mut bool) {
        bound(pending);
        let batch: Vec<Run> = pending.values().cloned().collect();
        match self.consensus.propose(Change::Runs(batch)).await {
            Ok(()) | Err(ProposeError::Rejected(_)) => {
                if *failing {
                    info!("run reports reach the cluster again");
                }
                *failing = false;
                pending.clear();
            }
            Err(e) => {
                if !*failing {
                    warn!(error = %e, waiting = pending.len(), "run reports cannot reach the cluster; they wait");
                }
                *failing = true;
            }
        }
    }
}

/// Keeps at most [`MAX_PENDING`] runs: unfinished ones first, then the newest finished ones.
fn bound(pending: &mut BTreeMap<RunId, Run>) {
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
