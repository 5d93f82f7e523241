//! History from every node: runs and run statistics that this node reads from its own history
//! and the run ledger, and asks each live peer for (each keeps the runs it ran; the replicated
//! ledger keeps only the newest 20 finished runs of a task).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::consensus::RUNS_PER_TASK;
use crate::handle::{NodeError, NodeHandle};
use crate::mesh::{PeerId, Request, Response};
use crate::model::{Run, RunId};
use crate::store::RunQuery;
use taskmesh_core::view::RunStats;

/// The most runs a peer is asked for in one history query.
pub const RUNS_ASKED_MAX: usize = 1000;
/// How long a cluster-wide read waits for the peers' answers.
pub const HISTORY_DEADLINE: Duration = Duration::from_secs(2);
/// How many peers a cluster-wide read asks at a time.
pub const HISTORY_FAN_OUT: usize = 16;

/// Runs from every live node, and the nodes that did not answer in time.
#[derive(Debug, Clone, Default)]
pub struct ClusterRuns {
    pub runs: Vec<Run>,
    pub unanswered: Vec<String>,
}

/// Run statistics of every live node added up, and the nodes that did not answer in time.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    pub stats: RunStats,
    pub unanswered: Vec<String>,
}

/// Whether the run ledger (every unfinished run, and the newest [`RUNS_PER_TASK`] finished runs
/// of each task) holds the whole answer, so that no peer needs to be asked: unfinished runs,
/// and a task's first page when it is no longer than what the ledger keeps of it.
fn ledger_answers(query: &RunQuery) -> bool {
    use crate::model::RunStatus;
    let unfinished = matches!(query.status, Some(RunStatus::Queued | RunStatus::Running));
    let first_page_of_a_task = query.task.is_some()
        && query.before.is_none()
        && query.since.is_none()
        && !query.is_filtered()
        && query.limit <= RUNS_PER_TASK;
    unfinished || first_page_of_a_task
}

/// What each peer answered, by its name, and the nodes without an answer: peers that did not
/// answer in time and members that are down.
struct Answers<T> {
    answers: Vec<(String, T)>,
    unanswered: Vec<String>,
}

impl NodeHandle {
    /// Runs, newest first, from every live node: [`NodeHandle::runs`] merged with what each
    /// peer keeps in its own history (the runs the replicated ledger no longer holds). Of two
    /// records of one run the finished one wins, then the one from the node that ran it.
    pub async fn cluster_runs(&self, query: RunQuery) -> Result<ClusterRuns, NodeError> {
        let mut runs = self.runs(query.clone()).await?;
        if ledger_answers(&query) {
            return Ok(ClusterRuns {
                runs,
                unanswered: Vec::new(),
            });
        }
        let Answers {
            answers,
            unanswered,
        } = self
            .ask_peers(Request::Runs, &query, |r| match r {
                Response::Runs(raw) => Some(raw),
                _ => None,
            })
            .await?;
        let mut by_id: HashMap<RunId, usize> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        for (name, theirs) in answers {
            let theirs: Vec<Run> = theirs;
            for run in theirs
                .into_iter()
                .filter(|r| query.admits(r))
                .take(query.limit)
            {
                match by_id.get(&run.id) {
                    Some(&i) => {
                        let ours = &runs[i];
                        let better = (run.status.is_final() && !ours.status.is_final())
                            || (run.status.is_final() == ours.status.is_final()
                                && run.node == name
                                && ours.node != name);
                        if better {
                            runs[i] = run;
                        }
                    }
                    None => {
                        by_id.insert(run.id.clone(), runs.len());
                        runs.push(run);
                    }
                }
            }
        }
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs.truncate(query.limit);
        Ok(ClusterRuns { runs, unanswered })
    }

    /// What the runs of every live node since `since` did, added up: each node counts the runs
    /// of its own history.
    pub async fn cluster_stats(&self, since: DateTime<Utc>) -> Result<ClusterStats, NodeError> {
        let mut stats = self.inner.ledger.stats(since).await?;
        let Answers {
            answers,
            unanswered,
        } = self
            .ask_peers(Request::RunStats, &since, |r| match r {
                Response::RunStats(raw) => Some(raw),
                _ => None,
            })
            .await?;
        for (_, theirs) in answers {
            stats.merge(theirs);
        }
        Ok(ClusterStats { stats, unanswered })
    }

    /// Asks every live peer at once, at most [`HISTORY_FAN_OUT`] at a time, each for at most
    /// [`HISTORY_DEADLINE`]; an answer counts when `pick` finds the expected kind and it reads
    /// as `T`.
    async fn ask_peers<Q: serde::Serialize, T: DeserializeOwned>(
        &self,
        request: fn(Box<serde_json::value::RawValue>) -> Request,
        question: &Q,
        pick: fn(Response) -> Option<Box<serde_json::value::RawValue>>,
    ) -> Result<Answers<T>, NodeError> {
        let mut unanswered = Vec::new();
        let mut answers = Vec::new();
        let Some(mesh) = self.mesh() else {
            return Ok(Answers {
                answers,
                unanswered,
            });
        };
        let body = serde_json::value::to_raw_value(question).map_err(|e| {
            NodeError::Unavailable(format!("encoding a question to the peers: {e}"))
        })?;
        let view = self.peers();
        // Members that are down keep their history to themselves: they are named.
        for member in view
            .cluster
            .members
            .iter()
            .filter(|m| !m.live && !m.this_node)
        {
            unanswered.push(format!(
                "{} (down)",
                self.member_name(&member.peer_id, &member.name)
            ));
        }
        // A peer this node holds no connection to cannot answer now: it is named at once
        // rather than waited for (a node killed a moment ago is still listed until it times out).
        let (reachable, cut): (Vec<_>, Vec<_>) =
            view.peers.into_iter().partition(|peer| peer.connected);
        unanswered.extend(cut.into_iter().map(|peer| peer.announcement.name));
        let asks = reachable.into_iter().map(|peer| {
            let (mesh, body) = (mesh.clone(), body.clone());
            async move {
                let name = peer.announcement.name.clone();
                let Ok(id) = peer.announcement.peer_id.parse::<PeerId>() else {
                    return (name, None);
                };
                let asked = tokio::time::timeout(HISTORY_DEADLINE, mesh.request(id, request(body)));
                let answer = match asked.await {
                    Ok(Ok(response)) => {
                        pick(response).and_then(|raw| serde_json::from_str::<T>(raw.get()).ok())
                    }
                    _ => None,
                };
                (name, answer)
            }
        });
        let mut asked = futures::stream::iter(asks).buffer_unordered(HISTORY_FAN_OUT);
        while let Some((name, answer)) = asked.next().await {
            match answer {
                Some(answer) => answers.push((name, answer)),
                None => unanswered.push(name),
            }
        }
        unanswered.sort();
        Ok(Answers {
            answers,
            unanswered,
        })
    }

    /// A member's name: as it announced it, else as its runs in the ledger carry it (a member
    /// that is down announces nothing), else the end of its PeerId.
    fn member_name(&self, peer_id: &str, announced: &Option<String>) -> String {
        if let Some(name) = announced {
            return name.clone();
        }
        let state = self.state();
        let ran_there = state.runs.newest_before(None).take(10_000);
        let named = ran_there
            .filter(|r| r.node_id.as_deref() == Some(peer_id))
            .map(|r| r.node.clone())
            .next();
        named.unwrap_or_else(|| {
            let short = peer_id
                .get(peer_id.len().saturating_sub(6)..)
                .unwrap_or(peer_id);
            format!("node …{short}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunId, RunStatus, TaskId};

    #[test]
    fn the_ledger_answers_unfinished_runs_and_a_tasks_short_first_page() {
        let task = RunQuery {
            task: Some(TaskId("t".into())),
            limit: RUNS_PER_TASK,
            ..RunQuery::default()
        };
        assert!(ledger_answers(&task));
        let longer = RunQuery {
            limit: RUNS_PER_TASK + 1,
            ..task.clone()
        };
        assert!(!ledger_answers(&longer), "more than the ledger keeps");
        let older = RunQuery {
            before: RunId::parse(&"0".repeat(32)),
            ..task.clone()
        };
        assert!(!ledger_answers(&older), "older pages are on the nodes");
        let failed = RunQuery {
            status: Some(RunStatus::Failed),
            ..task.clone()
        };
        assert!(
            !ledger_answers(&failed),
            "a filter may reach past the ledger"
        );
        let running = RunQuery {
            status: Some(RunStatus::Running),
            limit: 1000,
            ..RunQuery::default()
        };
        assert!(
            ledger_answers(&running),
            "every unfinished run is in the ledger"
        );
        assert!(!ledger_answers(&RunQuery {
            limit: 50,
            ..RunQuery::default()
        }));
    }
}
