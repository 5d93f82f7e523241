//! Turns due cron slots, `@reboot`, and run requests (Execute now, retries, exit rules) into
//! runs, and places them on the live nodes (issue 5; DESIGN.md "scheduler").
//!
//! A [`Scheduler`] runs on every node, and does different things there:
//!
//! - **On the leader** (while `Consensus::leads`) it schedules for the cluster. It fires cron
//!   slots and places runs on nodes whose dependencies match ([`placement`]), committing each
//!   slot together with its runs (`Change::Fire`) ahead of the slot (guarantee 1: the assignment
//!   is committed before dispatch). A slot found more than [`LATE`] in the past was missed; the
//!   task's catch-up policy decides what runs, and slots it skips are recorded as a `skipped`
//!   run, never dropped silently. A new leader starts from the committed state, so it catches
//!   up what its predecessor missed by the same policy. Runs that find no free slot wait in the
//!   ledger, by priority, until one frees up. Runs on a node that stopped answering become
//!   `lost` and are retried on another node while attempts remain. Always-tasks get their
//!   holders.
//! - **On every node** it takes run requests (Execute now, and the supervisor's follow-ups:
//!   retries and "run another task"). The leader places them at once; a follower hands them to
//!   the leader (`forward.rs`), and commits them as waiting runs (no node yet) when the leader
//!   does not answer, which the leader places when it sees them. At its start it also runs this
//!   node's `@reboot` tasks.
//!
//! Starting what is committed to a node is not the scheduler's work: each node's dispatcher
//! (`executor::dispatch`) does that.

pub mod cron;
mod forward;
pub mod placement;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::consensus::{Change, Consensus, ProposeError, State};
use crate::executor::{ExecutorHandle, FollowUp};
use crate::ledger::RunLedger;
use crate::mesh::MeshHandle;
use crate::model::{
    CatchUp, Concurrency, NodeSettings, Outcome, Placement, Run, RunId, RunStatus, Task, TaskId,
    Trigger, When,
};
use placement::{Candidate, NoPlace};

pub use cron::{CatchUpPlan, Schedule, ScheduleError, catch_up};
use forward::Forwarder;
pub use forward::{Answers, Forwarded};

/// How far ahead of a slot its firing is committed.
pub const LEAD: Duration = Duration::from_millis(50);
/// A slot older than this when the scheduler sees it counts as missed.
pub const LATE: Duration = Duration::from_secs(1);
/// At most this many missed slots run under the `all` policy.
const CATCH_UP_CAP: usize = 100;
/// At most this many run requests are committed in one entry.
const MAX_BATCH: usize = 256;
/// The leader looks at least this often (for lost runs and waiting runs) when nothing changes.
const TICK: Duration = Duration::from_millis(250);

/// A request for a run, as the scheduler's inbox holds it: Execute now (with a reply), one of
/// the supervisor's follow-ups (a retry or a rule's run, without one), or a request a follower
/// handed to this node as the leader.
#[derive(Debug)]
struct RunRequest {
    task: TaskId,
    trigger: Trigger,
    attempt: u32,
    /// How long to wait before it runs (a retry's backoff).
    delay: Duration,
    reply: Option<oneshot::Sender<Result<Run, String>>>,
    /// Forwarded by another node to this one as the leader: never forwarded again.
    forwarded: bool,
}

impl From<FollowUp> for RunRequest {
    fn from(f: FollowUp) -> Self {
        RunRequest {
            task: f.task,
            trigger: f.trigger,
            attempt: f.attempt,
            delay: f.delay,
            reply: None,
            forwarded: false,
        }
    }
}

/// A cloneable handle for asking the scheduler for runs.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<RunRequest>,
}

impl SchedulerHandle {
    /// Asks for a run of `task` now; answers with the run, or why there is none.
    pub async fn request(&self, task: TaskId, trigger: Trigger) -> Result<Run, String> {
        self.ask(
            Forwarded {
                task,
                trigger,
                attempt: 1,
            },
            false,
        )
        .await
    }

    /// The run requests another node handed to this one as the leader; answers each, in order.
    pub async fn forwarded(&self, requests: Vec<Forwarded>) -> Answers {
        // All are queued before any answer is awaited, so that they are committed together.
        let mut pending = Vec::with_capacity(requests.len());
        for request in requests {
            pending.push(self.queue(request, true).await);
        }
        let mut answers = Vec::with_capacity(pending.len());
        for rx in pending {
            answers.push(match rx {
                Ok(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err("the node is shutting down".to_owned())),
                Err(e) => Err(e),
            });
        }
        answers
    }

    async fn ask(&self, request: Forwarded, forwarded: bool) -> Result<Run, String> {
        self.queue(request, forwarded)
            .await?
            .await
            .map_err(|_| "the node is shutting down".to_owned())?
    }

    /// Puts a request in the scheduler's inbox; the receiver gets its answer.
    async fn queue(
        &self,
        request: Forwarded,
        forwarded: bool,
    ) -> Result<oneshot::Receiver<Result<Run, String>>, String> {
        let (reply, rx) = oneshot::channel();
        let request = RunRequest {
            task: request.task,
            trigger: request.trigger,
            attempt: request.attempt,
            delay: Duration::ZERO,
            reply: Some(reply),
            forwarded,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| "the node is shutting down".to_owned())?;
        Ok(rx)
    }
}

pub struct Scheduler {
    consensus: Consensus,
    state: watch::Receiver<Arc<State>>,
    node: watch::Receiver<NodeSettings>,
    mesh: watch::Receiver<Option<MeshHandle>>,
    /// This node's PeerId.
    peer_id: String,
    executor: ExecutorHandle,
    inbox: mpsc::Receiver<RunRequest>,
    /// The runs this node's supervisor asks for (retries, rules).
    follow_ups: mpsc::Receiver<FollowUp>,
    /// Changes when this node, as the leader, learns of runs that ended (`Consensus::ending`).
    ending: watch::Receiver<()>,
    /// Whether the last pass left runs waiting for a free slot (then an ended run is news).
    short_of_slots: bool,
    schedules: HashMap<TaskId, (DateTime<Utc>, Schedule)>,
    /// Since when this node leads (`None` while it does not).
    leading_since: Option<Instant>,
    /// When each peer was last live, as this leader saw it.
    last_seen: HashMap<String, Instant>,
    /// This node's runs (its running ones count for concurrency before the ledger shows them).
    ledger: RunLedger,
    dispatcher_ready: watch::Receiver<bool>,
    /// This scheduler's own inbox, for requests the leader did not take.
    own: mpsc::Sender<RunRequest>,
    /// Requests for the leader, on a follower.
    to_leader: mpsc::UnboundedSender<RunRequest>,
    /// Started with the scheduler.
    forwarder: Option<Forwarder>,
    cancel: CancellationToken,
}

/// What the scheduler needs from the node.
pub struct Parts {
    pub consensus: Consensus,
    pub node: watch::Receiver<NodeSettings>,
    pub mesh: watch::Receiver<Option<MeshHandle>>,
    pub peer_id: String,
    pub executor: ExecutorHandle,
    pub ledger: RunLedger,
    /// Becomes true once the dispatcher has settled the runs the previous start left queued.
    pub dispatcher_ready: watch::Receiver<bool>,
    /// The runs the supervisor's exit-code rules ask for.
    pub follow_ups: mpsc::Receiver<FollowUp>,
}

impl Scheduler {
    pub fn new(parts: Parts, cancel: CancellationToken) -> (Self, SchedulerHandle) {
        let state = parts.consensus.subscribe();
        let ending = parts.consensus.ending().subscribe();
        let (tx, inbox) = mpsc::channel(1024);
        let (to_leader, forwards) = mpsc::unbounded_channel();
        let forwarder = Forwarder {
            inbox: forwards,
            consensus: parts.consensus.clone(),
            mesh: parts.mesh.clone(),
            peer_id: parts.peer_id.clone(),
            back: tx.clone(),
            cancel: cancel.clone(),
        };
        let scheduler = Scheduler {
            consensus: parts.consensus,
            state,
            node: parts.node,
            mesh: parts.mesh,
            peer_id: parts.peer_id,
            executor: parts.executor,
            inbox,
            follow_ups: parts.follow_ups,
            ending,
            short_of_slots: false,
            schedules: HashMap::new(),
            leading_since: None,
            last_seen: HashMap::new(),
            ledger: parts.ledger,
            dispatcher_ready: parts.dispatcher_ready,
            own: tx.clone(),
            to_leader,
            forwarder: Some(forwarder),
            cancel,
        };
        (scheduler, SchedulerHandle { tx })
    }

    pub async fn run(mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            tokio::spawn(forwarder.run());
        }
        // The dispatcher first settles what the previous start left queued here.
        tokio::select! {
            _ = self.cancel.cancelled() => return,
            _ = self.dispatcher_ready.wait_for(|ready| *ready) => {}
        }
        self.fire_reboot().await;
        loop {
            let next_cron = match self.lead() {
                true => {
                    // The live nodes, once per pass (it reads the node's load from /proc).
                    let state = self.state.borrow().clone();
                    let candidates = self.candidates(&state);
                    self.reap_lost(&candidates).await;
                    self.place_daemons(&candidates).await;
                    self.place_waiting(&candidates).await;
                    self.fire_due(&candidates).await
                }
                false => None,
            };
            let wake = [next_cron, self.next_waiting()]
                .into_iter()
                .flatten()
                .chain([Instant::now() + TICK])
                .min();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(request) = self.inbox.recv() => {
                    let batch = self.gather(request);
                    self.on_requests(batch).await
                }
                Some(follow_up) = self.follow_ups.recv() => {
                    let batch = self.gather(follow_up.into());
                    self.on_requests(batch).await
                }
                Ok(()) = self.state.changed() => {}
                // Ended runs free their slots for the waiting ones before their commit.
                Ok(()) = self.ending.changed(), if self.short_of_slots => {}
                _ = sleep_until_opt(wake) => {}
            }
        }
    }

    /// `first` and the requests waiting behind it, up to [`MAX_BATCH`]: requests that arrive
    /// together are committed together (group commit).
    fn gather(&mut self, first: RunRequest) -> Vec<RunRequest> {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.inbox.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => match self.follow_ups.try_recv() {
                    Ok(follow_up) => batch.push(follow_up.into()),
                    Err(_) => break,
                },
            }
        }
        batch
    }

    /// Whether this node leads now; notes when it starts to.
    fn lead(&mut self) -> bool {
        let leading = self.consensus.leads();
        match (leading, self.leading_since) {
            (true, None) => {
                info!("this node leads: it schedules and places runs for the cluster");
                self.leading_since = Some(Instant::now());
                self.last_seen.clear();
            }
            (false, Some(_)) => self.leading_since = None,
            _ => {}
        }
        leading
    }

    /// The runs each node has, as this leader knows them (see [`busy`]).
    fn busy(&self, state: &State) -> HashMap<String, u32> {
        busy(state, &self.consensus.ending().runs())
    }

    /// The live nodes that can take runs: this node and the peers of its cluster.
    fn candidates(&mut self, state: &State) -> Vec<Candidate> {
        let this = Candidate::this_node(&self.peer_id, &self.node.borrow());
        let peers = self
            .mesh
            .borrow()
            .as_ref()
            .map(|m| m.peers())
            .unwrap_or_default();
        let live = placement::live(this, &peers, state.cluster.map(|c| c.id));
        let now = Instant::now();
        for c in &live {
            self.last_seen.insert(c.peer_id.clone(), now);
        }
        live
    }

    /// `@reboot` tasks run on every node that fulfils them, when that node starts.
    async fn fire_reboot(&mut self) {
        let state = self.state.borrow().clone();
        for task in state.tasks.values().filter(|t| t.enabled) {
            if !self.schedule(task).is_some_and(|s| s.is_reboot()) {
                continue;
            }
            let missing = self
                .node
                .borrow()
                .missing(&task.spec.dependencies)
                .join(", ");
            if missing.is_empty() {
                self.executor
                    .launch(task, Trigger::Reboot, 1, &state.settings)
                    .await;
            } else {
                debug!(task = %task.name, missing = %missing, "@reboot task not for this node");
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

    /// On the leader: fires every cron slot that is due, committing it with its runs, and
    /// returns when to look again.
    async fn fire_due(&mut self, candidates: &[Candidate]) -> Option<Instant> {
        let state = self.state.borrow_and_update().clone();
        self.schedules.retain(|id, _| state.tasks.contains_key(id));
        let now = Utc::now();
        let lead = chrono::Duration::from_std(LEAD).unwrap_or_default();
        let late = chrono::Duration::from_std(LATE).unwrap_or_default();
        let mut wake: Option<DateTime<Utc>> = None;
        let mut busy = self.busy(&state);
        let mut fires = Vec::new();
        let mut stops = Vec::new();
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
            let Some(next) = schedule.next_after(baseline) else {
                continue;
            };
            if next > now + lead {
                wake = Some(wake.map_or(next - lead, |w| w.min(next - lead)));
                continue;
            }
            let (mark, slots, skipped) = if next >= now - late {
                (next, vec![next], 0)
            } else {
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
                (latest, plan.run, plan.skipped)
            };
            let mut runs = Vec::new();
            if skipped > 0 {
                warn!(task = %task.name, skipped, "missed cron slots skipped by the catch-up policy");
                runs.push(self.skipped_record(task, mark, skipped, slots.is_empty()));
            }
            for slot in slots {
                let trigger = Trigger::Cron { slot };
                match gate(task, &state, None, &self.ledger.active(), &self.peer_id) {
                    Gate::Go => {}
                    Gate::Skip(why) => {
                        runs.push(closed(task, trigger, why));
                        continue;
                    }
                    Gate::Replace(earlier) => stops.extend(earlier),
                }
                runs.extend(self.runs_for(task, trigger, 1, candidates, &mut busy));
            }
            fires.push(Change::Fire {
                task: task.id.clone(),
                slot: mark,
                runs,
            });
        }
        if fires.is_empty() {
            return wake.map(instant_at);
        }
        self.stop_runs(stops).await;
        let commits = fires
            .into_iter()
            .map(|change| self.consensus.propose(change));
        for result in futures::future::join_all(commits).await {
            match result {
                Ok(()) => {}
                Err(ProposeError::Rejected(e)) => debug!(error = %e, "slot already fired"),
                Err(e) => warn!(error = %e, "could not commit a cron slot; it is tried again"),
            }
        }
        // The commits changed the state; the loop comes straight back to compute the next slots.
        Some(Instant::now())
    }

    /// The runs one trigger of `task` makes: placed on nodes, waiting for a free slot (no node
    /// yet), or one run closed with the reason no node can take it.
    fn runs_for(
        &self,
        task: &Task,
        trigger: Trigger,
        attempt: u32,
        candidates: &[Candidate],
        busy: &mut HashMap<String, u32>,
    ) -> Vec<Run> {
        let mut run = Run::new(
            task.id.clone(),
            task.name.clone(),
            trigger,
            attempt,
            String::new(),
        );
        match placement::place(task, candidates, busy) {
            Ok(nodes) => nodes
                .into_iter()
                .enumerate()
                .map(|(i, node)| {
                    let mut r = run.clone();
                    if i > 0 {
                        r.id = RunId::generate();
                    }
                    assign(&mut r, node, busy);
                    r
                })
                .collect(),
            Err(NoPlace::Full) => vec![run],
            Err(NoPlace::NoMatch(why)) => {
                warn!(task = %task.name, why = %why, "no node can run this task");
                run.close(RunStatus::Skipped, format!("not run: {why}"), Utc::now());
                vec![run]
            }
        }
    }

    fn skipped_record(
        &self,
        task: &Task,
        latest: DateTime<Utc>,
        skipped: u64,
        none_ran: bool,
    ) -> Run {
        let node = self.node.borrow().name.clone();
        let mut run = Run::new(
            task.id.clone(),
            task.name.clone(),
            Trigger::Cron { slot: latest },
            1,
            node,
        );
        run.node_id = Some(self.peer_id.clone());
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
        run
    }

    /// On the leader: places the runs that wait for a node, by priority, then age.
    async fn place_waiting(&mut self, candidates: &[Candidate]) {
        let state = self.state.borrow().clone();
        let now = Utc::now();
        let mut waiting: Vec<&Run> = state
            .runs
            .values()
            .map(Arc::as_ref)
            .filter(|r| r.placeable(now))
            .collect();
        self.short_of_slots = false;
        if waiting.is_empty() {
            return;
        }
        let priority = |r: &Run| state.tasks.get(&r.task_id).map_or(0, |t| t.spec.priority);
        waiting.sort_by(|a, b| priority(b).cmp(&priority(a)).then(a.id.cmp(&b.id)));
        let mut busy = self.busy(&state);
        let here = self.ledger.active();
        let mut placed = Vec::new();
        let mut stops = Vec::new();
        for run in waiting {
            let Some(task) = state.tasks.get(&run.task_id) else {
                continue;
            };
            match gate(task, &state, Some(&run.id), &here, &self.peer_id) {
                Gate::Go => {}
                Gate::Skip(why) => {
                    let mut r = run.clone();
                    r.close(RunStatus::Skipped, why, Utc::now());
                    placed.push(r);
                    continue;
                }
                Gate::Replace(earlier) => stops.extend(earlier),
            }
            match placement::place(task, candidates, &busy) {
                Ok(nodes) => {
                    for (i, node) in nodes.into_iter().enumerate() {
                        let mut r = run.clone();
                        if i > 0 {
                            // Placement `all`: one run per matching node.
                            r.id = RunId::generate();
                        }
                        assign(&mut r, node, &mut busy);
                        placed.push(r);
                    }
                }
                Err(NoPlace::Full) => self.short_of_slots = true,
                Err(NoPlace::NoMatch(why)) => {
                    let mut r = run.clone();
                    r.close(RunStatus::Skipped, format!("not run: {why}"), Utc::now());
                    placed.push(r);
                }
            }
        }
        self.stop_runs(stops).await;
        if placed.is_empty() {
            return;
        }
        if let Err(e) = self.consensus.propose(Change::Runs(placed)).await {
            warn!(error = %e, "placing waiting runs failed; tried again");
        }
    }

    /// The nodes that have not been live for `cluster.peer_timeout`, as this leader saw them
    /// (a node it never saw counts from when it began to lead).
    fn gone(&self, state: &State, live: &[Candidate]) -> impl Fn(&str) -> bool + use<> {
        let since = self.leading_since.unwrap_or_else(Instant::now);
        let timeout = state.settings.peer_timeout.0;
        let now = Instant::now();
        let live: HashSet<String> = live.iter().map(|c| c.peer_id.clone()).collect();
        let last_seen = self.last_seen.clone();
        move |peer: &str| {
            !live.contains(peer) && now - last_seen.get(peer).copied().unwrap_or(since) > timeout
        }
    }

    /// On the leader: gives each enabled always-task its holders: one live matching node (the
    /// same one while it lives), or every matching node for placement `all`. A holder that is
    /// gone is replaced; the new holder's supervisor starts the task.
    async fn place_daemons(&mut self, candidates: &[Candidate]) {
        let state = self.state.borrow().clone();
        let gone = self.gone(&state, candidates);
        // Tasks that are no longer enabled always-tasks lose their holders.
        let mut changes: Vec<Change> = state
            .holders
            .keys()
            .filter(|id| {
                !state
                    .tasks
                    .get(id)
                    .is_some_and(|t| t.enabled && t.is_always())
            })
            .map(|id| Change::Hold {
                task: id.clone(),
                nodes: Vec::new(),
            })
            .collect();
        for task in state.tasks.values().filter(|t| t.enabled && t.is_always()) {
            let held = state.holders.get(&task.id).cloned().unwrap_or_default();
            let matching: Vec<String> = match placement::place(
                &Task {
                    placement: Placement::All,
                    ..Task::clone(task)
                },
                candidates,
                &HashMap::new(),
            ) {
                Ok(nodes) => nodes.into_iter().map(|c| c.peer_id.clone()).collect(),
                Err(_) => Vec::new(),
            };
            // Holders that are still around keep the task (no restart for a missed announcement).
            let staying: Vec<String> = held.iter().filter(|h| !gone(h)).cloned().collect();
            let mut nodes = match task.placement {
                Placement::All => {
                    let mut all = matching.clone();
                    all.extend(staying.into_iter().filter(|h| !matching.contains(h)));
                    all
                }
                Placement::One => match staying.into_iter().next() {
                    Some(holder) => vec![holder],
                    None => placement::place(task, candidates, &HashMap::new())
                        .map(|c| vec![c[0].peer_id.clone()])
                        .unwrap_or_default(),
                },
            };
            nodes.sort();
            if nodes != held {
                info!(task = %task.name, ?nodes, "always-task placed");
                changes.push(Change::Hold {
                    task: task.id.clone(),
                    nodes,
                });
            }
        }
        for change in changes {
            if let Err(e) = self.consensus.propose(change).await {
                warn!(error = %e, "placing an always-task failed; tried again");
            }
        }
    }

    /// On the leader: runs on nodes that stopped answering become `lost`, and are retried on
    /// another node while attempts remain (also those a restarted node reported lost itself).
    async fn reap_lost(&mut self, candidates: &[Candidate]) {
        let state = self.state.borrow().clone();
        if self.leading_since.is_none() {
            return;
        }
        let gone = self.gone(&state, candidates);
        let retried: HashSet<&RunId> = state
            .runs
            .values()
            .filter_map(|r| match &r.trigger {
                Trigger::Retry { of } => Some(of),
                _ => None,
            })
            .collect();
        let mut changes = Vec::new();
        for run in state.runs.values() {
            // Copied only when it changes: this pass runs on every change of the state.
            let mut run = Cow::Borrowed(run.as_ref());
            let on_dead_node = !run.status.is_final()
                && run
                    .node_id
                    .as_deref()
                    .is_some_and(|p| p != self.peer_id && gone(p));
            if on_dead_node {
                let lost = run.to_mut();
                lost.finish(Outcome::Lost, Utc::now());
                lost.actions.push(format!(
                    "node {} stopped answering while the run was unfinished",
                    lost.node
                ));
                changes.push(lost.clone());
            }
            if run.status != RunStatus::Lost || retried.contains(&run.id) {
                continue;
            }
            let Some(task) = state.tasks.get(&run.task_id) else {
                continue;
            };
            if run.attempt > state.settings.max_retries || task.is_always() {
                continue;
            }
            let mut retry = Run::new(
                task.id.clone(),
                task.name.clone(),
                Trigger::Retry { of: run.id.clone() },
                run.attempt + 1,
                String::new(),
            );
            retry.actions.push(format!("retry of lost run {}", run.id));
            if let Some(last) = changes.last_mut().filter(|r| r.id == run.id) {
                last.actions.push(format!("retried as {}", retry.id));
            }
            changes.push(retry);
        }
        if changes.is_empty() {
            return;
        }
        info!(count = changes.len(), "lost runs and their retries");
        if let Err(e) = self.consensus.propose(Change::Runs(changes)).await {
            warn!(error = %e, "recording lost runs failed; tried again");
        }
    }

    /// Asks for earlier runs to stop (concurrency `replace`).
    async fn stop_runs(&self, runs: Vec<RunId>) {
        for id in runs {
            info!(run_id = %id, "stopping an earlier run (concurrency `replace`)");
            if let Err(e) = self.consensus.propose(Change::Stop(id)).await {
                warn!(error = %e, "asking a run to stop failed");
            }
        }
    }

    async fn on_requests(&mut self, requests: Vec<RunRequest>) {
        let (now, later): (Vec<_>, Vec<_>) = requests.into_iter().partition(|r| r.delay.is_zero());
        self.start_requests(now).await;
        self.commit_later(later).await;
    }

    /// Requests with a delay (a retry's backoff) are committed at once as waiting runs that the
    /// leader places once their time has come, so that they outlive the node that asked.
    async fn commit_later(&mut self, requests: Vec<RunRequest>) {
        if requests.is_empty() {
            return;
        }
        let state = self.state.borrow().clone();
        let mut runs = Vec::new();
        for request in &requests {
            let Some(task) = state.tasks.get(&request.task) else {
                continue;
            };
            let mut run = Run::new(
                task.id.clone(),
                task.name.clone(),
                request.trigger.clone(),
                request.attempt,
                String::new(),
            );
            let at = Utc::now() + chrono::Duration::from_std(request.delay).unwrap_or_default();
            run.not_before = Some(at);
            run.actions.push(format!(
                "waits until {} before it runs",
                at.format("%H:%M:%S%.3f UTC")
            ));
            runs.push(run);
        }
        if runs.is_empty() {
            return;
        }
        if let Err(e) = self.consensus.propose(Change::Runs(runs)).await {
            // Without a quorum the requests wait here, and are asked again.
            warn!(error = %e, count = requests.len(), "committing delayed runs failed; tried again in 1 s");
            let own = self.own.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for mut request in requests {
                    request.delay = request.delay.saturating_sub(Duration::from_secs(1));
                    request.delay = request.delay.max(Duration::from_millis(1));
                    let _ = own.send(request).await;
                }
            });
        }
    }

    /// On the leader: when the earliest waiting run's backoff ends.
    fn next_waiting(&self) -> Option<Instant> {
        self.leading_since?;
        let now = Utc::now();
        let state = self.state.borrow();
        let at = state
            .runs
            .values()
            .filter(|r| r.waits_for_a_node())
            .filter_map(|r| r.not_before)
            .filter(|at| *at > now)
            .min()?;
        Some(Instant::now() + (at - now).to_std().unwrap_or_default())
    }

    /// Commits a run for each request in one entry: placed at once on the leader, else waiting
    /// for the leader to place it. A request is refused when no live node fulfils the task's
    /// dependencies, or its concurrency policy says no.
    async fn start_requests(&mut self, requests: Vec<RunRequest>) {
        if requests.is_empty() {
            return;
        }
        let leading = self.lead();
        // A follower hands requests to the leader, which places them in one commit; those the
        // leader forwarded here, or that it does not answer, wait in the ledger instead.
        let (requests, to_leader): (Vec<_>, Vec<_>) =
            requests.into_iter().partition(|r| leading || r.forwarded);
        for request in to_leader {
            let _ = self.to_leader.send(request);
        }
        if requests.is_empty() {
            return;
        }
        let state = self.state.borrow().clone();
        let candidates = self.candidates(&state);
        let mut busy = self.busy(&state);
        let here = self.ledger.active();
        let mut runs = Vec::new();
        let mut stops = Vec::new();
        let mut answers = Vec::new();
        for request in requests {
            let result = match state.tasks.get(&request.task) {
                Some(task) => self.prepare(
                    task,
                    &request,
                    (&state, &candidates, &here),
                    &mut busy,
                    &mut stops,
                ),
                None => Err(format!("there is no task {}", request.task)),
            };
            let answer = result.map(|made| {
                let first = made[0].clone();
                runs.extend(made);
                first
            });
            if let Err(e) = &answer {
                debug!(task_id = %request.task, error = %e, "run request refused");
            }
            answers.push((request.reply, answer));
        }
        if leading {
            self.stop_runs(stops).await;
        }
        let committed = match runs.is_empty() {
            true => Ok(()),
            false => self
                .consensus
                .propose(Change::Runs(runs))
                .await
                .map_err(|e| e.to_string()),
        };
        for (reply, answer) in answers {
            let answer = match (&committed, answer) {
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, answer) => answer,
            };
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
        }
    }

    /// The runs one request makes (the first is the answer), or why it makes none. On the leader
    /// they are placed; elsewhere the one run waits for the leader. Runs that `replace` stops
    /// are added to `stops`.
    fn prepare(
        &self,
        task: &Task,
        request: &RunRequest,
        (state, candidates, here): (&State, &[Candidate], &[Run]),
        busy: &mut HashMap<String, u32>,
        stops: &mut Vec<RunId>,
    ) -> Result<Vec<Run>, String> {
        if let Err(NoPlace::NoMatch(why)) = placement::place(task, candidates, busy) {
            return Err(why);
        }
        match gate(task, state, None, here, &self.peer_id) {
            Gate::Go => {}
            Gate::Skip(why) => return Err(why),
            // A follower leaves the stopping to the leader, which sees the same gate.
            Gate::Replace(earlier) => stops.extend(earlier),
        }
        let (trigger, attempt) = (request.trigger.clone(), request.attempt);
        let runs = match self.consensus.leads() {
            true => self.runs_for(task, trigger, attempt, candidates, busy),
            false => vec![Run::new(
                task.id.clone(),
                task.name.clone(),
                trigger,
                attempt,
                String::new(),
            )],
        };
        match runs.first() {
            Some(_) => Ok(runs),
            None => Err("no run was made".into()),
        }
    }
}

/// What the task's concurrency policy says about a new run.
enum Gate {
    Go,
    /// It does not run, for this reason.
    Skip(String),
    /// It runs once these earlier runs are asked to stop.
    Replace(Vec<RunId>),
}

/// The concurrency policy of `task` against its running runs (other than `except`, the run
/// being placed): those the run ledger shows running on other nodes, and those running on this
/// node by its own record (the ledger learns of starts and ends a few milliseconds later). As Nomad's `prohibit_overlap`, only runs with a
/// process count: a run still waiting for its start does not hold back the next (a lost run's
/// retry does not block the catch-up of the slots after it). Always-tasks are supervised per
/// holder and pass.
fn gate(task: &Task, state: &State, except: Option<&RunId>, here: &[Run], me: &str) -> Gate {
    if task.is_always() {
        return Gate::Go;
    }
    // Decided before the ledger is searched: the leader gates every waiting run on each pass.
    let forbid = match task.spec.concurrency {
        Concurrency::Allow => return Gate::Go,
        Concurrency::Forbid => true,
        Concurrency::Replace => false,
    };
    let running =
        |r: &&Run| r.task_id == task.id && r.status == RunStatus::Running && Some(&r.id) != except;
    // For this node's own runs, its own record is newer than the ledger's.
    let mut earlier: Vec<&Run> = state
        .runs
        .values()
        .map(Arc::as_ref)
        .filter(running)
        .filter(|r| r.node_id.as_deref() != Some(me) || here.iter().any(|h| h.id == r.id))
        .collect();
    // A run this node knows to be running may still be `queued` in the ledger.
    for local in here.iter().filter(running) {
        if !earlier.iter().any(|r| r.id == local.id) {
            earlier.push(local);
        }
    }
    let Some(first) = earlier.first() else {
        return Gate::Go;
    };
    if forbid {
        return Gate::Skip(format!(
            "not run: run {} is still {} (concurrency `forbid`)",
            first.id,
            first.status.as_str()
        ));
    }
    Gate::Replace(
        earlier
            .iter()
            .filter(|r| !state.stops.contains(&r.id))
            .map(|r| r.id.clone())
            .collect(),
    )
}

/// A run of `task` that does not happen, recorded with the reason.
fn closed(task: &Task, trigger: Trigger, why: String) -> Run {
    let mut run = Run::new(
        task.id.clone(),
        task.name.clone(),
        trigger,
        1,
        String::new(),
    );
    run.close(RunStatus::Skipped, why, Utc::now());
    run
}

/// Runs each node has (queued or running on it), which count against its slots, but for those
/// in `ending` (their end is on its way to the ledger). Always-tasks do not take slots.
fn busy(state: &State, ending: &HashSet<RunId>) -> HashMap<String, u32> {
    let mut busy = HashMap::new();
    let counts = |r: &&Arc<Run>| !r.status.is_final() && !ending.contains(&r.id);
    for run in state.runs.values().filter(counts) {
        let Some(node) = &run.node_id else {
            continue;
        };
        if state.tasks.get(&run.task_id).is_some_and(|t| t.is_always()) {
            continue;
        }
        *busy.entry(node.clone()).or_insert(0) += 1;
    }
    busy
}

fn assign(run: &mut Run, node: &Candidate, busy: &mut HashMap<String, u32>) {
    run.node = node.name.clone();
    run.node_id = Some(node.peer_id.clone());
    *busy.entry(node.peer_id.clone()).or_insert(0) += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, RunStatus, When};

    fn run_on(task: &Task, node: &str, status: RunStatus) -> Run {
        let mut run = Run::new(
            task.id.clone(),
            task.name.clone(),
            Trigger::Manual,
            1,
            node.into(),
        );
        run.node_id = Some(node.into());
        run.status = status;
        run
    }

    #[test]
    fn a_run_whose_end_is_on_its_way_frees_its_slot() {
        let task = Task::sample("t", "t");
        let mut daemon = Task::sample("d", "d");
        daemon.when = When::Always;
        let queued = run_on(&task, "a", RunStatus::Queued);
        let running = run_on(&task, "a", RunStatus::Running);
        let on_b = run_on(&task, "b", RunStatus::Running);
        let mut done = run_on(&task, "a", RunStatus::Running);
        done.finish(Outcome::Exited { code: 0 }, Utc::now());
        let supervised = run_on(&daemon, "a", RunStatus::Running);
        let mut state = State::default();
        for t in [&task, &daemon] {
            state.tasks.insert(t.id.clone(), Arc::new(t.clone()));
        }
        for r in [&queued, &running, &on_b, &done, &supervised] {
            state.runs.insert(r.id.clone(), Arc::new(r.clone()));
        }
        let count = |ending: &[&Run]| {
            let ending = ending.iter().map(|r| r.id.clone()).collect();
            let busy = busy(&state, &ending);
            (busy.get("a").copied(), busy.get("b").copied())
        };
        assert_eq!(count(&[]), (Some(2), Some(1)), "queued and running count");
        assert_eq!(count(&[&running]), (Some(1), Some(1)));
        assert_eq!(count(&[&running, &queued, &on_b]), (None, None));
    }
}
