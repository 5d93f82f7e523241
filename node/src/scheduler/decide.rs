//! The scheduler's decisions, as pure functions over what the deciding node knows: which cron
//! slots fire and with which runs, where waiting runs go, which runs are lost and retried, which
//! nodes hold each always-task, and what a run request makes. Each takes the agreed state, the
//! live nodes and the time as arguments (and new run ids from the caller), and returns the
//! changes to propose and its other effects as data. The actor in `scheduler/mod.rs` gathers
//! the inputs and acts on the outputs.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::cron::{Schedule, catch_up};
use super::placement::{self, Candidate, NoPlace};
use super::{LATE, LEAD, NotScheduled};
use crate::consensus::{Change, State};
use crate::model::{
    CatchUp, Concurrency, OnLost, Outcome, Parameters, Placement, Run, RunId, RunStatus, Task,
    TaskId, Trigger, When,
};

/// At most this many missed slots run under the `all` policy.
const CATCH_UP_CAP: usize = 100;

/// What a decision is made from.
pub struct View<'a> {
    /// The agreed state.
    pub state: &'a State,
    /// The live nodes that can take runs (this node among them).
    pub candidates: &'a [Candidate],
    /// Runs the leader knows to have ended before the state shows it (`Consensus::ending`).
    pub ending: &'a HashSet<RunId>,
    /// This node's unfinished runs by its own record (newer than the state's for this node).
    pub here: &'a [Run],
    /// This node's PeerId.
    pub peer_id: &'a str,
    /// This node's name.
    pub name: &'a str,
    pub now: DateTime<Utc>,
    /// Whether this node began to lead so recently ([`SETTLE`]) that the ends of runs on other
    /// nodes reported to the previous leader may still be on their way here.
    pub settling: bool,
}

/// How long a new leader does not take another node's run for still running when deciding a
/// `forbid` slot: long enough for a report sent to the old leader to fail and be sent here (a
/// proposal gives up after 3 s, the run reporter tries again 1 s later), with a second to spare.
pub const SETTLE: Duration = Duration::from_secs(5);
/// How often a slot put off while settling is looked at again.
const SETTLE_RECHECK: Duration = Duration::from_millis(250);

/// Something a decision found that the operator should hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Missed slots of a task that its catch-up policy does not run.
    Missed { task: String, skipped: u64 },
    /// A task's slot is due, and no live node can run it.
    NoNode { task: String, why: String },
}

/// Why a requested run does not start: an answer about the cluster as it is now, not a failure
/// (the API answers `409 Conflict`). Both can change: a node with the dependencies may join,
/// and the earlier run will end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No live node fulfils the task's dependencies: "no live node has gpu=nvidia".
    #[error("{0}")]
    NoNode(String),
    /// The task's concurrency is `forbid`, and an earlier run of it is running.
    #[error("run {run} is still running (concurrency `forbid`)")]
    StillRunning { run: RunId },
}

impl Refusal {
    /// A short name of the reason, for clients: `no_node` or `still_running`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoNode(_) => "no_node",
            Refusal::StillRunning { .. } => "still_running",
        }
    }
}

/// What firing the due cron slots comes to.
#[derive(Debug, Default)]
pub struct Firing {
    /// One `Change::Fire` for each task with a due slot: the slot with its runs.
    pub fires: Vec<Change>,
    /// Earlier runs to ask to stop first (concurrency `replace`).
    pub stops: Vec<RunId>,
    /// When to fire the next slot that is not due yet (its time less [`LEAD`]).
    pub wake: Option<DateTime<Utc>>,
    pub notices: Vec<Notice>,
}

/// Fires every cron slot that is due (or within [`LEAD`]) since the task's last fired slot. A
/// slot more than [`LATE`] in the past was missed: the task's catch-up policy decides which of
/// the missed slots run, and the others are recorded as one `skipped` run. Each slot that runs
/// passes the task's concurrency policy and is placed (`schedule_of` gives a task's parsed
/// schedule). While cron is paused nothing fires; once it is resumed, the slots it missed are
/// missed slots like any others.
pub fn fire_due<'s>(
    view: &View,
    schedule_of: impl Fn(&Task) -> Option<&'s Schedule>,
    mut new_id: impl FnMut() -> RunId,
) -> Firing {
    let (state, now) = (view.state, view.now);
    if state.cron_paused.is_some() {
        return Firing::default();
    }
    let lead = chrono::Duration::from_std(LEAD).unwrap_or_default();
    let late = chrono::Duration::from_std(LATE).unwrap_or_default();
    let mut firing = Firing::default();
    let mut busy = busy(state, view.ending);
    for task in state.tasks.enabled_cron() {
        let When::Cron {
            catch_up: policy, ..
        } = &task.when
        else {
            continue;
        };
        let baseline = state
            .last_fired
            .get(&task.id)
            .copied()
            .unwrap_or(task.updated_at)
            .max(task.updated_at);
        let Some(schedule) = schedule_of(task) else {
            continue;
        };
        let Some(next) = schedule.next_after(baseline) else {
            continue;
        };
        if next > now + lead {
            firing.wake = Some(firing.wake.map_or(next - lead, |w| w.min(next - lead)));
            continue;
        }
        let (mark, slots, skipped) = if next >= now - late {
            (next, vec![next], 0)
        } else {
            let plan = catch_up(schedule, baseline, now, *policy, CATCH_UP_CAP);
            // The newest missed slot is the plan's last run; only `none` has to look it up.
            let latest = match plan.run.last() {
                Some(slot) => *slot,
                None => catch_up(schedule, baseline, now, CatchUp::One, 1)
                    .run
                    .last()
                    .copied()
                    .unwrap_or(next),
            };
            (latest, plan.run, plan.skipped)
        };
        // A new leader does not skip a slot for another node's run that may have ended: the
        // slot waits (uncommitted) until the run's end arrives or the leader has settled.
        let unsure = view.settling
            && !slots.is_empty()
            && matches!(gate(task, state, None, view.here, view.peer_id),
                Gate::Skip(Refusal::StillRunning { ref run })
                    if state.runs.get(run).is_some_and(|r| r.node_id.as_deref() != Some(view.peer_id)));
        if unsure {
            let again = now + chrono::Duration::from_std(SETTLE_RECHECK).unwrap_or_default();
            firing.wake = Some(firing.wake.map_or(again, |w| w.min(again)));
            continue;
        }
        let mut runs = Vec::new();
        if skipped > 0 {
            firing.notices.push(Notice::Missed {
                task: task.name.clone(),
                skipped,
            });
            let none_ran = slots.is_empty();
            runs.push(skipped_record(
                view,
                task,
                mark,
                skipped,
                none_ran,
                new_id(),
            ));
        }
        for slot in slots {
            let trigger = Trigger::Cron { slot };
            match gate(task, state, None, view.here, view.peer_id) {
                Gate::Go => {}
                Gate::Skip(why) => {
                    runs.push(closed(
                        task,
                        trigger,
                        format!("not run: {why}"),
                        new_id(),
                        now,
                    ));
                    continue;
                }
                Gate::Replace(earlier) => firing.stops.extend(earlier),
            }
            let placed = place_runs(task, &trigger, 1, view, &mut busy, &mut new_id);
            match placed {
                Ok(placed) => runs.extend(placed),
                Err(why) => {
                    let note = format!("not run: {why}");
                    firing.notices.push(Notice::NoNode {
                        task: task.name.clone(),
                        why,
                    });
                    runs.push(closed(task, trigger, note, new_id(), now));
                }
            }
        }
        firing.fires.push(Change::Fire {
            task: task.id.clone(),
            slot: mark,
            runs,
        });
    }
    firing
}

/// What placing the waiting runs comes to.
#[derive(Debug, Default)]
pub struct Placing {
    /// The runs placed, and those closed because they cannot run: one `Change::Runs`, if any.
    pub changes: Vec<Change>,
    /// Earlier runs to ask to stop first (concurrency `replace`).
    pub stops: Vec<RunId>,
    /// Whether runs still wait for a free slot (then a run that ends is worth another look).
    pub short_of_slots: bool,
}

/// Places the runs that wait for a node and whose backoff is over, by task priority, then age
/// (run ids grow with time). A run the concurrency policy refuses, or that no live node can
/// take, is closed `skipped` with the reason; one that finds every matching node busy waits on.
pub fn place_waiting(view: &View, mut new_id: impl FnMut() -> RunId) -> Placing {
    let (state, now) = (view.state, view.now);
    let mut waiting: Vec<&Run> = state
        .runs
        .unfinished()
        .map(Arc::as_ref)
        .filter(|r| r.placeable(now))
        .collect();
    let mut placing = Placing::default();
    if waiting.is_empty() {
        return placing;
    }
    let priority = |r: &Run| state.tasks.get(&r.task_id).map_or(0, |t| t.spec.priority);
    waiting.sort_by(|a, b| priority(b).cmp(&priority(a)).then(a.id.cmp(&b.id)));
    let mut busy = busy(state, view.ending);
    let mut placed = Vec::new();
    for run in waiting {
        let Some(task) = state.tasks.get(&run.task_id) else {
            continue;
        };
        match gate(task, state, Some(&run.id), view.here, view.peer_id) {
            Gate::Go => {}
            Gate::Skip(why) => {
                let mut r = run.clone();
                r.close(RunStatus::Skipped, format!("not run: {why}"), now);
                placed.push(r);
                continue;
            }
            Gate::Replace(earlier) => placing.stops.extend(earlier),
        }
        match placement::place(task, view.candidates, &busy) {
            Ok(nodes) => placed.extend(spread(run, nodes, &mut busy, &mut new_id)),
            Err(NoPlace::Full) => placing.short_of_slots = true,
            Err(NoPlace::NoMatch(why)) => {
                let mut r = run.clone();
                r.close(RunStatus::Skipped, format!("not run: {why}"), now);
                placed.push(r);
            }
        }
    }
    if !placed.is_empty() {
        placing.changes.push(Change::Runs(placed));
    }
    placing
}

/// Which nodes are gone: not live now, and either known to be `down` (their process is gone:
/// the connection closed and a dial was refused) or not seen live by this leader for `timeout`
/// (a node it never saw counts from `since`, when it began to lead).
pub fn gone<'a>(
    live: &[Candidate],
    last_seen: &'a HashMap<String, Instant>,
    down: &'a BTreeSet<String>,
    since: Instant,
    now: Instant,
    timeout: Duration,
) -> impl Fn(&str) -> bool + use<'a> {
    let live: HashSet<String> = live.iter().map(|c| c.peer_id.clone()).collect();
    move |peer: &str| {
        !live.contains(peer)
            && (down.contains(peer)
                || now - last_seen.get(peer).copied().unwrap_or(since) > timeout)
    }
}

/// Unfinished runs on nodes that are `gone` (never this node) become `lost`. Every lost run
/// not yet retried (also one a restarted node reported lost itself) gets a retry, waiting for
/// a place, while its attempt does not exceed `max_retries`; an always-task's run does not (its
/// holder is replaced instead). One `Change::Runs` with both, if any.
pub fn reap_lost(
    view: &View,
    gone: impl Fn(&str) -> bool,
    mut new_id: impl FnMut() -> RunId,
) -> Vec<Change> {
    let (state, now) = (view.state, view.now);
    let mut changes = Vec::new();
    // An unfinished run has no retry yet (only a lost one gets one).
    let candidates = state.runs.unfinished().chain(state.runs.lost_unretried());
    for run in candidates {
        // Copied only when it changes: this runs on every change of the state.
        let mut run = Cow::Borrowed(run.as_ref());
        let on_dead_node = !run.status.is_final()
            && run
                .node_id
                .as_deref()
                .is_some_and(|p| p != view.peer_id && gone(p));
        if on_dead_node {
            let lost = run.to_mut();
            lost.finish(Outcome::Lost, now);
            lost.actions.push(format!(
                "node {} stopped answering while the run was unfinished",
                lost.node
            ));
            changes.push(lost.clone());
        }
        if run.status != RunStatus::Lost {
            continue;
        }
        let Some(task) = state.tasks.get(&run.task_id) else {
            continue;
        };
        if run.attempt > state.settings.max_retries || task.is_always() {
            continue;
        }
        if task.spec.on_lost == OnLost::Skip {
            if let Some(last) = changes.last_mut().filter(|r| r.id == run.id) {
                last.actions
                    .push("not retried: the task says on_lost: skip".into());
            }
            continue;
        }
        let trigger = Trigger::retry_of(&run);
        let mut retry = new_run(task, trigger, run.attempt + 1, new_id(), now);
        retry.parameters.clone_from(&run.parameters);
        retry.actions.push(format!("retry of lost run {}", run.id));
        if let Some(last) = changes.last_mut().filter(|r| r.id == run.id) {
            last.actions.push(format!("retried as {}", retry.id));
        }
        changes.push(retry);
    }
    match changes.is_empty() {
        true => Vec::new(),
        false => vec![Change::Runs(changes)],
    }
}

/// Gives each enabled always-task its holders: one live matching node (the same one while it is
/// not `gone` or drained), or every matching node for placement `all` (and the holders not gone
/// yet, unless drained). A task that is no longer an enabled always-task loses its holders. One
/// `Change::Hold` for each task whose holders change.
///
/// A task with placement `one` gets a new holder only once no instance of it runs anywhere that
/// is not `gone`: a holder it was taken from (drained, or the task disabled and enabled again)
/// first stops its daemon and reports the run ended, so two never run at once. `gone(node,
/// task)` says whether a node has been silent long enough to give `task` away (its kill grace
/// counts).
pub fn place_daemons(view: &View, gone: impl Fn(&str, &Task) -> bool) -> Vec<Change> {
    let (state, candidates) = (view.state, view.candidates);
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
    for task in state.tasks.enabled_always() {
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
        // Holders that are still around keep the task (no restart for a missed announcement),
        // unless an operator drained them.
        let staying: Vec<String> = held
            .iter()
            .filter(|h| !gone(h, task) && !state.drained.contains(*h))
            .cloned()
            .collect();
        let mut nodes = match task.placement {
            Placement::All => {
                let mut all = matching.clone();
                all.extend(staying.into_iter().filter(|h| !matching.contains(h)));
                all
            }
            Placement::One => match staying.into_iter().next() {
                Some(holder) => vec![holder],
                None if still_running(view, &task.id, |node| gone(node, task)) => Vec::new(),
                None => placement::place(task, candidates, &HashMap::new())
                    .map(|c| vec![c[0].peer_id.clone()])
                    .unwrap_or_default(),
            },
        };
        nodes.sort();
        if nodes != held {
            changes.push(Change::Hold {
                task: task.id.clone(),
                nodes,
            });
        }
    }
    changes
}

/// Whether a run of `task` is still unfinished on a node that is not `gone`, as far as the
/// ledger and the runs the leader knows to have ended tell.
fn still_running(view: &View, task: &TaskId, gone: impl Fn(&str) -> bool) -> bool {
    view.state.runs.of_task(task).any(|run| {
        !run.status.is_final()
            && !view.ending.contains(&run.id)
            && run.node_id.as_deref().is_some_and(|node| !gone(node))
    })
}

/// A request for a run of a task, as the decisions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub task: TaskId,
    pub trigger: Trigger,
    pub attempt: u32,
    /// How long to wait before it runs (a retry's backoff).
    pub delay: Duration,
    /// Parameters given for the run in place of the task's; every run the request makes
    /// carries them.
    pub parameters: Parameters,
}

/// What a batch of run requests comes to.
#[derive(Debug, Default)]
pub struct Granting {
    /// For each request, in order: the first run it made, or why it made none.
    pub answers: Vec<Result<Run, NotScheduled>>,
    /// Every run they made, to commit in one `Change::Runs`.
    pub runs: Vec<Run>,
    /// Earlier runs to ask to stop first (concurrency `replace`; only a leader stops them, a
    /// follower leaves it to the leader, which sees the same policy when it places the run).
    pub stops: Vec<RunId>,
}

/// The runs a batch of requests makes: placed at once on the leader (`leading`), else one run
/// per request that waits for the leader to place it. A request makes none when its task is
/// gone, or is refused ([`Refusal`]) when no live node fulfils the task's dependencies or its
/// concurrency policy says no; a refused request of a rule (not Execute now) is recorded as a
/// `skipped` run.
pub fn grant(
    view: &View,
    leading: bool,
    asks: &[Ask],
    mut new_id: impl FnMut() -> RunId,
) -> Granting {
    let state = view.state;
    let mut busy = busy(state, view.ending);
    let mut granting = Granting::default();
    for ask in asks {
        let Some(task) = state.tasks.get(&ask.task) else {
            granting
                .answers
                .push(Err(NotScheduled::NoTask(ask.task.clone())));
            continue;
        };
        let answer = match runs_for_ask(task, ask, view, leading, &mut busy, &mut new_id) {
            Ok((mut first, mut runs, stops)) => {
                if leading {
                    granting.stops.extend(stops);
                }
                for run in runs.iter_mut().chain([&mut first]) {
                    run.parameters.clone_from(&ask.parameters);
                }
                granting.runs.extend(runs);
                Ok(first)
            }
            Err(why) => {
                // A run an exit-code rule asked for has nobody to be told: like a cron slot's,
                // it is recorded `skipped`, saying why. Execute now is answered instead.
                if ask.trigger != Trigger::Manual {
                    let note = format!("not run: {why}");
                    let mut run =
                        new_run(task, ask.trigger.clone(), ask.attempt, new_id(), view.now);
                    run.parameters.clone_from(&ask.parameters);
                    run.close(RunStatus::Skipped, note, view.now);
                    granting.runs.push(run);
                }
                Err(NotScheduled::Refused(why))
            }
        };
        granting.answers.push(answer);
    }
    granting
}

/// The runs one request makes (the first of them, which answers the request, and all) and the
/// earlier runs it stops, or why it makes none.
fn runs_for_ask(
    task: &Task,
    ask: &Ask,
    view: &View,
    leading: bool,
    busy: &mut HashMap<String, u32>,
    new_id: &mut impl FnMut() -> RunId,
) -> Result<(Run, Vec<Run>, Vec<RunId>), Refusal> {
    if let Err(NoPlace::NoMatch(why)) = placement::place(task, view.candidates, busy) {
        return Err(Refusal::NoNode(why));
    }
    let stops = match gate(task, view.state, None, view.here, view.peer_id) {
        Gate::Go => Vec::new(),
        Gate::Skip(why) => return Err(why),
        Gate::Replace(earlier) => earlier,
    };
    let runs = match leading {
        true => place_runs(task, &ask.trigger, ask.attempt, view, busy, new_id)
            .map_err(Refusal::NoNode)?,
        false => vec![new_run(
            task,
            ask.trigger.clone(),
            ask.attempt,
            new_id(),
            view.now,
        )],
    };
    // `place_runs` makes at least one run.
    Ok((runs[0].clone(), runs, stops))
}

/// Runs for requests with a delay (a retry's backoff): each waits for a place until `now` plus
/// its delay, when the leader places it. Requests for tasks that are gone make none.
pub fn delayed(view: &View, asks: &[Ask], mut new_id: impl FnMut() -> RunId) -> Vec<Run> {
    let mut runs = Vec::new();
    for ask in asks {
        let Some(task) = view.state.tasks.get(&ask.task) else {
            continue;
        };
        let mut run = new_run(task, ask.trigger.clone(), ask.attempt, new_id(), view.now);
        run.parameters.clone_from(&ask.parameters);
        let at = view.now + chrono::Duration::from_std(ask.delay).unwrap_or_default();
        run.not_before = Some(at);
        run.actions.push(format!(
            "waits until {} before it runs",
            at.format("%H:%M:%S%.3f UTC")
        ));
        runs.push(run);
    }
    runs
}

/// What the task's concurrency policy says about a new run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    Go,
    /// It does not run, for this reason.
    Skip(Refusal),
    /// It runs once these earlier runs are asked to stop.
    Replace(Vec<RunId>),
}

/// The concurrency policy of `task` against its running runs (other than `except`, the run
/// being placed): those the run ledger shows running on other nodes, and those running on this
/// node by its own record (`here`: the ledger learns of starts and ends a few milliseconds
/// later). As Nomad's `prohibit_overlap`, only runs with a process count: a run still waiting
/// for its start does not hold back the next (a lost run's retry does not block the catch-up of
/// the slots after it). Always-tasks are supervised per holder and pass.
pub(super) fn gate(
    task: &Task,
    state: &State,
    except: Option<&RunId>,
    here: &[Run],
    me: &str,
) -> Gate {
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
        .of_task(&task.id)
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
        return Gate::Skip(Refusal::StillRunning {
            run: first.id.clone(),
        });
    }
    Gate::Replace(
        earlier
            .iter()
            .filter(|r| !state.stops.contains(&r.id))
            .map(|r| r.id.clone())
            .collect(),
    )
}

/// The runs one trigger of `task` makes (at least one): placed on nodes (one run per matching
/// node for placement `all`), or one run waiting for a free slot (no node yet); or why no live
/// node can take it.
fn place_runs(
    task: &Task,
    trigger: &Trigger,
    attempt: u32,
    view: &View,
    busy: &mut HashMap<String, u32>,
    new_id: &mut impl FnMut() -> RunId,
) -> Result<Vec<Run>, String> {
    let nodes = match placement::place(task, view.candidates, busy) {
        Ok(nodes) => nodes,
        Err(NoPlace::NoMatch(why)) => return Err(why),
        Err(NoPlace::Full) => Vec::new(),
    };
    let run = new_run(task, trigger.clone(), attempt, new_id(), view.now);
    match nodes.is_empty() {
        true => Ok(vec![run]),
        false => Ok(spread(&run, nodes, busy, new_id)),
    }
}

/// `run` on each of `nodes`: the run itself on the first, a copy with a new id on each other
/// (placement `all`); each counts against its node's slots.
fn spread(
    run: &Run,
    nodes: Vec<&Candidate>,
    busy: &mut HashMap<String, u32>,
    new_id: &mut impl FnMut() -> RunId,
) -> Vec<Run> {
    let mut runs = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.into_iter().enumerate() {
        let mut r = run.clone();
        if i > 0 {
            r.id = new_id();
        }
        r.node = node.name.clone();
        r.node_id = Some(node.peer_id.clone());
        r.node_start = node.start;
        *busy.entry(node.peer_id.clone()).or_insert(0) += 1;
        runs.push(r);
    }
    runs
}

/// A new run of `task`, waiting for a place.
fn new_run(task: &Task, trigger: Trigger, attempt: u32, id: RunId, now: DateTime<Utc>) -> Run {
    let mut run = Run::new(
        task.id.clone(),
        task.name.clone(),
        trigger,
        attempt,
        String::new(),
    );
    run.id = id;
    run.created_at = now;
    run
}

/// A run of `task` that does not happen, recorded with the reason.
fn closed(task: &Task, trigger: Trigger, why: String, id: RunId, now: DateTime<Utc>) -> Run {
    let mut run = new_run(task, trigger, 1, id, now);
    run.close(RunStatus::Skipped, why, now);
    run
}

/// The `skipped` run that records the missed slots of `task` up to `latest` that its catch-up
/// policy does not run (recorded by the deciding node).
fn skipped_record(
    view: &View,
    task: &Task,
    latest: DateTime<Utc>,
    skipped: u64,
    none_ran: bool,
    id: RunId,
) -> Run {
    let mut run = new_run(task, Trigger::Cron { slot: latest }, 1, id, view.now);
    run.node = view.name.to_owned();
    run.node_id = Some(view.peer_id.to_owned());
    let policy = match &task.when {
        When::Cron { catch_up, .. } => format!("{catch_up:?}").to_lowercase(),
        _ => String::new(),
    };
    let note = format!(
        "{skipped} missed slot(s) up to {} not run (catch-up policy `{policy}`){}",
        latest.format("%Y-%m-%d %H:%M:%S UTC"),
        if none_ran { "" } else { "; the latest one ran" }
    );
    run.close(RunStatus::Skipped, note, view.now);
    run
}

/// Runs each node has (queued or running on it), which count against its slots, but for those
/// in `ending` (their end is on its way to the ledger). Always-tasks do not take slots.
pub(super) fn busy(state: &State, ending: &HashSet<RunId>) -> HashMap<String, u32> {
    let mut busy = HashMap::new();
    let counts = |r: &&Arc<Run>| !r.status.is_final() && !ending.contains(&r.id);
    for run in state.runs.unfinished().filter(counts) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Spec, Task};
    use chrono::{NaiveTime, TimeZone};

    /// `hh:mm:ss[.fff]` on one fixed day, UTC.
    fn at(time: &str) -> DateTime<Utc> {
        let t = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").expect("a time");
        Utc.with_ymd_and_hms(2025, 1, 6, 0, 0, 0).unwrap() + (t - NaiveTime::MIN)
    }

    fn task(id: &str, when: When) -> Task {
        Task {
            id: TaskId(id.into()),
            name: id.into(),
            description: String::new(),
            labels: Vec::new(),
            spec: Spec {
                shell: Some("true".into()),
                ..Default::default()
            },
            when,
            placement: Placement::One,
            exit_rules: vec![],
            enabled: true,
            updated_at: at("09:00:00"),
        }
    }

    fn cron(id: &str, policy: CatchUp) -> Task {
        task(
            id,
            When::Cron {
                schedule: "* * * * *".into(),
                timezone: "UTC".into(),
                catch_up: policy,
            },
        )
    }

    fn with(mut t: Task, change: impl FnOnce(&mut Task)) -> Task {
        change(&mut t);
        t
    }

    /// The start every test node announces.
    const START: u64 = 1_764_000_000_000_000;

    fn node(id: &str, deps: &[&str], slots: u32) -> Candidate {
        Candidate {
            peer_id: id.into(),
            name: format!("node-{id}"),
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
            slots,
            load: 0.0,
            start: Some(START),
            drained: false,
        }
    }

    fn run(id: &str, task: &Task, status: RunStatus, node: Option<&str>) -> Run {
        let mut run = new_run(task, Trigger::Manual, 1, RunId(id.into()), at("08:00:00"));
        run.status = status;
        run.node_id = node.map(str::to_owned);
        run.node = node.map(|n| format!("node-{n}")).unwrap_or_default();
        run
    }

    /// Run ids `r1`, `r2`, … in the order they are asked for.
    fn ids() -> impl FnMut() -> RunId {
        let mut n = 0;
        move || {
            n += 1;
            RunId(format!("r{n}"))
        }
    }

    /// What a decision sees: this node is `a`; nodes `a` and `b` (4 slots each) are live.
    struct World {
        state: State,
        nodes: Vec<Candidate>,
        here: Vec<Run>,
        ending: HashSet<RunId>,
    }

    impl World {
        fn new(tasks: impl IntoIterator<Item = Task>, runs: &[Run]) -> Self {
            let mut state = State::default();
            for t in tasks {
                state.tasks.insert(Arc::new(t));
            }
            for r in runs {
                state.runs.insert(Arc::new(r.clone()));
            }
            World {
                state,
                nodes: vec![node("a", &[], 4), node("b", &[], 4)],
                here: Vec::new(),
                ending: HashSet::new(),
            }
        }

        fn view(&self, now: DateTime<Utc>) -> View<'_> {
            View {
                state: &self.state,
                candidates: &self.nodes,
                ending: &self.ending,
                here: &self.here,
                peer_id: "a",
                name: "node-a",
                now,
                settling: false,
            }
        }
    }

    fn brief_run(r: &Run) -> String {
        let trigger = match &r.trigger {
            Trigger::Cron { slot } => format!("cron {}", slot.format("%H:%M:%S")),
            Trigger::Retry { of, .. } => format!("retry of {of}"),
            other => other.to_string(),
        };
        let node = r.node_id.as_deref().unwrap_or("-");
        let mut text = format!("{} {trigger} {} on {node}", r.id, r.status);
        if r.attempt > 1 {
            text.push_str(&format!(" attempt {}", r.attempt));
        }
        if let Some(at) = r.not_before {
            text.push_str(&format!(" not before {}", at.format("%H:%M:%S")));
        }
        if !r.actions.is_empty() {
            text.push_str(&format!(" ({})", r.actions.join("; ")));
        }
        text
    }

    /// A change in one line: `fire <task> <slot>: <run> | <run>`, `runs: …`, `hold <task>: …`.
    fn brief(change: &Change) -> String {
        let runs = |runs: &[Run]| runs.iter().map(brief_run).collect::<Vec<_>>().join(" | ");
        match change {
            Change::Fire {
                task,
                slot,
                runs: r,
            } => {
                format!("fire {} {}: {}", task.0, slot.format("%H:%M:%S"), runs(r))
            }
            Change::Runs(r) => format!("runs: {}", runs(r)),
            Change::Hold { task, nodes } => format!("hold {}: [{}]", task.0, nodes.join(",")),
            other => format!("{other:?}"),
        }
    }

    fn briefs(changes: &[Change]) -> Vec<String> {
        changes.iter().map(brief).collect()
    }

    fn ids_of(runs: &[RunId]) -> Vec<String> {
        runs.iter().map(|r| r.0.clone()).collect()
    }

    #[test]
    fn due_slots_fire_with_their_runs() {
        let t = cron("t", CatchUp::One);
        let running_x = || run("x", &t, RunStatus::Running, Some("b"));
        struct Case {
            name: &'static str,
            world: World,
            now: &'static str,
            fires: Vec<&'static str>,
            stops: Vec<&'static str>,
            wake: Option<&'static str>,
        }
        let world = |tasks: Vec<Task>, runs: &[Run]| World::new(tasks, runs);
        let cases = vec![
            Case {
                name: "a due slot fires, placed on the node with the most free slots, then the lower PeerId",
                world: world(vec![t.clone()], &[]),
                now: "09:01:00",
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on a"],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "a slot is committed LEAD ahead of its time",
                world: world(vec![t.clone()], &[]),
                now: "09:00:59.960",
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on a"],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "a slot further ahead is woken for LEAD before it",
                world: world(vec![t.clone()], &[]),
                now: "09:00:30",
                fires: vec![],
                stops: vec![],
                wake: Some("09:00:59.950"),
            },
            Case {
                name: "a slot fired already does not fire again",
                world: {
                    let mut w = world(vec![t.clone()], &[]);
                    w.state.last_fired.insert(t.id.clone(), at("09:01:00"));
                    w
                },
                now: "09:01:00.500",
                fires: vec![],
                stops: vec![],
                wake: Some("09:01:59.950"),
            },
            Case {
                name: "a disabled task does not fire",
                world: world(vec![with(t.clone(), |t| t.enabled = false)], &[]),
                now: "09:01:00",
                fires: vec![],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "missed slots under `one`: the latest runs, the others are recorded skipped",
                world: world(vec![t.clone()], &[]),
                now: "09:05:30",
                fires: vec![
                    "fire t 09:05:00: r1 cron 09:05:00 skipped on a (4 missed slot(s) up to \
                     2025-01-06 09:05:00 UTC not run (catch-up policy `one`); the latest one ran) \
                     | r2 cron 09:05:00 queued on a",
                ],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "missed slots under `all`: each runs, spread by free slots",
                world: world(vec![cron("t", CatchUp::All)], &[]),
                now: "09:03:30",
                fires: vec![
                    "fire t 09:03:00: r1 cron 09:01:00 queued on a | r2 cron 09:02:00 queued on b \
                     | r3 cron 09:03:00 queued on a",
                ],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "missed slots under `none`: none runs, all are recorded skipped",
                world: world(vec![cron("t", CatchUp::None)], &[]),
                now: "09:03:30",
                fires: vec![
                    "fire t 09:03:00: r1 cron 09:03:00 skipped on a (3 missed slot(s) up to \
                     2025-01-06 09:03:00 UTC not run (catch-up policy `none`))",
                ],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "no live node fulfils the task: the slot fires with a skipped run saying why",
                world: world(
                    vec![with(t.clone(), |t| {
                        t.spec.dependencies = vec!["gpu=amd".into()]
                    })],
                    &[],
                ),
                now: "09:01:00",
                fires: vec![
                    "fire t 09:01:00: r1 cron 09:01:00 skipped on - (not run: no live node has gpu=amd)",
                ],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "forbid while a run is running: skipped, naming the run",
                world: world(vec![t.clone()], &[running_x()]),
                now: "09:01:00",
                fires: vec![
                    "fire t 09:01:00: r1 cron 09:01:00 skipped on - (not run: run x is still \
                     running (concurrency `forbid`))",
                ],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "a queued run does not hold back the next under forbid",
                world: world(
                    vec![t.clone()],
                    &[run("x", &t, RunStatus::Queued, Some("b"))],
                ),
                now: "09:01:00",
                // b has one run, so a has more free slots.
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on a"],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "this node's own record counts before the ledger's",
                world: {
                    let mut w = world(
                        vec![t.clone()],
                        &[run("x", &t, RunStatus::Queued, Some("a"))],
                    );
                    w.here = vec![run("x", &t, RunStatus::Running, Some("a"))];
                    w
                },
                now: "09:01:00",
                fires: vec![
                    "fire t 09:01:00: r1 cron 09:01:00 skipped on - (not run: run x is still \
                     running (concurrency `forbid`))",
                ],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "replace stops the earlier run and runs",
                world: world(
                    vec![with(t.clone(), |t| {
                        t.spec.concurrency = Concurrency::Replace
                    })],
                    &[running_x()],
                ),
                now: "09:01:00",
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on a"],
                stops: vec!["x"],
                wake: None,
            },
            Case {
                name: "allow runs alongside",
                world: world(
                    vec![with(t.clone(), |t| t.spec.concurrency = Concurrency::Allow)],
                    &[running_x()],
                ),
                now: "09:01:00",
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on a"],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "every matching node is busy: the run waits for a slot",
                world: {
                    let other = task("o", When::Manual);
                    let mut w = world(
                        vec![t.clone(), other.clone()],
                        &[
                            run("o1", &other, RunStatus::Running, Some("a")),
                            run("o2", &other, RunStatus::Queued, Some("b")),
                        ],
                    );
                    w.nodes = vec![node("a", &[], 1), node("b", &[], 1)];
                    w
                },
                now: "09:01:00",
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on -"],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "a run whose end is on its way frees its slot",
                world: {
                    let other = task("o", When::Manual);
                    let mut w = world(
                        vec![t.clone(), other.clone()],
                        &[run("o1", &other, RunStatus::Running, Some("a"))],
                    );
                    w.nodes = vec![node("a", &[], 1)];
                    w.ending = HashSet::from([RunId("o1".into())]);
                    w
                },
                now: "09:01:00",
                fires: vec!["fire t 09:01:00: r1 cron 09:01:00 queued on a"],
                stops: vec![],
                wake: None,
            },
            Case {
                name: "placement all: one run on each matching node",
                world: world(vec![with(t.clone(), |t| t.placement = Placement::All)], &[]),
                now: "09:01:00",
                fires: vec![
                    "fire t 09:01:00: r1 cron 09:01:00 queued on a | r2 cron 09:01:00 queued on b",
                ],
                stops: vec![],
                wake: None,
            },
        ];
        for case in cases {
            let schedules: HashMap<TaskId, Schedule> = case
                .world
                .state
                .tasks
                .values()
                .filter_map(|t| match &t.when {
                    When::Cron {
                        schedule, timezone, ..
                    } => Some((t.id.clone(), Schedule::parse(schedule, timezone).ok()?)),
                    _ => None,
                })
                .collect();
            let firing = fire_due(
                &case.world.view(at(case.now)),
                |t| schedules.get(&t.id),
                ids(),
            );
            assert_eq!(briefs(&firing.fires), case.fires, "{}", case.name);
            assert_eq!(ids_of(&firing.stops), case.stops, "{}", case.name);
            let wake = firing.fires.is_empty().then_some(firing.wake).flatten();
            assert_eq!(wake, case.wake.map(at), "{}", case.name);
        }
    }

    #[test]
    fn a_new_leader_puts_off_a_forbid_slot_that_another_nodes_run_may_have_ended() {
        let t = cron("t", CatchUp::One);
        let schedule = Schedule::parse("* * * * *", "UTC").expect("schedule");
        let fire = |runs: &[Run], settling: bool| {
            let mut world = World::new(vec![t.clone()], runs);
            world.here = runs
                .iter()
                .filter(|r| r.node_id.as_deref() == Some("a"))
                .cloned()
                .collect();
            let view = View {
                settling,
                ..world.view(at("09:01:00"))
            };
            let firing = fire_due(&view, |_| Some(&schedule), ids());
            (briefs(&firing.fires), firing.wake)
        };
        let on_b = run("x", &t, RunStatus::Running, Some("b"));
        // Settling: no decision yet, looked at again shortly.
        assert_eq!(
            fire(std::slice::from_ref(&on_b), true),
            (vec![], Some(at("09:01:00.250")))
        );
        // Settled: the run counts as running, the slot is skipped.
        let (fires, _) = fire(std::slice::from_ref(&on_b), false);
        assert_eq!(fires.len(), 1);
        assert!(fires[0].contains("skipped"), "{fires:?}");
        // This node's own runs are known here (its own record): no reason to wait.
        let (fires, _) = fire(&[run("x", &t, RunStatus::Running, Some("a"))], true);
        assert!(
            fires.len() == 1 && fires[0].contains("skipped"),
            "{fires:?}"
        );
    }

    #[test]
    fn a_slot_no_node_can_run_and_missed_slots_are_told() {
        let t = with(cron("t", CatchUp::One), |t| {
            t.spec.dependencies = vec!["gpu=amd".into()]
        });
        let world = World::new([t.clone()], &[]);
        let schedule = Schedule::parse("* * * * *", "UTC").expect("schedule");
        let firing = fire_due(&world.view(at("09:03:30")), |_| Some(&schedule), ids());
        assert_eq!(
            firing.notices,
            vec![
                Notice::Missed {
                    task: "t".into(),
                    skipped: 2
                },
                Notice::NoNode {
                    task: "t".into(),
                    why: "no live node has gpu=amd".into()
                },
            ]
        );
    }

    #[test]
    fn nothing_fires_while_cron_is_paused_and_the_missed_slots_follow_the_policy_after() {
        let t = cron("t", CatchUp::One);
        let mut world = World::new([t.clone()], &[]);
        world.state.cron_paused = Some(at("09:00:30"));
        let schedule = Schedule::parse("* * * * *", "UTC").expect("schedule");
        let paused = fire_due(&world.view(at("09:03:30")), |_| Some(&schedule), ids());
        assert!(paused.fires.is_empty(), "{:?}", briefs(&paused.fires));
        assert_eq!(paused.wake, None);
        world.state.cron_paused = None;
        let resumed = fire_due(&world.view(at("09:03:30")), |_| Some(&schedule), ids());
        assert_eq!(
            resumed.notices,
            vec![Notice::Missed {
                task: "t".into(),
                skipped: 2
            }]
        );
        assert_eq!(resumed.fires.len(), 1, "{:?}", briefs(&resumed.fires));
    }

    #[test]
    fn waiting_runs_are_placed_by_priority_then_age() {
        let low = task("low", When::Manual);
        let high = with(task("high", When::Manual), |t| t.spec.priority = 5);
        let waiting = |id: &str, t: &Task| run(id, t, RunStatus::Queued, None);
        struct Case {
            name: &'static str,
            world: World,
            changes: Vec<&'static str>,
            stops: Vec<&'static str>,
            short_of_slots: bool,
        }
        let world = |tasks: Vec<Task>, runs: &[Run]| World::new(tasks, runs);
        let one_slot = |mut w: World| {
            w.nodes = vec![node("a", &[], 1)];
            w
        };
        let cases = vec![
            Case {
                name: "a waiting run is placed",
                world: world(vec![low.clone()], &[waiting("w", &low)]),
                changes: vec!["runs: w manual queued on a"],
                stops: vec![],
                short_of_slots: false,
            },
            Case {
                name: "nothing waits: nothing to do",
                world: world(
                    vec![low.clone()],
                    &[run("w", &low, RunStatus::Running, Some("b"))],
                ),
                changes: vec![],
                stops: vec![],
                short_of_slots: false,
            },
            Case {
                name: "one slot: the higher priority goes first, the other waits on",
                world: one_slot(world(
                    vec![low.clone(), high.clone()],
                    &[waiting("w1", &low), waiting("w2", &high)],
                )),
                changes: vec!["runs: w2 manual queued on a"],
                stops: vec![],
                short_of_slots: true,
            },
            Case {
                name: "one slot, the same priority: the older (lower id) goes first",
                world: one_slot(world(
                    vec![low.clone()],
                    &[waiting("w2", &low), waiting("w1", &low)],
                )),
                changes: vec!["runs: w1 manual queued on a"],
                stops: vec![],
                short_of_slots: true,
            },
            Case {
                name: "a run in its backoff waits",
                world: world(
                    vec![low.clone()],
                    &[with_run(waiting("w", &low), |r| {
                        r.not_before = Some(at("09:00:01"))
                    })],
                ),
                changes: vec![],
                stops: vec![],
                short_of_slots: false,
            },
            Case {
                name: "a run whose backoff is over is placed",
                world: world(
                    vec![low.clone()],
                    &[with_run(waiting("w", &low), |r| {
                        r.not_before = Some(at("08:59:59"))
                    })],
                ),
                changes: vec!["runs: w manual queued on a not before 08:59:59"],
                stops: vec![],
                short_of_slots: false,
            },
            Case {
                name: "forbid while a run is running: closed, saying why",
                world: world(
                    vec![low.clone()],
                    &[
                        waiting("w", &low),
                        run("x", &low, RunStatus::Running, Some("b")),
                    ],
                ),
                changes: vec![
                    "runs: w manual skipped on - (not run: run x is still running (concurrency \
                     `forbid`))",
                ],
                stops: vec![],
                short_of_slots: false,
            },
            Case {
                name: "replace: the earlier run is stopped, the waiting one placed",
                world: {
                    let t = with(low.clone(), |t| t.spec.concurrency = Concurrency::Replace);
                    world(
                        vec![t.clone()],
                        &[
                            waiting("w", &t),
                            run("x", &t, RunStatus::Running, Some("b")),
                        ],
                    )
                },
                changes: vec!["runs: w manual queued on a"],
                stops: vec!["x"],
                short_of_slots: false,
            },
            Case {
                name: "no live node fulfils the task: closed, saying why",
                world: {
                    let t = with(low.clone(), |t| {
                        t.spec.dependencies = vec!["gpu=amd".into()]
                    });
                    world(vec![t.clone()], &[waiting("w", &t)])
                },
                changes: vec!["runs: w manual skipped on - (not run: no live node has gpu=amd)"],
                stops: vec![],
                short_of_slots: false,
            },
            Case {
                name: "placement all: the run on the first node, a copy on each other",
                world: {
                    let t = with(low.clone(), |t| t.placement = Placement::All);
                    world(vec![t.clone()], &[waiting("w", &t)])
                },
                changes: vec!["runs: w manual queued on a | r1 manual queued on b"],
                stops: vec![],
                short_of_slots: false,
            },
        ];
        for case in cases {
            let placing = place_waiting(&case.world.view(at("09:00:00")), ids());
            assert_eq!(briefs(&placing.changes), case.changes, "{}", case.name);
            assert_eq!(ids_of(&placing.stops), case.stops, "{}", case.name);
            assert_eq!(placing.short_of_slots, case.short_of_slots, "{}", case.name);
        }
    }

    fn with_run(mut r: Run, change: impl FnOnce(&mut Run)) -> Run {
        change(&mut r);
        r
    }

    #[test]
    fn runs_on_gone_nodes_are_lost_and_retried_while_attempts_remain() {
        let t = task("t", When::Manual);
        let daemon = task("d", When::Always);
        let mut at_most_once = task("o", When::Manual);
        at_most_once.spec.on_lost = OnLost::Skip;
        let lost = |id: &str| {
            with_run(run(id, &t, RunStatus::Queued, Some("c")), |r| {
                r.finish(Outcome::Lost, at("08:30:00"))
            })
        };
        struct Case {
            name: &'static str,
            runs: Vec<Run>,
            changes: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "a running run on a gone node is lost and retried",
                runs: vec![run("x", &t, RunStatus::Running, Some("c"))],
                changes: vec![
                    "runs: x manual lost on c (node node-c stopped answering while the run was \
                     unfinished; retried as r1) | r1 retry of x queued on - attempt 2 (retry of \
                     lost run x)",
                ],
            },
            Case {
                name: "a queued run on a gone node too",
                runs: vec![run("x", &t, RunStatus::Queued, Some("c"))],
                changes: vec![
                    "runs: x manual lost on c (node node-c stopped answering while the run was \
                     unfinished; retried as r1) | r1 retry of x queued on - attempt 2 (retry of \
                     lost run x)",
                ],
            },
            Case {
                name: "runs on live nodes, waiting runs and this node's runs stay",
                runs: vec![
                    run("x", &t, RunStatus::Running, Some("b")),
                    run("y", &t, RunStatus::Queued, None),
                    run("z", &t, RunStatus::Running, Some("a")),
                ],
                changes: vec![],
            },
            Case {
                name: "a run a restarted node reported lost is retried",
                runs: vec![lost("x")],
                changes: vec!["runs: r1 retry of x queued on - attempt 2 (retry of lost run x)"],
            },
            Case {
                name: "a lost run is retried once",
                runs: vec![
                    lost("x"),
                    with_run(run("y", &t, RunStatus::Queued, None), |r| {
                        r.trigger = Trigger::Retry {
                            of: RunId("x".into()),
                            slot: None,
                        }
                    }),
                ],
                changes: vec![],
            },
            Case {
                name: "no attempts left: lost, not retried",
                runs: vec![with_run(run("x", &t, RunStatus::Running, Some("c")), |r| {
                    r.attempt = 4
                })],
                changes: vec![
                    "runs: x manual lost on c attempt 4 (node node-c stopped answering while the \
                     run was unfinished)",
                ],
            },
            Case {
                name: "a task with on_lost: skip: lost, not retried",
                runs: vec![run("x", &at_most_once, RunStatus::Running, Some("c"))],
                changes: vec![
                    "runs: x manual lost on c (node node-c stopped answering while the run was \
                     unfinished; not retried: the task says on_lost: skip)",
                ],
            },
            Case {
                name: "an always-task's run is lost, not retried (its holder is replaced)",
                runs: vec![run("x", &daemon, RunStatus::Running, Some("c"))],
                changes: vec![
                    "runs: x manual lost on c (node node-c stopped answering while the run was \
                     unfinished)",
                ],
            },
        ];
        for case in cases {
            let world = World::new(
                [t.clone(), daemon.clone(), at_most_once.clone()],
                &case.runs,
            );
            let changes = reap_lost(&world.view(at("09:00:00")), |p| p != "b", ids());
            assert_eq!(briefs(&changes), case.changes, "{}", case.name);
        }
    }

    #[test]
    fn the_retry_of_a_lost_cron_run_keeps_its_slot() {
        let t = task("t", When::Manual);
        let slot = at("08:59:00");
        let lost_cron = with_run(run("x", &t, RunStatus::Running, Some("c")), |r| {
            r.trigger = Trigger::Cron { slot }
        });
        let world = World::new([t.clone()], &[lost_cron]);
        let changes = reap_lost(&world.view(at("09:00:00")), |p| p != "b", ids());
        let retries: Vec<&Trigger> = changes
            .iter()
            .flat_map(|c| match c {
                Change::Runs(runs) => runs.iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .map(|r| &r.trigger)
            .filter(|t| matches!(t, Trigger::Retry { .. }))
            .collect();
        assert_eq!(
            retries,
            [&Trigger::Retry {
                of: RunId("x".into()),
                slot: Some(slot)
            }],
            "{changes:?}"
        );
        // And a retry of that retry still carries the first run's slot.
        let mut retry = run("r1", &t, RunStatus::Failed, Some("b"));
        retry.trigger = retries[0].clone();
        assert_eq!(Trigger::retry_of(&retry).slot(), Some(slot));
    }

    #[test]
    fn a_node_is_gone_once_silent_for_the_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let last_seen = HashMap::from([("b".to_string(), t0 + s(5)), ("c".to_string(), t0)]);
        let live = [node("a", &[], 4)];
        let down = BTreeSet::from(["d".to_string(), "a".to_string()]);
        // (node, now, gone)
        let cases = [
            ("a", t0 + s(100), false),
            // A node whose process is gone is gone at once, unless it is live again.
            ("d", t0 + s(1), true),
            ("b", t0 + s(14), false),
            ("b", t0 + s(16), true),
            ("c", t0 + s(11), true),
            ("never seen", t0 + s(10), false),
            ("never seen", t0 + s(11), true),
        ];
        for (peer, now, expected) in cases {
            let gone = gone(&live, &last_seen, &down, t0, now, s(10));
            assert_eq!(gone(peer), expected, "{peer} at {:?}", now - t0);
        }
    }

    #[test]
    fn always_tasks_get_live_matching_holders_and_keep_them() {
        let d = task("d", When::Always);
        struct Case {
            name: &'static str,
            tasks: Vec<Task>,
            holders: Vec<(&'static str, Vec<&'static str>)>,
            changes: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "a new always-task gets one holder",
                tasks: vec![d.clone()],
                holders: vec![],
                changes: vec!["hold d: [a]"],
            },
            Case {
                name: "a holder that is not gone keeps it, live or not",
                tasks: vec![d.clone()],
                holders: vec![("d", vec!["c"])],
                changes: vec![],
            },
            Case {
                name: "a gone holder is replaced",
                tasks: vec![d.clone()],
                holders: vec![("d", vec!["gone"])],
                changes: vec!["hold d: [a]"],
            },
            Case {
                name: "placement all: every matching node, and holders not gone",
                tasks: vec![with(d.clone(), |t| t.placement = Placement::All)],
                holders: vec![("d", vec!["c", "gone"])],
                changes: vec!["hold d: [a,b,c]"],
            },
            Case {
                name: "only nodes with the dependencies hold it",
                tasks: vec![with(d.clone(), |t| {
                    t.spec.dependencies = vec!["gpu=nvidia".into()]
                })],
                holders: vec![],
                changes: vec!["hold d: [b]"],
            },
            Case {
                name: "no node fulfils it: nobody holds it",
                tasks: vec![with(d.clone(), |t| {
                    t.spec.dependencies = vec!["gpu=amd".into()]
                })],
                holders: vec![],
                changes: vec![],
            },
            Case {
                name: "a disabled task loses its holders",
                tasks: vec![with(d.clone(), |t| t.enabled = false)],
                holders: vec![("d", vec!["a"])],
                changes: vec!["hold d: []"],
            },
            Case {
                name: "a removed task loses its holders",
                tasks: vec![],
                holders: vec![("d", vec!["a"])],
                changes: vec!["hold d: []"],
            },
        ];
        for case in cases {
            let mut world = World::new(case.tasks, &[]);
            world.nodes[1].dependencies = vec!["gpu=nvidia".into()];
            for (task, nodes) in &case.holders {
                let nodes = nodes.iter().map(|n| n.to_string()).collect();
                world.state.holders.insert(TaskId(task.to_string()), nodes);
            }
            let changes = place_daemons(&world.view(at("09:00:00")), |p, _| p == "gone");
            assert_eq!(briefs(&changes), case.changes, "{}", case.name);
        }
    }

    #[test]
    fn a_drained_holder_gives_its_always_task_away_once_its_daemon_has_ended() {
        let d = task("d", When::Always);
        let daemon = |status, node| run("x", &d, status, Some(node));
        // (what, placement, holders, drained, the daemon's run, ended as the leader knows,
        // changes)
        let cases = [
            (
                "the drained holder loses it",
                Placement::One,
                vec!["b"],
                vec!["b"],
                Some(daemon(RunStatus::Running, "b")),
                false,
                vec!["hold d: []"],
            ),
            (
                "nobody else gets it while the daemon still runs there",
                Placement::One,
                vec![],
                vec!["b"],
                Some(daemon(RunStatus::Running, "b")),
                false,
                vec![],
            ),
            (
                "another node gets it once the leader knows the daemon ended",
                Placement::One,
                vec![],
                vec!["b"],
                Some(daemon(RunStatus::Running, "b")),
                true,
                vec!["hold d: [a]"],
            ),
            (
                "or once the ledger shows it",
                Placement::One,
                vec![],
                vec!["b"],
                Some(daemon(RunStatus::Killed, "b")),
                false,
                vec!["hold d: [a]"],
            ),
            (
                "enabled again while its last instance still stops: it waits for it too",
                Placement::One,
                vec![],
                vec![],
                Some(daemon(RunStatus::Running, "b")),
                false,
                vec![],
            ),
            (
                "a daemon on a gone node does not hold it up",
                Placement::One,
                vec![],
                vec![],
                Some(daemon(RunStatus::Running, "gone")),
                false,
                vec!["hold d: [a]"],
            ),
            (
                "placement all: the drained holder leaves, the others stay",
                Placement::All,
                vec!["a", "b"],
                vec!["b"],
                Some(daemon(RunStatus::Running, "b")),
                false,
                vec!["hold d: [a]"],
            ),
            (
                "every node drained: nobody holds it",
                Placement::One,
                vec!["b"],
                vec!["a", "b"],
                None,
                false,
                vec!["hold d: []"],
            ),
        ];
        for (what, placement, holders, drained, daemon, ended, changes) in cases {
            let d = with(d.clone(), |t| t.placement = placement);
            let mut world = World::new([d], daemon.as_slice());
            let holders = holders.iter().map(|n| n.to_string()).collect();
            world.state.holders.insert(TaskId("d".into()), holders);
            world.state.drained = drained.iter().map(|n| n.to_string()).collect();
            for node in &mut world.nodes {
                node.drained = world.state.drained.contains(&node.peer_id);
            }
            if ended {
                world.ending.insert(RunId("x".into()));
            }
            let placed = place_daemons(&world.view(at("09:00:00")), |p, _| p == "gone");
            assert_eq!(briefs(&placed), changes, "{what}");
        }
    }

    #[test]
    fn requests_make_runs_or_say_why_not() {
        let t = task("t", When::Manual);
        let ask = |task: &str| Ask {
            task: TaskId(task.into()),
            trigger: Trigger::Manual,
            attempt: 1,
            delay: Duration::ZERO,
            parameters: Parameters::new(),
        };
        struct Case {
            name: &'static str,
            tasks: Vec<Task>,
            runs: Vec<Run>,
            leading: bool,
            asks: Vec<&'static str>,
            answers: Vec<Result<&'static str, &'static str>>,
            stops: Vec<&'static str>,
        }
        let running_x = run("x", &t, RunStatus::Running, Some("b"));
        let cases = vec![
            Case {
                name: "the leader places the run at once",
                tasks: vec![t.clone()],
                runs: vec![],
                leading: true,
                asks: vec!["t"],
                answers: vec![Ok("r1 manual queued on a")],
                stops: vec![],
            },
            Case {
                name: "a batch counts its own runs against the slots",
                tasks: vec![with(t.clone(), |t| t.spec.concurrency = Concurrency::Allow)],
                runs: vec![],
                leading: true,
                asks: vec!["t", "t"],
                answers: vec![Ok("r1 manual queued on a"), Ok("r2 manual queued on b")],
                stops: vec![],
            },
            Case {
                name: "a follower makes a run waiting for the leader",
                tasks: vec![t.clone()],
                runs: vec![],
                leading: false,
                asks: vec!["t"],
                answers: vec![Ok("r1 manual queued on -")],
                stops: vec![],
            },
            Case {
                name: "an unknown task",
                tasks: vec![],
                runs: vec![],
                leading: true,
                asks: vec!["t"],
                answers: vec![Err("there is no task t (none)")],
                stops: vec![],
            },
            Case {
                name: "no live node fulfils the task",
                tasks: vec![with(t.clone(), |t| {
                    t.spec.dependencies = vec!["gpu=amd".into()]
                })],
                runs: vec![],
                leading: false,
                asks: vec!["t"],
                answers: vec![Err("no live node has gpu=amd (no_node)")],
                stops: vec![],
            },
            Case {
                name: "forbid while a run is running",
                tasks: vec![t.clone()],
                runs: vec![running_x.clone()],
                leading: true,
                asks: vec!["t"],
                answers: vec![Err(
                    "run x is still running (concurrency `forbid`) (still_running)",
                )],
                stops: vec![],
            },
            Case {
                name: "replace on the leader stops the earlier run",
                tasks: vec![with(t.clone(), |t| {
                    t.spec.concurrency = Concurrency::Replace
                })],
                runs: vec![running_x.clone()],
                leading: true,
                asks: vec!["t"],
                answers: vec![Ok("r1 manual queued on a")],
                stops: vec!["x"],
            },
            Case {
                name: "replace on a follower leaves the stopping to the leader",
                tasks: vec![with(t.clone(), |t| {
                    t.spec.concurrency = Concurrency::Replace
                })],
                runs: vec![running_x.clone()],
                leading: false,
                asks: vec!["t"],
                answers: vec![Ok("r1 manual queued on -")],
                stops: vec![],
            },
            Case {
                name: "placement all answers with the first of its runs",
                tasks: vec![with(t.clone(), |t| t.placement = Placement::All)],
                runs: vec![],
                leading: true,
                asks: vec!["t"],
                answers: vec![Ok("r1 manual queued on a")],
                stops: vec![],
            },
        ];
        for case in cases {
            let world = World::new(case.tasks, &case.runs);
            let asks: Vec<Ask> = case.asks.iter().map(|t| ask(t)).collect();
            let granting = grant(&world.view(at("09:00:00")), case.leading, &asks, ids());
            let answers: Vec<Result<String, String>> = granting
                .answers
                .iter()
                .map(|a| {
                    let kind = |e: &NotScheduled| match e {
                        NotScheduled::Refused(r) => r.kind(),
                        _ => "none",
                    };
                    a.as_ref()
                        .map(brief_run)
                        .map_err(|e| format!("{e} ({})", kind(e)))
                })
                .collect();
            let expected: Vec<Result<String, String>> = case
                .answers
                .iter()
                .map(|a| a.map(str::to_owned).map_err(str::to_owned))
                .collect();
            assert_eq!(answers, expected, "{}", case.name);
            let made = granting.answers.iter().filter(|a| a.is_ok()).count();
            assert!(granting.runs.len() >= made, "{}", case.name);
            assert_eq!(ids_of(&granting.stops), case.stops, "{}", case.name);
        }
    }

    #[test]
    fn a_refused_run_that_a_rule_asked_for_is_recorded_skipped() {
        let t = task("t", When::Manual);
        let world = World::new([t.clone()], &[run("x", &t, RunStatus::Running, Some("b"))]);
        let y = RunId("y".into());
        let cases = [
            (Trigger::Manual, 1, vec![]),
            (
                Trigger::Rule { from: y.clone() },
                1,
                vec![
                    "r1 exit rule skipped on - (not run: run x is still running (concurrency \
                     `forbid`))",
                ],
            ),
            (
                Trigger::Retry {
                    of: y.clone(),
                    slot: None,
                },
                2,
                vec![
                    "r1 retry of y skipped on - attempt 2 (not run: run x is still running \
                     (concurrency `forbid`))",
                ],
            ),
        ];
        for (trigger, attempt, recorded) in cases {
            let asks = [Ask {
                task: t.id.clone(),
                trigger: trigger.clone(),
                attempt,
                delay: Duration::ZERO,
                parameters: Parameters::new(),
            }];
            let granting = grant(&world.view(at("09:00:00")), true, &asks, ids());
            assert!(
                matches!(granting.answers[..], [Err(NotScheduled::Refused(_))]),
                "{trigger:?}"
            );
            let runs: Vec<String> = granting.runs.iter().map(brief_run).collect();
            assert_eq!(runs, recorded, "{trigger:?}");
        }
    }

    #[test]
    fn every_run_a_request_makes_carries_its_parameters() {
        let t = with(task("t", When::Manual), |t| t.placement = Placement::All);
        let world = World::new([t.clone()], &[]);
        let given = Parameters::from([("version".to_owned(), serde_json::json!("1.2"))]);
        let ask = |delay| Ask {
            task: t.id.clone(),
            trigger: Trigger::Manual,
            attempt: 1,
            delay,
            parameters: given.clone(),
        };
        let view = world.view(at("09:00:00"));
        for leading in [true, false] {
            let granting = grant(&view, leading, &[ask(Duration::ZERO)], ids());
            let first = granting.answers[0].as_ref().expect("a run");
            assert_eq!(first.parameters, given, "leading {leading}");
            assert_eq!(granting.runs.len(), if leading { 2 } else { 1 });
            assert!(granting.runs.iter().all(|r| r.parameters == given));
        }
        let waiting = delayed(&view, &[ask(Duration::from_secs(4))], ids());
        assert!(waiting.len() == 1 && waiting[0].parameters == given);
    }

    #[test]
    fn a_delayed_request_waits_for_its_backoff() {
        let t = task("t", When::Manual);
        let world = World::new([t.clone()], &[]);
        let asks = [
            Ask {
                task: t.id.clone(),
                trigger: Trigger::Retry {
                    of: RunId("x".into()),
                    slot: None,
                },
                attempt: 2,
                delay: Duration::from_secs(4),
                parameters: Parameters::new(),
            },
            Ask {
                task: TaskId("gone".into()),
                trigger: Trigger::Manual,
                attempt: 1,
                delay: Duration::from_secs(4),
                parameters: Parameters::new(),
            },
        ];
        let runs = delayed(&world.view(at("09:00:00")), &asks, ids());
        let runs: Vec<String> = runs.iter().map(brief_run).collect();
        assert_eq!(
            runs,
            [
                "r1 retry of x queued on - attempt 2 not before 09:00:04 (waits until \
              09:00:04.000 UTC before it runs)"
            ]
        );
    }

    #[test]
    fn a_run_whose_end_is_on_its_way_frees_its_slot() {
        let task = Task::sample("t", "t");
        let mut daemon = Task::sample("d", "d");
        daemon.when = When::Always;
        let run_on = |task: &Task, node: &str, status: RunStatus| {
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
        };
        let queued = run_on(&task, "a", RunStatus::Queued);
        let running = run_on(&task, "a", RunStatus::Running);
        let on_b = run_on(&task, "b", RunStatus::Running);
        let mut done = run_on(&task, "a", RunStatus::Running);
        done.finish(Outcome::Exited { code: 0 }, Utc::now());
        let supervised = run_on(&daemon, "a", RunStatus::Running);
        let mut state = State::default();
        for t in [&task, &daemon] {
            state.tasks.insert(Arc::new(t.clone()));
        }
        for r in [&queued, &running, &on_b, &done, &supervised] {
            state.runs.insert(Arc::new(r.clone()));
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
