//! The node's event bus: what changed, for live views (server-sent events) and tests.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::{Run, RunId};

#[derive(Debug, Clone)]
pub enum Event {
    /// A run was created or changed state.
    Run(Arc<Run>),
    /// A run's log grew to `len` bytes.
    Log { run: RunId, len: u64 },
    /// Tasks or settings changed.
    State,
    /// An always-task's supervision status changed.
    Supervision,
}

/// Subscribers that fall behind skip events (and re-read what they need); nobody blocks.
pub type Events = broadcast::Sender<Event>;

pub fn bus() -> Events {
    broadcast::channel(1024).0
}
