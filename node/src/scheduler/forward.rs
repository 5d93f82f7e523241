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
use crate::model::{Parameters, Run, TaskId, Trigger};

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
    /// The sender reads typed answers ([`NotScheduled`]); a node of an older version does not
    /// send it, and gets its answers' reasons as text.
    #[serde(default)]
    pub typed: bool,
    /// Parameters given for the run in place of the task's.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// The leader's answers to a hand-over, in order: the run each request made, or why it made
/// none. They go as [`NotScheduled`] to a follower that reads them so (`typed`), and with the
/// reason as text to an older one, which reads nothing else: an answer it could not read would
/// make it commit every request of the hand-over again, as waiting runs, beside the runs the
/// leader already committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    pub answers: Vec<Result<Run, NotScheduled>>,
    pub typed: bool,
}

impl serde::Serialize for Answers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.typed {
            return self.answers.serialize(serializer);
        }
        let text: Vec<Result<&Run, String>> = self
            .answers
            .iter()
            .map(|a| a.as_ref().map_err(ToString::to_string))
            .collect();
        text.serialize(serializer)
    }
}

/// A reason as it arrives: typed, or as text from a leader of an older version.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Received {
    Typed(NotScheduled),
    Text(String),
}

/// The answers in a leader's reply; a reason in text (from an older leader) reads as "not
/// committed", as that leader's node would have answered it.
fn read_answers(reply: &str) -> Option<Vec<Result<Run, NotScheduled>>> {
    let answers: Vec<Result<Run, Received>> = serde_json::from_str(reply).ok()?;
    let typed = answers.into_iter().map(|a| {
        a.map_err(|reason| match reason {
            Received::Typed(reason) => reason,
            Received::Text(text) => NotScheduled::Uncommitted(text),
        })
    });
    Some(typed.collect())
}

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
    async fn hand_over(&self, requests: &[RunRequest]) -> Option<Vec<Result<Run, NotScheduled>>> {
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
                typed: true,
                parameters: r.parameters.clone(),
            })
            .collect();
        let body = serde_json::value::to_raw_value(&bodies).ok()?;
        let answer =
            tokio::time::timeout(FORWARD_TTL, mesh.request(leader, Request::Schedule(body)))
                .await
                .ok()?
                .ok()?;
        match answer {
            Response::Schedule(value) => read_answers(value.get()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Refusal;

    fn run() -> Run {
        Run::new(
            TaskId("t".into()),
            "t".into(),
            Trigger::Manual,
            1,
            "a".into(),
        )
    }

    fn answers(typed: bool) -> Answers {
        Answers {
            answers: vec![
                Ok(run()),
                Err(NotScheduled::Refused(Refusal::NoNode(
                    "no live node has gpu=amd".into(),
                ))),
                Err(NotScheduled::Busy),
            ],
            typed,
        }
    }

    #[test]
    fn a_follower_reads_typed_answers_as_they_were_sent() {
        let sent = answers(true);
        let text = serde_json::to_string(&sent).expect("json");
        assert_eq!(read_answers(&text), Some(sent.answers));
    }

    #[test]
    fn an_older_follower_gets_answers_it_can_read() {
        let sent = answers(false);
        let text = serde_json::to_string(&sent).expect("json");
        let read: Vec<Result<Run, String>> = serde_json::from_str(&text).expect("the old form");
        assert_eq!(read[0], Ok(sent.answers[0].clone().expect("a run")));
        assert_eq!(read[1], Err("no live node has gpu=amd".to_owned()));
        assert!(read[2].as_ref().is_err_and(|e| e.contains("busy")));
        // And its requests say nothing of `typed`.
        let old: Forwarded =
            serde_json::from_str(r#"{"task": "t", "trigger": {"kind": "manual"}, "attempt": 1}"#)
                .expect("an older request");
        assert!(!old.typed);
    }

    #[test]
    fn an_older_leaders_text_reads_as_not_committed() {
        let placed = run();
        let old: Vec<Result<Run, String>> = vec![Ok(placed.clone()), Err("no quorum".into())];
        let text = serde_json::to_string(&old).expect("json");
        let read = read_answers(&text).expect("readable");
        assert_eq!(
            read,
            [
                Ok(placed),
                Err(NotScheduled::Uncommitted("no quorum".into()))
            ]
        );
    }
}
