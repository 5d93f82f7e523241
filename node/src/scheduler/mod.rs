//! Turns due cron slots, `@reboot`, and run requests (Execute now, retries, exit rules) into runs.
//!
//! A cron slot's "last fired" mark is committed *before* its run is dispatched (guarantee 1): the
//! scheduler wakes [`LEAD`] ahead of the slot, commits, then starts the run on the slot. A slot
//! found more than [`LATE`] in the past was missed; the task's catch-up policy decides what runs,
//! and slots it skips are recorded as a `skipped` run, never dropped silently. On a single node
//! every run is placed on the local executor; the mesh issue adds placement across peers.

pub mod cron;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::consensus::{Change, Consensus, ProposeError, State};
use crate::executor::{ExecutorHandle, RunRequest};
use crate::ledger::RunLedger;
use crate::model::{CatchUp, NodeSettings, Run, RunStatus, Task, TaskId, Trigger, When};

pub use cron::{CatchUpPlan, Schedule, ScheduleError, catch_up};

/// How far ahead of a slot its firing is committed.
pub const LEAD: Duration = Duration::from_millis(50);
/// A slot older than this when the scheduler sees it counts as missed.
pub const LATE: Duration = Duration::from_secs(1);
/// At most this many missed slots run under the `all` policy.
const CATCH_UP_CAP: usize = 100;

/// A cloneable handle for asking the scheduler for runs.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<RunRequest>,
}

impl SchedulerHandle {
    /// Asks for a run of `task` now; answers with the run, or why there is none.
    pub async fn request(&self, task: TaskId, trigger: Trigger) -> Result<Run, String> {
        let (reply, rx) = oneshot::channel();
        let request = RunRequest {
            task,
            trigger,
            attempt: 1,
            delay: Duration::ZERO,
            reply: Some(reply),
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| "the node is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the node is shutting down".to_owned())?
    }
}

struct Delayed {
    at: Instant,
    seq: u64,
    request: RunRequest,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub struct Scheduler {
    consensus: Consensus,
    state: watch::Receiver<Arc<State>>,
    node: watch::Receiver<NodeSettings>,
    executor: ExecutorHandle,
    ledger: RunLedger,
    inbox: mpsc::Receiver<RunRequest>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    schedules: HashMap<TaskId, (DateTime<Utc>, Schedule)>,
    cancel: CancellationToken,
}

impl Scheduler {
    /// The request channel is made by the caller, because the supervisor sends on it too.
    pub fn new(
        consensus: Consensus,
        node: watch::Receiver<NodeSettings>,
        executor: ExecutorHandle,
        ledger: RunLedger,
        requests: (mpsc::Sender<RunRequest>, mpsc::Receiver<RunRequest>),
        cancel: CancellationToken,
    ) -> (Self, SchedulerHandle) {
        let state = consensus.subscribe();
        let (tx, inbox) = requests;
        let scheduler = Scheduler {
            consensus,
            state,
            node,
            executor,
            ledger,
            inbox,
            delayed: BinaryHeap::new(),
            seq: 0,
            schedules: HashMap::new(),
            cancel,
        };
        (scheduler, SchedulerHandle { tx })
    }

    pub async fn run(mut self) {
        self.fire_reboot().await;
        loop {
            let next_cron = self.fire_due().await;
            let wake = [next_cron, self.delayed.peek().map(|d| d.0.at)]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(request) = self.inbox.recv() => self.on_request(request).await,
                Ok(()) = self.state.changed() => {}
                _ = sleep_until_opt(wake) => self.start_delayed().await,
            }
        }
    }

    async fn fire_reboot(&mut self) {
        let state = self.state.borrow().clone();
        for task in state.tasks.values().filter(|t| t.enabled) {
            if self.schedule(task).is_some_and(|s| s.is_reboot()) {
                if let Err(e) = self.launch(task, Trigger::Reboot, 1, &state).await {
                    warn!(task = %task.name, error = %e, "@reboot run not started");
                }
            }
        }
    }

    fn schedule(&mut self, task: &Task) -> Option<&Schedule> {
        let When::Cron {
            schedule, timezone, ..
        } = &task.when
        else {
            return None;
        };
        let fresh = self
            .schedules
            .get(&task.id)
            .is_some_and(|(v, _)| *v == task.updated_at);
        if !fresh {
            match Schedule::parse(schedule, timezone) {
                Ok(s) => {
                    self.schedules.insert(task.id.clone(), (task.updated_at, s));
                }
                Err(e) => {
                    warn!(task = %task.name, error = %e, "stored schedule does not parse; task not scheduled");
                    self.schedules.remove(&task.id);
                }
            }
        }
        self.schedules.get(&task.id).map(|(_, s)| s)
    }

    /// Fires every cron slot that is due (committing first), and returns when to look again.
    async fn fire_due(&mut self) -> Option<Instant> {
        let state = self.state.borrow_and_update().clone();
        self.schedules.retain(|id, _| state.tasks.contains_key(id));
        let now = Utc::now();
        let lead = chrono::Duration::from_std(LEAD).unwrap_or_default();
        let late = chrono::Duration::from_std(LATE).unwrap_or_default();
        let mut wake: Option<DateTime<Utc>> = None;
        let mut fired = Vec::new();
        for task in state.tasks.values().filter(|t| t.enabled) {
            let When::Cron {
                catch_up: policy, ..
            } = &task.when
            else {
                continue;
            };
            let policy = *policy;
            let baseline = state
                .last_fired
                .get(&task.id)
                .copied()
                .unwrap_or(task.updated_at)
                .max(task.updated_at);
            let Some(schedule) = self.schedule(task).cloned() else {
                continue;
            };
            if !self
                .node
                .borrow()
                .missing(&task.spec.dependencies)
                .is_empty()
            {
                continue;
            }
            let Some(next) = schedule.next_after(baseline) else {
                continue;
            };
            if next > now + lead {
                wake = Some(wake.map_or(next - lead, |w| w.min(next - lead)));
                continue;
            }
            if next >= now - late {
                fired.push((task.clone(), next, vec![next], 0));
                continue;
            }
            let plan = catch_up(&schedule, baseline, now, policy, CATCH_UP_CAP);
            // The newest missed slot is the plan's last run; only `none` has to look it up.
            let latest = match plan.run.last() {
                Some(slot) => *slot,
                None => catch_up(&schedule, baseline, now, CatchUp::One, 1)
                    .run
                    .last()
                    .copied()
                    .unwrap_or(next),
            };
            fired.push((task.clone(), latest, plan.run, plan.skipped));
        }
        if fired.is_empty() {
            return wake.map(instant_at);
        }
        let commits = fired.iter().map(|(task, slot, _, _)| {
            self.consensus.propose(Change::FireSlot {
                task: task.id.clone(),
                slot: *slot,
            })
        });
        let results = futures::future::join_all(commits).await;
        for ((task, mark, slots, skipped), result) in fired.into_iter().zip(results) {
            match result {
                Ok(()) => {}
                // In a cluster every node's scheduler proposes the slot; the first commit wins.
                Err(ProposeError::Rejected(_)) => {
                    debug!(task = %task.name, slot = %mark, "another node fired this slot");
                    continue;
                }
                Err(e) => {
                    warn!(task = %task.name, slot = %mark, error = %e, "could not commit the slot; not running it");
                    continue;
                }
            }
            if skipped > 0 {
                warn!(task = %task.name, skipped, "missed cron slots skipped by the catch-up policy");
                self.record_skipped(&task, mark, skipped, slots.is_empty())
                    .await;
            }
            for slot in slots {
                let executor = self.executor.clone();
                let (task, settings) = (task.clone(), state.settings.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(instant_at(slot)).await;
                    executor
                        .launch(&task, Trigger::Cron { slot }, 1, &settings)
                        .await;
                });
            }
        }
        // The commits changed the state; the loop comes straight back to compute the next slots.
        Some(Instant::now())
    }

    async fn record_skipped(
        &self,
        task: &Task,
        latest: DateTime<Utc>,
        skipped: u64,
        none_ran: bool,
    ) {
        let node = self.node.borrow().name.clone();
        let mut run = Run::new(
            task.id.clone(),
            task.name.clone(),
            Trigger::Cron { slot: latest },
            1,
            node,
        );
        let policy = match &task.when {
            When::Cron { catch_up, .. } => format!("{catch_up:?}").to_lowercase(),
            _ => String::new(),
        };
        let note = format!(
            "{skipped} missed slot(s) up to {} not run (catch-up policy `{policy}`){}",
            latest.format("%Y-%m-%d %H:%M:%S UTC"),
            if none_ran { "" } else { "; the latest one ran" }
        );
        run.close(RunStatus::Skipped, note, Utc::now());
        self.ledger.record(&run).await;
    }

    async fn on_request(&mut self, request: RunRequest) {
        if request.delay.is_zero() {
            self.start_request(request).await;
        } else {
            self.seq += 1;
            let at = Instant::now() + request.delay;
            self.delayed.push(Reverse(Delayed {
                at,
                seq: self.seq,
                request,
            }));
        }
    }

    async fn start_delayed(&mut self) {
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|d| d.0.at <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.start_request(d.request).await;
            }
        }
    }

    async fn start_request(&mut self, request: RunRequest) {
        let state = self.state.borrow().clone();
        let result = match state.tasks.get(&request.task) {
            Some(task) => {
                self.launch(task, request.trigger, request.attempt, &state)
                    .await
            }
            None => Err(format!("there is no task {}", request.task)),
        };
        if let Err(e) = &result {
            debug!(task_id = %request.task, error = %e, "run request refused");
        }
        if let Some(reply) = request.reply {
            let _ = reply.send(result);
        }
    }

    /// Places a run of `task` on this node, if the node fulfils the task's dependencies.
    async fn launch(
        &self,
        task: &Task,
        trigger: Trigger,
        attempt: u32,
        state: &State,
    ) -> Result<Run, String> {
        let missing = self
            .node
            .borrow()
            .missing(&task.spec.dependencies)
            .join(", ");
        if !missing.is_empty() {
            warn!(task = %task.name, missing = %missing, "no node can run this task");
            return Err(format!("no live node fulfils {missing}"));
        }
        Ok(self
            .executor
            .launch(task, trigger, attempt, &state.settings)
            .await)
    }
}

fn instant_at(at: DateTime<Utc>) -> Instant {
    let now = Utc::now();
    Instant::now() + (at - now).to_std().unwrap_or(Duration::ZERO)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
