//! Turns due cron slots, `@reboot`, and run requests (Execute now, retries, exit rules) into
//! runs, and places them on the live nodes (DESIGN.md "scheduler").
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
//! What to do is decided by pure functions over the state, the live nodes and the time
//! (`decide.rs`, and [`placement`]); the actor here gathers their inputs, commits the changes
//! they return, and answers requests. A run request the cluster refuses as it is now (no node
//! fulfils the task, or `forbid`) is answered with a typed [`Refusal`]. Its queues are bounded
//! ([`INBOX`], [`FOLLOW_UPS`]), and none drops a request it accepted.
//!
//! Starting what is committed to a node is not the scheduler's work: each node's dispatcher
//! (`executor::dispatch`) does that.

mod decide;
mod forward;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::consensus::{Change, Consensus, ProposeError, State};
use crate::executor::{ExecutorHandle, FollowUp};
use crate::ledger::RunLedger;
use crate::mesh::MeshHandle;
use crate::model::{NodeSettings, Parameters, Run, RunId, Task, TaskId, Trigger, When};
use taskmesh_core::placement::{self, Candidate};

pub use decide::Refusal;
use forward::Forwarder;
pub use forward::{Answers, Forwarded};
pub use taskmesh_core::cron::{self, CatchUpPlan, Schedule, ScheduleError, catch_up};

/// How far ahead of a slot its firing is committed.
pub const LEAD: Duration = Duration::from_millis(50);
/// A slot older than this when the scheduler sees it counts as missed.
pub const LATE: Duration = Duration::from_secs(1);
/// At most this many run requests are committed in one entry.
const MAX_BATCH: usize = 256;
/// At most this many run requests wait in the scheduler's inbox. When it is full, Execute now
/// waits up to [`QUEUE_WAIT`] for room and is then answered busy (`503`), and a follower's
/// hand-over is answered busy at once; either way nothing was accepted, so nothing is lost.
pub const INBOX: usize = 1024;
/// How long Execute now waits for room in a full inbox.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// At most this many of the supervisor's follow-ups (retries, rules' runs) wait for the
/// scheduler. When full, the supervisor waits for room: a follow-up is already noted on the run
/// that asked for it, so it is never dropped.
pub const FOLLOW_UPS: usize = 256;
/// At most this many requests wait on a follower for the hand-over to the leader. When full,
/// the follower commits a request as a waiting run itself (the leader places it when it sees
/// it), as it does when the leader does not answer.
const TO_LEADER: usize = 1024;
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
    reply: Option<oneshot::Sender<Answer>>,
    /// Forwarded by another node to this one as the leader: never forwarded again.
    forwarded: bool,
    /// Parameters given for the run in place of the task's (checked against the task by who
    /// asked; the node that runs it checks them again).
    parameters: Parameters,
}

impl RunRequest {
    /// The request as the decisions see it.
    fn ask(&self) -> decide::Ask {
        decide::Ask {
            task: self.task.clone(),
            trigger: self.trigger.clone(),
            attempt: self.attempt,
            delay: self.delay,
            parameters: self.parameters.clone(),
        }
    }
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
            parameters: f.parameters,
        }
    }
}

/// Why a run request made no run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotScheduled {
    /// The cluster refuses the run as it is now (no node fulfils the task, or `forbid`).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The task does not exist (any more).
    #[error("there is no task {0}")]
    NoTask(TaskId),
    /// The run could not be committed (no quorum, or the node is shutting down).
    #[error("{0}")]
    Uncommitted(String),
    /// The scheduler's inbox stayed full: nothing was accepted.
    #[error("the scheduler is busy ({INBOX} requests are waiting); nothing was started, try again")]
    Busy,
}

impl NotScheduled {
    fn shutting_down() -> Self {
        NotScheduled::Uncommitted("the node is shutting down".into())
    }
}

/// A cloneable handle for asking the scheduler for runs.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<RunRequest>,
    /// How long a request waits for room in a full inbox ([`QUEUE_WAIT`]).
    wait: Duration,
}

/// The answer a request waits for.
type Answer = Result<Run, NotScheduled>;

impl SchedulerHandle {
    /// Asks for a run of `task` now, with `parameters` in place of the task's; answers with the
    /// run, or why there is none.
    pub async fn request(&self, task: TaskId, trigger: Trigger, parameters: Parameters) -> Answer {
        let request = Forwarded {
            task,
            trigger,
            attempt: 1,
            typed: true,
            parameters,
        };
        self.queue(request, false)
            .await?
            .await
            .map_err(|_| NotScheduled::shutting_down())?
    }

    /// The run requests another node handed to this one as the leader; answers each, in order.
    pub async fn forwarded(&self, requests: Vec<Forwarded>) -> Answers {
        let typed = requests.iter().all(|r| r.typed);
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
                    .unwrap_or_else(|_| Err(NotScheduled::shutting_down())),
                Err(e) => Err(e),
            });
        }
        Answers { answers, typed }
    }

    /// Puts a request in the scheduler's inbox; the receiver gets its answer. A full inbox
    /// answers [`NotScheduled::Busy`]: at once for a request a follower handed over (its node
    /// waits for the answer only so long), after [`QUEUE_WAIT`] for one of this node's.
    async fn queue(
        &self,
        request: Forwarded,
        forwarded: bool,
    ) -> Result<oneshot::Receiver<Answer>, NotScheduled> {
        use mpsc::error::{SendTimeoutError, TrySendError};
        let (reply, rx) = oneshot::channel();
        let request = RunRequest {
            task: request.task,
            trigger: request.trigger,
            attempt: request.attempt,
            delay: Duration::ZERO,
            reply: Some(reply),
            forwarded,
            parameters: request.parameters,
        };
        let queued = match forwarded {
            true => self.tx.try_send(request).map_err(|e| match e {
                TrySendError::Full(_) => NotScheduled::Busy,
                TrySendError::Closed(_) => NotScheduled::shutting_down(),
            }),
            false => self
                .tx
                .send_timeout(request, self.wait)
                .await
                .map_err(|e| match e {
                    SendTimeoutError::Timeout(_) => NotScheduled::Busy,
                    SendTimeoutError::Closed(_) => NotScheduled::shutting_down(),
                }),
        };
        queued.map(|()| rx)
    }
}

pub struct Scheduler {
    consensus: Consensus,
    state: watch::Receiver<Arc<State>>,
    node: watch::Receiver<NodeSettings>,
    mesh: watch::Receiver<Option<MeshHandle>>,
    /// This node's PeerId.
    peer_id: String,
    /// This start of the node (`Announcement::start`).
    start: u64,
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
    /// The peers whose process is known to be gone (see `MeshHandle::down`).
    down: Arc<std::collections::BTreeSet<String>>,
    /// This node's runs (its running ones count for concurrency before the ledger shows them).
    ledger: RunLedger,
    dispatcher_ready: watch::Receiver<bool>,
    /// This scheduler's own inbox, for requests the leader did not take.
    own: mpsc::Sender<RunRequest>,
    /// Requests for the leader, on a follower ([`TO_LEADER`] at most).
    to_leader: mpsc::Sender<RunRequest>,
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
    /// This start of the node (`Announcement::start`).
    pub start: u64,
    pub executor: ExecutorHandle,
    pub ledger: RunLedger,
    /// Becomes true once the dispatcher has settled the runs the previous start left queued.
    pub dispatcher_ready: watch::Receiver<bool>,
    /// The runs the supervisor's exit-code rules ask for (a channel of [`FOLLOW_UPS`]).
    pub follow_ups: mpsc::Receiver<FollowUp>,
}

impl Scheduler {
    pub fn new(parts: Parts, cancel: CancellationToken) -> (Self, SchedulerHandle) {
        let state = parts.consensus.subscribe();
        let ending = parts.consensus.ending().subscribe();
        let (tx, inbox) = mpsc::channel(INBOX);
        let (to_leader, forwards) = mpsc::channel(TO_LEADER);
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
            start: parts.start,
            executor: parts.executor,
            inbox,
            follow_ups: parts.follow_ups,
            ending,
            short_of_slots: false,
            schedules: HashMap::new(),
            leading_since: None,
            last_seen: HashMap::new(),
            down: Arc::default(),
            ledger: parts.ledger,
            dispatcher_ready: parts.dispatcher_ready,
            own: tx.clone(),
            to_leader,
            forwarder: Some(forwarder),
            cancel,
        };
        let handle = SchedulerHandle {
            tx,
            wait: QUEUE_WAIT,
        };
        (scheduler, handle)
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

    /// What this node knows now, for one decision: the agreed state (marked seen), the runs
    /// the leader knows to have ended, this node's unfinished runs, its name, and the time.
    fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            state: self.state.borrow_and_update().clone(),
            ending: self.consensus.ending().runs(),
            here: self.ledger.active(),
            name: self.node.borrow().name.clone(),
            now: Utc::now(),
            settling: self
                .leading_since
                .is_some_and(|since| since.elapsed() < decide::SETTLE),
        }
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

    /// The live nodes that can take runs: this node and the peers of its cluster.
    fn candidates(&mut self, state: &State) -> Vec<Candidate> {
        let this = Candidate::this_node(
            &self.peer_id,
            &self.node.borrow(),
            Some(self.start),
            crate::mesh::load_average(),
        );
        let peers = self
            .mesh
            .borrow()
            .as_ref()
            .map(|m| m.peers())
            .unwrap_or_default();
        let live = placement::live(this, &peers, state.cluster.map(|c| c.id), &state.drained);
        self.down = self
            .mesh
            .borrow()
            .as_ref()
            .map(|m| m.down())
            .unwrap_or_default();
        let now = Instant::now();
        for c in &live {
            self.last_seen.insert(c.peer_id.clone(), now);
        }
        live
    }

    /// `@reboot` tasks run on every node that fulfils them, when that node starts.
    async fn fire_reboot(&mut self) {
        let state = self.state.borrow().clone();
        if state.drained.contains(&self.peer_id) {
            info!("this node is drained: its @reboot tasks do not run");
            return;
        }
        if let Some(since) = state.cron_paused {
            info!(%since, "cron is paused: this node's @reboot tasks do not run");
            return;
        }
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

    /// Parses the schedules of the enabled cron tasks that changed, and forgets removed tasks'.
    fn refresh_schedules(&mut self, state: &State) {
        self.schedules.retain(|id, _| state.tasks.contains_key(id));
        for task in state.tasks.enabled_cron() {
            self.schedule(task);
        }
    }

    /// The nodes that have not been live for `cluster.peer_timeout`, as this leader saw them.
    fn gone(&self, state: &State, live: &[Candidate]) -> impl Fn(&str) -> bool + '_ {
        self.silent_for(live, state.settings.peer_timeout.0)
    }

    /// The nodes that have not been live for `timeout`, as this leader saw them.
    fn silent_for(&self, live: &[Candidate], timeout: Duration) -> impl Fn(&str) -> bool + '_ {
        let since = self.leading_since.unwrap_or_else(Instant::now);
        decide::gone(
            live,
            &self.last_seen,
            &self.down,
            since,
            Instant::now(),
            timeout,
        )
    }

    /// On the leader: fires every cron slot that is due, committing each with its runs
    /// ([`decide::fire_due`]), and returns when to look again.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn fire_due(&mut self, candidates: &[Candidate]) -> Option<Instant> {
        let snapshot = self.snapshot();
        self.refresh_schedules(&snapshot.state);
        let schedules = &self.schedules;
        let schedule_of = |t: &Task| {
            schedules
                .get(&t.id)
                .filter(|(version, _)| *version == t.updated_at)
                .map(|(_, s)| s)
        };
        let view = snapshot.view(candidates, &self.peer_id);
        let firing = decide::fire_due(&view, schedule_of, RunId::generate);
        log_notices(&firing.notices);
        if firing.fires.is_empty() {
            return firing.wake.map(instant_at);
        }
        self.stop_runs(firing.stops).await;
        let commits = firing
            .fires
            .into_iter()
            .map(|change| self.consensus.propose(change));
        let mut failed = false;
        for result in futures::future::join_all(commits).await {
            match result {
                Ok(()) => {}
                Err(ProposeError::Rejected(e)) => debug!(error = %e, "slot already fired"),
                Err(e) => {
                    failed = true;
                    warn!(error = %e, "could not commit a cron slot; it is tried again");
                }
            }
        }
        // The commits changed the state; the loop comes straight back to compute the next slots.
        // A commit that failed (a leader cut off from the voters is refused at once) is tried
        // again a tick later, not in a busy loop.
        Some(Instant::now() + if failed { TICK } else { Duration::ZERO })
    }

    /// On the leader: places the runs that wait for a node ([`decide::place_waiting`]).
    #[tracing::instrument(level = "debug", skip_all)]
    async fn place_waiting(&mut self, candidates: &[Candidate]) {
        let snapshot = self.snapshot();
        let placing =
            decide::place_waiting(&snapshot.view(candidates, &self.peer_id), RunId::generate);
        self.short_of_slots = placing.short_of_slots;
        self.stop_runs(placing.stops).await;
        self.commit(placing.changes, "placing waiting runs").await;
    }

    /// On the leader: gives each enabled always-task its holders ([`decide::place_daemons`]);
    /// a new holder's supervisor starts the task.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn place_daemons(&mut self, candidates: &[Candidate]) {
        let snapshot = self.snapshot();
        let state = &snapshot.state;
        // A silent holder keeps its always-tasks until its lease has surely lapsed and its
        // daemons are stopped (see `executor::lease`).
        let changes =
            decide::place_daemons(&snapshot.view(candidates, &self.peer_id), |node, task| {
                self.silent_for(candidates, state.settings.daemon_handover(task))(node)
            });
        for change in &changes {
            if let Change::Hold { task, nodes } = change {
                let name = state
                    .tasks
                    .get(task)
                    .map_or(task.0.as_str(), |t| t.name.as_str());
                info!(task = %name, ?nodes, "always-task placed");
            }
        }
        self.commit(changes, "placing always-tasks").await;
    }

    /// On the leader: runs on nodes that stopped answering become `lost`, and are retried on
    /// another node while attempts remain ([`decide::reap_lost`]).
    #[tracing::instrument(level = "debug", skip_all)]
    async fn reap_lost(&mut self, candidates: &[Candidate]) {
        if self.leading_since.is_none() {
            return;
        }
        let snapshot = self.snapshot();
        let changes = decide::reap_lost(
            &snapshot.view(candidates, &self.peer_id),
            self.gone(&snapshot.state, candidates),
            RunId::generate,
        );
        for change in &changes {
            if let Change::Runs(runs) = change {
                info!(count = runs.len(), "lost runs and their retries");
            }
        }
        self.commit(changes, "recording lost runs").await;
    }

    /// Proposes each change in turn. One that is not committed is not lost: the next pass
    /// decides it again from the state.
    #[tracing::instrument(level = "debug", skip(self, changes), fields(changes = changes.len()))]
    async fn commit(&self, changes: Vec<Change>, what: &'static str) {
        for change in changes {
            if let Err(e) = self.consensus.propose(change).await {
                warn!(error = %e, what, "not committed; decided again on the next pass");
            }
        }
    }

    /// Asks for earlier runs to stop (concurrency `replace`).
    async fn stop_runs(&self, runs: Vec<RunId>) {
        for id in runs {
            info!(run_id = %id, "stopping an earlier run (concurrency `replace`)");
            if let Err(e) = self
                .consensus
                .propose(Change::StopRun {
                    run: id,
                    at: Utc::now(),
                })
                .await
            {
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
    /// leader places once their time has come ([`decide::delayed`]), so that they outlive the
    /// node that asked.
    #[tracing::instrument(level = "debug", skip_all, fields(requests = requests.len()))]
    async fn commit_later(&mut self, requests: Vec<RunRequest>) {
        if requests.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        let asks: Vec<_> = requests.iter().map(RunRequest::ask).collect();
        let runs = decide::delayed(&snapshot.view(&[], &self.peer_id), &asks, RunId::generate);
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
            .unfinished()
            .filter(|r| r.waits_for_a_node())
            .filter_map(|r| r.not_before)
            .filter(|at| *at > now)
            .min()?;
        Some(Instant::now() + (at - now).to_std().unwrap_or_default())
    }

    /// Commits the runs of a batch of requests in one entry ([`decide::grant`]): placed at once
    /// on the leader, else waiting for the leader to place them; and answers each request.
    #[tracing::instrument(level = "debug", skip_all, fields(requests = requests.len()))]
    async fn start_requests(&mut self, requests: Vec<RunRequest>) {
        if requests.is_empty() {
            return;
        }
        let leading = self.lead();
        // A follower hands requests to the leader, which places them in one commit; those the
        // leader forwarded here, that it does not answer, or that find the hand-over queue full
        // wait in the ledger instead. Never blocks: the forwarder gives requests back to this
        // inbox, so waiting on it could wait for ourselves.
        let mut here = Vec::with_capacity(requests.len());
        for request in requests {
            if leading || request.forwarded {
                here.push(request);
                continue;
            }
            if let Err(TrySendError::Full(mut request) | TrySendError::Closed(mut request)) =
                self.to_leader.try_send(request)
            {
                request.forwarded = true;
                here.push(request);
            }
        }
        let requests = here;
        if requests.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        let candidates = self.candidates(&snapshot.state);
        let asks: Vec<_> = requests.iter().map(RunRequest::ask).collect();
        let view = snapshot.view(&candidates, &self.peer_id);
        let granting = decide::grant(&view, leading, &asks, RunId::generate);
        for (ask, answer) in asks.iter().zip(&granting.answers) {
            if let Err(e) = answer {
                debug!(task_id = %ask.task, error = %e, "run request refused");
            }
        }
        self.stop_runs(granting.stops).await;
        let committed = match granting.runs.is_empty() {
            true => Ok(()),
            false => self
                .consensus
                .propose(Change::Runs(granting.runs))
                .await
                .map_err(|e| NotScheduled::Uncommitted(e.to_string())),
        };
        for (request, answer) in requests.into_iter().zip(granting.answers) {
            let answer = match (&committed, answer) {
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, answer) => answer,
            };
            if let Some(reply) = request.reply {
                let _ = reply.send(answer);
            }
        }
    }
}

/// What one decision is made from, read at once and owned (a [`decide::View`] borrows it).
struct Snapshot {
    state: Arc<State>,
    ending: HashSet<RunId>,
    here: Vec<Run>,
    name: String,
    now: DateTime<Utc>,
    settling: bool,
}

impl Snapshot {
    fn view<'a>(&'a self, candidates: &'a [Candidate], peer_id: &'a str) -> decide::View<'a> {
        decide::View {
            state: &self.state,
            candidates,
            ending: &self.ending,
            here: &self.here,
            peer_id,
            name: &self.name,
            now: self.now,
            settling: self.settling,
        }
    }
}

fn log_notices(notices: &[decide::Notice]) {
    for notice in notices {
        match notice {
            decide::Notice::Missed { task, skipped } => {
                warn!(task = %task, skipped, "missed cron slots skipped by the catch-up policy")
            }
            decide::Notice::NoNode { task, why } => {
                warn!(task = %task, why = %why, "no node can run this task")
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(task: &str) -> Forwarded {
        Forwarded {
            task: TaskId(task.into()),
            trigger: Trigger::Manual,
            attempt: 1,
            typed: true,
            parameters: Parameters::new(),
        }
    }

    #[tokio::test]
    async fn a_full_inbox_answers_busy_and_accepts_nothing() {
        let (tx, mut inbox) = mpsc::channel(1);
        let handle = SchedulerHandle {
            tx,
            wait: Duration::from_millis(50),
        };
        // The first request fills the inbox, and nobody takes it.
        let _first = handle.queue(ask("t"), false).await.expect("room");
        let asked = Instant::now();
        let answer = handle
            .request(TaskId("t".into()), Trigger::Manual, Parameters::new())
            .await;
        assert_eq!(answer, Err(NotScheduled::Busy));
        assert!(asked.elapsed() >= Duration::from_millis(50), "it waited");
        // A follower's hand-over is answered at once.
        let answers = handle.forwarded(vec![ask("t"), ask("u")]).await.answers;
        assert_eq!(answers, [Err(NotScheduled::Busy), Err(NotScheduled::Busy)]);
        assert!(inbox.try_recv().is_ok());
        assert!(inbox.try_recv().is_err(), "nothing else was accepted");
        drop(inbox);
        let answer = handle
            .request(TaskId("t".into()), Trigger::Manual, Parameters::new())
            .await;
        assert_eq!(answer, Err(NotScheduled::shutting_down()));
    }
}
