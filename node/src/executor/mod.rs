//! Runs processes on this node: a slot-bounded queue, one task per process, at most one start per
//! run id, and a clean stop of everything on shutdown.
//!
//! Everything here runs on every node: the [`Executor`] actor, the [`dispatch::Dispatcher`]
//! that hands it the runs the leader committed to this node, and the [`Supervisor`] that acts
//! on ended runs (exit-code rules, always-tasks). None of it imports the scheduler: the runs
//! the supervisor's rules ask for go out as [`FollowUp`]s, which the scheduler takes in.

pub mod dispatch;
pub mod groups;
pub mod lease;
mod process;
mod reaper;
mod seen;
pub mod supervisor;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use self::seen::Seen;
use crate::events::Events;
use crate::ledger::RunLedger;
use crate::logs::LogPaths;
use crate::metrics::Metrics;
use crate::model::{ClusterSettings, NodeSettings, Run, RunId, RunStatus, Task, Trigger};

pub use groups::ProcessGroups;
pub use supervisor::{DaemonStatus, FollowUp, Supervisor};

/// An instruction to run one run of one task.
#[derive(Debug, Clone)]
pub struct RunOrder {
    pub run: Run,
    /// The task as it was when the run was made.
    pub task: Task,
    pub kill_grace: Duration,
    pub daily_logs: bool,
}

/// A run that ended, for the supervisor to act on.
#[derive(Debug)]
pub struct Finished {
    pub run: Run,
    pub task: Task,
    /// Stopped on request (user, task change, shutdown): exit rules and restarts do not apply.
    pub stopped: bool,
}

enum Msg {
    Start(Box<RunOrder>),
    Stop(RunId),
    Done(RunId),
}

/// A cloneable handle on the executor actor.
#[derive(Clone)]
pub struct ExecutorHandle {
    tx: mpsc::Sender<Msg>,
    ledger: RunLedger,
    node: watch::Receiver<NodeSettings>,
    /// This node's PeerId, recorded on the runs it makes.
    peer_id: String,
}

impl ExecutorHandle {
    /// This node's PeerId.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Makes a run of `task`, records it, and hands it to the executor.
    pub async fn launch(
        &self,
        task: &Task,
        trigger: Trigger,
        attempt: u32,
        settings: &ClusterSettings,
    ) -> Run {
        let node = self.node.borrow().name.clone();
        let mut run = Run::new(task.id.clone(), task.name.clone(), trigger, attempt, node);
        run.node_id = Some(self.peer_id.clone());
        self.ledger.record(&run).await;
        self.start(RunOrder {
            run: run.clone(),
            task: task.clone(),
            kill_grace: task.kill_grace(settings.kill_grace.0),
            daily_logs: settings.daily_logs,
        })
        .await;
        run
    }

    /// Starts the run unless this node has seen its id before.
    pub async fn start(&self, order: RunOrder) {
        let _ = self.tx.send(Msg::Start(Box::new(order))).await;
    }

    /// Stops a run: SIGTERM to its process group, SIGKILL after the grace time.
    pub async fn stop(&self, run: &RunId) {
        let _ = self.tx.send(Msg::Stop(run.clone())).await;
    }
}

struct Queued {
    order: RunOrder,
}

impl Queued {
    fn key(&self) -> (i32, std::cmp::Reverse<&RunId>) {
        (
            self.order.task.spec.priority,
            std::cmp::Reverse(&self.order.run.id),
        )
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.order.run.id == other.order.run.id
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

struct Running {
    stop: CancellationToken,
    takes_slot: bool,
}

pub struct Executor {
    inbox: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Msg>,
    ledger: RunLedger,
    logs: LogPaths,
    events: Events,
    node: watch::Receiver<NodeSettings>,
    finished: mpsc::Sender<Finished>,
    groups: ProcessGroups,
    queue: BinaryHeap<Queued>,
    running: HashMap<RunId, Running>,
    seen: Seen,
    busy_slots: u32,
    metrics: std::sync::Arc<Metrics>,
    cancel: CancellationToken,
}

/// What an executor works with.
pub struct Parts {
    pub ledger: RunLedger,
    pub logs: LogPaths,
    pub events: Events,
    pub node: watch::Receiver<NodeSettings>,
    /// This node's PeerId, recorded on the runs it makes.
    pub peer_id: String,
    /// Where ended runs go (the supervisor).
    pub finished: mpsc::Sender<Finished>,
    pub groups: ProcessGroups,
    /// Where runs started and ended, their durations and the queue are counted.
    pub metrics: std::sync::Arc<Metrics>,
}

impl Executor {
    pub fn new(parts: Parts, cancel: CancellationToken) -> (Self, ExecutorHandle) {
        let Parts {
            ledger,
            logs,
            events,
            node,
            peer_id,
            finished,
            groups,
            metrics,
        } = parts;
        let (tx, inbox) = mpsc::channel(1024);
        let handle = ExecutorHandle {
            tx: tx.clone(),
            ledger: ledger.clone(),
            node: node.clone(),
            peer_id,
        };
        let executor = Executor {
            inbox,
            tx,
            ledger,
            logs,
            events,
            node,
            finished,
            groups,
            queue: BinaryHeap::new(),
            running: HashMap::new(),
            seen: Seen::default(),
            busy_slots: 0,
            metrics,
            cancel,
        };
        (executor, handle)
    }

    pub async fn run(mut self) {
        loop {
            self.metrics
                .queue(self.queue.len(), self.node.borrow().slots, self.busy_slots);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(msg) = self.inbox.recv() => self.handle(msg).await,
                // More slots may let queued runs start.
                Ok(()) = self.node.changed() => self.start_ready(),
            }
        }
        self.shut_down().await;
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Start(order) => {
                if !self.seen.insert(&order.run.id) {
                    debug!(run_id = %order.run.id, "start repeated; already known");
                    return;
                }
                self.queue.push(Queued { order: *order });
                self.start_ready();
            }
            Msg::Stop(id) => {
                if let Some(running) = self.running.get(&id) {
                    running.stop.cancel();
                } else if let Some(q) = self.take_queued(&id) {
                    self.cancel_queued(q).await;
                }
            }
            Msg::Done(id) => {
                if let Some(done) = self.running.remove(&id) {
                    if done.takes_slot {
                        self.busy_slots -= 1;
                    }
                }
                self.start_ready();
            }
        }
    }

    fn take_queued(&mut self, id: &RunId) -> Option<Queued> {
        let mut items = std::mem::take(&mut self.queue).into_vec();
        let found = items
            .iter()
            .position(|q| q.order.run.id == *id)
            .map(|i| items.swap_remove(i));
        self.queue = items.into();
        found
    }

    async fn cancel_queued(&self, q: Queued) {
        let mut run = q.order.run;
        run.close(
            RunStatus::Killed,
            "stopped before it started".into(),
            Utc::now(),
        );
        self.ledger.record(&run).await;
    }

    /// Starts queued runs while slots are free. Always-tasks do not take slots.
    fn start_ready(&mut self) {
        let slots = self.node.borrow().slots;
        let mut waiting = Vec::new();
        while let Some(q) = self.queue.pop() {
            let takes_slot = !q.order.task.is_always();
            if takes_slot && self.busy_slots >= slots {
                waiting.push(q);
                // Higher-priority runs need a slot too; nothing below can start either, except
                // always-tasks, which keep their place in the loop.
                continue;
            }
            if takes_slot {
                self.busy_slots += 1;
            }
            self.spawn(q.order, takes_slot);
        }
        self.queue.extend(waiting);
    }

    fn spawn(&mut self, order: RunOrder, takes_slot: bool) {
        let stop = self.cancel.child_token();
        self.running.insert(
            order.run.id.clone(),
            Running {
                stop: stop.clone(),
                takes_slot,
            },
        );
        let ctx = process::Ctx {
            ledger: self.ledger.clone(),
            logs: self.logs.clone(),
            events: self.events.clone(),
            groups: self.groups.clone(),
        };
        let done = self.tx.clone();
        let finished = self.finished.clone();
        let metrics = self.metrics.clone();
        metrics.run_started(&order.run, Utc::now());
        // Every line the run's start, end and actions log carries its id and task, on every node.
        let span = tracing::info_span!("run", run = %order.run.id, task = %order.run.task_name);
        let run = async move {
            let task = order.task.clone();
            let (run, stopped) = process::execute(order, &ctx, stop).await;
            metrics.run_finished(&run);
            let id = run.id.clone();
            let ended = Finished {
                run: run.clone(),
                task,
                stopped,
            };
            if finished.send(ended).await.is_err() {
                // No supervisor (shutting down): record the outcome ourselves.
                ctx.ledger.record(&run).await;
            }
            // Only now: once the executor has seen every `Done`, every outcome is recorded or
            // with the supervisor, so shutdown can close the ledger after both.
            let _ = done.send(Msg::Done(id)).await;
        };
        tokio::spawn(tracing::Instrument::instrument(run, span));
    }

    /// Stops every process (their stop tokens are children of `cancel`) and waits for them.
    async fn shut_down(&mut self) {
        for q in std::mem::take(&mut self.queue).into_vec() {
            self.cancel_queued(q).await;
        }
        if !self.running.is_empty() {
            info!(count = self.running.len(), "stopping running processes");
        }
        while !self.running.is_empty() {
            match self.inbox.recv().await {
                Some(Msg::Done(id)) => {
                    self.running.remove(&id);
                }
                Some(_) => {}
                None => break,
            }
        }
        // Every run's group is collected: the reaper has nothing left to do.
        self.groups.close();
    }
}
