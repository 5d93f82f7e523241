//! Runs: one execution of a task on one node, and what became of it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::exit::Outcome;
use super::task::{Parameters, TaskId};

/// A run's identity. Time-ordered (UUIDv7), so sorting ids sorts runs by creation.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    /// Whether `s` has the shape of a run id (so it is safe in a file name).
    pub fn parse(s: &str) -> Option<Self> {
        Self::shaped(s).then(|| Self(s.to_owned()))
    }

    /// The 128-bit number the id spells, if it has the shape of a run id (a UUID in hex).
    pub fn as_u128(&self) -> Option<u128> {
        Self::shaped(&self.0).then(|| u128::from_str_radix(&self.0, 16).expect("32 hex digits"))
    }

    fn shaped(s: &str) -> bool {
        s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a run exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// Execute now: UI, API or CLI.
    Manual,
    /// A cron slot.
    Cron { slot: DateTime<Utc> },
    /// `@reboot`: the node started.
    Reboot,
    /// An always-task started or restarted.
    Always { restart: u32 },
    /// A retry of an earlier run (a retry rule, or a run lost with its node). `slot` is the cron
    /// slot the first run of the chain was for, so that every retry of it sees the same
    /// `TASKMESH_SLOT`.
    Retry {
        of: RunId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<DateTime<Utc>>,
    },
    /// A "run another task" rule acting on an earlier run.
    Rule { from: RunId },
}

impl Trigger {
    /// The kinds, as [`Trigger::kind`] names them.
    pub const KINDS: &[&str] = &["manual", "cron", "reboot", "always", "retry", "rule"];

    /// What kind of trigger this is, as `"kind"` spells it in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Cron { .. } => "cron",
            Trigger::Reboot => "reboot",
            Trigger::Always { .. } => "always",
            Trigger::Retry { .. } => "retry",
            Trigger::Rule { .. } => "rule",
        }
    }

    /// A retry of `run`: it carries the run's cron slot on.
    pub fn retry_of(run: &Run) -> Self {
        Trigger::Retry {
            of: run.id.clone(),
            slot: run.trigger.slot(),
        }
    }

    /// The cron slot this run is for: its own, or the one of the run it retries.
    pub fn slot(&self) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron { slot } => Some(*slot),
            Trigger::Retry { slot, .. } => *slot,
            _ => None,
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Manual => f.write_str("manual"),
            Trigger::Cron { slot } => write!(f, "cron {}", slot.format("%Y-%m-%d %H:%M:%S")),
            Trigger::Reboot => f.write_str("@reboot"),
            Trigger::Always { restart: 0 } => f.write_str("always (start)"),
            Trigger::Always { restart } => write!(f, "always (restart {restart})"),
            Trigger::Retry { .. } => f.write_str("retry"),
            Trigger::Rule { .. } => f.write_str("exit rule"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Killed,
    Lost,
    /// Cron slots that the catch-up policy chose not to run; recorded so none is skipped silently.
    Skipped,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Killed => "killed",
            RunStatus::Lost => "lost",
            RunStatus::Skipped => "skipped",
        }
    }

    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Exited { code: 0 } => RunStatus::Succeeded,
            Outcome::Exited { .. } | Outcome::FailedToStart { .. } => RunStatus::Failed,
            Outcome::Signaled { .. } => RunStatus::Killed,
            Outcome::TimedOut => RunStatus::TimedOut,
            Outcome::Lost => RunStatus::Lost,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One execution of a task on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    pub id: RunId,
    pub task_id: TaskId,
    pub task_name: String,
    pub trigger: Trigger,
    /// 1 for the first try; retries count up.
    pub attempt: u32,
    /// The name of the node it runs on (for people).
    pub node: String,
    /// The PeerId of the node it is placed on; `None` while it waits on the leader for a place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Which start of that node it was placed on (the start the node announced, see
    /// `Announcement::start`): a node starts only runs placed on its current start, so a run
    /// placed on a process that died is never started by the next one. `None` from leaders of
    /// versions without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_start: Option<u64>,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// What exit-code rules did after this run ("retry → run …", "notify ops: recorded").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// A waiting run is not placed before this time (a retry's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Parameters given for this run in place of the task's (Execute now with parameters); a
    /// retry of the run keeps them. See [`Spec::with_parameters`](crate::model::Spec::with_parameters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, serde_json::Value>,
}

impl Run {
    pub fn new(
        task_id: TaskId,
        task_name: String,
        trigger: Trigger,
        attempt: u32,
        node: String,
    ) -> Self {
        Run {
            id: RunId::generate(),
            task_id,
            task_name,
            trigger,
            attempt,
            node,
            node_id: None,
            node_start: None,
            status: RunStatus::Queued,
            outcome: None,
            exit_code: None,
            signal: None,
            pid: None,
            created_at: Utc::now(),
            started_at: None,
            ended_at: None,
            actions: Vec::new(),
            not_before: None,
            parameters: Parameters::new(),
        }
    }

    /// Records how the run ended.
    pub fn finish(&mut self, outcome: Outcome, at: DateTime<Utc>) {
        self.status = RunStatus::of(&outcome);
        match &outcome {
            Outcome::Exited { code } => self.exit_code = Some(*code),
            Outcome::Signaled { signal } => self.signal = Some(*signal),
            _ => {}
        }
        self.outcome = Some(outcome);
        self.ended_at = Some(at);
    }

    /// Ends a run that never got a process (stopped while queued, or skipped slots).
    pub fn close(&mut self, status: RunStatus, note: String, at: DateTime<Utc>) {
        self.status = status;
        self.ended_at = Some(at);
        self.actions.push(note);
    }

    /// Whether it waits for the leader to give it a node.
    pub fn waits_for_a_node(&self) -> bool {
        self.status == RunStatus::Queued && self.node_id.is_none()
    }

    /// Whether the leader may place this run at `now`: it waits for a node, and its backoff (if
    /// any) is over.
    pub fn placeable(&self, now: DateTime<Utc>) -> bool {
        self.waits_for_a_node() && self.not_before.is_none_or(|t| t <= now)
    }

    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.ended_at.unwrap_or_else(Utc::now) - self.started_at?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_waiting_run_is_placeable_once_its_backoff_is_over() {
        let now = Utc::now();
        let mut run = Run::new(
            TaskId("t".into()),
            "task".into(),
            Trigger::Manual,
            2,
            String::new(),
        );
        assert!(run.placeable(now), "no backoff: placeable at once");
        run.not_before = Some(now + Duration::seconds(4));
        assert!(!run.placeable(now));
        assert!(!run.placeable(now + Duration::milliseconds(3999)));
        assert!(run.placeable(now + Duration::seconds(4)));
        // Placed on a node, or ended: not for the leader to place any more.
        run.node_id = Some("12D3KooW".into());
        assert!(!run.placeable(now + Duration::seconds(5)));
        run.node_id = None;
        run.close(RunStatus::Killed, "stopped".into(), now);
        assert!(!run.placeable(now + Duration::seconds(5)));
    }
}
