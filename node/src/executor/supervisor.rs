//! Acts on ended runs: applies exit-code rules, and keeps always-tasks running, restarting them
//! with capped exponential backoff. Supervision is local, so daemons survive a lost leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ExecutorHandle, Finished};
use crate::consensus::{Change, Consensus, State};
use crate::events::{Event, Events};
use crate::ledger::RunLedger;
use crate::model::{
    Action, ClusterSettings, Parameters, Run, RunId, Task, TaskId, Trigger, matching_actions,
};
use crate::notify::{self, Notice, Notifier, sending_note};
use taskmesh_core::backoff::Backoff;

/// A daemon that exits sooner than this after starting counts towards a crash loop.
const QUICK_EXIT: Duration = Duration::from_secs(10);
const MAX_RESTART: Duration = Duration::from_secs(30);
/// Restart delays of a daemon that exits quickly: 50 ms, doubling, at most [`MAX_RESTART`].
const RESTARTS: Backoff = Backoff::new(Duration::from_millis(50), MAX_RESTART);
/// This many quick exits in a row make a crash loop.
const CRASH_LOOP: u32 = 5;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

pub use taskmesh_core::view::DaemonStatus;

/// A run the exit-code rules ask the scheduler for: a retry (after its backoff), or a run of
/// another task. The supervisor waits for room in the scheduler's queue rather than drop one:
/// the run that asked has already noted it.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub task: TaskId,
    pub trigger: Trigger,
    pub attempt: u32,
    /// How long to wait before it runs (a retry's backoff; zero for "run another task").
    pub delay: Duration,
    /// The parameters given to the run that asked, for its retry; none for another task's.
    pub parameters: Parameters,
}

/// One step the rules ask for after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Retry { attempt: u32, delay: Duration },
    RetriesExhausted { max: u32 },
    Notify { channel: String },
    RunTask { name: String },
    Disable,
}

/// The steps the exit-code rules ask for after `run` of `task` ended. Pure.
pub fn plan(task: &Task, run: &Run, settings: &ClusterSettings) -> Vec<Step> {
    let Some(outcome) = &run.outcome else {
        return Vec::new();
    };
    matching_actions(&task.exit_rules, outcome)
        .into_iter()
        .filter_map(|action| match action {
            // An always-task restarts anyway; a retry would start a second copy.
            Action::Retry if task.is_always() => None,
            Action::Retry if run.attempt > settings.max_retries => Some(Step::RetriesExhausted {
                max: settings.max_retries,
            }),
            Action::Retry => Some(Step::Retry {
                attempt: run.attempt + 1,
                delay: retry_delay(settings, run.attempt),
            }),
            Action::Notify { channel } => Some(Step::Notify {
                channel: channel.clone(),
            }),
            Action::Run { task } => Some(Step::RunTask { name: task.clone() }),
            Action::Disable => Some(Step::Disable),
        })
        .collect()
}

/// retry_backoff × 2^(attempt-1), capped at five minutes.
pub fn retry_delay(settings: &ClusterSettings, attempt: u32) -> Duration {
    Backoff::new(settings.retry_backoff.0, MAX_RETRY_DELAY).delay(attempt.saturating_sub(1))
}

/// Delay before restarting a daemon after `quick_exits` quick exits in a row.
pub fn restart_delay(quick_exits: u32) -> Duration {
    match quick_exits {
        0 => Duration::ZERO,
        n => RESTARTS.delay(n - 1),
    }
}

struct Daemon {
    run: Option<RunId>,
    /// The task version the running process was started from.
    version: chrono::DateTime<chrono::Utc>,
    restarts: u32,
    quick_exits: u32,
    restart_at: Option<Instant>,
}

pub struct Supervisor {
    inbox: mpsc::Receiver<Finished>,
    consensus: Consensus,
    state: watch::Receiver<Arc<State>>,
    executor: ExecutorHandle,
    ledger: RunLedger,
    follow_ups: mpsc::Sender<FollowUp>,
    status: watch::Sender<BTreeMap<TaskId, DaemonStatus>>,
    events: Events,
    notifier: Notifier,
    daemons: HashMap<TaskId, Daemon>,
    /// Whether this node holds its lease on always-tasks ([`super::lease`]).
    lease: watch::Receiver<bool>,
    cancel: CancellationToken,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inbox: mpsc::Receiver<Finished>,
        consensus: Consensus,
        executor: ExecutorHandle,
        ledger: RunLedger,
        follow_ups: mpsc::Sender<FollowUp>,
        events: Events,
        notifier: Notifier,
        lease: watch::Receiver<bool>,
        cancel: CancellationToken,
    ) -> (Self, watch::Receiver<BTreeMap<TaskId, DaemonStatus>>) {
        let (status, status_rx) = watch::channel(BTreeMap::new());
        let state = consensus.subscribe();
        let s = Supervisor {
            inbox,
            consensus,
            state,
            executor,
            ledger,
            follow_ups,
            status,
            events,
            notifier,
            daemons: HashMap::new(),
            lease,
            cancel,
        };
        (s, status_rx)
    }

    pub async fn run(mut self) {
        self.reconcile().await;
        loop {
            let next_restart = self.daemons.values().filter_map(|d| d.restart_at).min();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(finished) = self.inbox.recv() => self.on_finished(finished).await,
                Ok(()) = self.state.changed() => self.reconcile().await,
                Ok(()) = self.lease.changed() => self.reconcile().await,
                _ = sleep_until_opt(next_restart) => self.restart_due().await,
            }
        }
        // Shutting down: record the outcomes already handed over (no rules act on runs that
        // shutdown stopped); later ones are recorded by their process tasks.
        self.inbox.close();
        while let Some(finished) = self.inbox.recv().await {
            self.ledger.record(&finished.run).await;
        }
    }

    /// Starts the always-tasks this node holds (the leader places them, `State::holders`) that
    /// have no process, and stops processes whose task was removed, disabled, changed, is no
    /// longer an always-task, or moved to another node, and all of them while the node does not
    /// hold its lease.
    async fn reconcile(&mut self) {
        let state = self.state.borrow_and_update().clone();
        let leased = *self.lease.borrow_and_update();
        let me = self.executor.peer_id().to_owned();
        let wanted: HashMap<&TaskId, &Task> = state
            .tasks
            .enabled_always()
            .filter(|_| leased)
            .filter(|t| state.holders.get(&t.id).is_some_and(|h| h.contains(&me)))
            .map(|t| (&t.id, &**t))
            .collect();
        let gone: Vec<TaskId> = self
            .daemons
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(d) = self.daemons.remove(&id) {
                if let Some(run) = d.run {
                    match leased {
                        true => {
                            info!(task_id = %id, run_id = %run, "always-task removed, disabled or moved to another node; stopping it")
                        }
                        false => {
                            info!(task_id = %id, run_id = %run, "no lease on always-tasks; stopping it")
                        }
                    }
                    self.executor.stop(&run).await;
                }
            }
        }
        for (id, task) in wanted {
            match self.daemons.get(id) {
                None => {
                    self.daemons.insert(
                        id.clone(),
                        Daemon {
                            run: None,
                            version: task.updated_at,
                            restarts: 0,
                            quick_exits: 0,
                            restart_at: Some(Instant::now()),
                        },
                    );
                }
                Some(d) if d.version != task.updated_at => {
                    if let Some(run) = &d.run {
                        info!(task_id = %id, "always-task changed; restarting it");
                        self.executor.stop(run).await;
                    }
                }
                Some(_) => {}
            }
        }
        self.restart_due().await;
    }

    async fn restart_due(&mut self) {
        let now = Instant::now();
        let state = self.state.borrow().clone();
        let due: Vec<TaskId> = self
            .daemons
            .iter()
            .filter(|(_, d)| d.run.is_none() && d.restart_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(task) = state.tasks.get(&id) else {
                continue;
            };
            let Some(d) = self.daemons.get_mut(&id) else {
                continue;
            };
            let trigger = Trigger::Always {
                restart: d.restarts,
            };
            d.version = task.updated_at;
            d.restart_at = None;
            let run = self
                .executor
                .launch(task, trigger, 1, &state.settings)
                .await;
            if let Some(d) = self.daemons.get_mut(&id) {
                d.run = Some(run.id);
            }
        }
        self.publish();
    }

    async fn on_finished(&mut self, finished: Finished) {
        let Finished {
            mut run,
            task,
            stopped,
        } = finished;
        let state = self.state.borrow().clone();
        let notices = match stopped {
            false => self.apply_rules(&mut run, &task, &state).await,
            true => Vec::new(),
        };
        self.ledger.record(&run).await;
        // After the record: a delivery's outcome replaces the "sending" note in it.
        for notice in notices {
            self.notifier.notify(notice);
        }

        let Some(d) = self.daemons.get_mut(&task.id) else {
            return;
        };
        if d.run.as_ref() != Some(&run.id) {
            return;
        }
        d.run = None;
        let current = state.tasks.get(&task.id);
        if current.is_some_and(|t| t.updated_at != d.version) {
            // Stopped for a new version: start that at once, with a clean record.
            d.quick_exits = 0;
            d.restart_at = Some(Instant::now());
        } else {
            let lived = run
                .duration()
                .and_then(|d| d.to_std().ok())
                .unwrap_or_default();
            d.quick_exits = if lived < QUICK_EXIT {
                d.quick_exits + 1
            } else {
                0
            };
            d.restarts += 1;
            let delay = restart_delay(d.quick_exits);
            d.restart_at = Some(Instant::now() + delay);
            if d.quick_exits >= CRASH_LOOP {
                warn!(task = %task.name, quick_exits = d.quick_exits, delay_ms = delay.as_millis() as u64, "always-task is crash-looping");
            }
        }
        self.restart_due().await;
    }

    /// Carries out the exit-code rules for `run`, noting each step on the run; returns the
    /// notifications to send once the run is recorded.
    async fn apply_rules(&mut self, run: &mut Run, task: &Task, state: &State) -> Vec<Notice> {
        let mut notices = Vec::new();
        for step in plan(task, run, &state.settings) {
            let note = match step {
                Step::Retry { attempt, delay } => {
                    let follow_up = FollowUp {
                        task: task.id.clone(),
                        trigger: Trigger::retry_of(run),
                        attempt,
                        delay,
                        parameters: run.parameters.clone(),
                    };
                    match self.follow_ups.send(follow_up).await {
                        Ok(()) => format!(
                            "retry: attempt {attempt} in {}",
                            humantime::format_duration(delay)
                        ),
                        Err(_) => "retry: not scheduled, the node is shutting down".into(),
                    }
                }
                Step::RetriesExhausted { max } => {
                    format!("retry: no attempts left ({max} retries allowed)")
                }
                Step::Notify { channel } => match state.settings.channels.get(&channel) {
                    Some(target) => {
                        let note = sending_note(&channel, notify::kind(target));
                        notices.push(Notice {
                            channel,
                            run: run.clone(),
                        });
                        note
                    }
                    None => format!("notify {channel}: no such channel in the settings"),
                },
                Step::RunTask { name } => match state.task_by_name(&name) {
                    Some(other) => {
                        let follow_up = FollowUp {
                            task: other.id.clone(),
                            trigger: Trigger::Rule {
                                from: run.id.clone(),
                            },
                            attempt: 1,
                            delay: Duration::ZERO,
                            parameters: Parameters::new(),
                        };
                        match self.follow_ups.send(follow_up).await {
                            Ok(()) => format!("run {name}: requested"),
                            Err(_) => {
                                format!("run {name}: not requested, the node is shutting down")
                            }
                        }
                    }
                    None => format!("run {name}: there is no task called `{name}`"),
                },
                Step::Disable => {
                    match self
                        .consensus
                        .propose(Change::SetEnabled {
                            task: task.id.clone(),
                            enabled: false,
                            at: Some(chrono::Utc::now()),
                        })
                        .await
                    {
                        Ok(()) => "disable: the task is now disabled".into(),
                        Err(e) => format!("disable: failed: {e}"),
                    }
                }
            };
            run.actions.push(note);
        }
        notices
    }

    fn publish(&self) {
        let now = Instant::now();
        let status: BTreeMap<TaskId, DaemonStatus> = self
            .daemons
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    DaemonStatus {
                        run: d.run.clone(),
                        restarts: d.restarts,
                        quick_exits: d.quick_exits,
                        crash_loop: d.quick_exits >= CRASH_LOOP,
                        restart_in_ms: d
                            .restart_at
                            .map(|at| at.saturating_duration_since(now).as_millis() as u64),
                    },
                )
            })
            .collect();
        let changed = self.status.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
        if changed {
            let _ = self.events.send(Event::Supervision);
        }
    }
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
    use crate::model::{ExitRule, Outcome, When};
    use chrono::Utc;

    fn task(rules: Vec<ExitRule>, when: When) -> Task {
        Task {
            when,
            exit_rules: rules,
            ..Task::sample("t", "t")
        }
    }

    fn ended(attempt: u32, outcome: Outcome) -> Run {
        let mut run = Run::new(
            TaskId("t".into()),
            "t".into(),
            Trigger::Manual,
            attempt,
            "n".into(),
        );
        run.finish(outcome, Utc::now());
        run
    }

    fn rule(on: &str, action: Action) -> ExitRule {
        ExitRule {
            on: on.parse().expect("match"),
            action,
        }
    }

    #[test]
    fn retries_stop_at_max_retries() {
        let settings = ClusterSettings {
            max_retries: 2,
            ..Default::default()
        };
        let t = task(vec![rule("!0", Action::Retry)], When::Manual);
        let fail = Outcome::Exited { code: 1 };
        assert_eq!(
            plan(&t, &ended(1, fail.clone()), &settings),
            vec![Step::Retry {
                attempt: 2,
                delay: Duration::from_secs(1)
            }]
        );
        assert_eq!(
            plan(&t, &ended(2, fail.clone()), &settings),
            vec![Step::Retry {
                attempt: 3,
                delay: Duration::from_secs(2)
            }]
        );
        assert_eq!(
            plan(&t, &ended(3, fail), &settings),
            vec![Step::RetriesExhausted { max: 2 }]
        );
        assert!(plan(&t, &ended(1, Outcome::Exited { code: 0 }), &settings).is_empty());
    }

    #[test]
    fn always_tasks_do_not_retry_but_still_notify() {
        let t = task(
            vec![
                rule("*", Action::Retry),
                rule(
                    "signal",
                    Action::Notify {
                        channel: "ops".into(),
                    },
                ),
            ],
            When::Always,
        );
        let steps = plan(
            &t,
            &ended(1, Outcome::Signaled { signal: 9 }),
            &ClusterSettings::default(),
        );
        assert_eq!(
            steps,
            vec![Step::Notify {
                channel: "ops".into()
            }]
        );
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), Duration::from_millis(50));
        assert_eq!(restart_delay(3), Duration::from_millis(200));
        assert_eq!(restart_delay(40), MAX_RESTART);
        let s = ClusterSettings::default();
        assert_eq!(retry_delay(&s, 1), Duration::from_secs(1));
        assert_eq!(retry_delay(&s, 30), MAX_RETRY_DELAY);
    }
}
