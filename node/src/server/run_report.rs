//! Reports this node's runs to the cluster's run ledger (`consensus::State::runs`): every change
//! the node's `RunLedger` records is coalesced by run id and proposed in batches
//! (`Change::Runs`), so a run costs a small share of one Raft entry. One proposal is on its way
//! at a time, until it is applied here; whatever arrives meanwhile goes in the next one, at once
//! (group commit). While runs wait for slots, the ends that arrive meanwhile are told to the
//! leader at once (`Consensus::hint_ended`), which gives their slots again without waiting for
//! their report (`consensus::Ending`). While there is no quorum the changes wait (the newest per
//! run) and go out when one is back.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consensus::{Change, Consensus, ProposeError};
use crate::model::{Run, RunId};
use crate::reports::{Reports, bound};

/// After a failed proposal, the next try comes this much later.
const RETRY: Duration = Duration::from_secs(1);

pub(super) struct RunReporter {
    pub runs: Reports,
    pub consensus: Consensus,
    pub cancel: CancellationToken,
}

impl RunReporter {
    /// Reports until `cancel`, then proposes what still waits once more and returns.
    pub async fn run(mut self) {
        let mut pending: BTreeMap<RunId, Run> = BTreeMap::new();
        let mut failing = false;
        loop {
            // After a failure, gather for a while before the next try; else go at once.
            let retry_at = failing.then(|| tokio::time::Instant::now() + RETRY);
            let stop = loop {
                if !pending.is_empty() && retry_at.is_none() {
                    break false;
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => break true,
                    _ = async { tokio::time::sleep_until(retry_at.expect("set")).await }, if retry_at.is_some() => break false,
                    _ = self.runs.arrived() => pending.extend(self.runs.take()),
                }
            };
            // Everything that arrived meanwhile goes in this proposal.
            pending.extend(self.runs.take());
            if !pending.is_empty() {
                pending = self.report(pending, &mut failing).await;
            }
            if stop {
                return;
            }
        }
    }

    /// Whether the ledger shows runs that wait for the leader to place them: only then is an
    /// end worth telling ahead of its report (when nothing waits, the news would cost the leader
    /// work and change nothing).
    fn runs_wait_for_slots(&self) -> bool {
        let now = chrono::Utc::now();
        self.consensus
            .state()
            .runs
            .unfinished()
            .any(|r| r.placeable(now))
    }

    /// Proposes `pending`; returns what waits for the next proposal: what arrived meanwhile, and
    /// `pending` too if the proposal failed. Runs that end meanwhile are told to the leader at
    /// once while runs wait for slots, so that it need not wait for their report to give their
    /// slots again.
    async fn report(
        &mut self,
        mut pending: BTreeMap<RunId, Run>,
        failing: &mut bool,
    ) -> BTreeMap<RunId, Run> {
        bound(&mut pending);
        let batch: Vec<Run> = pending.values().cloned().collect();
        // Waiting for this node's apply too makes the batches larger, and the ends go to the
        // leader at once anyway.
        let proposal = self.consensus.propose(Change::Runs(batch));
        tokio::pin!(proposal);
        let mut arrived = BTreeMap::new();
        let result = loop {
            tokio::select! {
                result = &mut proposal => break result,
                _ = self.runs.arrived() => {
                    let batch = self.runs.take();
                    if !*failing && self.runs_wait_for_slots() {
                        let ended = batch.values().filter(|r| r.status.is_final());
                        self.consensus.hint_ended(ended.map(|r| r.id.clone()).collect());
                    }
                    arrived.extend(batch);
                }
            }
        };
        match result {
            Ok(()) | Err(ProposeError::Rejected(_)) => {
                if *failing {
                    info!("run reports reach the cluster again");
                }
                *failing = false;
                arrived
            }
            Err(e) => {
                if !*failing {
                    warn!(error = %e, waiting = pending.len(), "run reports cannot reach the cluster; they wait");
                }
                *failing = true;
                pending.extend(arrived);
                pending
            }
        }
    }
}
