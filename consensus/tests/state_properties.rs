//! Properties of the state machine over random sequences of changes: `State::apply` never
//! panics, a refused change changes nothing, a slot fires once, a finished run stays finished,
//! the run ledger stays bounded, and replicas that apply the same changes agree — also one that
//! took a snapshot midway, and one that restarted from its tables.
//!
//! The changes come from small pools of task ids, names, run ids and times, so that they collide
//! often: a task is renamed onto another's name, a slot fires twice, a run is reported after its
//! task was removed, a stop names a run nobody knows. `PROPTEST_CASES` runs more cases.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;

use taskmesh_consensus::{Adopted, Change, RUNS_PER_TASK, State};
use taskmesh_core::model::{
    ClusterSettings, NamedToken, Origin, Outcome, Run, RunId, RunStatus, Task, TaskId, Trigger,
    When,
};
use taskmesh_store::{RedbStore, Store, Write};

/// Task ids: the last one is never created by `PutTask` (only adopted, or unknown).
const TASKS: &[&str] = &["a", "b", "c", "zz"];
const NAMES: &[&str] = &["one", "two", "three"];
/// Run ids: enough per task to overflow the ledger's bound.
const RUN_IDS: u64 = 3 * RUNS_PER_TASK as u64;

fn time(seconds: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + i64::from(seconds), 0)
        .single()
        .expect("a valid time")
}

fn task_id() -> impl Strategy<Value = TaskId> {
    proptest::sample::select(TASKS).prop_map(|id| TaskId(id.into()))
}

fn task() -> impl Strategy<Value = Task> {
    (
        task_id(),
        proptest::sample::select(NAMES),
        any::<bool>(),
        0u32..1000,
        proptest::option::of(any::<f64>()),
        0u8..3,
    )
        .prop_map(|(id, name, enabled, at, parameter, when)| {
            let mut task = Task::sample(&id.0, name);
            task.enabled = enabled;
            task.when = match when {
                0 => When::Manual,
                1 => When::Always,
                _ => When::Cron {
                    schedule: "*/5 * * * * *".into(),
                    timezone: "UTC".into(),
                    catch_up: Default::default(),
                },
            };
            task.updated_at = time(at);
            if let Some(x) = parameter {
                // Any float the JSON can hold (not NaN or infinite): the tables keep tasks as
                // JSON, so it must read back exactly.
                task.spec
                    .parameters
                    .insert("x".into(), serde_json::json!(x));
            }
            task
        })
}

fn status() -> impl Strategy<Value = RunStatus> {
    proptest::sample::select(vec![
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Killed,
        RunStatus::Lost,
        RunStatus::Skipped,
    ])
}

fn run() -> impl Strategy<Value = Run> {
    (
        0..RUN_IDS,
        task_id(),
        status(),
        any::<bool>(),
        0u32..1000,
        proptest::option::of(0..RUN_IDS),
    )
        .prop_map(|(n, task, status, placed, at, retry_of)| {
            // Sometimes a retry of another run (the ledger indexes which lost runs have one).
            let trigger = match retry_of {
                Some(of) => Trigger::Retry {
                    of: RunId(format!("{of:032}")),
                    slot: None,
                },
                None => Trigger::Manual,
            };
            let mut run = Run::new(task.clone(), task.0, trigger, 1, "n1".into());
            run.id = RunId(format!("{n:032}"));
            run.created_at = time(at);
            run.node_id = placed.then(|| "peer-1".into());
            match status {
                RunStatus::Queued => {}
                RunStatus::Running => {
                    run.status = RunStatus::Running;
                    run.started_at = Some(time(at + 1));
                }
                RunStatus::Succeeded => run.finish(Outcome::Exited { code: 0 }, time(at + 2)),
                RunStatus::Failed => run.finish(Outcome::Exited { code: 1 }, time(at + 2)),
                other => run.close(other, "closed".into(), time(at + 2)),
            }
            run
        })
}

fn run_id() -> impl Strategy<Value = RunId> {
    (0..RUN_IDS + 2).prop_map(|n| RunId(format!("{n:032}")))
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => task().prop_map(Change::PutTask),
        1 => task_id().prop_map(Change::RemoveTask),
        1 => (1u32..100).prop_map(|days| Change::Settings(ClusterSettings {
            retention_days: days,
            ..ClusterSettings::default()
        })),
        4 => (task_id(), 0u32..20, proptest::collection::vec(run(), 0..3))
            .prop_map(|(task, slot, runs)| Change::Fire { task, slot: time(slot), runs }),
        1 => (task_id(), any::<bool>(), proptest::option::of(0u32..1000)).prop_map(
            |(task, enabled, at)| Change::SetEnabled { task, enabled, at: at.map(time) }
        ),
        1 => (0u64..3).prop_map(|cluster| Change::Found { cluster }),
        1 => (
            proptest::collection::vec((task(), proptest::option::of(0u32..20)), 0..3)
        )
            .prop_map(|tasks| Change::Adopt {
                from: "node-b".into(),
                tasks: tasks
                    .into_iter()
                    .map(|(task, slot)| Adopted { task, last_fired: slot.map(time) })
                    .collect(),
            }),
        1 => (0u64..3).prop_map(|cluster| Change::MergeInto { cluster }),
        8 => proptest::collection::vec(run(), 0..8).prop_map(Change::Runs),
        1 => (task_id(), proptest::collection::vec("peer-[1-3]", 0..3))
            .prop_map(|(task, nodes)| Change::Hold { task, nodes }),
        2 => (run_id(), 0u32..1000).prop_map(|(run, at)| Change::StopRun { run, at: time(at) }),
        1 => run_id().prop_map(Change::Stop),
        1 => ("peer-[1-3]|", any::<bool>())
            .prop_map(|(node, drained)| Change::Drain { node, drained }),
        1 => (any::<bool>(), 0u32..1000)
            .prop_map(|(paused, at)| Change::PauseCron { paused, at: time(at) }),
        1 => ("tok-[1-3]|-bad", any::<bool>(), 0u32..1000, proptest::option::of(0u32..2000))
            .prop_map(|(name, read_only, at, until)| {
                Change::PutToken(NamedToken {
                    name,
                    read_only,
                    hash: "ab".repeat(32),
                    created: time(at),
                    expires: until.map(time),
                })
            }),
        1 => "tok-[1-4]".prop_map(Change::RemoveToken),
        2 => (task(), 0u32..1000, "ui|cli|api").prop_map(|(task, at, via)| Change::By {
            origin: Origin { at: time(at), node: "node-a".into(), via, client: "10.0.0.9".into(), token: None },
            change: Box::new(Change::PutTask(task)),
        }),
        1 => (task_id(), any::<bool>(), 0u32..1000).prop_map(|(task, enabled, at)| Change::By {
            origin: Origin { at: time(at), node: "node-b".into(), via: "api".into(), client: "::1".into(), token: Some("alice".into()) },
            change: Box::new(Change::SetEnabled { task, enabled, at: Some(time(at)) }),
        }),
    ]
}

/// The finished runs of each task in the ledger.
fn finished_per_task(state: &State) -> BTreeMap<&TaskId, usize> {
    let mut counts = BTreeMap::new();
    for run in state.runs.values().filter(|r| r.status.is_final()) {
        *counts.entry(&run.task_id).or_default() += 1;
    }
    counts
}

/// Checks what must hold across one applied change.
fn check_step(
    before: &State,
    change: &Change,
    result: &Result<Vec<Write>, taskmesh_core::model::Invalid>,
    after: &State,
) -> Result<(), TestCaseError> {
    if result.is_err() {
        prop_assert_eq!(
            before,
            after,
            "a refused {} changed the state",
            change.kind()
        );
    }
    // An operator's change that applies is listed once, newest last; the list stays bounded.
    if let Change::By { origin, .. } = change {
        if result.is_ok() {
            prop_assert_eq!(after.activity.last().map(|a| &a.origin), Some(origin));
        }
    }
    prop_assert!(after.activity.len() <= taskmesh_core::model::MAX_ACTIVITY);
    // A slot fires once: a fired slot only moves forward while its task exists.
    if let Change::Fire { task, slot, .. } = change {
        let fired_before = before.last_fired.get(task);
        if fired_before.is_some_and(|last| last >= slot) {
            prop_assert!(result.is_err(), "slot {slot} of {task} fired again");
        }
        if result.is_ok() {
            prop_assert_eq!(after.last_fired.get(task), Some(slot));
        }
    }
    for (task, last) in &before.last_fired {
        if after.tasks.contains_key(task) {
            let now = after.last_fired.get(task);
            prop_assert!(
                now.is_some_and(|now| now >= last),
                "the fired slot of {task} went back from {last} to {now:?}"
            );
        }
    }
    // A finished run stays finished (it may leave the ledger, pruned or with its task).
    for run in before.runs.values() {
        let id = &run.id;
        if let Some(later) = after.runs.get(id) {
            prop_assert!(
                !run.status.is_final() || later.status.is_final(),
                "run {id} went from {} back to {}",
                run.status,
                later.status
            );
        }
    }
    // The ledger stays bounded, and holds only runs of tasks that exist.
    for (task, finished) in finished_per_task(after) {
        prop_assert!(
            finished <= RUNS_PER_TASK,
            "{finished} finished runs of {task} in the ledger"
        );
    }
    for run in after.runs.values() {
        prop_assert!(
            after.tasks.contains_key(&run.task_id),
            "run {} of the unknown task {}",
            run.id,
            run.task_id
        );
    }
    // The ledger's index by task holds each run once, under its task, and nothing else.
    let indexed: usize = after
        .tasks
        .keys()
        .map(|task| {
            after
                .runs
                .of_task(task)
                .filter(|r| r.task_id == *task)
                .count()
        })
        .sum();
    prop_assert_eq!(indexed, after.runs.len(), "runs indexed by task");
    let unfinished: Vec<&RunId> = after.runs.unfinished().map(|r| &r.id).collect();
    let scanned: Vec<&RunId> = after
        .runs
        .values()
        .filter(|r| !r.status.is_final())
        .map(|r| &r.id)
        .collect();
    prop_assert_eq!(unfinished, scanned, "the unfinished runs' index");
    let lost: Vec<&RunId> = after.runs.lost_unretried().map(|r| &r.id).collect();
    let scanned: Vec<&RunId> = after
        .runs
        .values()
        .filter(|r| r.status == RunStatus::Lost)
        .filter(|r| {
            !after
                .runs
                .values()
                .any(|retry| matches!(&retry.trigger, Trigger::Retry { of, .. } if *of == r.id))
        })
        .map(|r| &r.id)
        .collect();
    prop_assert_eq!(lost, scanned, "the unretried lost runs' index");
    // The scheduler's indexes hold the enabled cron and always-tasks, and only those.
    let cron: Vec<&TaskId> = after.tasks.enabled_cron().map(|t| &t.id).collect();
    let scanned: Vec<&TaskId> = after
        .tasks
        .values()
        .filter(|t| t.enabled && matches!(t.when, When::Cron { .. }))
        .map(|t| &t.id)
        .collect();
    prop_assert_eq!(cron, scanned, "the enabled cron tasks' index");
    let always: Vec<&TaskId> = after.tasks.enabled_always().map(|t| &t.id).collect();
    let scanned: Vec<&TaskId> = after
        .tasks
        .values()
        .filter(|t| t.enabled && t.is_always())
        .map(|t| &t.id)
        .collect();
    prop_assert_eq!(always, scanned, "the enabled always-tasks' index");
    // So does the task list's index by name.
    for task in after.tasks.values() {
        prop_assert_eq!(
            after.task_by_name(&task.name).map(|t| &t.id),
            Some(&task.id)
        );
    }
    // Task names stay unique.
    let mut names: Vec<&str> = after.tasks.values().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    prop_assert_eq!(names.len(), count, "two tasks share a name");
    Ok(())
}

/// The state read back from tables that received `writes` (as a restarted node reads it).
fn reload(writes: &[Write]) -> State {
    let dir = tempfile::tempdir().expect("tmp");
    let store = RedbStore::open(&dir.path().join("db")).expect("store");
    store.write(writes).expect("write");
    State::load(&store).expect("load")
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case opens a database; 256 cases take a few seconds (PROPTEST_CASES sets more).
        cases: 256,
        // Tests outside src/ have no place for proptest's regression files; a failure prints
        // its minimal case instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn apply_keeps_the_invariants_and_replicas_agree(
        changes in proptest::collection::vec(change(), 1..80),
        snapshot_at in any::<prop::sample::Index>(),
    ) {
        let snapshot_at = snapshot_at.index(changes.len());
        let mut state = State::default();
        let mut replica = State::default();
        let mut writes = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            let before = state.clone();
            let result = state.apply(change.clone());
            check_step(&before, change, &result, &state)?;
            // The replica's copy came through the log, as JSON.
            let sent: Change = serde_json::from_str(
                &serde_json::to_string(change).expect("encode"),
            )
            .expect("decode");
            let replica_result = replica.apply(sent);
            prop_assert_eq!(result.is_ok(), replica_result.is_ok(), "only one replica refused {}", change.kind());
            if let Ok(w) = result {
                writes.extend(w);
            }
            if i == snapshot_at {
                // The replica installs a snapshot of itself (JSON), as a lagging follower would.
                replica = serde_json::from_slice(&serde_json::to_vec(&replica).expect("encode"))
                    .expect("decode");
            }
        }
        prop_assert_eq!(&state, &replica, "the replicas differ");
        prop_assert_eq!(state.digest(), replica.digest());
        prop_assert_eq!(
            serde_json::to_string(&state).expect("encode"),
            serde_json::to_string(&replica).expect("encode")
        );

        // Restarted from its tables, a node has the same state, and so the same digest.
        let reloaded = reload(&writes);
        prop_assert_eq!(reloaded.digest(), state.digest(), "the state read back differs");
        prop_assert_eq!(&reloaded.tasks, &state.tasks);
        prop_assert_eq!(&reloaded.runs, &state.runs);
        prop_assert_eq!(&reloaded.last_fired, &state.last_fired);
        prop_assert_eq!(&reloaded.holders, &state.holders);
        prop_assert_eq!(&reloaded.stops, &state.stops);
        prop_assert_eq!(&reloaded.drained, &state.drained);
        prop_assert_eq!(&reloaded.cron_paused, &state.cron_paused);
        prop_assert_eq!(&reloaded.activity, &state.activity);
        prop_assert_eq!(reloaded.activity_count, state.activity_count);
    }

    #[test]
    fn a_change_that_applies_changes_the_digest(
        changes in proptest::collection::vec(change(), 1..40),
        extra in task(),
    ) {
        let mut state = State::default();
        for change in changes {
            let _ = state.apply(change);
        }
        let before = state.digest();
        // A task under a fresh id and name is always taken, and always a change.
        let mut extra = extra;
        extra.id = TaskId("fresh".into());
        extra.name = "fresh".into();
        state.apply(Change::PutTask(extra)).expect("a fresh task");
        prop_assert_ne!(state.digest(), before);
    }
}

/// The runs of one task beyond the bound leave the ledger oldest first, however they arrive.
#[test]
fn the_ledger_bound_holds_for_runs_reported_one_by_one() {
    let mut state = State::default();
    state
        .apply(Change::PutTask(Task::sample("a", "one")))
        .expect("task");
    for n in 0..(2 * RUNS_PER_TASK as u64) {
        let mut run = Run::new(
            TaskId("a".into()),
            "one".into(),
            Trigger::Manual,
            1,
            "n1".into(),
        );
        run.id = RunId(format!("{n:032}"));
        run.finish(Outcome::Exited { code: 0 }, time(n as u32));
        state.apply(Change::Runs(vec![run])).expect("runs");
        assert!(state.runs.len() <= RUNS_PER_TASK);
    }
    let oldest = state.runs.keys().next().map(|id| id.0.clone());
    assert_eq!(
        oldest,
        Some(format!("{:032}", RUNS_PER_TASK)),
        "the newest {RUNS_PER_TASK} stay"
    );
}

/// Past its bound the list forgets its oldest changes in the tables too: a restarted node reads
/// back the same newest changes, under the same numbers.
#[test]
fn the_activity_read_back_is_the_newest_changes_past_the_bound() {
    let mut state = State::default();
    let mut writes = Vec::new();
    let bound = taskmesh_core::model::MAX_ACTIVITY;
    for n in 0..bound + 7 {
        let task = Task {
            id: TaskId(format!("t{n}")),
            name: format!("task-{n}"),
            ..Task::sample("t", "t")
        };
        writes.extend(
            state
                .apply(Change::By {
                    origin: Origin {
                        at: time(n as u32),
                        node: "node-a".into(),
                        via: "ui".into(),
                        client: "10.0.0.9".into(),
                        token: None,
                    },
                    change: Box::new(Change::PutTask(task)),
                })
                .expect("applies"),
        );
    }
    let reloaded = reload(&writes);
    assert_eq!(reloaded.activity.len(), bound);
    assert_eq!(reloaded.activity, state.activity);
    assert_eq!(reloaded.activity_count, (bound + 7) as u64);
    assert_eq!(reloaded.activity[0].subject, "task-7");
    assert_eq!(reloaded.digest(), state.digest());
}
