//! The node's side of placement: starts the runs the leader committed to this node.
//!
//! Runs on every node, beside the executor it feeds (the scheduler, which decides where runs go,
//! acts only on the leader). A run reaches its node through the replicated run ledger: the leader
//! commits it as `queued` with this node's PeerId (guarantee 1: the assignment is committed before
//! dispatch), every node applies it, and this node's dispatcher hands it to the local executor, on
//! its slot for a cron run. A run id starts at most once: the dispatcher remembers what it handed
//! over, the executor refuses an id it has seen, and a run that this node may have seen before it
//! started (and started before a crash without the start reaching its history) is not started at
//! all: it is reported `lost`, and the leader retries it by policy. Those are the runs in the state
//! the node starts with, and in every state up to the first that is [`State::caught_up`], that one
//! included (the batch of entries that completes it can name such runs too), but for runs placed on
//! this start: the node acts only on entries on disk in its log, but its state tables may lag the
//! log after a crash, so the runs of entries its log held at the start can reach it again after the
//! start. Runs first seen later were never seen before, so they start, unless the leader placed
//! them on an earlier start of this node (`Run::node_start`, from the start each node announces): a
//! leader that has not yet heard of this start may place a run on the process that died, and it may
//! have marked that run `lost` and retried it elsewhere meanwhile. Such a run is handed back to the
//! leader, unstarted, to be placed again (a `lost` one stays lost), so it runs once.
//!
//! The cluster's ledger learns of a start some milliseconds after it (the run reporter batches),
//! the node's own history sooner (its writer commits in batches). After a restart, a run the
//! cluster's ledger shows unfinished on this node is settled by that history: known there, its
//! record (final by then: the history marks what it left unfinished `lost`) goes to the cluster
//! again; unknown, it is reported `lost`. A run started in the moment before a crash that had
//! not yet reached the history is the one case where a `lost` run did start (and its retry makes
//! that run at-least-once); a durable write before each start would close it, at the price of an
//! fsync on every start's path.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{ExecutorHandle, RunOrder};
use crate::consensus::{Change, Consensus, State};
use crate::ledger::RunLedger;
use crate::model::{Outcome, Run, RunId, RunStatus, Task, Trigger};

/// How long a run handed back to the leader waits before it is placed again.
const HAND_BACK_WAIT: chrono::TimeDelta = chrono::TimeDelta::milliseconds(500);

pub struct Dispatcher {
    pub peer_id: String,
    /// This start of the node (`Announcement::start`): a run placed on another start of it is
    /// not started here but handed back (see [`Run::node_start`]).
    pub start: u64,
    pub consensus: Consensus,
    /// Set once the runs abandoned by the previous start are settled.
    pub ready: watch::Sender<bool>,
    pub state: watch::Receiver<Arc<State>>,
    pub executor: ExecutorHandle,
    pub ledger: RunLedger,
    pub cancel: CancellationToken,
}

impl Dispatcher {
    pub async fn run(mut self) {
        // Runs handed to the executor, or settled below, while they are queued.
        let mut handed: HashSet<RunId> = HashSet::new();
        // Runs this node may have started before it restarted, once settled.
        let mut settled: HashSet<RunId> = HashSet::new();
        let mut stopping: HashSet<RunId> = HashSet::new();
        // Runs placed on an earlier start of this node, handed back while the state shows them so.
        let mut returned: HashSet<RunId> = HashSet::new();
        let mut earlier = EarlierStart::default();
        let mut first = true;
        loop {
            let state = self.state.borrow_and_update().clone();
            if earlier.may_have_acted_on(&state) {
                let abandoned = self.settle(&state, &mut settled, &mut handed).await;
                // The scheduler waits for this: a stale `queued` would hold back a task's next
                // run under concurrency `forbid`.
                if !abandoned.is_empty() {
                    if let Err(e) = self.consensus.propose(Change::Runs(abandoned)).await {
                        info!(error = %e, "the runs abandoned at start are reported later");
                    }
                }
                if first {
                    let _ = self.ready.send(true);
                    first = false;
                }
            }
            settled.retain(|id| state.runs.get(id).is_some_and(|r| !r.status.is_final()));
            // Forget runs that left the queue (started, ended, or pruned).
            handed.retain(|id| {
                state
                    .runs
                    .get(id)
                    .is_some_and(|r| r.status == RunStatus::Queued)
            });
            let mine: Vec<&Run> = self
                .queued_here(&state)
                .filter(|r| !handed.contains(&r.id))
                .collect();
            returned.retain(|id| state.runs.get(id).is_some_and(|r| self.placed_before(r)));
            let mut back = Vec::new();
            for run in mine {
                if self.placed_before(run) {
                    if returned.insert(run.id.clone()) {
                        back.push(self.hand_back(run.clone()));
                    }
                    continue;
                }
                handed.insert(run.id.clone());
                if state.stops.contains(&run.id) {
                    self.never_started(run.clone()).await;
                    continue;
                }
                self.dispatch(run.clone(), &state).await;
            }
            if !back.is_empty()
                && let Err(e) = self.consensus.propose(Change::Runs(back)).await
            {
                info!(error = %e, "runs placed on an earlier start are handed back later");
            }
            // Runs here that someone asked to stop (the Stop button on any node, or a task's
            // concurrency `replace`).
            for id in &state.stops {
                let here = state.runs.get(id).is_some_and(|r| {
                    r.node_id.as_deref() == Some(self.peer_id.as_str()) && !r.status.is_final()
                });
                if here && stopping.insert(id.clone()) {
                    self.executor.stop(id).await;
                }
            }
            stopping.retain(|id| state.stops.contains(id));
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = self.state.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The unfinished runs on this node in `state` that this process has not started and not
    /// settled yet: they may have started before the node restarted, so none starts (again).
    /// This node's history learns of a start before the cluster's ledger does; a run it knows
    /// goes to the ledger again with its record, any other is given up. Returns what to report.
    async fn settle(
        &self,
        state: &State,
        settled: &mut HashSet<RunId>,
        handed: &mut HashSet<RunId>,
    ) -> Vec<Run> {
        let live: HashSet<_> = self.ledger.active().into_iter().map(|r| r.id).collect();
        let previous: Vec<Run> = previous_runs(state, &self.peer_id, self.start, |id| {
            live.contains(id) || settled.contains(id)
        })
        .cloned()
        .collect();
        let mut abandoned = Vec::new();
        for run in previous {
            settled.insert(run.id.clone());
            handed.insert(run.id.clone());
            match self.ledger.get(&run.id).await {
                Ok(Some(known)) => abandoned.push(known),
                _ => abandoned.push(self.give_up(run).await),
            }
        }
        abandoned
    }

    /// The runs the leader placed here that wait for their start. Always-task and `@reboot` runs
    /// are this node's own (its supervisor and scheduler start them), and the ledger only
    /// mirrors them: handing one to the executor again would replace its newer record here with
    /// the ledger's older one.
    fn queued_here<'a>(&self, state: &'a State) -> impl Iterator<Item = &'a Run> {
        let me = self.peer_id.clone();
        state
            .runs
            .unfinished()
            .map(Arc::as_ref)
            .filter(|r| r.status == RunStatus::Queued)
            .filter(|r| !matches!(r.trigger, Trigger::Always { .. } | Trigger::Reboot))
            .filter(move |r| r.node_id.as_deref() == Some(me.as_str()))
    }

    /// Whether `run` was placed on an earlier start of this node: the leader placed it before
    /// it heard of this start. No earlier process started it: the runs an earlier start had in
    /// its log are settled at this start (`settle`), and this one came later.
    fn placed_before(&self, run: &Run) -> bool {
        run.node_start.is_some_and(|start| start != self.start)
    }

    /// `run`, placed on an earlier start of this node and never started, handed back to the
    /// leader to place again (after [`HAND_BACK_WAIT`], by which time it has heard this start's
    /// announcement). A leader that has meanwhile marked it `lost` keeps it so: a finished run
    /// does not become unfinished again, and its retry runs instead.
    fn hand_back(&self, mut run: Run) -> Run {
        info!(run_id = %run.id, task = %run.task_name, "placed on an earlier start of this node; handed back to the leader");
        run.actions.push(format!(
            "placed on {} before it restarted; placed again",
            run.node
        ));
        run.node = String::new();
        run.node_id = None;
        run.node_start = None;
        run.not_before = Some(Utc::now() + HAND_BACK_WAIT);
        run
    }

    /// A run assigned here before this process started: reported lost, never started (again).
    async fn give_up(&self, mut run: Run) -> Run {
        info!(run_id = %run.id, task = %run.task_name, "assigned before this node restarted; not starting it");
        let why = match run.status {
            RunStatus::Queued => "the node restarted before the run could start",
            _ => "the node restarted while the run was running",
        };
        run.finish(Outcome::Lost, Utc::now());
        run.actions.push(why.into());
        self.ledger.record(&run).await;
        run
    }

    /// A run asked to stop before it started here.
    async fn never_started(&self, mut run: Run) {
        run.close(
            RunStatus::Killed,
            "stopped before it started".into(),
            Utc::now(),
        );
        self.ledger.record(&run).await;
    }

    async fn dispatch(&self, run: Run, state: &State) {
        let Some(task) = state.tasks.get(&run.task_id) else {
            debug!(run_id = %run.id, "the run's task is gone");
            return;
        };
        let order = RunOrder {
            run: run.clone(),
            task: Task::clone(task),
            kill_grace: task.kill_grace(state.settings.kill_grace.0),
            daily_logs: state.settings.daily_logs,
        };
        self.ledger.record(&run).await;
        let executor = self.executor.clone();
        match run.trigger {
            // A cron run is committed ahead of its slot and starts on it.
            Trigger::Cron { slot } if slot > Utc::now() => {
                let at =
                    tokio::time::Instant::now() + (slot - Utc::now()).to_std().unwrap_or_default();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    executor.start(order).await;
                });
            }
            _ => executor.start(order).await,
        }
    }
}

/// Which states may hold runs an earlier start of this node acted on: the one it starts with,
/// and every one until the first that holds every entry its log held at the start
/// ([`State::caught_up`]), that one included, since the entries that complete it may name such
/// runs too.
#[derive(Default)]
struct EarlierStart {
    caught_up: bool,
}

impl EarlierStart {
    fn may_have_acted_on(&mut self, state: &State) -> bool {
        if self.caught_up {
            return false;
        }
        self.caught_up = state.caught_up;
        true
    }
}

/// The unfinished runs on node `peer_id` in `state` that an earlier start of it may have started:
/// all but those placed on this start (`start`) and those `known` to this process.
fn previous_runs<'a>(
    state: &'a State,
    peer_id: &'a str,
    start: u64,
    known: impl Fn(&RunId) -> bool + 'a,
) -> impl Iterator<Item = &'a Run> + 'a {
    state.runs.unfinished().map(Arc::as_ref).filter(move |r| {
        r.node_id.as_deref() == Some(peer_id)
            && !r.status.is_final()
            && r.node_start != Some(start)
            && !known(&r.id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskId;

    const OLD: u64 = 1;
    const NOW: u64 = 2;

    fn queued(id: &str, node: &str, start: Option<u64>) -> Arc<Run> {
        let mut run = Run::new(
            TaskId("t".into()),
            "t".into(),
            Trigger::Manual,
            1,
            node.into(),
        );
        run.id = RunId(id.into());
        run.node_id = Some(node.into());
        run.node_start = start;
        Arc::new(run)
    }

    fn state(caught_up: bool, runs: &[Arc<Run>]) -> State {
        let mut state = State {
            caught_up,
            ..State::default()
        };
        for run in runs {
            state.runs.insert(run.clone());
        }
        state
    }

    /// The entries that complete what the log held at the start reach the node in the state
    /// that is caught up; a run in them that the earlier start placed here must be settled, not
    /// handed back to be placed again (it may have started: seen as one slot run on two nodes).
    #[test]
    fn the_state_that_catches_up_is_still_checked_for_runs_of_an_earlier_start() {
        let mut earlier = EarlierStart::default();
        assert!(earlier.may_have_acted_on(&state(false, &[])));
        assert!(earlier.may_have_acted_on(&state(false, &[])));
        let caught_up = state(true, &[queued("r", "me", Some(OLD))]);
        assert!(earlier.may_have_acted_on(&caught_up));
        let found: Vec<_> = previous_runs(&caught_up, "me", NOW, |_| false)
            .map(|r| r.id.0.as_str())
            .collect();
        assert_eq!(found, ["r"]);
        assert!(!earlier.may_have_acted_on(&state(true, &[])));
    }

    #[test]
    fn a_state_caught_up_at_once_is_checked_once() {
        let mut earlier = EarlierStart::default();
        assert!(earlier.may_have_acted_on(&state(true, &[])));
        assert!(!earlier.may_have_acted_on(&state(true, &[])));
    }

    #[test]
    fn runs_placed_on_this_start_elsewhere_or_known_are_not_an_earlier_starts() {
        let s = state(
            false,
            &[
                queued("old", "me", Some(OLD)),
                queued("unknown-start", "me", None),
                queued("this-start", "me", Some(NOW)),
                queued("elsewhere", "other", Some(OLD)),
                queued("known", "me", Some(OLD)),
            ],
        );
        let mut found: Vec<_> = previous_runs(&s, "me", NOW, |id| id.0 == "known")
            .map(|r| r.id.0.as_str())
            .collect();
        found.sort();
        assert_eq!(found, ["old", "unknown-start"]);
    }
}
