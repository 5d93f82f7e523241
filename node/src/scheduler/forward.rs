//! A follower's run requests on their way to the leader's scheduler (`mesh::Request::Schedule`).
//!
//! One hand-over is on its way at a time; the requests that arrive meanwhile go together in the
//! next one, so that under load a follower costs the leader one mesh round trip per batch, not
//! per run. The leader places and commits them (one entry for all) and answers each. Requests
//! the leader does not answer within [`FORWARD_TTL`] go back to this node's scheduler marked
//! `forwarded`, which commits them as waiting runs for the leader to place later.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{NotScheduled, RunRequest};
use crate::consensus::Consensus;
use crate::mesh::{MeshHandle, PeerId, Request, Response};
use crate::model::{Run, TaskId, Trigger};

/// How long a follower waits for the leader's answer before it commits the runs as waiting.
const FORWARD_TTL: Duration = Duration::from_secs(2);
/// At most this many requests go in one hand-over.
const MAX_BATCH: usize = 256;

/// A run request as it travels to the leader.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    pub task: TaskId,
    pub trigger: Trigger,
    pub attempt: u32,
}

/// The leader's answer to each request of a hand-over, in order. A node of an older version
/// answered with plain text errors; such an answer does not parse, and the requests are
/// committed as waiting runs, as when the leader does not answer.
pub type Answers = Vec<Result<Run, NotScheduled>>;

pub(super) struct Forwarder {
    pub inbox: mpsc::Receiver<RunRequest>,
    pub consensus: Consensus,
    pub mesh: watch::Receiver<Option<MeshHandle>>,
    /// This node's PeerId (a node that leads does not forward).
    pub peer_id: String,
    /// The scheduler's inbox, for requests the leader did not answer. The forwarder waits for
    /// room there (the scheduler never waits for the forwarder).
    pub back: mpsc::Sender<RunRequest>,
    pub cancel: CancellationToken,
}

impl Forwarder {
    pub async fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                n = self.inbox.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
            }
            let requests = std::mem::take(&mut batch);
            let answers = self.hand_over(&requests).await;
            match answers {
                Some(answers) if answers.len() == requests.len() => {
                    for (mut request, answer) in requests.into_iter().zip(answers) {
                        if let Some(reply) = request.reply.take() {
                            let _ = reply.send(answer);
                        }
                    }
                }
                _ => {
                    for mut request in requests {
                        request.forwarded = true;
                        let _ = self.back.send(request).await;
                    }
                }
            }
        }
    }

    /// The leader's answers, or `None` when there is no leader to ask or it gave none in time.
    async fn hand_over(&self, requests: &[RunRequest]) -> Option<Answers> {
        let leader: PeerId = self
            .consensus
            .leader_peer()
            .filter(|l| *l != self.peer_id)?
            .parse()
            .ok()?;
        let mesh = self.mesh.borrow().clone()?;
        let bodies: Vec<Forwarded> = requests
            .iter()
            .map(|r| Forwarded {
                task: r.task.clone(),
                trigger: r.trigger.clone(),
                attempt: r.attempt,
            })
            .collect();
        let body = serde_json::value::to_raw_value(&bodies).ok()?;
        let answer =
            tokio::time::timeout(FORWARD_TTL, mesh.request(leader, Request::Schedule(body)))
                .await
                .ok()?
                .ok()?;
        match answer {
            Response::Schedule(value) => serde_json::from_str(value.get()).ok(),
            _ => None,
        }
    }
}
