//! The replicated state machine's data and its pure transition function.

mod runs;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use imbl::OrdMap;

pub use runs::ClusterRuns;
pub use tasks::Tasks;

use taskmesh_core::model::{
    AccessEvent, Activity, ClusterIdentity, ClusterSettings, Invalid, MAX_ACTIVITY, MAX_TOKENS,
    NamedToken, Origin, Run, RunId, Task, TaskId,
};

/// Finished runs the replicated ledger keeps per task (unfinished ones are always kept).
pub const RUNS_PER_TASK: usize = 20;
use taskmesh_store::{Store, StoreError, Write};

/// What every node agrees on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// The state machine copies the state for every batch it applies (readers keep the one
    /// before): the maps that grow with the work (tasks, fired slots, runs) are persistent, so a
    /// copy shares them and a change copies only the paths it touches.
    pub tasks: Tasks,
    pub settings: ClusterSettings,
    /// The newest cron slot each task has fired (committed before the run is dispatched).
    pub last_fired: OrdMap<TaskId, DateTime<Utc>>,
    /// Which cluster this is; `None` until the bootstrapping node has founded it.
    pub cluster: Option<ClusterIdentity>,
    /// The run ledger: every node's unfinished runs and the newest [`RUNS_PER_TASK`] finished
    /// ones of each task, as the nodes report them. (Each node keeps its full history, with the
    /// logs, in its own store.)
    #[serde(default)]
    pub runs: ClusterRuns,
    /// The nodes (PeerIds) that keep each always-task running, as the leader placed them. Each
    /// node's supervisor runs the always-tasks it holds, and only those.
    #[serde(default)]
    pub holders: BTreeMap<TaskId, Vec<String>>,
    /// Unfinished runs asked to stop; the node running one stops it, and the id goes when the
    /// run ends.
    #[serde(default)]
    pub stops: BTreeSet<RunId>,
    /// The drained nodes (PeerIds): the leader places no new run on them and moves their
    /// always-tasks away; what already runs there goes on to its end.
    #[serde(default)]
    pub drained: BTreeSet<String>,
    /// Since when an operator has cron paused, if it is: the leader fires no cron slot (nor a
    /// node its `@reboot` tasks) until it is resumed; then each task's catch-up policy decides
    /// what happens to the slots it missed.
    #[serde(default)]
    pub cron_paused: Option<DateTime<Utc>>,
    /// The newest changes operators made ([`MAX_ACTIVITY`]), oldest first: who (the node that
    /// took the request, how, from where), what, and when (`Change::By`).
    #[serde(default)]
    pub activity: imbl::Vector<Activity>,
    /// How many changes were ever listed: the number of the newest in `activity` (each is
    /// stored under its number, so a change adds one row and forgets one).
    #[serde(default)]
    pub activity_count: u64,
    /// The named access tokens, by name (their hashes, never the tokens).
    #[serde(default)]
    pub tokens: BTreeMap<String, NamedToken>,
    /// Not agreed, this node's own: whether this state holds every entry this node's Raft log
    /// held when the node started, that is everything the node may have acted on before a
    /// restart (set by the state machine; never replicated).
    #[serde(skip)]
    pub caught_up: bool,
    /// Not agreed, this node's own: the index of the newest log entry applied to this state, as
    /// the state machine published it (`None` for a state built outside it). Entries applied
    /// after it changed nothing (blanks, membership changes, refused changes). Never replicated.
    #[serde(skip)]
    pub applied: Option<u64>,
}

/// A task handed over by a cluster that merges into this one, with its newest fired slot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adopted {
    pub task: Task,
    pub last_fired: Option<DateTime<Utc>>,
}

/// One change to the state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Create or replace a task (by id). Names are unique.
    PutTask(Task),
    /// Replace a task only if it is still as it was when the editor read it: its `updated_at`
    /// is `seen` (optimistic concurrency, judged in log order so two editors cannot both win).
    ReplaceTask {
        task: Task,
        seen: DateTime<Utc>,
    },
    RemoveTask(TaskId),
    Settings(ClusterSettings),
    /// `slot` of `task` fired, with the runs it makes (placed, waiting for a place, or closed
    /// with the reason none could run); one decision, committed together. Slots only move
    /// forward, so a slot fires once.
    Fire {
        task: TaskId,
        slot: DateTime<Utc>,
        runs: Vec<Run>,
    },
    /// Enables or disables a task; `at` is its new `updated_at`, read by the proposer (every
    /// time a change stores comes from the change, never from the applying node's clock, so
    /// replicas agree). Versions before `at` sent none: the task's `updated_at` then stays.
    SetEnabled {
        task: TaskId,
        enabled: bool,
        #[serde(default)]
        at: Option<DateTime<Utc>>,
    },
    /// Names the cluster (once, by the node that bootstrapped it).
    Found {
        cluster: u64,
    },
    /// Tasks of a cluster that merges into this one. A task whose id is already here is skipped
    /// (a repeated hand-over changes nothing); one whose name is taken is renamed
    /// `<name> (from <from>)`, so that nothing is dropped.
    Adopt {
        from: String,
        tasks: Vec<Adopted>,
    },
    /// This cluster has handed its tasks to `cluster`; its members leave and join that one.
    MergeInto {
        cluster: u64,
    },
    /// New or changed runs for the run ledger. A finished run stays finished; runs of a task
    /// that no longer exists are left out.
    Runs(Vec<Run>),
    /// The nodes that hold an always-task (none: nobody runs it).
    Hold {
        task: TaskId,
        nodes: Vec<String>,
    },
    /// Stop an unfinished run, wherever it runs (a waiting run just ends, `killed`, at `at`,
    /// read by the proposer).
    StopRun {
        run: RunId,
        at: DateTime<Utc>,
    },
    /// Drains a node (PeerId) or ends its drain.
    Drain {
        node: String,
        drained: bool,
    },
    /// Pauses cron (at `at`, read by the proposer) or resumes it.
    PauseCron {
        paused: bool,
        at: DateTime<Utc>,
    },
    /// Adds a named access token; a name in use is refused (remove the old one first).
    PutToken(NamedToken),
    /// Removes the named access token of this name: it stops working on every node.
    RemoveToken(String),
    /// `change`, made by an operator through a node's UI, API or CLI (`origin`): applied as
    /// itself, and listed in [`State::activity`] when it applies.
    By {
        origin: Origin,
        change: Box<Change>,
    },
    /// An operator's sign-in or token rotation at a node ([`AccessEvent`]): applies nothing;
    /// made `By` an operator, it is listed in the activity.
    Access(AccessEvent),
    /// `StopRun` as versions before it wrote it, without a time: a waiting run it ends is
    /// closed at its own `created_at`, the one time every replica agrees on.
    Stop(RunId),
}

impl Change {
    /// The change's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::PutTask(_) => "put_task",
            Change::ReplaceTask { .. } => "replace_task",
            Change::RemoveTask(_) => "remove_task",
            Change::Settings(_) => "settings",
            Change::Fire { .. } => "fire",
            Change::SetEnabled { .. } => "set_enabled",
            Change::Found { .. } => "found",
            Change::Adopt { .. } => "adopt",
            Change::MergeInto { .. } => "merge_into",
            Change::Runs(_) => "runs",
            Change::Hold { .. } => "hold",
            Change::Drain { .. } => "drain",
            Change::PauseCron { .. } => "pause_cron",
            Change::PutToken(_) => "put_token",
            Change::RemoveToken(_) => "remove_token",
            Change::By { change, .. } => change.kind(),
            Change::Access(event) => event.kind(),
            Change::StopRun { .. } | Change::Stop(_) => "stop",
        }
    }

    /// The runs this change ends: those it carries with a final status.
    pub fn ended_runs(&self) -> impl Iterator<Item = &RunId> {
        let mut change = self;
        while let Change::By { change: inner, .. } = change {
            change = inner;
        }
        let runs: &[Run] = match change {
            Change::Runs(runs) | Change::Fire { runs, .. } => runs,
            _ => &[],
        };
        runs.iter().filter(|r| r.status.is_final()).map(|r| &r.id)
    }
}

impl State {
    /// The state as stored (not yet known to be caught up).
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let activity = store.activity()?;
        Ok(Self {
            tasks: store.tasks()?.into_iter().collect(),
            settings: store.cluster_settings()?.unwrap_or_default(),
            last_fired: store.last_fired()?.into_iter().collect(),
            cluster: store.cluster()?,
            runs: store.cluster_runs()?.into_iter().collect(),
            holders: store.holders()?,
            stops: store.stops()?,
            drained: store.drained()?,
            cron_paused: store.cron_paused()?,
            tokens: store.tokens()?,
            activity_count: activity.last().map_or(0, |(n, _)| *n),
            activity: activity.into_iter().map(|(_, a)| a).collect(),
            caught_up: false,
            applied: None,
        })
    }

    pub fn task_by_name(&self, name: &str) -> Option<&Task> {
        self.tasks.by_name(name).map(Arc::as_ref)
    }

    /// A digest of the agreed state: equal on every replica that applied the same log, also
    /// after a restart (the state read back from the node's tables) or a snapshot install, and
    /// different, short of a 64-bit collision, when the states differ.
    ///
    /// It is stable across nodes, versions of Rust and runs: xxHash64 with seed 0 (no random
    /// keys) over each part in a fixed order (tasks, settings, last fired slots, cluster, runs,
    /// holders, stops, drained nodes when there are any, cron's pause while it is paused, the
    /// operators' activity when there is any, the named tokens when there are any). Tasks and runs count as the wrapping sum of each one's hash
    /// (`json_hash` of its JSON), which their maps keep up to date with every change, so the
    /// digest does not read every task and run again; the other parts count as their JSON, maps
    /// in key order. A fired slot counts in milliseconds, as the tables keep it. What is this
    /// node's own (`caught_up`, `applied`) does not count. A caller that asks often still
    /// computes it once per state (the consensus handle caches it for the published state).
    pub fn digest(&self) -> u64 {
        let mut digest = Digest::default();
        digest.part("tasks", &self.tasks.hash_sum());
        digest.part("settings", &self.settings);
        let fired: BTreeMap<&TaskId, i64> = self
            .last_fired
            .iter()
            .map(|(task, slot)| (task, slot.timestamp_millis()))
            .collect();
        digest.part("last_fired", &fired);
        digest.part("cluster", &self.cluster);
        digest.part("runs", &self.runs.hash_sum());
        digest.part("holders", &self.holders);
        digest.part("stops", &self.stops);
        if !self.drained.is_empty() {
            digest.part("drained", &self.drained);
        }
        if let Some(since) = self.cron_paused {
            digest.part("cron_paused", &since.timestamp_millis());
        }
        if !self.activity.is_empty() {
            digest.part("activity", &(self.activity_count, &self.activity));
        }
        if !self.tokens.is_empty() {
            digest.part("tokens", &self.tokens);
        }
        digest.0.finish()
    }

    /// `Change::StopRun` (or the older `Change::Stop`, without `at`): a waiting run ends here,
    /// `killed` at `at` (or at its `created_at`); a placed one is asked to stop on its node.
    fn stop_run(&mut self, id: RunId, at: Option<DateTime<Utc>>) -> Result<Vec<Write>, Invalid> {
        let Some(run) = self.runs.get(&id) else {
            return Err(Invalid::field(
                "id",
                format!("no run {id} in the run ledger"),
            ));
        };
        if run.status.is_final() {
            return Err(Invalid::field("id", format!("run {id} has already ended")));
        }
        if run.node_id.is_none() {
            // Still waiting for a place: it ends here.
            let at = at.unwrap_or(run.created_at);
            let mut run = Run::clone(run);
            run.close(
                taskmesh_core::model::RunStatus::Killed,
                "stopped before it started".into(),
                at,
            );
            let run = Arc::new(run);
            self.runs.insert(run.clone());
            return Ok(vec![Write::ClusterRun(run)]);
        }
        self.stops.insert(id);
        Ok(vec![Write::Stops(self.stops.clone())])
    }

    /// Applies `change` and returns what must be stored, or why it was refused. *Invariant:* a
    /// refused change leaves the state as it was (every check comes before any mutation).
    fn put_task(&mut self, task: Task) -> Result<Vec<Write>, Invalid> {
        if let Some(other) = self.task_by_name(&task.name).filter(|t| t.id != task.id) {
            return Err(Invalid::field(
                "name",
                format!(
                    "another task ({}) is already called `{}`",
                    other.id, task.name
                ),
            ));
        }
        self.tasks.insert(Arc::new(task.clone()));
        Ok(vec![Write::PutTask(task)])
    }

    pub fn apply(&mut self, change: Change) -> Result<Vec<Write>, Invalid> {
        match change {
            Change::PutTask(task) => self.put_task(task),
            Change::ReplaceTask { task, seen } => {
                let Some(current) = self.tasks.get(&task.id) else {
                    return Err(Invalid::field("id", format!("no task {}", task.id)));
                };
                if current.updated_at != seen {
                    return Err(Invalid::stale(format!(
                        "`{}` was changed at {} by someone else, after it was read (at {seen})",
                        current.name, current.updated_at
                    )));
                }
                self.put_task(task)
            }
            Change::RemoveTask(id) => {
                if self.tasks.remove(&id).is_none() {
                    return Err(Invalid::field("id", format!("no task {id}")));
                }
                self.last_fired.remove(&id);
                let mut writes = vec![Write::RemoveTask(id.clone())];
                if self.holders.remove(&id).is_some() {
                    writes.push(Write::Holders(self.holders.clone()));
                }
                for run in self.runs.remove_task(&id) {
                    writes.push(Write::ForgetClusterRun(run));
                }
                Ok(writes)
            }
            Change::Settings(settings) => {
                self.settings = settings.clone();
                Ok(vec![Write::ClusterSettings(settings)])
            }
            Change::Fire { task, slot, runs } => {
                if !self.tasks.contains_key(&task) {
                    return Err(Invalid::field("id", format!("no task {task}")));
                }
                if self.last_fired.get(&task).is_some_and(|last| *last >= slot) {
                    return Err(Invalid::field(
                        "slot",
                        format!("slot {slot} of {task} already fired"),
                    ));
                }
                self.last_fired.insert(task.clone(), slot);
                let mut writes = vec![Write::LastFired(task, slot)];
                writes.extend(self.apply_runs(runs));
                Ok(writes)
            }
            Change::SetEnabled { task, enabled, at } => {
                let Some(t) = self.tasks.get(&task) else {
                    return Err(Invalid::field("id", format!("no task {task}")));
                };
                let mut t = Task::clone(t);
                t.enabled = enabled;
                if let Some(at) = at {
                    t.updated_at = at;
                }
                self.tasks.insert(Arc::new(t.clone()));
                Ok(vec![Write::PutTask(t)])
            }
            Change::Found { cluster } => {
                if let Some(current) = self.cluster {
                    return Err(Invalid::field(
                        "cluster",
                        format!("the cluster is already founded as {:016x}", current.id),
                    ));
                }
                let identity = ClusterIdentity {
                    id: cluster,
                    merged_into: None,
                };
                self.cluster = Some(identity);
                Ok(vec![Write::Cluster(Some(identity))])
            }
            Change::Adopt { from, tasks } => {
                let mut writes = Vec::new();
                for Adopted {
                    mut task,
                    last_fired,
                } in tasks
                {
                    if self.tasks.contains_key(&task.id) {
                        continue;
                    }
                    task.name = self.free_name(&task.name, &from);
                    if let Some(slot) = last_fired {
                        self.last_fired.insert(task.id.clone(), slot);
                        writes.push(Write::LastFired(task.id.clone(), slot));
                    }
                    self.tasks.insert(Arc::new(task.clone()));
                    writes.push(Write::PutTask(task));
                }
                Ok(writes)
            }
            Change::MergeInto { cluster } => {
                let Some(identity) = self.cluster.as_mut() else {
                    return Err(Invalid::field("cluster", "this cluster is not founded yet"));
                };
                if identity.id == cluster {
                    return Err(Invalid::field(
                        "cluster",
                        "a cluster cannot merge into itself",
                    ));
                }
                identity.merged_into = Some(cluster);
                Ok(vec![Write::Cluster(Some(*identity))])
            }
            Change::Runs(runs) => Ok(self.apply_runs(runs)),
            Change::StopRun { run: id, at } => self.stop_run(id, Some(at)),
            Change::Stop(id) => self.stop_run(id, None),
            Change::Hold { task, nodes } => {
                if !self.tasks.contains_key(&task) {
                    return Err(Invalid::field("id", format!("no task {task}")));
                }
                match nodes.is_empty() {
                    true => self.holders.remove(&task),
                    false => self.holders.insert(task, nodes),
                };
                Ok(vec![Write::Holders(self.holders.clone())])
            }
            Change::PutToken(token) => {
                token.validate()?;
                if self.tokens.contains_key(&token.name) {
                    return Err(Invalid::field(
                        "name",
                        format!(
                            "a token named '{}' exists; remove it first to make a new one",
                            token.name
                        ),
                    ));
                }
                if self.tokens.len() >= MAX_TOKENS {
                    return Err(Invalid::field(
                        "name",
                        format!(
                            "the cluster keeps at most {MAX_TOKENS} named tokens; remove one first"
                        ),
                    ));
                }
                self.tokens.insert(token.name.clone(), token);
                Ok(vec![Write::Tokens(self.tokens.clone())])
            }
            Change::RemoveToken(name) => {
                if self.tokens.remove(&name).is_none() {
                    return Err(Invalid::field("name", format!("no token named '{name}'")));
                }
                Ok(vec![Write::Tokens(self.tokens.clone())])
            }
            Change::Drain { node, drained } => {
                if node.is_empty() {
                    return Err(Invalid::field("node", "names no node"));
                }
                let changed = match drained {
                    true => self.drained.insert(node),
                    false => self.drained.remove(&node),
                };
                Ok(match changed {
                    true => vec![Write::Drained(self.drained.clone())],
                    false => Vec::new(),
                })
            }
            Change::By { origin, change } => {
                if matches!(*change, Change::By { .. }) {
                    return Err(Invalid::field("change", "a change names its origin once"));
                }
                let (subject, detail) = self.subject_of(&change);
                let what = change.kind().to_owned();
                let mut writes = self.apply(*change)?;
                let activity = Activity {
                    origin,
                    what,
                    subject,
                    detail,
                };
                self.activity_count += 1;
                self.activity.push_back(activity.clone());
                writes.push(Write::Activity(self.activity_count, activity));
                while self.activity.len() > MAX_ACTIVITY {
                    self.activity.pop_front();
                    let oldest = self.activity_count - self.activity.len() as u64;
                    writes.push(Write::ForgetActivity(oldest));
                }
                Ok(writes)
            }
            Change::Access(_) => Ok(Vec::new()),
            Change::PauseCron { paused, at } => {
                let since = match (paused, self.cron_paused) {
                    // Paused again: it stays paused since the first time.
                    (true, Some(since)) => Some(since),
                    (true, None) => Some(at),
                    (false, _) => None,
                };
                if since == self.cron_paused {
                    return Ok(Vec::new());
                }
                self.cron_paused = since;
                Ok(vec![Write::CronPaused(since)])
            }
        }
    }

    /// What an operator's `change` is done to, and more about it, as the activity lists it
    /// (read before it applies: a removed task's name is gone after).
    fn subject_of(&self, change: &Change) -> (String, String) {
        let task_name = |id: &TaskId| {
            self.tasks
                .get(id)
                .map_or_else(|| id.to_string(), |t| t.name.clone())
        };
        let on_off = |on: bool, yes: &str, no: &str| if on { yes } else { no }.to_owned();
        match change {
            Change::PutTask(task) | Change::ReplaceTask { task, .. } => {
                (task.name.clone(), String::new())
            }
            Change::RemoveTask(id) => (task_name(id), String::new()),
            Change::SetEnabled { task, enabled, .. } => {
                (task_name(task), on_off(*enabled, "enabled", "disabled"))
            }
            Change::StopRun { run, .. } | Change::Stop(run) => {
                let task = self.runs.get(run).map(|r| r.task_name.clone());
                (run.to_string(), task.unwrap_or_default())
            }
            Change::Drain { node, drained } => {
                (node.clone(), on_off(*drained, "drained", "undrained"))
            }
            Change::PauseCron { paused, .. } => {
                (String::new(), on_off(*paused, "paused", "resumed"))
            }
            Change::PutToken(token) => (
                token.name.clone(),
                on_off(token.read_only, "read-only", "full"),
            ),
            Change::RemoveToken(name) => (name.clone(), String::new()),
            Change::Access(event) => (String::new(), event.detail().to_owned()),
            _ => (String::new(), String::new()),
        }
    }

    /// Inserts or updates runs of the run ledger and keeps it bounded; returns the writes.
    fn apply_runs(&mut self, runs: Vec<Run>) -> Vec<Write> {
        let mut writes = Vec::new();
        let mut touched = BTreeSet::new();
        for run in runs {
            if !self.tasks.contains_key(&run.task_id) {
                continue;
            }
            let regresses = self
                .runs
                .get(&run.id)
                .is_some_and(|known| known.status.is_final() && !run.status.is_final());
            if regresses {
                continue;
            }
            touched.insert(run.task_id.clone());
            if run.status.is_final() && self.stops.remove(&run.id) {
                writes.push(Write::Stops(self.stops.clone()));
            }
            let run = Arc::new(run);
            self.runs.insert(run.clone());
            writes.push(Write::ClusterRun(run));
        }
        for task in touched {
            for id in self.runs.prune(&task, RUNS_PER_TASK) {
                writes.push(Write::ForgetClusterRun(id));
            }
        }
        writes
    }

    /// `name` if no task has it, else `<name> (from <from>)`, numbered if that is taken too.
    fn free_name(&self, name: &str, from: &str) -> String {
        if self.task_by_name(name).is_none() {
            return name.to_owned();
        }
        let renamed = format!("{name} (from {from})");
        (1..)
            .map(|n| match n {
                1 => renamed.clone(),
                n => format!("{renamed} {n}"),
            })
            .find(|candidate| self.task_by_name(candidate).is_none())
            .expect("some number is free")
    }
}

/// xxHash64 (seed 0) of `value`'s JSON: an entry's share of [`State::digest`].
pub(crate) fn json_hash(value: &impl serde::Serialize) -> u64 {
    let mut digest = Digest::default();
    // Serialising the state's own types into a writer that cannot fail does not fail.
    serde_json::to_writer(&mut digest, value).expect("the state serialises");
    digest.0.finish()
}

/// The hasher of [`State::digest`]: xxHash64 with a fixed seed, fed the JSON of each part.
struct Digest(twox_hash::XxHash64);

impl Default for Digest {
    fn default() -> Self {
        Self(twox_hash::XxHash64::with_seed(0))
    }
}

impl Digest {
    /// Adds a part: its name, then its JSON (written straight into the hasher).
    fn part(&mut self, name: &str, value: &impl serde::Serialize) {
        self.0.write(name.as_bytes());
        self.0.write(b"=");
        // Serialising the state's own types into a writer that cannot fail does not fail.
        serde_json::to_writer(&mut *self, value).expect("the state serialises");
        self.0.write(b";");
    }
}

impl std::io::Write for Digest {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_changes_are_listed_with_who_made_them_and_the_list_is_bounded() {
        let mut state = State::default();
        let origin = |n: usize| Origin {
            at: chrono::DateTime::from_timestamp(1_800_000_000 + n as i64, 0).expect("time"),
            node: "lab-1".into(),
            via: "cli".into(),
            client: "10.0.0.5".into(),
            token: None,
        };
        for n in 0..MAX_ACTIVITY + 10 {
            let task = Task::sample(&format!("t{n}"), &format!("task-{n}"));
            state
                .apply(Change::By {
                    origin: origin(n),
                    change: Box::new(Change::PutTask(task)),
                })
                .expect("applies");
        }
        assert_eq!(state.activity.len(), MAX_ACTIVITY);
        assert_eq!(
            state.activity[0].subject, "task-10",
            "the oldest went first"
        );
        let last = state.activity.last().expect("one");
        assert_eq!(
            (last.what.as_str(), last.origin.via.as_str()),
            ("put_task", "cli")
        );
        // A refused change is not listed.
        let before = state.activity.clone();
        let refused = state.apply(Change::By {
            origin: origin(0),
            change: Box::new(Change::RemoveTask(TaskId("nope".into()))),
        });
        assert!(refused.is_err());
        assert_eq!(state.activity, before);
        // A change names its origin once.
        let twice = Change::By {
            origin: origin(0),
            change: Box::new(Change::By {
                origin: origin(0),
                change: Box::new(Change::PutTask(Task::sample("x", "x"))),
            }),
        };
        assert!(state.apply(twice).is_err());
        assert_eq!(state.activity, before);
        // The removed task is named, read before it went.
        state
            .apply(Change::By {
                origin: origin(1),
                change: Box::new(Change::RemoveTask(TaskId("t509".into()))),
            })
            .expect("removed");
        assert_eq!(state.activity.last().expect("one").subject, "task-509");
    }

    #[test]
    fn a_sign_in_is_listed_and_changes_nothing_else() {
        let mut state = State::default();
        state
            .apply(Change::PutTask(Task::sample("t1", "backup")))
            .expect("applies");
        let tasks_before = state.tasks.clone();
        let origin = Origin {
            at: chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            node: "lab-1".into(),
            via: "ui".into(),
            client: "10.0.0.5".into(),
            token: Some("alice".into()),
        };
        let writes = state
            .apply(Change::By {
                origin: origin.clone(),
                change: Box::new(Change::Access(AccessEvent::SignInWithLink)),
            })
            .expect("applies");
        assert!(
            matches!(writes.as_slice(), [Write::Activity(1, _)]),
            "only the activity is written: {writes:?}"
        );
        assert_eq!(state.tasks, tasks_before);
        let listed = state.activity.last().expect("listed");
        assert_eq!(
            (listed.what.as_str(), listed.detail.as_str(), &listed.origin),
            ("sign_in", "link", &origin)
        );
        // Without an operator it is not listed at all.
        let writes = state
            .apply(Change::Access(AccessEvent::RotateToken))
            .expect("applies");
        assert!(writes.is_empty(), "{writes:?}");
        assert_eq!(state.activity.len(), 1);
    }

    fn task(id: &str, name: &str) -> Task {
        Task::sample(id, name)
    }

    #[test]
    fn named_tokens_are_unique_bounded_and_well_formed_and_count_in_the_digest() {
        let token = |name: &str| NamedToken {
            name: name.into(),
            read_only: true,
            hash: "ab".repeat(32),
            created: chrono::DateTime::UNIX_EPOCH,
            expires: None,
        };
        let mut state = State::default();
        let empty = state.digest();
        state
            .apply(Change::PutToken(token("alice")))
            .expect("added");
        assert_ne!(state.digest(), empty);
        let before = state.clone();
        let twice = state.apply(Change::PutToken(token("alice")));
        assert!(twice.is_err_and(|e| e.to_string().contains("exists")));
        let bad = state.apply(Change::PutToken(NamedToken {
            hash: "not a hash".into(),
            ..token("bob")
        }));
        assert!(bad.is_err_and(|e| e.to_string().contains("hash")));
        let unknown = state.apply(Change::RemoveToken("bob".into()));
        assert!(unknown.is_err_and(|e| e.to_string().contains("no token named 'bob'")));
        assert_eq!(state, before, "refused changes change nothing");
        for n in 1..MAX_TOKENS {
            state
                .apply(Change::PutToken(token(&format!("t{n}"))))
                .expect("room");
        }
        let full = state.apply(Change::PutToken(token("one-more")));
        assert!(full.is_err_and(|e| e.to_string().contains("at most")));
        state
            .apply(Change::RemoveToken("alice".into()))
            .expect("removed");
        assert!(!state.tokens.contains_key("alice"));
    }

    #[test]
    fn a_replacement_from_an_outdated_copy_is_refused_as_stale() {
        let mut s = State::default();
        let read = task("a", "one");
        s.apply(Change::PutTask(read.clone())).expect("first");
        let mut mine = read.clone();
        mine.name = "mine".into();
        mine.updated_at = read.updated_at + chrono::Duration::seconds(1);
        let mut theirs = read.clone();
        theirs.name = "theirs".into();
        theirs.updated_at = read.updated_at + chrono::Duration::seconds(2);
        let replace = |task: &Task| Change::ReplaceTask {
            task: task.clone(),
            seen: read.updated_at,
        };
        s.apply(replace(&theirs)).expect("the first editor wins");
        let refused = s.apply(replace(&mine)).expect_err("the second is stale");
        assert!(refused.is_stale(), "{refused}");
        assert_eq!(s.task_by_name("theirs").map(|t| &t.id), Some(&read.id));
        assert!(
            s.task_by_name("mine").is_none(),
            "nothing of the stale copy"
        );
        // Read again, the second editor may save.
        let again = Change::ReplaceTask {
            task: mine.clone(),
            seen: theirs.updated_at,
        };
        s.apply(again).expect("fresh copy");
        assert_eq!(s.tasks.get(&read.id).map(|t| t.name.as_str()), Some("mine"));
        let gone = Change::ReplaceTask {
            task: task("ghost", "ghost"),
            seen: read.updated_at,
        };
        assert!(!s.apply(gone).expect_err("no such task").is_stale());
    }

    #[test]
    fn names_are_unique_and_slots_move_forward() {
        let mut s = State::default();
        s.apply(Change::PutTask(task("a", "one"))).expect("first");
        assert!(s.apply(Change::PutTask(task("b", "one"))).is_err(), "clash");
        s.apply(Change::PutTask(task("a", "renamed")))
            .expect("rename self");
        let t0 = Utc::now();
        let fire = |task: &str| Change::Fire {
            task: TaskId(task.into()),
            slot: t0,
            runs: vec![],
        };
        s.apply(fire("a")).expect("fire");
        assert!(s.apply(fire("a")).is_err(), "twice");
        assert!(s.apply(fire("zz")).is_err());
        s.apply(Change::RemoveTask(TaskId("a".into())))
            .expect("remove");
        assert!(s.last_fired.is_empty());
    }

    #[test]
    fn adopted_tasks_keep_their_ids_and_clashing_names_are_renamed() {
        let mut s = State::default();
        s.apply(Change::PutTask(task("a", "backup"))).expect("own");
        let slot = Utc::now();
        let adopt = Change::Adopt {
            from: "node-b".into(),
            tasks: vec![
                Adopted {
                    task: task("b", "backup"),
                    last_fired: Some(slot),
                },
                Adopted {
                    task: task("c", "report"),
                    last_fired: None,
                },
            ],
        };
        s.apply(adopt.clone()).expect("adopt");
        assert_eq!(s.tasks.len(), 3);
        assert_eq!(
            s.tasks[&TaskId("a".into())].name,
            "backup",
            "ours keeps its name"
        );
        assert_eq!(s.tasks[&TaskId("b".into())].name, "backup (from node-b)");
        assert_eq!(s.tasks[&TaskId("c".into())].name, "report");
        assert_eq!(s.last_fired.get(&TaskId("b".into())), Some(&slot));
        // A repeated hand-over changes nothing.
        s.apply(adopt).expect("again");
        assert_eq!(s.tasks.len(), 3);
        // A third `backup` is numbered.
        s.apply(Change::Adopt {
            from: "node-b".into(),
            tasks: vec![Adopted {
                task: task("d", "backup"),
                last_fired: None,
            }],
        })
        .expect("third");
        assert_eq!(s.tasks[&TaskId("d".into())].name, "backup (from node-b) 2");
    }

    #[test]
    fn replicas_applying_the_same_changes_agree_on_every_time() {
        use taskmesh_core::model::Trigger;
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut waiting = Run::new(
            TaskId("a".into()),
            "one".into(),
            Trigger::Manual,
            1,
            "n1".into(),
        );
        waiting.id = RunId("1".repeat(32));
        let mut older = waiting.clone();
        older.id = RunId("2".repeat(32));
        let changes = || {
            vec![
                Change::PutTask(task("a", "one")),
                Change::Runs(vec![waiting.clone(), older.clone()]),
                Change::SetEnabled {
                    task: TaskId("a".into()),
                    enabled: false,
                    at: Some(at),
                },
                Change::StopRun {
                    run: waiting.id.clone(),
                    at,
                },
                // As an older version wrote it: no time; the run's own creation time is used.
                serde_json::from_str(&format!("{{\"Stop\":\"{}\"}}", older.id)).expect("old stop"),
            ]
        };
        let mut replicas = [State::default(), State::default()];
        for replica in &mut replicas {
            for change in changes() {
                replica.apply(change).expect("apply");
            }
        }
        assert_eq!(replicas[0], replicas[1], "replicas differ");
        let state = &replicas[0];
        assert_eq!(
            state.tasks[&TaskId("a".into())].updated_at,
            at,
            "the proposal's time"
        );
        assert_eq!(state.runs[&waiting.id].ended_at, Some(at));
        assert_eq!(state.runs[&older.id].ended_at, Some(older.created_at));
        // A `SetEnabled` of an older version (no `at`) parses, and leaves `updated_at` alone.
        let old: Change =
            serde_json::from_str(r#"{"SetEnabled":{"task":"a","enabled":true}}"#).expect("old");
        let mut state = replicas[0].clone();
        state.apply(old).expect("apply old");
        assert_eq!(state.tasks[&TaskId("a".into())].updated_at, at);
        assert!(state.tasks[&TaskId("a".into())].enabled);
    }

    #[test]
    fn the_run_ledger_keeps_finished_runs_finished_and_stays_bounded() {
        use taskmesh_core::model::{Outcome, Trigger};
        let mut s = State::default();
        s.apply(Change::PutTask(task("a", "one"))).expect("task");
        let run = |n: usize| {
            let mut r = Run::new(
                TaskId("a".into()),
                "one".into(),
                Trigger::Manual,
                1,
                "n1".into(),
            );
            r.id = RunId(format!("{n:032}"));
            r
        };
        let mut first = run(0);
        s.apply(Change::Runs(vec![first.clone()])).expect("queued");
        first.finish(Outcome::Exited { code: 0 }, Utc::now());
        s.apply(Change::Runs(vec![first.clone()]))
            .expect("finished");
        // A late report of the run as running does not undo its end.
        s.apply(Change::Runs(vec![run(0)])).expect("late");
        assert!(s.runs[&first.id].status.is_final());
        // Runs of unknown tasks are left out.
        let mut stray = run(1);
        stray.task_id = TaskId("zz".into());
        s.apply(Change::Runs(vec![stray])).expect("stray");
        assert_eq!(s.runs.len(), 1);
        // Finished runs beyond the bound go, oldest first; unfinished ones stay.
        let finished: Vec<Run> = (2..2 + RUNS_PER_TASK)
            .map(|n| {
                let mut r = run(n);
                r.finish(Outcome::Exited { code: 1 }, Utc::now());
                r
            })
            .collect();
        let pending = run(100);
        s.apply(Change::Runs(
            finished.into_iter().chain([pending.clone()]).collect(),
        ))
        .expect("many");
        assert_eq!(s.runs.len(), RUNS_PER_TASK + 1);
        assert!(
            !s.runs.contains_key(&first.id),
            "the oldest finished run went"
        );
        assert_eq!(
            s.runs.keys().next_back(),
            Some(&pending.id),
            "the newest stays"
        );
        s.apply(Change::RemoveTask(TaskId("a".into())))
            .expect("remove");
        assert!(s.runs.is_empty(), "a removed task's runs go with it");
    }

    #[test]
    fn replicas_applying_the_same_changes_have_the_same_digest_and_another_change_another() {
        let slot = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("time")
            .with_timezone(&Utc);
        let changes = |name: &str| {
            let mut task = task("a", name);
            task.updated_at = slot;
            vec![
                Change::Found { cluster: 7 },
                Change::PutTask(task),
                Change::Fire {
                    task: TaskId("a".into()),
                    slot,
                    runs: vec![],
                },
            ]
        };
        let applied = |changes: Vec<Change>| {
            let mut state = State::default();
            for change in changes {
                state.apply(change).expect("apply");
            }
            state
        };
        let (one, two) = (applied(changes("one")), applied(changes("one")));
        assert_eq!(one.digest(), two.digest());
        assert_ne!(
            applied(changes("other")).digest(),
            one.digest(),
            "another name"
        );

        // What is this node's own does not count; the state read back from JSON (a snapshot)
        // has the same digest.
        let mut own = one.clone();
        own.caught_up = true;
        own.applied = Some(12);
        assert_eq!(own.digest(), one.digest());
        let back: State =
            serde_json::from_str(&serde_json::to_string(&one).expect("encode")).expect("decode");
        assert_eq!(back.digest(), one.digest());

        // A fired slot counts in milliseconds, as the tables keep it.
        let mut finer = one.clone();
        finer
            .last_fired
            .insert(TaskId("a".into()), slot + chrono::Duration::microseconds(7));
        assert_eq!(finer.digest(), one.digest());
        finer
            .last_fired
            .insert(TaskId("a".into()), slot + chrono::Duration::milliseconds(1));
        assert_ne!(finer.digest(), one.digest());
    }

    #[test]
    fn the_digest_is_stable_across_builds() {
        // Every node, of every build, must compute the same digest for the same state: a change
        // of the hash, its seed or the parts it reads shows here (and needs a note in
        // docs/api.md, as nodes of two versions then differ).
        assert_eq!(
            format!("{:016x}", State::default().digest()),
            "5285767440b04d58"
        );
    }

    #[test]
    fn a_cluster_is_founded_once_and_cannot_merge_into_itself() {
        let mut s = State::default();
        assert!(
            s.apply(Change::MergeInto { cluster: 9 }).is_err(),
            "not founded"
        );
        s.apply(Change::Found { cluster: 7 }).expect("found");
        assert!(s.apply(Change::Found { cluster: 8 }).is_err(), "twice");
        assert!(s.apply(Change::MergeInto { cluster: 7 }).is_err(), "itself");
        s.apply(Change::MergeInto { cluster: 9 }).expect("merge");
        assert_eq!(
            s.cluster,
            Some(ClusterIdentity {
                id: 7,
                merged_into: Some(9)
            })
        );
    }
}
