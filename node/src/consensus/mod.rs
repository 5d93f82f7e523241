//! The state every node agrees on: tasks, cluster settings, and each task's last fired slot.
//!
//! Changes go through [`Consensus::propose`] and come back as new [`State`] snapshots on a watch
//! channel. On a single node a proposal commits straight to the store; the Raft issue replaces
//! the commit step with a Raft proposal and keeps this interface.

pub mod autopilot;
pub mod raft;
mod state;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::model::Invalid;
use crate::store::{Store, StoreError};

pub use state::{Change, State};

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] Invalid),
    #[error("storing the change")]
    Store(#[from] StoreError),
    #[error("the node is shutting down")]
    Shutdown,
}

struct Proposal {
    change: Change,
    reply: oneshot::Sender<Result<(), ProposeError>>,
}

/// A cloneable handle for reading the agreed state and proposing changes to it.
#[derive(Clone)]
pub struct Consensus {
    proposals: mpsc::Sender<Proposal>,
    state: watch::Receiver<Arc<State>>,
}

impl Consensus {
    /// Loads the state from the store and starts the actor that commits proposals.
    pub fn start(
        store: Arc<dyn Store>,
        cancel: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let state = State::load(store.as_ref())?;
        let (state_tx, state_rx) = watch::channel(Arc::new(state));
        let (tx, rx) = mpsc::channel(256);
        let actor = Committer {
            store,
            state: state_tx,
            inbox: rx,
            cancel,
        };
        let committer = tokio::spawn(actor.run());
        Ok((
            Self {
                proposals: tx,
                state: state_rx,
            },
            committer,
        ))
    }

    /// Commits `change` durably; returns once every reader can see it.
    pub async fn propose(&self, change: Change) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { change, reply })
            .await
            .map_err(|_| ProposeError::Shutdown)?;
        rx.await.map_err(|_| ProposeError::Shutdown)?
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }
}

/// Applies proposals in order, committing each batch in one transaction (group commit).
struct Committer {
    store: Arc<dyn Store>,
    state: watch::Sender<Arc<State>>,
    inbox: mpsc::Receiver<Proposal>,
    cancel: CancellationToken,
}

impl Committer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                n = self.inbox.recv_many(&mut batch, 64) => {
                    if n == 0 {
                        break;
                    }
                    self.commit(std::mem::take(&mut batch)).await;
                }
            }
        }
    }

    async fn commit(&mut self, batch: Vec<Proposal>) {
        let mut next = State::clone(&self.state.borrow());
        let mut writes = Vec::new();
        let mut accepted = Vec::new();
        for proposal in batch {
            // Each change applies to a scratch copy, so a rejected one leaves no trace.
            let mut candidate = next.clone();
            match candidate.apply(proposal.change) {
                Ok(w) => {
                    next = candidate;
                    writes.extend(w);
                    accepted.push(proposal.reply);
                }
                Err(invalid) => {
                    let _ = proposal.reply.send(Err(ProposeError::Rejected(invalid)));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || store.write(&writes))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("writer panicked: {e}"))));
        match result {
            Ok(()) => {
                self.state.send_replace(Arc::new(next));
                for reply in accepted {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                warn!(error = %e, "commit failed; the changes were not applied");
                let message = e.to_string();
                for reply in accepted {
                    let _ = reply.send(Err(ProposeError::Store(StoreError::Db(message.clone()))));
                }
            }
        }
    }
}
