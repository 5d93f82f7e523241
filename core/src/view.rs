//! What a node shows about itself: the status types the UI, the API and the layers below share.
//! Plain data, filled by the layer that owns each part (the executor, the sink, consensus, the
//! node) and rendered by the UI or serialized by the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Run, RunId, RunStatus, TaskId};
use crate::peer::PeerInfo;

/// What the UI shows about an always-task on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DaemonStatus {
    pub run: Option<RunId>,
    pub restarts: u32,
    /// Quick exits in a row.
    pub quick_exits: u32,
    pub crash_loop: bool,
    /// Milliseconds until the next restart, when one is pending.
    pub restart_in_ms: Option<u64>,
}

/// What the sink is doing, for `/node` and `GET /api/sink`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SinkStatus {
    /// `user@host:port/database` while `cluster.mysql` is set (never the password).
    pub target: Option<String>,
    /// Runs waiting in the outbox.
    pub pending: u64,
    /// The last try failed; runs wait until MySQL answers again.
    pub failing: bool,
    /// The newest failure (it stays after a recovery, with its time).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Run records delivered since the node started.
    pub delivered: u64,
    pub last_delivery_at: Option<DateTime<Utc>>,
}

/// Which runs to list, newest first. Nodes ask each other this for the history they keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunQuery {
    pub task: Option<TaskId>,
    /// Only runs older than this one (for paging).
    pub before: Option<RunId>,
    pub limit: usize,
    /// Only runs with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Only runs on the node of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only runs made by this kind of trigger ([`crate::model::Trigger::kind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Only runs created at or after this time (newest first, a listing stops where they end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

impl RunQuery {
    /// Whether `run` is one this query lists (all but the limit).
    pub fn admits(&self, run: &Run) -> bool {
        self.task.as_ref().is_none_or(|t| *t == run.task_id)
            && self.before.as_ref().is_none_or(|b| run.id < *b)
            && self.status.is_none_or(|s| s == run.status)
            && self.node.as_ref().is_none_or(|n| *n == run.node)
            && self
                .trigger
                .as_deref()
                .is_none_or(|t| t == run.trigger.kind())
            && self.since.is_none_or(|s| run.created_at >= s)
    }

    /// Whether `run`, and every run a newest-first listing meets after it, is older than
    /// `since`.
    pub fn is_past(&self, run: &Run) -> bool {
        self.since.is_some_and(|s| run.created_at < s)
    }

    /// Whether anything but the task and the page narrows the list.
    pub fn is_filtered(&self) -> bool {
        self.status.is_some() || self.node.is_some() || self.trigger.is_some()
    }
}

/// What runs did since a time: counts, durations and each task's recent runs. Each node counts
/// the runs of its own history; the dashboard adds the nodes' counts up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunStats {
    pub since: Option<DateTime<Utc>>,
    /// Runs created since then, finished or not.
    pub runs: u64,
    pub succeeded: u64,
    /// Finished without success: failed, timed out, killed or lost.
    pub failed: u64,
    /// The summed duration of the finished runs that started, in milliseconds, and how many.
    pub duration_ms: u64,
    pub timed: u64,
    /// A node stopped counting at [`RunStats::CAP`] runs: the figures are lower bounds.
    pub capped: bool,
    pub tasks: std::collections::BTreeMap<TaskId, TaskRunStats>,
}

/// One task's share of [`RunStats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskRunStats {
    pub name: String,
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Its newest finished runs, newest first, at most [`TaskRunStats::RECENT`].
    pub recent: Vec<RecentRun>,
}

/// A finished run as a task's sparkline draws it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentRun {
    pub id: RunId,
    pub status: RunStatus,
    pub duration_ms: u64,
}

impl TaskRunStats {
    pub const RECENT: usize = 50;
}

impl RunStats {
    /// The most runs one node counts for one answer.
    pub const CAP: usize = 100_000;

    pub fn since(since: DateTime<Utc>) -> Self {
        Self {
            since: Some(since),
            ..Self::default()
        }
    }

    /// Counts one run (runs come newest first).
    pub fn add(&mut self, run: &Run) {
        let failed = matches!(
            run.status,
            RunStatus::Failed | RunStatus::TimedOut | RunStatus::Killed | RunStatus::Lost
        );
        let succeeded = run.status == RunStatus::Succeeded;
        self.runs += 1;
        self.succeeded += u64::from(succeeded);
        self.failed += u64::from(failed);
        let duration = run
            .duration()
            .filter(|_| run.status.is_final())
            .map(|d| d.num_milliseconds().max(0) as u64);
        if let Some(ms) = duration {
            self.duration_ms += ms;
            self.timed += 1;
        }
        let task = self.tasks.entry(run.task_id.clone()).or_default();
        task.name.clone_from(&run.task_name);
        task.runs += 1;
        task.succeeded += u64::from(succeeded);
        task.failed += u64::from(failed);
        if let Some(ms) = duration {
            if task.recent.len() < TaskRunStats::RECENT {
                task.recent.push(RecentRun {
                    id: run.id.clone(),
                    status: run.status,
                    duration_ms: ms,
                });
            }
        }
    }

    /// Adds another node's counts to these.
    pub fn merge(&mut self, other: RunStats) {
        self.runs += other.runs;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.duration_ms += other.duration_ms;
        self.timed += other.timed;
        self.capped |= other.capped;
        for (id, theirs) in other.tasks {
            let task = self.tasks.entry(id).or_default();
            if task.name.is_empty() {
                task.name = theirs.name;
            }
            task.runs += theirs.runs;
            task.succeeded += theirs.succeeded;
            task.failed += theirs.failed;
            task.recent.extend(theirs.recent);
            task.recent.sort_by(|a, b| b.id.cmp(&a.id));
            task.recent.truncate(TaskRunStats::RECENT);
        }
    }

    /// The share of finished runs that succeeded, in percent (`None` before any finished).
    pub fn success_rate(&self) -> Option<f64> {
        let finished = self.succeeded + self.failed;
        (finished > 0).then(|| self.succeeded as f64 * 100.0 / finished as f64)
    }

    /// The mean duration of the finished runs, in milliseconds.
    pub fn mean_duration_ms(&self) -> Option<u64> {
        (self.timed > 0).then(|| self.duration_ms / self.timed)
    }
}

/// The cluster as /peers shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// The cluster's id in hex; `None` while this node has not joined one.
    pub cluster: Option<String>,
    /// This node's role: `leader`, `follower`, `learner`, `candidate` or `not joined`.
    pub role: String,
    pub term: u64,
    /// The leader's PeerId.
    pub leader: Option<String>,
    pub members: Vec<MemberStatus>,
    /// This node's log: the newest entry, the newest snapshot, and the newest entry purged
    /// (everything up to it lives only in the snapshot).
    pub last_log: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    /// Since when cron is paused, while it is.
    #[serde(default)]
    pub cron_paused_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub peer_id: String,
    /// Its name, when it is a live peer (or this node).
    pub name: Option<String>,
    pub voter: bool,
    pub leader: bool,
    pub this_node: bool,
    /// Whether it announced itself recently.
    pub live: bool,
    /// The index of the last change it has applied, as it last announced.
    pub applied: Option<u64>,
    /// The digest of its agreed state at `applied`, 16 hex digits; members that applied the
    /// same entries show the same one. `None` while unknown (or from versions without it).
    pub state_hash: Option<String>,
    /// How many entries it is behind the leader's log.
    pub lag: Option<u64>,
    /// Drained by an operator: no new run goes there.
    #[serde(default)]
    pub drained: bool,
}

/// A state digest as [`MemberStatus::state_hash`] shows it: 16 hex digits.
pub fn state_hash_text(digest: u64) -> String {
    format!("{digest:016x}")
}

impl MemberStatus {
    /// The last characters of the PeerId, for narrow tables.
    pub fn short_id(&self) -> &str {
        let start = self.peer_id.len().saturating_sub(8);
        &self.peer_id[start..]
    }
}

/// This node and the peers it knows, for /peers and /api/peers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PeersView {
    #[serde(rename = "self")]
    pub this: ThisNode,
    pub peers: Vec<PeerInfo>,
    /// The replicated state's cluster: leader, term, voters, learners, lag.
    pub cluster: ClusterStatus,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ThisNode {
    pub peer_id: Option<String>,
    pub name: String,
    pub p2p_addrs: Vec<String>,
    /// A label of the cluster key (not the key).
    pub key_fingerprint: Option<String>,
    pub dependencies: Vec<String>,
    pub mesh_up: bool,
}

/// A node's drain, for `/api/peers/{node}/drain`: whether it is drained, and what still runs
/// there (a drain is complete when nothing does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeDrain {
    pub peer_id: String,
    /// Its name, when it is this node, a live peer or a member that announced one.
    pub name: Option<String>,
    /// Drained: the leader places no new run on it and moves its always-tasks away.
    pub drained: bool,
    /// Its unfinished runs, as the cluster's run ledger shows them.
    pub unfinished_runs: usize,
    /// The always-tasks it still holds, by name.
    pub always_tasks: Vec<String>,
}

impl NodeDrain {
    /// Drained, and nothing runs there any more.
    pub fn complete(&self) -> bool {
        self.drained && self.unfinished_runs == 0 && self.always_tasks.is_empty()
    }
}

/// Whether cron is paused, for `/api/cron`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CronPause {
    /// Paused: the leader fires no cron slot, and no node its `@reboot` tasks.
    pub paused: bool,
    /// Since when, while paused.
    pub since: Option<DateTime<Utc>>,
}

/// What the health endpoint reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub node: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub tasks: usize,
    pub active_runs: usize,
}

/// One task of the task list (`GET /api/tasks`): the task, and, when the listing was asked
/// for it (`last_run=true`), its newest run, null before the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskListItem {
    #[serde(flatten)]
    pub task: crate::model::Task,
    /// Left out unless asked for; null when the task has not run yet.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[schema(value_type = Option<Run>, required = false)]
    pub last_run: Option<Option<Run>>,
}

/// A field that is there, even as null, is `Some`; a missing one is `None` (by `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Task, Trigger};
    use crate::peer::{Announcement, PeerInfo};

    /// The CLI reads what the API writes with these same types: each must read back as it was
    /// written.
    #[test]
    fn the_views_read_back_what_they_write() {
        let task = Task::sample("t1", "backup");
        let run = Run::new(
            task.id.clone(),
            task.name.clone(),
            Trigger::Manual,
            1,
            "a".into(),
        );
        for item in [
            TaskListItem {
                task: task.clone(),
                last_run: None,
            },
            TaskListItem {
                task: task.clone(),
                last_run: Some(None),
            },
            TaskListItem {
                task: task.clone(),
                last_run: Some(Some(run.clone())),
            },
        ] {
            let json = serde_json::to_value(&item).expect("serialize");
            assert_eq!(json["name"], "backup", "the task is flattened: {json}");
            assert_eq!(
                json.get("last_run").is_some(),
                item.last_run.is_some(),
                "last_run is there exactly when asked for: {json}"
            );
            let back: TaskListItem = serde_json::from_value(json.clone()).expect("deserialize");
            assert_eq!(back, item, "{json}");
        }
        let peers = PeersView {
            this: ThisNode {
                peer_id: Some("p0".into()),
                name: "here".into(),
                p2p_addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                key_fingerprint: None,
                dependencies: vec!["os=linux".into()],
                mesh_up: true,
            },
            peers: vec![PeerInfo {
                announcement: Announcement::sample("p1", 3),
                last_seen_ms: 840,
                heard_ms: 840,
                connected: true,
            }],
            cluster: ClusterStatus {
                cluster: Some("00ff".into()),
                role: "leader".into(),
                term: 2,
                leader: Some("p0".into()),
                members: vec![],
                last_log: Some(4),
                snapshot: None,
                purged: None,
                cron_paused_since: None,
            },
        };
        let json = serde_json::to_value(&peers).expect("serialize");
        assert_eq!(json["self"]["name"], "here", "{json}");
        assert_eq!(json["peers"][0]["name"], "node-p1", "flattened: {json}");
        let back: PeersView = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back.peers, peers.peers);
        assert_eq!(back.this.name, "here");
        assert_eq!(back.cluster.role, "leader");
    }
}
